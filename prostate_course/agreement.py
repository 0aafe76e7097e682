"""Agreement between readers and between annotators: weighted kappa per reader pair, Dice.

- :func:`reader_agreement`: Cohen's kappa for every pair of readers of the ``pirads_reports``
  column, quadratic-weighted (the statistic for an ordinal 1-5 score) and unweighted.
- :func:`dice`, :func:`pairwise_dice`: overlap of two or several binary masks.

Kappa (Cohen 1960; weighted: Cohen 1968). With observed joint frequencies p_ij of the two
readers' categories, chance frequencies e_ij = p_i. p_.j and disagreement weights w_ij,

    kappa_w = 1 - sum_ij w_ij p_ij / sum_ij w_ij e_ij,

where w_ij = (i - j)^2 (quadratic) or 1[i != j] (unweighted). Quadratic weights count a 2-vs-5
disagreement as 9 times worse than 4-vs-5; unweighted kappa counts them alike, and so
understates agreement on an ordinal score. scikit-learn's ``cohen_kappa_score`` computes both.

Dice (Dice 1945): D(A, B) = 2 |A n B| / (|A| + |B|), 1 for identical masks, 0 for disjoint ones;
undefined (NaN here) when both are empty.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

PIRADS_LABELS = (1, 2, 3, 4, 5)

__all__ = ["reader_agreement", "dice", "pairwise_dice", "PIRADS_LABELS"]


def _reader_pairs(df: pd.DataFrame) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """(reader a, reader b) -> the (score a, score b) pairs of the cases both read."""
    from .data.readers import parse_reports

    reps = df["pirads_reports"] if "pirads_reports" in df else pd.Series([], dtype=object)
    ids = df["gt_reader_ids"].fillna("").astype(str) if "gt_reader_ids" in df else None
    pairs: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for k, rep in enumerate(reps):
        scores = parse_reports(rep)
        if len(scores) < 2:
            continue
        who = [int(x) for x in ids.iloc[k].split(";") if x.strip()] if ids is not None else list(range(len(scores)))
        if len(who) != len(scores):
            raise ValueError(f"row {k}: {len(scores)} PI-RADS reports but {len(who)} reader ids "
                             f"({rep!r} vs {ids.iloc[k]!r})")
        by = dict(zip(who, scores))
        for a, b in itertools.combinations(sorted(by), 2):
            pairs.setdefault((a, b), []).append((by[a], by[b]))
    return pairs


def reader_agreement(df: pd.DataFrame, min_cases: int = 20) -> pd.DataFrame:
    """Kappa for every pair of readers with at least ``min_cases`` cases read by both.

    Reader identities come from ``gt_reader_ids`` (synthetic cohorts); without it, report
    positions (1st vs 2nd report, ...) stand in for readers. Returns a DataFrame with columns
    reader_a, reader_b, n, kappa_quadratic (quadratic-weighted: the one to quote for PI-RADS)
    and kappa_unweighted; ``.kappa_quadratic.mean()`` is the mean pairwise agreement.
    """
    from sklearn.metrics import cohen_kappa_score

    rows = []
    for (a, b), vals in sorted(_reader_pairs(df).items()):
        if len(vals) < min_cases:
            continue
        x, y = zip(*vals)
        rows.append({"reader_a": a, "reader_b": b, "n": len(vals),
                     "kappa_quadratic": float(cohen_kappa_score(x, y, labels=PIRADS_LABELS, weights="quadratic")),
                     "kappa_unweighted": float(cohen_kappa_score(x, y, labels=PIRADS_LABELS))})
    return pd.DataFrame(rows, columns=["reader_a", "reader_b", "n", "kappa_quadratic", "kappa_unweighted"])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2 |A n B| / (|A| + |B|) of two masks (nonzero = inside); NaN if both are empty."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def pairwise_dice(masks) -> pd.DataFrame:
    """Dice of every pair of a stack of masks (annotators on the first axis).

    Returns a DataFrame (a, b, dice) with one row per unordered pair.
    """
    masks = [np.asarray(m) for m in masks]
    rows = [{"a": i, "b": j, "dice": dice(masks[i], masks[j])}
            for i, j in itertools.combinations(range(len(masks)), 2)]
    return pd.DataFrame(rows, columns=["a", "b", "dice"])
