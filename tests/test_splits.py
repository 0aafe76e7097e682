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
