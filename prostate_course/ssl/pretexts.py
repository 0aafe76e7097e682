"""Restoration pretexts: corrupt a batch of slices so that a network can learn by undoing it.

Models Genesis (Zhou et al., MICCAI 2019; Medical Image Analysis 2021, "Models Genesis")
trains an encoder-decoder to restore the original image x from a transformed T(x), with the
MSE loss ||g(T(x)) - x||^2. T chains, in this order (each with its own probability):

- :class:`RandLocalShuffle` - local pixel shuffling (p 0.5): many small windows, the pixels of
  each permuted at random. Restoring them needs the local texture and boundaries.
- :class:`RandBezierIntensity` - non-linear intensity (p 0.9): every intensity mapped through a
  smooth monotonic cubic Bezier curve, half of the time inverted. Restoring it needs to know
  what each tissue's intensity should be.
- :class:`RandPaint` - painting (p 0.9): out-painting (0.8: noise everywhere except inside 1-5
  boxes) or in-painting (0.2: up to 5 boxes, side 1/6 to 1/3 of the image, filled with noise).
  Restoring it needs the anatomy around (in-painting) or the whole gland from a part of it
  (out-painting).

Masked autoencoding with a CNN (Xie et al., CVPR 2022, "SimMIM"; Tian et al., ICLR 2023,
"SparK"): :class:`RandPatchMask` hides a fixed share (the masking ratio) of a grid of square
patches; the loss is taken on the hidden pixels only.

Every transform takes a whole batch (N, C, H, W) on the training device. Its randomness is
drawn in one place, ``draw(shape, generator, device) -> params``, and the corruption itself,
``corrupt(x, params)``, is a deterministic function of the batch and those parameters (so a
test can feed crafted parameters with a known result). Used through
:class:`prostate_course.augment.Compose`, a seeded generator on the batch's device gives the
same corruptions for the same seed, as in :mod:`prostate_course.augment`. MONAI's
RandCoarseShuffle / RandCoarseDropout do shuffling and painting one sample at a time on the
CPU; these are batched re-implementations from the papers' descriptions (the original Models
Genesis code is under a non-commercial licence and is not used).

The images here are z-scored per case, not scaled to [0, 1] as CT in Models Genesis: the
intensity curve and the painting noise therefore work in each sample's and channel's own range
[min, max], which keeps the corrupted image in the range of the original.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..augment import BatchTransform, Compose


def _rand_int(low: torch.Tensor | int, high: torch.Tensor | int, shape, g, device) -> torch.Tensor:
    """Integers uniform in [low, high] (inclusive; tensors broadcast)."""
    u = torch.rand(shape, generator=g, device=device)
    low = torch.as_tensor(low, device=device)
    high = torch.as_tensor(high, device=device)
    return (low + torch.floor(u * (high - low + 1))).long().clamp(max=high)


def _side(fraction: float, n: int) -> int:
    return max(1, int(round(fraction * n)))


def _range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and channel minimum and span (max - min, at least 1e-12), shaped (N, C, 1, 1)."""
    flat = x.flatten(2)
    lo = flat.amin(-1)[..., None, None]
    span = (flat.amax(-1)[..., None, None] - lo).clamp_min(1e-12)
    return lo, span


class Pretext(BatchTransform):
    """Base class: :meth:`draw` draws the random parameters for a batch shape, :meth:`corrupt`
    applies them (deterministic). Calling the transform does both. 2D batches (N, C, H, W)."""

    def draw(self, shape: tuple, g: torch.Generator, device) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def corrupt(self, x: torch.Tensor, params: dict) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def apply(self, d: dict, g: torch.Generator) -> dict:
        x = d[self.keys[0]]
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} takes 2D batches (N, C, H, W), got shape {tuple(x.shape)}")
        params = self.draw(tuple(x.shape), g, x.device)
        for k in self.keys:
            if k in d:
                d[k] = self.corrupt(d[k], params)
        return d


# ------------------------------------------------------------------------ non-linear intensity
def bezier_curve(p1: torch.Tensor, p2: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Points of the cubic Bezier curve from P0 = (0, 0) to P3 = (1, 1) with control points
    ``p1``, ``p2`` (..., 2):

        B(t) = (1-t)^3 P0 + 3 (1-t)^2 t P1 + 3 (1-t) t^2 P2 + t^3 P3,   t in [0, 1].

    Returns (..., K, 2) for ``t`` of shape (K,)."""
    t = t.to(p1.dtype)
    basis = torch.stack([3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3], -1)   # (K, 3); P0 = 0
    ctrl = torch.stack([p1, p2, torch.ones_like(p1)], -2)                           # (..., 3, 2)
    return basis @ ctrl


def bezier_intensity(x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor,
                     invert: torch.Tensor | None = None, n_points: int = 257) -> torch.Tensor:
    """Map every intensity through a Bezier curve, per sample and channel.

    ``x`` (N, C, H, W); ``p1``, ``p2`` (N, C, 2) control points in [0, 1]^2; ``invert`` (N, C)
    bool. Each (sample, channel) is scaled to u in [0, 1] by its own min and max; the curve
    (u(t), y(t)) = B(t) is read as a function y(u) (sampled at ``n_points`` values of t and
    interpolated linearly); where ``invert``, y -> 1 - y; the result is scaled back to the
    original range. With x1 <= x2 the curve's u(t) is non-decreasing (its derivative's Bernstein
    coefficients x1, x2 - x1, 1 - x2 are >= 0), so y(u) is a function; with y1 <= y2 it is
    monotonic. Control points on the diagonal (x1 = y1, x2 = y2) give the identity.
    """
    n, c = x.shape[:2]
    lo, span = _range(x.float())
    u = ((x.float() - lo) / span).clamp(0, 1).reshape(n, c, -1).contiguous()
    t = torch.linspace(0, 1, n_points, device=x.device)
    pts = bezier_curve(p1.float(), p2.float(), t)                     # (N, C, K, 2)
    us = torch.cummax(pts[..., 0], -1).values.contiguous()            # guard rounding
    ys = pts[..., 1]
    i = torch.searchsorted(us, u).clamp(1, n_points - 1)
    u0, u1 = us.gather(-1, i - 1), us.gather(-1, i)
    y0, y1 = ys.gather(-1, i - 1), ys.gather(-1, i)
    w = ((u - u0) / (u1 - u0).clamp_min(1e-12)).clamp(0, 1)
    y = y0 + w * (y1 - y0)
    if invert is not None:
        y = torch.where(invert.to(x.device)[..., None], 1 - y, y)
    return (lo + span * y.view_as(x)).to(x.dtype)


class RandBezierIntensity(Pretext):
    """Models Genesis' non-linear intensity transform with probability ``p`` per sample: a
    random monotonic Bezier curve (:func:`bezier_intensity`) per sample and (``per_channel``)
    channel, inverted with probability ``p_invert``.

    The control points are two uniform points of [0, 1]^2 whose x- and y-coordinates are each
    sorted, P1 = (min x, min y), P2 = (max x, max y): this keeps every curve monotonic (a
    one-to-one map of intensities, as the paper asks) while covering concave, convex and
    S-shaped curves."""

    def __init__(self, p: float = 0.9, p_invert: float = 0.5, per_channel: bool = True,
                 n_points: int = 257, **kw):
        super().__init__(**kw)
        self.p, self.p_invert, self.per_channel, self.n_points = p, p_invert, per_channel, n_points

    def draw(self, shape, g, device) -> dict:
        n, c = shape[:2]
        cc = c if self.per_channel else 1
        pts = torch.rand(n, cc, 2, 2, generator=g, device=device).sort(dim=-2).values
        invert = torch.rand(n, cc, generator=g, device=device) < self.p_invert
        on = torch.rand(n, generator=g, device=device) < self.p
        return {"p1": pts[..., 0, :].expand(n, c, 2), "p2": pts[..., 1, :].expand(n, c, 2),
                "invert": invert.expand(n, c), "on": on}

    def corrupt(self, x, params):
        y = bezier_intensity(x, params["p1"], params["p2"], params["invert"], self.n_points)
        return torch.where(params["on"].view(-1, 1, 1, 1), y, x)


# ------------------------------------------------------------------------ local pixel shuffling
def shuffle_windows(x: torch.Tensor, windows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Permute the pixels inside windows, one window after the other.

    ``windows`` (N, J, 4) integers (top, left, height, width), height or width 0 = no window;
    ``keys`` (N, J, S, S) values in [0, 1), S >= every window side: the pixels of window j of
    sample n (row-major) move to the window's positions in the order of their keys (the key of
    pixel (r, c) of the window is keys[n, j, r, c]). Every channel of a pixel moves together.
    """
    n, c, h, w = x.shape
    s = keys.shape[-1]
    if windows.shape[:2] != keys.shape[:2] or keys.shape[-2] != s:
        raise ValueError(f"windows {tuple(windows.shape)} and keys {tuple(keys.shape)} disagree")
    if len(windows) and (windows[..., 2:] > s).any():
        raise ValueError(f"a window is larger than the key grid ({s} x {s})")
    flat = F.pad(x, (0, s, 0, s)).reshape(n, c, -1)   # room for a window's grid at the edge
    wp = w + s
    ar = torch.arange(s, device=x.device)
    order = torch.arange(s * s, device=x.device, dtype=torch.float32).expand(n, -1)
    for j in range(windows.shape[1]):
        top, left, hh, ww = windows[:, j].unbind(-1)
        valid = ((ar[None, :, None] < hh[:, None, None]) & (ar[None, None, :] < ww[:, None, None])).view(n, -1)
        pos = ((top[:, None, None] + ar[None, :, None]) * wp + left[:, None, None] + ar[None, None, :]).view(n, -1)
        # valid pixels first: targets in row-major order, sources in key order; the others keep
        # their place (same order in both), so only the window's pixels move
        dst = torch.argsort(torch.where(valid, order / (s * s), 2 + order), dim=1)
        src = torch.argsort(torch.where(valid, keys[:, j].reshape(n, -1).float(), 2 + order), dim=1)
        pos_c = pos[:, None].expand(n, c, -1)
        vals = flat.gather(2, pos_c)
        moved = vals.gather(2, src[:, None].expand(n, c, -1))
        flat.scatter_(2, pos_c, torch.empty_like(vals).scatter_(2, dst[:, None].expand(n, c, -1), moved))
    return flat.view(n, c, h + s, wp)[..., :h, :w]


class RandLocalShuffle(Pretext):
    """Models Genesis' local pixel shuffling with probability ``p`` per sample:
    ``n_windows`` windows, each side uniform in ``size`` (fractions of the image side; default
    1/32 to 1/8, i.e. 2-8 px at 64 px), placed uniformly inside the image, and the pixels of
    each permuted at random (:func:`shuffle_windows`). The global shape survives, the local
    texture does not."""

    def __init__(self, p: float = 0.5, n_windows: int = 48,
                 size: tuple[float, float] = (1 / 32, 1 / 8), **kw):
        super().__init__(**kw)
        self.p, self.n_windows, self.size = p, int(n_windows), tuple(size)

    def draw(self, shape, g, device) -> dict:
        n, _, h, w = shape
        side = min(h, w)
        smin, smax = _side(self.size[0], side), _side(self.size[1], side)
        j = self.n_windows
        hh = _rand_int(smin, smax, (n, j), g, device)
        ww = _rand_int(smin, smax, (n, j), g, device)
        top = _rand_int(0, h - hh, (n, j), g, device)
        left = _rand_int(0, w - ww, (n, j), g, device)
        on = (torch.rand(n, generator=g, device=device) < self.p)[:, None]
        hh = torch.where(on, hh, torch.zeros_like(hh))
        keys = torch.rand(n, j, smax, smax, generator=g, device=device)
        return {"windows": torch.stack([top, left, hh, ww], -1), "keys": keys}

    def corrupt(self, x, params):
        return shuffle_windows(x, params["windows"], params["keys"])


# ------------------------------------------------------------------------------------ painting
def box_mask(boxes: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, H, W) bool: the union of each sample's boxes; ``boxes`` (N, B, 4) integers (top,
    left, height, width), height or width 0 = no box."""
    h, w = size
    top, left, hh, ww = boxes.unbind(-1)
    r = torch.arange(h, device=boxes.device)
    c = torch.arange(w, device=boxes.device)
    in_r = (r >= top[..., None]) & (r < (top + hh)[..., None])        # (N, B, H)
    in_c = (c >= left[..., None]) & (c < (left + ww)[..., None])      # (N, B, W)
    return (in_r[..., :, None] & in_c[..., None, :]).any(1)


def paint(x: torch.Tensor, mask: torch.Tensor, outside: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Replace pixels by noise: inside ``mask`` (N, H, W) (in-painting), or outside it where
    ``outside`` (N,) is True (out-painting). ``noise`` (N, C, H, W) in [0, 1) is scaled to each
    sample's and channel's own intensity range [min, max]."""
    region = torch.where(outside.view(-1, 1, 1), ~mask, mask)[:, None]
    lo, span = _range(x.float())
    return torch.where(region, (lo + span * noise.float()).to(x.dtype), x)


class RandPaint(Pretext):
    """Models Genesis' painting with probability ``p`` per sample: out-painting with
    probability ``p_outpaint``, else in-painting, each with 1 to ``max_boxes`` boxes whose
    height and width are uniform fractions of the image (``inpaint_size`` 1/6-1/3 as in the
    paper; ``outpaint_size`` 1/4-1/2, our choice: the boxes keep about 10-60 % of a 64 px
    slice). The noise fills pixels uniformly in the sample's own range (:func:`paint`)."""

    def __init__(self, p: float = 0.9, p_outpaint: float = 0.8, max_boxes: int = 5,
                 inpaint_size: tuple[float, float] = (1 / 6, 1 / 3),
                 outpaint_size: tuple[float, float] = (1 / 4, 1 / 2), **kw):
        super().__init__(**kw)
        self.p, self.p_outpaint, self.max_boxes = p, p_outpaint, int(max_boxes)
        self.inpaint_size, self.outpaint_size = tuple(inpaint_size), tuple(outpaint_size)

    def draw(self, shape, g, device) -> dict:
        n, c, h, w = shape
        b = self.max_boxes
        on = torch.rand(n, generator=g, device=device) < self.p
        outside = torch.rand(n, generator=g, device=device) < self.p_outpaint
        count = _rand_int(1, b, (n,), g, device)
        lo = torch.where(outside, self.outpaint_size[0], self.inpaint_size[0])[:, None]
        hi = torch.where(outside, self.outpaint_size[1], self.inpaint_size[1])[:, None]
        sides = []
        for size in (h, w):
            f = lo + (hi - lo) * torch.rand(n, b, generator=g, device=device)
            sides.append((f * size).round().long().clamp(1, size))
        hh, ww = sides
        top = _rand_int(0, h - hh, (n, b), g, device)
        left = _rand_int(0, w - ww, (n, b), g, device)
        active = (torch.arange(b, device=device)[None] < count[:, None]) & on[:, None]
        hh = torch.where(active, hh, torch.zeros_like(hh))
        noise = torch.rand(shape, generator=g, device=device)
        return {"boxes": torch.stack([top, left, hh, ww], -1), "outside": outside & on, "noise": noise}

    def corrupt(self, x, params):
        mask = box_mask(params["boxes"], x.shape[-2:])
        return paint(x, mask, params["outside"], params["noise"])


class RandInPaint(RandPaint):
    """In-painting only: 1 to ``max_boxes`` boxes of noise (sides uniform in ``size``)."""

    def __init__(self, p: float = 1.0, max_boxes: int = 5, size: tuple[float, float] = (1 / 6, 1 / 3), **kw):
        super().__init__(p=p, p_outpaint=0.0, max_boxes=max_boxes, inpaint_size=size, **kw)


class RandOutPaint(RandPaint):
    """Out-painting only: noise everywhere but inside 1 to ``max_boxes`` boxes."""

    def __init__(self, p: float = 1.0, max_boxes: int = 5, size: tuple[float, float] = (1 / 4, 1 / 2), **kw):
        super().__init__(p=p, p_outpaint=1.0, max_boxes=max_boxes, outpaint_size=size, **kw)


# ------------------------------------------------------------------------------- masked patches
def patch_mask(keys: torch.Tensor, ratio: float, patch: int, size: Sequence[int]) -> torch.Tensor:
    """(N, 1, H, W) bool: the ``round(ratio * P)`` patches with the smallest ``keys`` (N, P)
    of each sample, P = (H / patch) (W / patch) square patches in row-major order."""
    h, w = size
    gh, gw = h // patch, w // patch
    if gh * patch != h or gw * patch != w or keys.shape[1] != gh * gw:
        raise ValueError(f"a {h} x {w} image is not a grid of {keys.shape[1]} patches of {patch} px")
    k = int(round(ratio * gh * gw))
    rank = torch.argsort(torch.argsort(keys, dim=1), dim=1)
    grid = (rank < k).view(-1, 1, gh, gw)
    return grid.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


class RandPatchMask(Pretext):
    """Masked-patch corruption for masked image modelling with a CNN: a grid of square
    patches (side ``patch``: pixels, or a fraction of the image side if < 1), of which exactly
    round(``ratio`` * P) per sample, chosen at random, are set to ``fill`` (0 = the mean of a
    z-scored image). With a dict batch the mask (N, 1, H, W) is stored under ``mask_key``: the
    restoration loss is taken on the masked pixels only."""

    def __init__(self, ratio: float = 0.6, patch: float = 1 / 8, fill: float = 0.0,
                 mask_key: str = "mask", **kw):
        super().__init__(**kw)
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"masking ratio must be in [0, 1], got {ratio}")
        self.ratio, self.patch, self.fill, self.mask_key = float(ratio), patch, float(fill), mask_key

    def patch_px(self, h: int, w: int) -> int:
        px = int(self.patch) if self.patch >= 1 else _side(self.patch, min(h, w))
        if h % px or w % px:
            raise ValueError(f"patch of {px} px does not tile a {h} x {w} image")
        return px

    def draw(self, shape, g, device) -> dict:
        n, _, h, w = shape
        px = self.patch_px(h, w)
        return {"keys": torch.rand(n, (h // px) * (w // px), generator=g, device=device), "patch": px}

    def mask(self, x, params) -> torch.Tensor:
        return patch_mask(params["keys"], self.ratio, params["patch"], x.shape[-2:])

    def corrupt(self, x, params):
        return torch.where(self.mask(x, params), torch.full_like(x, self.fill), x)

    def apply(self, d, g):
        x = d[self.keys[0]]
        if x.ndim != 4:
            raise ValueError(f"RandPatchMask takes 2D batches (N, C, H, W), got shape {tuple(x.shape)}")
        params = self.draw(tuple(x.shape), g, x.device)
        d[self.mask_key] = self.mask(x, params)
        for k in self.keys:
            if k in d:
                d[k] = self.corrupt(d[k], params)
        return d


# ----------------------------------------------------------------------------------- pipelines
def genesis_corruption(seed: int = 0, *, p_shuffle: float = 0.5, p_intensity: float = 0.9,
                       p_paint: float = 0.9, p_outpaint: float = 0.8) -> Compose:
    """Models Genesis' chain, in the paper's order: local shuffling, non-linear intensity,
    painting (the flip, p 0.4, moves input and target alike and is done by the restoration
    step). Probabilities as in the paper."""
    return Compose([RandLocalShuffle(p=p_shuffle), RandBezierIntensity(p=p_intensity),
                    RandPaint(p=p_paint, p_outpaint=p_outpaint)], seed=seed)


def mae_corruption(seed: int = 0, *, ratio: float = 0.6, patch: float = 1 / 8) -> Compose:
    """Masked autoencoding's corruption: :class:`RandPatchMask` (call it with a dict batch
    ``{"image": x}`` to get the mask back)."""
    return Compose([RandPatchMask(ratio=ratio, patch=patch)], seed=seed)


__all__ = ["Pretext", "bezier_curve", "bezier_intensity", "RandBezierIntensity", "shuffle_windows",
           "RandLocalShuffle", "box_mask", "paint", "RandPaint", "RandInPaint", "RandOutPaint",
           "patch_mask", "RandPatchMask", "genesis_corruption", "mae_corruption"]
