"""Checks of notebook 05 (lesion detection).

1. :func:`check_iou`: intersection over union of two masks, and PI-CAI's hit rule (IoU >= 0.1).
2. :func:`check_froc_point`: one point of the FROC curve from picai_eval's lesion-level results
   (tested against picai_eval's own counts at every threshold).
3. :func:`check_overlap_experiment`: re-score the detections with a stricter hit rule and watch
   AP fall (experiment; recomputed with picai_eval).
"""
from __future__ import annotations

import numpy as np

from . import call_answer as call, correct, is_unanswered, unanswered, wrong

EX1 = "Exercise 1 (IoU and the hit rule)"
EX2 = "Exercise 2 (a point of the FROC curve)"
EX3 = "Exercise 3 (how strict is a hit?)"


def iou_reference(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def check_iou(answer):
    """``answer(a, b)`` -> IoU of two binary masks. Tried on identical, disjoint, nested and
    random 3D masks against |A and B| / |A or B|. Returns the function to use afterwards."""
    if is_unanswered(answer) or is_unanswered(call(EX1, answer, np.ones((2, 2, 2)), np.ones((2, 2, 2)))):
        return unanswered(EX1, iou_reference)
    rng = np.random.default_rng(0)
    a = np.zeros((4, 10, 10), bool)
    a[1:3, 2:6, 2:6] = True
    b = np.zeros_like(a)
    b[1:3, 2:4, 2:6] = True                                  # half of a, inside it: IoU 0.5
    cases = [(a, a, "two identical masks"), (a, ~a, "two disjoint masks"), (a, b, "a mask and its half")]
    cases += [(rng.random((5, 12, 12)) < 0.3, rng.random((5, 12, 12)) < 0.3, "random masks") for _ in range(3)]
    for x, y, what in cases:
        got, want = float(call(EX1, answer, x, y)), iou_reference(x, y)
        if abs(got - want) > 1e-9:
            hint = (" Divide by the union |A or B|, not by |A| + |B| (that is half the Dice)."
                    if abs(got - (np.logical_and(x, y).sum() / (x.sum() + y.sum()))) < 1e-9 else "")
            raise wrong(EX1, f"for {what} you return {got:.4f}, the IoU is {want:.4f}.{hint}")
    correct(EX1, "a candidate is a hit at IoU >= 0.1. A box twice the lesion's bounding box in "
            "every direction (8 times its volume) contains the lesion, so IoU = lesion volume / "
            "box volume: 1/8 = 0.125 for a box-shaped lesion (a hit), but pi/48 = 0.065 for an "
            "ellipsoidal one (a miss). Lenient, but the answer depends on the lesion's shape")
    return answer


def froc_point_reference(lesions, n_cases: int, threshold: float):
    """(sensitivity, false positives per case) of the candidates with confidence >= threshold:
    hits / all reference lesions (missed ones are rows with confidence 0), false positives / cases."""
    on = lesions["confidence"] >= threshold
    hit = lesions["is_lesion"] == 1
    return float((hit & on).sum() / max(int(hit.sum()), 1)), float((~hit & on).sum() / n_cases)


def _picai_points(evaluation):
    m = evaluation.metrics
    counts = m.calculate_counts()
    th = np.asarray(m.thresholds)
    keep = np.isfinite(counts["FP"]) & (th > 0)
    return th[keep], counts["TP"][keep] / m.num_lesions, counts["FP"][keep] / m.num_cases


def check_froc_point(answer, evaluation):
    """``answer(lesions, n_cases, threshold)`` -> (sensitivity, false positives per case) of the
    candidates with confidence >= threshold, from picai_eval's per-case results ``lesions``
    (is_lesion, confidence). Compared with picai_eval's own counts at each of its thresholds."""
    les, n = evaluation.lesions, len(evaluation.case_ids)
    if is_unanswered(answer) or is_unanswered(call(EX2, answer, les, n, 0.5)):
        return unanswered(EX2, froc_point_reference)
    ths, sens, fps = _picai_points(evaluation)
    if len(ths) == 0:
        raise wrong(EX2, "this evaluation has no candidate with a positive confidence to check against")
    for t, s, f in zip(ths, sens, fps):
        got = call(EX2, answer, les, n, float(t))
        try:
            gs, gf = (float(v) for v in got)
        except (TypeError, ValueError):
            raise wrong(EX2, f"return two numbers (sensitivity, fp_per_case), got {got!r}") from None
        if abs(gf - f) > 1e-9:
            raise wrong(EX2, f"at threshold {t:.3f}: {gf:.3f} false positives per case, picai_eval "
                        f"counts {f:.3f}. Count candidates with is_lesion 0 and confidence >= t, and "
                        "divide by the number of cases (all of them, not only the ones with candidates).")
        if abs(gs - s) > 1e-9:
            raise wrong(EX2, f"at threshold {t:.3f}: sensitivity {gs:.3f}, picai_eval gives {s:.3f}. "
                        "Hits have is_lesion 1 and confidence >= t; divide by ALL reference lesions "
                        "(missed ones have confidence 0).")
    correct(EX2, f"your FROC matches picai_eval's at all {len(ths)} thresholds")
    return answer


def check_overlap_experiment(answer: dict, probabilities, reference, case_ids, candidates=None):
    """``answer`` = {min_overlap: AP} for 0.1 and at least two stricter hit rules, computed with
    ``evaluate_detection(..., min_overlap=...)`` on the kept probability volumes."""
    from ..detection.evaluate import evaluate_detection

    if is_unanswered(answer):
        return unanswered(EX3, {k: evaluate_detection(probabilities, reference, case_ids, min_overlap=k,
                                                      candidates=candidates).summary()["ap"]
                                for k in (0.1, 0.3, 0.5)})
    if not isinstance(answer, dict) or 0.1 not in answer or len([k for k in answer if k > 0.1]) < 2:
        raise wrong(EX3, "give a dict {min_overlap: AP} with 0.1 and at least two stricter values, "
                    "e.g. {0.1: ..., 0.3: ..., 0.5: ...}")
    want = {}
    for k in sorted(answer):
        want[k] = evaluate_detection(probabilities, reference, case_ids, min_overlap=float(k),
                                     candidates=candidates).summary()["ap"]
        if not np.isclose(float(answer[k]), want[k], atol=1e-9, equal_nan=True):
            raise wrong(EX3, f"at min_overlap {k} picai_eval gives AP {want[k]:.4f}, you have "
                        f"{float(answer[k]):.4f}: pass min_overlap=... to evaluate_detection")
    ks = sorted(want)
    correct(EX3, "AP " + " -> ".join(f"{want[k]:.3f} (IoU >= {k:g})" for k in ks) + ": a stricter "
            "hit rule turns rough detections into a false positive plus a miss")
    return want
