"""Checks of notebook 02 (generation-based pretraining).

1. :func:`check_identity_curve`: control points for which the Bezier intensity transform is
   the identity (formula).
2. :func:`check_prediction`, then :func:`check_masking_experiment`: hide more or fewer
   patches, predict, measure the pretrained masked autoencoder's error on the hidden pixels,
   compare (experiment; the conclusion is tested against the numbers the notebook computed).

A check prints ``correct: ...`` and returns the answer, or raises :class:`WrongAnswer` that
says what is wrong; an unanswered exercise (the ``UNANSWERED`` stub) is reported and the
reference answer returned, so that the cells after it still run.
"""
from __future__ import annotations

import numpy as np
import torch

from . import WrongAnswer, is_unanswered, unanswered, wrong

EX1 = "Exercise 1 (the identity curve)"
EX2 = "Exercise 2 (masking-ratio experiment)"
#: the possible trends of the error when the masking ratio grows
TRENDS = ("up", "down", "about the same")
#: relative change of the error below which "about the same" is the right reading
SAME_WITHIN = 0.05


# ------------------------------------------------------------------------------ exercise 1
def check_identity_curve(p1, p2):
    """``p1``, ``p2``: two (x, y) control points in [0, 1]^2. Right when the transform
    :func:`prostate_course.ssl.pretexts.bezier_intensity` leaves a ramp of intensities
    unchanged. Returns ``(p1, p2)``."""
    from ..ssl.pretexts import bezier_intensity

    if is_unanswered(p1) or is_unanswered(p2):
        return unanswered(EX1, ((1 / 3, 1 / 3), (2 / 3, 2 / 3)))
    try:
        a = torch.tensor(np.asarray(p1, dtype=float).reshape(2), dtype=torch.float32)
        b = torch.tensor(np.asarray(p2, dtype=float).reshape(2), dtype=torch.float32)
    except (TypeError, ValueError) as e:
        raise wrong(EX1, f"give each control point as two numbers (x, y): {e}") from None
    if not ((a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)).all():
        raise wrong(EX1, "control points live in the unit square [0, 1] x [0, 1]")
    ramp = torch.linspace(-2.0, 3.0, 201).view(1, 1, 1, -1)
    out = bezier_intensity(ramp, a.view(1, 1, 2), b.view(1, 1, 2))
    change = float((out - ramp).abs().max())
    if change > 1e-3:
        raise wrong(EX1, f"your curve moves an intensity by up to {change:.3f} (of a range of 5). "
                          "The curve is (x(t), y(t)); y = x for every t when x(t) and y(t) are the "
                          "same polynomial, i.e. when each control point has x = y.")
    print(f"correct: {EX1}. x(t) = y(t) for every t: the curve is the diagonal, so no intensity "
          "moves. Any P1 = (a, a), P2 = (b, b) does it, e.g. (1/3, 1/3) and (2/3, 2/3).")
    return p1, p2


# ------------------------------------------------------------------------------ exercise 2
def trend_of(first: float, last: float, within: float = SAME_WITHIN) -> str:
    """"up" / "down" when ``last`` differs from ``first`` by more than ``within`` of the
    larger of the two, else "about the same"."""
    rel = (last - first) / max(abs(first), abs(last), 1e-12)
    return "up" if rel > within else "down" if rel < -within else "about the same"


def check_prediction(prediction):
    """Exercise 2, step 1: the predicted trend, one of :data:`TRENDS` (recorded, not graded:
    the experiment grades the conclusion). Returns it (None when unanswered)."""
    if is_unanswered(prediction):
        print(f"unanswered: {EX2}, the prediction. Write your guess before running the experiment.")
        return None
    if prediction not in TRENDS:
        raise wrong(EX2, f"predict one of {TRENDS}, got {prediction!r}")
    print(f"prediction recorded: the error goes {prediction!r}. Now run the experiment.")
    return prediction


def check_masking_experiment(conclusion, errors, prediction=None):
    """``conclusion``: {"trend": "up" | "down" | "about the same" (the error on the hidden
    pixels from the smallest to the largest ratio), "beats_fill": bool (below the fill-with-0
    error at every ratio)}. ``errors``: the table of
    :func:`prostate_course.ssl.restoration.masked_error_by_ratio`. ``prediction``: the trend
    predicted before running (reported, not graded). Returns the conclusion."""
    e = errors.sort_values("ratio")
    want = {"trend": trend_of(float(e["restored_mse"].iloc[0]), float(e["restored_mse"].iloc[-1])),
            "beats_fill": bool((e["restored_mse"] < e["fill_mse"]).all())}
    if is_unanswered(conclusion):
        return unanswered(EX2, want)
    if not isinstance(conclusion, dict) or set(conclusion) != {"trend", "beats_fill"}:
        raise wrong(EX2, 'give a dict {"trend": ..., "beats_fill": ...}')
    if conclusion["trend"] not in TRENDS:
        raise wrong(EX2, f"trend must be one of {TRENDS}, got {conclusion['trend']!r}")
    lo, hi = e["ratio"].iloc[0], e["ratio"].iloc[-1]
    table = ", ".join(f"{r:.0%}: {m:.3f} (fill {f:.3f})"
                      for r, m, f in zip(e["ratio"], e["restored_mse"], e["fill_mse"]))
    if conclusion["trend"] != want["trend"]:
        raise wrong(EX2, f"read the error at {lo:.0%} and at {hi:.0%} again ({table}); a change "
                          f"under {SAME_WITHIN:.0%} of the larger value counts as 'about the same'.")
    if bool(conclusion["beats_fill"]) != want["beats_fill"]:
        raise wrong(EX2, f"compare restored_mse with fill_mse at every ratio ({table}).")
    msg = f"correct: {EX2}. The error goes {want['trend']} from {lo:.0%} to {hi:.0%} hidden"
    if prediction is not None:
        msg += f"; you predicted {prediction!r}: " + ("right" if prediction == want["trend"] else "not what happened")
    print(msg + ".")
    return conclusion


__all__ = ["WrongAnswer", "check_identity_curve", "check_prediction", "check_masking_experiment", "trend_of", "TRENDS", "SAME_WITHIN"]
