"""Patient-level, csPCa-stratified splits and nested label budgets.

All studies of one patient always land on the same side (PI-CAI has 1476 patients for 1500
studies); splits and budgets are stratified by ``case_csPCa`` and seeded.

For the real PI-CAI "full" profile the course should use the official picai_baseline 5-fold
split (``data.picai_folds`` in the profile) instead of :func:`assign_splits`'s folds; that hook
is not wired yet: :func:`assign_splits` is used for every source, and the manifest says so
(``splits: "course"``).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd


def _patient_labels(table: pd.DataFrame) -> pd.Series:
    """One csPCa label per patient: positive if any of their studies is."""
    return table.groupby("patient_id", sort=True)["case_csPCa"].max().astype(int)


def _group_kfold_pick(patients: pd.Series, fraction: float, seed: int) -> set:
    """Pick about ``fraction`` of the patients, stratified by label, via StratifiedGroupKFold.

    One patient per row here, so groups are trivial; StratifiedGroupKFold still does the
    stratified, seeded assignment (one fold = the pick).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, int(round(1.0 / fraction)))
    y = patients.values
    n_min = int(min(np.bincount(y, minlength=2)))
    if n_min < n_splits:  # sklearn would warn and leave folds without positives
        rng = np.random.default_rng(seed)
        chosen = []
        for label in (0, 1):
            ids = np.array(patients.index[y == label], dtype=object)
            rng.shuffle(ids)
            k = int(round(len(ids) * fraction))
            if k == 0 and len(ids) >= 2:  # give every split a positive while one stays behind
                k = 1
            chosen += list(ids[:k])
        return set(chosen)
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, pick = next(iter(cv.split(np.zeros(len(y)), y, groups=np.arange(len(y)))))
    return set(patients.index[pick])


def assign_splits(
    table: pd.DataFrame,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    n_folds: int = 5,
) -> pd.DataFrame:
    """Add ``split`` ("train" | "val" | "test") and ``fold`` (0..n_folds-1 on train+val, -1 on test).

    Patient-level: a patient's studies share split and fold. Stratified by csPCa (scikit-learn
    ``StratifiedGroupKFold`` with patients as groups). Every split gets positives whenever the
    cohort has enough positive patients (>= 3); otherwise a warning says which split has none.
    """
    for col in ("case_id", "patient_id", "case_csPCa"):
        if col not in table.columns:
            raise ValueError(f"assign_splits: table lacks column {col!r}")
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"bad fractions: val {val_fraction}, test {test_fraction}")
    out = table.copy()
    pats = _patient_labels(out)
    test = _group_kfold_pick(pats, test_fraction, seed)
    rest = pats[~pats.index.isin(test)]
    val: set = set()
    if val_fraction > 0 and len(rest) > 1:
        val = _group_kfold_pick(rest, val_fraction / (1 - test_fraction), seed + 1)
    split = {p: "test" if p in test else "val" if p in val else "train" for p in pats.index}
    out["split"] = out["patient_id"].map(split)

    # folds over train+val patients (cross-validation), stratified, patient-level
    fold = {p: -1 for p in pats.index}
    tv = pats[~pats.index.isin(test)]
    if len(tv) >= n_folds:
        from sklearn.model_selection import StratifiedGroupKFold

        k = n_folds if int(min(np.bincount(tv.values, minlength=2))) >= n_folds else None
        if k:
            cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            for f, (_, idx) in enumerate(cv.split(np.zeros(len(tv)), tv.values, groups=np.arange(len(tv)))):
                for p in tv.index[idx]:
                    fold[p] = f
        else:  # too few positives for stratified folds: seeded round-robin within each label
            rng = np.random.default_rng(seed)
            for label in (0, 1):
                ids = np.array(tv.index[tv.values == label], dtype=object)
                rng.shuffle(ids)
                for i, p in enumerate(ids):
                    fold[p] = i % n_folds
    out["fold"] = out["patient_id"].map(fold).astype(int)

    for s in ("train", "val", "test"):
        sel = out["split"] == s
        if sel.any() and out.loc[sel, "case_csPCa"].sum() == 0:
            warnings.warn(f"split {s!r} has no csPCa-positive case (only {int(pats.sum())} positive patients)", stacklevel=2)
    return out


def label_budget(table: pd.DataFrame, fraction: float, seed: int = 0, split: str = "train") -> list[str]:
    """Case ids of the ``split`` cases that keep their labels at a label budget of ``fraction``.

    Whole patients, stratified by csPCa: a seeded random order of positive and of negative
    patients is fixed once per seed, and a budget takes the first max(1, round(f * n)) of each,
    so budgets are nested (the 10 % set contains the 5 % set) and each has at least one
    positive and one negative patient. ``fraction`` 1.0 returns every case of the split.
    Returned in table order.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    sub = table[table["split"] == split] if split is not None else table
    if sub.empty:
        raise ValueError(f"label_budget: no cases in split {split!r}")
    pats = _patient_labels(sub)
    if fraction >= 1:
        keep = set(pats.index)
    else:
        rng = np.random.default_rng(seed)
        keep = set()
        for label in (0, 1):
            ids = np.array(sorted(pats.index[pats.values == label]), dtype=object)
            if len(ids) == 0:
                continue
            ids = ids[rng.permutation(len(ids))]
            k = min(len(ids), max(1, int(math.floor(fraction * len(ids) + 0.5))))
            keep.update(ids[:k])
    if pats.sum() == 0:
        warnings.warn(f"label_budget: split {split!r} has no csPCa-positive patient", stacklevel=2)
    return [c for c, p in zip(sub["case_id"], sub["patient_id"]) if p in keep]


__all__ = ["assign_splits", "label_budget"]
