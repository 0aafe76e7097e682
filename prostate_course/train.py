"""One training loop for notebooks 01-05, prediction, and the label-efficiency protocol.

:func:`fit` is deliberately plain PyTorch so it can be read in one sitting:

- the training tensors sit on the training device; each step draws a batch *by index* (no
  DataLoader workers) and augments it there as a whole (DESIGN.md "Data on the device");
- AMP on CUDA: bfloat16 autocast where the GPU supports it, else float16 with a GradScaler;
- no host synchronisation inside an epoch on a GPU: the running loss is summed on the device
  and read once per epoch;
- class imbalance (lesion slices are rare): by default the loss up-weights positives,
  ``BCEWithLogitsLoss(pos_weight = n_neg / n_pos)`` - each class then contributes equally in
  expectation, every slice is still seen once per epoch; ``balance="sampler"`` instead draws
  batches with probability 1 / class-frequency (with replacement);
- early stopping on the validation split (loss or AUROC) with the best weights restored;
- seeded: batch order, augmentation and dropout come from ``seed``; on the CPU the same seed
  gives the same numbers (a test checks it);
- history as a pandas DataFrame, a tqdm progress bar.

:func:`run_label_efficiency` is the protocol every notebook shares: for each label fraction and
seed, train on the budgeted training cases (the data code's ``label_budget``), stop early on the
validation split, evaluate on the test split, one results row each.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .evaluate import (METRIC_KEYS, case_scores, evaluate_scores, extract_features,
                       fit_linear_probe, unpack, _auroc, _np)
from .repro import get_device, torch_generator


# ---------------------------------------------------------------------------------------------
# AMP and prediction
# ---------------------------------------------------------------------------------------------

def amp_dtype(device: torch.device, amp="auto") -> torch.dtype | None:
    """The autocast dtype: None (off) on CPU/MPS or when ``amp`` is falsy; on CUDA bfloat16 if
    supported (``amp="auto"`` or ``"bf16"``), else float16 (``"fp16"``)."""
    if not amp or device.type != "cuda":
        return None
    if amp == "fp16":
        return torch.float16
    if amp in ("auto", "bf16", True):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or False, got {amp!r}")


def eval_batch_size(device, requested: int | None = None) -> int:
    """Inference batch: ``requested``, else 256 on a GPU and 64 on a CPU (a 512-image batch of
    64 px slices adds ~0.5 GB of activations on the CPU; Binder's RAM cap is 2 GB)."""
    if requested:
        return int(requested)
    return 256 if torch.device(device).type == "cuda" else 64


@torch.no_grad()
def predict_logits(model: nn.Module, images, batch_size: int | None = None, device=None,
                   amp="auto") -> torch.Tensor:
    """Logits of ``model`` in eval mode, batched, as one float32 tensor on ``device``."""
    device = torch.device(device) if device is not None else get_device()
    batch_size = eval_batch_size(device, batch_size)
    images = images if isinstance(images, torch.Tensor) else unpack(images)["images"]
    dtype = amp_dtype(device, amp)
    was_training = model.training
    model.eval().to(device)
    out = []
    for i in range(0, len(images), batch_size):
        xb = images[i:i + batch_size].to(device, non_blocking=True).float()
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            out.append(model(xb).float())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, device=device)


def predict(model: nn.Module, images, batch_size: int | None = None, device=None,
            amp="auto") -> np.ndarray:
    """Probabilities (numpy): sigmoid of a single logit per image, (N,); softmax for several."""
    logits = predict_logits(model, images, batch_size, device, amp)
    probs = torch.sigmoid(logits) if logits.ndim == 1 else torch.softmax(logits, dim=1)
    return probs.cpu().numpy()


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------

@dataclass
class FitResult:
    """What :func:`fit` returns. ``best_state`` is a CPU copy of the weights at ``best_epoch``
    (already loaded into the model when ``restore_best``)."""

    history: pd.DataFrame
    best_state: dict
    best_epoch: int
    best_score: float
    monitor: str
    stopped_early: bool
    steps: int
    train_time_s: float
    pos_weight: float | None = None

    def plot(self, ax=None):
        """Learning curves (see :func:`plot_history`)."""
        return plot_history(self.history, ax=ax, best_epoch=self.best_epoch)


def plot_history(history: pd.DataFrame, ax=None, best_epoch: int | None = None):
    """Learning curves from a :func:`fit` history: training and validation loss (left axis),
    validation slice AUROC (right axis), the kept epoch dotted."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    h = history
    ax.plot(h["epoch"], h["train_loss"], "o-", label="train loss")
    if h["val_loss"].notna().any():
        ax.plot(h["epoch"], h["val_loss"], "s-", label="val loss")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", ls=":", lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (weighted BCE)")
    if "val_auroc" in h and h["val_auroc"].notna().any():
        ax2 = ax.twinx()
        ax2.plot(h["epoch"], h["val_auroc"], "^-", color="C2", label="val AUROC (slice)")
        ax2.set_ylabel("AUROC")
        ax2.set_ylim(0.4, 1.0)
        ax2.legend(loc="lower right")
    ax.legend(loc="upper right")
    return ax


_MONITORS = {"val_loss": "min", "val_auroc": "max", "val_auroc_patient": "max"}


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _index_stream(n: int, labels: torch.Tensor, n_items: int, balance: str | None,
                  g: torch.Generator) -> torch.Tensor:
    """``n_items`` training indices for one epoch (on the CPU): concatenated random
    permutations, or - for ``balance="sampler"`` - draws with probability 1 / class frequency."""
    if balance == "sampler":
        pos = labels > 0
        n_pos = int(pos.sum())
        w = torch.where(pos, 0.5 / max(n_pos, 1), 0.5 / max(n - n_pos, 1)).double()
        return torch.multinomial(w, n_items, replacement=True, generator=g)
    reps = math.ceil(n_items / n)
    return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:n_items]


def fit(model: nn.Module, train, val=None, *, epochs: int = 10, batch_size: int = 32,
        lr: float = 1e-3, weight_decay: float = 1e-4, device=None, augment=None,
        patience: int | None = None, seed: int = 0, loss: str | nn.Module = "bce",
        balance: str | None = "pos_weight", monitor: str = "val_loss", amp="auto",
        steps_per_epoch: int | None = None, min_steps_per_epoch: int | None = None,
        max_steps_per_epoch: int | None = None, schedule: str | None = "cosine",
        eval_batch_size: int | None = None, restore_best: bool = True, progress: bool = True,
        desc: str = "fit") -> FitResult:
    """Train ``model`` (logits (N,) for binary labels) on ``train`` and stop early on ``val``.

    ``train`` / ``val``: a SliceSet-like object (``images``, ``slice_label``; ``case_index`` and
    ``case_label`` enable the patient-level validation AUROC) or an ``(images, labels)`` tuple.
    ``augment``: a callable on a batch on the device (:mod:`prostate_course.augment`); its
    stream is reset to ``seed``. ``loss``: ``"bce"`` (``BCEWithLogitsLoss``, with ``pos_weight``
    when ``balance="pos_weight"``) or any module ``loss(logits, targets)``. ``monitor``:
    ``"val_loss"`` (lower is better), ``"val_auroc"`` or ``"val_auroc_patient"``; stop after
    ``patience`` epochs without improvement (None = never). ``steps_per_epoch``: default one
    pass over the data, ceil(N / batch_size), clipped to [``min_steps_per_epoch``,
    ``max_steps_per_epoch``] (so a 5 % budget still gets enough steps and 100 % fits a time
    budget); an int fixes it. Optimiser AdamW (Loshchilov & Hutter 2019), cosine learning-rate decay
    over ``epochs * steps_per_epoch`` steps. The model is left on ``device``.
    """
    if monitor not in _MONITORS:
        raise ValueError(f"monitor must be one of {list(_MONITORS)}, got {monitor!r}")
    if balance not in (None, "pos_weight", "sampler"):
        raise ValueError(f"balance must be None, 'pos_weight' or 'sampler', got {balance!r}")
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {epochs}, {batch_size}")
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else get_device()
    tr = unpack(train)
    x = tr["images"].to(device)
    y = torch.as_tensor(_np(tr["slice_label"])).float()
    n = len(x)
    n_pos = int((y > 0).sum())
    if n < 2:
        raise ValueError(f"need at least 2 training images, got {n}")
    y = (y > 0).float().to(device)
    va = unpack(val) if val is not None else None
    if va is not None:
        xv = va["images"].to(device)
        yv_np = _np(va["slice_label"]) > 0
        yv = torch.as_tensor(yv_np, dtype=torch.float32, device=device)

    pos_weight = None
    if isinstance(loss, str):
        if loss != "bce":
            raise ValueError(f"loss must be 'bce' or a module, got {loss!r}")
        if balance == "pos_weight" and 0 < n_pos < n:
            pos_weight = (n - n_pos) / n_pos
        criterion = nn.BCEWithLogitsLoss(
            pos_weight=None if pos_weight is None else torch.tensor(pos_weight, device=device))
    else:
        criterion = loss

    torch.manual_seed(seed)                      # dropout and anything else drawing globally
    g = torch_generator(seed)                    # batch order (CPU; indices moved per epoch)
    if augment is not None and hasattr(augment, "reset"):
        augment.reset(seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = steps_per_epoch or max(1, math.ceil(n / batch_size))
    if not steps_per_epoch:
        steps = max(steps, min_steps_per_epoch or 1)
        steps = min(steps, max_steps_per_epoch or steps)
    total = epochs * steps
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
             if schedule == "cosine" else None)
    dtype = amp_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    sign = 1.0 if _MONITORS[monitor] == "min" else -1.0
    best_score, best_epoch, best_state, bad = math.inf, 0, _cpu_state(model), 0
    n_items = n if steps == math.ceil(n / batch_size) else steps * batch_size
    y_stream = y.cpu() if balance == "sampler" else y    # the sampler draws on the CPU
    rows, t0, step_count, stopped = [], time.perf_counter(), 0, False
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    for epoch in range(1, epochs + 1):
        model.train()
        order = _index_stream(n, y_stream, n_items, balance, g).to(device)
        run_loss = torch.zeros((), device=device)
        run_n = 0
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            if len(idx) < 2:                     # BatchNorm needs 2+ samples
                continue
            xb, yb = x[idx].float(), y[idx]
            if augment is not None:
                xb = augment(xb)
            with torch.autocast(device_type=device.type, dtype=dtype or torch.float32,
                                enabled=dtype is not None):
                logits = model(xb)
            batch_loss = criterion(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(batch_loss).backward()
            scaler.step(opt)
            scaler.update()
            if sched is not None:
                sched.step()
            run_loss += batch_loss.detach() * len(idx)
            run_n += len(idx)
            step_count += 1
            bar.update(1)
        row = {"epoch": epoch, "train_loss": float(run_loss) / max(run_n, 1),
               "val_loss": math.nan, "val_auroc": math.nan, "val_auroc_patient": math.nan,
               "lr": opt.param_groups[0]["lr"]}
        if va is not None:
            logits_v = predict_logits(model, xv, eval_batch_size, device, amp)
            row["val_loss"] = float(criterion(logits_v, yv))
            sv = torch.sigmoid(logits_v).cpu().numpy()
            row["val_auroc"] = _auroc(yv_np, sv)
            if "case_index" in va and "case_label" in va:
                cs = case_scores(sv, _np(va["case_index"]), len(va["case_label"]))
                keep = ~np.isnan(cs)
                row["val_auroc_patient"] = _auroc(_np(va["case_label"])[keep] > 0, cs[keep])
        row["time"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        score = row[monitor] if va is not None else -epoch
        if va is not None and math.isnan(score):
            score = row["val_loss"] * sign       # one-class val: use the loss
        if sign * score < best_score or (va is None):
            best_score, best_epoch, best_state, bad = sign * score, epoch, _cpu_state(model), 0
        else:
            bad += 1
        bar.set_postfix(epoch=epoch, train=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}",
                        auroc=f"{row['val_auroc']:.3f}")
        if patience is not None and va is not None and bad >= patience:
            stopped = True
            break
    bar.close()
    if restore_best:
        model.load_state_dict(best_state)
    return FitResult(history=pd.DataFrame(rows), best_state=best_state, best_epoch=best_epoch,
                     best_score=sign * best_score if va is not None else math.nan,
                     monitor=monitor, stopped_early=stopped, steps=step_count,
                     train_time_s=round(time.perf_counter() - t0, 2), pos_weight=pos_weight)


# ---------------------------------------------------------------------------------------------
# The label-efficiency protocol
# ---------------------------------------------------------------------------------------------

@dataclass
class Arm:
    """One arm of the comparison.

    ``method`` is the pretraining's name in the results ("scratch", "imagenet", "simclr", ...);
    ``make_encoder(seed)`` returns a freshly initialised encoder (512-d pooled features);
    ``protocol`` is ``"finetune"`` (encoder + new head trained end to end) or ``"linear_probe"``
    (encoder frozen, logistic regression on its features). ``unavailable`` = the reason the arm
    cannot run (then nothing is trained and the reason is recorded).
    """

    method: str
    make_encoder: Callable[[int], nn.Module] | None
    protocol: str = "finetune"
    unavailable: str | None = None
    fit_overrides: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.method if self.protocol == "finetune" else f"{self.method} (linear probe)"


@dataclass
class LabelEfficiency:
    """Rows (one per arm x fraction x seed) plus what the notebook plots: learning curves
    (``histories[(label, fraction, seed)]``) and the encoder weights before/after fine-tuning
    at the largest fraction for the first seed (``snapshots[label] = (before, after)``)."""

    rows: pd.DataFrame
    histories: dict
    snapshots: dict
    unavailable: list


def _default_budget(table, fraction, seed):
    from .data import label_budget

    return label_budget(table, fraction=fraction, seed=seed)


def run_label_efficiency(arms: Sequence[Arm], train, val, test, *, table=None,
                         fractions: Sequence[float], seeds: Sequence[int], fit_kwargs: dict,
                         n_boot: int = 1000, device=None,
                         augment_factory: Callable[[int], Callable] | None = None,
                         budget_fn: Callable | None = None, results=None,
                         probe_Cs: Sequence[float] = (0.01, 0.1, 1.0),
                         progress: bool = True) -> LabelEfficiency:
    """Run every arm at every label fraction and seed; return (and record) the rows.

    Per (fraction, seed): the labelled training cases are ``budget_fn(table, fraction, seed)``
    (default: the data code's ``label_budget``, nested and stratified) and ``train.subset(ids)``
    the slices that keep labels. Fine-tuning arms: ``Classifier(make_encoder(seed))`` trained
    with :func:`fit` (``fit_kwargs`` from the profile, early stopping on ``val``) and scored on
    ``test``; linear-probe arms: frozen ``make_encoder(seed)`` features (computed once per seed)
    and :func:`~prostate_course.evaluate.fit_linear_probe` (C chosen on ``val``). Rows follow
    DESIGN.md "Contracts": {task: "classification", method, protocol, label_fraction, seed,
    auroc_slice(_lo/_hi), auroc_patient(_lo/_hi), ...}; with ``results`` (a ``Results``) they
    are added to it, and unavailable arms go to ``results.unavailable(method, reason)``.
    """
    from tqdm.auto import tqdm

    from .models import Classifier

    device = torch.device(device) if device is not None else get_device()
    budget_fn = budget_fn or _default_budget
    if table is None:
        table = getattr(train, "table", None)
    te = unpack(test)
    va = unpack(val)
    rows, histories, snapshots, unavailable = [], {}, {}, []
    for arm in arms:
        if arm.protocol not in ("finetune", "linear_probe"):
            raise ValueError(f"arm {arm.method}: protocol must be finetune or linear_probe")
        if arm.unavailable:
            unavailable.append({"method": arm.method, "protocol": arm.protocol,
                                "reason": arm.unavailable})
            if results is not None:
                results.unavailable(arm.label, arm.unavailable)
    runnable = [a for a in arms if not a.unavailable]
    budgets = {(f, s): list(budget_fn(table, f, s)) for s in seeds for f in fractions}
    jobs = [(a, f, s) for s in seeds for a in runnable for f in fractions]
    bar = tqdm(jobs, desc="label efficiency", disable=not progress)
    feats_cache: dict = {}
    top = max(fractions)
    for arm, frac, seed in bar:
        bar.set_postfix_str(f"{arm.label} {frac:g} seed {seed}")
        sub = train.subset(budgets[(frac, seed)])
        sd = unpack(sub)
        t0 = time.perf_counter()
        extra = {}
        if arm.protocol == "finetune":
            torch.manual_seed(seed)
            model = Classifier(arm.make_encoder(seed))
            before = copy.deepcopy(model.encoder.state_dict()) if (frac == top and seed == seeds[0]) else None
            kw = dict(fit_kwargs)
            kw.update(arm.fit_overrides)
            aug = augment_factory(seed) if augment_factory else None
            res = fit(model, sub, val, device=device, seed=seed, augment=aug, progress=False,
                      desc=arm.label, **kw)
            histories[(arm.label, frac, seed)] = res.history
            if before is not None:
                snapshots[arm.label] = (before, _cpu_state(model.encoder))
            scores = predict(model, te["images"], device=device)
            extra = {"best_epoch": res.best_epoch, "epochs_run": len(res.history), "steps": res.steps}
            del model
        else:
            key = (arm.method, seed)
            if key not in feats_cache:
                torch.manual_seed(seed)
                enc = arm.make_encoder(seed)
                feats_cache.clear()
                feats_cache[key] = {
                    "train": extract_features(enc, unpack(train)["images"], device=device),
                    "val": extract_features(enc, va["images"], device=device),
                    "test": extract_features(enc, te["images"], device=device)}
                del enc
            fc = feats_cache[key]
            rows_idx = _subset_rows(train, sub)
            probe = fit_linear_probe(fc["train"][rows_idx], sd["slice_label"], fc["val"],
                                     va["slice_label"], Cs=probe_Cs, seed=seed)
            scores = probe.predict(fc["test"])
            extra = {"C": probe.C}
        metrics = evaluate_scores(scores, te["slice_label"], te["case_index"], te["case_label"],
                                  te.get("patient_ids"), n_boot=n_boot, seed=seed)
        row = {"task": "classification", "method": arm.method, "protocol": arm.protocol,
               "label_fraction": float(frac), "seed": int(seed),
               **{k: metrics[k] for k in METRIC_KEYS},
               "n_train_cases": len(budgets[(frac, seed)]), "n_train_slices": len(sd["images"]),
               "train_s": round(time.perf_counter() - t0, 1), **extra}
        rows.append(row)
        if results is not None:
            results.add_row(**row)
    bar.close()
    return LabelEfficiency(rows=pd.DataFrame(rows), histories=histories, snapshots=snapshots,
                           unavailable=unavailable)


def _subset_rows(full, sub) -> np.ndarray:
    """Row numbers of ``sub``'s slices inside ``full`` (matched by case id, slices in order)."""
    fcase = np.asarray(full.case_ids)[_np(full.case_index)]
    keep = set(sub.case_ids)
    idx = np.flatnonzero(np.isin(fcase, list(keep)))
    if len(idx) != len(sub.images):
        raise ValueError(f"subset has {len(sub.images)} slices but its cases have {len(idx)} in "
                         f"the full set: is it a subset of these cases?")
    return idx


def _with_arm(rows: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``rows`` with an ``arm`` column named like :attr:`Arm.label`."""
    df = rows.copy()
    df["arm"] = np.where(df["protocol"] == "finetune", df["method"], df["method"] + " (linear probe)")
    return df


def summarise(rows: pd.DataFrame, metric: str = "auroc_patient") -> pd.DataFrame:
    """Mean (and min/max over seeds) of ``metric`` per method, protocol and label fraction."""
    df = _with_arm(rows)
    return (df.groupby(["arm", "label_fraction"])[metric]
              .agg(["mean", "min", "max", "count"]).round(3).reset_index())


def plot_label_efficiency(rows: pd.DataFrame, metric: str = "auroc_patient", ax=None):
    """AUROC vs labelled fraction per arm: mean over seeds (line) and the mean of the bootstrap
    95 % interval bounds (band)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ax = ax or plt.gca()
    df = _with_arm(rows)
    for i, (arm, d) in enumerate(df.groupby("arm", sort=False)):
        m = d.groupby("label_fraction")[[metric, f"{metric}_lo", f"{metric}_hi"]].mean()
        ax.plot(m.index, m[metric], "o-", color=f"C{i}", label=arm)
        ax.fill_between(m.index, m[f"{metric}_lo"], m[f"{metric}_hi"], color=f"C{i}", alpha=0.15)
    ax.set_xscale("log")
    fr = sorted(df["label_fraction"].unique())
    ax.set_xticks(fr)
    ax.set_xticklabels([f"{f:.0%}" for f in fr])
    ax.xaxis.set_minor_formatter(NullFormatter())  # no "3 x 10^-1" labels between the budgets
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("labelled fraction of the training cases")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend()
    return ax
