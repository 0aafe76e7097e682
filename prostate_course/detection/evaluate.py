"""Probability volumes -> detection maps -> the PI-CAI metrics, as the challenge computes them.

1. **Detection map.** ``report_guided_annotation.extract_lesion_candidates`` (Bosma et al. 2023)
   turns a voxel-wise csPCa probability volume into *lesion candidates*: with the default
   "dynamic-fast" rule, voxels above max(p) / 2.5 form 26-connected blobs, blobs of at most
   ``min_voxels`` voxels are dropped, and each blob gets one constant confidence, its peak
   probability. PI-CAI scores detection maps, never raw probabilities.
2. **Matching.** ``picai_eval.evaluate`` (Saha et al. 2024) labels the reference lesions as
   26-connected components and matches candidates to them (Hungarian assignment): a candidate is
   a *hit* when its intersection over union with a reference lesion is at least 0.1. Lesion
   contours disagree between experts (Dice ~0.5 between radiologists), so a detection counts
   when it lands on the lesion, not when it traces it. Each case contributes a list of
   ``(is_lesion, confidence, overlap)``: hits ``(1, c, IoU)``, misses ``(1, 0, 0)``, false
   positives ``(0, c, 0)``.
3. **Metrics.** Case level: score = the map's max, AUROC over cases. Lesion level: AP, the area
   under the precision-recall curve of all candidates and reference lesions (a missed lesion
   lowers recall; confidence 0 adds no precision); FROC, the lesion sensitivity against the
   mean number of false positives per case, read at 0.5 and 1 FP per case. The PI-CAI ranking
   score is (AUROC + AP) / 2.

:func:`evaluate_detection` runs both packages and returns a :class:`DetectionEvaluation`, whose
``summary()`` is one tidy row. :func:`weighted_ap` recomputes picai_eval's AP for many bootstrap
weight vectors at once, so :func:`prostate_course.compare.paired_deltas` can resample patients
for AP and the ranking score (registered as metrics ``"ap"`` and ``"score"``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from .. import compare
from ..evaluate import weighted_auroc
from .picai import extract_lesion_candidates, picai_eval

#: metrics of a detection results row (notebook 05)
DETECTION_METRICS = ("auroc", "ap", "score", "sens_at_0.5fp", "sens_at_1fp")
#: a candidate matches a reference lesion at IoU >= MIN_OVERLAP (PI-CAI's rule)
MIN_OVERLAP = 0.1


def detection_map(prob, *, threshold="dynamic-fast", min_voxels: int = 10,
                  num_lesions: int = 5) -> np.ndarray:
    """The detection map of one probability volume (D, H, W): non-touching blobs, each of one
    constant confidence (``extract_lesion_candidates(prob)[0]``; see the module docstring)."""
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim != 3:
        raise ValueError(f"a probability volume is (D, H, W), got shape {p.shape}")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("probabilities must be finite and in [0, 1]")
    if p.max() == 0:
        return np.zeros_like(p)
    return extract_lesion_candidates(p, threshold=threshold, min_voxels_detection=min_voxels,
                                     num_lesions_to_extract=num_lesions)[0].astype(np.float32)


@dataclass
class DetectionEvaluation:
    """picai_eval's results for one set of cases. ``metrics``: picai_eval's ``Metrics``;
    ``lesions``: one row per candidate or reference lesion (case_id, is_lesion, confidence,
    overlap), exactly picai_eval's per-case results; ``labels`` / ``scores``: the case targets
    (1 if the reference mask has a lesion) and case confidences (the map's max)."""

    metrics: object = field(repr=False)
    case_ids: list
    patient_ids: list
    labels: np.ndarray
    scores: np.ndarray
    lesions: pd.DataFrame = field(repr=False)
    maps: list | None = field(default=None, repr=False)   #: the detection maps (when kept)

    def drop_maps(self) -> "DetectionEvaluation":
        """Forget the detection maps (they are as large as the test volumes)."""
        self.maps = None
        return self

    def summary(self) -> dict:
        """One tidy row: auroc, ap, score, sens_at_0.5fp, sens_at_1fp and the counts."""
        m = self.metrics
        with warnings.catch_warnings():            # one-class AUROC / no lesion: NaN, no warning
            warnings.simplefilter("ignore")
            auroc = float(m.auroc) if 0 < self.labels.sum() < len(self.labels) else float("nan")
            n_les = int(m.num_lesions)
            ap = float(m.AP) + 0.0 if n_les else float("nan")     # + 0.0: no "-0.0"
            sens = {f"sens_at_{fp:g}fp": float(m.lesion_TPR_at_FPR(fp)) if n_les else float("nan")
                    for fp in (0.5, 1.0)}
        return {"auroc": auroc, "ap": ap, "score": (auroc + ap) / 2, **sens,
                "n_cases": len(self.case_ids), "n_positive_cases": int(self.labels.sum()),
                "n_lesions": n_les, "n_candidates": int((self.lesions["confidence"] > 0).sum()),
                "n_hits": int(((self.lesions["is_lesion"] == 1) & (self.lesions["confidence"] > 0)).sum())}

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([self.summary()])

    def intervals(self, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
        """Percentile bootstrap intervals of AUROC and AP resampling patients (Efron &
        Tibshirani 1993): ``{auroc_lo, auroc_hi, ap_lo, ap_hi}``."""
        from ..evaluate import cluster_weights

        pos = pd.Series(np.arange(len(self.case_ids)), index=self.case_ids)
        les = (pos.loc[self.lesions["case_id"]].to_numpy(), self.lesions["is_lesion"].to_numpy(),
               self.lesions["confidence"].to_numpy())
        auc, ap = [], []
        for w in cluster_weights(np.asarray(self.patient_ids), n_boot, seed):
            auc.append(weighted_auroc(self.labels, self.scores, w))
            ap.append(weighted_ap(*les, w))
        out = {}
        for name, reps in (("auroc", auc), ("ap", ap)):
            r = np.concatenate(reps) if reps else np.zeros(0)
            r = r[np.isfinite(r)]
            lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2]) if len(r) else (np.nan, np.nan)
            out[f"{name}_lo"], out[f"{name}_hi"] = float(lo), float(hi)
        return out

    def case_table(self) -> pd.DataFrame:
        """Per case: label, score, number of reference lesions, hits and false positives."""
        les = self.lesions
        g = les.assign(hit=(les.is_lesion == 1) & (les.confidence > 0),
                       fp=(les.is_lesion == 0), ref=les.is_lesion == 1).groupby("case_id")
        counts = g[["ref", "hit", "fp"]].sum().reindex(self.case_ids, fill_value=0).astype(int)
        return pd.DataFrame({"case_id": self.case_ids, "patient_id": self.patient_ids,
                             "label": self.labels.astype(int), "score": self.scores,
                             "n_lesions": counts["ref"].to_numpy(), "n_hits": counts["hit"].to_numpy(),
                             "n_false_positives": counts["fp"].to_numpy()})

    def froc(self) -> pd.DataFrame:
        """The FROC curve: lesion sensitivity against false positives per case (picai_eval's
        thresholds; the last point, at infinity, is dropped)."""
        m = self.metrics
        fpr, tpr = np.asarray(m.lesion_FPR, float), np.asarray(m.lesion_TPR, float)
        ok = np.isfinite(fpr)
        return pd.DataFrame({"fp_per_case": fpr[ok], "sensitivity": tpr[ok]})

    def roc(self) -> pd.DataFrame:
        """The case-level ROC curve (false positive rate, true positive rate)."""
        from sklearn.metrics import roc_curve

        fpr, tpr, thr = roc_curve(self.labels, self.scores)
        return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def _binary(mask) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"a reference lesion mask is (D, H, W), got shape {m.shape}")
    return (m > 0).astype(np.int32)


def evaluate_detection(y_det: Sequence, y_true: Sequence, case_ids: Sequence | None = None, *,
                       patient_ids: Sequence | None = None, probabilities: bool = True,
                       min_overlap: float = MIN_OVERLAP, candidates: dict | None = None,
                       num_parallel_calls: int = 2) -> DetectionEvaluation:
    """Score detections of several cases with ``picai_eval.evaluate``.

    ``y_det``: per case a probability volume (``probabilities=True``: each becomes a detection
    map with :func:`detection_map` and ``candidates`` as its keyword arguments) or a detection
    map already. ``y_true``: per case the reference lesion mask on the same grid (ISUP values or
    binary; anything > 0 is lesion). ``case_ids`` name the cases (default 0, 1, ...);
    ``patient_ids`` default to the case ids.
    """
    y_det, y_true = list(y_det), list(y_true)
    if len(y_det) != len(y_true):
        raise ValueError(f"{len(y_det)} detections but {len(y_true)} reference masks")
    ids = [str(c) for c in (case_ids if case_ids is not None else range(len(y_det)))]
    if len(ids) != len(y_det) or len(set(ids)) != len(ids):
        raise ValueError("case_ids must name every case once")
    pids = [str(p) for p in patient_ids] if patient_ids is not None else list(ids)
    dets, refs = [], []
    for cid, d, t in zip(ids, y_det, y_true):
        d = np.asarray(d, dtype=np.float32)
        t = _binary(t)
        if d.shape != t.shape:
            raise ValueError(f"case {cid}: detection {d.shape} and reference {t.shape} differ in shape")
        dets.append(detection_map(d, **(candidates or {})) if probabilities else d)
        refs.append(t)
    m = picai_eval().evaluate(y_det=dets, y_true=refs, subject_list=ids, min_overlap=min_overlap,
                              num_parallel_calls=num_parallel_calls, verbose=0)
    rows = [{"case_id": cid, "lesion": j, "is_lesion": int(y), "confidence": float(c), "overlap": float(o)}
            for cid in ids for j, (y, c, o) in enumerate(m.lesion_results[cid])]
    lesions = pd.DataFrame(rows, columns=["case_id", "lesion", "is_lesion", "confidence", "overlap"])
    return DetectionEvaluation(metrics=m, case_ids=ids, patient_ids=pids,
                               labels=np.array([int(m.case_target[c]) for c in ids]),
                               scores=np.array([float(m.case_pred[c]) for c in ids]), lesions=lesions,
                               maps=dets)


# ------------------------------------------------------------- weighted metrics (bootstrap)
def weighted_ap(case_pos, is_lesion, confidence, weights) -> np.ndarray:
    """picai_eval's average precision under case weights, for many weight vectors at once.

    Entry e (a candidate or a reference lesion of case ``case_pos[e]``) carries its case's
    weight w_c. With candidates ranked by confidence t_1 > t_2 > ... (ties form one step),

        AP = sum_k [t_k > 0] * TP_k / TP_all * TP_<=k / (TP_<=k + FP_<=k),

    where TP_k is the weight of reference lesions found at t_k, TP_<=k / FP_<=k the weights of
    hits / false positives at confidence >= t_k, and TP_all the weight of all reference lesions
    (missed ones, confidence 0, count in recall but add no precision): picai_eval's step
    integral of scikit-learn's weighted precision-recall curve with the precision at
    confidence 0 set to 0. With integer weights it is the AP of the sample that repeats case c
    w_c times. ``weights`` (B, n_cases) -> (B,); NaN where a row has no reference lesion.
    Hand-written (vectorised over replicates) because building picai_eval's ``Metrics`` per
    replicate is ~1000x slower; tests check it against picai_eval.
    """
    pos = np.asarray(case_pos, dtype=np.int64).ravel()
    y = np.asarray(is_lesion).astype(bool).ravel()
    c = np.asarray(confidence, dtype=np.float64).ravel()
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if not (len(pos) == len(y) == len(c)):
        raise ValueError("case_pos, is_lesion and confidence must have one entry per lesion row")
    if len(pos) and (pos.min() < 0 or pos.max() >= w.shape[1]):
        raise ValueError(f"case positions must lie in [0, {w.shape[1]})")
    b = w.shape[0]
    if len(pos) == 0:
        return np.full(b, np.nan)
    we = w[:, pos]                                         # (B, m) weight of every entry
    uniq, inv = np.unique(-c, return_inverse=True)         # tie blocks, descending confidence
    k = len(uniq)
    flat = (np.arange(b)[:, None] * k + inv[None, :]).ravel()
    tp = np.bincount(flat, weights=(we * y).ravel(), minlength=b * k).reshape(b, k)
    fp = np.bincount(flat, weights=(we * ~y).ravel(), minlength=b * k).reshape(b, k)
    ctp, cfp = np.cumsum(tp, 1), np.cumsum(fp, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(ctp + cfp > 0, ctp / np.where(ctp + cfp > 0, ctp + cfp, 1), 0.0)
        total = tp.sum(1)
        ap = (tp * prec * (-uniq > 0)[None, :]).sum(1) / np.where(total > 0, total, 1)
    return np.where(total > 0, ap, np.nan)


def _ap_metric(labels, scores, lesions, weights):
    return weighted_ap(*lesions, weights)


def _score_metric(labels, scores, lesions, weights):
    return (weighted_auroc(labels, scores, weights) + weighted_ap(*lesions, weights)) / 2


compare.register_metric("ap", _ap_metric, lesion_level=True)
compare.register_metric("score", _score_metric, lesion_level=True)


def lesion_rows(evaluation: DetectionEvaluation, **arm) -> pd.DataFrame:
    """The lesion-level results in the long format saved beside the per-case scores
    (:data:`prostate_course.compare.LESION_COLUMNS`): ``arm`` gives task, method, protocol,
    label_fraction and seed."""
    les = evaluation.lesions
    out = pd.DataFrame({"case_id": les["case_id"].to_numpy()})
    for k, v in arm.items():
        out[k] = v
    for k in ("lesion", "is_lesion", "confidence", "overlap"):
        out[k] = les[k].to_numpy()
    return out


__all__ = ["DETECTION_METRICS", "MIN_OVERLAP", "detection_map", "DetectionEvaluation",
           "evaluate_detection", "weighted_ap", "lesion_rows"]
