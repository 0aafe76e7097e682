"""Evaluation shared by notebooks 01-05: AUROC with bootstrap confidence intervals at slice and
patient level, a frozen-encoder linear probe, and how much each layer changed in fine-tuning.

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

#: The metric keys of a classification results row (DESIGN.md "Contracts").
METRIC_KEYS = ("auroc_slice", "auroc_slice_lo", "auroc_slice_hi",
               "auroc_patient", "auroc_patient_lo", "auroc_patient_hi")


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def bootstrap_auroc(y, score, n_boot: int = 1000, seed: int = 0, groups=None,
                    chunk: int = 200) -> np.ndarray:
    """``n_boot`` bootstrap replicates of the AUROC (NaN where a replicate has one class only).

    With ``groups`` (e.g. the patient of each slice) whole groups are resampled with
    replacement (cluster bootstrap: slices of one patient are not independent, so resampling
    slices would make the interval too narrow). Resampling is expressed as weights
    w_i = (times item i's group was drawn), and the AUROC as the weighted Mann-Whitney statistic

        AUC = sum_{i pos, j neg} w_i w_j ([s_i > s_j] + 0.5 [s_i = s_j]) / (W_pos W_neg),

    computed for a block of replicates at once from the scores sorted once. Hand-written because
    calling ``sklearn.metrics.roc_auc_score`` per replicate is ~100x slower; the tests check
    every replicate against it.
    """
    y = _np(y).astype(bool).ravel()
    s = _np(score).astype(np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    if groups is None:
        gidx = np.arange(len(y))
    else:
        _, gidx = np.unique(_np(groups), return_inverse=True)
        if len(gidx) != len(y):
            raise ValueError(f"groups has {len(gidx)} entries for {len(y)} labels")
    n_groups = int(gidx.max()) + 1 if len(gidx) else 0
    _, inv = np.unique(s, return_inverse=True)  # tie blocks, ascending score
    n_unique = int(inv.max()) + 1 if len(inv) else 0
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=b)
        w = counts[:, gidx].astype(np.float64)                     # (b, n)
        flat = (np.arange(b)[:, None] * n_unique + inv[None, :]).ravel()
        pos = np.bincount(flat, weights=(w * y).ravel(), minlength=b * n_unique).reshape(b, n_unique)
        neg = np.bincount(flat, weights=(w * ~y).ravel(), minlength=b * n_unique).reshape(b, n_unique)
        below = np.cumsum(neg, axis=1) - neg
        num = (pos * (below + 0.5 * neg)).sum(1)
        den = pos.sum(1) * neg.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + b] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return out


def auroc_with_ci(y, score, n_boot: int = 1000, seed: int = 0, groups=None,
                  alpha: float = 0.05) -> tuple[float, float, float]:
    """(AUROC, lower, upper): the point estimate from ``sklearn.metrics.roc_auc_score`` and a
    percentile bootstrap interval (Efron & Tibshirani 1993) at level 1 - ``alpha``, resampling
    ``groups`` (patients) when given. NaN if ``y`` has one class only."""
    y = _np(y).ravel()
    s = _np(score).ravel()
    auc = _auroc(y, s)
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
    s = _np(slice_scores).astype(np.float64).ravel()
    ci = _np(case_index).astype(np.int64).ravel()
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
    scores = _np(scores).ravel()
    ci = _np(case_index).astype(np.int64).ravel()
    ys = _np(slice_label).ravel()
    yc = _np(case_label).ravel()
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
    from .train import predict

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

@torch.no_grad()
def extract_features(encoder: nn.Module, images, batch_size: int | None = None, device=None,
                     progress: bool = False) -> np.ndarray:
    """(N, F) float32 features of a frozen ``encoder`` (eval mode: BatchNorm uses its running
    statistics, no dropout)."""
    from tqdm.auto import tqdm

    from .repro import get_device

    from .train import eval_batch_size

    device = torch.device(device) if device is not None else get_device()
    batch_size = eval_batch_size(device, batch_size)
    images = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    was_training = encoder.training
    encoder.eval().to(device)
    feats = []
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc="features", disable=not progress, leave=False):
        xb = images[i:i + batch_size].to(device, non_blocking=True).float()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                            enabled=device.type == "cuda"):
            feats.append(encoder(xb).float())
    encoder.train(was_training)
    if not feats:
        return np.zeros((0, getattr(encoder, "out_features", 0)), np.float32)
    return torch.cat(feats).cpu().numpy().astype(np.float32)


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

    ytr = _np(train_labels).ravel() > 0
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
        yv = _np(val_labels).ravel() > 0
        for C in Cs:
            p = make(C).fit(train_features, ytr)
            scores[C] = _auroc(yv, p.predict_proba(val_features)[:, 1])
        valid = {c: v for c, v in scores.items() if not np.isnan(v)}
        best = max(valid, key=valid.get) if valid else Cs[len(Cs) // 2]
    else:
        best = Cs[len(Cs) // 2]
    pipe = make(best).fit(train_features, ytr)
    return ProbeResult(pipeline=pipe, C=float(best), val_auroc=scores.get(best, float("nan")),
                       scores=scores)


def linear_probe(encoder: nn.Module, train, val, test, *, Cs: Sequence[float] = (0.01, 0.1, 1.0),
                 device=None, batch_size: int | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Frozen-encoder arm: features of ``encoder`` -> :func:`fit_linear_probe` on ``train``
    (C chosen on ``val``) -> :func:`evaluate_scores` on ``test``. Returns the metrics dict plus
    ``C`` and ``probe`` (the :class:`ProbeResult`)."""
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
