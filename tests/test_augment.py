"""Batch augmentations: exact limit cases, masks follow the image, seeding."""
import pytest
import torch

from prostate_course.augment import (Compose, RandAffine, RandFlip, RandGaussianNoise,
                                     RandIntensity, default_augmentation)


def batch(n=8, c=3, h=32, w=32, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_flip_limits():
    x = batch()
    assert torch.equal(RandFlip(p=1.0)(x, g()), x.flip(-1))
    assert torch.equal(RandFlip(p=0.0)(x, g()), x)
    y = RandFlip(p=0.5)(x, g(1))
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(y[i], x[i]) for i in range(len(x))]
    assert all(a or b for a, b in zip(flipped, kept)) and any(flipped) and any(kept)


def test_affine_identity_and_mask_follow():
    x = batch()
    ident = RandAffine(rotate_deg=0.0, scale=(1.0, 1.0), translate=0.0)(x, g())
    assert torch.allclose(ident, x, atol=1e-5)
    mask = torch.zeros(8, 1, 32, 32, dtype=torch.uint8)
    mask[:, :, 8:20, 10:24] = 1
    out = RandAffine(rotate_deg=30.0, scale=(0.8, 1.2), translate=0.1)(
        {"image": mask.float().repeat(1, 3, 1, 1), "label": mask}, g(3))
    assert out["label"].dtype == torch.uint8 and set(out["label"].unique().tolist()) <= {0, 1}
    img_fg = out["image"][:, :1] > 0.5
    lab_fg = out["label"].bool()
    iou = (img_fg & lab_fg).sum() / (img_fg | lab_fg).sum()
    assert iou > 0.85
    assert not torch.equal(out["label"], mask)  # it did move


def test_affine_rotation_direction_is_a_rotation():
    # a 180-degree rotation about the centre is an exact double flip
    x = batch(h=16, w=16)
    t = RandAffine(rotate_deg=180.0, scale=(1.0, 1.0), translate=0.0)
    th = t.theta(4, 2, g(), "cpu")
    th[:] = torch.tensor([[-1.0, 0, 0], [0, -1.0, 0]])
    grid = torch.nn.functional.affine_grid(th, [4, 3, 16, 16], align_corners=False)
    y = torch.nn.functional.grid_sample(x[:4], grid, align_corners=False)
    assert torch.allclose(y, x[:4].flip(-1).flip(-2), atol=1e-5)


def test_intensity_exact():
    x = batch()
    y = RandIntensity(scale=(2.0, 2.0), shift=(1.0, 1.0))(x, g())
    assert torch.allclose(y, 2 * x + 1)
    y = RandIntensity(scale=(0.5, 1.5), shift=(-1, 1), per_channel=False)(x, g())
    # one (a, b) per sample: channels stay affinely related to each other
    a = (y[:, 0] - y[:, 1]) / (x[:, 0] - x[:, 1])
    assert torch.allclose(a, a[:, :1, :1].expand_as(a), rtol=1e-3, atol=1e-3)
    assert torch.equal(RandIntensity(p=0.0)(x, g()), x)


def test_noise_level():
    x = torch.zeros(64, 1, 32, 32)
    y = RandGaussianNoise(std=0.2, p=1.0)(x, g())
    sd = y.flatten(1).std(1)
    assert (sd > 0).all() and (sd < 0.25).all() and sd.mean() > 0.05
    assert torch.equal(RandGaussianNoise(p=0.0)(x, g()), x)


def test_compose_seeded_and_3d():
    x = batch()
    a = default_augmentation(seed=5)
    y1, y2 = a(x), a(x)
    assert not torch.equal(y1, y2)                 # the stream advances
    a.reset()
    assert torch.equal(a(x), y1)                   # same seed, same numbers
    assert torch.equal(default_augmentation(seed=5)(x), y1)
    assert not torch.equal(default_augmentation(seed=6)(x), y1)
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert torch.allclose(default_augmentation(seed=1, strength=0.0)(x), x, atol=1e-5)
    v = torch.randn(2, 3, 6, 16, 16)
    out = Compose([RandFlip(p=1.0), RandAffine(), RandIntensity(), RandGaussianNoise()], seed=0)(
        {"image": v, "label": (v[:, :1] > 1).to(torch.uint8)})
    assert out["image"].shape == v.shape and out["label"].shape == (2, 1, 6, 16, 16)


def test_bad_input():
    with pytest.raises(ValueError, match=r"RandFlip.*\(3, 32, 32\)"):
        RandFlip()(torch.zeros(3, 32, 32), g())
    with pytest.raises(TypeError, match="list"):
        RandFlip()([torch.zeros(1, 1, 4, 4)], g())
