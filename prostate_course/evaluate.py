"""Metrics shared by notebooks 01-05: AUROC (weighted, bootstrapped, with confidence intervals)
at slice and patient level, frozen-encoder read-outs (linear probe, k-NN), and how much each
layer changed in fine-tuning. Paired comparisons of two arms live in :mod:`prostate_course.compare`.

Inputs are duck-typed: anything with ``images`` (N, C, H, W), ``slice_label`` (N,),
``case_index`` (N,) into ``case_ids``, ``case_label`` (per case) and ``patient_ids`` (per case),
such as the data code's ``SliceSet``; or plain tensors/arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

#: The metric keys of a classification results row (docs/ARCHITECTURE.md "Results").
METRIC_KEYS = ("auroc_slice", "auroc_slice_lo", "auroc_slice_hi",
               "auroc_patient", "auroc_patient_lo", "auroc_patient_hi")


def to_numpy(a) -> np.ndarray:
    """A numpy view of a tensor (moved to the CPU) or an array-like."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def auroc(y, score) -> float:
    """AUROC = P(s_pos > s_neg) + 0.5 P(s_pos = s_neg) (``sklearn.metrics.roc_auc_score``);
    NaN when ``y`` has one class only."""
    from sklearn.metrics import roc_auc_score

    y = to_numpy(y)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, to_numpy(score)))


def weighted_auroc(y, score, weights) -> np.ndarray:
    """AUROC under item weights, for many weight vectors at once: (B, n) weights -> (B,).

    With w_i the weight of item i (a bootstrap replicate's count of how often i was drawn),

        AUC = sum_{i pos, j neg} w_i w_j ([s_i > s_j] + 0.5 [s_i = s_j]) / (W_pos W_neg),

    the weighted Mann-Whitney statistic: with integer weights, exactly the AUROC of the sample
    that repeats item i w_i times. Computed from the scores sorted once: per tie block of
    equal scores, the weight of negatives below it. NaN where a row has no positive or no
    negative weight. Hand-written because calling ``roc_auc_score`` per replicate is ~100x
    slower; the tests check it against ``roc_auc_score`` on the repeated sample.
    """
    y = to_numpy(y).astype(bool).ravel()
    s = to_numpy(score).astype(np.float64).ravel()
    w = np.atleast_2d(to_numpy(weights).astype(np.float64))
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if w.shape[1] != len(y):
        raise ValueError(f"weights have {w.shape[1]} columns for {len(y)} items")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    b = w.shape[0]
    _, inv = np.unique(s, return_inverse=True)  # tie blocks, ascending score
    n_unique = int(inv.max()) + 1 if len(inv) else 0
    flat = (np.arange(b)[:, None] * n_unique + inv[None, :]).ravel()
    pos = np.bincount(flat, weights=(w * y).ravel(), minlength=b * n_unique).reshape(b, n_unique)
    neg = np.bincount(flat, weights=(w * ~y).ravel(), minlength=b * n_unique).reshape(b, n_unique)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(1)
    den = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def cluster_weights(groups, n_boot: int, seed: int = 0, chunk: int = 250):
    """Bootstrap weights that resample whole clusters: yields (b, n) blocks, b <= ``chunk``,
    ``n_boot`` rows in all. Row r gives item i the number of times its cluster (e.g. its
    patient) was drawn when drawing as many clusters as there are, with replacement."""
    _, gidx = np.unique(to_numpy(groups), return_inverse=True)
    n_groups = int(gidx.max()) + 1 if len(gidx) else 0
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=b)
        yield counts[:, gidx].astype(np.float64)


def bootstrap_auroc(y, score, n_boot: int = 1000, seed: int = 0, groups=None,
                    chunk: int = 200) -> np.ndarray:
    """``n_boot`` bootstrap replicates of the AUROC (NaN where a replicate has one class only).

    With ``groups`` (e.g. the patient of each slice) whole groups are resampled with
    replacement (cluster bootstrap: slices of one patient are not independent, so resampling
    slices would make the interval too narrow); see :func:`cluster_weights` and
    :func:`weighted_auroc`.
    """
    y = to_numpy(y).astype(bool).ravel()
    s = to_numpy(score).astype(np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    g = np.arange(len(y)) if groups is None else to_numpy(groups)
    if len(g) != len(y):
        raise ValueError(f"groups has {len(g)} entries for {len(y)} labels")
    return np.concatenate([weighted_auroc(y, s, w) for w in cluster_weights(g, n_boot, seed, chunk)]
                          or [np.zeros(0)])


def auroc_with_ci(y, score, n_boot: int = 1000, seed: int = 0, groups=None,
                  alpha: float = 0.05) -> tuple[float, float, float]:
    """(AUROC, lower, upper): the point estimate from ``sklearn.metrics.roc_auc_score`` and a
    percentile bootstrap interval (Efron & Tibshirani 1993) at level 1 - ``alpha``, resampling
    ``groups`` (patients) when given. NaN if ``y`` has one class only."""
    y = to_numpy(y).ravel()
    s = to_numpy(score).ravel()
    auc = auroc(y, s)
    if np.isnan(auc) or n_boot <= 0:
        return auc, float("nan"), float("nan")
    reps = bootstrap_auroc(y, s, n_boot=n_boot, seed=seed, groups=groups)
    reps = reps[~np.isnan(reps)]
    if len(reps) == 0:
        return auc, float("nan"), float("nan")
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return auc, float(lo), float(hi)


def case_scores(slice_scores, case_index, n_cases: int | None = None) -> np.ndarray:
    """Per-case score = max over the case's slices ("is there a lesion anywhere?"); NaN for a
    case without slices."""
    s = to_numpy(slice_scores).astype(np.float64).ravel()
    ci = to_numpy(case_index).astype(np.int64).ravel()
    n = int(ci.max()) + 1 if n_cases is None else int(n_cases)
    out = np.full(n, -np.inf)
    np.maximum.at(out, ci, s)
    out[np.isneginf(out)] = np.nan
    return out


def evaluate_scores(scores, slice_label, case_index, case_label, patient_ids=None,
                    n_boot: int = 1000, seed: int = 0) -> dict:
    """Slice- and patient-level AUROC with 95 % bootstrap intervals.

    Slice level: every slice scored against ``slice_label``; the interval resamples patients.
    Patient level: the patient score is the max over its slices and its label the case label
    (``case_csPCa``); the interval resamples patients (``patient_ids`` per case; one case =
    one patient when omitted).
    """
    scores = to_numpy(scores).ravel()
    ci = to_numpy(case_index).astype(np.int64).ravel()
    ys = to_numpy(slice_label).ravel()
    yc = to_numpy(case_label).ravel()
    if not (len(scores) == len(ci) == len(ys)):
        raise ValueError(f"scores ({len(scores)}), case_index ({len(ci)}) and slice_label "
                         f"({len(ys)}) must have one entry per slice")
    if len(ci) and ci.max() >= len(yc):
        raise ValueError(f"case_index refers to case {ci.max()} but case_label has {len(yc)} cases")
    pid = np.asarray(patient_ids) if patient_ids is not None else np.arange(len(yc))
    if len(pid) != len(yc):
        raise ValueError(f"patient_ids ({len(pid)}) must have one entry per case ({len(yc)})")
    s_auc, s_lo, s_hi = auroc_with_ci(ys > 0, scores, n_boot=n_boot, seed=seed, groups=pid[ci])
    cs = case_scores(scores, ci, len(yc))
    keep = ~np.isnan(cs)
    p_auc, p_lo, p_hi = auroc_with_ci(yc[keep] > 0, cs[keep], n_boot=n_boot, seed=seed,
                                      groups=pid[keep])
    return {"auroc_slice": s_auc, "auroc_slice_lo": s_lo, "auroc_slice_hi": s_hi,
            "auroc_patient": p_auc, "auroc_patient_lo": p_lo, "auroc_patient_hi": p_hi,
            "n_slices": int(len(scores)), "n_cases": int(keep.sum()),
            "n_positive_cases": int((yc[keep] > 0).sum())}


def unpack(data) -> dict:
    """Tensors of a SliceSet-like object, a dict, or an ``(images, labels[, case_index])``
    tuple: dict with images, slice_label and (when known) case_index, case_label, patient_ids."""
    if isinstance(data, dict):
        d = dict(data)
    elif isinstance(data, (tuple, list)):
        if len(data) not in (2, 3):
            raise ValueError("expected (images, labels) or (images, labels, case_index)")
        d = {"images": data[0], "slice_label": data[1]}
        if len(data) == 3:
            d["case_index"] = data[2]
    elif hasattr(data, "images"):
        d = {k: getattr(data, k) for k in ("images", "slice_label", "case_index", "case_label",
                                           "patient_ids", "case_ids") if hasattr(data, k)}
    else:
        raise TypeError(f"cannot read images and labels from {type(data).__name__}")
    if "images" not in d or "slice_label" not in d:
        raise ValueError("need 'images' and 'slice_label'")
    if not isinstance(d["images"], torch.Tensor):
        d["images"] = torch.as_tensor(np.asarray(d["images"]))
    if d["images"].ndim < 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(d['images'].shape)}")
    if len(d["slice_label"]) != len(d["images"]):
        raise ValueError(f"{len(d['images'])} images but {len(d['slice_label'])} labels")
    return d


def evaluate_classifier(model: nn.Module, data, *, batch_size: int | None = None, device=None,
                        n_boot: int = 1000, seed: int = 0, amp="auto",
                        return_scores: bool = False):
    """Slice- and patient-level AUROC (with intervals) of ``model`` on a SliceSet-like
    ``data``; see :func:`evaluate_scores`. With ``return_scores`` also the slice probabilities."""
    from .inference import predict

    d = unpack(data)
    if "case_index" not in d or "case_label" not in d:
        raise ValueError("evaluate_classifier needs case_index and case_label (a SliceSet)")
    probs = predict(model, d["images"], batch_size=batch_size, device=device, amp=amp)
    out = evaluate_scores(probs, d["slice_label"], d["case_index"], d["case_label"],
                          d.get("patient_ids"), n_boot=n_boot, seed=seed)
    return (out, probs) if return_scores else out


# ---------------------------------------------------------------------------------------------
# Frozen-encoder linear probe
# ---------------------------------------------------------------------------------------------

@dataclass
class ProbeResult:
    """A fitted linear probe: the sklearn pipeline, the chosen C and its validation AUROC."""

    pipeline: object
    C: float
    val_auroc: float
    scores: dict  # C -> validation slice AUROC

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.pipeline.predict_proba(features)[:, 1]


def fit_linear_probe(train_features, train_labels, val_features=None, val_labels=None,
                     Cs: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 0,
                     max_iter: int = 2000) -> ProbeResult:
    """Logistic regression on frozen features (standardised), ``class_weight="balanced"``
    for the rare lesion slices; C (inverse L2 strength) chosen by validation slice AUROC.
    The classic test of a representation: what a linear read-out of it can do."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ytr = to_numpy(train_labels).ravel() > 0
    for name, f in (("training", train_features), ("validation", val_features)):
        if f is not None and not np.isfinite(f).all():
            raise ValueError(f"linear probe: the encoder gave NaN/inf {name} features "
                             "(broken weights? check the checkpoint)")
    if len(np.unique(ytr)) < 2:
        raise ValueError("linear probe: the training labels contain one class only")

    def make(C):
        return make_pipeline(StandardScaler(), LogisticRegression(
            C=C, class_weight="balanced", max_iter=max_iter, random_state=seed))

    scores = {}
    if val_features is not None and len(Cs) > 1:
        yv = to_numpy(val_labels).ravel() > 0
        for C in Cs:
            p = make(C).fit(train_features, ytr)
            scores[C] = auroc(yv, p.predict_proba(val_features)[:, 1])
        valid = {c: v for c, v in scores.items() if not np.isnan(v)}
        best = max(valid, key=valid.get) if valid else Cs[len(Cs) // 2]
    else:
        best = Cs[len(Cs) // 2]
    pipe = make(best).fit(train_features, ytr)
    return ProbeResult(pipeline=pipe, C=float(best), val_auroc=scores.get(best, float("nan")),
                       scores=scores)


@dataclass
class KNNResult:
    """A fitted k-NN read-out: the chosen k and its validation AUROC."""

    model: object
    k: int
    val_auroc: float
    scores: dict  # k -> validation slice AUROC

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(_l2(features))[:, 1]


def _l2(f) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def fit_knn_probe(train_features, train_labels, val_features=None, val_labels=None,
                  ks: Sequence[int] = (5, 20, 50)) -> KNNResult:
    """k-nearest-neighbour read-out of frozen features: cosine similarity (features
    L2-normalised, Euclidean distance on the sphere), the score of an image is the
    distance-weighted share of positive slices among its k neighbours (Wu et al. 2018,
    "Unsupervised feature learning via non-parametric instance discrimination", CVPR). No
    training at all: it asks whether similar images lie close together. k chosen on the
    validation set (the middle one without)."""
    from sklearn.neighbors import KNeighborsClassifier

    ytr = to_numpy(train_labels).ravel() > 0
    if len(np.unique(ytr)) < 2:
        raise ValueError("k-NN probe: the training labels contain one class only")
    ftr = _l2(train_features)
    if not np.isfinite(ftr).all():
        raise ValueError("k-NN probe: the encoder gave NaN/inf features")
    ks = sorted({max(1, min(int(k), len(ytr))) for k in ks})

    def make(k):
        return KNeighborsClassifier(n_neighbors=k, weights="distance").fit(ftr, ytr)

    scores = {}
    if val_features is not None and len(ks) > 1:
        yv = to_numpy(val_labels).ravel() > 0
        fv = _l2(val_features)
        for k in ks:
            scores[k] = auroc(yv, make(k).predict_proba(fv)[:, 1])
        valid = {c: v for c, v in scores.items() if not np.isnan(v)}
        best = max(valid, key=valid.get) if valid else ks[len(ks) // 2]
    else:
        best = ks[len(ks) // 2]
    return KNNResult(model=make(best), k=int(best), val_auroc=scores.get(best, float("nan")),
                     scores=scores)


def linear_probe(encoder: nn.Module, train, val, test, *, Cs: Sequence[float] = (0.01, 0.1, 1.0),
                 device=None, batch_size: int | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Frozen-encoder arm: features of ``encoder`` -> :func:`fit_linear_probe` on ``train``
    (C chosen on ``val``) -> :func:`evaluate_scores` on ``test``. Returns the metrics dict plus
    ``C`` and ``probe`` (the :class:`ProbeResult`)."""
    from .inference import extract_features

    tr, va, te = unpack(train), unpack(val), unpack(test)
    f = {k: extract_features(encoder, d["images"], batch_size, device) for k, d in
         (("train", tr), ("val", va), ("test", te))}
    probe = fit_linear_probe(f["train"], tr["slice_label"], f["val"], va["slice_label"], Cs=Cs, seed=seed)
    out = evaluate_scores(probe.predict(f["test"]), te["slice_label"], te["case_index"],
                          te["case_label"], te.get("patient_ids"), n_boot=n_boot, seed=seed)
    out.update(C=probe.C, probe=probe)
    return out


# ---------------------------------------------------------------------------------------------
# Which layers changed (Raghu et al. 2019, "Transfusion", NeurIPS)
# ---------------------------------------------------------------------------------------------

_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _block_of(key: str) -> str:
    k = key[len("encoder."):] if key.startswith("encoder.") else key
    top = k.split(".")[0]
    if top in ("conv1", "bn1"):
        return "stem"
    if top.startswith("layer"):
        return top
    return "head" if key.startswith("head.") or top in ("fc", "head") else top


def layer_change(before, after, by: str = "block") -> pd.DataFrame:
    """Relative change of the weights, ||W_after - W_before||_F / ||W_before||_F, per block
    (stem, layer1-4, head; ``by="block"``) or per parameter (``by="param"``); BatchNorm running
    statistics are left out. Raghu et al. 2019 found that fine-tuning from ImageNet changes the
    lowest layers least: the "reuse" is mostly there."""
    if by not in ("block", "param"):
        raise ValueError(f"by must be 'block' or 'param', got {by!r}")
    a = before.state_dict() if isinstance(before, nn.Module) else before
    b = after.state_dict() if isinstance(after, nn.Module) else after
    rows = []
    for k, w0 in a.items():
        if k.endswith(_BUFFER_SUFFIXES) or not torch.is_floating_point(w0):
            continue
        if k not in b:
            raise KeyError(f"layer_change: {k} is in 'before' but not in 'after'")
        w0 = w0.detach().float().cpu()
        w1 = b[k].detach().float().cpu()
        if w0.shape != w1.shape:
            raise ValueError(f"layer_change: {k} has shape {tuple(w0.shape)} vs {tuple(w1.shape)}")
        rows.append({"block": _block_of(k), "param": k, "diff2": float(((w1 - w0) ** 2).sum()),
                     "norm2": float((w0 ** 2).sum()), "n_params": w0.numel()})
    df = pd.DataFrame(rows)
    if df.empty:
        raise ValueError("layer_change: no floating-point parameters to compare")
    if by == "param":
        df["rel_change"] = np.sqrt(df["diff2"] / df["norm2"].where(df["norm2"] > 0))
        return df[["block", "param", "n_params", "rel_change"]]
    g = df.groupby("block", sort=False).agg(diff2=("diff2", "sum"), norm2=("norm2", "sum"),
                                            n_params=("n_params", "sum")).reset_index()
    g["rel_change"] = np.sqrt(g["diff2"] / g["norm2"].where(g["norm2"] > 0))
    return g[["block", "n_params", "rel_change"]]
