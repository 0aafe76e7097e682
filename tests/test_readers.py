"""Readers: SimpleITK MONAI reader, picai_labels lookup and masks, the real marksheet, PI-RADS consensus."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import PICAI_LABELS
from prostate_course.data import readers
from prostate_course.data.readers import (
    DataReadError, find_labels, geometry_mismatch, lesion_table, pirads_consensus, read_marksheet,
    read_mask, read_sitk,
)

REAL_MARKSHEET = PICAI_LABELS / "clinical_information" / "marksheet.csv"
REAL_CASES = ["10000_1000000", "10001_1000001", "10002_1000002", "10004_1000004",
              "10005_1000005", "10014_1000014", "10019_1000019", "10074_1000074"]


# ------------------------------------------------------------------------------ images
def test_monai_loadimage_reads_mha_without_itk(raw_cohort):
    from monai.transforms import LoadImage

    from prostate_course.data.readers import SimpleITKReader

    path = raw_cohort / "images" / "10001" / "10001_1000001_t2w.mha"
    img = LoadImage(reader=SimpleITKReader(), image_only=True)(str(path))
    ref = sitk.ReadImage(str(path))
    assert tuple(img.shape) == ref.GetSize()  # (x, y, z)
    np.testing.assert_array_equal(np.asarray(img), sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    # affine: voxel -> RAS world, consistent with SimpleITK's LPS physical points
    idx = (5, 7, 3)
    lps = np.array(ref.TransformIndexToPhysicalPoint(idx))
    ras = (np.asarray(img.affine) @ np.r_[idx, 1.0])[:3]
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-4)
    # registered by name too, and stacks several files as channels
    img2 = LoadImage(reader="SimpleITKReader", image_only=True, ensure_channel_first=True)(
        [str(path), str(path)])
    assert img2.shape[0] == 2


def test_read_sitk_errors(tmp_path):
    with pytest.raises(DataReadError, match="file not found"):
        read_sitk(tmp_path / "nope_t2w.mha")
    bad = tmp_path / "bad_t2w.mha"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(DataReadError, match="unreadable image") as e:
        read_sitk(bad)
    assert str(bad) in str(e.value)


def test_nibabel_mask_keeps_sitk_geometry(raw_cohort):
    """Masks read with nibabel land on exactly the grid SimpleITK gives the T2W image."""
    case = "10002_1000003"
    t2w = read_sitk(raw_cohort / "images" / "10002" / f"{case}_t2w.mha")
    lab = find_labels(raw_cohort / "labels", case)
    m = read_mask(lab.gland)
    assert geometry_mismatch(m, t2w) is None
    shifted = sitk.Image(m)
    shifted.SetOrigin([o + 1.0 for o in m.GetOrigin()])
    assert "origin" in geometry_mismatch(shifted, t2w)


# ------------------------------------------------------------------------- real labels
def test_find_labels_source_order(tmp_path):
    lab = find_labels(PICAI_LABELS, "10005_1000005")
    assert (lab.lesion_source, lab.gland_source, lab.zones_source) == ("resampled", "Guerbet23", "Yuan23")
    # Bosma22b is used when Guerbet23 is missing; Pooch25 when resampled is missing
    root = tmp_path / "labels"
    for sub in ("anatomical_delineations/whole_gland/AI/Bosma22b", "csPCa_lesion_delineations/human_expert/Pooch25"):
        (root / sub).mkdir(parents=True)
        (root / sub / "1_2.nii.gz").write_bytes(b"x")
    lab = find_labels(root, "1_2")
    assert (lab.lesion_source, lab.gland_source, lab.zones_source) == ("Pooch25", "Bosma22b", "none")
    assert find_labels(root, "3_4").gland is None


@pytest.mark.parametrize("case", REAL_CASES)
def test_real_masks_share_one_grid(case):
    """Lesion, gland and zone masks of each real case lie on one (T2W) grid; ISUP/zone values valid."""
    lab = find_labels(PICAI_LABELS, case)
    les, gl, zo = read_mask(lab.lesion), read_mask(lab.gland), read_mask(lab.zones)
    assert geometry_mismatch(les, gl) is None and geometry_mismatch(zo, gl) is None
    assert set(np.unique(sitk.GetArrayViewFromImage(les))) <= {0, 2, 3, 4, 5}
    assert set(np.unique(sitk.GetArrayViewFromImage(zo))) <= {0, 1, 2}
    assert sitk.GetArrayViewFromImage(gl).max() == 1
    # nibabel -> SimpleITK conversion agrees with SimpleITK's own NIfTI reader
    ref = sitk.ReadImage(str(lab.gland))
    np.testing.assert_allclose(gl.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(gl.GetDirection(), ref.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(gl), sitk.GetArrayViewFromImage(ref))


def test_read_mask_errors(tmp_path):
    p = tmp_path / "m.nii.gz"
    p.write_bytes(b"\x1f\x8b broken gzip")
    with pytest.raises(DataReadError, match="unreadable mask"):
        read_mask(p)
    arr = np.zeros((4, 4, 4), np.float32)
    arr[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(p))
    with pytest.raises(DataReadError, match="NaN"):
        read_mask(p)


# ---------------------------------------------------------------------------- marksheet
@pytest.fixture(scope="module")
def marksheet():
    return read_marksheet(REAL_MARKSHEET)


def test_real_marksheet_counts(marksheet):
    df = marksheet
    assert len(df) == 1500
    assert df["case_id"].is_unique and df["patient_id"].nunique() == 1476
    assert int(df["psa"].isna().sum()) == 40
    assert int(df["psad"].isna().sum()) == 451
    assert int(df["prostate_volume"].isna().sum()) == 27
    assert int(df["case_csPCa"].sum()) == 425
    assert str(df["patient_age"].dtype) == "Int64" and df["patient_age"].notna().all()
    assert df["patient_age"].median() == 66
    assert df["psa"].median() == pytest.approx(8.5)
    assert df["case_csPCa"].isin([0, 1]).all()
    # case_csPCa agrees with case_ISUP >= 2 in PI-CAI
    assert ((df["case_ISUP"] >= 2).astype(int) == df["case_csPCa"]).all()


def test_real_marksheet_lesion_lists(marksheet):
    df = marksheet.set_index("case_id")
    # '5,N/A' / '4+3,3+4' / '3,2'
    r = df.loc["10008_1000008"]
    assert r.lesion_PIRADS == [5, None] and r.lesion_GS == ["4+3", "3+4"] and r.lesion_ISUP == [3, 2]
    # '2,2,2,5' with GS 'N/A,N/A,N/A,3+4' and a shorter ISUP list '2'
    r = df[df.lesion_PIRADS.map(lambda v: v == [2, 2, 2, 5])].iloc[0]
    assert r.lesion_GS == [None, None, None, "3+4"] and r.lesion_ISUP == [2]
    counts = marksheet["lesion_PIRADS"].map(len).value_counts().to_dict()
    assert counts == {1: 1062, 2: 355, 3: 73, 4: 9, 5: 1}
    # empty lists when not reported
    no_gs = marksheet[marksheet.histopath_type == ""]
    assert all(v == [] for v in no_gs.lesion_GS)
    lt = lesion_table(marksheet)
    assert len(lt) == sum(max(len(a), len(b), len(c)) for a, b, c in
                          zip(marksheet.lesion_PIRADS, marksheet.lesion_GS, marksheet.lesion_ISUP))
    assert lt["case_id"].nunique() == 1500
    assert set(lt["PIRADS"].dropna().unique()) <= {1, 2, 3, 4, 5}


def test_real_marksheet_derived_reports(marksheet):
    # one report per case: the max lesion PI-RADS ignoring N/A (counts computed from the real marksheet)
    assert (marksheet["pirads_source"] == "marksheet_max").all()
    counts = marksheet["pirads_max"].value_counts().to_dict()
    assert counts == {1.0: 137, 2.0: 479, 3.0: 151, 4.0: 352, 5.0: 381}
    r = marksheet.set_index("case_id").loc["10008_1000008"]
    assert r.pirads_reports == "5" and r.n_reports == 1
    pos = marksheet[marksheet.pirads_max == 5]
    assert pos["case_csPCa"].mean() == pytest.approx(0.661, abs=0.002)


def test_marksheet_errors(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("patient_id,study_id\n1,2\n")
    with pytest.raises(DataReadError, match="missing columns") as e:
        read_marksheet(p)
    assert str(p) in str(e.value)
    text = REAL_MARKSHEET.read_text().splitlines()
    p.write_text("\n".join(text[:3]).replace(",NO,", ",MAYBE,", 1) + "\n")
    with pytest.raises(DataReadError, match="YES/NO"):
        read_marksheet(p)
    p.write_text("\n".join(text[:3]).replace(",7.7,", ",seven,", 1) + "\n")
    with pytest.raises(DataReadError, match="'psa' has non-numeric"):
        read_marksheet(p)
    with pytest.raises(DataReadError, match="marksheet not found"):
        read_marksheet(tmp_path / "absent.csv")


def test_synthetic_style_reports_kept(raw_cohort):
    df = read_marksheet(raw_cohort / "labels" / "clinical_information" / "marksheet.csv")
    assert (df["pirads_source"] == "readers").all()
    assert df["pirads_reports"].tolist() == ["4;5;3", "2;2", "4;3", ""]
    assert df["n_reports"].tolist() == [3, 2, 2, 0]


# ------------------------------------------------------------------------------ PI-RADS
@pytest.mark.parametrize(
    "reports, majority, conf",
    [
        ("4;5;4", 1.0, 1.0),
        ("2;2;4", 0.0, 2 * (2 / 3 - 0.5)),
        ("4;3;2", math.nan, 0.0),  # 3 dropped, 1 vs 1: a tie -> unannotated
        ("3;3", math.nan, 0.0),  # no usable report
        ("", math.nan, 0.0),
        ("5", 1.0, readers.SINGLE_REPORT_CONF),
        ([1, 2, 2, 4, 5, 5, 5], 1.0, 2 * (4 / 7 - 0.5)),
        ("4;3", 1.0, readers.SINGLE_REPORT_CONF),  # one usable report after dropping the 3
    ],
)
def test_pirads_consensus(reports, majority, conf):
    m, c = pirads_consensus(reports)
    assert (math.isnan(m) and math.isnan(majority)) or m == majority
    assert c == pytest.approx(conf)
    assert 0 <= c <= 1


def test_single_report_epsilon_below_seven_reader_minimum():
    assert readers.SINGLE_REPORT_CONF < 2 * (4 / 7 - 0.5)
