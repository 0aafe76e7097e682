"""Batch samplers for the training engine: which items form each batch of an epoch.

A sampler returns one epoch's batches at once as a (steps, batch_size) tensor of indices, drawn
on the CPU from the engine's seeded generator (one transfer to the device per epoch, none per
step). Drawing by index from tensors already in memory replaces DataLoader workers: see
docs/ARCHITECTURE.md "Data on the device".
"""
from __future__ import annotations

import math

import torch


class RandomBatches:
    """Concatenated random permutations of the ``n`` items, cut into batches: every item is seen
    once per pass, and an epoch longer than one pass starts the next permutation."""

    def __call__(self, n: int, steps: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
        need = steps * batch_size
        reps = math.ceil(need / n)
        idx = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:need]
        return idx.view(steps, batch_size)


class BalancedBatches:
    """Draws with replacement with probability 1 / (2 n_class): in expectation half of every
    batch is positive, however rare the positives (an alternative to a weighted loss)."""

    def __init__(self, labels):
        self.labels = torch.as_tensor(labels).cpu() > 0

    def __call__(self, n: int, steps: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
        if len(self.labels) != n:
            raise ValueError(f"BalancedBatches has {len(self.labels)} labels for {n} items")
        n_pos = int(self.labels.sum())
        w = torch.where(self.labels, 0.5 / max(n_pos, 1), 0.5 / max(n - n_pos, 1)).double()
        return torch.multinomial(w, steps * batch_size, replacement=True, generator=g).view(steps, batch_size)


__all__ = ["RandomBatches", "BalancedBatches"]
