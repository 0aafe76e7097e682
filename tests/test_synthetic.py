"""Synthetic cohort: determinism, idempotence, geometry, marksheet format, calibration, speed."""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from prostate_course.data.synthetic import (
    MARKSHEET_COLUMNS,
    SynthParams,
    case_paths,
    generate_cohort,
    reader_agreement,
    simulate_clinical,
)

FIXTURES = Path(__file__).parent / "fixtures"
N_SMALL = 4


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "synth_manifest.json"
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("synth") / "c", N_SMALL, seed=3, workers=2, progress=False)


@pytest.fixture(scope="module")
def marksheet(cohort) -> pd.DataFrame:
    return pd.read_csv(cohort / "labels/clinical_information/marksheet.csv", dtype=str, keep_default_na=False)


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_whatever_the_worker_count(cohort, tmp_path):
    again = generate_cohort(tmp_path / "w1", N_SMALL, seed=3, workers=1, progress=False)
    a, b = _digest(cohort), _digest(again)
    assert len(a) == N_SMALL * 6 + 2  # 3 images + 3 masks per case, marksheet, ground truth
    assert a == b


def test_different_seed_differs(cohort, tmp_path):
    other = generate_cohort(tmp_path / "s4", 2, seed=4, workers=1, progress=False)
    a, b = _digest(cohort), _digest(other)
    t2w = [k for k in b if k.endswith("_t2w.mha")]
    assert t2w and all(a.get(k) != b[k] for k in t2w)
    assert a["labels/clinical_information/marksheet.csv"] != b["labels/clinical_information/marksheet.csv"]


def test_simulate_clinical_matches_generated_marksheet_and_is_prefix_stable(marksheet):
    df = simulate_clinical(N_SMALL, seed=3)
    assert df["study_id"].astype(str).tolist() == marksheet["study_id"].tolist()
    assert df["lesion_PIRADS"].tolist() == marksheet["lesion_PIRADS"].tolist()
    assert df["pirads_reports"].tolist() == marksheet["pirads_reports"].tolist()
    big = simulate_clinical(3 * N_SMALL, seed=3)
    pd.testing.assert_frame_equal(big.iloc[:N_SMALL].reset_index(drop=True), df)


# ----------------------------------------------------------------------------- idempotence
def test_rerun_rewrites_nothing_and_repairs_a_missing_file(cohort, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(cohort, root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.mha")}
    victim = next(iter(sorted(before)))
    digest = hashlib.sha256(victim.read_bytes()).hexdigest()
    victim.unlink()
    generate_cohort(root, N_SMALL, seed=3, workers=1, progress=False)
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == digest
    untouched = [p for p in before if p.parent != victim.parent]
    assert untouched and all(p.stat().st_mtime_ns == before[p] for p in untouched)
    assert not list(root.rglob("*.tmp*")), "temporary files left behind"
    manifest = json.loads((root / "synth_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seed"] == 3


def test_other_settings_in_the_same_folder_are_refused(cohort):
    with pytest.raises(ValueError, match="other settings"):
        generate_cohort(cohort, N_SMALL, seed=5, workers=1, progress=False)
    with pytest.raises(ValueError, match="params"):
        generate_cohort(cohort, N_SMALL, seed=3, workers=1, progress=False, lesion_contrast=0.9)


def test_parameters_are_validated():
    with pytest.raises(TypeError, match="lesion_contrst"):
        simulate_clinical(3, lesion_contrst=0.5)
    with pytest.raises(ValueError, match="mimic_rate"):
        SynthParams(mimic_rate=-1)
    with pytest.raises(ValueError, match="n_cases"):
        simulate_clinical(0)
    assert SynthParams.from_overrides({"n_readers": 4.0}).n_readers == 4


# ----------------------------------------------------------------------------- geometry
def test_geometry_sequences_differ_and_masks_sit_on_the_t2w_grid(cohort, marksheet):
    for _, row in marksheet.iterrows():
        paths = case_paths(cohort, row.patient_id, row.study_id)
        imgs = {s: sitk.ReadImage(str(paths[s])) for s in ("t2w", "adc", "hbv")}
        for s, im in imgs.items():
            assert im.GetPixelID() == sitk.sitkInt16, s
        t2w, adc, hbv = imgs["t2w"], imgs["adc"], imgs["hbv"]
        assert t2w.GetSize()[:2] == (384, 384) and 19 <= t2w.GetSize()[2] <= 25
        assert 0.39 <= t2w.GetSpacing()[0] <= 0.51 and 2.9 <= t2w.GetSpacing()[2] <= 3.7
        assert 1.7 <= adc.GetSpacing()[0] <= 2.3 and adc.GetSize()[0] < 200
        # ADC and HBV share their grid, which differs from T2W: resampling is needed
        assert adc.GetOrigin() == hbv.GetOrigin() and adc.GetSize() == hbv.GetSize()
        assert np.linalg.norm(np.subtract(adc.GetOrigin(), t2w.GetOrigin())) > 1.0
        assert adc.GetSpacing() != t2w.GetSpacing()
        for key in ("gland", "zones", "lesions"):
            m = sitk.ReadImage(str(paths[key]))
            assert m.GetSize() == t2w.GetSize(), key
            np.testing.assert_allclose(m.GetSpacing(), t2w.GetSpacing(), atol=1e-5)
            np.testing.assert_allclose(m.GetOrigin(), t2w.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(m.GetDirection(), t2w.GetDirection(), atol=1e-5)
        gland = np.asarray(nib.load(paths["gland"]).dataobj)
        zones = np.asarray(nib.load(paths["zones"]).dataobj)
        lesions = np.asarray(nib.load(paths["lesions"]).dataobj)
        assert nib.aff2axcodes(nib.load(paths["gland"]).affine) == ("L", "P", "S")
        assert gland.sum() > 0 and set(np.unique(gland)) <= {0, 1}
        assert set(np.unique(zones)) == {0, 1, 2}
        np.testing.assert_array_equal(zones > 0, gland > 0)
        vals = set(np.unique(lesions)) - {0}
        assert vals <= {2, 3, 4, 5}
        assert np.all(gland[lesions > 0] == 1), "lesion outside the gland"
        isup = int(row.case_ISUP)
        if vals:
            assert max(vals) == isup
        if isup < 2:
            assert not vals


def test_lesion_is_dark_on_adc_and_bright_on_hbv_after_resampling(tmp_path):
    """World geometry is consistent: the drawn lesion is where ADC drops and HBV rises."""
    df = simulate_clinical(40, seed=11)
    idx = [i for i, r in df.iterrows() if r.case_ISUP >= 3][:1]
    assert idx, "no ISUP >= 3 case in the first 40"
    n = idx[0] + 1
    root = generate_cohort(tmp_path / "c", n, seed=11, workers=2, progress=False, lesion_contrast=1.0,
                           mimic_rate=0.0)
    row = df.iloc[idx[0]]
    paths = case_paths(root, row.patient_id, row.study_id)
    t2w = sitk.ReadImage(str(paths["t2w"]))
    les = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["lesions"]))) > 0
    gland = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["gland"]))) > 0
    assert les.sum() > 50
    ring = gland & ~les
    for seq, sign in (("adc", -1), ("hbv", +1)):
        moved = sitk.Resample(sitk.ReadImage(str(paths[seq])), t2w, sitk.Transform(), sitk.sitkLinear, 0.0)
        a = sitk.GetArrayFromImage(moved).astype(float)
        inside, rest = np.median(a[les]), np.median(a[ring])
        assert sign * (inside - rest) > 0.15 * rest, (seq, inside, rest)
    t2 = sitk.GetArrayFromImage(t2w).astype(float)
    assert np.median(t2[les]) < np.median(t2[ring])


# ----------------------------------------------------------------------------- marksheet
def test_marksheet_follows_the_real_conventions(marksheet):
    real = pd.read_csv(FIXTURES / "marksheet_picai.csv", dtype=str, keep_default_na=False)
    assert list(marksheet.columns) == list(real.columns) + ["pirads_reports"] == MARKSHEET_COLUMNS
    df = simulate_clinical(300, seed=1)
    _check_lists(df.astype({"case_ISUP": int}))


def _check_lists(df: pd.DataFrame) -> None:
    gs_re = re.compile(r"^(\d\+\d|N/A)$")
    n_multi = n_na = 0
    for r in df.itertuples():
        pir = r.lesion_PIRADS.split(",")
        assert pir and all(p in {"1", "2", "3", "4", "5", "N/A"} for p in pir), r.lesion_PIRADS
        n_multi += len(pir) > 1
        n_na += "N/A" in pir
        if r.histopath_type == "":
            assert r.lesion_GS == "" and r.lesion_ISUP == "" and r.case_ISUP == 0
        else:
            gs = r.lesion_GS.split(",")
            assert len(gs) == len(pir) and all(gs_re.match(g) for g in gs), (r.lesion_PIRADS, r.lesion_GS)
            isups = [int(x) for x in r.lesion_ISUP.split(",")] if r.lesion_ISUP else []
            assert len(isups) == sum(g != "N/A" for g in gs)
            assert max(isups, default=0) <= r.case_ISUP
        assert r.case_csPCa == ("YES" if r.case_ISUP >= 2 else "NO")
        assert r.center in {"RUMC", "PCNN", "ZGT"}
        reps = [int(x) for x in r.pirads_reports.split(";")] if r.pirads_reports else []
        assert all(1 <= x <= 5 for x in reps) and len(reps) <= 5
        if reps:  # the routine reader's case score comes first
            assert reps[0] == max(int(p) for p in pir if p != "N/A")
    assert n_multi > 0 and n_na > 0


# ----------------------------------------------------------------------------- calibration
def _num(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s.replace("", np.nan), errors="raise")


def test_calibration_against_the_real_marksheet():
    real = pd.read_csv(FIXTURES / "marksheet_picai.csv", dtype=str, keep_default_na=False)
    syn = simulate_clinical(1000, seed=0)
    targets = {  # (real median, tolerance) per the issue
        "patient_age": (66, 3), "psa": (8.5, 2), "prostate_volume": (57, 10),
    }
    for col, (target, tol) in targets.items():
        assert abs(_num(real[col]).median() - target) <= tol / 4, f"fixture drifted: {col}"
        assert abs(syn[col].median() - target) <= tol, (col, syn[col].median())
    cs = (syn["case_csPCa"] == "YES").mean()
    assert abs(cs - 0.28) <= 0.05, cs
    assert abs(syn["psad"].isna().mean() - 0.30) <= 0.08
    assert syn["psa"].isna().mean() <= 0.06
    assert syn["patient_age"].notna().all()
    # csPCa men: older, higher PSA density, smaller glands (as in PI-CAI)
    g = syn.groupby(syn["case_csPCa"] == "YES")
    assert g["patient_age"].median()[True] > g["patient_age"].median()[False]
    assert g["psad"].median()[True] > g["psad"].median()[False]
    assert g["prostate_volume"].median()[True] < g["prostate_volume"].median()[False]
    # prevalence rises with PI-RADS; PI-RADS 3 is the grey zone
    pmax = syn["lesion_PIRADS"].map(lambda s: max(int(x) for x in s.split(",") if x != "N/A"))
    prev = (syn["case_csPCa"] == "YES").groupby(pmax).mean()
    assert prev.loc[[1, 2]].max() < 0.06 and 0.05 < prev[3] < 0.35 and prev[5] > 0.5
    assert prev[3] < prev[4] < prev[5]
    # reader study: most cases several readers, some one, a few none
    n_rep = syn["pirads_reports"].map(lambda s: len(s.split(";")) if s else 0)
    assert 0.01 < (n_rep == 0).mean() < 0.12 and 0.08 < (n_rep == 1).mean() < 0.25
    assert (n_rep >= 3).mean() > 0.6
    kappa = reader_agreement(syn)
    assert len(kappa) >= 6
    assert 0.4 <= kappa["kappa"].mean() <= 0.6, kappa["kappa"].mean()
    # a few patients with two studies, ids like PI-CAI
    assert syn["patient_id"].min() == 10000 and syn["study_id"].min() == 1000000
    assert 1 <= (syn["patient_id"].value_counts() > 1).sum() <= 40


def test_readers_disagree_most_around_pirads_3():
    """Share of cases where another reader falls in another management group (<=2 / 3 / >=4),
    by the routine reader's score: highest for PI-RADS 3, the grey zone."""
    syn = simulate_clinical(600, seed=2)
    group = {1: 0, 2: 0, 3: 1, 4: 2, 5: 2}
    rows = []
    for rep in syn["pirads_reports"]:
        s = [int(x) for x in rep.split(";")] if rep else []
        if len(s) >= 2:
            rows.append((s[0], any(group[x] != group[s[0]] for x in s[1:])))
    d = pd.DataFrame(rows, columns=["first", "disagree"]).groupby("first")["disagree"].mean()
    assert d[3] == d.max() and d[3] > 0.5, d.to_dict()
    assert d[1] < 0.25 and d[5] < 0.5, d.to_dict()


# ----------------------------------------------------------------------------- speed
def test_small_cohort_is_fast(tmp_path):
    t0 = time.perf_counter()
    generate_cohort(tmp_path / "fast", 6, seed=9, workers=2, progress=False)
    # 200 cases in < 60 s on 2 cores means ~0.6 s per case; allow slack for a shared machine
    assert time.perf_counter() - t0 < 15
