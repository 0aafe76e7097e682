"""Checks of notebook 04 (metadata-aware contrastive pretraining).

1. :func:`check_confidence`: majority PI-RADS label and confidence of an exam's reports
   (formula; compared with the data code's consensus on crafted reports).
2. :func:`check_row_normalise`: normalise a weight matrix by rows (the reference code's
   broadcasting bug normalises columns).
3. :func:`check_noise_experiment`: resample the reports at a higher reader noise, predict and
   measure how often the majority label agrees with histopathology (experiment).

A check prints ``correct: ...`` and returns the answer, raises :class:`WrongAnswer` (an
AssertionError) with a hint, or reports an UNANSWERED stub and returns the reference answer
(the convention of :mod:`prostate_course.exercises`).
"""
from __future__ import annotations

import math

import numpy as np

from . import UNANSWERED, call_answer, correct, is_unanswered, number, one_of, unanswered, wrong

EX1 = "Exercise 1 (PI-RADS confidence)"
EX2 = "Exercise 2 (row normalisation)"
EX3 = "Exercise 3 (reader-noise experiment)"
EFFECTS = ("higher", "lower", "about the same")
SAME_WITHIN = 0.01       # agreement difference below which "about the same" is the observation

#: crafted reports, each testing one rule
CONFIDENCE_CASES = {
    "4;4;2": "two of three usable reports agree",
    "5": "a single report",
    "4;2": "a tie",
    "3;3": "only PI-RADS 3",
    "": "no report",
    "2;2;2;2;5": "four of five",
    "3;4;4;2": "PI-RADS 3 is dropped before the vote",
    "1;2;5;5;5;4;4": "five of seven",
    "2;1;1": "PI-RADS 1 and 2 are both 0",
}


def _norm(answer):
    m, c = answer
    m = None if m is None or (isinstance(m, float) and math.isnan(m)) else int(m)
    return m, float(c)


# ------------------------------------------------------------------------------ exercise 1
def check_confidence(answer):
    """``answer(reports) -> (majority, confidence)`` for one exam's ``pirads_reports`` string
    ("4;4;2"); majority 0/1, or None/NaN for an unannotated exam (confidence 0). Compared with
    :func:`prostate_course.data.readers.pirads_consensus` on :data:`CONFIDENCE_CASES`."""
    from ..data.readers import pirads_consensus

    if is_unanswered(answer):
        return unanswered(EX1, lambda r: pirads_consensus(r))
    for reports, what in CONFIDENCE_CASES.items():
        got = call_answer(EX1, answer, reports)
        if is_unanswered(got):
            return unanswered(EX1, lambda r: pirads_consensus(r))
        want = _norm(pirads_consensus(reports))
        try:
            got = _norm(got)
        except (TypeError, ValueError):
            raise wrong(EX1, f"return (majority, confidence), e.g. (1, 0.33); got {got!r}") from None
        if got[0] != want[0] or abs(got[1] - want[1]) > 1e-6:
            raise wrong(EX1, f"reports {reports!r} ({what}): you give {got}, the rule gives {want}. "
                             "Binarise each report (<= 2 -> 0, >= 4 -> 1, drop 3); c = 2 (p_maj - 1/2); "
                             "one usable report -> a small epsilon; a tie or none -> unannotated (None, 0)")
    correct(EX1, f"your rule agrees with the data code on {len(CONFIDENCE_CASES)} crafted exams")
    return answer


# ------------------------------------------------------------------------------ exercise 2
def check_row_normalise(answer, W):
    """``answer(W) -> W~`` with every row of the (n, n) weight matrix ``W`` divided by its sum.
    ``W`` should have rows of different sums (otherwise rows and columns cannot be told apart)."""
    W = np.asarray(W, dtype=float)
    want = W / W.sum(axis=1, keepdims=True)
    if is_unanswered(answer):
        return unanswered(EX2, lambda w: np.asarray(w, float) / np.asarray(w, float).sum(1, keepdims=True))
    got = call_answer(EX2, answer, W.copy())
    if is_unanswered(got):
        return unanswered(EX2, lambda w: np.asarray(w, float) / np.asarray(w, float).sum(1, keepdims=True))
    got = np.asarray(got, dtype=float)
    if got.shape != W.shape:
        raise wrong(EX2, f"keep the shape {W.shape}, got {got.shape}")
    if not np.allclose(got, want, atol=1e-9):
        cols = np.allclose(got.sum(0), 1) and not np.allclose(got.sum(1), 1)
        hint = ("your columns sum to 1, not your rows: W / W.sum(axis=1) broadcasts the row sums "
                "along each row, dividing column j by the sum of row j (the reference code's bug); "
                "use W.sum(axis=1, keepdims=True)") if cols else "divide each row by its own sum"
        raise wrong(EX2, hint)
    correct(EX2, "each anchor's weights now sum to 1")
    return answer


# ------------------------------------------------------------------------------ exercise 3
def majority_agreement(table, split: str = "train") -> float:
    """Share of the annotated ``split`` exams of ``table`` whose majority PI-RADS label equals
    case_csPCa."""
    t = table[table["split"] == split]
    m = np.asarray(t["pirads_majority"].astype(float))
    ann = ~np.isnan(m)
    return float((m[ann].astype(int) == np.asarray(t["case_csPCa"])[ann].astype(int)).mean())


def _effect(diff: float) -> str:
    return "about the same" if abs(diff) < SAME_WITHIN else ("higher" if diff > 0 else "lower")


def check_noise_experiment(prediction, agreement_noisy, observed, table, noisy_table):
    """The experiment: with the reports resampled at a higher reader noise (``noisy_table``),
    how often does the majority label of the annotated training exams equal histopathology,
    compared with the cohort's own reports (``table``)? ``prediction`` (one of
    :data:`EFFECTS`) is recorded, not graded; ``agreement_noisy`` must match within 0.005 and
    ``observed`` must describe the measured change. Returns (prediction, agreement_noisy,
    observed)."""
    base, noisy = majority_agreement(table), majority_agreement(noisy_table)
    seen = _effect(noisy - base)
    if any(is_unanswered(a) for a in (prediction, agreement_noisy, observed)):
        return unanswered(EX3, (seen, noisy, seen))
    one_of(EX3, {"prediction": prediction, "observed": observed}, EFFECTS)
    got = number(EX3, "agreement_noisy", agreement_noisy)
    if got > 1:
        raise wrong(EX3, f"agreement_noisy = {got}: give a fraction (0.7), not a percentage (70)")
    if abs(got - noisy) > 0.005:
        raise wrong(EX3, f"agreement_noisy = {got:.3f}, the resampled table gives {noisy:.3f}: keep the "
                         "training exams with a majority label (not NaN) and compare it with case_csPCa")
    if str(observed).strip().lower() != seen:
        raise wrong(EX3, f"you observed {observed!r}, but the agreement went from {base:.3f} to "
                         f"{noisy:.3f} ({noisy - base:+.3f}): that is {seen!r}")
    verdict = "as you predicted" if str(prediction).strip().lower() == seen else f"you predicted {prediction!r}"
    correct(EX3, f"majority = csPCa on {base:.1%} -> {noisy:.1%} of the annotated training exams "
                 f"({seen}; {verdict})")
    return str(prediction).strip().lower(), got, seen


__all__ = ["check_confidence", "check_row_normalise", "check_noise_experiment", "majority_agreement",
           "CONFIDENCE_CASES", "EFFECTS", "UNANSWERED"]
