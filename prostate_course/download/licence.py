"""The licence notice printed before a PI-CAI download and written beside the data."""
from __future__ import annotations

from pathlib import Path

from ..io_utils import write_text_atomic
from .sources import LABELS_COMMIT, LABELS_PAGE, RECORD_PAGE

NOTICE_NAME = "LICENSE_NOTICE.md"

LICENSE_NOTICE = f"""\
# PI-CAI data: licence and citation

The PI-CAI Public Training and Development Dataset images (Zenodo record 6624726,
{RECORD_PAGE}) and the picai_labels annotations ({LABELS_PAGE},
commit {LABELS_COMMIT}) are licensed under
**Creative Commons Attribution-NonCommercial 4.0 International (CC BY-NC 4.0)**,
https://creativecommons.org/licenses/by-nc/4.0/ : non-commercial use only, with attribution.

Cite when you use them:

- A. Saha, J. S. Bosma, J. J. Twilt, et al. "Artificial intelligence and radiologists in
  prostate cancer detection on MRI (PI-CAI): an international, paired, non-inferiority,
  confirmatory study." The Lancet Oncology 25(7), 879-887 (2024).
  https://doi.org/10.1016/S1470-2045(24)00220-1
- The dataset record: https://doi.org/10.5281/zenodo.6624726
- The 205 positive cases in human_expert/Pooch25: Pooch et al. 2025 (see the picai_labels README).

The prostate-course tools only download and reorganise these files; they do not change the
licence. Do not redistribute the data, or models trained on it, for commercial purposes.
"""


def write_license_notice(raw_dir: str | Path) -> Path:
    """Write ``<raw_dir>/LICENSE_NOTICE.md`` (the text above) and return its path."""
    path = Path(raw_dir) / NOTICE_NAME
    write_text_atomic(path, LICENSE_NOTICE)
    return path


def print_license_notice(log=print) -> None:
    log("PI-CAI images and labels: CC BY-NC 4.0 (non-commercial, attribution). Cite Saha et al., "
        f"Lancet Oncology 2024; dataset record {RECORD_PAGE}.")
