"""Checks of notebook 06 (what we learned).

1. :func:`check_holm`: Holm's step-down adjustment of p-values.
2. :func:`check_family_error`: the chance of at least one false "significant" result among m
   independent comparisons when no arm truly differs.
"""
from __future__ import annotations

import numpy as np

from . import call_answer as call, correct, is_unanswered, unanswered, wrong

EX1 = "Exercise 1 (Holm's adjustment)"
EX2 = "Exercise 2 (many comparisons, no effect)"


def check_holm(answer):
    """``answer(p)`` -> Holm-adjusted p-values, in the order of ``p``; compared with
    :func:`prostate_course.conclusions.holm` on a worked example and random vectors."""
    from ..conclusions import holm

    if is_unanswered(answer) or is_unanswered(call(EX1, answer, np.array([0.01, 0.02]))):
        return unanswered(EX1, holm)
    rng = np.random.default_rng(1)
    tests = [np.array([0.01, 0.04, 0.03, 0.005])] + [rng.random(n) ** 2 for n in (1, 5, 12)]
    for p in tests:
        got = np.asarray(call(EX1, answer, p.copy()), float)
        want = holm(p)
        if got.shape != want.shape:
            raise wrong(EX1, f"return one adjusted p-value per input ({len(p)}), got shape {got.shape}")
        if not np.allclose(got, want):
            if np.allclose(got, np.minimum(1, len(p) * p)):
                hint = "that is Bonferroni (m p for all); Holm multiplies the i-th smallest by m - i + 1"
            elif np.allclose(np.sort(got), np.sort(want)):
                hint = "right values in the wrong order: give them back in the order of the input"
            else:
                hint = "sort, multiply the i-th smallest by (m - i + 1), cap at 1, then take the running maximum"
            raise wrong(EX1, f"for p = {np.round(p, 3)} expected {np.round(want, 3)}, got {np.round(got, 3)}: {hint}")
    correct(EX1, "Holm controls the chance of any false 'better' among the m at 5 %")
    return answer


def check_family_error(answer, m: int, alpha: float = 0.05):
    """``answer``: P(at least one of ``m`` independent tests at level ``alpha`` rejects | no
    effect anywhere) = 1 - (1 - alpha)^m."""
    want = 1 - (1 - alpha) ** m
    if is_unanswered(answer):
        return unanswered(EX2, want)
    try:
        got = float(answer)
    except (TypeError, ValueError):
        raise wrong(EX2, f"give one probability, got {answer!r}") from None
    if abs(got - want) > 1e-6:
        hint = ("that is the expected NUMBER of false results, alpha m" if abs(got - alpha * m) < 1e-6
                else "each test stays quiet with probability 1 - alpha; all m stay quiet with (1 - alpha)^m")
        raise wrong(EX2, f"{got:.4f} is not it: {hint}")
    correct(EX2, f"with {m} comparisons, a 'significant' one appears by chance {want:.0%} of the time")
    return got
