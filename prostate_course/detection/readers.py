"""The AI against the radiologists: reader operating points, matched operating points, and
detection sensitivity by ISUP grade and by PI-RADS category.

A radiologist's PI-RADS category becomes a decision by a threshold: "biopsy if PI-RADS >= 3"
(the usual rule) or ">= 4" (fewer biopsies, more missed cancers). Each threshold is one
*operating point* (1 - specificity, sensitivity) on the case-level ROC plane, where the AI's
case score (the detection map's max) traces a whole curve. PI-CAI's reader study compared them
this way (Saha et al., Lancet Oncology 2024): the AI's sensitivity at the radiologists'
specificity, and its specificity at their sensitivity, on the same cases.

Here every case has several simulated reports (``pirads_reports`` = "4;3;4": one case-level
PI-RADS per reader, the routine report first; real PI-CAI has one routine report). Readers are
drawn per case from a pool, so "report 2" is the second reader *of each case*, not one person;
"pooled" treats every (case, report) pair as one reading.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

#: the decision thresholds on PI-RADS shown everywhere ("biopsy if PI-RADS >= k")
THRESHOLDS = (3, 4)


def _parse(reports) -> list[int]:
    from ..data import readers

    parse = getattr(readers, "parse_reports", None) or readers._parse_reports
    return parse(reports)


def reports_long(table: pd.DataFrame, case_ids) -> pd.DataFrame:
    """One row per (case, report): case_id, report (1 = the routine report), pirads."""
    t = table.set_index("case_id").loc[list(case_ids)]
    rows = [{"case_id": cid, "report": j + 1, "pirads": p}
            for cid, r in zip(t.index, t["pirads_reports"]) for j, p in enumerate(_parse(r))]
    return pd.DataFrame(rows, columns=["case_id", "report", "pirads"])


def wilson(k: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n (``scipy.stats.binomtest``); NaN if n = 0."""
    from scipy.stats import binomtest

    if n <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(round(k)), int(round(n))).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def operating_point(labels, decisions, weights=None) -> dict:
    """Sensitivity and specificity of binary ``decisions`` (with optional case weights)."""
    y = np.asarray(labels).astype(bool)
    d = np.asarray(decisions).astype(bool)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, float)
    n_pos, n_neg = w[y].sum(), w[~y].sum()
    sens = (w * (y & d)).sum() / n_pos if n_pos else np.nan
    spec = (w * (~y & ~d)).sum() / n_neg if n_neg else np.nan
    return {"sensitivity": float(sens), "specificity": float(spec), "n_positive": float(n_pos),
            "n_negative": float(n_neg)}


def _roc(labels, scores, weights=None):
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(labels).astype(int), np.asarray(scores, float),
                              sample_weight=weights)
    return fpr, tpr, thr


def sensitivity_at_specificity(labels, scores, specificity: float, weights=None) -> tuple[float, float]:
    """The AI's best sensitivity whose specificity is at least ``specificity``, and its
    threshold (the case is positive when score >= threshold)."""
    fpr, tpr, thr = _roc(labels, scores, weights)
    ok = fpr <= 1 - specificity + 1e-12
    i = np.flatnonzero(ok)[np.argmax(tpr[ok])]
    return float(tpr[i]), float(thr[i])


def specificity_at_sensitivity(labels, scores, sensitivity: float, weights=None) -> tuple[float, float]:
    """The AI's best specificity whose sensitivity is at least ``sensitivity``, and its threshold."""
    fpr, tpr, thr = _roc(labels, scores, weights)
    ok = tpr >= sensitivity - 1e-12
    i = np.flatnonzero(ok)[np.argmin(fpr[ok])]
    return float(1 - fpr[i]), float(thr[i])


def reader_operating_points(table: pd.DataFrame, case_ids, labels, ai_scores=None,
                            thresholds=THRESHOLDS) -> pd.DataFrame:
    """Per report position and pooled, at PI-RADS >= k for each k in ``thresholds``: the
    readers' sensitivity and specificity (Wilson 95 % intervals) on the cases they read, and
    (with ``ai_scores``) the AI's sensitivity at the same specificity and specificity at the
    same sensitivity, on the same cases (pooled: cases weighted by their number of reports)."""
    ids = [str(c) for c in case_ids]
    y = pd.Series(np.asarray(labels).astype(int), index=ids)
    s = pd.Series(np.asarray(ai_scores, float), index=ids) if ai_scores is not None else None
    rep = reports_long(table, ids)
    groups = [(f"report {j}" + (" (routine)" if j == 1 else ""), rep[rep.report == j])
              for j in sorted(rep.report.unique())] + [("pooled", rep)]
    rows = []
    for name, g in groups:
        w = g.groupby("case_id").size()                        # readings per case
        for k in thresholds:
            yy = y.loc[g.case_id].to_numpy()
            op = operating_point(yy, g.pirads.to_numpy() >= k)
            lo_s, hi_s = wilson(op["sensitivity"] * op["n_positive"], op["n_positive"])
            lo_p, hi_p = wilson(op["specificity"] * op["n_negative"], op["n_negative"])
            row = {"reader": name, "threshold": f"PI-RADS >= {k}", "n_readings": len(g),
                   "n_cases": int(g.case_id.nunique()), **{k2: op[k2] for k2 in ("sensitivity", "specificity")},
                   "sensitivity_lo": lo_s, "sensitivity_hi": hi_s,
                   "specificity_lo": lo_p, "specificity_hi": hi_p}
            if s is not None and 0 < yy.sum() < len(yy):
                cases = w.index
                ai_sens, t1 = sensitivity_at_specificity(y.loc[cases], s.loc[cases], op["specificity"], w.to_numpy())
                ai_spec, t2 = specificity_at_sensitivity(y.loc[cases], s.loc[cases], op["sensitivity"], w.to_numpy())
                row.update({"ai_sensitivity_at_reader_specificity": ai_sens,
                            "ai_specificity_at_reader_sensitivity": ai_spec,
                            "ai_threshold_at_reader_specificity": t1})
            rows.append(row)
    return pd.DataFrame(rows)


def first_report(table: pd.DataFrame, case_ids) -> pd.Series:
    """The routine (first) report's PI-RADS per case (NaN without a report)."""
    t = table.set_index("case_id").loc[list(case_ids)]
    return pd.Series([(_parse(r) or [np.nan])[0] for r in t["pirads_reports"]], index=t.index, dtype=float)


# -------------------------------------------------------------------- lesions by ISUP / PI-RADS
def _components(mask):
    from scipy import ndimage

    return ndimage.label(np.asarray(mask) > 0, structure=np.ones((3, 3, 3)))


def reference_lesions(evaluation, reference) -> pd.DataFrame:
    """One row per reference lesion (26-connected component, as picai_eval labels them):
    case_id, lesion, n_voxels, isup (the mask's highest value in it), hit, confidence.

    Which candidate picai_eval matched to which lesion is read back from its per-case results:
    a hit entry (1, c, IoU) belongs to the lesion whose overlap with a candidate of confidence c
    is that IoU. Needs the evaluation's detection maps (``evaluation.maps``)."""
    if evaluation.maps is None:
        raise ValueError("this evaluation kept no detection maps (evaluate again, or keep them)")
    rows = []
    les = evaluation.lesions
    for cid, ref, det in zip(evaluation.case_ids, reference, evaluation.maps):
        lab, n = _components(ref)
        if n == 0:
            continue
        blobs, nb = _components(det)
        conf = [float(det[blobs == j + 1].max()) for j in range(nb)]
        iou = np.zeros((n, nb))
        for i in range(n):
            a = lab == i + 1
            for j in range(nb):
                b = blobs == j + 1
                inter = np.logical_and(a, b).sum()
                iou[i, j] = inter / np.logical_or(a, b).sum() if inter else 0.0
        found = {}
        hits = les[(les.case_id == cid) & (les.is_lesion == 1) & (les.confidence > 0)]
        for c, o in zip(hits.confidence, hits.overlap):
            cand = [(i, j) for i in range(n) for j in range(nb) if i not in found
                    and abs(conf[j] - c) < 1e-6 and abs(iou[i, j] - o) < 1e-6]
            if not cand:
                raise ValueError(f"case {cid}: cannot place picai_eval's hit (confidence {c}, IoU {o})")
            found[cand[0][0]] = c
        for i in range(n):
            m = lab == i + 1
            rows.append({"case_id": cid, "lesion": i, "n_voxels": int(m.sum()),
                         "isup": int(np.asarray(ref)[m].max()), "hit": i in found,
                         "confidence": found.get(i, 0.0)})
    return pd.DataFrame(rows, columns=["case_id", "lesion", "n_voxels", "isup", "hit", "confidence"])


def sensitivity_by(lesions: pd.DataFrame, by: str, threshold: float | None = None) -> pd.DataFrame:
    """Lesion detection sensitivity per value of ``by`` (e.g. "isup", "pirads"): a lesion
    counts as found when picai_eval matched a candidate with confidence >= ``threshold``, the
    same rule as the case-level operating point (None: any matched candidate). Wilson 95 %
    intervals."""
    found = lesions["hit"].astype(bool)
    if threshold is not None:
        found &= lesions["confidence"] >= threshold
    rows = []
    for v, g in lesions.assign(found=found).groupby(by, dropna=False):
        k, n = int(g.found.sum()), len(g)
        lo, hi = wilson(k, n)
        rows.append({by: v, "n_lesions": n, "n_found": k, "sensitivity": k / n, "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


__all__ = ["THRESHOLDS", "reports_long", "wilson", "operating_point", "sensitivity_at_specificity",
           "specificity_at_sensitivity", "reader_operating_points", "first_report",
           "reference_lesions", "sensitivity_by"]
