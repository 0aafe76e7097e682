"""Automatic mixed precision (AMP): which reduced precision a device should train and infer in.

- CPU and Apple MPS: none (float32). CPU autocast exists, but on the course's small 2D networks it
  is slower than float32 and changes the numbers a CPU user reproduces.
- CUDA with native bfloat16 (compute capability 8.0 or more: A100, H100, L4, RTX 30xx+):
  bfloat16. Same exponent range as float32, so no loss scaling is needed.
- Older CUDA GPUs (a Colab T4 is 7.5, a V100 7.0): float16 with a gradient scaler.
  ``torch.cuda.is_bf16_supported()`` answers yes on a T4 too (emulated bfloat16, several times
  slower), which is why the rule reads the compute capability instead.

Micikevicius et al., "Mixed precision training", ICLR 2018 (float16 with loss scaling);
Kalamkar et al., "A study of BFLOAT16 for deep learning training", arXiv 1905.12322, 2019.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

#: the smallest CUDA compute capability with native bfloat16 arithmetic (NVIDIA Ampere)
BF16_MIN_CAPABILITY = (8, 0)
AMP_CHOICES = ("auto", "bf16", "fp16", True, False, None)


def native_bf16(device) -> bool:
    """True when ``device`` is a CUDA GPU with native bfloat16 (compute capability >= 8.0)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    return tuple(torch.cuda.get_device_capability(device)) >= BF16_MIN_CAPABILITY


def amp_dtype(device, amp="auto") -> torch.dtype | None:
    """The autocast dtype for ``device``, or None for float32.

    ``amp``: ``"auto"`` (or True) picks bfloat16 where the GPU has it natively, else float16;
    ``"fp16"`` forces float16; ``"bf16"`` asks for bfloat16 and falls back to float16 with a
    warning on a GPU without native bfloat16; False/None turns AMP off. Off on CPU and MPS.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of 'auto', 'bf16', 'fp16', True or False, got {amp!r}")
    device = torch.device(device)
    if not amp or device.type != "cuda":
        return None
    if amp == "fp16":
        return torch.float16
    if native_bf16(device):
        return torch.bfloat16
    if amp == "bf16":
        warnings.warn(f"{torch.cuda.get_device_name(device)} has no native bfloat16 (compute "
                      f"capability < 8.0): using float16 with a gradient scaler", stacklevel=2)
    return torch.float16


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 and float32 need none."""
    return dtype == torch.float16


def autocast(device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


__all__ = ["amp_dtype", "autocast", "native_bf16", "needs_grad_scaler", "BF16_MIN_CAPABILITY"]
