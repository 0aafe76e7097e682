"""Contrastive views: seeded, the right geometry and intensities, masks moved with the image."""
import numpy as np
import pytest
import torch

from prostate_course.augment import Compose, RandFlip
from prostate_course.ssl.views import (RandCutout, RandGamma, RandGaussianBlur, RandResizedCrop,
                                       contrastive_views, lesion_kept)


def _batch(n=16, px=32, seed=0):
    return torch.randn(n, 3, px, px, generator=torch.Generator().manual_seed(seed))


def test_seeded_and_shape_preserving():
    x = _batch()
    a = contrastive_views(seed=3)(x)
    b = contrastive_views(seed=3)(x)
    c = contrastive_views(seed=4)(x)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
    views = contrastive_views(seed=3)
    v1, v2 = views(x), views(x)                     # two views of one batch differ
    assert not torch.allclose(v1, v2)
    views.reset()
    assert torch.equal(views(x), v1)                # reset restarts the stream
    assert (a < 0).float().mean() > 0.2             # z-scored values are not clipped to [0, 1]
    half = contrastive_views(seed=3)(x.half())
    assert half.dtype == torch.float16


def test_identity_limits():
    x = _batch()
    g = torch.Generator().manual_seed(0)
    same = RandResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))(x, g)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(RandGamma(gamma=1.0, p=1.0)(x, g), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(RandGaussianBlur(sigma=(0.1, 0.5), p=0.0)(x, g), x)
    assert torch.equal(RandCutout(p=0.0)(x, g), x)
    names = [type(t).__name__ for t in contrastive_views(strength=0).transforms]
    assert names == ["RandResizedCrop", "RandFlip"]


def test_crop_zoom_area_aspect_and_stays_inside():
    # channel 0 is a ramp in x, channel 1 a ramp in y: after a crop of half-sides (w, h) the
    # slopes are w and h times the original ones
    px, n = 48, 64
    ramp = torch.linspace(-1, 1, px)
    x = torch.zeros(n, 3, px, px)
    x[:, 0] = ramp[None, None, :]
    x[:, 1] = ramp[None, :, None]
    t = RandResizedCrop(scale=(0.3, 0.8), ratio=(0.75, 4 / 3))
    y = t(x, torch.Generator().manual_seed(1))
    inner = slice(4, -4)
    sx = (y[:, 0, px // 2, inner].diff(dim=-1).mean(-1) / ramp.diff().mean()).numpy()
    sy = (y[:, 1, inner, px // 2].diff(dim=-1).mean(-1) / ramp.diff().mean()).numpy()
    area, aspect = sx * sy, sx / sy
    assert (area > 0.3 - 0.02).all() and (area < 0.8 + 0.02).all()
    assert (aspect > 0.75 - 0.03).all() and (aspect < 4 / 3 + 0.03).all()
    assert area.std() > 0.05                          # drawn per sample
    # the box lies inside the image: every output value is an interpolated input value
    assert y[:, :2].abs().max() <= 1.0 + 1e-5 and (y[:, :2].abs() > 0.999).sum() < y[:, :2].numel()


def test_masks_move_with_the_image():
    px = 32
    x = torch.zeros(8, 3, px, px)
    m = torch.zeros(8, px, px, dtype=torch.uint8)
    x[:, :, 10:16, 4:9] = 5.0
    m[:, 10:16, 4:9] = 3
    views = Compose([RandResizedCrop(scale=(0.5, 1.0)), RandFlip(p=0.5)], seed=2)
    out = views({"image": x, "label": m})
    bright = out["image"][:, 0] > 2.5
    assert out["label"].dtype == torch.uint8 and set(out["label"].unique().tolist()) <= {0, 3}
    overlap = ((out["label"] > 0) & bright).sum((1, 2)).float() / bright.sum((1, 2)).clamp_min(1)
    assert (overlap > 0.8).all()


def test_gamma_keeps_range_and_order():
    x = _batch(8, 16, seed=2)
    y = RandGamma(gamma=2.0, p=1.0)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y.amin((-2, -1)), x.amin((-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.amax((-2, -1)), x.amax((-2, -1)), atol=1e-5, rtol=0)
    for i in range(8):                               # monotone: the pixel order is kept
        assert torch.equal(torch.argsort(x[i, 0].flatten()), torch.argsort(y[i, 0].flatten()))
    assert not torch.allclose(x, y)


def test_blur_matches_scipy_gaussian_filter():
    from scipy.ndimage import gaussian_filter

    x = _batch(3, 24, seed=5)
    t = RandGaussianBlur(sigma=(1.0, 1.0), p=1.0)       # fixed sigma: radius ceil(3 sigma) = 3
    y = t(x, torch.Generator().manual_seed(0))
    for i in range(3):
        for c in range(3):
            ref = gaussian_filter(x[i, c].double().numpy(), sigma=1.0, mode="mirror", truncate=3.0)
            np.testing.assert_allclose(y[i, c].numpy(), ref, atol=1e-5)


def test_cutout_box_and_mask():
    px = 40
    x = torch.ones(32, 3, px, px)
    m = torch.ones(32, px, px, dtype=torch.uint8)
    out = Compose([RandCutout(size=(0.2, 0.3), p=1.0, value=0.0)], seed=0)({"image": x, "label": m})
    zero = out["image"] == 0
    assert torch.equal(zero[:, 0], zero[:, 2])                  # one box through every channel
    assert torch.equal(zero[:, 0], out["label"] == 0)           # and through the mask
    rows = zero[:, 0].any(2).sum(1).float() / px
    cols = zero[:, 0].any(1).sum(1).float() / px
    assert ((rows >= 0.2 - 1 / px) & (rows <= 0.3 + 1 / px)).all()
    assert ((cols >= 0.2 - 1 / px) & (cols <= 0.3 + 1 / px)).all()
    assert torch.equal(zero[:, 0].sum((1, 2)), (rows * px * cols * px).round().long())  # a rectangle


def test_lesion_kept_measures_lost_lesions():
    px = 32
    x = _batch(16, px, seed=1)
    m = torch.zeros(16, px, px, dtype=torch.uint8)
    m[:, 1:3, 1:3] = 2                                             # a tiny lesion in a corner
    whole = Compose([RandResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))], seed=0)
    assert lesion_kept(whole, x, m) == 1.0
    tiny = Compose([RandResizedCrop(scale=(0.05, 0.05))], seed=0)
    kept = lesion_kept(tiny, x, m, n_draws=8)
    assert kept < 0.3
    with pytest.raises(ValueError, match="lesion"):
        lesion_kept(whole, x[:0], m[:0])
