"""Shared fixtures: tiny raw cohorts in the PI-CAI layout, built here with SimpleITK.

Each case has T2W at 0.6 x 0.6 x 3 mm and ADC/HBV at 2 x 2 x 3 mm on another grid (other
origin, size and in-plane rotation), so resampling onto the T2W grid is really needed. The
gland (ellipsoid) and lesion (sphere) are defined in world coordinates and drawn into every
sequence and into the T2W-grid masks, so their world positions are known exactly.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

FIXTURES = Path(__file__).parent / "fixtures"
PICAI_LABELS = FIXTURES / "picai_labels"

MARKSHEET_HEADER = (
    "patient_id,study_id,mri_date,patient_age,psa,psad,prostate_volume,histopath_type,"
    "lesion_PIRADS,lesion_GS,lesion_ISUP,case_ISUP,case_csPCa,center,pirads_reports"
)

# pid, sid, ISUP of the drawn lesion (0 = none), rotation (deg), gland offset (mm), gland mask?
DEFAULT_CASES = (
    ("10001", "1000001", 3, 8.0, (4.0, -3.0, 0.0), True),
    ("10001", "1000002", 0, 0.0, (0.0, 0.0, 0.0), True),   # same patient, second study
    ("10002", "1000003", 2, -12.0, (-6.0, 5.0, 3.0), True),
    ("10003", "1000004", 0, 0.0, (2.0, 2.0, 0.0), False),  # no gland mask: centre crop
)


def _rot(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


def _world(size, spacing, direction, origin) -> np.ndarray:
    """World (LPS) coordinates of every voxel, array (z, y, x, 3)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")[::-1], axis=-1)
    return idx * np.asarray(spacing) @ np.asarray(direction).T + np.asarray(origin)


def _image(arr_zyx, spacing, direction, origin, pixel=None):
    img = sitk.GetImageFromArray(arr_zyx if pixel is None else arr_zyx.astype(pixel))
    img.SetSpacing(spacing)
    img.SetDirection(direction.ravel().tolist())
    img.SetOrigin(origin.tolist())
    return img


def write_case(root: Path, pid, sid, isup, rot_deg, offset, with_gland, rng) -> dict:
    """Write one case (three .mha + masks); return its world gland centre and lesion centre."""
    centre = np.array([10.0, -20.0, 5.0]) + np.asarray(offset)
    lesion_c = centre + _rot(rot_deg) @ np.array([6.0, 6.0, 0.0])
    radii = np.array([16.0, 12.0, 10.0])

    def objects(w):
        gland = (((w - centre) / radii) ** 2).sum(-1) <= 1
        lesion = (((w - lesion_c) ** 2).sum(-1) <= 5.0 ** 2) & gland & (isup > 0)
        pz = gland & ((w - centre)[..., 1] > 0)
        return gland, lesion, pz

    case_id = f"{pid}_{sid}"
    (root / "images" / pid).mkdir(parents=True, exist_ok=True)
    grids = {
        "t2w": ((96, 96, 12), (0.6, 0.6, 3.0), _rot(rot_deg)),
        "adc": ((36, 34, 12), (2.0, 2.0, 3.0), _rot(rot_deg + 5)),
    }
    grids["hbv"] = grids["adc"]
    look = {"t2w": (300, 600, 250), "adc": (1500, 1200, 500), "hbv": (20, 40, 120)}  # bg, gland, lesion
    for seq, (size, sp, d) in grids.items():
        shift = np.array([1.5, -2.0, 1.0]) if seq != "t2w" else np.zeros(3)
        origin = centre - d @ (np.array(sp) * (np.array(size) - 1) / 2) + shift - np.asarray(offset) / 2
        w = _world(size, sp, d, origin)
        gland, lesion, _ = objects(w)
        bg, gl, le = look[seq]
        arr = np.full(gland.shape, bg, np.float32)
        arr[gland] = gl
        arr[lesion] = le
        arr += rng.normal(0, 5, arr.shape)
        img = _image(arr, sp, d, origin, np.int16)
        sitk.WriteImage(img, str(root / "images" / pid / f"{case_id}_{seq}.mha"), useCompression=True)
        if seq == "t2w":
            t2w_geom = (sp, d, origin)
            masks = objects(w)
    lab = root / "labels"
    sp, d, origin = t2w_geom
    gland, lesion, pz = masks
    out = {
        "anatomical_delineations/whole_gland/AI/Guerbet23": gland.astype(np.uint8) if with_gland else None,
        "anatomical_delineations/zonal_pz_tz/AI/Yuan23": (np.where(pz, 1, 2) * gland).astype(np.uint8),
        "csPCa_lesion_delineations/human_expert/resampled": (lesion * isup).astype(np.uint8),
    }
    for sub, arr in out.items():
        if arr is None:
            continue
        (lab / sub).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(_image(arr, sp, d, origin), str(lab / sub / f"{case_id}.nii.gz"))
    return {"case_id": case_id, "gland_centre": centre, "lesion_centre": lesion_c if isup else None}


def make_raw(root: Path, cases=DEFAULT_CASES, seed: int = 0) -> Path:
    """A raw cohort (images/ + labels/) in ``root``; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    lines = [MARKSHEET_HEADER]
    for i, (pid, sid, isup, rot, off, gl) in enumerate(cases):
        write_case(root, pid, sid, isup, rot, off, gl, rng)
        pirads = "4" if isup else "2"
        reports = ["4;5;3", "2;2", "4;3", ""][i % 4] if isup or i % 4 != 0 else "2;3;2"
        gs = {0: "0+0", 2: "3+4", 3: "4+3"}[isup]
        psad = "" if i % 3 == 2 else "0.15"
        lines.append(
            f"{pid},{sid},2020-01-0{1 + i % 9},{60 + i},{6.5 + i},{psad},{40 + 5 * i},MRBx,"
            f"{pirads},{gs},{isup},{isup},{'YES' if isup >= 2 else 'NO'},RUMC,{reports}"
        )
    ms = root / "labels" / "clinical_information" / "marksheet.csv"
    ms.parent.mkdir(parents=True, exist_ok=True)
    ms.write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def raw_factory(tmp_path):
    """Call ``raw_factory(cases=..., name=...)`` to write a fresh raw cohort under tmp_path."""

    def make(cases=DEFAULT_CASES, name="raw", seed=0):
        return make_raw(tmp_path / name, cases=cases, seed=seed)

    return make


@pytest.fixture(scope="session")
def raw_cohort(tmp_path_factory):
    """A shared, read-only 4-case raw cohort (do not modify it in tests)."""
    return make_raw(tmp_path_factory.mktemp("raw_cohort"))


@pytest.fixture(scope="session")
def prepared_cohort(raw_cohort, tmp_path_factory):
    """``raw_cohort`` prepared once at (3, 1, 1) mm / (16, 48, 48) voxels (read-only)."""
    from prostate_course.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "ds"
    prepare_dataset(raw_cohort / "images", raw_cohort / "labels", out, spacing=(3.0, 1.0, 1.0),
                    crop=(8, 48, 48), workers=1, progress=False)
    return out
