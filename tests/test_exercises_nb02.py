"""Notebook 02's exercise checks: a plausible wrong answer fails, the right one passes."""
import pandas as pd
import pytest

from prostate_course.exercises import UNANSWERED, WrongAnswer, nb02


def test_identity_curve():
    assert nb02.check_identity_curve((0.25, 0.25), (0.8, 0.8)) == ((0.25, 0.25), (0.8, 0.8))
    with pytest.raises(AssertionError, match="x = y"):
        nb02.check_identity_curve((0.0, 0.0), (1.0, 1.0 - 0.3))     # the end points are not enough
    with pytest.raises(AssertionError, match="x = y"):
        nb02.check_identity_curve((0.0, 1.0), (1.0, 0.0))           # a plausible "swap"
    with pytest.raises(AssertionError, match="unit square"):
        nb02.check_identity_curve((0.0, 0.0), (1.5, 1.5))


def errors(restored, fill=(1.0, 1.0, 1.0)):
    return pd.DataFrame({"ratio": [0.9, 0.1, 0.5], "restored_mse": restored, "fill_mse": fill})


def test_prediction():
    assert nb02.check_prediction("down") == "down"
    with pytest.raises(AssertionError, match="predict one of"):
        nb02.check_prediction("higher")


def test_masking_experiment():
    e = errors([0.8, 0.3, 0.5])                                       # rises with the ratio
    right = {"trend": "up", "beats_fill": True}
    assert nb02.check_masking_experiment(right, e, prediction="down") == right
    with pytest.raises(AssertionError, match="again"):
        nb02.check_masking_experiment({"trend": "down", "beats_fill": True}, e)
    with pytest.raises(AssertionError, match="fill_mse"):
        nb02.check_masking_experiment({"trend": "up", "beats_fill": True}, errors([1.2, 0.3, 0.5]))
    flat = errors([0.51, 0.5, 0.5])
    nb02.check_masking_experiment({"trend": "about the same", "beats_fill": True}, flat)
    with pytest.raises(AssertionError, match="about the same"):
        nb02.check_masking_experiment({"trend": "up", "beats_fill": True}, flat)
    with pytest.raises(AssertionError, match="dict"):
        nb02.check_masking_experiment("up", e)


def test_trend_of():
    assert nb02.trend_of(1.0, 1.2) == "up" and nb02.trend_of(1.0, 0.5) == "down"
    assert nb02.trend_of(1.0, 1.04) == "about the same"


# cases for tests/test_exercises.py: case(**fixtures) -> (check, data, stub_args, is_reference)
def case_identity_curve(**_):
    assert nb02.check_identity_curve((0.2, 0.2), (0.9, 0.9)) == ((0.2, 0.2), (0.9, 0.9))
    with pytest.raises(WrongAnswer, match="x = y"):
        nb02.check_identity_curve((0.0, 1.0), (1.0, 0.0))
    # the reference must itself be an identity curve: the check accepts it
    return nb02.check_identity_curve, (), [UNANSWERED, UNANSWERED], \
        lambda ref: nb02.check_identity_curve(*ref) == ref


def case_prediction(**_):
    e = errors([0.8, 0.3, 0.5])
    assert nb02.check_prediction("up") == "up"
    with pytest.raises(WrongAnswer, match="predict one of"):
        nb02.check_prediction("higher")
    nb02.check_masking_experiment({"trend": "up", "beats_fill": True}, e, prediction="up")  # prints correct
    return nb02.check_prediction, (), [UNANSWERED], lambda ref: ref is None   # a guess has no reference


def case_masking_experiment(**_):
    e = errors([0.8, 0.3, 0.5])
    assert nb02.check_masking_experiment({"trend": "up", "beats_fill": True}, e)["trend"] == "up"
    with pytest.raises(WrongAnswer, match="again"):
        nb02.check_masking_experiment({"trend": "down", "beats_fill": True}, e)
    return nb02.check_masking_experiment, (e,), [UNANSWERED], \
        lambda ref: ref == {"trend": "up", "beats_fill": True}


CASES = {
    nb02.check_identity_curve: case_identity_curve,
    nb02.check_prediction: case_prediction,
    nb02.check_masking_experiment: case_masking_experiment,
}
