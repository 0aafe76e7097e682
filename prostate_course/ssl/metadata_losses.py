"""Metadata-aware contrastive losses: y-Aware InfoNCE and the conditional contrastive loss with
PI-RADS confidence. Same call as every contrastive loss of the course::

    loss(z_a, z_b, **batch_meta) -> scalar

``z_a``, ``z_b``: (B, d) projections of two views of the same B exams (normalised here to the
unit sphere: a no-op for projections that already are); ``batch_meta``: per-exam tensors of the
batch (B,), NaN where a value is missing; keys a loss does not use are ignored. The 2B views are
stacked as ``[z_a; z_b]``: view p belongs to exam p mod B, and ``s_pq = z_p . z_q``.

Both losses are a weighted contrast: a (2B, 2B) weight matrix ``W`` (zero diagonal) says how
strongly view p should be pulled towards view q. The augmented pair (the two views of one exam)
always has weight 1. ``weights(...)`` returns the row-normalised matrix, ``W~ = W / W.sum(1)``
(ROWS: the reference code of y-Aware divides by ``weights.sum(axis=1)`` with broadcasting, which
normalises columns; for a symmetric W that gives each *anchor* the wrong total weight whenever
two anchors have different row sums).

Both subclass :class:`prostate_course.ssl.losses.TwoViewLoss` (input checks, normalisation);
the similarity and the loss are computed in float32 (float64 kept) outside autocast, whatever the
AMP setting.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .losses import TwoViewLoss, similarity_logits, stack_views


# ------------------------------------------------------------------------------- helpers

def _meta(batch_meta: dict, key: str, n: int, device, dtype=torch.float32) -> torch.Tensor:
    if key not in batch_meta:
        raise KeyError(f"the batch has no metadata {key!r} (it has: {sorted(batch_meta) or 'none'}); "
                       f"gather it with the step's meta_keys")
    v = torch.as_tensor(batch_meta[key], device=device).to(dtype).reshape(-1)
    if v.numel() != n:
        raise ValueError(f"metadata {key!r} has {v.numel()} values for a batch of {n} exams")
    return v


def _to_views(w: torch.Tensor) -> torch.Tensor:
    """(B, B) exam weights with 1 on the diagonal -> (2B, 2B) view weights, self-pairs 0."""
    b = w.shape[0]
    wv = w.repeat(2, 2)
    return wv * (1.0 - torch.eye(2 * b, device=w.device, dtype=w.dtype))


def row_normalise(w: torch.Tensor) -> torch.Tensor:
    """``W~_pq = W_pq / sum_q W_pq`` (rows: every anchor's weights sum to 1)."""
    return w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)


class _MetadataLoss(TwoViewLoss):
    """A two-view loss whose weights come from the batch's metadata: ``weights`` is computed
    from the (B, d) projections' batch and its metadata, the loss outside autocast."""

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, **batch_meta) -> torch.Tensor:
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            z = stack_views(z_a, z_b)
            return self.views_loss(z, **batch_meta)

    def exam_weights(self, z: torch.Tensor, **batch_meta) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def weights(self, z_a: torch.Tensor, z_b: torch.Tensor | None = None, **batch_meta) -> torch.Tensor:
        """The row-normalised (2B, 2B) weight matrix W~ of the batch of ``z_a`` (B, d)."""
        return row_normalise(_to_views(self.exam_weights(z_a, **batch_meta)))


# ---------------------------------------------------------------------------- y-Aware
def metadata_kernel(y: torch.Tensor, sigma, kernel: str = "rbf") -> torch.Tensor:
    """(B, B) exam weights from metadata ``y`` (B, V), NaN = missing.

    ``kernel="rbf"``: w_ij = prod_v exp(-(y_iv - y_jv)^2 / (2 sigma_v^2)) over the variables
    both exams have; ``"equal"``: the 0/1 kernel prod_v 1[y_iv = y_jv] (discrete labels). A
    pair with no variable in common has weight 0; an exam with itself has weight 1 (the
    augmented pair is the same exam, whatever is missing).
    """
    if y.ndim == 1:
        y = y[:, None]
    b, nv = y.shape
    present = torch.isfinite(y)
    both = present[:, None, :] & present[None, :, :]                # (B, B, V)
    d = torch.where(both, y[:, None, :] - y[None, :, :], torch.zeros((), device=y.device))
    if kernel == "rbf":
        s = torch.as_tensor(sigma, dtype=y.dtype, device=y.device).reshape(-1).expand(nv)
        if (s <= 0).any():
            raise ValueError(f"sigma must be > 0, got {s.tolist()}")
        w = torch.exp(-(d ** 2 / (2 * s ** 2)).sum(-1))
    elif kernel == "equal":
        w = (d == 0).all(-1).to(y.dtype)
    else:
        raise ValueError(f"kernel must be 'rbf' or 'equal', got {kernel!r}")
    w = torch.where(both.any(-1), w, torch.zeros((), device=y.device, dtype=y.dtype))
    return w.fill_diagonal_(1.0)


class YAwareInfoNCE(_MetadataLoss):
    """y-Aware InfoNCE (Dufumier et al., MICCAI 2021, "Contrastive learning with continuous
    proxy meta-data for 3D MRI classification").

        w_pq = K(y_p, y_q) (:func:`metadata_kernel`), W~ = W / W.sum(axis=1)   (rows)
        L = -(1 / 2B) sum_p sum_{q != p} W~_pq log[ exp(s_pq / t) / sum_{k != p} exp(s_pk / t) ]

    The weights sit outside the log. Limits: sigma -> 0 with distinct values gives NT-Xent
    (only the augmented pair keeps weight); ``kernel="equal"`` on a discrete label gives
    supervised contrastive (Khosla et al., NeurIPS 2020; "L_out"), unannotated exams (NaN) keeping
    only their augmented pair. ``variables``: the metadata keys (standardised values, so that one
    ``sigma`` in standard deviations fits each; a sequence gives one bandwidth per variable).
    Paper: sigma 5 years on raw age, t 0.1, batch 64.
    """

    def __init__(self, variables: Sequence[str] | str, sigma=1.0, temperature: float = 0.1,
                 kernel: str = "rbf"):
        super().__init__(temperature)
        self.variables = [variables] if isinstance(variables, str) else list(variables)
        if not self.variables:
            raise ValueError("y-Aware InfoNCE needs at least one metadata variable")
        self.sigma, self.kernel = sigma, kernel
        metadata_kernel(torch.zeros(2, len(self.variables)), sigma, kernel)   # validates now

    def exam_weights(self, z: torch.Tensor, **batch_meta) -> torch.Tensor:
        """(B, B) exam weights (:func:`metadata_kernel`) for the batch of ``z`` (B, d)."""
        dt = torch.promote_types(z.dtype, torch.float32)
        y = torch.stack([_meta(batch_meta, k, z.shape[0], z.device, dt) for k in self.variables], dim=1)
        return metadata_kernel(y, self.sigma, self.kernel)

    def views_loss(self, z: torch.Tensor, **batch_meta) -> torch.Tensor:
        w = self.weights(z[: len(z) // 2], **batch_meta)
        logits = similarity_logits(z, self.temperature)          # self-pairs -inf
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
        return -(w * log_prob.masked_fill(eye, 0.0)).sum(1).mean()

    def extra_repr(self) -> str:
        return (f"variables={self.variables}, sigma={self.sigma}, temperature={self.temperature}, "
                f"kernel={self.kernel!r}")


# ---------------------------------------------------------------- conditional (PI-RADS)
def conditional_kernel(labels: torch.Tensor, conf: torch.Tensor | None = None) -> torch.Tensor:
    """(B, B) exam weights of the conditional loss (Ruppli et al. 2023):

        w_ij = 1[y_i = y_j] min(c_i, c_j)   for annotated i != j;   w_ii = 1;

    unannotated exams (label NaN or negative) get weight 0 with everyone else. ``conf=None``:
    c = 1 for every annotated exam (no confidence weighting).
    """
    y = labels.reshape(-1)
    y = y if y.is_floating_point() else y.float()
    ann = torch.isfinite(y) & (y >= 0)
    c = torch.ones_like(y) if conf is None else conf.to(y.dtype).reshape(-1)
    if conf is not None and not (torch.isfinite(c[ann]) & (c[ann] >= 0)).all():
        raise ValueError("every annotated exam needs a finite confidence >= 0")
    same = ann[:, None] & ann[None, :] & (y[:, None] == y[None, :])
    w = torch.where(same, torch.minimum(c[:, None], c[None, :]), torch.zeros((), device=y.device))
    return w.fill_diagonal_(1.0)


class ConditionalContrastive(_MetadataLoss):
    """Decoupled conditional contrastive loss with variable metadata (Ruppli et al., MILLanD /
    MICCAI 2023, arXiv 2308.09542): PI-RADS from several reports, each exam's majority label y^
    weighted by the readers' agreement c = 2 (p_maj - 1/2); unannotated exams in the same loss.

    Exam weights :func:`conditional_kernel`; positives of view p: P(p) = {q != p: w_pq > 0}
    (its augmented view and the views of same-label annotated exams), W~ = W / W.sum(axis=1).

    ``form="infonce"`` (decoupled InfoNCE; the denominator holds only non-positives, Yeh et al.
    ECCV 2022)::

        l_p = -sum_{q in P(p)} W~_pq [ s_pq / t - log sum_{k not in P(p) u {p}} exp(s_pk / t) ]

    With no annotated exam it is DCL. Anchors without any negative (every other view a
    positive) are left out of the mean.

    ``form="align_unif"`` (the authors' code: alignment + uniformity, Wang & Isola 2020)::

        L_align = (1 / 2B) sum_p sum_q W~_pq ||z_p - z_q||^2
        L_unif  = log [ sum_p sum_{q in R(p)} exp(-t_u ||z_p - z_q||^2) / sum_p |R(p)| ]

    R(p), the views p repels: ``uniformity="conditional"``: the views of other exams with
    w_pq = 0 (an annotated anchor repels the other label and the unannotated exams, an
    unannotated anchor every other exam); ``"global"``: the views of every other exam. Without
    any repelled pair L_unif = 0.

    Label and confidence come from the metadata keys ``label_key`` / ``conf_key``;
    ``use_confidence=False`` sets c = 1 (every annotated majority fully trusted).

    Where this departs from the authors' released code (camilleruppli/decoupled_ccl,
    ``ConditionalUniformAlignLoss``; the paper's equations were not available to check):
    ``"infonce"`` is this course's decoupled-InfoNCE reading, not in that code. In
    ``"align_unif"`` the alignment is the same up to a factor 1/2; their uniformity repels with
    soft weights max(W) - W_pq (same-label pairs a little too), drops unannotated exams from an
    annotated anchor's row (here they are repelled), normalises each annotated row, and uses
    the pairs within one view (here all pairs of views of different exams).
    """

    def __init__(self, temperature: float = 0.1, *, use_confidence: bool = True,
                 form: str = "infonce", uniformity: str = "conditional", unif_t: float = 2.0,
                 unif_weight: float = 1.0, label_key: str = "pirads_majority",
                 conf_key: str = "pirads_conf"):
        super().__init__(temperature)
        if form not in ("infonce", "align_unif"):
            raise ValueError(f"form must be 'infonce' or 'align_unif', got {form!r}")
        if uniformity not in ("conditional", "global"):
            raise ValueError(f"uniformity must be 'conditional' or 'global', got {uniformity!r}")
        self.use_confidence, self.form = use_confidence, form
        self.uniformity, self.unif_t, self.unif_weight = uniformity, float(unif_t), float(unif_weight)
        self.label_key, self.conf_key = label_key, conf_key

    def exam_weights(self, z: torch.Tensor, **batch_meta) -> torch.Tensor:
        """(B, B) exam weights (:func:`conditional_kernel`) for the batch of ``z`` (B, d)."""
        n, dt = z.shape[0], torch.promote_types(z.dtype, torch.float32)
        y = _meta(batch_meta, self.label_key, n, z.device, dt)
        c = _meta(batch_meta, self.conf_key, n, z.device, dt) if self.use_confidence else None
        return conditional_kernel(y, c)

    def views_loss(self, z: torch.Tensor, **batch_meta) -> torch.Tensor:
        n = z.shape[0]
        w_raw = _to_views(self.exam_weights(z[: n // 2], **batch_meta))
        w = row_normalise(w_raw)
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        if self.form == "infonce":
            return self._infonce(z, w, (w_raw <= 0) & ~eye)
        other = ~(eye | (_to_views(torch.eye(n // 2, device=z.device)) > 0))   # other exams
        rep = other & (w_raw <= 0) if self.uniformity == "conditional" else other
        return self._align_unif(z, w, rep)

    def _infonce(self, z, w, neg):
        logits = (z @ z.T) / self.temperature
        has_neg = neg.any(1)
        if not has_neg.any():
            return (z * 0).sum()
        masked = logits.masked_fill(~neg, -math.inf)
        # rows without negatives: finite filler (their gradient would be NaN), left out below
        masked = torch.where(has_neg[:, None], masked, torch.zeros_like(masked))
        lse = torch.logsumexp(masked, dim=1)
        pos = (w * logits).sum(1)
        return (lse - pos)[has_neg].mean()

    def _align_unif(self, z, w, rep):
        d2 = (2 - 2 * (z @ z.T)).clamp_min(0)          # ||z_p - z_q||^2 on the unit sphere
        align = (w * d2).sum(1).mean()
        if not rep.any():
            return align
        e = torch.exp(-self.unif_t * d2).masked_fill(~rep, 0).sum()
        return align + self.unif_weight * torch.log(e / rep.sum())

    def extra_repr(self) -> str:
        return (f"form={self.form!r}, temperature={self.temperature}, use_confidence="
                f"{self.use_confidence}, uniformity={self.uniformity!r}, keys=({self.label_key!r}, "
                f"{self.conf_key!r})")


def supcon_majority(temperature: float = 0.1, label_key: str = "pirads_majority") -> YAwareInfoNCE:
    """Naive supervised contrastive on the majority PI-RADS (Khosla et al. 2020): every
    annotated majority fully trusted, positives in the denominator; y-Aware with the 0/1
    kernel. Unannotated exams keep only their augmented pair."""
    return YAwareInfoNCE([label_key], temperature=temperature, kernel="equal")


__all__ = ["YAwareInfoNCE", "ConditionalContrastive", "metadata_kernel", "conditional_kernel",
           "row_normalise", "supcon_majority"]
