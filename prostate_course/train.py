"""The training engine: one loop for every notebook, with a pluggable step.

:func:`fit` owns what every training run needs and nothing task-specific:

- batches drawn *by index* from tensors already in memory (a sampler gives a whole epoch of
  indices at once), no DataLoader workers (docs/ARCHITECTURE.md "Data on the device");
- the optimiser (AdamW, Loshchilov & Hutter 2019) with cosine learning-rate decay, optionally
  after a linear warm-up;
- AMP by the rule of :mod:`prostate_course.amp` (bfloat16 on GPUs that have it natively,
  float16 with a gradient scaler on older ones, float32 on CPU), channels_last on CUDA;
- no host synchronisation inside an epoch: the step's logged values are summed on the device
  and read once per epoch;
- validation every ``val_every`` epochs, model selection on a monitored metric (the best
  weights are kept and restored), optional early stopping (``patience``);
- history as a DataFrame, a tqdm progress bar; seeded: on the CPU the same seed gives the same
  numbers (a test checks it).

What one step computes - the batch, its augmentation, the forward pass and the loss - is the
*step*'s job (:class:`Step`): :class:`prostate_course.steps.ClassificationStep` here; two-view
contrastive, restoration and segmentation steps in :mod:`prostate_course.ssl` and
:mod:`prostate_course.detection`. A step has four methods::

    data = step.prepare(data, device)          # tensors on the device, class weights, ...
    n = step.size(data)                        # number of items to sample from
    loss, logs = step.loss(model, data, idx)   # one batch (inside autocast); logs: scalar tensors
    metrics = step.validate(model, val, device, amp)   # {"val_loss": ..., ...} (floats)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from .amp import amp_dtype, autocast, needs_grad_scaler
from .repro import get_device, torch_generator
from .samplers import RandomBatches


class Step:
    """Base class of a training step (see the module docstring). ``monitors`` maps the metric
    names :meth:`validate` returns to "min" or "max"; ``default_monitor`` is used when a
    validation set is given and ``fit`` gets no ``monitor``."""

    monitors: dict = {"val_loss": "min"}
    default_monitor: str | None = "val_loss"
    #: set by the engine: inputs of 2D convolutions in channels_last memory format (CUDA)
    channels_last: bool = False

    def reset(self, seed: int) -> None:
        """Restart the step's own random streams (augmentation) from ``seed``."""

    def prepare(self, data, device):
        raise NotImplementedError

    def size(self, data) -> int:
        raise NotImplementedError

    def loss(self, model: nn.Module, data, idx: torch.Tensor):
        raise NotImplementedError

    def validate(self, model: nn.Module, val, device, amp) -> dict:
        return {}

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch as the network should receive it (channels_last for 4D tensors on CUDA)."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A training tensor on ``device``: moved onto a GPU when it fits in a third of the free
    memory, else kept in pinned host memory (batches are then copied per step); unchanged on
    CPU. Stored dtypes are kept (float16 images stay float16 until a batch is drawn)."""
    device = torch.device(device)
    if device.type == "cpu" or t.device == device:
        return t
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if t.numel() * t.element_size() > free / 3:
            return t.pin_memory() if t.device.type == "cpu" else t.cpu().pin_memory()
    return t.to(device, non_blocking=True)


def gather(t: torch.Tensor, idx: torch.Tensor, device) -> torch.Tensor:
    """``t[idx]`` on ``device`` (``t`` on the device, or in pinned host memory)."""
    if t.device == idx.device:
        return t[idx]
    return t[idx.to(t.device)].to(device, non_blocking=True)


@dataclass
class FitResult:
    """What :func:`fit` returns. ``best_state`` is a CPU copy of the weights at ``best_epoch``,
    loaded into the model (``restore_best``), or ``{}`` when the model keeps its last weights
    (no validation monitor, or ``restore_best=False``: ``best_epoch`` then only reports)."""

    history: pd.DataFrame
    best_state: dict = field(repr=False)
    best_epoch: int
    best_score: float
    monitor: str | None
    stopped_early: bool
    steps: int
    train_time_s: float
    info: dict = field(default_factory=dict)

    @property
    def pos_weight(self):
        return self.info.get("pos_weight")

    def summary(self) -> dict:
        """Small, JSON-safe facts for a checkpoint manifest or a results row."""
        last = self.history.iloc[-1].to_dict() if len(self.history) else {}
        return {"steps": self.steps, "best_epoch": self.best_epoch, "epochs_run": len(self.history),
                "monitor": self.monitor, "best_score": self.best_score,
                "train_time_s": self.train_time_s,
                "last": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                         for k, v in last.items()}}


@dataclass
class Pretrained:
    """A pretraining's outcome: the trained ``model`` (its ``encoder`` is what later arms
    reuse) and the engine's :class:`FitResult` (``history``: one row per epoch). Each pretext
    extends it with what it keeps (settings, restorations)."""

    method: str
    model: nn.Module = field(repr=False)
    fit: FitResult = field(repr=False)

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder

    @property
    def history(self) -> pd.DataFrame:
        return self.fit.history


def cpu_state(model: nn.Module) -> dict:
    """A CPU copy of ``model``'s state dict (not shared with the live weights)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _keep_state(model: nn.Module, into: dict | None) -> dict:
    """``cpu_state(model)``, written into the tensors of ``into`` when given (no new copy)."""
    if into is None:
        return cpu_state(model)
    for k, v in model.state_dict().items():
        into[k].copy_(v.detach())
    return into


def epoch_steps(n: int, batch_size: int, steps: int | None = None, min_steps: int | None = None,
                max_steps: int | None = None) -> int:
    """``steps`` if given, else one pass over ``n`` items, ceil(n / batch_size), clipped to
    [``min_steps``, ``max_steps``] (so a 5 % budget still gets enough updates and 100 % fits a
    time budget)."""
    if steps:
        return int(steps)
    s = max(1, math.ceil(n / batch_size), min_steps or 1)
    return min(s, max_steps or s)


def _direction(step: Step, monitor: str) -> str:
    if monitor in step.monitors:
        return step.monitors[monitor]
    return "min" if "loss" in monitor else "max"


def _schedule(opt, kind: str | None, total: int, warmup: int):
    if kind is None:
        return None
    if kind != "cosine":
        raise ValueError(f"schedule must be 'cosine' or None, got {kind!r}")

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        t = (i - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fit(model: nn.Module, data, val=None, *, step: Step, epochs: int = 10,
        batch_size: int = 32, steps_per_epoch: int | None = None,
        min_steps_per_epoch: int | None = None, max_steps_per_epoch: int | None = None,
        lr: float = 1e-3, weight_decay: float = 1e-4, params=None, schedule: str | None = "cosine",
        warmup_steps: int = 0, sampler=None, monitor: str | None = None,
        patience: int | None = None, val_every: int = 1, seed: int = 0, amp="auto",
        device=None, channels_last: bool | None = None, compile: bool = False,
        restore_best: bool = True, progress: bool = True, desc: str = "fit") -> FitResult:
    """Train ``model`` on ``data`` with ``step`` (what one batch computes, e.g.
    :class:`prostate_course.steps.ClassificationStep`).

    ``data`` / ``val``: whatever the step reads (a SliceSet for classification). ``params``: the
    parameters to optimise (default: every parameter that requires grad; freeze an encoder by
    setting ``requires_grad_(False)``). ``sampler``: ``sampler(n, steps, batch_size, generator)``
    -> (steps, batch_size) indices (default :class:`~prostate_course.samplers.RandomBatches`).
    ``monitor``: the validation metric that selects the kept weights (default: the step's;
    None without ``val``: the last weights are kept); ``patience``: stop after that many
    validations without improvement (None: run every epoch). ``compile``: wrap the model in
    ``torch.compile`` for the training steps (GPU profiles). The model is left on ``device``.
    """
    from tqdm.auto import tqdm

    if epochs < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {epochs}, {batch_size}")
    device = torch.device(device) if device is not None else get_device()
    monitor = (monitor or step.default_monitor) if val is not None else None
    if monitor is not None and val is not None and monitor not in step.monitors:
        raise ValueError(f"monitor must be one of {sorted(step.monitors)} for "
                         f"{type(step).__name__}, got {monitor!r}")
    step.channels_last = device.type == "cuda" if channels_last is None else bool(channels_last)
    d = step.prepare(data, device)
    n = step.size(d)
    if n < 2:
        raise ValueError(f"need at least 2 training items, got {n}")

    torch.manual_seed(seed)                      # dropout and anything else drawing globally
    g = torch_generator(seed)                    # batch order (CPU)
    step.reset(seed)
    model.to(device)
    if step.channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile else model
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires grad: nothing to train")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = epoch_steps(n, batch_size, steps_per_epoch, min_steps_per_epoch, max_steps_per_epoch)
    total = epochs * steps
    sched = _schedule(opt, schedule, total, warmup_steps)
    dtype = amp_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(dtype) and device.type == "cuda")
    sampler = sampler or RandomBatches()

    sign = 1.0 if monitor is None or _direction(step, monitor) == "min" else -1.0
    # (signed score, epoch, state): the state is copied at the first validated epoch, then
    # overwritten in place, so at most one extra copy of the weights exists (memory)
    best = (math.inf, 0, None)
    bad, rows, t0, step_count, stopped = 0, [], time.perf_counter(), 0, False
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    for epoch in range(1, epochs + 1):
        model.train()
        batches = sampler(n, steps, batch_size, g).to(device)
        sums: dict[str, torch.Tensor] = {}
        for i in range(steps):
            with autocast(device, dtype):
                loss, logs = step.loss(net, d, batches[i])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if sched is not None:
                sched.step()
            for k, v in {"loss": loss, **logs}.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
            step_count += 1
            bar.update(1)
        means = dict(zip(sums, (torch.stack(list(sums.values())) / steps).tolist())) if sums else {}
        row = {"epoch": epoch, **{f"train_{k}": v for k, v in means.items()},
               "lr": opt.param_groups[0]["lr"]}
        validated = val is not None and (epoch % val_every == 0 or epoch == epochs)
        if validated:
            opt.zero_grad(set_to_none=True)      # no gradient buffers beside validation's activations (memory)
            row.update(step.validate(model, val, device, amp))
        row["time"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        if monitor is None:
            best = (-epoch, epoch, None)          # keep the last weights
        elif validated:
            score = row.get(monitor, math.nan)
            if math.isnan(score):                 # e.g. AUROC on a one-class validation set
                score = row.get("val_loss", math.nan) * (1 if sign > 0 else -1)
            if not math.isnan(score) and sign * score < best[0]:
                kept = _keep_state(model, best[2]) if restore_best else None   # no copy nobody loads
                best, bad = (sign * score, epoch, kept), 0
            else:
                bad += 1
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items()
                         if k.startswith(("train_loss", "val_")) and isinstance(v, float)})
        if patience is not None and validated and bad >= patience:
            stopped = True
            break
    bar.close()
    opt.zero_grad(set_to_none=True)              # the last step's gradients: a model-sized buffer per held model
    # the last weights live in the model itself: no second copy (45 MB per ResNet-18 kept alive
    # by every FitResult a notebook holds)
    if monitor is not None and not math.isfinite(best[0]):   # no finite validation score: the last weights
        best = (math.inf, len(rows), None)
    best_state = best[2] if best[2] is not None else {}
    if restore_best and best[2] is not None:
        model.load_state_dict(best_state)
    score = sign * best[0] if monitor is not None and math.isfinite(best[0]) else math.nan
    return FitResult(history=pd.DataFrame(rows), best_state=best_state, best_epoch=best[1],
                     best_score=score, monitor=monitor, stopped_early=stopped, steps=step_count,
                     train_time_s=round(time.perf_counter() - t0, 2), info=dict(step.info(d))
                     if hasattr(step, "info") else {})


__all__ = ["Step", "FitResult", "Pretrained", "fit", "cpu_state", "epoch_steps", "to_device", "gather"]
