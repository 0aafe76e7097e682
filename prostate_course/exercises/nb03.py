"""Checks for notebook 03 (contrastive pretraining). Each takes the student's answer, raises
AssertionError with a hint when it is wrong, and prints and returns a short success message."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..compare import resolved
from ..ssl.losses import DCLLoss, NTXentLoss


def _variants(z_a, z_b, t):
    """What common slips compute instead of NT-Xent, for hints."""
    z = torch.cat([z_a, z_b])
    zn = F.normalize(z, dim=1)
    b = len(z_a)
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    rows = torch.arange(2 * b)

    def ce(zz, mask_self=True):
        logits = zz @ zz.T / t
        if mask_self:
            logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
        return (torch.logsumexp(logits, 1) - logits[rows, pos]).mean()

    return {"dcl": DCLLoss(t)(z_a, z_b), "self in the denominator": ce(zn, mask_self=False),
            "no normalisation": ce(z)}


def check_ntxent(fn, trials: int = 3) -> str:
    """``fn(z_a, z_b, t) -> scalar`` must equal NT-Xent on random (unnormalised) projections."""
    g = torch.Generator().manual_seed(3)
    cases = [(4, 8, 0.5), (16, 32, 0.1), (9, 5, 1.0)]
    for i in range(trials):
        b, d, t = cases[i % len(cases)]
        z_a = 2 * torch.randn(b, d, generator=g, dtype=torch.float64)
        z_b = z_a + torch.randn(b, d, generator=g, dtype=torch.float64)
        want = float(NTXentLoss(t)(z_a, z_b))
        try:
            got = float(fn(z_a.clone(), z_b.clone(), t))
        except Exception as e:  # noqa: BLE001 - the student's code may fail in any way
            raise AssertionError(f"your function raised {type(e).__name__}: {e}") from e
        if abs(got - want) > 1e-6 * max(1.0, abs(want)):
            for name, v in _variants(z_a, z_b, t).items():
                if abs(got - float(v)) < 1e-6 * max(1.0, abs(float(v))):
                    hint = {"dcl": "you left the positive out of the denominator: that is DCL, "
                                   "NT-Xent keeps it (sum over every k != i)",
                            "self in the denominator": "the anchor's similarity with itself "
                                   "(k = i) must not be in the sum",
                            "no normalisation": "L2-normalise the projections first (s_ik is a "
                                   "cosine similarity)"}[name]
                    raise AssertionError(f"B={b}, t={t}: got {got:.4f}, expected {want:.4f}: {hint}")
            raise AssertionError(f"B={b}, t={t}: got {got:.4f}, expected {want:.4f}. Stack "
                                 "[z_a; z_b], normalise, divide the similarities by t, mask the "
                                 "diagonal, and average -log softmax of the positive over all 2B anchors")
    msg = "correct: your NT-Xent equals prostate_course.ssl.losses.NTXentLoss (and MONAI's ContrastiveLoss)"
    print(msg)
    return msg


def check_prediction(prediction) -> str:
    """The prediction of the temperature experiment: "low" or "high" (which temperature ends
    with the lower, i.e. more spread-out, uniformity)."""
    if prediction not in ("low", "high"):
        raise AssertionError(f'answer "low" or "high" (the temperature whose run ends with the lower '
                             f"uniformity), got {prediction!r}")
    msg = f"recorded: you predict the {prediction} temperature spreads the projections more"
    print(msg)
    return msg


def check_temperature_conclusion(conclusion, prediction, uniform_low: float, uniform_high: float) -> str:
    """``conclusion`` ("low" / "high") must name the run whose held-out uniformity is lower."""
    if conclusion not in ("low", "high"):
        raise AssertionError(f'answer "low" or "high", got {conclusion!r}')
    measured = "low" if uniform_low < uniform_high else "high"
    if conclusion != measured:
        raise AssertionError(f"read the numbers again: uniformity {uniform_low:.3f} at the low and "
                             f"{uniform_high:.3f} at the high temperature; lower is more spread out")
    verdict = "as you predicted" if prediction == measured else "unlike your prediction"
    msg = (f"correct: the {measured} temperature gave the lower uniformity ({uniform_low:.3f} vs "
           f"{uniform_high:.3f}), {verdict}")
    print(msg)
    return msg


def check_resolved_budgets(answer, deltas, method: str, protocol: str) -> str:
    """``answer``: the label fractions (a list) at which ``method`` read out with ``protocol``
    is *resolved better* than its reference in the paired-deltas table ``deltas``."""
    d = deltas[(deltas["method"] == method) & (deltas["protocol"] == protocol)]
    if d.empty:
        raise AssertionError(f"the table has no rows for {method} ({protocol})")
    want = sorted(float(f) for f in d.loc[resolved(d) == "better", "label_fraction"])
    try:
        got = sorted(float(f) for f in answer)
    except TypeError as e:
        raise AssertionError(f"answer a list of label fractions, e.g. [0.05, 1.0], got {answer!r}") from e
    def same(a, b):
        return len(a) == len(b) and np.allclose(a, b)

    if not same(got, want):
        positive = sorted(float(f) for f in d.loc[d["delta"] > 0, "label_fraction"])
        if same(got, positive) and not same(positive, want):
            raise AssertionError("a positive mean delta is not enough: the whole 95 % interval "
                                 "(delta_lo to delta_hi) must lie above 0")
        raise AssertionError(f"compare delta_lo with 0 row by row: {len(want)} budget(s) qualify")
    msg = (f"correct: {method} ({protocol.replace('_', ' ')}) is resolved better at "
           f"{', '.join(f'{f:.0%}' for f in want) if want else 'no budget'}")
    print(msg)
    return msg


__all__ = ["check_ntxent", "check_prediction", "check_temperature_conclusion", "check_resolved_budgets"]
