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


class OnePerExamBatches:
    """At most one slice per exam in every batch, for contrastive pretraining: neighbouring
    slices of one exam are near-duplicates, and as each other's negatives they would teach the
    encoder to tell apart the same anatomy.

    ``case_index`` (N,): the exam of every item (a SliceSet's ``case_index``). Each batch takes
    ``batch_size`` distinct exams uniformly at random and one slice of each, uniformly among
    that exam's slices (so every exam weighs the same, whatever its number of slices). Drawn
    from the engine's seeded generator; ``batch_size`` may not exceed the number of exams.
    """

    def __init__(self, case_index):
        ci = torch.as_tensor(case_index).cpu().long()
        if ci.ndim != 1 or len(ci) == 0:
            raise ValueError(f"OnePerExamBatches needs a 1-D, non-empty case_index, got shape {tuple(ci.shape)}")
        order = torch.argsort(ci, stable=True)
        exams, counts = torch.unique_consecutive(ci[order], return_counts=True)
        self.order, self.counts = order, counts
        self.starts = torch.cumsum(counts, 0) - counts
        self.n_exams = len(exams)

    def __call__(self, n: int, steps: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
        if len(self.order) != n:
            raise ValueError(f"OnePerExamBatches has a case_index of {len(self.order)} items for {n} items")
        if batch_size > self.n_exams:
            raise ValueError(f"batch_size {batch_size} exceeds the {self.n_exams} exams: a batch "
                             f"with one slice per exam can hold at most {self.n_exams}")
        exams = torch.argsort(torch.rand(steps, self.n_exams, generator=g), dim=1)[:, :batch_size]
        within = (torch.rand(steps, batch_size, generator=g) * self.counts[exams]).long()
        within = torch.minimum(within, self.counts[exams] - 1)       # rand < 1, but be safe
        return self.order[self.starts[exams] + within]


__all__ = ["RandomBatches", "BalancedBatches", "OnePerExamBatches"]
