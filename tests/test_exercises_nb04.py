"""Checks of notebook 04: the right answer passes, plausible wrong ones fail.

The cases follow tests/test_exercises.py (which runs every case in CASES there, these included):
``case(**fixtures) -> (check, data, stub_args, is_reference)``.
"""
import numpy as np
import pandas as pd
import pytest

from prostate_course.data.readers import pirads_consensus
from prostate_course.exercises import UNANSWERED, WrongAnswer, nb04


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


def share_instead_of_confidence(reports):
    m, c = good_confidence(reports)
    return (m, (c / 2 + 0.5) if m is not None and c != 0.1 else c)    # p_maj, not 2 (p_maj - 1/2)


def case_confidence(**_):
    assert nb04.check_confidence(good_confidence) is good_confidence
    for bad in (three_counts_as_positive, single_report_fully_trusted, share_instead_of_confidence):
        with pytest.raises(WrongAnswer, match="Exercise 1"):
            nb04.check_confidence(bad)
    with pytest.raises(WrongAnswer, match="raised ZeroDivisionError"):
        nb04.check_confidence(lambda r: 1 / 0)
    with pytest.raises(WrongAnswer, match="return"):
        nb04.check_confidence(lambda r: 0.5)
    return nb04.check_confidence, (), [UNANSWERED], \
        lambda ref: ref("4;4;2") == pirads_consensus("4;4;2")


W = np.array([[0.0, 1.0, 0.6], [1.0, 0.0, 0.1], [0.6, 0.1, 0.0]])


def case_row_normalise(**_):
    good = lambda w: w / w.sum(axis=1, keepdims=True)
    assert nb04.check_row_normalise(good, W) is good
    with pytest.raises(WrongAnswer, match="columns sum to 1"):
        nb04.check_row_normalise(lambda w: w / w.sum(axis=1), W)    # the reference code's bug
    with pytest.raises(WrongAnswer, match="Exercise 2"):
        nb04.check_row_normalise(lambda w: w / w.sum(), W)
    with pytest.raises(WrongAnswer, match="shape"):
        nb04.check_row_normalise(lambda w: w.sum(1), W)
    return nb04.check_row_normalise, (W,), [UNANSWERED], \
        lambda ref: np.allclose(ref(W).sum(1), 1)


def _tables():
    base = pd.DataFrame({"split": ["train"] * 6 + ["test"],
                         "case_csPCa": [1, 1, 0, 0, 1, 0, 1],
                         "pirads_majority": [1, 1, 0, 0, np.nan, 1, 0]})
    noisy = base.assign(pirads_majority=[1, 0, 0, 1, 1, np.nan, 1])
    return base, noisy          # agreement 4/5 = 0.8 -> 3/5 = 0.6 (test exam left out)


def case_noise_experiment(**_):
    base, noisy = _tables()
    assert nb04.majority_agreement(base) == pytest.approx(0.8)
    out = nb04.check_noise_experiment("higher", 0.6, "lower", base, noisy)   # a wrong guess is fine
    assert out == ("higher", 0.6, "lower")
    for args, hint in (((("lower", 4 / 6, "lower")), "gives 0.600"),            # test exam counted
                       ((("lower", 0.6, "about the same")), "that is 'lower'"),
                       ((("lower", 60, "lower")), "percentage"),
                       ((("less", 0.6, "lower")), "must be one of")):
        with pytest.raises(WrongAnswer, match=hint):
            nb04.check_noise_experiment(*args, base, noisy)
    return nb04.check_noise_experiment, (base, noisy), [UNANSWERED, UNANSWERED, UNANSWERED], \
        lambda ref: ref == ("lower", pytest.approx(0.6), "lower")


CASES = {
    nb04.check_confidence: case_confidence,
    nb04.check_row_normalise: case_row_normalise,
    nb04.check_noise_experiment: case_noise_experiment,
}
