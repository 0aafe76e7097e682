"""Two-view contrastive pretraining (notebooks 03 and 04) on the course's training engine.

SimCLR (Chen et al. 2020, ICML): two random views of each image go through the encoder f and a
projection head g; a contrastive loss pulls the two projections of one image together and pushes
those of other images apart; after pretraining g is thrown away and f is fine-tuned or probed::

    model = ContrastiveModel()                                 # ResNet-18 encoder + projection MLP
    step = ContrastiveStep(NTXentLoss(0.1), contrastive_views(seed=0))
    res = train.fit(model, slices, step=step, sampler=OnePerExamBatches(slices.case_index), ...)
    encoder = model.encoder

- the loss interface is ``loss(z_a, z_b, **batch_meta) -> scalar`` (:mod:`.losses`), z the
  L2-normalised (B, d) projections; ``meta_keys`` make the step gather per-sample metadata of
  the batch from the slice set's per-slice metadata (``SliceSet.slice_meta()``, missing values
  NaN) for notebook 04's metadata-aware losses;
- both views go through the network as ONE batch (BatchNorm sees 2B images, as in SimCLR);
- the step logs alignment, uniformity and the feature std per epoch (:mod:`.diagnostics`);
  ``validate`` reports the same on one fixed, held-out batch with fixed views;
- :func:`pretrain` / :func:`pretrain_run`: a whole pretraining run by method name ("simclr",
  "dcl", "dclw", and whatever :func:`register_method` adds), e.g. a quick stand-in for a
  missing checkpoint in notebook 05; :func:`save_encoder` / :func:`encoder_or_stand_in` write
  and find the checkpoints later notebooks reuse.

Pretraining sees images only: pass ``SliceSet.unlabelled()`` of the training split
(:func:`pretraining_slices`); no label is read here.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..amp import amp_dtype, autocast
from ..models import ProjectionHead, resnet18_encoder
from ..samplers import OnePerExamBatches
from ..train import Pretrained, Step, fit, gather, to_device
from .diagnostics import batch_diagnostics
from .losses import DCLLoss, DCLWLoss, NTXentLoss

#: loss factories by method name: ``METHODS[name](temperature=t)`` -> a two-view loss
METHODS: dict[str, Callable[..., nn.Module]] = {"simclr": NTXentLoss, "dcl": DCLLoss, "dclw": DCLWLoss}


def register_method(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make ``pretrain(name, ...)`` use ``factory(temperature=t, **loss_kwargs)`` as its loss."""
    METHODS[name] = factory


def make_loss(method: str, temperature: float = 0.1, **kw) -> nn.Module:
    if method not in METHODS:
        raise ValueError(f"unknown contrastive method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method](temperature=temperature, **kw)


class ContrastiveModel(nn.Module):
    """f then g: ``forward(x)`` gives the projections g(f(x)) (B, d) the loss sees,
    ``features(x)`` the encoder's 512-d representation kept after pretraining."""

    def __init__(self, encoder: nn.Module | None = None, projection: nn.Module | None = None,
                 out_features: int = 128):
        super().__init__()
        self.encoder = encoder if encoder is not None else resnet18_encoder()
        self.projection = projection if projection is not None else ProjectionHead(
            getattr(self.encoder, "out_features", 512), out_features=out_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(x))


# ----------------------------------------------------------------------------- metadata
def meta_tensor(values: pd.Series, name: str = "") -> torch.Tensor:
    """One metadata column as a float32 tensor, missing values NaN. Numbers stay numbers
    (nullable integers included); text (e.g. ``center``) becomes category codes 0, 1, ... in
    sorted order."""
    s = pd.Series(values)
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        arr = s.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = s.where(s.notna() & (s.astype(str) != ""))
        cats = sorted(text.dropna().astype(str).unique())
        codes = {c: i for i, c in enumerate(cats)}
        arr = np.array([codes[str(v)] if pd.notna(v) else np.nan for v in text], dtype=np.float64)
    return torch.as_tensor(arr, dtype=torch.float32)


def slice_meta_tensors(slices, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per-slice tensors {key: (N,) float32} for ``keys``: columns of ``slices.slice_meta()``
    (the exam's metadata repeated per slice) or per-slice tensors of the set itself
    (``case_index``, ``slice_z``). An unknown key raises, naming the keys there are."""
    keys = list(keys)
    if not keys:
        return {}
    n = len(slices)
    meta = slices.slice_meta() if hasattr(slices, "slice_meta") else None
    out = {}
    for k in keys:
        if meta is not None and k in meta.columns:
            out[k] = meta_tensor(meta[k], k)
        elif isinstance(getattr(slices, k, None), torch.Tensor) and len(getattr(slices, k)) == n:
            out[k] = getattr(slices, k).detach().cpu().float()
        else:
            have = list(meta.columns) if meta is not None else []
            raise KeyError(f"metadata {k!r} is not in this slice set (per-exam columns: "
                           f"{have or 'none'}; per-slice tensors: case_index, slice_z)")
    return out


def _images(data) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, dict):
        return torch.as_tensor(data["images"])
    return torch.as_tensor(data.images)


# --------------------------------------------------------------------------------- step
class ContrastiveStep(Step):
    """Two views, one forward pass, ``loss(z_a, z_b, **batch_meta)`` (module docstring).

    ``loss``: a two-view loss (:mod:`.losses`, notebook 04's); ``views``: a batch transform
    with ``reset(seed)`` (:func:`prostate_course.ssl.views.contrastive_views`), applied twice per
    batch; ``meta_keys``: per-sample metadata passed to the loss (:func:`slice_meta_tensors`).
    ``val_batch``: size of the fixed held-out batch :meth:`validate` scores (one slice per
    exam when the set has a ``case_index``; views drawn from ``val_seed`` every time).
    """

    monitors = {"val_loss": "min", "val_align": "min", "val_uniform": "min"}
    default_monitor = "val_loss"

    def __init__(self, loss: nn.Module, views, meta_keys: Sequence[str] = (), val_batch: int = 256,
                 val_seed: int = 12345):
        self.loss_fn = loss
        self.views = views
        self.meta_keys = tuple(meta_keys)
        self.val_batch = int(val_batch)
        self.val_seed = int(val_seed)
        self._info: dict = {}

    def reset(self, seed: int) -> None:
        if hasattr(self.views, "reset"):
            self.views.reset(seed)

    def prepare(self, data, device):
        x = _images(data)
        if x.ndim != 4:
            raise ValueError(f"contrastive pretraining takes 2D slices (N, C, H, W), got {tuple(x.shape)}")
        meta = slice_meta_tensors(data, self.meta_keys) if self.meta_keys else {}
        self._info = {"n_items": len(x), "meta_keys": list(self.meta_keys),
                      "meta_missing": {k: int(torch.isnan(v).sum()) for k, v in meta.items()}}
        ci = getattr(data, "case_index", None)
        if ci is not None:
            self._info["n_exams"] = int(torch.as_tensor(ci).unique().numel())
        return {"images": to_device(x, device), "device": torch.device(device),
                "meta": {k: v.to(device) for k, v in meta.items()}}

    def info(self, d) -> dict:
        return dict(self._info)

    def size(self, d) -> int:
        return len(d["images"])

    def two_views(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[view_a; view_b] of a float batch: (2B, C, H, W)."""
        if generator is None:
            return torch.cat([self.views(x), self.views(x)])
        return torch.cat([self.views(x, generator=generator), self.views(x, generator=generator)])

    def project(self, model: nn.Module, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.normalize(model(self.input(views)).float(), dim=1)
        return z.chunk(2)

    def loss(self, model, d, idx):
        x = gather(d["images"], idx, d["device"]).float()
        z_a, z_b = self.project(model, self.two_views(x))
        meta = {k: v[idx] for k, v in d["meta"].items()}
        return self.criterion(z_a, z_b, meta, d["device"])

    def criterion(self, z_a, z_b, meta: dict, device) -> tuple[torch.Tensor, dict]:
        """The loss and the diagnostics in float32, outside autocast (a bfloat16 similarity
        matrix would blur s / t at small temperatures)."""
        with torch.autocast(device_type=torch.device(device).type, enabled=False):
            return self.loss_fn(z_a, z_b, **meta), batch_diagnostics(z_a, z_b)

    def _val_index(self, val, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.val_seed)
        ci = getattr(val, "case_index", None)
        if ci is not None:
            sampler = OnePerExamBatches(ci)
            return sampler(n, 1, min(self.val_batch, sampler.n_exams), g)[0]
        return torch.randperm(n, generator=g)[:self.val_batch]

    @torch.no_grad()
    def validate(self, model, val, device, amp) -> dict:
        device = torch.device(device)
        x = _images(val)
        idx = self._val_index(val, len(x))
        if len(idx) < 2:
            return {}
        meta = {k: v[idx].to(device) for k, v in slice_meta_tensors(val, self.meta_keys).items()}
        g = torch.Generator(device=device).manual_seed(self.val_seed)
        was = model.training
        model.eval()
        with autocast(device, amp_dtype(device, amp)):
            z_a, z_b = self.project(model, self.two_views(x[idx].to(device).float(), g))
        model.train(was)
        loss, logs = self.criterion(z_a, z_b, meta, device)
        return {"val_loss": float(loss), **{f"val_{k}": float(v) for k, v in logs.items()}}


# ---------------------------------------------------------------------------- pretraining
def pretraining_slices(dataset, split: str = "train"):
    """What pretraining may see: the ``split`` slices of a prepared dataset (training only,
    unless a caller asks otherwise) without any label or lesion mask, metadata kept."""
    if split != "train":
        warnings.warn(f"pretraining on the {split!r} split: only the training split keeps the "
                      "test set unseen", stacklevel=2)
    return dataset.slices(split=split, masks=False).unlabelled()


def hold_out_exams(slices, share: float = 0.1, seed: int = 0, min_patients: int = 2):
    """``(fit, held)``: the slices of a random ``share`` of the patients (at least
    ``min_patients``; all their exams) held out of pretraining, so that the diagnostics are
    measured on images the encoder did not train on. Seeded."""
    patients = sorted(set(slices.patient_ids))
    k = max(min_patients, int(round(share * len(patients))))
    if k >= len(patients):
        raise ValueError(f"cannot hold out {k} of {len(patients)} patients and still pretrain")
    held = set(np.random.default_rng(seed).choice(patients, k, replace=False).tolist())
    keep = [c for c, p in zip(slices.case_ids, slices.patient_ids) if p not in held]
    out = [c for c, p in zip(slices.case_ids, slices.patient_ids) if p in held]
    return slices.subset(keep), slices.subset(out)


@dataclass
class PretrainResult(Pretrained):
    """What :func:`pretrain_run` returns: the model (``model.encoder`` is what later arms use),
    the engine's :class:`~prostate_course.train.FitResult` (history with ``train_align``,
    ``train_uniform``, ``train_feature_std`` per epoch) and the settings used."""

    config: dict

    def summary(self) -> dict:
        """JSON-safe facts for a checkpoint manifest: the settings and the last epoch's logs."""
        return {"config": self.config, **self.fit.summary()}


def pretrain_run(method: str, slices, steps: int, seed: int = 0, device=None, *,
                 batch_size: int = 64, temperature: float = 0.1, lr: float = 1e-3,
                 weight_decay: float = 1e-4, epochs: int | None = None, views=None,
                 loss: nn.Module | None = None, loss_kwargs: dict | None = None,
                 meta_keys: Sequence[str] = (), val=None, one_per_exam: bool = True,
                 encoder: nn.Module | None = None, progress: bool = True,
                 desc: str | None = None) -> PretrainResult:
    """Pretrain a fresh (seeded) ResNet-18 + projection head with ``method``'s loss for about
    ``steps`` steps (``epochs`` logging epochs, default min(10, steps), of
    round(steps / epochs) steps each), AdamW with a 10 % linear warm-up and cosine decay,
    batches of ``batch_size`` slices with one slice per exam (``one_per_exam``; the batch is cut
    to the number of exams, with a warning, when there are fewer). ``views`` default to
    :func:`~prostate_course.ssl.views.contrastive_views` seeded with ``seed``; ``loss`` replaces
    the method's default (``make_loss(method, temperature, **loss_kwargs)``)."""
    from .views import contrastive_views

    if steps < 1:
        raise ValueError(f"pretraining needs steps >= 1, got {steps}")
    if getattr(slices, "slice_label", None) is not None:
        raise ValueError("pretraining takes an unlabelled slice set (SliceSet.unlabelled()): "
                         "it must not see labels")
    loss = loss if loss is not None else make_loss(method, temperature, **(loss_kwargs or {}))
    views = views if views is not None else contrastive_views(seed=seed)
    ci = getattr(slices, "case_index", None)
    sampler = None
    if one_per_exam and ci is not None:
        sampler = OnePerExamBatches(ci)
        if batch_size > sampler.n_exams:
            warnings.warn(f"batch size {batch_size} cut to the {sampler.n_exams} exams of the "
                          "pretraining set (one slice per exam per batch)", stacklevel=2)
            batch_size = sampler.n_exams
    epochs = int(epochs or min(10, steps))
    per_epoch = max(1, round(steps / epochs))
    torch.manual_seed(seed)
    model = ContrastiveModel(encoder=encoder)
    step = ContrastiveStep(loss, views, meta_keys=meta_keys)
    res = fit(model, slices, val, step=step, epochs=epochs, batch_size=batch_size,
              steps_per_epoch=per_epoch, lr=lr, weight_decay=weight_decay,
              warmup_steps=max(1, (epochs * per_epoch) // 10), sampler=sampler, seed=seed,
              device=device, progress=progress, restore_best=False, desc=desc or f"pretrain {method}")
    config = {"method": method, "loss": repr(loss), "steps": res.steps, "batch_size": batch_size,
              "temperature": getattr(loss, "temperature", temperature), "lr": lr,
              "weight_decay": weight_decay, "seed": seed, "one_per_exam": sampler is not None,
              "meta_keys": list(meta_keys), "views": repr(views), "n_slices": len(slices)}
    return PretrainResult(method=method, model=model, fit=res, config=config)


def pretrain(method: str, slices, steps: int, seed: int = 0, device=None, **kw) -> nn.Module:
    """:func:`pretrain_run` and return only the pretrained encoder (on the CPU, eval mode)."""
    return pretrain_run(method, slices, steps, seed, device, **kw).encoder.cpu().eval()


# ----------------------------------------------------------------------------- checkpoints
def save_encoder(encoder: nn.Module, dataset, profile: str, notebook: str, method: str,
                 seed: int = 0, **info):
    """Write ``encoder`` to ``artifacts.checkpoint_path(profile, notebook, method, seed)`` with
    the dataset's provenance (key, generator version, split hash, code) and ``info``."""
    from .. import artifacts, models

    path = artifacts.checkpoint_path(profile, notebook, method, seed)
    return models.save_checkpoint(encoder, path, artifacts.provenance(dataset), method=method,
                                  seed=int(seed), notebook=str(notebook), **info)


def encoder_or_stand_in(profile: str, method: str, dataset, seed: int = 0, *,
                        notebook: str = "03_contrastive", slices=None, steps: int = 50,
                        device=None, fallback_seed: int | None = 0, **pretrain_kw):
    """An encoder factory for :class:`prostate_course.protocol.Arm`: notebook ``notebook``'s
    checkpoint of ``method`` when it matches ``dataset`` (``artifacts.find_checkpoint``),
    else a quick stand-in pretrained here for ``steps`` steps on ``slices`` (default: the
    training split, unlabelled). Returns ``(init, stand_in, note)``: ``stand_in`` is None
    for a checkpoint, else the reason, to pass as ``Arm(stand_in=...)``."""
    from .. import artifacts
    from ..protocol import from_checkpoint

    path, note = artifacts.find_checkpoint(profile, notebook, method, dataset, seed=seed,
                                           fallback_seed=fallback_seed)
    if path is not None:
        return from_checkpoint(path), None, note
    slices = slices if slices is not None else pretraining_slices(dataset)
    enc = pretrain(method, slices, steps, seed=seed, device=device, progress=False, **pretrain_kw)
    reason = (f"no usable checkpoint of {method} from {notebook} ({note}); a stand-in "
              f"pretrained for {steps} steps here")

    def init(_seed: int) -> nn.Module:
        return copy.deepcopy(enc)

    init.seed_independent = True
    return init, reason, reason


__all__ = ["ContrastiveModel", "ContrastiveStep", "METHODS", "register_method", "make_loss",
           "meta_tensor", "slice_meta_tensors", "pretraining_slices", "hold_out_exams", "PretrainResult",
           "pretrain_run", "pretrain", "save_encoder", "encoder_or_stand_in"]
