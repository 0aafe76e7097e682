"""The raw PI-CAI layout: folder names and marksheet columns, in one place.

Both the readers (:mod:`prostate_course.data.readers`) and the synthetic generator
(:mod:`prostate_course.data.synthetic`) import these names, so the generator writes exactly what
the readers look for. This module imports nothing heavy (no SimpleITK, no torch): the generator's
clinical simulation and worker processes stay light.

Layout (docs/ARCHITECTURE.md "Raw layout")::

    images/<pid>/<pid>_<sid>_{t2w,adc,hbv}.mha
    labels/<LESION_SOURCES>/<pid>_<sid>.nii.gz      ISUP 2-5 (resampled) or 1 (Pooch25, binary)
    labels/<GLAND_SOURCES>/<pid>_<sid>.nii.gz       1 = gland (AI masks)
    labels/<ZONES_DIR>/<model>/<pid>_<sid>.nii.gz    PZ 1, TZ 2 (AI masks; any model folder)
    labels/<MARKSHEET>

Where the AI masks come from (picai_labels READMEs): whole gland ``Guerbet23`` (the algorithm of
N. Debs, A. Routier et al., 2022) and ``Bosma22b`` (DIAGNijmegen's AbdomenMRUS prostate
segmentation, Bosma et al.); zones ``Yuan23`` (Yuan et al., 2022). Expert lesion masks:
``human_expert/resampled`` (on the T2W grid) and ``human_expert/Pooch25`` (Pooch et al. 2025).
"""
from __future__ import annotations

SEQUENCES = ("t2w", "adc", "hbv")

#: picai_labels lesion folders, in the order the readers try them (DESIGN "Contracts").
LESION_SOURCES = (
    ("resampled", "csPCa_lesion_delineations/human_expert/resampled"),  # ISUP 2-5
    ("Pooch25", "csPCa_lesion_delineations/human_expert/Pooch25"),  # binary -> 1
)
#: picai_labels whole-gland folders, in the order the readers try them.
GLAND_SOURCES = (
    ("Guerbet23", "anatomical_delineations/whole_gland/AI/Guerbet23"),
    ("Bosma22b", "anatomical_delineations/whole_gland/AI/Bosma22b"),
)
#: Parent folder of the zonal masks: any model folder below it (Yuan23, ...) is accepted.
ZONES_DIR = "anatomical_delineations/zonal_pz_tz/AI"
#: The zonal model folder the synthetic generator writes (the one real PI-CAI ships).
ZONES_MODEL = "Yuan23"
MARKSHEET = "clinical_information/marksheet.csv"

#: The real PI-CAI marksheet columns, in their order.
MARKSHEET_COLUMNS = (
    "patient_id", "study_id", "mri_date", "patient_age", "psa", "psad", "prostate_volume",
    "histopath_type", "lesion_PIRADS", "lesion_GS", "lesion_ISUP", "case_ISUP", "case_csPCa",
    "center",
)
#: The extra column of a synthetic marksheet: one case-level PI-RADS per reader ("4;3;4").
REPORTS_COLUMN = "pirads_reports"
#: Columns of a synthetic marksheet: the real ones plus the simulated reader study.
SYNTHETIC_MARKSHEET_COLUMNS = MARKSHEET_COLUMNS + (REPORTS_COLUMN,)

#: Tokens that mean "not reported / not available" in the marksheet's lists.
NA_TOKENS = frozenset({"", "N/A", "NA", "n/a", "nan", "NaN"})


def lesion_dir() -> str:
    """Where a lesion mask with ISUP values goes (the first lesion source)."""
    return LESION_SOURCES[0][1]


def gland_dir() -> str:
    """Where a whole-gland mask goes (the first gland source)."""
    return GLAND_SOURCES[0][1]


def zones_dir() -> str:
    """Where the synthetic generator writes zonal masks: ``ZONES_DIR/ZONES_MODEL``."""
    return f"{ZONES_DIR}/{ZONES_MODEL}"
