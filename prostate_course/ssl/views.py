"""Contrastive views of bpMRI slices, made for whole batches on the training device.

A contrastive method learns what stays the same between two random *views* of one image, so the
views decide what the encoder learns to ignore (Chen et al. 2020, SimCLR, section 3: crop and
colour distortion matter most for photos). For prostate bpMRI the views are:

- random resized crop (area share ``crop_scale``, aspect 3/4-4/3), resampled back to the slice
  size: scale and position invariance. The lower bound is far above SimCLR's 0.08: a lesion
  covers a few per cent of a slice, and a small crop would often show no lesion at all
  (:func:`lesion_kept` measures it);
- left-right flip (the gland is roughly symmetric; up-down is not anatomical);
- per-channel intensity scale and shift, x' = a_c x + b_c (scanner and coil differences);
- per-channel gamma on the channel's own range (non-linear contrast differences);
- Gaussian noise, Gaussian blur (resolution and SNR differences between scanners);
- cutout: a box set to the mean (0 after the per-case z-score), partial occlusion.

No colour jitter made for photos (hue, saturation, grey-scale conversion): the three channels
are T2W, ADC and HBV, three different measurements, not three colours; mixing or dropping them
would destroy exactly the contrast (dark T2W and ADC, bright HBV) that marks a lesion.

Every transform takes the whole batch (N, C, H, W) and draws its parameters per sample from the
:class:`torch.Generator` of :class:`prostate_course.augment.Compose` (seeded: the same seed gives
the same views), with tensor operations only, so the same code runs on a GPU and on the CPU. We
checked ``kornia.augmentation`` first (batched, per-sample parameters); see
:data:`KORNIA_NOTE` for why these few transforms are written here instead.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..augment import BatchTransform, Compose, RandFlip, RandGaussianNoise, RandIntensity, _uniform

#: why the views are not kornia's (kornia 0.9.0, read against its documentation and tried beside
#: the CPU torch): (1) its intensity transforms assume images in [0, 1] (gamma raises negative
#: values to a power, contrast and brightness clip the output to [0, 1]), which z-scored MRI is
#: not, so intensity scale and gamma would be hand-written anyway; (2) its Gaussian noise has
#: one std for the whole batch; (3) it draws from torch's global random stream, not a generator
#: of its own, so a view could not be reproduced apart from the training step. The crop here is
#: one ``affine_grid`` + ``grid_sample`` for the whole batch and the blur one grouped
#: convolution, as kornia does them; no speed difference is claimed (none was measured).
KORNIA_NOTE = ("kornia.augmentation assumes intensities in [0, 1] and draws from torch's global "
               "random stream; z-scored MRI and seeded, reproducible views need these few transforms "
               "written here (see prostate_course.ssl.views)")


def _warp(d: dict, theta: torch.Tensor, keys, label_keys) -> dict:
    """Resample every image (bilinear) and mask (nearest) entry of ``d`` with ``theta``."""
    for k in tuple(keys) + tuple(label_keys):
        if k not in d:
            continue
        x = d[k]
        grid = F.affine_grid(theta.to(torch.float32), [x.shape[0], 1, *x.shape[-2:]], align_corners=False)
        if k in label_keys:
            y = x.float().unsqueeze(1) if x.ndim == 3 else x.float()
            y = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)
            d[k] = (y.squeeze(1) if x.ndim == 3 else y).to(x.dtype)
        else:
            d[k] = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False).to(x.dtype)
    return d


class RandResizedCrop(BatchTransform):
    """Crop a random box of area share s ~ U(``scale``) and aspect ratio r (log-uniform in
    ``ratio``) from each sample and resample it to the full size (SimCLR's crop; Szegedy et al.
    2015). In normalised coordinates the box has half-sides (sqrt(s r), sqrt(s / r)), clipped to
    1 (an extreme aspect then gives a smaller area), and a uniform centre that keeps it inside
    the image; one batched ``grid_sample``."""

    geometric = True

    def __init__(self, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), p: float = 1.0, **kw):
        super().__init__(**kw)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
        self.scale, self.ratio, self.p = tuple(scale), tuple(ratio), p

    def theta(self, n: int, g: torch.Generator, device) -> torch.Tensor:
        s = _uniform(n, *self.scale, g, device)
        r = torch.exp(_uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), g, device))
        w, h = torch.sqrt(s * r).clamp(max=1.0), torch.sqrt(s / r).clamp(max=1.0)
        cx = _uniform(n, -1.0, 1.0, g, device) * (1 - w)
        cy = _uniform(n, -1.0, 1.0, g, device) * (1 - h)
        on = torch.rand(n, generator=g, device=device) < self.p
        one, zero = torch.ones_like(w), torch.zeros_like(w)
        w, h = torch.where(on, w, one), torch.where(on, h, one)
        cx, cy = torch.where(on, cx, zero), torch.where(on, cy, zero)
        th = torch.zeros(n, 2, 3, device=device)
        th[:, 0, 0], th[:, 0, 2], th[:, 1, 1], th[:, 1, 2] = w, cx, h, cy
        return th

    def apply(self, d, g):
        ref = d[self.keys[0]]
        if ref.ndim != 4:
            raise ValueError(f"RandResizedCrop takes 2D batches (N, C, H, W), got {tuple(ref.shape)}")
        return _warp(d, self.theta(ref.shape[0], g, ref.device), self.keys, self.label_keys)


class RandGamma(BatchTransform):
    """Per sample and channel, x' = lo + (hi - lo) ((x - lo) / (hi - lo))^gamma on the channel's
    own range [lo, hi], log gamma ~ U(-log ``gamma``, log ``gamma``), with probability ``p``.
    The range is kept, so a z-scored channel stays roughly z-scored (MONAI's
    ``RandAdjustContrast`` does the same per image; this is its batched form)."""

    def __init__(self, gamma: float = 1.5, p: float = 0.5, **kw):
        super().__init__(**kw)
        if gamma < 1:
            raise ValueError(f"gamma is the largest factor (>= 1), got {gamma}")
        self.gamma, self.p = float(gamma), p

    def apply(self, d, g):
        ref = d[self.keys[0]]
        n, c = ref.shape[:2]
        lg = _uniform(n * c, -math.log(self.gamma), math.log(self.gamma), g, ref.device).view(n, c)
        on = (torch.rand(n, generator=g, device=ref.device) < self.p)[:, None]
        gam = torch.exp(torch.where(on, lg, torch.zeros_like(lg)))[..., None, None]
        for k in self.keys:
            if k in d:
                x = d[k].float()
                lo = x.amin(dim=(-2, -1), keepdim=True)
                span = (x.amax(dim=(-2, -1), keepdim=True) - lo).clamp_min(1e-6)
                d[k] = (lo + span * ((x - lo) / span).clamp(0, 1).pow(gam)).to(d[k].dtype)
        return d


class RandGaussianBlur(BatchTransform):
    """Gaussian blur with sigma ~ U(``sigma``) pixels per sample, with probability ``p``: one
    separable, grouped convolution for the whole batch (one kernel per sample and channel),
    reflect padding."""

    def __init__(self, sigma=(0.1, 1.0), p: float = 0.5, **kw):
        super().__init__(**kw)
        self.sigma, self.p = tuple(sigma), p
        self.radius = max(1, math.ceil(3 * self.sigma[1]))

    def kernels(self, n: int, g: torch.Generator, device) -> torch.Tensor:
        """(n, 2r + 1) normalised 1D kernels; a sample that is not blurred gets a delta."""
        sig = _uniform(n, *self.sigma, g, device)
        on = torch.rand(n, generator=g, device=device) < self.p
        x = torch.arange(-self.radius, self.radius + 1, device=device, dtype=torch.float32)
        k = torch.exp(-x[None] ** 2 / (2 * sig[:, None] ** 2))
        k = k / k.sum(1, keepdim=True)
        delta = (x == 0).float().expand_as(k)
        return torch.where(on[:, None], k, delta)

    def apply(self, d, g):
        ref = d[self.keys[0]]
        n, c, h, w = ref.shape
        k = self.kernels(n, g, ref.device).repeat_interleave(c, dim=0)    # (n c, 2r + 1)
        r = self.radius
        for key in self.keys:
            if key in d:
                x = d[key].float().reshape(1, n * c, h, w)
                x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
                x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k[:, None, :, None], groups=n * c)
                d[key] = x.view(n, c, h, w).to(d[key].dtype)
        return d


class RandCutout(BatchTransform):
    """Set one box per sample (side shares ~ U(``size``) of height and width, uniform
    position) to ``value`` in every channel, with probability ``p`` (DeVries & Taylor 2017,
    "Improved regularization of convolutional neural networks with cutout"). Masks in
    ``label_keys`` are cleared in the box too, so they show what stays visible."""

    geometric = True

    def __init__(self, size=(0.1, 0.3), p: float = 0.5, value: float = 0.0, **kw):
        super().__init__(**kw)
        self.size, self.p, self.value = tuple(size), p, float(value)

    def box_mask(self, n: int, h: int, w: int, g: torch.Generator, device) -> torch.Tensor:
        """(n, 1, h, w) bool, True inside each sample's box."""
        bh = _uniform(n, *self.size, g, device) * h
        bw = _uniform(n, *self.size, g, device) * w
        y0 = _uniform(n, 0.0, 1.0, g, device) * (h - bh)
        x0 = _uniform(n, 0.0, 1.0, g, device) * (w - bw)
        on = torch.rand(n, generator=g, device=device) < self.p
        ys = torch.arange(h, device=device, dtype=torch.float32)[None, :, None] + 0.5
        xs = torch.arange(w, device=device, dtype=torch.float32)[None, None, :] + 0.5
        inside = ((ys >= y0[:, None, None]) & (ys < (y0 + bh)[:, None, None])
                  & (xs >= x0[:, None, None]) & (xs < (x0 + bw)[:, None, None]))
        return (inside & on[:, None, None])[:, None]

    def apply(self, d, g):
        ref = d[self.keys[0]]
        n, _, h, w = ref.shape
        m = self.box_mask(n, h, w, g, ref.device)
        for k in self.keys:
            if k in d:
                d[k] = d[k].masked_fill(m, self.value)
        for k in self.label_keys:
            if k in d:
                d[k] = d[k].masked_fill(m[:, 0] if d[k].ndim == 3 else m, 0)
        return d


def contrastive_views(seed: int = 0, strength: float = 1.0, crop_scale=(0.35, 1.0),
                      flip: bool = True, intensity: bool = True, gamma: bool = True,
                      noise: bool = True, blur: bool = True, cutout: bool = True) -> Compose:
    """The course's contrastive views for 2D bpMRI slices (module docstring); each switch
    leaves one transform out (for the ablation in notebook 03). ``strength`` scales the
    intensity, gamma, noise and blur ranges and the cutout size (0 = only crop and flip)."""
    s = float(strength)
    ts = [RandResizedCrop(scale=crop_scale)]
    if flip:
        ts.append(RandFlip(dims=(-1,), p=0.5))
    if intensity and s > 0:
        ts.append(RandIntensity(scale=(1 - 0.2 * s, 1 + 0.2 * s), shift=(-0.2 * s, 0.2 * s), p=0.8))
    if gamma and s > 0:
        ts.append(RandGamma(gamma=1 + 0.5 * s, p=0.5))
    if blur and s > 0:
        ts.append(RandGaussianBlur(sigma=(0.1, 1.0 * s), p=0.5))
    if noise and s > 0:
        ts.append(RandGaussianNoise(std=0.1 * s, p=0.5))
    if cutout and s > 0:
        ts.append(RandCutout(size=(0.1 * s, 0.3 * s), p=0.5))
    return Compose(ts, seed=seed)


@torch.no_grad()
def lesion_kept(views: Compose, images: torch.Tensor, lesion_mask: torch.Tensor,
                n_draws: int = 4) -> float:
    """The share of views of lesion slices that still show some lesion: ``images`` (N, C, H, W)
    and ``lesion_mask`` (N, H, W) of slices WITH a lesion; each is viewed ``n_draws`` times with
    the geometric transforms moving (and cutout clearing) the mask. 1.0 = no view loses the
    lesion; a low value means the views often destroy the very signal a classifier needs."""
    if len(images) == 0:
        raise ValueError("lesion_kept needs some slices with a lesion")
    keep = []
    for _ in range(n_draws):
        out = views({"image": images.float(), "label": (lesion_mask > 0).to(torch.uint8)})
        keep.append(out["label"].flatten(1).any(1))
    return float(torch.cat(keep).float().mean())


__all__ = ["RandResizedCrop", "RandGamma", "RandGaussianBlur", "RandCutout", "contrastive_views",
           "lesion_kept", "KORNIA_NOTE"]
