"""prepare: geometry, crop on real glands, normalisation, bad inputs, resumability after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from conftest import DEFAULT_CASES, MARKSHEET_HEADER, PICAI_LABELS
from prostate_course.data import readers
from prostate_course.data.dataset import read_cases_table
from prostate_course.data.readers import DataReadError
from prostate_course.data.prepare import (
    CASE_FILES, PrepareError, crop_grid, gland_centre, prepare_dataset, zscore_clip,
)

REAL_CASES = sorted(p.name[:-7] for p in (PICAI_LABELS / "anatomical_delineations/whole_gland/AI/Guerbet23").glob("*.nii.gz"))


def _world_centroid_nifti(path) -> np.ndarray:
    """Centroid of the non-zero voxels of a NIfTI mask in world LPS mm (via nibabel's RAS affine)."""
    img = nib.load(str(path))
    idx = np.argwhere(np.asarray(img.dataobj) > 0)
    ras = nib.affines.apply_affine(img.affine, idx).mean(0)
    return ras * [-1, -1, 1]


def _world_centroid_sitk(img: sitk.Image, mask_zyx: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask_zyx)[:, ::-1].astype(float)  # (x, y, z)
    d = np.array(img.GetDirection()).reshape(3, 3)
    pts = idx * np.array(img.GetSpacing()) @ d.T + np.array(img.GetOrigin())
    return pts.mean(0)


def _assert_cache_matches_nifti(out: Path) -> None:
    """Row i of cache.pt is case_ids[i]'s NIfTI files (images to float16 precision)."""
    c = torch.load(out / "cache.pt", weights_only=True)
    assert c["case_ids"] == pd.read_csv(out / "cases.csv", dtype={"case_id": str})["case_id"].tolist()
    for i, case in enumerate(c["case_ids"]):
        d = out / "cases" / case
        img = np.asarray(nib.load(str(d / "image.nii.gz")).dataobj).transpose(3, 2, 1, 0)
        np.testing.assert_array_equal(c["images"][i].numpy(), img.astype(np.float16))
        for k in ("lesions", "gland", "zones"):
            np.testing.assert_array_equal(c[k][i].numpy(), np.asarray(nib.load(str(d / f"{k}.nii.gz")).dataobj).transpose(2, 1, 0))


# ---------------------------------------------------------------------------- geometry
def test_prepared_sequences_share_one_grid(prepared_cohort):
    for case in (p.name for p in (prepared_cohort / "cases").iterdir()):
        d = prepared_cohort / "cases" / case
        img = nib.load(str(d / "image.nii.gz"))
        assert img.shape == (48, 48, 8, 3) and img.get_data_dtype() == np.float32
        assert np.allclose(img.header.get_zooms()[:3], (1.0, 1.0, 3.0), atol=1e-5)
        for m in ("gland", "zones", "lesions"):
            mi = nib.load(str(d / f"{m}.nii.gz"))
            assert mi.get_data_dtype() == np.uint8 and mi.shape == img.shape[:3]
            np.testing.assert_allclose(mi.affine, img.affine, atol=1e-5)


@pytest.mark.parametrize("case", ["10001_1000001", "10002_1000003"])
def test_lesion_lands_in_the_same_world_place(raw_cohort, prepared_cohort, case):
    """Lesion centroid (mask) and the lesion seen in each prepared sequence sit where the raw T2W mask puts it."""
    lab = readers.find_labels(raw_cohort / "labels", case)
    raw_mask = readers.read_mask(lab.lesion)
    raw_c = _world_centroid_sitk(raw_mask, sitk.GetArrayViewFromImage(raw_mask) > 0)
    d = prepared_cohort / "cases" / case
    prep_c = _world_centroid_nifti(d / "lesions.nii.gz")
    assert np.linalg.norm(prep_c - raw_c) < 1.0  # mm, prepared voxels are 1 x 1 x 3 mm
    img = nib.load(str(d / "image.nii.gz"))
    data = np.asarray(img.dataobj)
    gland = np.asarray(nib.load(str(d / "gland.nii.gz")).dataobj) > 0
    for ch, sign in ((0, -1), (1, -1), (2, 1)):  # lesion dark on T2W and ADC, bright on HBV
        x = sign * data[..., ch]
        blob = (x >= np.percentile(x[gland], 97)) & gland  # >=: clipping makes ties
        c = nib.affines.apply_affine(img.affine, np.argwhere(blob)).mean(0) * [-1, -1, 1]
        assert np.linalg.norm(c - raw_c) < 2.0, f"channel {ch}: lesion {np.linalg.norm(c - raw_c):.1f} mm off"


def test_crop_is_centred_on_the_gland(raw_cohort, prepared_cohort):
    t = pd.read_csv(prepared_cohort / "cases.csv", dtype={"case_id": str})
    for r in t.itertuples():
        gl = prepared_cohort / "cases" / r.case_id / "gland.nii.gz"
        if r.gland_source == "none":
            assert "centre crop" in r.warnings
            assert np.asarray(nib.load(str(gl)).dataobj).max() == 0
            continue
        assert r.gland_in_crop == pytest.approx(1.0, abs=0.05)
        raw = readers.read_mask(readers.find_labels(raw_cohort / "labels", r.case_id).gland)
        centre = np.array(gland_centre(raw))
        img = nib.load(str(gl))
        crop_centre = nib.affines.apply_affine(img.affine, (np.array(img.shape) - 1) / 2) * [-1, -1, 1]
        # centred on the gland, up to the snap onto a T2W voxel centre (<= half a T2W voxel per axis)
        off = np.abs(np.linalg.inv(np.array(raw.GetDirection()).reshape(3, 3)) @ (crop_centre - centre))
        assert (off <= np.array(raw.GetSpacing()) / 2 + 1e-3).all(), off
        # the prepared slices are the acquired T2W slices (equal 3 mm spacing): the crop origin
        # sits on a T2W voxel centre
        origin = (img.affine[:3, 3] * [-1, -1, 1]).tolist()
        idx = np.array(raw.TransformPhysicalPointToContinuousIndex(origin))
        np.testing.assert_allclose(idx, np.round(idx), atol=1e-3)


def _gland_voxels_outside(case, spacing, crop) -> tuple[int, float]:
    """Gland voxel centres of a real mask outside the gland-centred crop, and the kept volume ratio."""
    g = readers.read_mask(readers.find_labels(PICAI_LABELS, case).gland)
    grid = crop_grid(g, gland_centre(g), spacing, crop)
    pts = np.argwhere(sitk.GetArrayViewFromImage(g) > 0)[:, ::-1].astype(float)
    d = np.array(g.GetDirection()).reshape(3, 3)
    world = pts * np.array(g.GetSpacing()) @ d.T + np.array(g.GetOrigin())
    gd = np.array(grid.GetDirection()).reshape(3, 3)
    cidx = (world - np.array(grid.GetOrigin())) @ gd / np.array(grid.GetSpacing())
    outside = int((((cidx < -0.5) | (cidx > np.array(grid.GetSize()) - 0.5)).any(1)).sum())
    r = sitk.Resample(g, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    ratio = (sitk.GetArrayViewFromImage(r).sum() * np.prod(spacing)
             / (sitk.GetArrayViewFromImage(g).sum() * np.prod(g.GetSpacing())))
    return outside, float(ratio)


# Real AI gland masks reach 65 mm cranio-caudally (10014: 18 slices x 3.6 mm) and 61 mm across,
# so a crop that keeps every gland needs ~24 slices at 3 mm and >= 64 mm in-plane.
@pytest.mark.parametrize("spacing, crop", [((3.0, 0.5, 0.5), (24, 160, 160)), ((3.0, 1.0, 1.0), (24, 80, 80))])
def test_crop_keeps_the_whole_real_gland(spacing, crop):
    """On the 8 real PI-CAI gland masks, every gland voxel centre lies inside the gland-centred crop."""
    assert len(REAL_CASES) == 8
    for case in REAL_CASES:
        outside, ratio = _gland_voxels_outside(case, spacing, crop)
        assert outside == 0, (case, outside)
        assert 0.85 < ratio < 1.2, (case, ratio)  # nearest-neighbour volume, up to slice sampling


def test_crop_check_detects_a_cut_gland():
    """The same check fails for a crop too short for the longest real gland (16 x 3 mm = 48 mm < 65 mm)."""
    outside, ratio = _gland_voxels_outside("10014_1000014", (3.0, 1.0, 1.0), (16, 64, 64))
    assert outside > 0 and ratio < 0.97


def test_zscore_clip_matches_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 20, (8, 16, 16)).astype(np.float32)
    x[0, 0, 0] = 1e6  # an outlier is clipped
    valid = np.ones_like(x, bool)
    valid[-1] = False
    z = zscore_clip(x, valid)
    v = x[valid]
    lo, hi = np.percentile(v, [0.5, 99.5])
    c = np.clip(v, lo, hi)
    np.testing.assert_allclose(z[valid], (c - c.mean()) / c.std(), rtol=1e-4, atol=1e-4)
    assert (z[~valid] == 0).all() and z.max() < 4


# ---------------------------------------------------------------------- tables & cache
def test_outputs_table_cache_manifest(prepared_cohort):
    t = pd.read_csv(prepared_cohort / "cases.csv", dtype={"case_id": str, "patient_id": str, "pirads_reports": str})
    assert t["case_id"].tolist() == [f"{p}_{s}" for p, s, *_ in DEFAULT_CASES]
    for col in ("split", "fold", "patient_age", "psa", "psad", "prostate_volume", "center", "case_ISUP",
                "case_csPCa", "pirads_reports", "n_reports", "pirads_max", "pirads_majority", "pirads_conf",
                "gland_source", "lesion_source"):
        assert col in t.columns, col
    assert t["pirads_majority"].tolist()[:3] == [1, 0, 1] and np.isnan(t["pirads_majority"][3])
    assert t["pirads_conf"].tolist()[:3] == [1.0, 1.0, pytest.approx(0.1)]
    assert t["psad"].isna().sum() == 1
    assert t.groupby("patient_id")["split"].nunique().max() == 1
    c = torch.load(prepared_cohort / "cache.pt", weights_only=True)
    assert c["images"].dtype == torch.float16 and tuple(c["images"].shape) == (4, 3, 8, 48, 48)
    for k in ("lesions", "gland", "zones"):
        assert c[k].dtype == torch.uint8 and tuple(c[k].shape) == (4, 8, 48, 48)
    assert c["case_ids"] == t["case_id"].tolist()
    # cache equals the NIfTI files (z, y, x) vs (x, y, z)
    nii = np.asarray(nib.load(str(prepared_cohort / "cases" / t.case_id[0] / "lesions.nii.gz")).dataobj)
    np.testing.assert_array_equal(c["lesions"][0].numpy(), nii.transpose(2, 1, 0))
    assert set(np.unique(c["lesions"][0].numpy())) == {0, 3}
    m = json.loads((prepared_cohort / "manifest.json").read_text())
    assert m["n_cases"] == 4 and m["n_bad"] == 0 and m["params"]["crop"] == [8, 48, 48]


def test_rerun_is_idempotent(raw_factory, tmp_path):
    raw = raw_factory(cases=DEFAULT_CASES[:3])
    out = tmp_path / "ds"
    r1 = prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False)
    before = (out / "cases.csv").read_text()
    stamp = (out / "cases" / "10001_1000001" / "image.nii.gz").stat().st_mtime_ns
    r2 = prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False)
    assert (r1.n_new, r2.n_new, r2.n_reused) == (3, 0, 3)
    assert (out / "cases.csv").read_text() == before
    assert (out / "cases" / "10001_1000001" / "image.nii.gz").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other parameters"):
        prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 16, 16), workers=1, progress=False)


def test_damaged_case_folder_is_redone_not_dropped(raw_factory, tmp_path):
    """A finished case folder that lost a file (disk error, a user's rm) is prepared again on
    the next run; it used to be kept as it was and silently left out of the dataset."""
    raw = raw_factory(cases=DEFAULT_CASES[:3])
    out = tmp_path / "ds"
    prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False)
    (out / "cases" / "10001_1000001" / "zones.nii.gz").unlink()
    rep = prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False)
    assert (rep.n_cases, rep.n_new, rep.n_reused) == (3, 1, 2)
    assert all((out / "cases" / "10001_1000001" / f).is_file() for f in CASE_FILES)
    assert "10001_1000001" in pd.read_csv(out / "cases.csv", dtype={"case_id": str})["case_id"].tolist()
    _assert_cache_matches_nifti(out)


def test_rerun_interrupted_while_writing_tables_leaves_no_stale_manifest(raw_factory, tmp_path, monkeypatch):
    """A rerun that adds a case and dies between cases.csv and cache.pt must not leave the old
    manifest beside the new table: the folder would look finished (ensure_dataset would reuse
    it) while cache.pt and cases.csv disagree."""
    from prostate_course.data import prepare as prep
    from prostate_course.data.dataset import PreparedDataset

    raw = raw_factory(cases=DEFAULT_CASES[:3])
    hbv = raw / "images" / "10002" / "10002_1000003_hbv.mha"
    saved = hbv.read_bytes()
    hbv.unlink()  # bad in the first run
    out = tmp_path / "ds"
    assert prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False).n_cases == 2
    hbv.write_bytes(saved)

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "_write_cache", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="not a finished prepared dataset"):
        PreparedDataset(out)
    monkeypatch.undo()
    rep = prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False)
    assert rep.n_cases == 3 and len(PreparedDataset(out).cache()["case_ids"]) == 3


def test_parallel_equals_serial(raw_factory, tmp_path):
    raw = raw_factory()
    a = prepare_dataset(raw / "images", raw / "labels", tmp_path / "a", crop=(8, 32, 32), workers=1, progress=False)
    b = prepare_dataset(raw / "images", raw / "labels", tmp_path / "b", crop=(8, 32, 32), workers=2, progress=False)
    assert a.n_cases == b.n_cases == 4
    ca, cb = (torch.load(p / "cache.pt", weights_only=True) for p in (tmp_path / "a", tmp_path / "b"))
    assert torch.equal(ca["images"], cb["images"]) and torch.equal(ca["lesions"], cb["lesions"])
    _assert_cache_matches_nifti(tmp_path / "b")


# ------------------------------------------------------------------------- bad inputs
def _corrupt(raw: Path, kind: str) -> tuple[str, Path, str]:
    """Make case 10002_1000003 bad in one way; return (case, file, expected reason pattern)."""
    case, pid = "10002_1000003", "10002"
    img = raw / "images" / pid
    gland = raw / "labels/anatomical_delineations/whole_gland/AI/Guerbet23" / f"{case}.nii.gz"
    if kind == "unreadable":
        f = img / f"{case}_adc.mha"
        f.write_bytes(b"ObjectType = Image\nNDims = 3\ngarbage")
        return case, f, "unreadable image"
    if kind == "missing":
        f = img / f"{case}_hbv.mha"
        f.unlink()
        return case, f, "missing sequence HBV"
    if kind == "geometry":  # a mask 0.5 m away from its image: nothing to resample
        m = sitk.ReadImage(str(gland))
        m.SetOrigin([o + 500.0 for o in m.GetOrigin()])
        sitk.WriteImage(m, str(gland))
        return case, gland, "Guerbet23 gland mask geometry: the mask does not overlap the T2W image"
    if kind == "vanishing_lesion":  # one fine voxel between T2W voxel centres
        les = raw / "labels/csPCa_lesion_delineations/human_expert/resampled" / f"{case}.nii.gz"
        t2w = sitk.ReadImage(str(img / f"{case}_t2w.mha"))
        fine = sitk.Image([t2w.GetSize()[0] * 3, t2w.GetSize()[1] * 3, t2w.GetSize()[2]], sitk.sitkUInt8)
        fine.SetSpacing([t2w.GetSpacing()[0] / 3, t2w.GetSpacing()[1] / 3, t2w.GetSpacing()[2]])
        fine.SetDirection(t2w.GetDirection())
        fine.SetOrigin(t2w.GetOrigin())
        fine[1 + 3 * 40, 1 + 3 * 40, 6] = 2  # a third of a T2W voxel off the centre of (40, 40, 6)
        sitk.WriteImage(fine, str(les))
        return case, les, "lesion mask geometry: 1 of 1 lesion component(s) vanish"
    if kind == "nan":
        f = img / f"{case}_t2w.mha"
        t = sitk.Cast(sitk.ReadImage(str(f)), sitk.sitkFloat32)
        a = sitk.GetArrayFromImage(t)
        a[3, 10, 10] = np.nan
        n = sitk.GetImageFromArray(a)
        n.CopyInformation(t)
        sitk.WriteImage(n, str(f))
        return case, f, "NaN"
    raise ValueError(kind)


BAD_KINDS = ["unreadable", "missing", "geometry", "vanishing_lesion", "nan"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_case_is_reported_and_skipped(raw_factory, tmp_path, kind):
    raw = raw_factory(cases=DEFAULT_CASES[:3])
    case, file, reason = _corrupt(raw, kind)
    out = tmp_path / "ds"
    rep = prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False)
    bad = pd.read_csv(out / "bad_cases.csv", dtype=str)
    assert bad["case_id"].tolist() == [case]
    assert bad["file"][0] == str(file) and reason in bad["reason"][0]
    assert rep.n_cases == 2 and not (out / "cases" / case).exists()
    _assert_cache_matches_nifti(out)
    assert case not in pd.read_csv(out / "cases.csv", dtype={"case_id": str})["case_id"].tolist()
    assert not list((out / "cases").glob(".tmp-*"))


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_strict_raises_naming_case_file_reason(raw_factory, tmp_path, kind):
    raw = raw_factory(cases=DEFAULT_CASES[:3])
    case, file, reason = _corrupt(raw, kind)
    out = tmp_path / "ds"
    with pytest.raises(PrepareError) as e:
        prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False, strict=True)
    msg = str(e.value)
    assert case in msg and str(file) in msg and reason in msg
    # nothing half-written: no folder for the bad case, no temporaries, no tables
    assert not (out / "cases" / case).exists() and not list((out / "cases").glob(".tmp-*"))
    assert not (out / "manifest.json").exists() and not (out / "cases.csv").exists()
    for d in (out / "cases").iterdir():
        assert all((d / f).is_file() for f in CASE_FILES)


def test_case_missing_from_marksheet(raw_factory, tmp_path):
    raw = raw_factory(cases=DEFAULT_CASES[:3])
    ms = raw / "labels/clinical_information/marksheet.csv"
    lines = ms.read_text().splitlines()
    ms.write_text("\n".join(lines[:-1]) + "\n")  # drop 10002_1000003
    rep = prepare_dataset(raw / "images", raw / "labels", tmp_path / "ds", crop=(8, 32, 32), workers=1, progress=False)
    assert rep.bad["case_id"].tolist() == ["10002_1000003"] and "not in the marksheet" in rep.bad["reason"][0]


# ---------------------------------------------------------------------- interruption
_SLOW_PREPARE = textwrap.dedent(
    """
    import sys, time
    from prostate_course.data import prepare as P
    _orig = P._nifti
    def slow(*a, **k):          # make each case slow enough to be killed in the middle of one
        _orig(*a, **k)
        time.sleep(0.15)
    P._nifti = slow
    P.prepare_dataset(sys.argv[1], sys.argv[2], sys.argv[3], crop=(8, 32, 32), workers=1, progress=False)
    """
)


def _wait_until_mid_run(proc, out: Path, timeout_s: float = 60) -> None:
    """Wait until a prepare in ``proc`` has finished two cases and is writing another."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        cases = out / "cases"
        done = [d for d in cases.glob("*") if not d.name.startswith(".")] if cases.is_dir() else []
        if len(done) >= 2 and list(cases.glob(".tmp-*")):
            return
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    pytest.fail("prepare did not reach two cases in time")


def test_killed_prepare_leaves_no_partial_case_and_resumes(raw_factory, tmp_path):
    cases = DEFAULT_CASES + tuple((f"2000{i}", f"200000{i}", 2 * (i % 2), 0.0, (0.0, 0.0, 0.0), True) for i in range(4))
    raw = raw_factory(cases=cases)
    out = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PREPARE, str(raw / "images"), str(raw / "labels"), str(out)],
                            stderr=subprocess.PIPE)
    try:
        _wait_until_mid_run(proc, out)  # two cases finished, a third one in progress
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finals = [d for d in (out / "cases").iterdir() if not d.name.startswith(".")]
    assert 2 <= len(finals) < len(cases)
    for d in finals:  # every visible case folder is complete and loadable
        assert all((d / f).is_file() for f in CASE_FILES)
        nib.load(str(d / "image.nii.gz")).get_fdata()
    assert list((out / "cases").glob(".tmp-*")), "expected the killed case's temporary folder"
    assert not (out / "manifest.json").exists() and not (out / "cache.pt").exists()
    rep = prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False)
    assert rep.n_cases == len(cases) and rep.n_reused == len(finals) and rep.n_new == len(cases) - len(finals)
    assert not list((out / "cases").glob(".tmp-*")) and (out / "manifest.json").is_file()
    _assert_cache_matches_nifti(out)  # resumed cases read back, new ones from the workers


# ------------------------------------------------------------------- label sources
def _move_header(path: Path, voxels: float) -> None:
    """Move a mask's grid by ``voxels`` along each of its index axes (the array is unchanged)."""
    m = sitk.ReadImage(str(path))
    d = np.array(m.GetDirection()).reshape(3, 3)
    m.SetOrigin((np.array(m.GetOrigin()) + d @ (np.array(m.GetSpacing()) * voxels)).tolist())
    sitk.WriteImage(m, str(path))


def test_jittered_and_empty_gland_cases_are_all_prepared(raw_factory, tmp_path):
    """One lesion mask 0.2 voxel off the T2W grid, one gland mask 1.5 voxels off, one case whose
    only gland mask is empty: every case is prepared, and the table says what happened."""
    raw = raw_factory(cases=DEFAULT_CASES[:3])
    lab = raw / "labels"
    les_dir = lab / "csPCa_lesion_delineations/human_expert/resampled"
    gl_dir = lab / "anatomical_delineations/whole_gland/AI/Guerbet23"
    _move_header(les_dir / "10001_1000001.nii.gz", 0.2)
    _move_header(gl_dir / "10001_1000002.nii.gz", 1.5)
    g = sitk.ReadImage(str(gl_dir / "10002_1000003.nii.gz"))
    sitk.WriteImage(g * 0, str(gl_dir / "10002_1000003.nii.gz"))
    out = tmp_path / "ds"
    rep = prepare_dataset(raw / "images", lab, out, crop=(8, 48, 48), workers=1, progress=False)
    assert rep.bad.empty and rep.n_cases == 3
    t = read_cases_table(out / "cases.csv").set_index("case_id")

    a = t.loc["10001_1000001"]
    assert a.masks_resampled == "lesion" and a.mask_shift_voxels == pytest.approx(0.2, abs=1e-3)
    assert "resampled onto it" not in a.warnings  # < 1 voxel: recorded, no warning
    assert a.n_lesions_source == a.n_lesions_prepared == 1

    b = t.loc["10001_1000002"]
    assert b.masks_resampled == "Guerbet23 gland" and b.mask_shift_voxels == pytest.approx(1.5, abs=1e-3)
    assert "Guerbet23 gland mask grid lies 1.50 T2W voxels" in b.warnings
    assert any(w.startswith("10001_1000002:") and "1.50 T2W voxels" in w for w in rep.warnings)

    c = t.loc["10002_1000003"]
    assert c.gland_source == "none" and np.isnan(c.gland_in_crop)
    assert "Guerbet23 gland mask is empty" in c.warnings and "centre crop" in c.warnings
    assert np.asarray(nib.load(str(out / "cases/10002_1000003/gland.nii.gz")).dataobj).max() == 0
    # the lesion keeps its world position in the centre crop
    raw_mask = readers.read_mask(les_dir / "10002_1000003.nii.gz")
    raw_c = _world_centroid_sitk(raw_mask, sitk.GetArrayViewFromImage(raw_mask) > 0)
    prep_c = _world_centroid_nifti(out / "cases/10002_1000003/lesions.nii.gz")
    assert np.linalg.norm(prep_c - raw_c) < 1.0
    assert c.n_lesions_source == c.n_lesions_prepared == 1
    # the jittered lesion also stays where its (moved) mask puts it
    moved = readers.read_mask(les_dir / "10001_1000001.nii.gz")
    moved_c = _world_centroid_sitk(moved, sitk.GetArrayViewFromImage(moved) > 0)
    assert np.linalg.norm(_world_centroid_nifti(out / "cases/10001_1000001/lesions.nii.gz") - moved_c) < 1.0


def test_empty_gland_falls_back_to_the_next_source(raw_factory, tmp_path):
    raw = raw_factory(cases=DEFAULT_CASES[:3])
    gl = raw / "labels/anatomical_delineations/whole_gland/AI"
    (gl / "Bosma22b").mkdir()
    f = gl / "Guerbet23" / "10002_1000003.nii.gz"
    g = sitk.ReadImage(str(f))
    sitk.WriteImage(g, str(gl / "Bosma22b" / f.name))
    sitk.WriteImage(g * 0, str(f))
    rep = prepare_dataset(raw / "images", raw / "labels", tmp_path / "ds", crop=(8, 48, 48), workers=1,
                          progress=False)
    t = read_cases_table(tmp_path / "ds" / "cases.csv").set_index("case_id")
    r = t.loc["10002_1000003"]
    assert rep.bad.empty and r.gland_source == "Bosma22b" and r.gland_in_crop == pytest.approx(1.0, abs=0.05)
    assert "Guerbet23 gland mask is empty" in r.warnings and "centre crop" not in r.warnings


def test_nearby_lesions_merge_at_the_prepared_spacing(tmp_path):
    """Two lesions (ISUP 2 and 4) one 0.5 mm voxel apart are two lesions on the T2W grid; on the
    1 mm prepared grid that skips the gap they touch and are one (26-connected): the table
    shows 2 -> 1, both grades stay in the mask and it is no error."""
    root = tmp_path / "raw"
    pid, sid = "20001", "2000001"
    case = f"{pid}_{sid}"
    z, y, x = np.indices((10, 128, 128))
    gland = (x >= 34) & (x <= 94) & (y >= 34) & (y <= 94) & (z >= 2) & (z <= 7)  # bbox centre x = 64
    lesion = np.zeros(gland.shape, np.uint8)
    box = (y >= 60) & (y <= 68) & (z >= 4) & (z <= 5)
    lesion[box & (x >= 50) & (x <= 57)] = 2
    lesion[box & (x >= 59) & (x <= 66)] = 4  # gap: x = 58
    # crop of 48 px at 1 mm centred on x = 64 (32 mm): origin 8.5 mm = T2W index 17, so the
    # prepared grid samples the odd T2W columns 17, 19, ..., 57, 59: the even gap is skipped.
    (root / "images" / pid).mkdir(parents=True)
    for seq in ("t2w", "adc", "hbv"):
        arr = (300 + 200 * gland - 100 * (lesion > 0) + np.random.default_rng(0).normal(0, 5, gland.shape))
        img = sitk.GetImageFromArray(arr.astype(np.int16))
        img.SetSpacing((0.5, 0.5, 3.0))
        sitk.WriteImage(img, str(root / "images" / pid / f"{case}_{seq}.mha"))
    for sub, arr in (("anatomical_delineations/whole_gland/AI/Guerbet23", gland.astype(np.uint8)),
                     ("csPCa_lesion_delineations/human_expert/resampled", lesion)):
        (root / "labels" / sub).mkdir(parents=True)
        m = sitk.GetImageFromArray(arr)
        m.SetSpacing((0.5, 0.5, 3.0))
        sitk.WriteImage(m, str(root / "labels" / sub / f"{case}.nii.gz"))
    ms = root / "labels" / readers.MARKSHEET
    ms.parent.mkdir(parents=True)
    ms.write_text(f"{MARKSHEET_HEADER}\n{pid},{sid},2020-01-01,65,7.0,0.15,45,MRBx,4,\"3+4,4+4\",\"2,4\",4,YES,RUMC,4\n")
    rep = prepare_dataset(root / "images", root / "labels", tmp_path / "ds", spacing=(3.0, 1.0, 1.0),
                          crop=(8, 48, 48), workers=1, progress=False)
    assert rep.bad.empty
    t = read_cases_table(tmp_path / "ds" / "cases.csv").set_index("case_id")
    assert (t.loc[case, "n_lesions_source"], t.loc[case, "n_lesions_prepared"]) == (2, 1)
    prepared = np.asarray(nib.load(str(tmp_path / "ds" / "cases" / case / "lesions.nii.gz")).dataobj)
    assert set(np.unique(prepared)) == {0, 2, 4}
    assert "no voxel" not in t.loc[case, "warnings"]


def test_label_source_fallbacks(raw_factory, tmp_path):
    """Pooch25 binary lesions -> 1; Bosma22b gland when Guerbet23 is missing; a positive case
    without any lesion mask is prepared with an empty mask and a warning."""
    raw = raw_factory(cases=DEFAULT_CASES[:3])
    lab = raw / "labels"
    les = lab / "csPCa_lesion_delineations/human_expert"
    (les / "Pooch25").mkdir()
    m = sitk.ReadImage(str(les / "resampled" / "10001_1000001.nii.gz"))
    sitk.WriteImage(sitk.Cast(m > 0, sitk.sitkUInt8), str(les / "Pooch25" / "10001_1000001.nii.gz"))
    (les / "resampled" / "10001_1000001.nii.gz").unlink()
    (les / "resampled" / "10002_1000003.nii.gz").unlink()  # positive, no mask anywhere
    gl = lab / "anatomical_delineations/whole_gland/AI"
    (gl / "Bosma22b").mkdir()
    (gl / "Guerbet23" / "10001_1000002.nii.gz").rename(gl / "Bosma22b" / "10001_1000002.nii.gz")
    out = tmp_path / "ds"
    rep = prepare_dataset(raw / "images", lab, out, crop=(8, 32, 32), workers=1, progress=False)
    t = pd.read_csv(out / "cases.csv", dtype={"case_id": str}).set_index("case_id")
    assert t.loc["10001_1000001", "lesion_source"] == "Pooch25" and t.loc["10001_1000001", "lesion_max"] == 1
    assert t.loc["10001_1000002", "gland_source"] == "Bosma22b"
    assert t.loc["10002_1000003", "lesion_source"] == "none" and t.loc["10002_1000003", "lesion_voxels"] == 0
    assert "csPCa-positive case without a lesion mask" in t.loc["10002_1000003", "warnings"]
    assert any("10002_1000003" in w for w in rep.warnings) and rep.bad.empty


# ------------------------------------------------------------- with the real generator
def test_prepare_synthetic_cohort(tmp_path):
    """The synthetic generator's raw layout prepares without bad cases; lesions survive the crop."""
    from prostate_course.data.synthetic import generate_cohort

    raw = generate_cohort(tmp_path / "raw", 12, seed=3, workers=1, progress=False)
    rep = prepare_dataset(raw / "images", raw / "labels", tmp_path / "ds", workers=2, progress=False)
    assert rep.bad.empty and rep.n_cases == 12
    t = pd.read_csv(tmp_path / "ds" / "cases.csv", dtype={"case_id": str, "pirads_reports": str})
    assert (t["gland_source"] == "Guerbet23").all() and (t["gland_in_crop"] > 0.75).all()  # cpu crop 48x64x64 mm cuts some glands
    pos = t[t.case_csPCa == 1]
    assert len(pos) > 0 and (pos["lesion_voxels"] > 0).all() and (pos["lesion_max"] >= 2).all()
    assert (t.loc[t.case_csPCa == 0, "lesion_voxels"] == 0).all()
    assert t["n_reports"].max() > 1  # the simulated reader study is kept


def test_ctrl_c_cleans_up_parallel_prepare(raw_factory, tmp_path):
    """SIGINT to the whole process group (what Ctrl-C does) mid-run: no temporaries remain."""
    cases = DEFAULT_CASES + tuple((f"3000{i}", f"300000{i}", 2 * (i % 2), 0.0, (0.0, 0.0, 0.0), True) for i in range(4))
    raw = raw_factory(cases=cases)
    out = tmp_path / "ds"
    script = _SLOW_PREPARE.replace("workers=1", "workers=2")
    proc = subprocess.Popen([sys.executable, "-c", script, str(raw / "images"), str(raw / "labels"), str(out)],
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # see test_runner.default_sigint
    try:
        _wait_until_mid_run(proc, out)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0 and b"KeyboardInterrupt" in proc.stderr.read()
    assert not list((out / "cases").glob(".tmp-*")) and not (out / "manifest.json").exists()
    for d in (out / "cases").iterdir():
        assert all((d / f).is_file() for f in CASE_FILES)
    rep = prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False)
    assert rep.n_cases == len(cases)


def test_two_prepares_at_once_on_one_folder(raw_factory, tmp_path):
    """Two notebooks preparing the same dataset at once: serialised by the lock, both succeed."""
    raw = raw_factory()
    out = tmp_path / "ds"
    procs = [subprocess.Popen([sys.executable, "-c", _SLOW_PREPARE, str(raw / "images"), str(raw / "labels"), str(out)],
                              stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    assert pd.read_csv(out / "bad_cases.csv").empty and len(pd.read_csv(out / "cases.csv")) == 4
    assert not list((out / "cases").glob(".tmp-*"))


def test_bad_parameters_rejected(raw_cohort, tmp_path):
    with pytest.raises(ValueError, match="spacing"):
        prepare_dataset(raw_cohort / "images", raw_cohort / "labels", tmp_path / "x", spacing=(3, 1))
    with pytest.raises(ValueError, match="crop"):
        prepare_dataset(raw_cohort / "images", raw_cohort / "labels", tmp_path / "x", crop=(0, 64, 64))
    assert not (tmp_path / "x").exists()
    with pytest.raises(DataReadError, match="images folder not found"):
        prepare_dataset(tmp_path / "nope", raw_cohort / "labels", tmp_path / "y")
    with pytest.raises(DataReadError, match="marksheet not found"):
        prepare_dataset(raw_cohort / "images", tmp_path, tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_splits_do_not_move_when_a_bad_case_is_fixed(raw_factory, tmp_path):
    """Splits are drawn over every marksheet case, so a rerun after a fix keeps everyone's split."""
    cases = DEFAULT_CASES + (("10004", "1000005", 2, 0.0, (0.0, 0.0, 0.0), True),
                             ("10005", "1000006", 0, 0.0, (1.0, 0.0, 0.0), True),
                             ("10006", "1000007", 3, 0.0, (0.0, 1.0, 0.0), True))
    raw = raw_factory(cases=cases)
    hbv = raw / "images" / "10002" / "10002_1000003_hbv.mha"
    kept = hbv.read_bytes()
    hbv.unlink()
    out = tmp_path / "ds"
    prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False)
    before = pd.read_csv(out / "cases.csv", dtype={"case_id": str}).set_index("case_id")[["split", "fold"]]
    assert "10002_1000003" not in before.index
    hbv.write_bytes(kept)
    prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False)
    after = pd.read_csv(out / "cases.csv", dtype={"case_id": str}).set_index("case_id")[["split", "fold"]]
    assert "10002_1000003" in after.index
    pd.testing.assert_frame_equal(before, after.loc[before.index])


def test_official_split_recorded_in_table_and_manifest(raw_factory, tmp_path):
    """Real PI-CAI case ids in official folds 0, 0, 4 and 2: test_fold 4 makes 10002 the test case."""
    cases = (("10000", "1000000", 0, 0.0, (0.0, 0.0, 0.0), True), ("10001", "1000001", 2, 5.0, (1.0, 0.0, 0.0), True),
             ("10002", "1000002", 3, 0.0, (0.0, 1.0, 0.0), True), ("10004", "1000004", 0, 0.0, (0.0, 0.0, 1.0), True))
    raw = raw_factory(cases=cases)
    out = tmp_path / "ds"
    prepare_dataset(raw / "images", raw / "labels", out, crop=(8, 32, 32), workers=1, progress=False,
                    split={"scheme": "picai_official", "test_fold": 4, "val_fraction": 0})
    t = read_cases_table(out / "cases.csv").set_index("case_id")
    assert t["split"].to_dict() == {"10000_1000000": "train", "10001_1000001": "train",
                                    "10002_1000002": "test", "10004_1000004": "train"}
    assert t["fold"].to_dict() == {"10000_1000000": 0, "10001_1000001": 0, "10002_1000002": -1, "10004_1000004": 2}
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"] == "picai_official:fold4" and m["split_counts"] == {"train": 3, "test": 1}
    # another fold, recomputed in place: no case is prepared again
    from prostate_course.data.prepare import update_splits

    stamp = (out / "cache.pt").stat().st_mtime_ns
    m2 = update_splits(out, {"scheme": "picai_official", "test_fold": 0, "val_fraction": 0})
    t2 = read_cases_table(out / "cases.csv").set_index("case_id")
    assert m2["splits"] == "picai_official:fold0" and (out / "cache.pt").stat().st_mtime_ns == stamp
    assert sorted(t2.index[t2.split == "test"]) == ["10000_1000000", "10001_1000001"]
    pd.testing.assert_frame_equal(t2.drop(columns=["split", "fold"]), t.drop(columns=["split", "fold"]))
