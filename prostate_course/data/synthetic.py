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

Public API: :func:`generate_cohort`, :func:`simulate_clinical`, :class:`SynthParams`,
:func:`reader_agreement`, :func:`marksheet_columns`.

Generative model (everything is drawn from ``SeedSequence([seed, case_index])``, so a case does
not depend on the worker count or on how many cases follow it)
------------------------------------------------------------------------------------------------
1. *Clinical*. Centre (RUMC/PCNN/ZGT 53/23/23 %) and MRI year per centre; csPCa ~ Bernoulli
   (``cspca_rate``); case ISUP given csPCa (real case_ISUP frequencies); age ~ N(65.2 or 68, 7.2);
   prostate volume ~ logN(median 61 mL or 48 mL, 0.45) (csPCa glands are smaller, as in PI-CAI);
   log PSA = log m + 0.35 (log V - log 57) + N(0, 0.6) with m = 7.9 (no csPCa) / 10.5 (csPCa);
   PSA density = PSA / V. Missing values: PSA 2.7 %, volume 1.8 %, PSA density missing per centre
   (PCNN 97 %, RUMC 5 %, ZGT 10 %) or when PSA/volume is missing, as in the real marksheet.
   A few patients (``two_study_rate``) have a second study 1-2 years later (same patient_id).
2. *Findings*. The index cancer has the case ISUP; extra cancers (ISUP <= index) with p 0.3;
   zone PZ with p ``pz_fraction`` (0.7). Radius r = 3.5 + 1.0 ISUP mm (x logN 0.2). Latent
   conspicuity v = b[ISUP] + 0.25 (r - 6) + N(0, 0.6), b = (2.2, 2.65, 2.9, 3.1, 3.4) for ISUP 1-5.
   Benign mimics ~ Poisson(``mimic_rate``): BPH nodules (TZ) and prostatitis bands (PZ),
   v ~ N(1.35, 1.0): as suspicious as small cancers, sometimes more.
3. *Readers* (after Sonn et al. 2019: moderate agreement, PI-RADS 3 the grey zone). A pool of
   ``n_readers`` readers, each with a bias b_r ~ N(0, ``reader_bias_sd``); reader r scores finding
   f as s = v_f + b_r + ``reader_noise`` N(0, 1), cut at 1.0/1.5/2.0/2.8 into PI-RADS 2..5
   (below 1.0: not reported). A reader's case score is the max over its findings; with none it
   is 2 or 1 from a case background shared by the readers plus reader tendency and noise.
   The *routine* reader's per-finding scores form ``lesion_PIRADS``
   (PI-RADS 2 findings listed with p 0.4; cancers found only by systematic biopsy appear as "N/A");
   ``pirads_reports`` lists the case scores of 3-5 readers (routine first) for most cases, one
   for ``p_one_report``, none for ``p_no_reports``.
4. *Histopathology*. Case PI-RADS >= 3 or any cancer -> biopsy (MRBx / SysBx+MRBx / SysBx / RP
   with the real frequencies; systematic when a cancer was not reported); PI-RADS <= 2 without
   cancer: 24 % systematic biopsy, else none (empty lesion_GS/ISUP, case_ISUP 0). The marksheet
   labels equal the truth (no missed cancers), so masks, images and table agree.
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
(T2W stored uncompressed), 1.4 GB for 200 cases. ``simulate_clinical``: ~2500 cases/s.

Calibration (1000 cases, seed 0, default parameters; real PI-CAI marksheet in brackets):
  age          q25/50/75 61/66/70 [61/66/70]; missing 0.0% [0.0%]
  PSA          q25/50/75 5.51/8.5/13.2 [5.88/8.5/13]; missing 2.4% [2.7%]
  PSA density  q25/50/75 0.1/0.15/0.24 [0.09/0.14/0.22]; missing 32.0% [30.1%]
  volume mL    q25/50/75 40/55/76.12 [40/57/80]; missing 2.0% [1.8%]
  csPCa        31.2% [28.3%]; case_ISUP 0-5 % 55% 14% 18% 7% 3% 3% [56% 15% 16% 7% 3% 3%]
  case PI-RADS 1-5 share  7% 35% 12% 23% 23% [9% 32% 10% 23% 25%]
  csPCa | PI-RADS 1-5    0% 3% 23% 43% 76% [1% 1% 13% 41% 66%]
  lesion entries 1/2/3/4+ 69% 20% 9% 3% [71% 24% 5% 1%]
  'N/A' in lesion_PIRADS 6.3% [2.9%]; no histopathology 29% [31%]
  readers: mean pairwise Cohen kappa 0.54 (range 0.47-0.59) [published 0.4-0.6]; reports per case 0/1/3-5: 5%/14%/81%
  patients 987 for 1000 studies [1476 for 1500]
  (1000 cases is one draw: csPCa is 28.2 % at 8000 cases. Largest gaps: csPCa among PI-RADS 3
  (23 vs 13 %) and PI-RADS 5 (76 vs 66 %) cases, too few non-csPCa cases scored 5, and twice as
  many cancers found only by systematic biopsy ("N/A"). tests/test_synthetic.py holds the
  issue's tolerances.)
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io_utils import write_json_atomic, write_text_atomic

__all__ = [
    "SynthParams",
    "generate_cohort",
    "simulate_clinical",
    "reader_agreement",
    "marksheet_columns",
    "case_paths",
    "MARKSHEET_COLUMNS",
]

#: The real PI-CAI marksheet columns, in order, plus the simulated reader study.
MARKSHEET_COLUMNS = [
    "patient_id", "study_id", "mri_date", "patient_age", "psa", "psad", "prostate_volume",
    "histopath_type", "lesion_PIRADS", "lesion_GS", "lesion_ISUP", "case_ISUP", "case_csPCa",
    "center", "pirads_reports",
]

GLAND_DIR = "anatomical_delineations/whole_gland/AI/Guerbet23"
ZONES_DIR = "anatomical_delineations/zonal_pz_tz/AI/Yuan23"
LESION_DIR = "csPCa_lesion_delineations/human_expert/resampled"
MARKSHEET = "clinical_information/marksheet.csv"
GENERATOR_VERSION = 2


def marksheet_columns() -> list[str]:
    return list(MARKSHEET_COLUMNS)


@dataclass(frozen=True)
class SynthParams:
    """Knobs of the generator (pass any of them as keyword overrides to the API functions).

    Difficulty: ``lesion_contrast`` (0 = invisible, 1 = textbook), ``mimic_rate`` (benign
    look-alikes per case), ``noise`` (relative noise sd) and ``bias_strength``. The defaults are
    deliberately moderately hard: subtle lesions, one mimic per case on average.
    """

    # --- image difficulty -----------------------------------------------------------------
    lesion_contrast: float = 0.6     #: global multiplier of lesion (and mimic) contrast
    mimic_rate: float = 1.0          #: mean number of benign mimics per case (Poisson)
    noise: float = 0.06              #: noise sd relative to the tissue signal (T2W; HBV x2)
    bias_strength: float = 0.25      #: amplitude of the log bias field on T2W/HBV
    tz_texture: float = 0.12         #: amplitude of the heterogeneous TZ texture
    # --- cohort ---------------------------------------------------------------------------
    cspca_rate: float = 0.283        #: P(case ISUP >= 2) (PI-CAI 425/1500)
    pz_fraction: float = 0.7         #: share of cancers in the peripheral zone
    two_study_rate: float = 0.016    #: P(a case is the 2nd study of the previous patient)
    # --- readers --------------------------------------------------------------------------
    n_readers: int = 5               #: size of the reader pool
    reader_bias_sd: float = 0.15     #: sd of the per-reader bias on the latent score
    reader_noise: float = 0.4        #: sd of the per-reading noise on the latent score
    p_no_reports: float = 0.05       #: share of cases with no released report
    p_one_report: float = 0.15       #: share of cases with a single report
    # --- geometry -------------------------------------------------------------------------
    t2w_matrix: int = 384            #: T2W in-plane matrix (square)
    dwi_spacing: float = 2.0         #: ADC/HBV in-plane spacing (mm)
    max_offset_mm: float = 15.0      #: gland offset from the T2W field-of-view centre (mm)

    def __post_init__(self):
        checks = {
            "lesion_contrast": (0.0, 3.0), "mimic_rate": (0.0, 10.0), "noise": (0.0, 1.0),
            "bias_strength": (0.0, 2.0), "tz_texture": (0.0, 1.0), "cspca_rate": (0.0, 1.0),
            "pz_fraction": (0.0, 1.0), "two_study_rate": (0.0, 0.5), "n_readers": (1, 50),
            "reader_bias_sd": (0.0, 5.0), "reader_noise": (0.0, 5.0),
            "p_no_reports": (0.0, 1.0), "p_one_report": (0.0, 1.0), "t2w_matrix": (64, 1024),
            "dwi_spacing": (0.5, 5.0), "max_offset_mm": (0.0, 60.0),
        }
        for name, (lo, hi) in checks.items():
            val = getattr(self, name)
            if not isinstance(val, (int, float)) or isinstance(val, bool) or not lo <= val <= hi:
                raise ValueError(f"SynthParams.{name}={val!r}: expected a number in [{lo}, {hi}]")
        if self.p_no_reports + self.p_one_report > 1:
            raise ValueError("SynthParams: p_no_reports + p_one_report must be <= 1")

    @classmethod
    def from_overrides(cls, params: dict | None = None, **kwargs) -> "SynthParams":
        merged = {**(params or {}), **kwargs}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - names)
        if unknown:
            raise TypeError(f"unknown synthetic-cohort parameter(s) {unknown}; valid: {sorted(names)}")
        typed = {}
        for f in dataclasses.fields(cls):
            if f.name in merged:
                v = merged[f.name]
                typed[f.name] = int(v) if f.type in ("int", int) and float(v).is_integer() else v
        return cls(**typed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------
# Clinical simulation
# ------------------------------------------------------------------------------------------
_CENTERS = ["RUMC", "PCNN", "ZGT"]
_CENTER_P = [800 / 1500, 350 / 1500, 350 / 1500]
# MRI years per centre (counts from the real marksheet)
_YEARS = {
    "RUMC": ({2011: 7, 2012: 316, 2013: 5, 2014: 32, 2015: 49, 2016: 62, 2017: 89, 2018: 88,
              2019: 78, 2020: 73, 2021: 1}),
    "PCNN": ({2015: 6, 2016: 67, 2017: 54, 2018: 113, 2019: 101, 2020: 9}),
    "ZGT": ({2018: 39, 2019: 129, 2020: 117, 2021: 65}),
}
_PSAD_MISSING = {"RUMC": 0.05, "PCNN": 0.97, "ZGT": 0.10}
_ISUP_CS = ([2, 3, 4, 5], [234 / 425, 99 / 425, 40 / 425, 52 / 425])
_P_ISUP1 = 228 / (847 + 228)
_CONSP_BASE = {1: 2.2, 2: 2.65, 3: 2.9, 4: 3.1, 5: 3.4}
_CUTS = np.array([1.0, 1.5, 2.0, 2.8])  # latent score -> PI-RADS 2..5 (below 1.0: not reported)
_GS = {1: ["3+3"], 2: ["3+4"], 3: ["4+3"], 4: ["4+4", "3+5", "5+3"], 5: ["4+5", "5+4", "5+5"]}
_B_VALUE = 1400.0e-6  # s/mm^2 x (ADC in 1e-6 mm^2/s)
_READER_KEY = 0x5EAD  # spawn key of the reader pool (shared by all cases of a cohort)


def _case_seeds(seed: int, index: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """Independent streams for the clinical draw and the image of case ``index``."""
    ss = np.random.SeedSequence([int(seed), int(index)])
    clin, img = ss.spawn(2)
    return clin, img


def _reader_pool(seed: int, p: SynthParams) -> list[dict]:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _READER_KEY]))
    return [
        {"bias": float(rng.normal(0, p.reader_bias_sd)), "base_offset": float(rng.normal(0, 0.3))}
        for _ in range(p.n_readers)
    ]


def _fmt_num(x: float, decimals: int) -> str:
    """Format like the real marksheet: '13', '7.7', '0.09'; '' for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    s = f"{round(float(x), decimals):.{decimals}f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


def _draw_date(rng: np.random.Generator, center: str, after: _dt.date | None = None) -> _dt.date:
    if after is not None:
        return after + _dt.timedelta(days=int(rng.integers(300, 800)))
    years, counts = zip(*_YEARS[center].items())
    year = int(rng.choice(years, p=np.array(counts) / sum(counts)))
    return _dt.date(year, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 365)))


def _score(v: float, bias: float, noise_sd: float, rng: np.random.Generator) -> int:
    """Reader PI-RADS of one finding: 0 = not reported, else 2..5."""
    s = v + bias + noise_sd * rng.standard_normal()
    k = int(np.searchsorted(_CUTS, s, side="right"))
    return 0 if k == 0 else k + 1


def _simulate_case(index: int, seed: int, p: SynthParams, readers: list[dict],
                   prev: dict | None) -> dict:
    """One marksheet row plus hidden truth; ``prev`` is the previous case (for 2nd studies)."""
    rng = np.random.default_rng(_case_seeds(seed, index)[0])
    second = prev is not None and not prev["_second"] and rng.random() < p.two_study_rate
    center = prev["center"] if second else str(rng.choice(_CENTERS, p=_CENTER_P))
    cs = bool(rng.random() < p.cspca_rate)
    if cs:
        isup = int(rng.choice(_ISUP_CS[0], p=_ISUP_CS[1]))
    else:
        isup = 1 if rng.random() < _P_ISUP1 else 0
    if second:
        age = int(prev["patient_age"]) + int(rng.integers(1, 3))
        vol_true = float(prev["_volume_true"]) * float(np.exp(rng.normal(0.03, 0.08)))
        date = _draw_date(rng, center, after=_dt.date.fromisoformat(prev["mri_date"]))
    else:
        age = int(np.clip(round(rng.normal(68.0 if cs else 65.2, 7.2)), 38, 88))
        vol_true = float(np.clip(np.exp(rng.normal(np.log(48.0 if cs else 61.0), 0.45)), 12, 300))
        date = _draw_date(rng, center)
    log_psa = np.log(10.5 if cs else 7.9) + 0.35 * (np.log(vol_true) - np.log(57.0)) + rng.normal(0, 0.6)
    psa_true = float(np.clip(np.exp(log_psa), 0.3, 250))
    # values as reported (rounded like the real table), with the real missingness
    psa = round(psa_true, 2 if rng.random() < 0.2 else 1)
    vol = round(vol_true * 2) / 2 if rng.random() < 0.1 else float(round(vol_true))
    psa_missing = rng.random() < 40 / 1500
    vol_missing = rng.random() < 27 / 1500
    psad_missing = psa_missing or vol_missing or rng.random() < _PSAD_MISSING[center]
    psad = round(psa / vol, 2) if not psad_missing else math.nan
    psa = math.nan if psa_missing else psa
    vol = math.nan if vol_missing else vol

    # --- findings: cancers then mimics ---------------------------------------------------
    findings: list[dict] = []
    if isup >= 1:
        grades = [isup]
        if rng.random() < 0.3:
            grades.append(int(rng.integers(1, isup + 1)))
            if rng.random() < 0.25:
                grades.append(int(rng.integers(1, isup + 1)))
        for g in grades:
            r = float(np.clip((3.5 + 1.0 * g) * np.exp(rng.normal(0, 0.2)), 2.5, 15.0))
            v = _CONSP_BASE[g] + 0.25 * (r - 6.0) + rng.normal(0, 0.6)
            zone = "PZ" if rng.random() < p.pz_fraction else "TZ"
            findings.append({"kind": "cancer", "isup": g, "zone": zone, "radius": r, "v": float(v)})
    for _ in range(int(rng.poisson(p.mimic_rate))):
        kind = "bph" if rng.random() < 0.55 else "prostatitis"
        r = float(np.clip(rng.uniform(3.5, 8.0), 2.5, 15))
        findings.append({"kind": kind, "isup": 0, "zone": "TZ" if kind == "bph" else "PZ",
                         "radius": r, "v": float(rng.normal(1.35, 1.0))})
    order = rng.permutation(len(findings))
    findings = [findings[i] for i in order]

    # --- readers ---------------------------------------------------------------------------
    u = rng.random()
    n_rep = 0 if u < p.p_no_reports else 1 if u < p.p_no_reports + p.p_one_report else int(rng.integers(3, 6))
    n_rep = min(n_rep, p.n_readers)
    n_read = max(n_rep, 1)
    reader_ids = [int(x) for x in rng.choice(p.n_readers, size=n_read, replace=False)]
    background = float(rng.standard_normal())
    scores = []   # per reader: per-finding PI-RADS (0 = not reported)
    case_scores = []
    for rid in reader_ids:
        rd = readers[rid]
        sc = [_score(f["v"], rd["bias"], p.reader_noise, rng) for f in findings]
        # no reportable finding: PI-RADS 2 (benign-looking changes) or 1, from a case-level
        # background shared by the readers plus reader tendency and noise
        base = 2 if background + rd["base_offset"] + 0.5 * rng.standard_normal() > -0.75 else 1
        scores.append(sc)
        case_scores.append(max([s for s in sc if s > 0], default=base))
    routine = scores[0]
    pmax = case_scores[0]

    # --- histopathology and marksheet lists --------------------------------------------------
    # PI-RADS 2 findings are listed only sometimes (as in routine reports)
    reported = [i for i, s in enumerate(routine) if s > 2 or (s == 2 and rng.random() < 0.4)]
    unreported_cancer = [i for i, f in enumerate(findings) if f["kind"] == "cancer" and routine[i] == 0]
    if pmax >= 3 or isup >= 1:
        hp = str(rng.choice(["MRBx", "SysBx+MRBx", "SysBx", "RP"], p=[0.65, 0.24, 0.086, 0.024]))
        if unreported_cancer and hp == "MRBx":
            hp = "SysBx+MRBx" if reported else "SysBx"
        if unreported_cancer and hp == "SysBx+MRBx" and not reported:
            hp = "SysBx"
    elif rng.random() < 0.24:
        hp = "SysBx" if rng.random() < 0.92 else "MRBx"
    else:
        hp = ""
    lesion_pirads: list[str] = []
    lesion_gs: list[str] = []
    if reported:
        for i in reported:
            lesion_pirads.append(str(routine[i]))
            f = findings[i]
            if f["kind"] == "cancer":
                lesion_gs.append(str(rng.choice(_GS[f["isup"]])))
            elif routine[i] <= 2 and pmax >= 3 and rng.random() < 0.5:
                lesion_gs.append("N/A")   # low-suspicion finding not targeted
            else:
                lesion_gs.append("0+0")
    else:
        lesion_pirads.append(str(pmax))
        lesion_gs.append("0+0")
    for i in unreported_cancer:  # found by systematic biopsy only
        lesion_pirads.append("N/A")
        lesion_gs.append(str(rng.choice(_GS[findings[i]["isup"]])))
    if hp:
        gs_str = ",".join(lesion_gs)
        isup_str = ",".join(str(_gs_to_isup(g)) for g in lesion_gs if g != "N/A")
    else:
        gs_str = isup_str = ""
    reports = ";".join(str(s) for s in case_scores[:n_rep])
    return {
        "patient_id": None, "study_id": None,  # filled by the caller (sequential ids)
        "mri_date": date.isoformat(), "patient_age": age, "psa": psa, "psad": psad,
        "prostate_volume": vol, "histopath_type": hp, "lesion_PIRADS": ",".join(lesion_pirads),
        "lesion_GS": gs_str, "lesion_ISUP": isup_str, "case_ISUP": isup,
        "case_csPCa": "YES" if isup >= 2 else "NO", "center": center, "pirads_reports": reports,
        # hidden truth (not written to the marksheet)
        "gt_volume_ml": round(vol_true, 2), "gt_psa": round(psa_true, 3),
        "gt_reader_ids": ";".join(str(r) for r in reader_ids[:n_rep]),
        "gt_routine_reader": reader_ids[0],
        "gt_findings": json.dumps([{k: (round(v, 3) if isinstance(v, float) else v)
                                    for k, v in f.items()} for f in findings]),
        "gt_n_cancers": sum(f["kind"] == "cancer" for f in findings),
        "gt_n_mimics": sum(f["kind"] != "cancer" for f in findings),
        "_second": second, "_volume_true": vol_true,
    }


def _gs_to_isup(gs: str) -> int:
    if gs == "0+0":
        return 0
    a, b = (int(x) for x in gs.split("+"))
    s = a + b
    if s <= 6:
        return 1
    if s == 7:
        return 2 if a == 3 else 3
    return 4 if s == 8 else 5


def simulate_clinical(n_cases: int, seed: int = 0, **params) -> pd.DataFrame:
    """The marksheet of a synthetic cohort, without drawing images (fast: ~2500 cases/s).

    Returns one row per case with :data:`MARKSHEET_COLUMNS` (strings for the per-lesion lists,
    floats with NaN for missing numbers, ``case_csPCa`` "YES"/"NO") plus hidden truth columns
    ``gt_*`` (true volume and PSA, reader ids of ``pirads_reports``, findings as JSON) and
    ``case_index``. :func:`generate_cohort` with the same seed and parameters uses these rows.
    Row ``i`` depends only on (seed, i) and the rows before it, so a smaller cohort is a prefix
    of a larger one.
    """
    if int(n_cases) != n_cases or n_cases < 1:
        raise ValueError(f"n_cases must be a positive integer, got {n_cases!r}")
    p = params.pop("_params", None) or SynthParams.from_overrides(params)
    readers = _reader_pool(seed, p)
    rows: list[dict] = []
    prev = None
    n_patients = 0
    for i in range(int(n_cases)):
        row = _simulate_case(i, seed, p, readers, prev)
        if row["_second"]:
            row["patient_id"] = prev["patient_id"]
        else:
            row["patient_id"] = 10000 + n_patients
            n_patients += 1
        row["study_id"] = 1000000 + i
        row["case_index"] = i
        rows.append(row)
        prev = row
    df = pd.DataFrame(rows).drop(columns=["_second", "_volume_true"])
    front = MARKSHEET_COLUMNS + ["case_index"]
    return df[front + [c for c in df.columns if c not in front]]


def _marksheet_text(df: pd.DataFrame) -> str:
    """CSV text with the real formatting (integers without '.0', empty for missing)."""
    out = pd.DataFrame({
        "patient_id": df["patient_id"].astype(int).astype(str),
        "study_id": df["study_id"].astype(int).astype(str),
        "mri_date": df["mri_date"],
        "patient_age": df["patient_age"].astype(int).astype(str),
        "psa": [_fmt_num(x, 2) for x in df["psa"]],
        "psad": [_fmt_num(x, 2) for x in df["psad"]],
        "prostate_volume": [_fmt_num(x, 1) for x in df["prostate_volume"]],
        "histopath_type": df["histopath_type"], "lesion_PIRADS": df["lesion_PIRADS"],
        "lesion_GS": df["lesion_GS"], "lesion_ISUP": df["lesion_ISUP"],
        "case_ISUP": df["case_ISUP"].astype(int).astype(str),
        "case_csPCa": df["case_csPCa"], "center": df["center"],
        "pirads_reports": df["pirads_reports"],
    })
    return out.to_csv(index=False, lineterminator="\n")


def reader_agreement(df: pd.DataFrame, min_cases: int = 20) -> pd.DataFrame:
    """Cohen's kappa (unweighted, scikit-learn) for every pair of readers with >= ``min_cases``
    cases read by both. Reader identities come from ``gt_reader_ids`` (synthetic cohorts); without
    it, report positions (1st vs 2nd report, ...) stand in for readers.

    Returns a DataFrame (reader_a, reader_b, n, kappa); ``.kappa.mean()`` is the mean pairwise
    agreement (Cohen 1960).
    """
    from sklearn.metrics import cohen_kappa_score

    reps = df["pirads_reports"].fillna("").astype(str)
    ids = df["gt_reader_ids"].fillna("").astype(str) if "gt_reader_ids" in df else None
    pairs: dict[tuple, list[tuple[int, int]]] = {}
    for k, rep in enumerate(reps):
        scores = [int(s) for s in rep.split(";") if s.strip()]
        if len(scores) < 2:
            continue
        who = [int(x) for x in ids.iloc[k].split(";")] if ids is not None else list(range(len(scores)))
        by = dict(zip(who, scores))
        keys = sorted(by)
        for a in range(len(keys)):
            for b in range(a + 1, len(keys)):
                pairs.setdefault((keys[a], keys[b]), []).append((by[keys[a]], by[keys[b]]))
    rows = []
    for (a, b), vals in sorted(pairs.items()):
        if len(vals) >= min_cases:
            x, y = zip(*vals)
            kappa = cohen_kappa_score(x, y, labels=[1, 2, 3, 4, 5])
            rows.append({"reader_a": a, "reader_b": b, "n": len(vals), "kappa": float(kappa)})
    return pd.DataFrame(rows, columns=["reader_a", "reader_b", "n", "kappa"])


# ------------------------------------------------------------------------------------------
# Image geometry and rendering
# ------------------------------------------------------------------------------------------
@dataclass
class _Grid:
    """An image grid as SimpleITK sees it: array (z, y, x); world p = origin + D (spacing * ijk)."""

    shape: tuple[int, int, int]          # (nz, ny, nx)
    spacing: tuple[float, float, float]  # (sx, sy, sz) mm
    origin: np.ndarray                   # (3,) world mm, LPS
    direction: np.ndarray                # (3, 3) columns = axis directions

    def world(self, box=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (x, y, z) of the voxels in ``box`` (z, y, x slices), broadcast-ready."""
        nz, ny, nx = self.shape
        box = box or (slice(0, nz), slice(0, ny), slice(0, nx))
        k = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None, None] * self.spacing[2]
        j = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :, None] * self.spacing[1]
        i = np.arange(box[2].start, box[2].stop, dtype=np.float32)[None, None, :] * self.spacing[0]
        D = self.direction.astype(np.float32)
        o = self.origin.astype(np.float32)
        out = []
        for a in range(3):   # skip zero terms: arrays stay broadcast-shaped (cheaper)
            q = np.full((1, 1, 1), o[a], np.float32)
            for coef, ax in ((D[a, 0], i), (D[a, 1], j), (D[a, 2], k)):
                if abs(float(coef)) > 1e-9:
                    q = q + coef * ax
            out.append(q)
        return tuple(out)

    def box(self, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice] | None:
        """Index box (z, y, x) covering a world ball; None when it misses the grid."""
        idx = self.direction.T @ (np.asarray(centre, float) - self.origin) / np.array(self.spacing)
        r = radius / np.array(self.spacing)
        lo = np.floor(idx - r).astype(int)
        hi = np.ceil(idx + r).astype(int) + 1
        size = np.array(self.shape[::-1])
        lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
        if np.any(hi <= lo):
            return None
        return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))


def _rot(axis: str, deg: float) -> np.ndarray:
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _grid_centred(shape, spacing, direction, centre) -> _Grid:
    """Grid whose field-of-view centre sits at world point ``centre``."""
    nz, ny, nx = shape
    half = np.array([(nx - 1) * spacing[0], (ny - 1) * spacing[1], (nz - 1) * spacing[2]]) / 2
    origin = np.asarray(centre, float) - direction @ half
    return _Grid(tuple(shape), tuple(float(s) for s in spacing), origin, np.asarray(direction, float))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def _ramp(x: np.ndarray) -> np.ndarray:
    """Soft inside-indicator from a signed distance in edge widths: clip(0.5 + x / 2, 0, 1).

    A linear ramp one edge width wide (partial-volume anti-aliasing); computed in place, it is
    several times cheaper than a logistic on 3 million voxels.
    """
    x = np.asarray(x, dtype=np.float32)
    x *= 0.5
    x += 0.5
    return np.clip(x, 0.0, 1.0, out=x)


def _sub(q: np.ndarray, box) -> np.ndarray:
    """``q[box]`` for a broadcast-shaped coordinate array (size-1 axes are kept whole)."""
    return q[tuple(slice(None) if q.shape[d] == 1 else box[d] for d in range(3))]


class _Phantom:
    """Analytic pelvis + prostate of one case, in world millimetres (LPS)."""

    def __init__(self, row: dict, rng: np.random.Generator, p: SynthParams, centre: np.ndarray):
        self.p = p
        self.c = centre
        vol = float(row["gt_volume_ml"]) * 1000.0  # mm^3
        ratio = np.array([1.2, 0.9, 1.0]) * np.exp(rng.normal(0, 0.08, 3))
        r = (3 * vol / (4 * math.pi * ratio.prod())) ** (1 / 3)
        self.axes = ratio * r * 1.018   # (a_x, b_y, c_z); 1.018 offsets the posterior flattening
        f_tz = float(np.clip(0.35 + 0.4 * _sigmoid((vol / 1000 - 45) / 15) + rng.normal(0, 0.05), 0.25, 0.85))
        self.tz_centre = centre + np.array([0, -0.3, 0.12]) * self.axes
        self.tz_axes = self.axes * np.array([0.8, 0.68, 0.85]) * (f_tz / 0.42) ** (1 / 3)
        self.tex = [(rng.normal(0, 1, 3) * rng.uniform(0.15, 0.4), rng.uniform(0, 2 * np.pi)) for _ in range(3)]
        self.lesions = self._place(json.loads(row["gt_findings"]), rng)
        a, b = self.axes[0], self.axes[1]
        self.body = (np.array([0, -25.0 + rng.normal(0, 5), 0]) + centre,
                     np.array([rng.uniform(150, 185), rng.uniform(105, 130)]))
        self.muscle_dx = a + rng.uniform(12, 20)
        self.rectum = centre + np.array([rng.normal(0, 3), b + rng.uniform(8, 13), -5.0])
        self.rectum_r = np.array([rng.uniform(14, 20), rng.uniform(9, 13)])
        self.bladder = centre + np.array([0, -0.3 * b, self.axes[2] + rng.uniform(15, 25)])
        self.bladder_r = np.array([rng.uniform(30, 45), rng.uniform(25, 35), rng.uniform(18, 28)])
        self.pubis = centre + np.array([0, -b - rng.uniform(18, 26), 0])

    # -- zones -----------------------------------------------------------------------------
    def _rho_gland(self, x, y, z):
        a, b, c = self.axes
        az = a * (1 + 0.12 * np.clip(z / c, -1, 1))          # wider at the base, narrow apex
        by = np.where(y > 0, b * 0.9, b)                      # flattened posteriorly (rectum)
        return np.sqrt((x / az) ** 2 + (y / by) ** 2 + (z / c) ** 2)

    def _rho_tz(self, x, y, z):
        d = self.tz_centre - self.c
        a, b, c = self.tz_axes
        return np.sqrt(((x - d[0]) / a) ** 2 + ((y - d[1]) / b) ** 2 + ((z - d[2]) / c) ** 2)

    def zone_at(self, u: np.ndarray) -> str | None:
        if self._rho_gland(*u) >= 0.92:
            return None
        return "TZ" if self._rho_tz(*u) < 0.95 else "PZ"

    def _place(self, findings: list[dict], rng: np.random.Generator) -> list[dict]:
        """Put each finding at a random point of its zone (rejection sampling in the gland)."""
        out = []
        for f in findings:
            for _ in range(400):
                u = rng.uniform(-1, 1, 3) * self.axes
                if f["kind"] == "cancer" and f["zone"] == "PZ" and rng.random() < 0.7 and u[1] < 0:
                    u[1] = -u[1]                                   # PZ cancers mostly posterior
                if self.zone_at(u) == f["zone"] and self._rho_gland(*u) < 0.85:
                    break
            else:
                u = np.zeros(3) if f["zone"] == "TZ" else np.array([0, 0.7 * self.axes[1], 0])
            g = dict(f)
            g["u"] = u
            shape = np.exp(rng.normal(0, 0.2, 3))
            if f["kind"] == "prostatitis":                         # a flat band
                shape = shape * np.array([1.8, 0.45, 1.2])
            g["r3"] = f["radius"] * shape / shape.prod() ** (1 / 3)
            g["wob"] = rng.normal(0, 1, (3, 3))
            g["sign"] = 1.0 if rng.random() < 0.5 else -1.0
            out.append(g)
        return out

    # -- rendering -------------------------------------------------------------------------
    def render(self, grid: _Grid, maps: tuple[str, ...], labels: bool = False) -> dict[str, np.ndarray]:
        """Tissue maps ('t2', 'adc', 's0') and, with ``labels``, gland/zones/lesion masks."""
        px, py, pz = grid.world()
        w = 0.6 * max(grid.spacing[0], grid.spacing[1])           # edge width ~ partial volume
        T = {"t2": 0, "adc": 1, "hbv": 2}
        vals = {  # (t2, adc, s0) per tissue
            "air": (0.0, 0.0, 0.0), "fat": (780.0, 250.0, 0.06), "muscle": (280.0, 1450.0, 1.0),
            "rectum_wall": (330.0, 1300.0, 0.9), "urine": (1500.0, 2900.0, 1.4),
            "bone": (120.0, 500.0, 0.1), "pz": (900.0, 1700.0, 1.2), "tz": (480.0, 1250.0, 1.0),
        }
        # high-b signal of each tissue: S0 exp(-b ADC), b = 1400 s/mm^2
        vals = {k: (t2, adc, 100.0 * s0 * math.exp(-_B_VALUE * adc)) for k, (t2, adc, s0) in vals.items()}
        out = {m: np.zeros(grid.shape, np.float32) for m in maps}

        def paint(box, ind, tissue):
            for m in maps:
                v = vals[tissue][T[m]]
                reg = out[m][box]
                reg += (v - reg) * ind

        full = (slice(None),) * 3
        bc, br = self.body
        rb = np.sqrt(((px - bc[0]) / br[0]) ** 2 + ((py - bc[1]) / br[1]) ** 2)
        paint(full, _ramp((1 - rb) * 110 / w), "fat")
        for sx in (-1, 1):   # obturator internus (lateral) muscles, elliptic cylinders
            mc = self.c + np.array([sx * (self.muscle_dx + 12), 0, 0])
            box = grid.box(mc, 45)
            if box:
                x, y, z = (_sub(q, box) for q in (px, py, pz))
                rr = np.sqrt(((x - mc[0]) / 12) ** 2 + ((y - mc[1]) / 35) ** 2)
                paint(box, _ramp((1 - rr) * 12 / w), "muscle")
        box = grid.box(self.pubis, 40)
        if box:
            x, y, z = (_sub(q, box) for q in (px, py, pz))
            rr = np.sqrt(((x - self.pubis[0]) / 30) ** 2 + ((y - self.pubis[1]) / 9) ** 2)
            paint(box, _ramp((1 - rr) * 9 / w), "bone")
        box = grid.box(self.rectum, 25)
        if box:
            x, y, z = (_sub(q, box) for q in (px, py, pz))
            rr = np.sqrt(((x - self.rectum[0]) / self.rectum_r[0]) ** 2 + ((y - self.rectum[1]) / self.rectum_r[1]) ** 2)
            paint(box, _ramp((1 - rr) * 10 / w), "rectum_wall")
            paint(box, _ramp((0.7 - rr) * 10 / w), "air")
        box = grid.box(self.bladder, float(self.bladder_r.max()) + 3)
        if box:
            x, y, z = (_sub(q, box) for q in (px, py, pz))
            u = (x - self.bladder[0], y - self.bladder[1], z - self.bladder[2])
            rr = np.sqrt(sum((u[a] / self.bladder_r[a]) ** 2 for a in range(3)))
            paint(box, _ramp((1 - rr) * 25 / w), "urine")

        res = {}
        box = grid.box(self.c, float(self.axes.max()) * 1.2 + 3)
        if labels:
            for k in ("gland", "zones", "lesions"):
                res[k] = np.zeros(grid.shape, np.uint8 if k != "lesions" else np.uint16)
        if box:
            x, y, z = (_sub(q, box) - self.c[a] for a, q in enumerate((px, py, pz)))
            rmin = float(self.axes.min())
            rg = self._rho_gland(x, y, z)
            G = _ramp((1 - rg) * rmin / w)
            rt = self._rho_tz(x, y, z)
            Tz = _ramp((0.95 - rt) * float(self.tz_axes.min()) / w) * G
            paint(box, G, "pz")
            paint(box, Tz, "tz")
            if self.p.tz_texture > 0:   # heterogeneous TZ (BPH) and milder PZ striation
                tex = sum(np.cos(k[0] * x + k[1] * y + k[2] * z + ph) for k, ph in self.tex) / 1.7
                f = self.p.tz_texture * tex * (Tz + 0.3 * (G - Tz))
                if "hbv" in maps:   # follows the ADC change: S exp(-b ADC (1 + f))
                    out["hbv"][box] *= np.exp(-_B_VALUE * out["adc"][box] * f)
                for m in ("t2", "adc"):
                    if m in maps:
                        out[m][box] *= 1 + f
            if labels:
                gl = rg < 1.0
                res["gland"][box] = gl
                res["zones"][box] = np.where(gl, np.where(rt < 0.95, 2, 1), 0)
            for les in self.lesions:   # each on its own sub-box of the gland box
                lb = grid.box(self.c + les["u"], float(les["r3"].max()) * 1.35 + 2 * w)
                if lb is None:
                    continue
                loc = tuple(slice(max(l.start, g.start) - g.start, min(l.stop, g.stop) - g.start)
                            for l, g in zip(lb, box))
                if any(sl.stop <= sl.start for sl in loc):
                    continue
                sub = tuple(slice(g.start + sl.start, g.start + sl.stop) for sl, g in zip(loc, box))
                self._paint_lesion(les, sub, tuple(_sub(q, loc) for q in (x, y, z)), G[loc], out, maps, w,
                                   res if labels else None)
        return {**out, **res}

    def _paint_lesion(self, les, gbox, xyz, G, out, maps, w, res):
        x, y, z = (q - les["u"][a] for a, q in enumerate(xyz))
        r3 = les["r3"]
        wob = les["wob"]
        rr = np.sqrt((x / r3[0]) ** 2 + (y / r3[1]) ** 2 + (z / r3[2]) ** 2)
        rr = rr * (1 + 0.15 * np.sin(wob[0, 0] * x / r3[0] + wob[0, 1]) * np.cos(wob[1, 0] * y / r3[1] + wob[1, 1])
                   + 0.1 * np.sin(wob[2, 0] * z / r3[2] + wob[2, 1]))
        ind = _ramp((1 - rr) * float(r3.min()) / w) * G
        k = self.p.lesion_contrast * float(np.clip(les["v"] / 2.5, 0.05, 1.3))
        kind = les["kind"]
        if kind == "cancer":
            d = {"t2": -0.45 * k, "adc": -0.5 * k}
        elif kind == "bph":   # circumscribed nodule, T2 bright or dark with a dark rim, mild ADC drop
            rim = _ramp((1 - np.abs(rr - 1) * 8)) * G
            d = {"t2": 0.25 * k * les["sign"], "adc": -0.25 * k}
            if "t2" in out:
                out["t2"][gbox] *= 1 - 0.25 * k * rim
        else:                  # prostatitis: T2 dark band, small ADC drop, HBV barely
            d = {"t2": -0.4 * k, "adc": -0.15 * k}
        if "hbv" in maps:      # low ADC -> bright high-b image: S exp(-b ADC (1 + d_adc))
            out["hbv"][gbox] *= np.exp(-_B_VALUE * out["adc"][gbox] * d["adc"] * ind)
        for m in ("t2", "adc"):
            if m in maps:
                out[m][gbox] *= 1 + d[m] * ind
        if res is not None and kind == "cancer" and les["isup"] >= 2:
            m = (rr < 1.0) & (res["gland"][gbox] > 0)
            lab = res["lesions"][gbox]
            lab[m] = np.maximum(lab[m], les["isup"])


def _apply_bias(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Multiply ``img`` in place by a smooth field exp(strength * f), f = f_z + f_y + f_x.

    Separable in the grid axes, so exp(f) is a product of three 1D profiles (no 3D exp): a cheap
    stand-in for coil sensitivity (N4-style bias; Tustison et al. 2010 correct exactly this).
    """
    if strength <= 0:
        return img
    nz, ny, nx = img.shape
    t = [np.linspace(-1, 1, n) for n in (nz, ny, nx)]
    c = rng.normal(0, 1, (3, 2)) * np.array([[0.3, 0.3], [1.0, 1.0], [0.5, 0.5]])
    fz = c[0, 0] * t[0] + c[0, 1] * t[0] ** 2
    fy = c[1, 0] * t[1] + c[1, 1] * (t[1] ** 2 - 0.3)          # coil: brighter on one side
    fx = c[2, 0] * t[2] + c[2, 1] * (t[2] ** 2 - 0.3)
    scale = strength / max(np.abs(fz).max() + np.abs(fy).max() + np.abs(fx).max(), 1e-6)
    img *= np.exp(scale * fz).astype(np.float32)[:, None, None]
    img *= np.exp(scale * fy).astype(np.float32)[None, :, None]
    img *= np.exp(scale * fx).astype(np.float32)[None, None, :]
    return img


def _to_int16(x: np.ndarray) -> np.ndarray:
    np.rint(x, out=x)
    np.clip(x, 0, 32767, out=x)
    return x.astype(np.int16)


def _rician(signal: np.ndarray, sd: float, rng: np.random.Generator, channels: int = 2) -> np.ndarray:
    """Magnitude image sqrt((S + n1)^2 + n2^2) (Rician; Gudbjartsson & Patz 1995).

    ``channels=1`` gives |S + n1| (a folded normal): the same noise floor in air and Gaussian
    noise in tissue for half the random numbers; used on the large T2W grid for speed.
    """
    n1 = rng.standard_normal(signal.shape, dtype=np.float32)
    n1 *= np.float32(sd)
    n1 += signal
    if channels == 1:
        return np.abs(n1, out=n1)
    n2 = rng.standard_normal(signal.shape, dtype=np.float32)
    n2 *= np.float32(sd)
    n1 *= n1
    n2 *= n2
    n1 += n2
    return np.sqrt(n1, out=n1)


def _case_geometry(rng: np.random.Generator, p: SynthParams) -> tuple[_Grid, _Grid, np.ndarray]:
    """T2W and ADC/HBV grids of one case plus the gland centre (world, mm)."""
    gland = np.array([rng.uniform(-20, 20), rng.uniform(10, 60), rng.uniform(-40, 40)])
    s_xy = float(rng.choice([0.5, 0.45, 0.4], p=[0.6, 0.2, 0.2]))
    s_z = float(rng.choice([3.0, 3.3, 3.6], p=[0.6, 0.2, 0.2]))
    nz = int(rng.integers(19, 26))
    tilt = float(rng.uniform(0, 15))                                   # oblique axial
    D = _rot("x", tilt)
    off = np.array([rng.uniform(-1, 1) * p.max_offset_mm, rng.uniform(-1, 1) * p.max_offset_mm,
                    rng.uniform(-8, 8)])
    n = int(p.t2w_matrix)
    t2w = _grid_centred((nz, n, n), (s_xy, s_xy, s_z), D, gland + D @ off)
    sd_xy = float(p.dwi_spacing) * float(rng.choice([1.0, 0.9375, 1.1]))
    sd_z = float(rng.choice([s_z, 3.0, 3.6]))
    Dd = D @ _rot("z", float(rng.uniform(-4, 4)) if rng.random() < 0.6 else 0.0)
    fov_z = nz * s_z
    ndz = int(math.ceil(fov_z / sd_z)) + int(rng.integers(0, 3))
    nx, ny = 128, int(rng.choice([104, 112, 120, 128]))
    doff = off + np.array([rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(-0.5, 0.5) * sd_z])
    dwi = _grid_centred((ndz, ny, nx), (sd_xy, sd_xy, sd_z), Dd, gland + D @ doff)
    return t2w, dwi, gland


def render_case(row: dict, seed: int, params: SynthParams | None = None) -> dict[str, Any]:
    """Draw one case's images and masks in memory (numpy arrays + grids); see :func:`generate_cohort`."""
    p = params or SynthParams()
    rng = np.random.default_rng(_case_seeds(seed, int(row["case_index"]))[1])
    t2w_grid, dwi_grid, gland = _case_geometry(rng, p)
    ph = _Phantom(row, rng, p, gland)
    a = ph.render(t2w_grid, ("t2",), labels=True)
    gain = float(np.exp(rng.normal(0, 0.3)))
    t2 = _apply_bias(a["t2"], rng, p.bias_strength)
    t2 = _rician(t2, p.noise * 900.0, rng, channels=1)
    t2 *= gain
    d = ph.render(dwi_grid, ("adc", "hbv"))
    adc = d["adc"] + rng.standard_normal(d["adc"].shape, dtype=np.float32) * np.float32(p.noise * 2.0 * 1700.0)
    hbv = _apply_bias(d["hbv"], rng, 0.5 * p.bias_strength)
    pz_level = 100.0 * 1.2 * math.exp(-_B_VALUE * 1700.0)
    hbv = _rician(hbv, p.noise * 2.0 * pz_level, rng)
    hbv *= np.float32(np.exp(rng.normal(0, 0.3)) * 4.0)
    return {
        "t2w": _to_int16(t2), "adc": _to_int16(adc), "hbv": _to_int16(hbv),
        "gland": a["gland"], "zones": a["zones"], "lesions": a["lesions"],
        "t2w_grid": t2w_grid, "dwi_grid": dwi_grid,
    }


# ------------------------------------------------------------------------------------------
# Writing the raw layout
# ------------------------------------------------------------------------------------------
_SEQS = ("t2w", "adc", "hbv")


def case_paths(out_dir: str | os.PathLike, patient_id: int, study_id: int) -> dict[str, Path]:
    """Where the files of one case live in the raw PI-CAI layout."""
    out = Path(out_dir)
    cid = f"{int(patient_id)}_{int(study_id)}"
    paths = {s: out / "images" / str(int(patient_id)) / f"{cid}_{s}.mha" for s in _SEQS}
    paths["gland"] = out / "labels" / GLAND_DIR / f"{cid}.nii.gz"
    paths["zones"] = out / "labels" / ZONES_DIR / f"{cid}.nii.gz"
    paths["lesions"] = out / "labels" / LESION_DIR / f"{cid}.nii.gz"
    return paths


def _write_sitk(arr: np.ndarray, grid: _Grid, path: Path, compress: bool = True) -> None:
    """Write with SimpleITK to a temporary name (same extension) and rename: never half-written."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(grid.spacing)
    img.SetOrigin(tuple(float(v) for v in grid.origin))
    img.SetDirection(tuple(float(v) for v in grid.direction.ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{ext}")
    try:
        sitk.WriteImage(img, str(tmp), useCompression=compress)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_case(job: tuple) -> tuple[str, float, bool]:
    """Worker: render and write one case unless all its files exist (idempotent)."""
    row, seed, pdict, out_dir = job
    t0 = time.perf_counter()
    paths = case_paths(out_dir, row["patient_id"], row["study_id"])
    cid = f"{int(row['patient_id'])}_{int(row['study_id'])}"
    if all(pth.is_file() for pth in paths.values()):
        return cid, 0.0, False
    try:
        c = render_case(row, seed, SynthParams(**pdict))
        for s in _SEQS:
            # T2W uncompressed (noise does not compress: zlib would cost ~40 % of the case time)
            _write_sitk(c[s], c["t2w_grid"] if s == "t2w" else c["dwi_grid"], paths[s], compress=s != "t2w")
        for k in ("gland", "zones", "lesions"):
            _write_sitk(c[k], c["t2w_grid"], paths[k])
    except Exception as e:  # name the case in the error
        raise RuntimeError(f"synthetic case {cid} (index {row['case_index']}) failed: {e!r}") from e
    return cid, time.perf_counter() - t0, True


def generate_cohort(out_dir: str | os.PathLike, n_cases: int, seed: int = 0, *,
                    workers: int | None = None, progress: bool = True, **params) -> Path:
    """Write a synthetic cohort of ``n_cases`` in the raw PI-CAI layout under ``out_dir``.

    Deterministic (same seed and parameters -> same bytes, whatever ``workers``), idempotent
    (finished cases are not rewritten; an interrupted run resumes) and atomic per file (temporary
    name, then rename); the marksheet is written last. ``params`` override :class:`SynthParams`
    fields, e.g. ``lesion_contrast=0.8``. A folder made with another seed, size or parameters is
    refused with a ValueError (use a new folder). Returns ``out_dir`` as an absolute Path.
    """
    out = Path(out_dir).expanduser().resolve()
    p = SynthParams.from_overrides(params)
    if int(n_cases) != n_cases or n_cases < 1:
        raise ValueError(f"n_cases must be a positive integer, got {n_cases!r}")
    n_cases = int(n_cases)
    identity = {"generator": "prostate_course.data.synthetic", "version": GENERATOR_VERSION,
                "seed": int(seed), "n_cases": n_cases, "params": p.to_dict()}
    manifest = out / "synth_manifest.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        old_id = {k: old.get(k) for k in identity}
        if old_id != json.loads(json.dumps(identity)):
            diff = [k for k in identity if old_id.get(k) != json.loads(json.dumps(identity[k]))]
            raise ValueError(f"{out} holds a synthetic cohort made with other settings ({diff} differ: "
                             f"{ {k: old_id.get(k) for k in diff} }); choose another out_dir")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(manifest, {**identity, "status": "in progress"})
    df = simulate_clinical(n_cases, seed, _params=p)
    rows = df.to_dict("records")
    jobs = [(r, int(seed), p.to_dict(), str(out)) for r in rows]
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    workers = max(1, min(int(workers), n_cases))
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    n_written = 0
    bar = tqdm(total=n_cases, desc=f"synthetic cohort ({workers} workers)", unit="case", disable=not progress)
    try:
        if workers == 1:
            for job in jobs:
                n_written += _write_case(job)[2]
                bar.update()
        else:
            import multiprocessing as mp

            # fork on Linux: works from notebooks and from scripts without a __main__ guard; the
            # workers use only numpy/SimpleITK (no torch, no thread pools inherited in use).
            # Elsewhere (macOS, Windows) fork is unsafe or absent: spawn.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            with mp.get_context(method).Pool(workers) as pool:
                for _, _, wrote in pool.imap_unordered(_write_case, jobs, chunksize=1):
                    n_written += wrote
                    bar.update()
    finally:
        bar.close()
    ms = out / "labels" / MARKSHEET
    text = _marksheet_text(df)
    if not ms.is_file() or ms.read_text() != text:
        write_text_atomic(ms, text)
    gt = out / "ground_truth.csv"
    gt_cols = ["patient_id", "study_id", "case_index"] + [c for c in df.columns if c.startswith("gt_")]
    gtext = df[gt_cols].to_csv(index=False, lineterminator="\n")
    if not gt.is_file() or gt.read_text() != gtext:
        write_text_atomic(gt, gtext)
    write_json_atomic(manifest, {**identity, "status": "complete", "n_written_last_run": n_written,
                                 "seconds_last_run": round(time.perf_counter() - t0, 2)})
    return out
