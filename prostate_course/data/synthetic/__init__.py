"""Synthetic bpMRI cohort in the raw PI-CAI layout (T2W/ADC/HBV ``.mha`` + picai_labels masks).

The course must run with no download, yet exercise the code path that real PI-CAI data takes,
so this module writes exactly the raw layout of ``docs/ARCHITECTURE.md``::

    <out>/images/<pid>/<pid>_<sid>_{t2w,adc,hbv}.mha                  int16, three different grids
    <out>/labels/csPCa_lesion_delineations/human_expert/resampled/<pid>_<sid>.nii.gz   ISUP 2-5
    <out>/labels/anatomical_delineations/whole_gland/AI/Guerbet23/<pid>_<sid>.nii.gz   gland 1
    <out>/labels/anatomical_delineations/zonal_pz_tz/AI/Yuan23/<pid>_<sid>.nii.gz      PZ 1, TZ 2
    <out>/labels/clinical_information/marksheet.csv                    real columns + pirads_reports
    <out>/ground_truth.csv        hidden truth per case (reader ids, findings); not part of PI-CAI
    <out>/synth_manifest.json     seed, n_cases, parameters (a rerun with other ones is refused)

Public API: :func:`generate_cohort`, :func:`simulate_clinical`, :func:`render_case`,
:func:`simulate_annotators`, :class:`SynthParams`, :data:`GENERATOR_VERSION`, :func:`case_paths`.

Modules, one job each: ``params`` (knobs, version, seeds), ``clinical`` (clinical table, readers,
histopathology), ``phantom`` (images and masks in memory), ``annotators`` (several simulated
contours per case), ``writer`` (the raw layout on disk).

Generative model (everything is drawn from ``SeedSequence([seed, case_index])``, so a case does
not depend on the worker count or on how many cases follow it)
------------------------------------------------------------------------------------------------
1. *Clinical*. Centre (RUMC/PCNN/ZGT 53/23/23 %) and MRI year per centre; true csPCa ~
   Bernoulli(``cspca_rate``, 0.31: the marksheet records fewer, see 4); case ISUP given csPCa
   (real case_ISUP frequencies); age ~ N(65.2 or 68, 7.2);
   prostate volume ~ logN(median 61 mL or 48 mL, 0.45) (csPCa glands are smaller, as in PI-CAI);
   log PSA = log m + 0.35 (log V - log 57) + N(0, 0.6) with m = 7.9 (no csPCa) / 10.5 (csPCa);
   PSA density = PSA / V. Missing values: PSA 2.7 %, volume 1.8 %, PSA density missing per centre
   (PCNN 97 %, RUMC 5 %, ZGT 10 %) or when PSA/volume is missing, as in the real marksheet.
   A few patients (``two_study_rate``) have a second study 1-2 years later (same patient_id).
2. *Findings*. The index cancer has the case ISUP; extra cancers (ISUP <= index) with p 0.3;
   zone PZ with p ``pz_fraction`` (0.7). Radius r = 3.5 + 1.0 ISUP mm (x logN 0.2). Latent
   conspicuity v = b[ISUP] + 0.25 (r - 6) + N(0, 0.6), b = (2.2, 2.65, 2.9, 3.1, 3.4) for ISUP 1-5.
   Benign mimics ~ Poisson(``mimic_rate``): BPH nodules (TZ) and prostatitis bands (PZ),
   v ~ N(1.35, 1.0): as suspicious as small cancers, sometimes more. ``radius`` (mm) and ``v``
   are the ``gt_findings`` columns; v also sets the image contrast (5).
3. *Readers*. A pool of ``n_readers`` readers, each with a bias b_r ~ N(0, ``reader_bias_sd``)
   (centred over the pool). Reader r scores finding f as s = v_f - d_f + b_r + e, with
   e ~ N(0, (``reader_noise`` clip(1 - 0.5 (v_f - 2), 0.35, 1.8))^2): subtle findings are read
   less consistently than conspicuous ones; d_f = 0.3 for mimics (PI-RADS v2.1 scores typical
   encapsulated BPH nodules and band-like prostatitis down; this acts on the reading only, not
   on the image). s is cut at 1.0/1.35/1.9/3.25 into PI-RADS 2..5 (below 1.0: not reported),
   and a category-4 finding whose measured diameter reaches 15 mm becomes a 5 (the size rule of
   PI-RADS v2.1, Turkbey et al. 2019). A reader's case score is the max over its findings; with
   none it is 2 or 1 from a case background shared by the readers plus reader tendency and
   noise. The *routine* reader's per-finding scores form ``lesion_PIRADS`` (PI-RADS 2 findings
   listed with p 0.4); ``pirads_reports`` lists the case scores of 3-5 readers (routine first)
   for most cases, one for ``p_one_report``, none for ``p_no_reports``.
4. *Histopathology and verification*, as in PI-CAI, whose reference standard is histology for
   positives but histology *or* an MRI read of PI-RADS <= 2 for negatives (picai_labels README;
   Saha et al. 2024). Routine case PI-RADS >= 3: biopsy (MRBx / SysBx+MRBx / SysBx / RP in the
   real proportions 65/24/9/2 %); PI-RADS 1 or 2: histology for 69 % / 11 % of cases (94 of 137,
   54 of 479 in the real marksheet), mostly systematic, else none. What histology finds:
   systematic cores and prostatectomy find every cancer; an MR-targeted core finds a targeted
   lesion (a reported one of PI-RADS >= 3) with P = 1 - exp(-(r / 4.5 mm)^2) (small targets are
   missed more often; a modelling assumption). The marksheet records only what was found: an
   unbiopsied or missed cancer leaves the case ISUP at what was found (0 if nothing), case_csPCa
   NO, and no lesion mask, although the cancer is in the image. Cancers found only by the
   systematic cores appear as "N/A" in ``lesion_PIRADS``. So the near-zero csPCa rate at
   PI-RADS 1-2 is partly by construction: ``gt_case_ISUP`` / ``gt_csPCa`` hold the truth.
5. *Images*. An analytic phantom in patient (world, LPS) millimetres, rendered independently on
   each sequence's grid (so every grid is exact and ADC/HBV really need resampling onto T2W):
   body ellipse of fat, obturator muscles, rectum (wall + air), bladder, pubic bone; the gland an
   ellipsoid of volume V (wider at the base, flattened posteriorly); TZ an anterior-superior
   ellipsoid whose share grows with V (BPH), PZ the rest; TZ texture ("organised chaos").
   Tissue properties (T2, ADC in 1e-6 mm^2/s, proton density S0): PZ bright T2 / ADC 1700,
   TZ darker / 1250, urine 2900 (typical published ranges). Lesions (irregular ellipsoids,
   k = ``lesion_contrast`` * clip(v / 2.5, 0.05, 1.3)): T2 x (1 - 0.45 k), ADC x (1 - 0.5 k); mimics: BPH T2 +-, ADC x
   (1 - 0.25 k); prostatitis T2 x (1 - 0.4 k), ADC x (1 - 0.15 k).
   HBV = S0 exp(-b ADC) with b = 1400 s/mm^2 (diffusion physics: low ADC -> bright HBV).
   Noise: magnitude (Rician) noise on HBV, |S + n| on T2W (sd ``noise`` x tissue level),
   Gaussian on ADC (stored without compression: T2W; zlib-compressed: ADC/HBV and masks); a smooth
   multiplicative bias field exp(``bias_strength`` * separable field) on T2W and HBV; per-case
   scanner gain. T2W: 384^2 x 19-25 slices, 0.4-0.5 mm x 3.0-3.6 mm, tilted 0-15 deg about x,
   gland up to +-15 mm off the field-of-view centre. ADC/HBV: ~2 mm in-plane, 128 x 104-128,
   own origin (+-10 mm), slice positions and an extra rotation about z of up to +-4 deg.

Speed and size (measured on the 2-core development machine): ~0.17 s per case on one free
core (render ~0.11 s, Rician noise and writing the rest); 40 cases in 6.4 s with 2 workers on a
quiet machine, 200 cases in 58 s while other jobs loaded it (load average ~5). ~7 MB per case
(T2W stored uncompressed), 1.4 GB for 200 cases. ``simulate_clinical``: ~1000-1500 cases/s
(5000 exams in about 4 s).

Calibration (default parameters, seed 0; real PI-CAI marksheet, 1500 cases, in brackets).
8000 exams (``simulate_clinical``, 5 s; tests/test_synthetic.py holds the tolerances):
  age          q25/50/75 61/66/71 [61/66/70]; missing 0.0% [0.0%]
  PSA          q25/50/75 5.7/8.7/13.4 [5.88/8.5/13]; missing 2.6% [2.7%]
  PSA density  q25/50/75 0.1/0.15/0.25 [0.09/0.14/0.22]; missing 31.1% [30.1%]
  volume mL    q25/50/75 41/56/77 [40/57/80]; missing 1.8% [1.8%]
  csPCa recorded 26.7% [28.3%] (true 31.3%); case_ISUP 0-5 63 10 14 7 3 4 % [56 15 16 7 3 3 %]
  case PI-RADS 1-5 share   10% 29%  9% 29% 23%   [9% 32% 10% 23% 25%]
  csPCa | PI-RADS 1-5      0.6 0.5 15.4 33.8 65.8 %   [0.7 1.5 12.6 41.5 66.1 %]
  true csPCa | PI-RADS 1-5 1.6 3.9 19.4 40.4 71.3 %   (the generator's truth: verification bias)
  lesion entries 1/2/3/4+ 71% 19% 8% 2% [71% 24% 5% 1%]; 'N/A' in lesion_PIRADS 2.5% [2.9%]
  no histopathology 29% [31%]; AUROC of the case PI-RADS for csPCa 0.85 [0.86]
  readers: mean pairwise quadratic-weighted kappa 0.70 (0.63-0.73), unweighted 0.41
  (0.31-0.45). Targets: unweighted 0.419 (95 % CI 0.238-0.595) for the category of index
  lesions among 9 readers (Greer et al., AJR 2018); pooled kappa 0.61 (95 % CI 0.55-0.67) over
  30 PI-RADS v2 studies (Park et al., J Urol 2020) and 0.65 (0.56-0.73) over 12 v2.1 studies
  (Wen et al., Front Oncol 2022), pooling weighted and unweighted kappas alike; no study we
  could check reports the quadratic-weighted kappa of the case category, so the test asks for
  0.60-0.80 (weighted) and 0.35-0.50 (unweighted).
  csPCa yield of PI-RADS 3/4/5 per routine reader 8-19 / 23-40 / 55-75 % [across 9 radiologists
  of one centre: 3-27 / 23-65 / 40-80 %, Sonn et al., Eur Urol Focus 2019].
  reports per case 0/1/3-5: 5%/15%/80%; 7855 patients for 8000 studies [1476 for 1500].
  Remaining gaps: too many PI-RADS 4 cases, with too few cancers among them (34 vs 41.5 %),
  and too few recorded ISUP 1 cases (hidden by verification). Closing them would mean changing
  the findings' conspicuity, which also sets the image contrast: left alone, so the lesion
  image difficulty (``lesion_contrast``, the conspicuity model) is the same as in version 2.
"""
from __future__ import annotations

from .annotators import annotation_agreement, simulate_annotators
from .clinical import simulate_clinical
from .params import GENERATOR_VERSION, SynthParams, case_seeds
from .phantom import case_phantom, render_case
from .writer import case_paths, generate_cohort, load_truth


def reader_agreement(df, min_cases: int = 20):
    """Kappa per reader pair: see :func:`prostate_course.agreement.reader_agreement`."""
    from ...agreement import reader_agreement as _ra

    return _ra(df, min_cases=min_cases)


__all__ = [
    "SynthParams", "GENERATOR_VERSION", "generate_cohort", "simulate_clinical", "render_case",
    "case_paths", "case_seeds", "reader_agreement", "simulate_annotators", "annotation_agreement",
    "load_truth", "case_phantom",
]
