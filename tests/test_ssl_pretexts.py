"""Restoration pretexts: crafted inputs with known results, limit cases, seeding."""
import numpy as np
import pytest
import torch

from prostate_course.augment import Compose
from prostate_course.ssl import pretexts as P


def batch(n=6, c=3, h=32, w=32, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------- Bezier
def de_casteljau(points, t):
    """Independent evaluation of a Bezier curve by repeated linear interpolation."""
    pts = [np.asarray(p, float) for p in points]
    while len(pts) > 1:
        pts = [(1 - t) * a + t * b for a, b in zip(pts[:-1], pts[1:])]
    return pts[0]


def test_bezier_curve_matches_de_casteljau():
    rng = np.random.default_rng(0)
    p1, p2 = rng.random(2), rng.random(2)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    got = P.bezier_curve(torch.tensor(p1), torch.tensor(p2), t).numpy()
    want = np.stack([de_casteljau([(0, 0), p1, p2, (1, 1)], ti) for ti in t.numpy()])
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_bezier_on_the_diagonal_is_the_identity_and_inverted_is_the_reflection():
    x = batch()
    n, c = x.shape[:2]
    p1 = torch.tensor([0.2, 0.2]).expand(n, c, 2)
    p2 = torch.tensor([0.7, 0.7]).expand(n, c, 2)
    torch.testing.assert_close(P.bezier_intensity(x, p1, p2), x, atol=1e-5, rtol=0)
    inv = P.bezier_intensity(x, p1, p2, torch.ones(n, c, dtype=torch.bool))
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    torch.testing.assert_close(inv, lo + hi - x, atol=1e-5, rtol=0)


def test_bezier_intensity_matches_an_independent_curve_inversion():
    x = batch(n=2, c=1, h=8, w=8, seed=3)
    p1, p2 = np.array([0.1, 0.6]), np.array([0.5, 0.95])
    got = P.bezier_intensity(x, torch.tensor(p1).float().expand(2, 1, 2),
                             torch.tensor(p2).float().expand(2, 1, 2), n_points=2049)
    for i in range(2):
        v = x[i, 0].double().numpy()
        lo, hi = v.min(), v.max()
        u = (v - lo) / (hi - lo)
        want = np.empty_like(u)
        for k, uk in np.ndenumerate(u):        # solve x(t) = u by bisection, read y(t)
            a, b = 0.0, 1.0
            for _ in range(60):
                m = (a + b) / 2
                a, b = (m, b) if de_casteljau([(0, 0), p1, p2, (1, 1)], m)[0] < uk else (a, m)
            want[k] = de_casteljau([(0, 0), p1, p2, (1, 1)], (a + b) / 2)[1]
        np.testing.assert_allclose(got[i, 0].numpy(), lo + (hi - lo) * want, atol=2e-3 * (hi - lo))


def test_random_bezier_is_monotonic_keeps_the_range_and_may_invert():
    x = batch(n=32, c=3, h=16, w=16)
    t = P.RandBezierIntensity(p=1.0)
    params = t.draw(tuple(x.shape), gen(1), x.device)
    y = t.corrupt(x, params)
    flips = 0
    for i in range(32):
        for ch in range(3):
            order = torch.argsort(x[i, ch].flatten())
            ys = y[i, ch].flatten()[order]
            d = ys[1:] - ys[:-1]
            if params["invert"][i, ch]:
                assert (d <= 1e-5).all()
                flips += 1
            else:
                assert (d >= -1e-5).all()
            assert torch.isclose(ys.min(), x[i, ch].min(), atol=1e-4)
            assert torch.isclose(ys.max(), x[i, ch].max(), atol=1e-4)
    assert 0 < flips < 96                      # about half the curves invert
    assert torch.equal(P.RandBezierIntensity(p=0.0)(x, gen()), x)


# ------------------------------------------------------------------------- local shuffling
def test_shuffle_with_increasing_keys_is_the_identity_and_reversed_keys_turn_the_window():
    x = batch(n=2, c=3, h=12, w=12)
    s = 5
    win = torch.tensor([[[2, 3, 4, 5]], [[7, 8, 5, 4]]])           # (top, left, h, w)
    ramp = (torch.arange(s * s, dtype=torch.float32) / (s * s)).view(1, 1, s, s).expand(2, 1, s, s)
    assert torch.equal(P.shuffle_windows(x, win, ramp), x)
    y = P.shuffle_windows(x, win, 0.999 - ramp)
    for i, (t, l, h, w) in enumerate(win[:, 0].tolist()):
        want = x[i].clone()
        want[:, t:t + h, l:l + w] = x[i, :, t:t + h, l:l + w].flip(-1).flip(-2)
        assert torch.equal(y[i], want)


def test_shuffle_keeps_each_window_multiset_and_moves_nothing_outside():
    x = batch(n=4, c=3, h=16, w=16, seed=2)
    win = torch.tensor([[[0, 0, 6, 6], [8, 9, 5, 7]]] * 4)        # two disjoint windows
    keys = torch.rand(4, 2, 7, 7, generator=gen(5))
    y = P.shuffle_windows(x, win, keys)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    for t, l, h, w in win[0].tolist():
        inside[t:t + h, l:l + w] = True
        for i in range(4):
            a = x[i, :, t:t + h, l:l + w].flatten(1).T         # pixels as (T2W, ADC, HBV) tuples
            b = y[i, :, t:t + h, l:l + w].flatten(1).T
            assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))
            assert not torch.equal(a, b)
    assert torch.equal(y[..., ~inside], x[..., ~inside])


def test_random_local_shuffle_keeps_the_image_histogram():
    x = batch(n=4, c=3, h=32, w=32, seed=4)
    y = P.RandLocalShuffle(p=1.0)(x, gen(2))
    assert not torch.equal(x, y)
    torch.testing.assert_close(y.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values, rtol=0, atol=0)
    assert torch.equal(P.RandLocalShuffle(p=0.0)(x, gen(2)), x)


# --------------------------------------------------------------------------------- painting
def test_box_mask_matches_a_loop():
    boxes = torch.tensor([[[1, 2, 3, 4], [5, 0, 2, 2], [0, 0, 0, 9]]])   # the last is empty
    m = P.box_mask(boxes, (8, 8))[0].numpy()
    want = np.zeros((8, 8), bool)
    want[1:4, 2:6] = True
    want[5:7, 0:2] = True
    np.testing.assert_array_equal(m, want)


def test_in_painting_changes_only_inside_the_boxes_and_out_painting_only_outside():
    x = batch(n=16, c=3, h=36, w=36, seed=6)
    for cls, outside in ((P.RandInPaint, False), (P.RandOutPaint, True)):
        t = cls(p=1.0)
        params = t.draw(tuple(x.shape), gen(3), x.device)
        y = t.corrupt(x, params)
        region = P.box_mask(params["boxes"], (36, 36))
        region = ~region if outside else region
        changed = (y != x).any(1)
        assert not changed[~region].any()
        assert changed[region].float().mean() > 0.99          # noise replaces those pixels
        lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
        assert ((y >= lo - 1e-5) & (y <= hi + 1e-5)).all()
        n_boxes = (params["boxes"][..., 2] > 0).sum(1)
        assert n_boxes.min() >= 1 and n_boxes.max() <= 5
    sides = P.RandInPaint(p=1.0).draw((64, 3, 36, 36), gen(4), "cpu")["boxes"][..., 2:]
    sides = sides[sides > 0]
    assert sides.min() >= 6 and sides.max() <= 12           # 1/6 to 1/3 of 36 px


def test_paint_probability_and_mode_mix():
    x = batch(n=200, c=1, h=24, w=24, seed=7)
    assert torch.equal(P.RandPaint(p=0.0)(x, gen()), x)
    t = P.RandPaint(p=1.0, p_outpaint=0.8)
    params = t.draw(tuple(x.shape), gen(8), x.device)
    share = params["outside"].float().mean().item()
    assert 0.7 < share < 0.9


# -------------------------------------------------------------------------- masked patches
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.6, 0.75, 1.0])
def test_patch_mask_hides_exactly_the_ratio_of_whole_patches(ratio):
    x = batch(n=5, c=3, h=32, w=32, seed=9) + 3.0          # no pixel is 0 by chance
    out = P.RandPatchMask(ratio=ratio, patch=8)({"image": x}, gen(1))
    m = out["mask"]
    assert m.shape == (5, 1, 32, 32) and m.dtype == torch.bool
    per_patch = m.view(5, 4, 8, 4, 8)
    assert (per_patch.all((2, 4)) == per_patch.any((2, 4))).all()    # whole patches only
    np.testing.assert_allclose(m.float().mean((1, 2, 3)).numpy(), round(ratio * 16) / 16)
    y = out["image"]
    assert (y[m.expand_as(y)] == 0).all()
    assert torch.equal(y[~m.expand_as(y)], x[~m.expand_as(x)])


def test_patch_fraction_and_bad_patch():
    t = P.RandPatchMask(patch=1 / 8)
    assert t.patch_px(64, 64) == 8 and t.patch_px(128, 128) == 16
    with pytest.raises(ValueError, match="does not tile"):
        P.RandPatchMask(patch=7)(batch(h=32, w=32), gen())
    with pytest.raises(ValueError, match="ratio"):
        P.RandPatchMask(ratio=1.5)


# ------------------------------------------------------------------------------- pipelines
def test_pipelines_are_seeded_and_2d_only():
    x = batch(n=8, h=32, w=32)
    a, b, c = P.genesis_corruption(0)(x), P.genesis_corruption(0)(x), P.genesis_corruption(1)(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = P.genesis_corruption(0)
    first = g(x)
    g.reset()
    assert torch.equal(g(x), first)
    with pytest.raises(ValueError, match="2D"):
        P.RandPaint()(torch.zeros(2, 3, 4, 8, 8), gen())
    assert isinstance(P.mae_corruption(0), Compose)
