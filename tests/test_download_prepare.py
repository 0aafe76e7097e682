"""End to end: `data_download/picai.py --prepare` against a local server, with the REAL prepare.

The served fold archive holds small .mha images written on the exact grids of the real PI-CAI
label fixtures (tests/fixtures/picai_labels, CC BY-NC 4.0, Saha et al. Lancet Oncology 2024);
the served labels archive is that fixture folder as a picai_labels commit tarball. After the
script, the notebooks' own ``ensure_dataset`` must find the prepared dataset without preparing
again.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from prostate_course.download import picai, sources
from prostate_course.profile import load_profile
from test_download import FakeHost  # noqa: F401  (the local HTTP server)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "picai_labels"
GLAND = FIXTURE / "anatomical_delineations" / "whole_gland" / "AI" / "Guerbet23"


def _image_like(mask: sitk.Image, shrink: int, seed: int) -> sitk.Image:
    """A smooth synthetic MR-like volume covering the mask's field of view (``shrink`` x coarser
    in-plane, like ADC/HBV), brighter inside the gland."""
    rng = np.random.default_rng(seed)
    m = sitk.GetArrayFromImage(mask)[:, ::shrink, ::shrink]
    z, y, x = np.indices(m.shape)
    vol = 200 + 50 * np.sin(y / 9.0) + 30 * np.cos(x / 7.0) + 5 * z + 150 * (m > 0)
    vol += rng.normal(0, 5, m.shape)
    img = sitk.GetImageFromArray(vol.astype(np.int16))
    sp = mask.GetSpacing()
    img.SetSpacing((sp[0] * shrink, sp[1] * shrink, sp[2]))
    img.SetOrigin(mask.GetOrigin())
    img.SetDirection(mask.GetDirection())
    return img


def _fold_zip(case_ids: list[str], tmp: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i, cid in enumerate(case_ids):
            pid = cid.split("_")[0]
            mask = sitk.ReadImage(str(GLAND / f"{cid}.nii.gz"))
            for seq, shrink in (("t2w", 1), ("adc", 4), ("hbv", 4)):
                f = tmp / f"{cid}_{seq}.mha"
                sitk.WriteImage(_image_like(mask, shrink, i), str(f), useCompression=True)
                z.write(f, f"{pid}/{cid}_{seq}.mha")
    return buf.getvalue()


def _labels_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        t.add(FIXTURE, arcname=f"picai_labels-{sources.LABELS_COMMIT}")
    return buf.getvalue()


def test_download_then_prepare_gives_the_dataset_the_notebooks_use(tmp_path, monkeypatch, capsys):
    from prostate_course.data.dataset import ensure_dataset

    # the fixture cases with the smallest grids (384^2); 10005 and 10019 are csPCa-positive
    case_ids = ["10002_1000002", "10005_1000005", "10019_1000019"]
    fold = _fold_zip(case_ids, tmp_path)
    host = FakeHost()
    try:
        host.files["/f/picai_public_images_fold0.zip"] = fold
        host.json[f"/api/records/{sources.ZENODO_RECORD}"] = {"files": [{
            "key": "picai_public_images_fold0.zip", "size": len(fold),
            "checksum": "md5:" + hashlib.md5(fold).hexdigest(),
            "links": {"self": host.url("/f/picai_public_images_fold0.zip")}}]}
        host.files[f"/DIAGNijmegen/picai_labels/tar.gz/{sources.LABELS_COMMIT}"] = _labels_tar()
        monkeypatch.setenv(sources.ZENODO_ENV, host.base)
        monkeypatch.setenv(sources.LABELS_ENV, host.base)
        monkeypatch.setenv("PROSTATE_COURSE_DATA", str(tmp_path / "data"))
        rc = picai.images_main(["--folds", "0", "--prepare", "--workers", "1", "--quiet",
                                "--backoff", "0.01"])
        assert rc == 0, capsys.readouterr().err
    finally:
        host.close()

    out = capsys.readouterr().out
    assert "Prepared dataset:" in out and "--set data.source=picai" in out
    ds = ensure_dataset(picai.picai_profile("gpu"), workers=1, progress=False)  # no server now
    assert ds.root.parent == tmp_path / "data" / "prepared" and ds.root.name.startswith("picai-")
    assert sorted(ds.table["case_id"]) == case_ids
    cache = ds.cache()
    crop = tuple(load_profile("gpu").data["crop"])  # the gpu profile's (z, y, x) crop
    assert tuple(cache["images"].shape) == (len(case_ids), 3, *crop)
    assert int(cache["gland"].sum()) > 0


def test_real_masks_with_real_header_jitter_and_an_empty_gland(tmp_path):
    """The real label fixtures as they are: 10001's lesion mask sits 0.14 voxel off its gland
    mask's grid (real picai_labels header jitter; the T2W is written on the gland's grid), and
    10019's gland mask is emptied (a failed AI segmentation). Both are prepared and reported;
    10019's real lesion keeps its world position in the centre crop."""
    import nibabel as nib
    import shutil

    from prostate_course.data import readers
    from prostate_course.data.dataset import read_cases_table
    from prostate_course.data.prepare import prepare_dataset

    case_ids = ["10001_1000001", "10005_1000005", "10019_1000019"]
    raw = tmp_path / "raw"
    for i, cid in enumerate(case_ids):
        pid = cid.split("_")[0]
        (raw / "images" / pid).mkdir(parents=True)
        mask = sitk.ReadImage(str(GLAND / f"{cid}.nii.gz"))
        for seq, shrink in (("t2w", 1), ("adc", 4), ("hbv", 4)):
            sitk.WriteImage(_image_like(mask, shrink, i), str(raw / "images" / pid / f"{cid}_{seq}.mha"))
        for sub in ("anatomical_delineations/whole_gland/AI/Guerbet23", "anatomical_delineations/zonal_pz_tz/AI/Yuan23",
                    "csPCa_lesion_delineations/human_expert/resampled"):
            (raw / "labels" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(FIXTURE / sub / f"{cid}.nii.gz", raw / "labels" / sub / f"{cid}.nii.gz")
    (raw / "labels" / "clinical_information").mkdir(parents=True)
    shutil.copy(FIXTURE / readers.MARKSHEET, raw / "labels" / readers.MARKSHEET)
    gl = raw / "labels/anatomical_delineations/whole_gland/AI/Guerbet23/10019_1000019.nii.gz"
    g = nib.load(str(gl))
    nib.save(nib.Nifti1Image(np.zeros(g.shape, np.uint8), g.affine, g.header), str(gl))

    rep = prepare_dataset(raw / "images", raw / "labels", tmp_path / "ds", spacing=(3.0, 1.0, 1.0),
                          crop=(20, 64, 64), workers=1, progress=False)
    assert rep.bad.empty and rep.n_cases == 3
    t = read_cases_table(tmp_path / "ds" / "cases.csv").set_index("case_id")
    assert t.loc["10001_1000001", "masks_resampled"] == "lesion"
    assert t.loc["10001_1000001", "mask_shift_voxels"] == pytest.approx(0.14, abs=0.01)
    assert t.loc["10005_1000005", "masks_resampled"] == ""  # the same grid: not resampled
    assert t.loc["10019_1000019", "gland_source"] == "none" and "centre crop" in t.loc["10019_1000019", "warnings"]
    assert t["n_lesions_source"].to_dict() == {"10001_1000001": 0, "10005_1000005": 1, "10019_1000019": 1}
    assert t.loc["10019_1000019", "n_lesions_prepared"] == 1
    les = readers.read_mask(FIXTURE / "csPCa_lesion_delineations/human_expert/resampled/10019_1000019.nii.gz")
    idx = np.argwhere(sitk.GetArrayViewFromImage(les) > 0)[:, ::-1].astype(float)
    d = np.array(les.GetDirection()).reshape(3, 3)
    raw_c = (idx * np.array(les.GetSpacing()) @ d.T + np.array(les.GetOrigin())).mean(0)
    prep = nib.load(str(tmp_path / "ds" / "cases" / "10019_1000019" / "lesions.nii.gz"))
    prep_c = nib.affines.apply_affine(prep.affine, np.argwhere(np.asarray(prep.dataobj) > 0)).mean(0) * [-1, -1, 1]
    assert np.linalg.norm(prep_c - raw_c) < 1.5  # mm; prepared voxels are 1 x 1 x 3 mm
