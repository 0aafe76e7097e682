"""Is the contrastive representation any good, and has it collapsed? Diagnostics on projections.

Wang & Isola 2020, "Understanding contrastive representation learning through alignment and
uniformity on the hypersphere", ICML: on L2-normalised projections z,

    alignment  = E_(i, i') || z_i - z_i' ||^2          (positive pairs; 0 = views map together)
    uniformity = log E_(i != j) exp(-2 || z_i - z_j ||^2)   (0 = all points equal, about -4 when
                                                          they spread over a high-dimensional sphere)

lower is better for both; contrastive losses trade one against the other. Collapse shows as
uniformity near 0 and a feature spread near 0:

    feature std = mean_d std_i(z_id)      (Chen & He 2021, "Exploring simple Siamese
                                           representation learning", CVPR: ~1/sqrt(d) when spread,
                                           0 when every image maps to one point)

and *dimensional* collapse (Jing et al. 2022, ICLR) as a small effective rank, exp of the entropy
of the normalised singular values (Roy & Vetterli 2007; Garrido et al. 2023 "RankMe", ICML).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _unit(z: torch.Tensor) -> torch.Tensor:
    z = z.float() if z.dtype not in (torch.float32, torch.float64) else z
    return F.normalize(z, dim=1)


def alignment(z_a: torch.Tensor, z_b: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """E || z_a,i - z_b,i ||^alpha over the pairs (rows) of two views, after normalising."""
    if z_a.shape != z_b.shape:
        raise ValueError(f"alignment needs two views of the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    return (_unit(z_a) - _unit(z_b)).norm(dim=1).pow(alpha).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E_(i < j) exp(-t || z_i - z_j ||^2) over the distinct pairs of rows, after normalising."""
    if len(z) < 2:
        raise ValueError("uniformity needs at least 2 points")
    return torch.pdist(_unit(z), p=2).pow(2).mul(-t).exp().mean().log()


def two_view_uniformity(z_a: torch.Tensor, z_b: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """The mean of the two views' uniformities (as Wang & Isola report it)."""
    return (uniformity(z_a, t) + uniformity(z_b, t)) / 2


def feature_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the standard deviation over the batch of the normalised z."""
    return _unit(z).std(dim=0).mean()


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy of sigma_k / sum sigma) of the centred (N, d) matrix: between 1 (one
    direction) and min(N, d) (all directions used equally)."""
    x = z.detach().double()
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s / s.sum().clamp_min(1e-300)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def batch_diagnostics(z_a: torch.Tensor, z_b: torch.Tensor) -> dict:
    """{"align", "uniform", "feature_std"} of one batch of two views, as detached scalar tensors
    (the training step logs them; the engine reads them once per epoch)."""
    with torch.no_grad():
        return {"align": alignment(z_a, z_b), "uniform": two_view_uniformity(z_a, z_b),
                "feature_std": feature_std(torch.cat([z_a, z_b]))}


def collapse_check(z: torch.Tensor, std_ratio_min: float = 0.2, rank_share_min: float = 0.05) -> dict:
    """Whether projections ``z`` (N, d) look collapsed: the feature std relative to the 1/sqrt(d)
    of a spread-out representation, and the effective rank relative to min(N, d). Returns the
    numbers, ``collapsed`` (bool) and a sentence saying why."""
    n, d = z.shape
    std = float(feature_std(z))
    ratio = std * math.sqrt(d)
    rank = effective_rank(_unit(z))
    share = rank / min(n, d)
    reasons = []
    if ratio < std_ratio_min:
        reasons.append(f"feature std {std:.3g} is {ratio:.2f} x 1/sqrt(d) (< {std_ratio_min}): "
                       "the images map to nearly one point")
    if share < rank_share_min:
        reasons.append(f"effective rank {rank:.1f} of {min(n, d)} possible (< {rank_share_min:.0%}): "
                       "the projections use very few directions")
    return {"feature_std": std, "std_ratio": ratio, "effective_rank": rank, "rank_share": share,
            "collapsed": bool(reasons),
            "message": "; ".join(reasons) if reasons else
            f"no collapse: feature std {ratio:.2f} x 1/sqrt(d), effective rank {rank:.1f} of {min(n, d)}"}


__all__ = ["alignment", "uniformity", "two_view_uniformity", "feature_std", "effective_rank",
           "batch_diagnostics", "collapse_check"]
