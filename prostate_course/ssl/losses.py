"""Contrastive losses on two views of a batch: NT-Xent (SimCLR), DCL and DCLW.

Every loss here is a small module with one call signature, shared with notebook 04's
metadata-aware losses::

    loss(z_a, z_b, **batch_meta) -> scalar

``z_a``, ``z_b``: (B, d) projections of two views of the same B images (row i of both is the
same image); they are L2-normalised here (again: normalising is idempotent), so callers may pass
either. ``batch_meta``: per-sample tensors of the batch (e.g. ``patient_age``), which the losses
of this module ignore. Notation: the 2B views are stacked as z = [z_a; z_b], s_ik = z_i . z_k
(cosine similarity), i' is the other view of anchor i, t the temperature; every loss is the mean
over the 2B anchors. Log-sum-exps are computed with ``torch.logsumexp`` (stable for small t).

:class:`NTXentLoss` - Chen et al. 2020, "A simple framework for contrastive learning of visual
representations" (SimCLR), ICML::

    l_i = -s_ii'/t + log sum_{k != i} exp(s_ik/t)              (the positive stays in the sum)

:class:`DCLLoss` - Yeh et al. 2022, "Decoupled contrastive learning", ECCV: the positive is
removed from the denominator, which removes the "negative-positive coupling" that makes NT-Xent
need large batches::

    l_i = -s_ii'/t + log sum_{k not in {i, i'}} exp(s_ik/t)

:class:`DCLWLoss` - the same paper's weighted variant: the positive term is multiplied by a von
Mises-Fisher weight that up-weights hard (dissimilar) positive pairs::

    w_i = 2 - exp(s_ii'/sigma) / mean_j exp(s_jj'/sigma) = 2 - B softmax_j(s_jj'/sigma)_i,  sigma 0.5
    l_i = -w_i s_ii'/t + log sum_{k not in {i, i'}} exp(s_ik/t)

(mean_j w_j = 1; as in the authors' code the weight is not detached and not clipped, so a very
easy pair may get w < 0). The negatives of DCL form ONE log-sum-exp over both views; a known
third-party implementation (lightly's ``DCLLoss`` before 1.5.21) summed two separate
log-sum-exps (same-view and other-view negatives), which is a different loss; the tests compare
with a dense loop written from the formula. The authors' code sums the two view directions;
here both are averaged (a factor 2, which only rescales the learning rate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def stack_views(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """[z_a; z_b] as one (2B, d) tensor, L2-normalised, in float32 (float64 kept).

    Checks what every two-view loss needs: two (B, d) tensors of the same shape with B >= 2."""
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(f"two-view losses take two (B, d) tensors of the same shape, got "
                         f"{tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if z_a.shape[0] < 2:
        raise ValueError(f"a contrastive batch needs at least 2 images (negatives), got {z_a.shape[0]}")
    z = torch.cat([z_a, z_b])
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()                                # half / bfloat16 under autocast
    return F.normalize(z, dim=1)


def positive_index(n_views: int, device=None) -> torch.Tensor:
    """(2B,) index i' of the other view of each anchor i in [z_a; z_b]: i + B, then i - B."""
    b = n_views // 2
    return torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(device)


def similarity_logits(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """(2B, 2B) s_ik / t with the self-similarities s_ii set to -inf (never in a sum)."""
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    return logits.masked_fill(eye, float("-inf"))


class TwoViewLoss(nn.Module):
    """Base class: checks the inputs, normalises them and calls :meth:`views_loss` on the
    stacked (2B, d) views. Subclasses in notebook 04 add the metadata they read from
    ``batch_meta``; the ones here ignore it."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, **batch_meta) -> torch.Tensor:
        return self.views_loss(stack_views(z_a, z_b), **batch_meta)

    def views_loss(self, z: torch.Tensor, **batch_meta) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class NTXentLoss(TwoViewLoss):
    """NT-Xent, the SimCLR loss (Chen et al. 2020): softmax cross-entropy of each anchor over
    the other 2B - 1 views, the positive included in the denominator (module docstring). Equal
    to MONAI's ``ContrastiveLoss`` with the same temperature."""

    def views_loss(self, z, **batch_meta):
        logits = similarity_logits(z, self.temperature)
        pos = positive_index(len(z), z.device)
        rows = torch.arange(len(z), device=z.device)
        return (torch.logsumexp(logits, dim=1) - logits[rows, pos]).mean()


class DCLLoss(TwoViewLoss):
    """Decoupled contrastive loss (Yeh et al. 2022): NT-Xent without the positive in the
    denominator; one log-sum-exp over the 2B - 2 negatives of each anchor (module docstring).
    ``weight_fn(z_a, z_b) -> (B,)`` multiplies the positive term (DCLW: :class:`DCLWLoss`)."""

    def __init__(self, temperature: float = 0.1, weight_fn=None):
        super().__init__(temperature)
        self.weight_fn = weight_fn

    def positive_weight(self, z: torch.Tensor) -> torch.Tensor | None:
        if self.weight_fn is None:
            return None
        b = len(z) // 2
        w = self.weight_fn(z[:b], z[b:])
        return torch.cat([w, w])

    def views_loss(self, z, **batch_meta):
        logits = similarity_logits(z, self.temperature)
        pos = positive_index(len(z), z.device)
        rows = torch.arange(len(z), device=z.device)
        positive = logits[rows, pos]
        negatives = logits.index_put((rows, pos), torch.tensor(float("-inf"), device=z.device, dtype=z.dtype))
        w = self.positive_weight(z)
        pos_term = -positive if w is None else -w * positive
        return (pos_term + torch.logsumexp(negatives, dim=1)).mean()


def vmf_weight(z_a: torch.Tensor, z_b: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """DCLW's weight of each positive pair, w_i = 2 - B softmax_j(s_jj'/sigma)_i (Yeh et al.
    2022): mean 1, above 1 for pairs less similar than the batch's typical pair."""
    s = (z_a * z_b).sum(dim=1)
    return 2 - len(s) * torch.softmax(s / sigma, dim=0)


class DCLWLoss(DCLLoss):
    """DCL with the von Mises-Fisher positive weight :func:`vmf_weight` (``sigma`` 0.5 as in
    the paper)."""

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        super().__init__(temperature, weight_fn=lambda a, b: vmf_weight(a, b, sigma))
        self.sigma = float(sigma)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, sigma={self.sigma}"


__all__ = ["TwoViewLoss", "NTXentLoss", "DCLLoss", "DCLWLoss", "vmf_weight", "stack_views",
           "positive_index", "similarity_logits"]
