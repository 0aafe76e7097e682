"""Notebook 02's exercise checks: a plausible wrong answer fails, the right one passes."""
import pandas as pd
import pytest

from prostate_course.exercises import nb02


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
