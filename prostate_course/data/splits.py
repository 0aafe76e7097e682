"""Patient-level, csPCa-stratified splits and nested label budgets.

All studies of one patient always land on the same side (PI-CAI has 1476 patients for 1500
studies); splits and budgets are stratified by ``case_csPCa`` and seeded.

Two split schemes, chosen by the profile's ``data.split`` section (:func:`split_settings`):

- ``course`` (:func:`assign_splits`): a seeded, stratified test share (``test_fraction``) and,
  if ``val_fraction`` > 0, a fixed labelled validation share; ``val_fraction: 0`` gives no
  "val" split at all;
- ``picai_official`` (:func:`assign_official_splits`): the PI-CAI organisers' 5 folds
  (picai_baseline's ``splits.picai``, shipped as ``picai_folds.json``): fold ``test_fold`` is
  the test split, the other folds train (a seeded share of them is "val" if ``val_fraction``
  > 0). Running every ``test_fold`` 0-4 gives the organisers' 5-fold cross-validation.
  Reference: Saha et al., PI-CAI, Lancet Oncology 2024; picai_baseline (DIAGNijmegen).

:func:`make_splits` applies either and returns the label the manifest records
(``"course"`` or ``"picai_official:fold<k>"``).
"""
from __future__ import annotations

import functools
import json
import math
import warnings
from importlib import resources

import numpy as np
import pandas as pd

SCHEMES = ("course", "picai_official")
#: Today's course split, the default of every key of ``data.split``.
DEFAULT_SPLIT = {"scheme": "course", "test_fraction": 0.25, "val_fraction": 0.15, "test_fold": 0}
N_OFFICIAL_FOLDS = 5


def _patient_labels(table: pd.DataFrame) -> pd.Series:
    """One csPCa label per patient: positive if any of their studies is."""
    return table.groupby("patient_id", sort=True)["case_csPCa"].max().astype(int)


def _group_kfold_pick(patients: pd.Series, fraction: float, seed: int) -> set:
    """Pick ``fraction`` of the patients, stratified by label, seeded.

    When 1 / fraction is a whole number k (0.25, 0.2, ...), one fold of a StratifiedGroupKFold
    with k folds is the pick (one patient per row here, so groups are trivial). Other
    fractions (0.4, ...) and cohorts too small for k stratified folds take round(fraction * n)
    patients of each label from a seeded shuffle (k folds of 1 / fraction patients each would
    pick 1 / round(1 / fraction) instead: 50 % for 0.4).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    inverse = 1.0 / fraction
    n_splits = max(2, int(round(inverse)))
    y = patients.values
    n_min = int(min(np.bincount(y, minlength=2)))
    if n_min < n_splits or abs(inverse - round(inverse)) > 1e-6:  # (sklearn would warn and
        # leave folds without positives when n_min < n_splits)
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

    _warn_without_positives(out)
    return out


# --------------------------------------------------------------------- split settings
def split_settings(split: dict | None = None) -> dict:
    """The profile's ``data.split`` section, checked, with defaults, reduced to what matters.

    ``course``: {scheme, test_fraction, val_fraction}; ``picai_official``: {scheme, test_fold,
    val_fraction}. Keys the scheme does not use are dropped, so they never change a dataset's
    key. Raises ValueError naming the bad setting.
    """
    split = dict(split or {})
    unknown = set(split) - set(DEFAULT_SPLIT)
    if unknown:
        raise ValueError(f"data.split: unknown key(s) {sorted(unknown)}; known: {sorted(DEFAULT_SPLIT)}")
    cfg = {**DEFAULT_SPLIT, **split}
    scheme = cfg["scheme"]
    if scheme not in SCHEMES:
        raise ValueError(f"data.split.scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    val = float(cfg["val_fraction"])
    if not 0 <= val < 1:
        raise ValueError(f"data.split.val_fraction must be in [0, 1), got {val}")
    if scheme == "course":
        test = float(cfg["test_fraction"])
        if not 0 < test < 1 or val + test >= 1:
            raise ValueError(f"data.split: test_fraction {test} and val_fraction {val} must be > 0 "
                             f"and leave patients to train on (sum < 1)")
        return {"scheme": scheme, "test_fraction": test, "val_fraction": val}
    k = cfg["test_fold"]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < N_OFFICIAL_FOLDS:
        raise ValueError(f"data.split.test_fold must be an integer 0-{N_OFFICIAL_FOLDS - 1}, got {k!r}")
    return {"scheme": scheme, "test_fold": int(k), "val_fraction": val}


def split_label(split: dict | None = None) -> str:
    """What the manifest records: ``"course"`` or ``"picai_official:fold<k>"``."""
    cfg = split_settings(split)
    return "course" if cfg["scheme"] == "course" else f"picai_official:fold{cfg['test_fold']}"


@functools.lru_cache(maxsize=1)
def official_folds() -> dict[int, frozenset]:
    """The organisers' 5 folds of the public PI-CAI cases: {k: case ids ``<pid>_<sid>``}.

    From picai_baseline 0.8.5 (Apache-2.0), shipped as ``prostate_course/data/picai_folds.json``
    with its source, checksums and licence.
    """
    doc = json.loads(resources.files("prostate_course.data").joinpath("picai_folds.json").read_text())
    return {int(k): frozenset(v) for k, v in doc["folds"].items()}


def assign_official_splits(table: pd.DataFrame, test_fold: int = 0, val_fraction: float = 0.0,
                           seed: int = 0) -> pd.DataFrame:
    """Add ``split`` and ``fold`` from the official PI-CAI folds.

    Fold ``test_fold`` is "test" (fold -1), the others "train" with their official fold number
    (for cross-validation inside the training folds); with ``val_fraction`` > 0 a seeded,
    stratified share of all patients, drawn from the training folds, is "val". Raises
    ValueError when a case is not one of the 1500 public PI-CAI cases, or when the cohort has
    no case in the test fold or none in the others (e.g. only the fold-0 archive was
    downloaded: use the course scheme then, or download the other folds).
    """
    for col in ("case_id", "patient_id", "case_csPCa"):
        if col not in table.columns:
            raise ValueError(f"assign_official_splits: table lacks column {col!r}")
    folds = official_folds()
    fold_of = {c: k for k, ids in folds.items() for c in ids}
    unknown = [c for c in table["case_id"] if c not in fold_of]
    if unknown:
        raise ValueError(
            f"split scheme picai_official: {len(unknown)} case(s) are not public PI-CAI cases of "
            f"the official folds, e.g. {unknown[:3]}; use data.split.scheme: course for this data")
    out = table.copy()
    out["fold"] = out["case_id"].map(fold_of).astype(int)
    test = out["fold"] == int(test_fold)
    if not test.any() or test.all():
        have = sorted(out["fold"].unique().tolist())
        raise ValueError(
            f"split scheme picai_official with test_fold {test_fold}: the cohort's cases lie in "
            f"official fold(s) {have} only, so there is {'no test case' if not test.any() else 'nothing to train on'}. "
            f"Download the other folds (data.download_folds) or use data.split.scheme: course")
    out["split"] = np.where(test, "test", "train")
    if val_fraction > 0:
        pats = _patient_labels(out[~test])
        share = val_fraction * out["patient_id"].nunique() / max(len(pats), 1)
        if share >= 1:
            raise ValueError(f"val_fraction {val_fraction} leaves no training patient")
        val = _group_kfold_pick(pats, share, seed + 1) if len(pats) > 1 else set()
        out.loc[out["patient_id"].isin(val), "split"] = "val"
    out.loc[test, "fold"] = -1
    _warn_without_positives(out)
    return out


def make_splits(table: pd.DataFrame, split: dict | None = None, seed: int = 0) -> tuple[pd.DataFrame, str]:
    """``table`` with ``split``/``fold`` by the scheme of ``split`` (:func:`split_settings`),
    and the label the manifest records."""
    cfg = split_settings(split)
    if cfg["scheme"] == "course":
        out = assign_splits(table, seed=seed, val_fraction=cfg["val_fraction"],
                            test_fraction=cfg["test_fraction"])
    else:
        out = assign_official_splits(table, cfg["test_fold"], cfg["val_fraction"], seed=seed)
    return out, split_label(cfg)


def _warn_without_positives(out: pd.DataFrame) -> None:
    """Warn for each split that exists but holds no csPCa-positive case (absent splits are fine:
    with val_fraction 0 there is no "val" split)."""
    n_pos = int(_patient_labels(out).sum())
    for s in ("train", "val", "test"):
        sel = out["split"] == s
        if sel.any() and out.loc[sel, "case_csPCa"].sum() == 0:
            warnings.warn(f"split {s!r} has no csPCa-positive case (only {n_pos} positive patients)",
                          stacklevel=3)


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


__all__ = ["assign_splits", "assign_official_splits", "make_splits", "split_settings", "split_label",
           "official_folds", "label_budget", "DEFAULT_SPLIT", "SCHEMES"]
