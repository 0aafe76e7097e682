"""Patient-level stratified splits and nested label budgets."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import PICAI_LABELS
from prostate_course.data.readers import read_marksheet
from prostate_course.data.splits import assign_splits, label_budget

FRACTIONS = (0.05, 0.1, 0.25, 1.0)


@pytest.fixture(scope="module")
def real_table():
    """The real PI-CAI marksheet: 1500 studies of 1476 patients, 425 csPCa."""
    return read_marksheet(PICAI_LABELS / "clinical_information" / "marksheet.csv")


def _small_table(n_patients=60, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for s in range(1 + (p % 7 == 0)):  # every 7th patient has two studies
            rows.append(dict(case_id=f"{p}_{s}", patient_id=str(p), case_csPCa=int(rng.random() < 0.3)))
    return pd.DataFrame(rows)


def test_real_splits_patient_disjoint_stratified(real_table):
    t = assign_splits(real_table, seed=0)
    assert t.groupby("patient_id")["split"].nunique().max() == 1
    assert t.groupby("patient_id")["fold"].nunique().max() == 1
    frac = t["split"].value_counts(normalize=True)
    assert frac["test"] == pytest.approx(0.25, abs=0.02)
    assert frac["val"] == pytest.approx(0.15, abs=0.02)
    prev = t.groupby("split")["case_csPCa"].mean()
    assert (prev - 425 / 1500).abs().max() < 0.03  # stratified by csPCa
    assert set(t.loc[t.split == "test", "fold"]) == {-1}
    folds = t[t.split != "test"]
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert folds.groupby("fold")["case_csPCa"].sum().min() > 0
    assert (folds["fold"].value_counts(normalize=True) - 0.2).abs().max() < 0.03


def test_splits_seeded(real_table):
    a, b, c = (assign_splits(real_table, seed=s) for s in (0, 0, 1))
    assert a["split"].tolist() == b["split"].tolist() and a["fold"].tolist() == b["fold"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_small_cohort_every_split_has_positives():
    t = assign_splits(_small_table(), seed=3)
    assert t.groupby("patient_id")["split"].nunique().max() == 1
    for s in ("train", "val", "test"):
        assert t.loc[t.split == s, "case_csPCa"].sum() > 0, s


def test_three_positive_patients_reach_every_split():
    t = pd.DataFrame(dict(case_id=[f"{i}_1" for i in range(12)], patient_id=[str(i) for i in range(12)],
                          case_csPCa=[1, 1, 1] + [0] * 9))
    out = assign_splits(t, seed=0)
    assert out.groupby("split")["case_csPCa"].sum().to_dict() == {"test": 1, "train": 1, "val": 1}


def test_tiny_cohort_warns_instead_of_failing():
    t = pd.DataFrame(dict(case_id=["a_1", "b_1", "c_1", "d_1"], patient_id=list("abcd"), case_csPCa=[1, 0, 0, 0]))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = assign_splits(t, seed=0)
    assert set(out["split"]) <= {"train", "val", "test"} and len(out) == 4


def test_assign_splits_bad_input():
    with pytest.raises(ValueError, match="case_csPCa"):
        assign_splits(pd.DataFrame(dict(case_id=["a"], patient_id=["a"])))
    with pytest.raises(ValueError, match="bad fractions"):
        assign_splits(_small_table(), val_fraction=0.5, test_fraction=0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_label_budget_nested_stratified(real_table, seed):
    t = assign_splits(real_table, seed=0)
    train = t[t.split == "train"]
    sets = [set(label_budget(t, f, seed=seed)) for f in FRACTIONS]
    for small, big in zip(sets, sets[1:]):
        assert small < big  # nested, strictly growing
    assert sets[-1] == set(train["case_id"])  # 1.0 = every training case
    by_pat = train.set_index("case_id")["patient_id"]
    for f, s in zip(FRACTIONS, sets):
        pats = set(by_pat[list(s)])
        assert set(train.loc[train.patient_id.isin(pats), "case_id"]) == s  # whole patients
        sub = train[train.case_id.isin(s)]
        assert 0 < sub["case_csPCa"].sum() < len(sub)  # positives and negatives
        assert len(s) / len(train) == pytest.approx(f, abs=0.01)
        assert sub["case_csPCa"].mean() == pytest.approx(train["case_csPCa"].mean(), abs=0.03)


def test_label_budget_seeded(real_table):
    t = assign_splits(real_table, seed=0)
    assert label_budget(t, 0.1, seed=4) == label_budget(t, 0.1, seed=4)
    assert label_budget(t, 0.1, seed=4) != label_budget(t, 0.1, seed=5)
    ids = label_budget(t, 0.1, seed=4)
    assert ids == [c for c in t["case_id"] if c in set(ids)]  # table order


def test_label_budget_tiny_keeps_one_of_each():
    t = assign_splits(_small_table(), seed=3)
    ids = label_budget(t, 0.01, seed=0)
    sub = t[t.case_id.isin(ids)]
    assert sub["case_csPCa"].sum() >= 1 and (sub["case_csPCa"] == 0).sum() >= 1
    assert sub["patient_id"].nunique() == 2
    with pytest.raises(ValueError, match="fraction"):
        label_budget(t, 0.0)
    with pytest.raises(ValueError, match="no cases"):
        label_budget(t, 0.5, split="nope")


# ------------------------------------------------------------- official PI-CAI folds
from conftest import FIXTURES  # noqa: E402
from prostate_course.data.splits import (  # noqa: E402
    assign_official_splits, make_splits, official_folds, split_label, split_settings,
)


@pytest.fixture(scope="module")
def marksheet_picai():
    """tests/fixtures/marksheet_picai.csv: the real marksheet of the 1500 public PI-CAI cases."""
    return read_marksheet(FIXTURES / "marksheet_picai.csv")


def test_shipped_official_folds_are_the_real_cases_patient_level(marksheet_picai):
    folds = official_folds()
    assert sorted(folds) == [0, 1, 2, 3, 4]
    ids = [c for k in folds for c in folds[k]]
    assert len(ids) == len(set(ids)) == 1500  # disjoint
    assert set(ids) == set(marksheet_picai["case_id"])  # exactly the marksheet's cases
    pid_folds = marksheet_picai.assign(k=[next(k for k in folds if c in folds[k]) for c in marksheet_picai.case_id])
    assert pid_folds.groupby("patient_id")["k"].nunique().max() == 1  # a patient's studies share a fold
    assert all(290 <= len(folds[k]) <= 310 for k in folds)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_official_split_fold_k_is_test(marksheet_picai, k):
    t, name = make_splits(marksheet_picai, {"scheme": "picai_official", "test_fold": k, "val_fraction": 0})
    assert name == f"picai_official:fold{k}"
    assert set(t.loc[t.split == "test", "case_id"]) == official_folds()[k]
    assert set(t["split"]) == {"train", "test"}  # val_fraction 0: no val split at all
    assert (t.loc[t.split == "test", "fold"] == -1).all()
    train = t[t.split == "train"]
    assert sorted(train["fold"].unique()) == sorted(set(range(5)) - {k})
    for c, f in zip(train.case_id, train.fold):  # the official fold number is kept for CV
        assert c in official_folds()[f]


def test_official_split_with_a_validation_share(marksheet_picai):
    t = assign_official_splits(marksheet_picai, test_fold=2, val_fraction=0.15, seed=0)
    assert set(t.loc[t.split == "test", "case_id"]) == official_folds()[2]  # the test fold untouched
    pats = t.groupby("patient_id")["split"].first()
    assert (pats == "val").mean() == pytest.approx(0.15, abs=0.015)
    assert t.groupby("patient_id")["split"].nunique().max() == 1
    val = t[t.split == "val"]
    assert val["case_csPCa"].mean() == pytest.approx(marksheet_picai["case_csPCa"].mean(), abs=0.04)
    assert set(val["fold"]) <= {0, 1, 3, 4}
    again = assign_official_splits(marksheet_picai, test_fold=2, val_fraction=0.15, seed=0)
    assert again["split"].tolist() == t["split"].tolist()  # seeded


def test_official_split_needs_pi_cai_cases_and_more_than_one_fold(marksheet_picai):
    fold0 = marksheet_picai[marksheet_picai.case_id.isin(official_folds()[0])]  # the fold-0 archive alone
    with pytest.raises(ValueError, match="nothing to train on"):
        assign_official_splits(fold0, test_fold=0)
    with pytest.raises(ValueError, match="no test case"):
        assign_official_splits(fold0, test_fold=1)
    # ... where the course split of the downloaded cases works (what the gpu profile does)
    t, name = make_splits(fold0, {"scheme": "course"})
    assert name == "course" and set(t["split"]) == {"train", "val", "test"}
    with pytest.raises(ValueError, match="not public PI-CAI cases"):
        assign_official_splits(_small_table(), test_fold=0)


def test_course_split_without_validation(marksheet_picai):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about an absent val split
        t, name = make_splits(marksheet_picai, {"scheme": "course", "test_fraction": 0.4, "val_fraction": 0})
    assert name == "course" and set(t["split"]) == {"train", "test"}
    assert (t["split"] == "test").mean() == pytest.approx(0.4, abs=0.02)
    assert sorted(t.loc[t.split == "train", "fold"].unique()) == [0, 1, 2, 3, 4]
    assert len(label_budget(t, 0.1)) > 0


def test_split_settings_defaults_and_errors():
    assert split_settings(None) == {"scheme": "course", "test_fraction": 0.25, "val_fraction": 0.15}
    assert split_settings({"scheme": "picai_official", "test_fold": 3, "test_fraction": 0.9}) == \
        {"scheme": "picai_official", "test_fold": 3, "val_fraction": 0.15}  # unused keys dropped
    assert split_label({"scheme": "picai_official", "test_fold": 4}) == "picai_official:fold4"
    for bad, msg in (({"scheme": "kfold"}, "scheme"), ({"val_fraction": 1.0}, "val_fraction"),
                     ({"test_fraction": 0.0}, "test_fraction"), ({"test_fraction": 0.6, "val_fraction": 0.4}, "sum"),
                     ({"scheme": "picai_official", "test_fold": 5}, "test_fold"),
                     ({"scheme": "picai_official", "test_fold": True}, "test_fold"), ({"folds": 3}, "unknown")):
        with pytest.raises(ValueError, match=msg):
            split_settings(bad)
