"""Restoration pretraining (notebook 02): corrupt a slice, train a U-Net to give the original back.

The model is :class:`prostate_course.models.ResNetUNet` with ``out_channels=3`` (T2W, ADC,
HBV): a U-Net decoder over the course's ResNet-18 encoder, so that the pretrained
``model.encoder`` is exactly the encoder every arm of the protocol fine-tunes. Two methods:

- ``"genesis"`` (Zhou et al., Models Genesis, MICCAI 2019 / MedIA 2021): input T(x), the
  chain of :func:`prostate_course.ssl.pretexts.genesis_corruption`; the loss is the MSE on the
  whole image,  L = 1/(C H W) sum (g(T(x)) - x)^2;
- ``"mae"`` (masked image modelling with a CNN, as in SimMIM, Xie et al. CVPR 2022, and SparK,
  Tian et al. ICLR 2023): input x with a share of its patches hidden (mask m), loss on the
  hidden pixels only,  L = sum m (g(x_m) - x)^2 / (C sum m).  The same ResNet-18 encoder
  (not a ViT), so every arm initialises the same weights.

Both flip input and target left-right together first (p 0.4). :class:`RestorationStep` is the
step for :func:`prostate_course.train.fit`; :func:`run_pretraining` pretrains with a watch set
of fixed corrupted slices whose restorations are kept after every validation (reconstruction
panels during training); :func:`pretrain` is the short form later notebooks use for a quick
stand-in encoder; :func:`save_encoder` writes the checkpoint with its provenance.
Pretraining sees the training split's images only, without labels
(:func:`check_pretraining_slices`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..augment import RandFlip
from ..inference import as_images, forward_batches
from ..train import Pretrained, Step, fit, gather, to_device
from . import pretexts

METHODS = ("genesis", "mae")
#: the notebook whose checkpoints these are (artifacts/<notebook>/<method>/seed<k>.pt)
NOTEBOOK = "02_generative"


def restoration_model(encoder: nn.Module | None = None, widths: Sequence[int] | None = None) -> nn.Module:
    """The restoration network: ``models.ResNetUNet(encoder, out_channels=3)``; ``widths``: the
    decoder's (its default if None). The decoder is discarded after pretraining, so a narrower
    one only makes the pretext cheaper: the encoder is the same in every arm."""
    from ..models import ResNetUNet, resnet18_encoder

    kw = {} if widths is None else {"widths": tuple(int(w) for w in widths)}
    return ResNetUNet(encoder if encoder is not None else resnet18_encoder(), out_channels=3, **kw)


def restoration_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error: over every pixel (``mask`` None), or over the pixels where ``mask``
    (N, 1, H, W) is set, L = sum m (p - x)^2 / (C sum m)."""
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)
    return (err * m).sum() / (m.sum() * err.shape[1]).clamp_min(1.0)


def corruption(method: str, seed: int = 0, *, mask_ratio: float = 0.6, patch: float = 1 / 8, **kw):
    """The corruption of ``method``: Models Genesis' chain (``kw``: its probabilities) or the
    patch mask (``mask_ratio``, ``patch``)."""
    if method == "genesis":
        return pretexts.genesis_corruption(seed, **kw)
    if method == "mae":
        if kw:
            raise TypeError(f"mae takes mask_ratio and patch, not {sorted(kw)}")
        return pretexts.mae_corruption(seed, ratio=mask_ratio, patch=patch)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


@dataclass
class Panel:
    """A fixed set of corrupted slices to watch during pretraining: ``original`` and
    ``corrupted`` (N, C, H, W) float32, ``mask`` (N, 1, H, W) bool for "mae" (else None)."""

    original: torch.Tensor
    corrupted: torch.Tensor
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.original)


class RestorationStep(Step):
    """Restore the original from its corruption (see the module docstring).

    One seeded stream (``reset(seed)``) draws the flip and the corruption of every batch.
    ``validate`` takes a :class:`Panel` (or images, corrupted once with a fixed seed) and
    returns ``val_loss`` (the restoration loss) and ``val_copy_loss`` (the loss of returning
    the corrupted input unchanged: a network that only copies its input has learnt nothing);
    it keeps the restorations of the first ``keep`` panel slices in :attr:`snapshots`.
    """

    monitors = {"val_loss": "min", "val_copy_loss": "min"}
    default_monitor = "val_loss"

    def __init__(self, method: str = "genesis", *, flip_p: float = 0.4, keep: int = 4,
                 mask_ratio: float = 0.6, patch: float = 1 / 8, **pretext_kw):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method, self.keep = method, int(keep)
        self.corruption = corruption(method, 0, mask_ratio=mask_ratio, patch=patch, **pretext_kw)
        self.flip = RandFlip(dims=(-1,), p=flip_p)
        self.snapshots: list[torch.Tensor] = []

    def reset(self, seed: int) -> None:
        self.corruption.reset(seed)

    def corrupt_batch(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """(corrupted input, target, mask or None) for a float batch ``x``."""
        g = generator if generator is not None else self.corruption.generator(x.device)
        target = self.flip(x, g)
        if self.method == "mae":
            out = self.corruption({"image": target}, generator=g)
            return out["image"], target, out["mask"]
        return self.corruption(target, generator=g), target, None

    def make_panel(self, images, seed: int = 12345) -> Panel:
        """A :class:`Panel` of ``images`` corrupted with a fixed ``seed`` (CPU generator)."""
        x = torch.as_tensor(as_images(images)).float().cpu()
        xin, target, mask = self.corrupt_batch(x, torch.Generator().manual_seed(int(seed)))
        return Panel(target, xin, mask)

    def prepare(self, data, device):
        x = as_images(data)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"restoration pretraining takes (N, 3, H, W) slices, got {tuple(x.shape)}")
        return {"images": to_device(x, device), "device": torch.device(device)}

    def size(self, d) -> int:
        return len(d["images"])

    def loss(self, model, d, idx):
        x = gather(d["images"], idx, d["device"]).float()
        xin, target, mask = self.corrupt_batch(x)
        pred = model(self.input(xin))
        loss = restoration_loss(pred, target, mask)
        return loss, {"copy_loss": restoration_loss(xin, target, mask).detach()}

    def restore(self, model, panel: Panel, device, amp="auto") -> torch.Tensor:
        """The model's restorations of ``panel.corrupted`` (CPU float32)."""
        return forward_batches(model, model, panel.corrupted, device=device, amp=amp).cpu()

    def validate(self, model, val, device, amp) -> dict:
        panel = val if isinstance(val, Panel) else self.make_panel(val)
        pred = self.restore(model, panel, device, amp)
        self.snapshots.append(pred[:self.keep].half())
        return {"val_loss": float(restoration_loss(pred, panel.original, panel.mask)),
                "val_copy_loss": float(restoration_loss(panel.corrupted, panel.original, panel.mask))}


# ------------------------------------------------------------------------------- pretraining
def check_pretraining_slices(slices, table: pd.DataFrame | None = None) -> None:
    """Pretraining may see images, never labels, and only the training split's: a labelled
    slice set, or (with the cases ``table``) a case outside the "train" split, is an error that
    names them."""
    if getattr(slices, "slice_label", None) is not None or getattr(slices, "lesion_mask", None) is not None:
        raise ValueError("pretraining takes unlabelled slices: pass slices.unlabelled() "
                         "(no slice labels, case labels or lesion masks)")
    if table is not None:
        split = table.set_index("case_id")["split"]
        ids = list(slices.case_ids)
        unknown = [c for c in ids if c not in split.index]
        if unknown:
            raise ValueError(f"pretraining slices of cases not in the cases table: {unknown[:5]}")
        other = [f"{c} ({split[c]})" for c in ids if split[c] != "train"]
        if other:
            raise ValueError(f"pretraining may only see the training split; these cases are not "
                             f"in it: {', '.join(other[:5])}" + (" ..." if len(other) > 5 else ""))


def watch_indices(n: int, k: int) -> np.ndarray:
    """``k`` evenly spaced slice numbers out of ``n`` (chosen without looking at any label)."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


@dataclass
class Pretraining(Pretrained):
    """What :func:`run_pretraining` returns: the trained U-Net (``encoder`` is its ResNet-18),
    the engine's :class:`~prostate_course.train.FitResult` (without ``best_state``: the last
    weights are the model's), the watch :class:`Panel` and its
    restorations ``snapshots`` [(epoch, (k, C, H, W) float16)], epoch 0 = before training."""

    panel: Panel | None = field(repr=False)
    snapshots: list = field(repr=False)
    config: dict

    def summary(self) -> dict:
        """JSON-safe facts for the checkpoint manifest and the results."""
        out = {"method": self.method, **self.config, **self.fit.summary()}
        h = self.fit.history
        if "val_loss" in h and h["val_loss"].notna().any():
            last = h[h["val_loss"].notna()].iloc[-1]
            out["watch_loss"], out["watch_copy_loss"] = float(last["val_loss"]), float(last["val_copy_loss"])
        return out

    def figure(self, channel: int = 0, n: int | None = None, **kw):
        """:func:`reconstruction_figure` of the watch slices over the epochs."""
        if self.panel is None or not self.snapshots:
            raise ValueError("this pretraining kept no watch set (watch=0)")
        k = len(self.snapshots[0][1])
        restored = {f"epoch {e}": s for e, s in self.snapshots}
        return reconstruction_figure(self.panel.original[:k], self.panel.corrupted[:k], restored,
                                     mask=None if self.panel.mask is None else self.panel.mask[:k],
                                     channel=channel, n=n, **kw)


def run_pretraining(method: str, slices, *, epochs: int = 2, steps_per_epoch: int | None = None,
                    batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4,
                    warmup_steps: int = 0, seed: int = 0, device=None, table=None,
                    watch: int = 64, keep: int = 4, val_every: int = 1, mask_ratio: float = 0.6,
                    patch: float = 1 / 8, widths: Sequence[int] | None = None, progress: bool = True,
                    desc: str | None = None, **pretext_kw) -> Pretraining:
    """Pretrain a fresh encoder (seeded by ``seed``) by restoration on unlabelled training
    ``slices`` with the training engine (AdamW, cosine decay; ``epochs`` x ``steps_per_epoch``
    steps of ``batch_size``). ``watch`` evenly spaced slices, corrupted once, are restored
    after every ``val_every`` epochs (their loss is ``val_loss`` in the history; the first
    ``keep`` restorations are kept for the panels). ``widths``: the decoder's
    (:func:`restoration_model`). The last weights are kept."""
    from ..repro import get_device

    check_pretraining_slices(slices, table)
    device = torch.device(device) if device is not None else get_device()
    step = RestorationStep(method, keep=keep, mask_ratio=mask_ratio, patch=patch, **pretext_kw)
    torch.manual_seed(seed)
    model = restoration_model(widths=widths)
    images = as_images(slices)
    panel = step.make_panel(images[torch.as_tensor(watch_indices(len(images), watch))]) if watch else None
    snapshots = []
    if panel is not None:
        step.validate(model, panel, device, "auto")            # epoch 0: the untrained network
    res = fit(model, slices, panel, step=step, epochs=epochs, batch_size=batch_size,
              steps_per_epoch=steps_per_epoch, lr=lr, weight_decay=weight_decay,
              warmup_steps=warmup_steps, seed=seed, device=device, restore_best=False,
              val_every=val_every, progress=progress, desc=desc or f"pretrain {method}")
    if panel is not None:
        h = res.history
        epochs_seen = [0] + [int(e) for e in h.loc[h["val_loss"].notna(), "epoch"]]
        snapshots = list(zip(epochs_seen, step.snapshots))
    config = {"epochs": epochs, "steps_per_epoch": res.steps // max(len(res.history), 1),
              "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
              "warmup_steps": warmup_steps, "seed": seed, "n_slices": len(images),
              "n_cases": len(getattr(slices, "case_ids", []) or [])}
    if method == "mae":
        config.update(mask_ratio=mask_ratio, patch=patch)
    if widths is not None:
        config["decoder_widths"] = [int(w) for w in widths]
    config.update(pretext_kw)
    return Pretraining(method, model, res, panel, snapshots, config)


def pretrain(method: str, slices, steps: int, seed: int = 0, device=None, *, batch_size: int = 32,
             lr: float = 1e-3, table=None, progress: bool = False, **kw) -> nn.Module:
    """A quickly pretrained encoder (``steps`` steps, no watch set): what a later notebook
    trains as a stand-in when notebook 02's checkpoint is missing or stale (and flags)."""
    return run_pretraining(method, slices, epochs=1, steps_per_epoch=int(steps), batch_size=batch_size,
                           lr=lr, seed=seed, device=device, table=table, watch=0,
                           progress=progress, **kw).encoder


def save_encoder(pre: Pretraining, dataset, profile: str, seed: int | None = None,
                 notebook: str = NOTEBOOK) -> Path:
    """Write ``pre.encoder`` to ``artifacts.checkpoint_path(profile, notebook, method, seed)``
    with the dataset's provenance (key, generator version, split hash, code) and the
    pretraining summary in its manifest."""
    from ..artifacts import checkpoint_path, provenance
    from ..models import save_checkpoint

    seed = pre.config["seed"] if seed is None else int(seed)
    path = checkpoint_path(profile, notebook, pre.method, seed)
    return save_checkpoint(pre.encoder, path, provenance(dataset), method=pre.method, seed=seed,
                           pretraining=pre.summary())


# ----------------------------------------------------------------------------- diagnostics
def sharpness(x: torch.Tensor) -> torch.Tensor:
    """Mean squared discrete Laplacian per image, (N,): low for a blurry image."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    c = x.shape[1]
    lap = nn.functional.conv2d(x.float(), k.to(x.device).expand(c, 1, 3, 3), groups=c)
    return lap.pow(2).flatten(1).mean(1)


def restoration_report(model, step: RestorationStep, images, device=None, seed: int = 777,
                       regions: dict | None = None) -> pd.DataFrame:
    """How well ``model`` restores ``images`` corrupted by ``step`` (fixed ``seed``): the
    restoration and copy-the-input MSE, and the restored images' sharpness relative to the
    originals' (1 = as sharp, near 0 = blurred: a blurry restoration lowers the MSE but keeps
    little texture). ``regions`` {name: (N, H, W) bool}: the MSE inside each region too (e.g.
    lesion, rest of the gland), on the masked pixels only for "mae"."""
    from ..repro import get_device

    device = torch.device(device) if device is not None else get_device()
    panel = step.make_panel(images, seed=seed)
    pred = step.restore(model, panel, device)
    m = panel.mask if panel.mask is not None else torch.ones_like(panel.original[:, :1], dtype=torch.bool)
    rows = [{"region": "all", "restored_mse": float(restoration_loss(pred, panel.original, m)),
             "copy_mse": float(restoration_loss(panel.corrupted, panel.original, m)),
             "pixels": int(m.sum())}]
    for name, r in (regions or {}).items():
        rm = m & torch.as_tensor(r, dtype=torch.bool)[:, None]
        if rm.any():
            rows.append({"region": name, "restored_mse": float(restoration_loss(pred, panel.original, rm)),
                         "copy_mse": float(restoration_loss(panel.corrupted, panel.original, rm)),
                         "pixels": int(rm.sum())})
    out = pd.DataFrame(rows)
    out["sharpness_ratio"] = float(sharpness(pred).mean() / sharpness(panel.original).mean().clamp_min(1e-12))
    return out


def masked_error_by_ratio(model, images, ratios, device=None, seed: int = 0,
                          patch: float = 1 / 8) -> pd.DataFrame:
    """The masked-pixel MSE of ``model`` when ``images`` are masked at each ratio (same seed
    per ratio), beside filling the hidden patches with 0 (the mean of a z-scored image)."""
    rows = []
    for r in ratios:
        step = RestorationStep("mae", flip_p=0.0, mask_ratio=float(r), patch=patch)
        rep = restoration_report(model, step, images, device=device, seed=seed)
        rows.append({"ratio": float(r), "restored_mse": rep.loc[0, "restored_mse"],
                     "fill_mse": rep.loc[0, "copy_mse"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- figures
def reconstruction_figure(original, corrupted, restored: dict, mask=None, channel: int = 0,
                          n: int | None = None, vmin: float = -2.5, vmax: float = 2.5,
                          channel_names=("T2W", "ADC", "HBV")):
    """One row per slice: original, corrupted input, then each restoration in ``restored``
    ({title: (N, C, H, W)}), all of ``channel`` on one grey scale; masked patches (``mask``)
    are outlined in the input. Returns the figure."""
    import matplotlib.pyplot as plt

    cols = [("original", original), ("input", corrupted)] + list(restored.items())
    n = min(len(original), n or len(original))
    fig, axes = plt.subplots(n, len(cols), figsize=(1.7 * len(cols), 1.75 * n), squeeze=False)
    for i in range(n):
        for j, (title, imgs) in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(torch.as_tensor(imgs[i, channel]).float().cpu().numpy(), cmap="gray",
                      vmin=vmin, vmax=vmax)
            if j == 1 and mask is not None:
                ax.contour(torch.as_tensor(mask[i, 0]).cpu().numpy().astype(float), levels=[0.5],
                           colors="tab:orange", linewidths=0.5)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.suptitle(f"restoration of the watch slices ({channel_names[channel]})", fontsize=9)
    fig.tight_layout()
    return fig


__all__ = ["METHODS", "NOTEBOOK", "restoration_model", "restoration_loss", "corruption", "Panel",
           "RestorationStep", "check_pretraining_slices", "watch_indices", "Pretraining",
           "run_pretraining", "pretrain", "save_encoder", "sharpness", "restoration_report",
           "masked_error_by_ratio", "reconstruction_figure"]
