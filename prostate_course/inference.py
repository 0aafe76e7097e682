"""Batched inference in one place: logits, probabilities and frozen-encoder features.

Every evaluation of notebooks 01-05 runs a network over many images without gradients; this
module owns that loop: eval mode (BatchNorm uses its running statistics, no dropout), batches
moved to the device one at a time (the images may stay in CPU RAM, in float16), AMP by the rule
of :mod:`prostate_course.amp`, channels_last on CUDA, and one host transfer at the end.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .amp import amp_dtype, autocast
from .repro import get_device


def eval_batch_size(device, requested: int | None = None) -> int:
    """Inference batch: ``requested``, else 256 on a GPU and 64 on a CPU (a 512-image batch of
    64 px slices adds ~0.5 GB of activations on the CPU; Binder's RAM cap is 2 GB)."""
    if requested:
        return int(requested)
    return 256 if torch.device(device).type == "cuda" else 64


def as_images(data) -> torch.Tensor:
    """The image tensor (N, C, ...) of a tensor, an array or a SliceSet-like object."""
    if isinstance(data, torch.Tensor):
        return data
    if hasattr(data, "images"):
        return data.images
    if isinstance(data, dict):
        return data["images"]
    return torch.as_tensor(np.asarray(data))


@torch.no_grad()
def forward_batches(fn: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, images,
                    batch_size: int | None = None, device=None, amp="auto",
                    progress: bool = False, desc: str = "inference") -> torch.Tensor:
    """``fn(batch)`` over ``images`` in batches with ``module`` in eval mode; float32 output
    concatenated on ``device``. ``module``'s train/eval state is restored afterwards."""
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else get_device()
    images = as_images(images)
    batch_size = eval_batch_size(device, batch_size)
    dtype = amp_dtype(device, amp)
    fmt = torch.channels_last if device.type == "cuda" and images.ndim == 4 else None
    was_training = module.training
    module.eval().to(device)
    out = None                                   # filled in place: no list of batches to concatenate
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc=desc, disable=not progress, leave=False):
        xb = images[i:i + batch_size].to(device, non_blocking=True).float()
        if fmt is not None:
            xb = xb.contiguous(memory_format=fmt)
        with autocast(device, dtype):
            yb = fn(xb).float()
        if out is None:
            out = torch.empty((len(images), *yb.shape[1:]), dtype=torch.float32, device=yb.device)
        out[i:i + len(yb)] = yb
        del yb
    module.train(was_training)
    return out if out is not None else torch.zeros(0, device=device)


def predict_logits(model: nn.Module, images, batch_size: int | None = None, device=None,
                   amp="auto") -> torch.Tensor:
    """Logits of ``model`` in eval mode, batched, as one float32 tensor on ``device``."""
    return forward_batches(model, model, images, batch_size, device, amp)


def predict(model: nn.Module, images, batch_size: int | None = None, device=None,
            amp="auto") -> np.ndarray:
    """Probabilities (numpy): sigmoid of a single logit per image, (N,); softmax for several."""
    logits = predict_logits(model, images, batch_size, device, amp)
    probs = torch.sigmoid(logits) if logits.ndim == 1 else torch.softmax(logits, dim=1)
    return probs.cpu().numpy()


def extract_features(encoder: nn.Module, images, batch_size: int | None = None, device=None,
                     amp="auto", progress: bool = False) -> np.ndarray:
    """(N, F) float32 features of a frozen ``encoder`` (eval mode)."""
    feats = forward_batches(encoder, encoder, images, batch_size, device, amp, progress,
                            desc="features")
    if feats.numel() == 0:
        return np.zeros((0, getattr(encoder, "out_features", 0)), np.float32)
    return feats.cpu().numpy().astype(np.float32)


__all__ = ["eval_batch_size", "forward_batches", "predict_logits", "predict", "extract_features"]
