"""Notebook 03's exercise checks: each passes the right answer, fails plausible wrong ones with
WrongAnswer, and reports UNANSWERED (returning the reference answer).

The cases follow tests/test_exercises.py (which runs every case in CASES there, these included):
``case(**fixtures) -> (check, data, stub_args, is_reference)``.
"""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from prostate_course.exercises import UNANSWERED, WrongAnswer, nb03


def right_ntxent(z_a, z_b, t):
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    n, b = len(z), len(z_a)
    logits = (z @ z.T / t).masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    pos = torch.cat([torch.arange(b, n), torch.arange(b)])
    return -torch.log_softmax(logits, dim=1)[torch.arange(n), pos].mean()


def dcl_instead(z_a, z_b, t):
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    n, b = len(z), len(z_a)
    pos = torch.cat([torch.arange(b, n), torch.arange(b)])
    logits = z @ z.T / t
    mask = torch.eye(n, dtype=torch.bool)
    mask[torch.arange(n), pos] = True
    return (-logits[torch.arange(n), pos] + torch.logsumexp(logits.masked_fill(mask, float("-inf")), 1)).mean()


def unnormalised(z_a, z_b, t):
    z = torch.cat([z_a, z_b])
    n, b = len(z), len(z_a)
    logits = (z @ z.T / t).masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    pos = torch.cat([torch.arange(b, n), torch.arange(b)])
    return -torch.log_softmax(logits, dim=1)[torch.arange(n), pos].mean()


def self_kept(z_a, z_b, t):
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    n, b = len(z), len(z_a)
    pos = torch.cat([torch.arange(b, n), torch.arange(b)])
    return -torch.log_softmax(z @ z.T / t, dim=1)[torch.arange(n), pos].mean()


def case_ntxent(**_):
    assert nb03.check_ntxent(right_ntxent) is right_ntxent
    for fn, hint in ((dcl_instead, "that is DCL"), (unnormalised, "normalise"),
                     (self_kept, "with itself"), (lambda a, b, t: a @ b.T, "one number"),
                     (lambda a, b, t: 1 / 0, "ZeroDivisionError")):
        with pytest.raises(WrongAnswer, match=hint):
            nb03.check_ntxent(fn)
    za, zb = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    return nb03.check_ntxent, (), [UNANSWERED], \
        lambda ref: float(ref(za, zb, 0.3)) == pytest.approx(float(right_ntxent(za, zb, 0.3)))


def case_temperature_conclusion(**_):
    assert nb03.check_temperature_conclusion("low", "high", -3.1, -2.0) == "low"
    assert nb03.check_temperature_conclusion("high", "high", -1.0, -2.5) == "high"
    for args, hint in ((("high", "high", -3.1, -2.0), "read the numbers again"),
                       (("lower", "low", -3.1, -2.0), '"low" or "high"')):
        with pytest.raises(WrongAnswer, match=hint):
            nb03.check_temperature_conclusion(*args)
    return nb03.check_temperature_conclusion, (None, -1.0, -2.5), [UNANSWERED], lambda ref: ref == "high"


DELTAS = pd.DataFrame({"method": "simclr", "protocol": "linear_probe",
                       "label_fraction": [0.05, 0.1, 0.25, 1.0], "delta": [0.06, 0.03, -0.01, 0.02],
                       "delta_lo": [0.01, -0.02, -0.05, 0.005], "delta_hi": [0.11, 0.08, 0.03, 0.04]})


def case_resolved_budgets(**_):
    assert nb03.check_resolved_budgets([1.0, 0.05], DELTAS, "simclr", "linear_probe") == [1.0, 0.05]
    for ans, hint in (([0.05, 0.1, 1.0], "positive mean delta is not enough"), ([0.25], "budget"),
                      (0.05, "a list of label fractions")):
        with pytest.raises(WrongAnswer, match=hint):
            nb03.check_resolved_budgets(ans, DELTAS, "simclr", "linear_probe")
    with pytest.raises(ValueError, match="no rows"):
        nb03.check_resolved_budgets([], DELTAS, "dcl", "linear_probe")
    return nb03.check_resolved_budgets, (DELTAS, "simclr", "linear_probe"), [UNANSWERED], \
        lambda ref: ref == [0.05, 1.0]


def case_prediction(**_):
    assert nb03.check_prediction("low") == "low"
    with pytest.raises(WrongAnswer, match='"low" or "high"'):
        nb03.check_prediction("lower")
    nb03.check_temperature_conclusion("low", "low", -3.1, -2.0)            # prints correct
    return nb03.check_prediction, (), [UNANSWERED], lambda ref: ref is None  # a guess has no reference


CASES = {
    nb03.check_ntxent: case_ntxent,
    nb03.check_prediction: case_prediction,
    nb03.check_temperature_conclusion: case_temperature_conclusion,
    nb03.check_resolved_budgets: case_resolved_budgets,
}


def test_no_budget_resolved_is_an_answer_too(capsys):
    none = DELTAS.assign(delta_lo=-0.1)
    assert nb03.check_resolved_budgets([], none, "simclr", "linear_probe") == []
    assert "no budget" in capsys.readouterr().out
    assert nb03.resolved_budgets(DELTAS, "simclr", "linear_probe") == [0.05, 1.0]
    np.testing.assert_allclose(nb03.resolved_budgets(none, "simclr", "linear_probe"), [])
