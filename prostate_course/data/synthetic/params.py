"""The generator's knobs (:class:`SynthParams`) and its version.

``GENERATOR_VERSION`` names the cohort a seed produces: bump it whenever the same seed and
parameters would give other files (the dataset folders carry it, so old caches are not reused).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

#: 3: verification as in PI-CAI (unbiopsied PI-RADS <= 2 cases recorded negative, systematic-only
#: cancers found only with a systematic component), the PI-RADS v2.1 size rule for category 5,
#: zone-dependent reading noise; 2: the first calibrated cohort.
GENERATOR_VERSION = 3


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
    cspca_rate: float = 0.31         #: true P(case ISUP >= 2); the marksheet records ~0.27 (verification)
    pz_fraction: float = 0.7         #: share of cancers in the peripheral zone (68 %: McNeal et al. 1988)
    two_study_rate: float = 0.016    #: P(a case is the 2nd study of the previous patient)
    # --- readers --------------------------------------------------------------------------
    n_readers: int = 5               #: size of the reader pool
    reader_bias_sd: float = 0.25     #: sd of the per-reader bias on the latent score
    reader_noise: float = 0.8        #: sd of the per-reading noise on the latent score
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


def case_seeds(seed: int, index: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """Independent streams for the clinical draw and the image of case ``index``."""
    ss = np.random.SeedSequence([int(seed), int(index)])
    clin, img = ss.spawn(2)
    return clin, img
