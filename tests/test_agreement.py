"""agreement: weighted kappa per reader pair against a hand computation, Dice on crafted masks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prostate_course.agreement import dice, pairwise_dice, reader_agreement


def _kappa_by_hand(a, b, weights):
    """kappa_w = 1 - sum w p / sum w e over the 5 x 5 table of PI-RADS pairs (Cohen 1968)."""
    p = np.zeros((5, 5))
    for x, y in zip(a, b):
        p[x - 1, y - 1] += 1
    p /= p.sum()
    e = np.outer(p.sum(1), p.sum(0))
    i, j = np.indices((5, 5))
    w = (i - j) ** 2 if weights == "quadratic" else (i != j).astype(float)
    return 1 - (w * p).sum() / (w * e).sum()


def test_reader_agreement_matches_the_formula():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 6, 60)
    b = np.clip(a + rng.integers(-1, 2, 60), 1, 5)
    c = rng.integers(1, 6, 60)
    df = pd.DataFrame({"pirads_reports": [f"{x};{y};{z}" for x, y, z in zip(a, b, c)],
                       "gt_reader_ids": ["7;2;4"] * 60})
    k = reader_agreement(df).set_index(["reader_a", "reader_b"])
    assert list(k.index) == [(2, 4), (2, 7), (4, 7)] and (k["n"] == 60).all()
    # reader 7 gave a, reader 2 gave b, reader 4 gave c
    assert k.loc[(2, 7), "kappa_quadratic"] == pytest.approx(_kappa_by_hand(b, a, "quadratic"))
    assert k.loc[(2, 7), "kappa_unweighted"] == pytest.approx(_kappa_by_hand(b, a, "unweighted"))
    assert k.loc[(2, 7), "kappa_quadratic"] > k.loc[(2, 7), "kappa_unweighted"]  # off by one mostly
    assert abs(k.loc[(4, 7), "kappa_quadratic"]) < 0.3                            # independent readers


def test_reader_agreement_limits_and_errors():
    same = pd.DataFrame({"pirads_reports": ["1;1", "3;3", "5;5", "2;2"] * 6})
    k = reader_agreement(same)
    assert k["kappa_quadratic"].iloc[0] == pytest.approx(1.0) and k["kappa_unweighted"].iloc[0] == pytest.approx(1.0)
    assert reader_agreement(same, min_cases=25).empty
    bad = pd.DataFrame({"pirads_reports": ["1;2"] * 30, "gt_reader_ids": ["1;2;3"] * 30})
    with pytest.raises(ValueError, match="reader ids"):
        reader_agreement(bad)


def test_dice():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True
    b[0, 1:4] = True
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0 and np.isnan(dice(np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match="shapes"):
        dice(a, np.zeros((3, 3)))
    d = pairwise_dice([a, b, a])
    assert list(zip(d.a, d.b)) == [(0, 1), (0, 2), (1, 2)]
    assert d.dice.tolist() == pytest.approx([2 / 3, 1.0, 2 / 3])
