"""Paired comparisons of arms on the same test patients: delta with a patient-cluster bootstrap
interval.

Every lesson of notebooks 01-05 asks "is arm A better than the reference R?". Both arms score
the SAME test cases, so their errors are correlated (a hard case is hard for both); computing an
interval for each arm on its own and comparing the intervals throws that away. The paired
bootstrap keeps it (Efron & Tibshirani 1993; for one seed and AUROC, DeLong et al. 1988 is the
analytic alternative):

    delta   = mean_s M(A_s) - mean_s M(R_s)              (M: AUROC, ..., s: training seeds)
    delta*_b = mean_s M(A_s; w_b) - mean_s M(R_s; w_b),   b = 1..B

where w_b resamples whole *patients* with replacement (all studies of a patient together) and
the SAME w_b is used for both arms and every seed in replicate b. The 95 % interval is the
2.5 / 97.5 % percentiles of delta*. Seeds are averaged inside each replicate, so the interval
describes the test-set uncertainty of the seed-averaged difference.

Input: per-case scores in the course's long format (one row per case, task, method, protocol,
label fraction and seed; see :data:`SCORE_COLUMNS`); rows whose ``label_fraction`` is empty
(e.g. the readers' PI-RADS, which needs no training) serve as a reference at every budget.

Lesion-level metrics (detection AP, the PI-CAI ranking score) also need each case's lesion
candidates and reference lesions (``lesions``: :data:`LESION_COLUMNS`, as picai_eval's per-case
results give them). Every candidate and reference lesion of a case carries its case's - hence
its patient's - bootstrap weight, so a replicate is exactly the evaluation of the resampled
patients.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from .evaluate import cluster_weights, weighted_auroc

#: the columns of a per-case scores table
SCORE_COLUMNS = ("case_id", "patient_id", "label", "task", "method", "protocol",
                 "label_fraction", "seed", "score")
#: the columns of the table :func:`paired_deltas` returns (and a few more after them)
DELTA_COLUMNS = ("task", "metric", "method", "protocol", "label_fraction", "reference",
                 "delta", "delta_lo", "delta_hi", "n_seeds", "n_test_patients")
#: the columns of a lesion-level results table (one row per candidate or reference lesion)
LESION_COLUMNS = ("case_id", "task", "method", "protocol", "label_fraction", "seed",
                  "is_lesion", "confidence")
_ARM_KEY = ["task", "method", "protocol", "label_fraction"]


@dataclass(frozen=True)
class CaseMetric:
    """A case-level metric as a function of per-case labels, scores and bootstrap weights:
    ``fn(labels (n,), scores (n,), weights (B, n)) -> (B,)``."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LesionMetric:
    """A metric that also reads lesion-level results: ``fn(labels (n,), scores (n,), lesions,
    weights (B, n)) -> (B,)`` with ``lesions = (case_pos (m,), is_lesion (m,), confidence (m,))``,
    ``case_pos`` the position of each entry's case among the n cases (its weight is
    ``weights[:, case_pos]``)."""

    name: str
    fn: Callable


#: metrics known to :func:`paired_deltas`; :func:`register_metric` adds more
METRICS: dict[str, CaseMetric | LesionMetric] = {"auroc": CaseMetric("auroc", weighted_auroc)}


def register_metric(name: str, fn, lesion_level: bool = False) -> None:
    """Make ``fn(labels, scores, weights) -> (B,)`` available as ``metric=name``; with
    ``lesion_level``, ``fn(labels, scores, lesions, weights)`` (see :class:`LesionMetric`)."""
    METRICS[name] = LesionMetric(name, fn) if lesion_level else CaseMetric(name, fn)


def check_scores(scores: pd.DataFrame, source: str = "scores") -> pd.DataFrame:
    """Check a per-case scores table: columns, finite scores, one label per case, no duplicate
    (case, arm, budget, seed). Returns it; raises ValueError naming the problem."""
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}")
    if not np.isfinite(scores["score"].to_numpy(dtype=float)).all():
        bad = scores.loc[~np.isfinite(scores["score"].to_numpy(dtype=float)), "case_id"].head(3)
        raise ValueError(f"{source}: non-finite scores (cases {list(bad)})")
    labels = scores.groupby("case_id")["label"].nunique()
    if (labels > 1).any():
        raise ValueError(f"{source}: cases with two labels: {list(labels[labels > 1].index[:3])}")
    key = ["case_id", "task", "method", "protocol", "label_fraction", "seed"]
    dup = scores.duplicated(key, keep=False)
    if dup.any():
        raise ValueError(f"{source}: duplicate rows for {scores.loc[dup, key].head(1).to_dict('records')}")
    return scores


def _arm_matrix(rows: pd.DataFrame, cases: pd.Index, what: str) -> tuple[np.ndarray, list]:
    """(n_seeds, n_cases) scores of one arm, cases in ``cases`` order (all must be present)."""
    out, seeds = [], []
    for seed, d in rows.groupby("seed", dropna=False, sort=True):
        s = d.set_index("case_id")["score"]
        missing = cases.difference(s.index)
        if len(missing):
            raise ValueError(f"{what} (seed {seed}) has no score for {len(missing)} test cases of "
                             f"the reference, e.g. {list(missing[:3])}: arms must score the same cases")
        out.append(s.reindex(cases).to_numpy(dtype=float))
        seeds.append(seed)
    return np.stack(out), seeds


def _arm_lesions(lesions: pd.DataFrame, cases: pd.Index, seeds: list, what: str) -> list:
    """Per seed of an arm, ``(case_pos, is_lesion, confidence)`` of its lesion rows."""
    pos = pd.Series(np.arange(len(cases)), index=cases)
    out = []
    for seed in seeds:
        d = lesions[lesions["seed"] == seed] if pd.notna(seed) else lesions[lesions["seed"].isna()]
        if d.empty:
            raise ValueError(f"{what} (seed {seed}) has per-case scores but no lesion-level results")
        unknown = pd.Index(d["case_id"].unique()).difference(cases)
        if len(unknown):
            raise ValueError(f"{what} (seed {seed}) has lesion results for cases that are not "
                             f"scored, e.g. {list(unknown[:3])}")
        out.append((pos.loc[d["case_id"]].to_numpy(), d["is_lesion"].to_numpy(dtype=int),
                    d["confidence"].to_numpy(dtype=float)))
    return out


def _reference_lesions(per_seed: list, n: int) -> np.ndarray:
    """Reference lesions per case (one row per seed): the same for every arm and seed."""
    return np.stack([np.bincount(p[y == 1], minlength=n) for p, y, _ in per_seed])


def _select(frame: pd.DataFrame, method, protocol, frac) -> pd.DataFrame:
    f = frame[(frame["method"] == method) & (frame["protocol"] == protocol)]
    return f[f["label_fraction"] == frac] if pd.notna(frac) else f[f["label_fraction"].isna()]


def _quantiles(reps: np.ndarray, alpha: float) -> tuple[float, float, int]:
    ok = reps[np.isfinite(reps)]
    if len(ok) == 0:
        return np.nan, np.nan, 0
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi), len(ok)


def _reference_rows(scores: pd.DataFrame, method: str, protocol: str | None, frac) -> pd.DataFrame:
    r = scores[scores["method"] == method]
    if protocol is not None:
        r = r[r["protocol"] == protocol]
    at = r[r["label_fraction"] == frac] if pd.notna(frac) else r.iloc[0:0]
    return at if len(at) else r[r["label_fraction"].isna()]


def paired_deltas(scores: pd.DataFrame, reference: str | tuple = "scratch", *,
                  metric: str = "auroc", n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                  paired: bool = True, tasks=None, lesions: pd.DataFrame | None = None) -> pd.DataFrame:
    """delta = metric(arm) - metric(reference) with a paired patient-cluster bootstrap interval,
    for every arm and label budget of ``scores`` (see the module docstring).

    ``reference``: a method name, compared within the same protocol (a linear probe against the
    reference's linear probe, ...), or ``(method, protocol)`` for one fixed reference arm (e.g.
    ``("scratch", "finetune")``; the reference's rows without a label fraction, such as the
    readers' PI-RADS, serve at every budget). ``paired=False`` draws the two arms' patients
    independently: the unpaired interval, for comparison only.

    Returns one row per (task, arm, label fraction): :data:`DELTA_COLUMNS` plus ``value`` and
    ``reference_value`` (the seed-averaged metrics), ``half_width`` and ``n_boot`` (replicates
    with both classes present), and ``p_value``: the two-sided bootstrap p-value of "no
    difference", 2 min(P*(delta* <= 0), P*(delta* >= 0)), the smallest alpha whose percentile
    interval excludes 0 (Efron & Tibshirani 1993, ch. 16).

    A lesion-level ``metric`` (``"ap"``, ``"score"``: :mod:`prostate_course.detection`) needs
    ``lesions`` (:data:`LESION_COLUMNS`); only arms with lesion results are compared.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    lesion_level = isinstance(METRICS[metric], LesionMetric)
    fn = METRICS[metric].fn
    scores = check_scores(scores)
    if lesion_level:
        if lesions is None:
            raise ValueError(f"metric {metric!r} is lesion-level: pass lesions= (lesion-level results)")
        missing = [c for c in LESION_COLUMNS if c not in lesions.columns]
        if missing:
            raise ValueError(f"lesions: missing columns {missing}")
        have = lesions[_ARM_KEY].drop_duplicates()
        scores = scores.merge(have, on=_ARM_KEY, how="inner")
    ref_method, ref_protocol = (reference if isinstance(reference, tuple) else (reference, None))
    if not (scores["method"] == ref_method).any():
        raise ValueError(f"no scores for the reference method {ref_method!r} "
                         f"(methods: {sorted(scores['method'].unique())})")
    out = []
    for task, td in scores.groupby("task", sort=False):
        if tasks is not None and task not in tasks:
            continue
        arms = td[td["label_fraction"].notna()][["method", "protocol", "label_fraction"]].drop_duplicates()
        for frac, fd in arms.groupby("label_fraction", sort=True):
            for (method, protocol), _ in fd.groupby(["method", "protocol"], sort=False):
                rp = ref_protocol if ref_protocol is not None else protocol
                if method == ref_method and protocol == rp:
                    continue
                ref = _reference_rows(td, ref_method, rp, frac)
                if ref.empty:
                    continue
                arm = td[(td["method"] == method) & (td["protocol"] == protocol)
                         & (td["label_fraction"] == frac)]
                les = None
                if lesion_level:
                    tl = lesions[lesions["task"] == task]
                    r0 = ref.iloc[0]
                    les = (_select(tl, method, protocol, frac),
                           _select(tl, r0["method"], r0["protocol"], r0["label_fraction"]))
                out.append(_compare(arm, ref, fn, n_boot, seed, alpha, paired, les)
                           | {"task": task, "metric": metric, "method": method,
                              "protocol": protocol, "label_fraction": float(frac),
                              "reference": ref_method if ref_protocol is None and rp == protocol
                              else f"{ref_method} ({rp})"})
    cols = list(DELTA_COLUMNS) + ["value", "reference_value", "half_width", "n_boot",
                                  "n_reference_seeds", "p_value"]
    return pd.DataFrame(out, columns=cols)


def _compare(arm: pd.DataFrame, ref: pd.DataFrame, fn, n_boot, seed, alpha, paired,
             lesions=None) -> dict:
    cases = pd.Index(sorted(ref["case_id"].unique()))
    patients = ref.drop_duplicates("case_id").set_index("case_id").reindex(cases)
    labels = patients["label"].to_numpy(dtype=float) > 0
    what_a = f"arm {arm['method'].iloc[0]}/{arm['protocol'].iloc[0]}"
    what_r = f"reference {ref['method'].iloc[0]}"
    a, a_seeds = _arm_matrix(arm, cases, what_a)
    r, r_seeds = _arm_matrix(ref, cases, what_r)
    metric = fn
    if lesions is not None:                  # lesion-level: (scores, lesions) per seed
        la = _arm_lesions(lesions[0], cases, a_seeds, what_a)
        lr = _arm_lesions(lesions[1], cases, r_seeds, what_r)
        ref_counts = _reference_lesions(la + lr, len(cases))
        if (ref_counts != ref_counts[0]).any():
            raise ValueError(f"{what_a} and {what_r} disagree on the reference lesions of some "
                             "cases: lesion results must come from the same ground truth")
        a, r = list(zip(a, la)), list(zip(r, lr))

        def metric(y, s, w):
            return fn(y, s[0], s[1], w)
    ones = np.ones((1, len(cases)))
    value = np.mean([metric(labels, s, ones)[0] for s in a])
    ref_value = np.mean([metric(labels, s, ones)[0] for s in r])
    groups = patients["patient_id"].to_numpy()
    reps = []
    blocks_a = cluster_weights(groups, n_boot, seed)
    blocks_r = blocks_a if paired else cluster_weights(groups, n_boot, seed + 7919)
    for wa in blocks_a:
        wr = wa if paired else next(blocks_r)
        da = np.mean([metric(labels, s, wa) for s in a], axis=0)
        dr = np.mean([metric(labels, s, wr) for s in r], axis=0)
        reps.append(da - dr)
    reps = np.concatenate(reps) if reps else np.zeros(0)
    lo, hi, n_ok = _quantiles(reps, alpha)
    ok = reps[np.isfinite(reps)]
    p = min(1.0, 2 * min((ok <= 0).mean(), (ok >= 0).mean())) if len(ok) else np.nan
    return {"delta": float(value - ref_value), "delta_lo": lo, "delta_hi": hi,
            "n_seeds": len(a_seeds), "n_test_patients": int(pd.Series(groups).nunique()),
            "value": float(value), "reference_value": float(ref_value),
            "half_width": (hi - lo) / 2 if n_ok else np.nan, "n_boot": n_ok,
            "n_reference_seeds": len(r_seeds), "p_value": float(p)}


def resolved(deltas: pd.DataFrame) -> pd.Series:
    """Per row: "better" / "worse" when the whole interval lies above / below 0, else
    "not resolved" (the data cannot tell the arms apart)."""
    return pd.Series(np.where(deltas["delta_lo"] > 0, "better",
                              np.where(deltas["delta_hi"] < 0, "worse", "not resolved")),
                     index=deltas.index)


def describe(deltas: pd.DataFrame, digits: int = 2) -> list[str]:
    """One plain sentence per row of :func:`paired_deltas`' table."""
    out = []
    for r, verdict in zip(deltas.itertuples(), resolved(deltas)):
        arm = r.method if r.protocol == "finetune" else f"{r.method} ({r.protocol.replace('_', ' ')})"
        what = {"better": f"better than {r.reference}", "worse": f"worse than {r.reference}",
                "not resolved": f"not distinguishable from {r.reference}"}[verdict]
        out.append(f"{arm} at {r.label_fraction:.0%} of the labels: {r.metric} delta "
                   f"{r.delta:+.{digits}f} (95 % CI {r.delta_lo:+.{digits}f} to "
                   f"{r.delta_hi:+.{digits}f}) -> {what}")
    return out


__all__ = ["SCORE_COLUMNS", "DELTA_COLUMNS", "LESION_COLUMNS", "paired_deltas", "check_scores",
           "resolved", "describe", "register_metric", "METRICS", "CaseMetric", "LesionMetric"]
