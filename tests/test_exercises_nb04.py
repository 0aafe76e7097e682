"""Every check of notebook 04 fails on a plausible wrong answer and passes on the right one."""
import math

import numpy as np
import pandas as pd
import pytest

from prostate_course.exercises import nb04


def good_confidence(reports):
    v = [int(x) for x in reports.split(";") if x]
    b = [0 if x <= 2 else 1 for x in v if x != 3]
    if not b:
        return None, 0.0
    if len(b) == 1:
        return b[0], 0.1
    p = sum(b) / len(b)
    if p == 0.5:
        return None, 0.0
    return int(p > 0.5), 2 * (max(p, 1 - p) - 0.5)


def three_counts_as_positive(reports):
    v = [int(x) for x in reports.split(";") if x]
    b = [0 if x <= 2 else 1 for x in v]           # PI-RADS 3 not dropped
    if not b:
        return None, 0.0
    if len(b) == 1:
        return b[0], 0.1
    p = sum(b) / len(b)
    return (None, 0.0) if p == 0.5 else (int(p > 0.5), 2 * (max(p, 1 - p) - 0.5))


def single_report_fully_trusted(reports):
    m, c = good_confidence(reports)
    return (m, 1.0) if c == 0.1 else (m, c)


def test_confidence():
    assert nb04.check_confidence(good_confidence) is good_confidence
    for bad in (three_counts_as_positive, single_report_fully_trusted):
        with pytest.raises(AssertionError, match="Exercise 1"):
            nb04.check_confidence(bad)
    with pytest.raises(AssertionError, match="raised"):
        nb04.check_confidence(lambda r: 1 / 0)


def test_row_normalise():
    W = np.array([[0.0, 1.0, 0.6], [1.0, 0.0, 0.1], [0.6, 0.1, 0.0]])
    good = lambda w: w / w.sum(axis=1, keepdims=True)
    assert nb04.check_row_normalise(good, W) is good
    with pytest.raises(AssertionError, match="columns sum to 1"):
        nb04.check_row_normalise(lambda w: w / w.sum(axis=1), W)    # the reference code's bug
    with pytest.raises(AssertionError, match="Exercise 2"):
        nb04.check_row_normalise(lambda w: w / w.sum(), W)


def _tables():
    base = pd.DataFrame({"split": ["train"] * 6 + ["test"],
                         "case_csPCa": [1, 1, 0, 0, 1, 0, 1],
                         "pirads_majority": [1, 1, 0, 0, np.nan, 1, 0]})
    noisy = base.assign(pirads_majority=[1, 0, 0, 1, 1, np.nan, 1])
    return base, noisy          # agreement 4/5 = 0.8 -> 3/5 = 0.6 (test exam left out)


def test_noise_experiment():
    base, noisy = _tables()
    assert nb04.majority_agreement(base) == pytest.approx(0.8)
    out = nb04.check_noise_experiment("higher", 0.6, "lower", base, noisy)   # a wrong guess is fine
    assert out == ("higher", 0.6, "lower")
    with pytest.raises(AssertionError, match="gives 0.600"):
        nb04.check_noise_experiment("lower", 4 / 6, "lower", base, noisy)    # test exam counted
    with pytest.raises(AssertionError, match="that is 'lower'"):
        nb04.check_noise_experiment("lower", 0.6, "about the same", base, noisy)
    with pytest.raises(AssertionError, match="percentage"):
        nb04.check_noise_experiment("lower", 60, "lower", base, noisy)
    assert math.isclose(nb04.majority_agreement(noisy), 0.6)
