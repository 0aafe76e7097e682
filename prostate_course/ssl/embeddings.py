"""Frozen features and their maps: what did the encoder learn to put together?

- :func:`embed` - an encoder's frozen 512-d features (batched, :mod:`prostate_course.inference`);
- :func:`sample_for_map` - which slices to draw (t-SNE is quadratic-ish: a few thousand points),
  every positive kept up to half the sample so the rare lesion slices show;
- :func:`tsne` - t-SNE (van der Maaten & Hinton 2008, JMLR) with scikit-learn, after a PCA to 50
  dimensions (the usual speed-up), seeded;
- :func:`neighbour_agreement` - the share of each point's k nearest neighbours (cosine) that
  share its label, a number to read beside the picture: t-SNE keeps neighbourhoods but not
  distances or cluster sizes, so a map alone proves little (Wattenberg et al. 2016, "How to use
  t-SNE effectively", Distill).

The read-outs of frozen features (linear probe, k-NN) are
:func:`prostate_course.evaluate.fit_linear_probe` / :func:`~prostate_course.evaluate.fit_knn_probe`,
and the protocol's ``"linear_probe"`` / ``"knn"`` arms.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..evaluate import to_numpy
from ..inference import extract_features


def embed(encoder: nn.Module, images, device=None, batch_size: int | None = None) -> np.ndarray:
    """(N, F) float32 frozen features of ``encoder`` (eval mode, no gradients)."""
    return extract_features(encoder, images, batch_size=batch_size, device=device)


def sample_for_map(labels, n: int = 1500, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``n`` items: the positives of ``labels`` (up to ``n // 2``,
    at random beyond that) and random negatives for the rest. Seeded."""
    y = to_numpy(labels).ravel() > 0
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    k_pos = min(len(pos), n // 2)
    k_neg = min(len(neg), n - k_pos)
    pick = np.concatenate([rng.choice(pos, k_pos, replace=False), rng.choice(neg, k_neg, replace=False)])
    return np.sort(pick)


def tsne(features, seed: int = 0, perplexity: float = 30.0, pca_dims: int = 50,
         iterations: int = 1000) -> np.ndarray:
    """(N, 2) t-SNE map of ``features`` (PCA to ``pca_dims`` first, not standardised: scaling
    every feature to unit variance would inflate the many near-silent ones), seeded; the
    perplexity is capped below N / 3 for small sets; ``iterations`` >= 250 (fewer: faster,
    rougher maps)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if len(x) < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {len(x)}")
    if not np.isfinite(x).all():
        raise ValueError("t-SNE: the features contain NaN or inf (broken encoder weights?)")
    k = min(pca_dims, x.shape[1], len(x))
    if k < x.shape[1]:
        x = PCA(n_components=k, random_state=seed).fit_transform(x)
    perp = float(min(perplexity, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto",
                max_iter=max(250, int(iterations)), random_state=seed).fit_transform(x).astype(np.float32)


def neighbour_agreement(features, labels, k: int = 10) -> float:
    """Mean over points of the share of their ``k`` nearest neighbours (cosine, the point
    itself left out) with the same label; compare it with the share expected by chance,
    sum_c p_c^2. Points with a missing (NaN) label are left out."""
    from sklearn.neighbors import NearestNeighbors

    y = np.asarray(to_numpy(labels), dtype=float).ravel()
    keep = ~np.isnan(y)
    f = np.asarray(features, dtype=np.float64)[keep]
    y = y[keep]
    if len(y) <= k:
        raise ValueError(f"neighbour_agreement needs more than k={k} labelled points, got {len(y)}")
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    _, nn_idx = NearestNeighbors(n_neighbors=k + 1).fit(f).kneighbors(f)
    return float((y[nn_idx[:, 1:]] == y[:, None]).mean())


def chance_agreement(labels) -> float:
    """sum_c p_c^2: :func:`neighbour_agreement` of a map that ignores the labels."""
    y = np.asarray(to_numpy(labels), dtype=float).ravel()
    y = y[~np.isnan(y)]
    _, counts = np.unique(y, return_counts=True)
    p = counts / counts.sum()
    return float((p ** 2).sum())


__all__ = ["embed", "sample_for_map", "tsne", "neighbour_agreement", "chance_agreement"]
