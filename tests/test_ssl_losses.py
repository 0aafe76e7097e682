"""Contrastive losses: against MONAI, against dense float64 loops written from the papers'
formulas, known answers on crafted inputs, batch-order invariance, gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from prostate_course.ssl.losses import DCLLoss, DCLWLoss, NTXentLoss, vmf_weight


def _views(b=8, d=16, seed=0, dtype=torch.float64, pull=0.0):
    g = torch.Generator().manual_seed(seed)
    za = torch.randn(b, d, generator=g, dtype=dtype)
    zb = torch.randn(b, d, generator=g, dtype=dtype) + pull * za   # pull > 0: positives align
    return F.normalize(za, dim=1), F.normalize(zb, dim=1)


def _dense(za, zb, t, drop_positive, weights=None):
    """Per-anchor losses by explicit loops over anchors and candidates (float64)."""
    z = torch.cat([za, zb]).double()
    n, b = len(z), len(za)
    out = []
    for i in range(n):
        j = (i + b) % n
        terms = [math.exp(float(z[i] @ z[k]) / t) for k in range(n)
                 if k != i and not (drop_positive and k == j)]
        w = 1.0 if weights is None else float(weights[i % b])
        out.append(-w * float(z[i] @ z[j]) / t + math.log(sum(terms)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("t", [0.07, 0.5, 1.0])
@pytest.mark.parametrize("b", [2, 5, 32])
def test_ntxent_equals_monai_and_the_dense_formula(t, b):
    from monai.losses import ContrastiveLoss

    za, zb = _views(b, 24, seed=b)
    ours = NTXentLoss(temperature=t)(za, zb)
    monai = ContrastiveLoss(temperature=t)(za, zb)
    # MONAI holds the temperature as a float32 tensor (0.07 -> 0.07000000030): rel 1e-7
    assert float(ours) == pytest.approx(float(monai), rel=1e-7)
    assert float(ours) == pytest.approx(float(_dense(za, zb, t, drop_positive=False).mean()), rel=1e-10)
    # un-normalised inputs are normalised (MONAI uses cosine similarity too)
    assert float(NTXentLoss(t)(3 * za, 0.5 * zb)) == pytest.approx(float(ours), rel=1e-10)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_dcl_is_ntxent_without_the_positive_in_the_denominator(t):
    za, zb = _views(16, 32, seed=1, pull=1.0)
    dcl = DCLLoss(temperature=t)(za, zb)
    ref = _dense(za, zb, t, drop_positive=True)
    assert float(dcl) == pytest.approx(float(ref.mean()), rel=1e-10)
    # per anchor, NT-Xent - DCL = log(1 + exp(s_ii'/t) / sum_neg exp(s_ik/t)): the positive's
    # share of the denominator, and nothing else
    z = torch.cat([za, zb])
    n, b = len(z), len(za)
    gap = []
    for i in range(n):
        j = (i + b) % n
        neg = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n) if k not in (i, j))
        gap.append(math.log1p(math.exp(float(z[i] @ z[j]) / t) / neg))
    ntx = NTXentLoss(temperature=t)(za, zb)
    assert float(ntx - dcl) == pytest.approx(sum(gap) / n, rel=1e-9)
    assert float(ntx) > float(dcl)
    # the two-log-sum-exp variant (same-view and other-view negatives summed separately) is a
    # different loss: the reference above would catch it
    split = []
    for i in range(n):
        j = (i + b) % n
        same = [k for k in range(n) if k != i and k != j and (k < b) == (i < b)]
        other = [k for k in range(n) if k != i and k != j and (k < b) != (i < b)]
        lse = [math.log(sum(math.exp(float(z[i] @ z[k]) / t) for k in ks)) for ks in (same, other)]
        split.append(-float(z[i] @ z[j]) / t + sum(lse))
    assert abs(sum(split) / n - float(dcl)) > 0.1


def test_known_answer_on_orthogonal_pairs():
    # two images, both views identical, the images orthogonal: s_ii' = 1, every negative 0
    e = torch.eye(4, dtype=torch.float64)[:2]
    t = 0.2
    assert float(NTXentLoss(t)(e, e)) == pytest.approx(-1 / t + math.log(math.exp(1 / t) + 2))
    assert float(DCLLoss(t)(e, e)) == pytest.approx(-1 / t + math.log(2))
    assert float(DCLWLoss(t)(e, e)) == pytest.approx(-1 / t + math.log(2))   # equal pairs: w = 1


def test_dclw_weight_and_limits():
    za, zb = _views(12, 8, seed=3, pull=0.7)
    s = (za * zb).sum(1)
    w = vmf_weight(za, zb, sigma=0.5)
    expect = 2 - torch.exp(s / 0.5) / torch.exp(s / 0.5).mean()
    torch.testing.assert_close(w, expect)
    assert float(w.mean()) == pytest.approx(1.0)
    assert float(w[s.argmin()]) == pytest.approx(float(w.max()))        # the hardest pair weighs most
    t = 0.3
    dclw = DCLWLoss(temperature=t, sigma=0.5)(za, zb)
    assert float(dclw) == pytest.approx(float(_dense(za, zb, t, True, weights=expect).mean()), rel=1e-10)
    # sigma -> infinity: every weight -> 1, DCLW -> DCL
    assert float(DCLWLoss(t, sigma=1e9)(za, zb)) == pytest.approx(float(DCLLoss(t)(za, zb)), rel=1e-7)


@pytest.mark.parametrize("loss", [NTXentLoss(0.2), DCLLoss(0.2), DCLWLoss(0.2)], ids=repr)
def test_invariant_to_batch_order_and_view_swap_and_ignores_meta(loss):
    za, zb = _views(10, 12, seed=5, pull=0.5)
    base = float(loss(za, zb))
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert float(loss(za[perm], zb[perm])) == pytest.approx(base, rel=1e-12)
    assert float(loss(zb, za)) == pytest.approx(base, rel=1e-12)
    age = torch.linspace(50, 80, 10, dtype=torch.float64)
    assert float(loss(za, zb, patient_age=age, pirads_conf=age * float("nan"))) == base
    # but pairing matters: shuffling one view only breaks the positives and raises the loss
    assert float(loss(za, zb[perm])) > base


@pytest.mark.parametrize("loss", [NTXentLoss(0.5), DCLLoss(0.5), DCLWLoss(0.5, sigma=0.5)], ids=repr)
def test_gradients_are_finite_and_correct(loss):
    g = torch.Generator().manual_seed(7)
    za = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    zb = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b), (za, zb), eps=1e-6, atol=1e-6)
    out = loss(za, zb)
    out.backward()
    assert torch.isfinite(za.grad).all() and torch.isfinite(zb.grad).all()
    assert za.grad.abs().sum() > 0


def test_low_precision_inputs_and_small_temperature_stay_finite():
    za, zb = _views(64, 128, seed=9, dtype=torch.float32, pull=3.0)
    for loss in (NTXentLoss(0.01), DCLLoss(0.01), DCLWLoss(0.01)):
        v = loss(za.half(), zb.bfloat16().half())
        assert v.dtype == torch.float32 and torch.isfinite(v)
        assert float(v) == pytest.approx(float(loss(za, zb)), abs=0.5)   # half rounding at t = 0.01


def test_bad_inputs_are_named():
    za, zb = _views(4, 8)
    with pytest.raises(ValueError, match="same shape"):
        NTXentLoss()(za, zb[:3])
    with pytest.raises(ValueError, match="at least 2"):
        DCLLoss()(za[:1], zb[:1])
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0)
    with pytest.raises(ValueError, match="sigma"):
        DCLWLoss(sigma=0)
