"""Every check of notebook 03 rejects a plausible wrong answer and accepts the right one."""
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from prostate_course.exercises import nb03


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
    p = logits[torch.arange(n), pos]
    mask = torch.eye(n, dtype=torch.bool)
    mask[torch.arange(n), pos] = True
    return (-p + torch.logsumexp(logits.masked_fill(mask, float("-inf")), 1)).mean()


def unnormalised(z_a, z_b, t):
    z = torch.cat([z_a, z_b])
    n, b = len(z), len(z_a)
    logits = (z @ z.T / t).masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    pos = torch.cat([torch.arange(b, n), torch.arange(b)])
    return -torch.log_softmax(logits, dim=1)[torch.arange(n), pos].mean()


def test_check_ntxent(capsys):
    assert "correct" in nb03.check_ntxent(right_ntxent)
    with pytest.raises(AssertionError, match="that is DCL"):
        nb03.check_ntxent(dcl_instead)
    with pytest.raises(AssertionError, match="normalise"):
        nb03.check_ntxent(unnormalised)
    with pytest.raises(AssertionError, match="raised"):
        nb03.check_ntxent(lambda a, b, t: a @ b)      # not a scalar


def test_check_temperature_conclusion():
    assert "recorded" in nb03.check_prediction("low")
    with pytest.raises(AssertionError, match='"low" or "high"'):
        nb03.check_prediction("0.1")
    msg = nb03.check_temperature_conclusion("low", "high", uniform_low=-3.1, uniform_high=-2.0)
    assert "unlike your prediction" in msg
    with pytest.raises(AssertionError, match="read the numbers again"):
        nb03.check_temperature_conclusion("high", "high", uniform_low=-3.1, uniform_high=-2.0)
    assert "as you predicted" in nb03.check_temperature_conclusion("high", "high", -1.0, -2.5)


def test_check_resolved_budgets():
    d = pd.DataFrame({"method": "simclr", "protocol": "linear_probe",
                      "label_fraction": [0.05, 0.1, 0.25, 1.0], "delta": [0.06, 0.03, -0.01, 0.02],
                      "delta_lo": [0.01, -0.02, -0.05, 0.005], "delta_hi": [0.11, 0.08, 0.03, 0.04]})
    assert "5%, 100%" in nb03.check_resolved_budgets([1.0, 0.05], d, "simclr", "linear_probe")
    with pytest.raises(AssertionError, match="positive mean delta is not enough"):
        nb03.check_resolved_budgets([0.05, 0.1, 1.0], d, "simclr", "linear_probe")
    with pytest.raises(AssertionError, match="1 budget|budget"):
        nb03.check_resolved_budgets([0.25], d, "simclr", "linear_probe")
    with pytest.raises(AssertionError, match="no rows"):
        nb03.check_resolved_budgets([], d, "dcl", "linear_probe")
    none = d.assign(delta_lo=-0.1)
    assert "no budget" in nb03.check_resolved_budgets([], none, "simclr", "linear_probe")
