"""Checks of notebook 03 (contrastive pretraining).

1. :func:`check_ntxent`: NT-Xent written by hand, against the course's loss on random
   projections (formula); leaving out the positive (DCL), keeping the self-similarity or
   skipping the normalisation each get their own hint.
2. :func:`check_temperature_conclusion`: predict which temperature
   spreads the projections more, run two short pretrainings, read the held-out uniformity
   (experiment: the conclusion is checked against the measured numbers, the prediction recorded).
3. :func:`check_resolved_budgets`: read the paired-deltas table: which budgets are resolved
   better (the whole interval above 0, not a positive mean).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import call_answer, correct, is_unanswered, unanswered, wrong

EX1 = "Exercise 1 (NT-Xent by hand)"
EX2 = "Exercise 2 (the temperature experiment)"
EX3 = "Exercise 3 (what is resolved?)"
TEMPERATURES = ("low", "high")


# ------------------------------------------------------------------------------ exercise 1
def _ntxent_reference(z_a, z_b, t):
    from ..ssl.losses import NTXentLoss

    return NTXentLoss(t)(z_a, z_b)


def _slips(z_a, z_b, t) -> dict:
    """What common slips compute instead of NT-Xent, each with its hint."""
    from ..ssl.losses import DCLLoss

    b = len(z_a)
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    rows = torch.arange(2 * b)

    def ce(z, mask_self=True):
        logits = z @ z.T / t
        if mask_self:
            logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
        return (torch.logsumexp(logits, 1) - logits[rows, pos]).mean()

    z = torch.cat([z_a, z_b])
    return {"you left the positive out of the denominator: that is DCL, NT-Xent keeps it "
            "(the sum runs over every k != i)": DCLLoss(t)(z_a, z_b),
            "the view's similarity with itself (k = i) must not be in the sum":
                ce(F.normalize(z, dim=1), mask_self=False),
            "L2-normalise the projections first (s_ik is a cosine similarity)": ce(z)}


def check_ntxent(fn):
    """``fn(z_a, z_b, t) -> scalar`` must equal NT-Xent on random, unnormalised projections."""
    if is_unanswered(fn):
        return unanswered(EX1, _ntxent_reference)
    g = torch.Generator().manual_seed(3)
    for b, d, t in ((4, 8, 0.5), (16, 32, 0.1), (9, 5, 1.0)):
        z_a = 2 * torch.randn(b, d, generator=g, dtype=torch.float64)
        z_b = z_a + torch.randn(b, d, generator=g, dtype=torch.float64)
        got = call_answer(EX1, fn, z_a.clone(), z_b.clone(), t)
        if is_unanswered(got):
            return unanswered(EX1, _ntxent_reference)
        try:
            got = float(got)
        except (TypeError, ValueError, RuntimeError):
            raise wrong(EX1, f"return one number (a scalar tensor), got {type(got).__name__}") from None
        want = float(_ntxent_reference(z_a, z_b, t))
        if not np.isclose(got, want, rtol=1e-6, atol=1e-8):
            hint = next((h for h, v in _slips(z_a, z_b, t).items()
                         if np.isclose(got, float(v), rtol=1e-6, atol=1e-8)),
                        "stack [z_a; z_b], normalise, divide the similarities by t, keep the "
                        "diagonal out, and average -log softmax of the partner over all 2B views")
            raise wrong(EX1, f"with B={b}, t={t} you give {got:.4f}, NT-Xent is {want:.4f}: {hint}")
    correct(EX1, "your NT-Xent equals prostate_course.ssl.losses.NTXentLoss (and MONAI's ContrastiveLoss)")
    return fn


# ------------------------------------------------------------------------------ exercise 2
def check_prediction(prediction):
    """Exercise 2, step 1: the predicted temperature, "low" or "high" (recorded, not graded: the
    experiment grades the conclusion). Returns it (None when unanswered: a guess has no
    reference)."""
    if is_unanswered(prediction):
        return unanswered(f"{EX2}, the prediction", None)
    if prediction not in TEMPERATURES:
        raise wrong(EX2, f'predict "low" or "high", got {prediction!r}')
    print(f"prediction recorded: the {prediction} temperature spreads the projections more. "
          "Now run the experiment.")
    return prediction


def check_temperature_conclusion(conclusion, prediction, uniform_low: float, uniform_high: float):
    """``conclusion`` ("low" / "high") must name the run whose held-out uniformity is lower."""
    measured = "low" if uniform_low < uniform_high else "high"
    if is_unanswered(conclusion):
        return unanswered(EX2, measured)
    if conclusion not in TEMPERATURES:
        raise wrong(EX2, f'conclude "low" or "high", got {conclusion!r}')
    if conclusion != measured:
        raise wrong(EX2, f"read the numbers again: uniformity {uniform_low:.3f} at the low and "
                         f"{uniform_high:.3f} at the high temperature; lower is more spread out")
    verdict = ("no prediction was recorded" if prediction not in TEMPERATURES else
               "as you predicted" if prediction == measured else "unlike your prediction")
    correct(EX2, f"the {measured} temperature gave the lower uniformity ({uniform_low:.3f} vs "
                 f"{uniform_high:.3f}), {verdict}")
    return conclusion


# ------------------------------------------------------------------------------ exercise 3
def resolved_budgets(deltas, method: str, protocol: str) -> list:
    """The label fractions at which ``method``/``protocol`` is resolved better than its reference."""
    from ..compare import resolved

    d = deltas[(deltas["method"] == method) & (deltas["protocol"] == protocol)]
    if d.empty:
        raise ValueError(f"the table has no rows for {method} ({protocol})")
    return sorted(float(f) for f in d.loc[resolved(d) == "better", "label_fraction"])


def check_resolved_budgets(answer, deltas, method: str, protocol: str):
    """``answer``: the label fractions (a list) at which ``method`` read out with ``protocol``
    is *resolved better* than its reference in the paired-deltas table ``deltas``."""
    want = resolved_budgets(deltas, method, protocol)
    if is_unanswered(answer):
        return unanswered(EX3, want)
    try:
        got = sorted(float(f) for f in answer)
    except (TypeError, ValueError):
        raise wrong(EX3, f"answer a list of label fractions, e.g. [0.05, 1.0], got {answer!r}") from None

    def same(a, b):
        return len(a) == len(b) and np.allclose(a, b)

    if not same(got, want):
        d = deltas[(deltas["method"] == method) & (deltas["protocol"] == protocol)]
        positive = sorted(float(f) for f in d.loc[d["delta"] > 0, "label_fraction"])
        if same(got, positive):
            raise wrong(EX3, "a positive mean delta is not enough: the whole 95 % interval "
                             "(delta_lo to delta_hi) must lie above 0")
        raise wrong(EX3, f"compare delta_lo with 0 row by row: {len(want)} budget(s) qualify")
    where = ", ".join(f"{f:.0%}" for f in want) if want else "no budget"
    correct(EX3, f"{method} ({protocol.replace('_', ' ')}) is resolved better at {where}")
    return answer


__all__ = ["check_ntxent", "check_prediction", "check_temperature_conclusion",
           "check_resolved_budgets", "resolved_budgets", "TEMPERATURES"]
