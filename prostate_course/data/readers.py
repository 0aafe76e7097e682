"""Readers for the raw PI-CAI layout (real and synthetic alike).

- images: ``images/<pid>/<pid>_<sid>_{t2w,adc,hbv}.mha`` through SimpleITK (:func:`read_sitk`),
  and :class:`SimpleITKReader`, a small MONAI ``ImageReader`` so that
  ``monai.transforms.LoadImage(reader=SimpleITKReader())`` reads ``.mha`` without the ``itk``
  package (MONAI's own ``ITKReader`` needs ``itk``, a large extra install).
- masks: picai_labels layout (``csPCa_lesion_delineations/...``, ``anatomical_delineations/...``)
  through nibabel (:func:`read_mask`), found by :func:`find_labels` in the source order of
  docs/ARCHITECTURE.md "Raw layout" (lesions: human_expert/resampled, then Pooch25; gland:
  Guerbet23, then Bosma22b, then none).
- clinical table: :func:`read_marksheet` (one typed row per case), :func:`lesion_table` (one row
  per lesion) and :func:`pirads_consensus` (majority PI-RADS and confidence, Ruppli et al. 2023).

PI-CAI: Saha et al., "Artificial intelligence and radiologists in prostate cancer detection on
MRI (PI-CAI)", Lancet Oncology 2024; labels CC BY-NC 4.0.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk

# Folder names and marksheet columns have one home: layout.py (light, shared with the generator).
from .layout import (  # re-exported: readers.MARKSHEET etc. keep working
    GLAND_SOURCES, LESION_SOURCES, MARKSHEET, MARKSHEET_COLUMNS, NA_TOKENS, REPORTS_COLUMN,
    SEQUENCES, ZONES_DIR,
)

#: Confidence given to an exam with a single usable report (Ruppli et al. 2023 give a single
#: report a small epsilon): it must be smaller than
#: the least confidence possible with 7 reports (2*(4/7 - 1/2) = 0.143), so one report never
#: outweighs a real (if weak) consensus.
SINGLE_REPORT_CONF = 0.1

# LPS (ITK, DICOM) <-> RAS (NIfTI/nibabel world): flip the first two world axes.
_LPS_RAS = np.diag([-1.0, -1.0, 1.0])


class DataReadError(ValueError):
    """A raw file is missing, unreadable, or inconsistent; the message names the file."""

    def __init__(self, file, reason: str):
        self.file = str(file)
        self.reason = reason
        super().__init__(f"{file}: {reason}")


# ----------------------------------------------------------------------------------- images
def read_sitk(path: str | os.PathLike, pixel_type=None) -> sitk.Image:
    """Read an image (.mha, .nii.gz, ...) with SimpleITK; clear errors for missing/unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise DataReadError(path, "file not found")
    try:
        img = sitk.ReadImage(str(path)) if pixel_type is None else sitk.ReadImage(str(path), pixel_type)
    except RuntimeError as e:  # SimpleITK raises RuntimeError with a long ITK trace
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise DataReadError(path, f"unreadable image ({first[:200]})") from None
    if img.GetDimension() != 3:
        raise DataReadError(path, f"expected a 3D image, got {img.GetDimension()}D")
    return img


def sitk_affine_ras(img: sitk.Image) -> np.ndarray:
    """4x4 voxel (x, y, z) -> world RAS affine of a SimpleITK image (the NIfTI convention)."""
    d = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = _LPS_RAS @ d @ np.diag(img.GetSpacing())
    a[:3, 3] = _LPS_RAS @ np.array(img.GetOrigin(), dtype=float)
    return a


def sitk_from_array_ras(array_xyz: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """SimpleITK image from a nibabel-style (x, y, z) array and RAS affine."""
    m = _LPS_RAS @ np.asarray(affine_ras, dtype=float)[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_xyz).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (m / spacing).ravel()])
    img.SetOrigin([float(v) for v in _LPS_RAS @ np.asarray(affine_ras, dtype=float)[:3, 3]])
    return img


def _make_reader_class():
    # Built on first use so that importing this module (e.g. in prepare's worker processes)
    # does not import MONAI and torch.
    from monai.data import ImageReader

    class SimpleITKReader(ImageReader):
        """MONAI ``ImageReader`` over SimpleITK (``.mha``, ``.mhd``, ``.nrrd``, ``.nii[.gz]``).

        Returns the array in (x, y, z) order with a RAS affine, like MONAI's ``ITKReader`` and
        ``NibabelReader``, so ``LoadImage(reader=SimpleITKReader())`` is a drop-in for ``.mha``.
        Several files are stacked on a new first (channel) axis.
        """

        suffixes = ("mha", "mhd", "nrrd", "nii", "nii.gz")

        def __init__(self, **kwargs):
            super().__init__()
            self.kwargs = kwargs

        def verify_suffix(self, filename) -> bool:
            from monai.data.utils import is_supported_format

            return is_supported_format(filename, list(self.suffixes))

        def read(self, data, **kwargs):
            from monai.utils import ensure_tuple

            imgs = [read_sitk(f) for f in ensure_tuple(data)]
            return imgs if len(imgs) > 1 else imgs[0]

        def get_data(self, img):
            from monai.utils import MetaKeys, SpaceKeys

            arrays, meta = [], {}
            # not monai's ensure_tuple: a sitk.Image is iterable (over its pixels)
            for im in img if isinstance(img, (list, tuple)) else (img,):
                arr = sitk.GetArrayFromImage(im).transpose(2, 1, 0)  # (z,y,x) -> (x,y,z)
                aff = sitk_affine_ras(im)
                m = {
                    MetaKeys.AFFINE: aff,
                    MetaKeys.ORIGINAL_AFFINE: aff.copy(),
                    MetaKeys.SPATIAL_SHAPE: np.asarray(arr.shape[:3]),
                    MetaKeys.SPACE: SpaceKeys.RAS,
                    MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if arr.ndim == 3 else -1,
                    "spacing": np.asarray(im.GetSpacing()),
                }
                if meta and not np.allclose(meta[MetaKeys.AFFINE], aff, atol=1e-4):
                    raise ValueError("SimpleITKReader: files to stack have different affines")
                meta = meta or m
                arrays.append(arr)
            if len(arrays) == 1:
                return arrays[0], meta
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
            return np.stack(arrays, axis=0), meta

    return SimpleITKReader


_READER_CLS = None


def __getattr__(name):  # lazy: ``from prostate_course.data.readers import SimpleITKReader``
    global _READER_CLS
    if name == "SimpleITKReader":
        if _READER_CLS is None:
            _READER_CLS = _make_reader_class()
            register_simpleitk_reader()
        return _READER_CLS
    raise AttributeError(name)


def register_simpleitk_reader() -> None:
    """Register the reader by name in MONAI, so ``LoadImage(reader="SimpleITKReader")`` works too."""
    from monai.transforms.io import array as monai_io

    cls = _READER_CLS or __getattr__("SimpleITKReader")
    monai_io.SUPPORTED_READERS.setdefault("simpleitkreader", cls)


def image_paths(images_root: str | os.PathLike, case_id: str) -> dict[str, Path]:
    """Expected paths of the three sequences of ``case_id`` = ``<pid>_<sid>``."""
    pid = case_id.split("_")[0]
    return {s: Path(images_root) / pid / f"{case_id}_{s}.mha" for s in SEQUENCES}


def list_cases(images_root: str | os.PathLike) -> list[str]:
    """Case ids (``<pid>_<sid>``) with at least one sequence file under ``images/<pid>/``, sorted."""
    root = Path(images_root)
    if not root.is_dir():
        raise DataReadError(root, "images folder not found")
    ids = set()
    for f in root.glob("*/*.mha"):
        stem = f.name[: -len(".mha")]
        parts = stem.rsplit("_", 1)
        if len(parts) == 2 and parts[1] in SEQUENCES and stem.startswith(f.parent.name + "_"):
            ids.add(parts[0])
    return sorted(ids)


# ------------------------------------------------------------------------------------ masks
@dataclass
class LabelPaths:
    """Where the masks of one case are (None = not available) and which source each came from."""

    lesion: Path | None
    lesion_source: str  # "resampled" | "Pooch25" | "none"
    gland: Path | None
    gland_source: str  # "Guerbet23" | "Bosma22b" | "none"
    zones: Path | None
    zones_source: str  # model folder name, e.g. "Yuan23", or "none"
    #: every gland mask present, in source order: ((source, path), ...); prepare falls back
    #: along it when a mask is empty
    glands: tuple = ()


def find_labels(labels_root: str | os.PathLike, case_id: str) -> LabelPaths:
    """Look up the picai_labels masks of ``case_id`` in the course's source order
    (docs/ARCHITECTURE.md "Raw layout").

    Lesions: human_expert/resampled (ISUP-valued) else human_expert/Pooch25 (binary, read as
    1 = csPCa grade unknown) else none (an empty mask: right for negatives; the caller flags a
    csPCa-positive case without one). Gland: whole_gland/AI/Guerbet23, then Bosma22b, then none
    (the caller falls back to a centre crop); ``glands`` lists every gland mask present, so the
    caller can pass over an empty one. Zones: the first model folder under zonal_pz_tz/AI.
    """
    root = Path(labels_root)
    name = f"{case_id}.nii.gz"

    def first(sources):
        for src, sub in sources:
            p = root / sub / name
            if p.is_file():
                return p, src
        return None, "none"

    lesion, lesion_src = first(LESION_SOURCES)
    gland, gland_src = first(GLAND_SOURCES)
    glands = tuple((src, root / sub / name) for src, sub in GLAND_SOURCES if (root / sub / name).is_file())
    zone_dirs = sorted(p for p in (root / ZONES_DIR).glob("*") if p.is_dir()) if (root / ZONES_DIR).is_dir() else []
    zones, zones_src = first((d.name, str(d.relative_to(root))) for d in zone_dirs)
    return LabelPaths(lesion, lesion_src, gland, gland_src, zones, zones_src, glands)


def read_mask(path: str | os.PathLike) -> sitk.Image:
    """Read a picai_labels mask with nibabel and return it as a uint8 SimpleITK image (same world geometry)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataReadError(path, "file not found")
    try:
        nii = nib.load(str(path))
        arr = np.asarray(nii.dataobj)
    except Exception as e:  # nibabel raises several types (ImageFileError, EOFError, zlib.error...)
        raise DataReadError(path, f"unreadable mask ({type(e).__name__}: {e})") from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataReadError(path, f"expected a 3D mask, got shape {arr.shape}")
    if arr.dtype.kind == "f":  # integer masks (the usual case) skip these full-volume passes
        if not np.all(np.isfinite(arr)):
            raise DataReadError(path, "mask contains NaN or infinite values")
        arr = np.rint(arr)
    if arr.dtype != np.uint8:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi > 255:
            raise DataReadError(path, f"mask values outside 0..255 ({lo}..{hi})")
        arr = arr.astype(np.uint8)
    return sitk_from_array_ras(arr, nii.affine)


def geometry_mismatch(img: sitk.Image, ref: sitk.Image, tol_voxels: float = 0.25) -> str | None:
    """Describe how ``img``'s voxel grid differs from ``ref``'s, or None if they are the same grid.

    NIfTI stores its geometry in float32 (real picai_labels masks differ from each other by
    ~2e-4 in direction cosines), so grids count as the same when size and spacing agree and no
    corner of the grid moves by more than ``tol_voxels`` of the smallest voxel side.
    """
    if img.GetSize() != ref.GetSize():
        return f"size {img.GetSize()} != T2W size {ref.GetSize()}"
    if not np.allclose(img.GetSpacing(), ref.GetSpacing(), rtol=1e-3, atol=1e-4):
        return (f"spacing {np.round(img.GetSpacing(), 4).tolist()} != T2W spacing "
                f"{np.round(ref.GetSpacing(), 4).tolist()}")
    tol = tol_voxels * min(ref.GetSpacing())
    shift = np.linalg.norm(np.subtract(img.GetOrigin(), ref.GetOrigin()))
    if shift > tol:
        return f"origin {np.round(img.GetOrigin(), 3).tolist()} is {shift:.2f} mm from the T2W origin"
    n = np.array(ref.GetSize()) - 1
    corners = [[int(i), int(j), int(k)] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])]
    worst = max(np.linalg.norm(np.subtract(img.TransformIndexToPhysicalPoint(c),
                                           ref.TransformIndexToPhysicalPoint(c))) for c in corners)
    if worst > tol:
        return f"direction (orientation) differs from T2W: grid corners move by up to {worst:.2f} mm"
    return None


# -------------------------------------------------------------------------------- marksheet
_NA = NA_TOKENS


def _split_list(cell: str, cast):
    """'5,2,N/A' -> [5, 2, None]; '' -> [] (not reported)."""
    cell = (cell or "").strip()
    if cell in ("",):
        return []
    out = []
    for tok in cell.split(","):
        tok = tok.strip()
        out.append(None if tok in _NA else cast(tok))
    return out


def _num(series: pd.Series, path, col) -> pd.Series:
    s = series.str.strip().replace(list(_NA), np.nan)
    out = pd.to_numeric(s, errors="coerce")
    bad = out.isna() & s.notna()
    if bad.any():
        raise DataReadError(path, f"column {col!r} has non-numeric values, e.g. {s[bad].iloc[0]!r}")
    return out.astype(float)


def _reports_from_lesions(pirads: list) -> str:
    m = case_pirads(pirads)
    return "" if math.isnan(m) else str(int(m))


def read_marksheet(path: str | os.PathLike) -> pd.DataFrame:
    """Parse a PI-CAI ``marksheet.csv`` into one typed row per case.

    Columns: ``case_id`` (``<pid>_<sid>``), patient_id/study_id (str), mri_date (str),
    patient_age (Int64), psa, psad, prostate_volume (float, NaN when missing), histopath_type
    (str, "" when missing), lesion_PIRADS / lesion_ISUP (lists of int, None for "N/A"),
    lesion_GS (list of str, None for "N/A"), case_ISUP (int), case_csPCa (int 0/1 from
    "YES"/"NO"), center, pirads_reports (the given column for synthetic data; for real data
    derived as the max of lesion_PIRADS ignoring N/A, one report), n_reports, pirads_max.
    """
    path = Path(path)
    if not path.is_file():
        raise DataReadError(path, "marksheet not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise DataReadError(path, f"unreadable CSV ({e})") from None
    missing = [c for c in MARKSHEET_COLUMNS if c not in raw.columns]
    if missing:
        raise DataReadError(path, f"missing columns: {', '.join(missing)}")
    df = pd.DataFrame()
    df["case_id"] = raw["patient_id"].str.strip() + "_" + raw["study_id"].str.strip()
    df["patient_id"] = raw["patient_id"].str.strip()
    df["study_id"] = raw["study_id"].str.strip()
    df["mri_date"] = raw["mri_date"].str.strip()
    age = _num(raw["patient_age"], path, "patient_age")
    df["patient_age"] = age.round().astype("Int64")
    for col in ("psa", "psad", "prostate_volume"):
        df[col] = _num(raw[col], path, col)
    df["histopath_type"] = raw["histopath_type"].str.strip()
    try:
        df["lesion_PIRADS"] = [_split_list(c, int) for c in raw["lesion_PIRADS"]]
        df["lesion_GS"] = [_split_list(c, str) for c in raw["lesion_GS"]]
        df["lesion_ISUP"] = [_split_list(c, int) for c in raw["lesion_ISUP"]]
    except ValueError as e:
        raise DataReadError(path, f"bad lesion list ({e})") from None
    isup = _num(raw["case_ISUP"], path, "case_ISUP")
    if isup.isna().any():
        raise DataReadError(path, "case_ISUP is empty in some rows")
    df["case_ISUP"] = isup.astype(int)
    cs = raw["case_csPCa"].str.strip().str.upper()
    bad = ~cs.isin(["YES", "NO", "1", "0"])
    if bad.any():
        raise DataReadError(path, f"case_csPCa must be YES/NO, got {raw['case_csPCa'][bad].iloc[0]!r}")
    df["case_csPCa"] = cs.isin(["YES", "1"]).astype(int)
    df["center"] = raw["center"].str.strip()
    if REPORTS_COLUMN in raw.columns:  # synthetic cohort: simulated readers
        df["pirads_reports"] = raw[REPORTS_COLUMN].str.strip().str.replace(",", ";")
        df["pirads_source"] = "readers"
    else:  # real PI-CAI: one routine report per case (max lesion PI-RADS)
        df["pirads_reports"] = [_reports_from_lesions(v) for v in df["lesion_PIRADS"]]
        df["pirads_source"] = "marksheet_max"
    parsed = [parse_reports(r) for r in df["pirads_reports"]]
    df["n_reports"] = [len(p) for p in parsed]
    df["pirads_max"] = [float(max(p)) if p else np.nan for p in parsed]
    if df["case_id"].duplicated().any():
        raise DataReadError(path, f"duplicate case {df['case_id'][df['case_id'].duplicated()].iloc[0]}")
    return df


def lesion_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per reported lesion: case_id, patient_id, lesion (index), PIRADS, GS, ISUP.

    The three lists are not always the same length in PI-CAI (GS/ISUP exist only for biopsied
    lesions), so rows run to the longest list with NaN/None where a list is shorter.
    """
    rows = []
    for r in df.itertuples(index=False):
        n = max(len(r.lesion_PIRADS), len(r.lesion_GS), len(r.lesion_ISUP))
        for i in range(n):
            def at(lst):
                return lst[i] if i < len(lst) else None

            rows.append(
                dict(case_id=r.case_id, patient_id=r.patient_id, lesion=i,
                     PIRADS=at(r.lesion_PIRADS), GS=at(r.lesion_GS), ISUP=at(r.lesion_ISUP))
            )
    out = pd.DataFrame(rows, columns=["case_id", "patient_id", "lesion", "PIRADS", "GS", "ISUP"])
    out["PIRADS"] = out["PIRADS"].astype("Int64")
    out["ISUP"] = out["ISUP"].astype("Int64")
    return out


# ---------------------------------------------------------------------------------- PI-RADS
def parse_reports(reports) -> list[int]:
    """Case-level PI-RADS reports, one per reader: ``"4;3;4"`` (or ``"4,3,4"``, or a list)
    -> ``[4, 3, 4]``; empty, NaN and N/A entries are dropped. The one parser of the
    ``pirads_reports`` column (readers, agreement statistics and figures all call it)."""
    if reports is None or (isinstance(reports, float) and math.isnan(reports)):
        return []
    if isinstance(reports, str):
        toks = [t.strip() for t in reports.replace(",", ";").split(";")]
        return [int(float(t)) for t in toks if t and t not in _NA]
    return [int(v) for v in reports if v is not None and not (isinstance(v, float) and math.isnan(v))]


def case_pirads(lesion_pirads) -> float:
    """Case PI-RADS = the highest lesion PI-RADS, ignoring N/A; NaN when none is reported.

    Accepts the marksheet cell (``"5,2,N/A"``) or the parsed list (``[5, 2, None]``)."""
    vals = _split_list(lesion_pirads, int) if isinstance(lesion_pirads, str) else list(lesion_pirads or [])
    vals = [int(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(max(vals)) if vals else float("nan")


def pirads_consensus(reports: str | Iterable[int]) -> tuple[float, float]:
    """Majority binarised PI-RADS and its confidence (Ruppli et al., MICCAI/MILLanD 2023).

    Each report: PI-RADS <= 2 -> 0, >= 4 -> 1, 3 dropped. With p_maj the share of the majority
    label among the usable reports, confidence c = 2 (p_maj - 1/2) in [0, 1]. A tie (c = 0)
    and no usable report give an unannotated exam: (nan, 0.0). A single usable report gives
    confidence :data:`SINGLE_REPORT_CONF` (0.1, below 0.143, the least confidence possible
    with 7 reports). Returns (majority 0.0/1.0 or nan, confidence).
    """
    vals = parse_reports(reports)
    binary = [0 if v <= 2 else 1 for v in vals if v != 3]
    if not binary:
        return float("nan"), 0.0
    if len(binary) == 1:
        return float(binary[0]), SINGLE_REPORT_CONF
    p1 = sum(binary) / len(binary)
    if p1 == 0.5:
        return float("nan"), 0.0
    maj = 1.0 if p1 > 0.5 else 0.0
    return maj, 2.0 * (max(p1, 1 - p1) - 0.5)


def add_pirads_consensus(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``pirads_majority`` (0/1, NaN = unannotated) and ``pirads_conf`` from ``pirads_reports``."""
    out = df.copy()
    cons = [pirads_consensus(r) for r in out["pirads_reports"].fillna("")]
    out["pirads_majority"] = pd.array([None if math.isnan(m) else int(m) for m, _ in cons], dtype="Int64")
    out["pirads_conf"] = [c for _, c in cons]
    return out


__all__: Sequence[str] = (
    "SEQUENCES", "DataReadError", "read_sitk", "sitk_affine_ras", "sitk_from_array_ras",
    "SimpleITKReader", "register_simpleitk_reader", "image_paths", "list_cases", "LabelPaths",
    "find_labels", "read_mask", "geometry_mismatch", "read_marksheet", "lesion_table",
    "parse_reports", "case_pirads", "pirads_consensus", "add_pirads_consensus", "SINGLE_REPORT_CONF",
    "MARKSHEET", "MARKSHEET_COLUMNS",
)
