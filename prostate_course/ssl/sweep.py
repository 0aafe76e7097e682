"""The batch-size x temperature sweep of notebook 03, and linear contrasts of arms with a paired
patient bootstrap.

Yeh et al. (2022, "Decoupled contrastive learning", ECCV) claim that removing the positive from
the denominator makes the loss much less sensitive to the batch size: NT-Xent's gradient on a
positive pair is scaled by (1 - its softmax share), which small batches shrink (the coupling
term, their section 3). The sweep tests the claim with short pretraining runs that all see the
same number of images (``pairs`` per run, steps = pairs / batch size, as the paper compares at
equal epochs), each read out with the protocol's linear probe.

A claim like "DCL loses less than SimCLR when the batch shrinks" is a *difference of
differences* of four AUROCs measured on the same test patients. :func:`linear_contrast` gives
any such combination sum_k c_k AUROC_k its 95 % interval with one patient resample shared by
every arm (and every seed, averaged inside each replicate, as in
:func:`prostate_course.compare.paired_deltas`).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from torch import nn

from ..compare import check_scores
from ..evaluate import cluster_weights, weighted_auroc


def arm_name(method: str, batch_size: int, temperature: float) -> str:
    """The name of one sweep run, e.g. ``"simclr b16 t0.1"``."""
    return f"{method} b{int(batch_size)} t{temperature:g}"


@dataclass
class SweepRun:
    method: str
    batch_size: int
    temperature: float
    steps: int
    seconds: float
    history: pd.DataFrame = field(repr=False)
    encoder: nn.Module | None = field(repr=False)
    checkpoint: Path | None = None     # where the encoder was written (then ``encoder`` is None)

    @property
    def name(self) -> str:
        return arm_name(self.method, self.batch_size, self.temperature)


def run_sweep(methods: Sequence[str], batch_sizes: Sequence[int], temperatures: Sequence[float],
              slices, *, pairs: int, seed: int = 0, device=None, progress: bool = True,
              checkpoint_dir=None, **pretrain_kw) -> list[SweepRun]:
    """One short pretraining per (method, batch size, temperature), each seeing ``pairs``
    images (two views each): steps = max(1, round(pairs / batch_size)).

    ``checkpoint_dir``: write each run's encoder there and keep only its path, so memory holds
    one encoder at a time (eight ResNet-18s are about 0.4 GB, a quarter of Binder's cap)."""
    from tqdm.auto import tqdm

    from ..models import save_checkpoint
    from ..repro import release_memory
    from .contrastive import pretrain_run

    grid = [(m, int(b), float(t)) for m in methods for b in batch_sizes for t in temperatures]
    out = []
    for m, b, t in tqdm(grid, desc="sweep", disable=not progress):
        steps = max(1, round(pairs / b))
        t0 = time.perf_counter()
        r = pretrain_run(m, slices, steps, seed=seed, device=device, batch_size=b, temperature=t,
                         epochs=min(steps, 4), progress=False, **pretrain_kw)
        run = SweepRun(m, r.config["batch_size"], t, r.fit.steps, round(time.perf_counter() - t0, 1),
                       r.history, r.encoder.cpu().eval())
        if checkpoint_dir is not None:
            path = Path(checkpoint_dir) / (run.name.replace(" ", "_") + ".pt")
            path.parent.mkdir(parents=True, exist_ok=True)
            run.checkpoint = save_checkpoint(run.encoder, path, seed=seed, steps=run.steps)
            run.encoder = None
        del r
        release_memory()
        out.append(run)
    return out


def sweep_arms(runs: Sequence[SweepRun], protocol: str = "linear_probe") -> list:
    """One protocol arm per sweep run (method = :func:`arm_name`), its encoder shared by
    every seed (loaded from the run's checkpoint when it has one)."""
    from ..protocol import Arm, from_checkpoint

    arms = []
    for r in runs:
        if r.checkpoint is not None:
            init = from_checkpoint(r.checkpoint)
        elif r.encoder is None:
            raise ValueError(f"sweep run {r.name!r} has neither an encoder nor a checkpoint")
        else:
            def init(_seed, enc=r.encoder):
                return copy.deepcopy(enc)

            init.seed_independent = True
        arms.append(Arm(r.name, init, protocol=protocol))
    return arms


def _arm_scores(scores: pd.DataFrame, method: str, protocol: str | None, fraction,
                cases: pd.Index) -> np.ndarray:
    d = scores[scores["method"] == method]
    if protocol is not None:
        d = d[d["protocol"] == protocol]
    if fraction is not None:
        d = d[np.isclose(d["label_fraction"].astype(float), float(fraction))]
    if d.empty:
        raise ValueError(f"no scores for arm {method!r} ({protocol}, fraction {fraction})")
    out = []
    for _, s in d.groupby("seed", sort=True, dropna=False):
        s = s.set_index("case_id")["score"]
        missing = cases.difference(s.index)
        if len(missing):
            raise ValueError(f"arm {method!r} has no score for {len(missing)} test cases, e.g. {list(missing[:3])}")
        out.append(s.reindex(cases).to_numpy(dtype=float))
    return np.stack(out)


def linear_contrast(scores: pd.DataFrame, coefficients: dict, *, protocol: str | None = None,
                    fraction=None, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """sum_k c_k AUROC(arm k) (each arm's AUROC averaged over its seeds) with a paired
    patient-cluster bootstrap interval: ``coefficients`` {method: c}, e.g. {"A": 1, "B": -1}
    is A - B, {"A16": 1, "A64": -1, "B16": -1, "B64": 1} a difference of differences.
    Returns {"estimate", "lo", "hi", "n_boot", "n_test_patients"}."""
    scores = check_scores(scores)
    names = list(coefficients)
    first = scores[scores["method"] == names[0]]
    cases = pd.Index(sorted(first["case_id"].unique()))
    meta = first.drop_duplicates("case_id").set_index("case_id").reindex(cases)
    labels = meta["label"].to_numpy(dtype=float) > 0
    mats = {m: _arm_scores(scores, m, protocol, fraction, cases) for m in names}
    ones = np.ones((1, len(cases)))
    est = sum(c * np.mean([weighted_auroc(labels, s, ones)[0] for s in mats[m]])
              for m, c in coefficients.items())
    reps = []
    for w in cluster_weights(meta["patient_id"].to_numpy(), n_boot, seed):
        reps.append(sum(c * np.mean([weighted_auroc(labels, s, w) for s in mats[m]], axis=0)
                        for m, c in coefficients.items()))
    reps = np.concatenate(reps) if reps else np.zeros(0)
    ok = reps[np.isfinite(reps)]
    lo, hi = (np.quantile(ok, [alpha / 2, 1 - alpha / 2]) if len(ok) else (np.nan, np.nan))
    return {"estimate": float(est), "lo": float(lo), "hi": float(hi), "n_boot": int(len(ok)),
            "n_test_patients": int(meta["patient_id"].nunique())}


def batch_sensitivity(scores: pd.DataFrame, methods: Sequence[str], small: int, large: int,
                      temperature: float, *, protocol: str = "linear_probe", fraction=1.0,
                      n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per method, AUROC(small batch) - AUROC(large batch) at ``temperature`` with its paired
    interval; then, for every other method against the first, the difference of those
    differences (positive: the other method loses less when the batch shrinks)."""
    rows = []
    name = {m: (arm_name(m, small, temperature), arm_name(m, large, temperature)) for m in methods}
    kw = dict(protocol=protocol, fraction=fraction, n_boot=n_boot, seed=seed)
    for m in methods:
        s, b = name[m]
        rows.append({"comparison": f"{m}: batch {small} - batch {large}",
                     **linear_contrast(scores, {s: 1, b: -1}, **kw)})
    ref = methods[0]
    for m in methods[1:]:
        (s, b), (rs, rb) = name[m], name[ref]
        rows.append({"comparison": f"({m} change) - ({ref} change)",
                     **linear_contrast(scores, {s: 1, b: -1, rs: -1, rb: 1}, **kw)})
    df = pd.DataFrame(rows)
    df["resolved"] = np.where(df["lo"] > 0, "above 0", np.where(df["hi"] < 0, "below 0", "not resolved"))
    return df


__all__ = ["arm_name", "SweepRun", "run_sweep", "sweep_arms", "linear_contrast", "batch_sensitivity"]
