"""Batch augmentation on the training device (docs/ARCHITECTURE.md "Data on the device").

Per-sample CPU transforms in DataLoader workers starve a GPU 10-40x; here each transform takes a
whole batch (N, C, H, W) - or (N, C, D, H, W) - already on the training device and draws one set
of random parameters per sample with tensor operations, so the same code runs on a GPU and on
the CPU in CI. They are small composable pieces in the spirit of MONAI's dictionary transforms:

    aug = Compose([RandFlip(), RandAffine(rotate_deg=10), RandIntensity(), RandGaussianNoise()],
                  seed=0)
    x = aug(x)                                    # a tensor batch
    b = aug({"image": x, "label": mask})          # geometric ones move masks with the image

Randomness comes only from a :class:`torch.Generator` on the batch's device, seeded from
``seed``: the same seed gives the same augmentations (bitwise on CPU). MONAI's ``Rand*``
transforms work per sample (and per-sample CPU randomness), hence these hand-written batched
versions; the geometry itself is torch's ``affine_grid``/``grid_sample``.

Choices for prostate bpMRI: left-right flips are anatomically plausible (the gland is roughly
symmetric), up-down flips are not (so off by default); rotations stay small (patients lie
supine, +-10 degrees); intensity changes are mild because intensities carry the diagnosis
(dark T2W/ADC, bright HBV) and the images are z-scored per case.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def _as_dict(batch):
    if isinstance(batch, torch.Tensor):
        return {"image": batch}, True
    if isinstance(batch, dict):
        return dict(batch), False
    raise TypeError(f"augmentations take a tensor or a dict of tensors, got {type(batch).__name__}")


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _apply_prob(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    """(n,) bool: which samples are transformed."""
    return torch.rand(n, generator=g, device=device) < p


class BatchTransform:
    """Base class. ``keys`` are the image-like entries (intensity transforms touch only these);
    ``label_keys`` are masks, moved by geometric transforms with nearest-neighbour sampling."""

    geometric = False

    def __init__(self, keys: Sequence[str] = ("image",), label_keys: Sequence[str] = ("label",)):
        self.keys = tuple(keys)
        self.label_keys = tuple(label_keys)

    def __call__(self, batch, generator: torch.Generator):
        d, was_tensor = _as_dict(batch)
        ref = d[self.keys[0]]
        if ref.ndim not in (4, 5):
            raise ValueError(f"{type(self).__name__}: expected a batch (N, C, H, W) or "
                             f"(N, C, D, H, W), got shape {tuple(ref.shape)}")
        d = self.apply(d, generator)
        return d["image"] if was_tensor else d

    def apply(self, d: dict, g: torch.Generator) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in ("keys", "label_keys"))
        return f"{type(self).__name__}({args})"


class RandFlip(BatchTransform):
    """Flip each sample along ``dims`` (negative = counted from the end; -1 = left-right)
    independently with probability ``p``."""

    geometric = True

    def __init__(self, dims: Sequence[int] = (-1,), p: float = 0.5, **kw):
        super().__init__(**kw)
        self.dims, self.p = tuple(dims), p

    def apply(self, d, g):
        ref = d[self.keys[0]]
        n = ref.shape[0]
        for dim in self.dims:
            flip = _apply_prob(n, self.p, g, ref.device)
            for k in self.keys + self.label_keys:
                if k in d:
                    x = d[k]
                    m = flip.view(-1, *([1] * (x.ndim - 1)))
                    d[k] = torch.where(m, x.flip(dim), x)
        return d


class RandAffine(BatchTransform):
    """Random in-plane rotation (+-``rotate_deg``), isotropic zoom (``scale`` range) and
    translation (+-``translate`` of the field of view) per sample, applied with probability
    ``p``: one ``affine_grid`` + ``grid_sample`` for the whole batch (bilinear for images,
    nearest for masks, zeros outside = the z-scored mean). 3D batches turn in the (H, W)
    plane only (thick slices)."""

    geometric = True

    def __init__(self, rotate_deg: float = 10.0, scale: tuple[float, float] = (0.9, 1.1),
                 translate: float = 0.05, p: float = 1.0, padding_mode: str = "zeros", **kw):
        super().__init__(**kw)
        self.rotate_deg, self.scale, self.translate, self.p = rotate_deg, tuple(scale), translate, p
        self.padding_mode = padding_mode

    def theta(self, n: int, spatial: int, g: torch.Generator, device) -> torch.Tensor:
        """(n, spatial, spatial + 1) matrices mapping output to input normalised coordinates."""
        ang = _uniform(n, -1.0, 1.0, g, device) * math.radians(self.rotate_deg)
        s = _uniform(n, *self.scale, g, device)
        t = _uniform(n * 2, -self.translate, self.translate, g, device).view(n, 2) * 2  # [-1, 1] units
        on = _apply_prob(n, self.p, g, device)
        ang = torch.where(on, ang, torch.zeros_like(ang))
        s = torch.where(on, s, torch.ones_like(s))
        t = torch.where(on[:, None], t, torch.zeros_like(t))
        cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
        th = torch.zeros(n, spatial, spatial + 1, device=device)
        # grid coordinates are (x, y[, z]) = (W, H[, D]); rotate in (x, y)
        th[:, 0, 0], th[:, 0, 1], th[:, 0, -1] = cos, -sin, t[:, 0]
        th[:, 1, 0], th[:, 1, 1], th[:, 1, -1] = sin, cos, t[:, 1]
        if spatial == 3:
            th[:, 2, 2] = 1.0
        return th

    def apply(self, d, g):
        ref = d[self.keys[0]]
        spatial = ref.ndim - 2
        th = self.theta(ref.shape[0], spatial, g, ref.device)
        grid = None
        for k in self.keys + self.label_keys:
            if k not in d:
                continue
            x = d[k]
            if grid is None or grid.shape[1:-1] != x.shape[2:]:
                grid = F.affine_grid(th.to(torch.float32), list(x.shape), align_corners=False)
            if k in self.label_keys:
                y = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros",
                                  align_corners=False)
                d[k] = y.to(x.dtype)
            else:
                d[k] = F.grid_sample(x.float(), grid, mode="bilinear",
                                     padding_mode=self.padding_mode, align_corners=False).to(x.dtype)
        return d


class RandIntensity(BatchTransform):
    """x' = a * x + b with a ~ U(``scale``), b ~ U(``shift``), per sample and (if
    ``per_channel``) per channel, with probability ``p``. On z-scored images b is in std units."""

    def __init__(self, scale: tuple[float, float] = (0.9, 1.1), shift: tuple[float, float] = (-0.1, 0.1),
                 per_channel: bool = True, p: float = 1.0, **kw):
        super().__init__(**kw)
        self.scale, self.shift, self.per_channel, self.p = tuple(scale), tuple(shift), per_channel, p

    def apply(self, d, g):
        ref = d[self.keys[0]]
        n, c = ref.shape[:2]
        cc = c if self.per_channel else 1
        a = _uniform(n * cc, *self.scale, g, ref.device).view(n, cc)
        b = _uniform(n * cc, *self.shift, g, ref.device).view(n, cc)
        on = _apply_prob(n, self.p, g, ref.device)[:, None]
        a = torch.where(on, a, torch.ones_like(a))
        b = torch.where(on, b, torch.zeros_like(b))
        shape = (n, cc) + (1,) * (ref.ndim - 2)
        for k in self.keys:
            if k in d:
                d[k] = (d[k] * a.view(shape) + b.view(shape)).to(d[k].dtype)
        return d


class RandGaussianNoise(BatchTransform):
    """x' = x + sigma * eps, eps ~ N(0, 1), sigma ~ U(0, ``std``) per sample, with probability
    ``p`` (MRI noise is Rician; at these SNRs Gaussian is a fair approximation)."""

    def __init__(self, std: float = 0.05, p: float = 0.5, **kw):
        super().__init__(**kw)
        self.std, self.p = std, p

    def apply(self, d, g):
        ref = d[self.keys[0]]
        n = ref.shape[0]
        sigma = _uniform(n, 0.0, self.std, g, ref.device)
        sigma = torch.where(_apply_prob(n, self.p, g, ref.device), sigma, torch.zeros_like(sigma))
        shape = (n,) + (1,) * (ref.ndim - 1)
        for k in self.keys:
            if k in d:
                x = d[k]
                eps = torch.randn(x.shape, generator=g, device=x.device, dtype=torch.float32)
                d[k] = (x + sigma.view(shape) * eps).to(x.dtype)
        return d


class Compose:
    """Apply transforms in order with one seeded generator per device.

    ``aug(batch)`` draws from the generator of the batch's device (created on first use from
    ``seed``); ``aug.reset()`` restarts the random stream. Passing ``generator=`` overrides it.
    """

    def __init__(self, transforms: Sequence[BatchTransform], seed: int = 0):
        self.transforms = list(transforms)
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device) -> torch.Generator:
        device = torch.device(device)
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generators[key] = g
        return self._generators[key]

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.seed = int(seed)
        self._generators.clear()

    def __call__(self, batch, generator: torch.Generator | None = None):
        d, _ = _as_dict(batch)
        device = next(iter(d.values())).device
        g = generator if generator is not None else self.generator(device)
        for t in self.transforms:
            batch = t(batch, g)
        return batch

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n], seed={self.seed})"


def default_augmentation(seed: int = 0, strength: float = 1.0) -> Compose:
    """The course's default for 2D bpMRI slices: left-right flip, small affine, mild intensity
    scale/shift, weak noise. ``strength`` scales every range (0 = identity)."""
    s = float(strength)
    return Compose([
        RandFlip(dims=(-1,), p=0.5 * min(s, 1.0)),
        RandAffine(rotate_deg=10.0 * s, scale=(1 - 0.1 * s, 1 + 0.1 * s), translate=0.05 * s),
        RandIntensity(scale=(1 - 0.1 * s, 1 + 0.1 * s), shift=(-0.1 * s, 0.1 * s)),
        RandGaussianNoise(std=0.05 * s, p=0.5),
    ], seed=seed)
