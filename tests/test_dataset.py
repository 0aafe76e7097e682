"""PreparedDataset, SliceSet / VolumeSet, ensure_raw / ensure_dataset."""
from __future__ import annotations

import json
import sys
import types
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import DEFAULT_CASES, make_raw
from prostate_course.data import ensure_dataset, label_budget
from prostate_course.data.dataset import PreparedDataset, dataset_key, ensure_raw
from prostate_course.profile import load_profile


@pytest.fixture(scope="module")
def ds(prepared_cohort):
    return PreparedDataset(prepared_cohort)


def test_table_types(ds):
    t = ds.table
    assert t["case_id"].tolist() == [f"{p}_{s}" for p, s, *_ in DEFAULT_CASES]
    assert t["patient_id"].tolist() == ["10001", "10001", "10002", "10003"]
    assert t["pirads_reports"].tolist() == ["4;5;3", "2;2", "4;3", ""]
    assert str(t["pirads_majority"].dtype) == "Int64" and t["pirads_majority"].isna().sum() == 1
    assert t["case_csPCa"].tolist() == [1, 0, 1, 0]


def test_cache_memoised_and_consistent(ds):
    c = ds.cache()
    assert ds.cache() is c
    assert c["case_ids"] == ds.table["case_id"].tolist()
    case = ds.load_case("10002_1000003")
    assert case["image"].shape == (48, 48, 8, 3) and case["lesions"].shape == (48, 48, 8)
    np.testing.assert_allclose(c["images"][2].float().numpy(), case["image"].transpose(3, 2, 1, 0), atol=1e-2)
    with pytest.raises(KeyError, match="nope"):
        ds.load_case("nope")


def test_slices(ds):
    s = ds.slices(split=None)
    c = ds.cache()
    gland_slices = (c["gland"].flatten(2) > 0).any(-1)  # (cases, D)
    expected = [int(gland_slices[i].sum()) if gland_slices[i].any() else c["gland"].shape[1] for i in range(4)]
    assert len(s) == sum(expected) and s.images.shape[1:] == (3, 48, 48) and s.images.dtype == torch.float16
    assert torch.bincount(s.case_index, minlength=4).tolist() == expected
    assert s.case_ids == ds.table["case_id"].tolist() and s.case_label.tolist() == [1, 0, 1, 0]
    assert s.patient_ids == ["10001", "10001", "10002", "10003"]
    # slice labels follow the lesion masks; negatives have none
    for i, z, y in zip(s.case_index.tolist(), s.slice_z.tolist(), s.slice_label.tolist()):
        assert y == int(c["lesions"][i, z].any())
    assert s.slice_label[s.case_index == 1].sum() == 0 and s.slice_label[s.case_index == 0].sum() > 0
    # image of a slice is the cache's slice
    k = 5
    assert torch.equal(s.images[k], c["images"][s.case_index[k], :, s.slice_z[k]])
    all_slices = ds.slices(split=None, gland_only=False)
    assert len(all_slices) == 4 * 8
    # masks are the cache's masks of each slice; the slice label is "any lesion voxel"
    for k in range(len(s)):
        i, z = int(s.case_index[k]), int(s.slice_z[k])
        assert torch.equal(s.lesion_mask[k], c["lesions"][i, z]) and torch.equal(s.gland_mask[k], c["gland"][i, z])
    assert torch.equal(s.slice_label, (s.lesion_mask.flatten(1) > 0).any(1).long())
    # metadata of the exam, per case and repeated per slice
    t = ds.table.set_index("case_id")
    np.testing.assert_allclose(s.meta["psad"], t.loc[s.case_ids, "psad"], equal_nan=True)
    assert list(s.meta["pirads_reports"]) == list(t.loc[s.case_ids, "pirads_reports"])
    assert "case_csPCa" not in s.meta and "case_ISUP" not in s.meta        # no outcome in metadata
    per_slice = s.slice_meta()
    assert len(per_slice) == len(s) and per_slice["patient_age"].iloc[-1] == t.loc[s.case_ids[-1], "patient_age"]
    assert ds.slices(split=None, masks=False).lesion_mask is None


def test_unlabelled_view_has_no_labels(ds):
    s = ds.slices(split=None)
    u = s.unlabelled()
    assert u.slice_label is None and u.case_label is None and u.lesion_mask is None
    assert torch.equal(u.images, s.images) and u.meta is not None and not u.labelled
    sub = u.subset(["10002_1000003"])
    assert sub.slice_label is None and len(sub) == int((s.case_index == 2).sum())
    ds.release()
    assert ds._cache is None and ds.slices(split=None).images.shape == s.images.shape   # reloads


def test_subset_and_to(ds):
    s = ds.slices(split=None)
    sub = s.subset(["10002_1000003", "10001_1000001"])
    assert sub.case_ids == ["10001_1000001", "10002_1000003"]  # set order kept
    assert sub.case_index.unique().tolist() == [0, 1] and sub.case_label.tolist() == [1, 1]
    n0 = int((s.case_index == 0).sum())
    assert torch.equal(sub.images[:n0], s.images[s.case_index == 0])
    assert len(sub) == int(((s.case_index == 0) | (s.case_index == 2)).sum())
    assert sub.to("cpu").images.device.type == "cpu"
    with pytest.raises(KeyError):
        s.subset(["nope"])


def test_split_selection_and_budget(ds):
    t = ds.table
    for split in ("train", "val", "test"):
        n = int((t.split == split).sum())
        if n:
            assert ds.slices(split=split).case_ids == t.loc[t.split == split, "case_id"].tolist()
    ids = label_budget(t, 1.0)
    assert ds.slices(split="train").subset(ids).case_ids == ids
    with pytest.raises(ValueError, match="unknown split"):
        ds.slices(split="training")


def test_volumes(ds):
    v = ds.volumes(split=None)
    assert v.images.shape == (4, 3, 8, 48, 48) and v.lesions.dtype == torch.uint8
    assert v.subset(["10003_1000004"]).case_label.tolist() == [0]
    assert len(v) == 4


def test_not_prepared_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished prepared dataset"):
        PreparedDataset(tmp_path)


# -------------------------------------------------------------------------- ensure_*
@pytest.fixture
def fake_generator(monkeypatch, tmp_path):
    """Stand in for the synthetic generator (fast, and the test does not depend on its module)."""
    calls = []

    def generate_cohort(out_dir, n_cases, seed=0, *, progress=True, **params):
        calls.append((n_cases, seed, params))
        return make_raw(out_dir, cases=DEFAULT_CASES[:n_cases], seed=seed)

    mod = types.ModuleType("prostate_course.data.synthetic")
    mod.generate_cohort = generate_cohort
    mod.GENERATOR_VERSION = 2
    monkeypatch.setitem(sys.modules, "prostate_course.data.synthetic", mod)
    monkeypatch.setenv("PROSTATE_COURSE_DATA", str(tmp_path / "data"))
    return calls


def test_ensure_dataset_makes_then_reuses(fake_generator, tmp_path):
    prof = load_profile("smoke", {"data.n_cases": 4, "data.crop": [8, 32, 32]})
    ds = ensure_dataset(prof, workers=1, progress=False)
    assert ds.root.parent == tmp_path / "data" / "prepared" and ds.root.name.startswith("synthetic-")
    assert (tmp_path / "data" / "raw" / "synthetic-n4-s0-g2" / "images").is_dir()
    assert len(ds.table) == 4 and fake_generator == [(4, 0, {})]
    m = json.loads((ds.root / "manifest.json").read_text())
    # the key = the folder (cases, cache) + the split settings
    assert m["profile"] == "smoke" and m["key"] == ds.key and m["key"].startswith(ds.root.name + "-split-")
    assert m["splits"] == "course" and m["split"] == {"scheme": "course", "test_fraction": 0.25,
                                                      "val_fraction": 0.15}
    stamp = (ds.root / "manifest.json").stat().st_mtime_ns
    again = ensure_dataset(prof, workers=1, progress=False)
    assert again.root == ds.root and len(fake_generator) == 1
    assert (ds.root / "manifest.json").stat().st_mtime_ns == stamp  # found, not re-prepared
    other = ensure_dataset(load_profile("smoke", {"data.n_cases": 4, "data.crop": [8, 16, 16]}),
                           workers=1, progress=False)
    assert other.root != ds.root and other.cache()["images"].shape[-1] == 16 and len(fake_generator) == 1
    synth = ensure_raw(load_profile("smoke", {"data.n_cases": 3, "data.synth": {"lesion_rate": 0.5}}))
    assert synth.name.startswith("synthetic-n3-s0-") and fake_generator[-1] == (3, 0, {"lesion_rate": 0.5})


def test_other_split_settings_recompute_the_split_not_the_cases(fake_generator, tmp_path):
    """Changing data.split gives a new dataset key; the prepared folder is kept (no case is
    prepared again, cache.pt is untouched) and only split/fold are recomputed. val_fraction 0:
    no "val" split at all, and nothing breaks on its absence."""
    base = {"data.n_cases": 4, "data.crop": [8, 32, 32]}
    ds = ensure_dataset(load_profile("smoke", base), workers=1, progress=False)
    stamps = {f: f.stat().st_mtime_ns for f in [ds.root / "cache.pt", *ds.root.glob("cases/*/meta.json")]}
    prof = load_profile("smoke", {**base, "data.split": {"val_fraction": 0, "test_fraction": 0.5}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 3 patients: a split may have no positive
        other = ensure_dataset(prof, workers=1, progress=False)
    assert other.root == ds.root and other.key != ds.key and other.key == dataset_key(prof)[0]
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps
    assert set(other.table["split"]) == {"train", "test"} and (other.table["fold"][other.table.split == "test"] == -1).all()
    assert other.manifest["split"]["val_fraction"] == 0 and "val" not in other.manifest["split_counts"]
    assert other.table.groupby("patient_id")["split"].nunique().max() == 1
    pd.testing.assert_frame_equal(other.table.drop(columns=["split", "fold"]),
                                  ds.table.drop(columns=["split", "fold"]))
    with pytest.warns(UserWarning, match="no 'val' split"):
        empty = other.slices(split="val")
    assert len(empty) == 0 and empty.images.shape[1:] == (3, 32, 32)
    assert len(other.slices(split="train")) > 0 and other.cache()["case_ids"] == list(other.table["case_id"])
    # back to the first settings: the first key and split again
    back = ensure_dataset(load_profile("smoke", base), workers=1, progress=False)
    assert back.key == ds.key and back.table["split"].tolist() == ds.table["split"].tolist()


def test_bad_split_settings_are_named(fake_generator):
    with pytest.raises(ValueError, match="data.split.scheme"):
        ensure_dataset(load_profile("smoke", {"data.n_cases": 4, "data.split.scheme": "random"}))
    with pytest.warns(UserWarning, match="no key 'data.split.test_frac'"), \
            pytest.raises(ValueError, match="unknown key"):
        ensure_dataset(load_profile("smoke", {"data.n_cases": 4, "data.split.test_frac": 0.3}))
    with pytest.raises(ValueError, match="not public PI-CAI cases"):
        ensure_dataset(load_profile("smoke", {"data.n_cases": 4, "data.split.scheme": "picai_official"}),
                       workers=1, progress=False)


def test_ensure_raw_resumes_an_interrupted_generation(fake_generator, monkeypatch, tmp_path):
    mod = sys.modules["prostate_course.data.synthetic"]
    good = mod.generate_cohort

    def broken(out_dir, n_cases, seed=0, **params):
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        raise RuntimeError("generator crashed")

    monkeypatch.setattr(mod, "generate_cohort", broken)
    prof = load_profile("smoke", {"data.n_cases": 2})
    with pytest.raises(RuntimeError, match="crashed"):
        ensure_raw(prof)
    monkeypatch.setattr(mod, "generate_cohort", good)
    raw = ensure_raw(prof)  # not taken for complete: generated again (resumed) into the same folder
    assert raw.name == "synthetic-n2-s0-g2" and len(fake_generator) == 1
    assert (raw / "labels" / "clinical_information" / "marksheet.csv").is_file()


def test_ensure_raw_picai_missing_says_how_to_download(monkeypatch, tmp_path):
    monkeypatch.setenv("PROSTATE_COURSE_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data_download/picai.py"):
        ensure_raw(load_profile("full"))
    with pytest.raises(ValueError, match="unknown data.source"):
        ensure_raw(load_profile("smoke", {"data.source": "mnist"}))


def test_public_data_api_resolves():
    import prostate_course.data as data

    for name in data.__all__:
        assert getattr(data, name) is not None, name
    assert data.SliceSet is __import__("prostate_course.data.dataset", fromlist=["SliceSet"]).SliceSet
    with pytest.raises(AttributeError):
        data.no_such_name
