"""Metadata-aware contrastive losses: limit cases, row normalisation, weight-0 pairs, gradients,
and agreement with an independent float64 loop written from the papers' formulas."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prostate_course.ssl.losses import DCLLoss
from prostate_course.ssl.metadata_losses import (ConditionalContrastive, YAwareInfoNCE,
                                                 conditional_kernel, metadata_kernel,
                                                 supcon_majority)


# --------------------------------------------------------------- independent references
def _unit(za, zb):
    z = np.concatenate([za, zb]).astype(np.float64)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _pair_weight_yaware(Y, sig, i, j, kernel):
    if i == j:
        return 1.0
    w, shared = 1.0, False
    for v in range(Y.shape[1]):
        a, b = Y[i, v], Y[j, v]
        if math.isnan(a) or math.isnan(b):
            continue
        shared = True
        w *= math.exp(-(a - b) ** 2 / (2 * sig[v] ** 2)) if kernel == "rbf" else float(a == b)
    return w if shared else 0.0


def ref_yaware(za, zb, Y, sig, t, kernel="rbf", normalise="rows"):
    """Dufumier et al. 2021, one anchor at a time."""
    z, B = _unit(za, zb), len(za)
    n = 2 * B
    W = np.array([[0.0 if p == q else _pair_weight_yaware(Y, sig, p % B, q % B, kernel)
                   for q in range(n)] for p in range(n)])
    W = W / W.sum(1, keepdims=True) if normalise == "rows" else W / W.sum(0, keepdims=True)
    total = 0.0
    for p in range(n):
        denom = sum(math.exp(z[p] @ z[k] / t) for k in range(n) if k != p)
        total += -sum(W[p, q] * (z[p] @ z[q] / t - math.log(denom)) for q in range(n) if q != p)
    return total / n


def _pair_weight_cond(y, c, i, j):
    if i == j:
        return 1.0
    if math.isnan(y[i]) or math.isnan(y[j]) or y[i] != y[j]:
        return 0.0
    return min(c[i], c[j])


def ref_conditional(za, zb, y, c, t, form="infonce", uniformity="conditional", unif_t=2.0):
    """Ruppli et al. 2023, one anchor at a time (c=None: no confidence weighting)."""
    z, B = _unit(za, zb), len(za)
    n = 2 * B
    c = np.ones(B) if c is None else c
    W = np.array([[0.0 if p == q else _pair_weight_cond(y, c, p % B, q % B) for q in range(n)]
                  for p in range(n)])
    if form == "infonce":
        losses = []
        for p in range(n):
            P = [q for q in range(n) if W[p, q] > 0]
            N = [k for k in range(n) if k != p and k not in P]
            if not N:
                continue
            lse = math.log(sum(math.exp(z[p] @ z[k] / t) for k in N))
            wsum = sum(W[p, q] for q in P)
            losses.append(-sum(W[p, q] / wsum * (z[p] @ z[q] / t - lse) for q in P))
        return float(np.mean(losses))
    align = 0.0
    for p in range(n):
        wsum = W[p].sum()
        align += sum(W[p, q] / wsum * np.sum((z[p] - z[q]) ** 2) for q in range(n))
    align /= n
    num, cnt = 0.0, 0
    for p in range(n):
        for q in range(n):
            if p % B == q % B:
                continue
            if uniformity == "conditional" and W[p, q] > 0:
                continue
            num += math.exp(-unif_t * np.sum((z[p] - z[q]) ** 2))
            cnt += 1
    return align + (math.log(num / cnt) if cnt else 0.0)


def ref_dcl(za, zb, t):
    """Yeh et al. 2022: l_p = -s_pp'/t + log sum_{k not in {p, p'}} exp(s_pk/t)."""
    z, B = _unit(za, zb), len(za)
    n = 2 * B
    out = []
    for p in range(n):
        pp = (p + B) % n
        out.append(-z[p] @ z[pp] / t + math.log(sum(math.exp(z[p] @ z[k] / t)
                                                    for k in range(n) if k not in (p, pp))))
    return float(np.mean(out))


def ref_supcon(za, zb, labels, t):
    """Khosla et al. 2020, L_out, vectorised differently: positives = same label (NaN: none)."""
    z, B = _unit(za, zb), len(za)
    n = 2 * B
    lab = np.concatenate([labels, labels])
    ex = np.arange(n) % B
    sim = z @ z.T / t
    np.fill_diagonal(sim, -np.inf)
    logp = sim - np.log(np.exp(sim).sum(1, keepdims=True))
    same = (lab[:, None] == lab[None, :]) | (ex[:, None] == ex[None, :])
    np.fill_diagonal(same, False)
    return float(np.mean([-logp[p, same[p]].mean() for p in range(n)]))


# ------------------------------------------------------------------------- inputs
def random_batch(B=9, d=6, seed=0, dtype=torch.float64):
    g = np.random.default_rng(seed)
    za, zb = g.standard_normal((B, d)), g.standard_normal((B, d))
    age = np.round(g.normal(0, 1, B), 1)
    age[1] = age[0]                                   # a tie in the values
    psa = g.normal(0, 1, B)
    psa[[2, 5]] = np.nan                              # missing values
    psad = g.normal(0, 1, B)
    psad[[2, 3, 5, 7]] = np.nan                       # exams 2 and 5 share age only
    age[3] = np.nan                                   # exams 2 and 3 share nothing: weight 0
    labels = g.integers(0, 2, B).astype(float)
    labels[[4, 6]] = np.nan                           # unannotated (tie / no usable report)
    conf = np.round(g.choice([0.1, 1 / 3, 0.5, 1.0], B), 6)
    conf[[4, 6]] = 0.0
    conf[0] = conf[1]                                  # equal confidences
    t = {k: torch.tensor(v, dtype=dtype) for k, v in
         dict(za=za, zb=zb, age=age, psa=psa, psad=psad, labels=labels, conf=conf).items()}
    return t


def meta_of(t):
    return {"age_z": t["age"], "psa_z": t["psa"], "psad_z": t["psad"],
            "pirads_majority": t["labels"], "pirads_conf": t["conf"]}


def np_(t):
    return t.detach().numpy()


# ------------------------------------------------------------------ y-Aware
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_yaware_agrees_with_float64_loop(seed):
    b = random_batch(seed=seed)
    sig = [0.7, 1.3, 0.5]
    loss = YAwareInfoNCE(["age_z", "psa_z", "psad_z"], sigma=sig, temperature=0.2)
    got = float(loss(b["za"], b["zb"], **meta_of(b)))
    Y = np.stack([np_(b["age"]), np_(b["psa"]), np_(b["psad"])], 1)
    assert got == pytest.approx(ref_yaware(np_(b["za"]), np_(b["zb"]), Y, sig, 0.2), rel=1e-10)


def test_yaware_pair_without_shared_variable_has_weight_zero_and_missing_factor_dropped():
    y = torch.tensor([[0.0, float("nan")], [float("nan"), 1.0], [0.5, 3.0]], dtype=torch.float64)
    w = metadata_kernel(y, [1.0, 2.0])
    assert w[0, 1] == 0 and w[1, 0] == 0                         # nothing in common
    assert w[0, 2] == pytest.approx(math.exp(-0.25 / 2))          # only the first factor
    assert w[1, 2] == pytest.approx(math.exp(-4.0 / 8))           # only the second factor
    assert torch.all(torch.diagonal(w) == 1)


def test_yaware_tends_to_ntxent_as_sigma_goes_to_zero():
    from monai.losses import ContrastiveLoss

    b = random_batch(B=8, seed=3, dtype=torch.float32)
    age = torch.arange(8, dtype=torch.float32) * 0.3              # distinct values
    ntx = float(ContrastiveLoss(temperature=0.5)(b["za"], b["zb"]))
    gaps = []
    for sigma in (1.0, 0.1, 0.02, 1e-3):
        got = float(YAwareInfoNCE("age", sigma=sigma, temperature=0.5)(b["za"], b["zb"], age=age))
        gaps.append(abs(got - ntx))
    assert gaps[-1] < 1e-5 and gaps[0] > 1e-2 and gaps == sorted(gaps, reverse=True)


def test_equal_kernel_is_supervised_contrastive_with_unannotated_exams_alone():
    b = random_batch(B=10, seed=4)
    got = float(supcon_majority(temperature=0.3)(b["za"], b["zb"], pirads_majority=b["labels"]))
    assert got == pytest.approx(ref_supcon(np_(b["za"]), np_(b["zb"]), np_(b["labels"]), 0.3), rel=1e-10)


def test_weights_are_normalised_by_rows_not_columns():
    # unequal row sums: exams close in age (0, 1) and one far away (3)
    za = torch.tensor(np.random.default_rng(5).standard_normal((3, 4)))
    zb = torch.tensor(np.random.default_rng(6).standard_normal((3, 4)))
    age = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    loss = YAwareInfoNCE("age", sigma=1.0, temperature=0.5)
    W = loss.weights(za, age=age)
    assert torch.allclose(W.sum(1), torch.ones(6, dtype=W.dtype))
    assert not torch.allclose(W.sum(0), torch.ones(6, dtype=W.dtype))
    Y = np_(age)[:, None]
    rows = ref_yaware(np_(za), np_(zb), Y, [1.0], 0.5, normalise="rows")
    cols = ref_yaware(np_(za), np_(zb), Y, [1.0], 0.5, normalise="columns")
    got = float(loss(za, zb, age=age))
    assert got == pytest.approx(rows, rel=1e-10) and abs(got - cols) > 1e-3


# -------------------------------------------------------------- conditional
@pytest.mark.parametrize("use_conf", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conditional_infonce_agrees_with_float64_loop(seed, use_conf):
    b = random_batch(seed=seed)
    loss = ConditionalContrastive(temperature=0.25, use_confidence=use_conf)
    got = float(loss(b["za"], b["zb"], **meta_of(b)))
    want = ref_conditional(np_(b["za"]), np_(b["zb"]), np_(b["labels"]),
                           np_(b["conf"]) if use_conf else None, 0.25)
    assert got == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("uniformity", ["conditional", "global"])
@pytest.mark.parametrize("seed", [0, 1])
def test_conditional_align_unif_agrees_with_float64_loop(seed, uniformity):
    b = random_batch(seed=seed)
    loss = ConditionalContrastive(form="align_unif", uniformity=uniformity, unif_t=2.0)
    got = float(loss(b["za"], b["zb"], **meta_of(b)))
    want = ref_conditional(np_(b["za"]), np_(b["zb"]), np_(b["labels"]), np_(b["conf"]), 0.1,
                           form="align_unif", uniformity=uniformity)
    assert got == pytest.approx(want, rel=1e-10)


def test_conditional_is_dcl_without_annotated_exams():
    b = random_batch(B=8, seed=8)
    none = torch.full((8,), float("nan"), dtype=torch.float64)
    for use_conf in (True, False):
        got = float(ConditionalContrastive(temperature=0.3, use_confidence=use_conf)(
            b["za"], b["zb"], pirads_majority=none, pirads_conf=torch.zeros(8, dtype=torch.float64)))
        assert got == pytest.approx(ref_dcl(np_(b["za"]), np_(b["zb"]), 0.3), rel=1e-10)
    assert got == pytest.approx(float(DCLLoss(0.3)(b["za"], b["zb"])), rel=1e-10)   # notebook 03's DCL


def test_conditional_uniformity_equals_global_without_annotated_exams():
    b = random_batch(B=8, seed=9)
    none = torch.full((8,), float("nan"), dtype=torch.float64)
    meta = dict(pirads_majority=none, pirads_conf=torch.zeros(8, dtype=torch.float64))
    a = ConditionalContrastive(form="align_unif", uniformity="conditional")(b["za"], b["zb"], **meta)
    g = ConditionalContrastive(form="align_unif", uniformity="global")(b["za"], b["zb"], **meta)
    assert float(a) == pytest.approx(float(g), rel=1e-12)


def test_conditional_weights_use_min_confidence_and_rows_sum_to_one():
    y = torch.tensor([1.0, 1.0, 0.0, float("nan")])
    c = torch.tensor([1.0, 0.2, 0.6, 0.0])
    w = conditional_kernel(y, c)
    assert w[0, 1] == pytest.approx(0.2) and w[1, 0] == pytest.approx(0.2)
    assert w[0, 2] == 0 and w[3, 0] == 0 and w[3, 3] == 1
    W = ConditionalContrastive().weights(torch.zeros(4, 2), pirads_majority=y, pirads_conf=c)
    assert torch.allclose(W.sum(1), torch.ones(8))
    # view 0 (exam 0): its augmented view 4 (weight 1), exam 1's two views (0.2 each)
    assert W[0, 4] == pytest.approx(1 / 1.4) and W[0, 1] == pytest.approx(0.2 / 1.4)
    # the unannotated exam keeps only its augmented pair
    assert W[3, 7] == 1 and W[3].sum() == pytest.approx(1.0)


def _rotated_batch(move: int, theta: float):
    """Exams 0, 1, 2 on orthogonal axes e1, e2, e3 (both views alike); exam ``move`` is turned
    by ``theta`` towards exam 0 in its own plane, so only its similarity with exam 0 changes."""
    e = torch.eye(4, dtype=torch.float64)
    z = e[:3].clone()
    z[move] = math.cos(theta) * e[move] + math.sin(theta) * e[0]
    return z, z.clone()


@pytest.mark.parametrize("form", ["infonce", "align_unif"])
def test_weight_zero_pairs_are_not_attracted_and_stay_negatives(form):
    # exam 0 and 1: the same majority label; exam 2 unannotated -> weight 0 with exam 0
    meta = dict(pirads_majority=torch.tensor([1.0, 1.0, float("nan")], dtype=torch.float64),
                pirads_conf=torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    loss = ConditionalContrastive(temperature=0.5, form=form)
    assert float(loss.weights(torch.zeros(3, 4), **meta)[0, 2]) == 0.0   # no attraction

    def slope(move):
        th = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        e = torch.eye(4, dtype=torch.float64)
        z = torch.stack([e[0], e[1], e[2]])
        zm = torch.cos(th) * e[move] + torch.sin(th) * e[0]
        z = torch.stack([zm if i == move else z[i] for i in range(3)])
        loss(z, z.clone(), **meta).backward()
        return float(th.grad)

    assert slope(2) > 0     # bringing the unannotated exam closer to exam 0 costs: a negative
    assert slope(1) < 0     # bringing the same-label exam closer pays: a positive
    # weight 0 by label too: an annotated exam of the other label is a negative
    meta["pirads_majority"][2], meta["pirads_conf"][2] = 0.0, 1.0
    assert slope(2) > 0


def test_an_anchor_without_negatives_is_left_out():
    b = random_batch(B=8, seed=10)
    za, zb = b["za"][:4].clone().requires_grad_(True), b["zb"][:4]
    meta = dict(pirads_majority=torch.ones(4, dtype=torch.float64),
                pirads_conf=torch.ones(4, dtype=torch.float64))
    out = ConditionalContrastive()(za, zb, **meta)
    assert float(out.detach()) == 0.0
    out.backward()
    assert torch.isfinite(za.grad).all()


# ----------------------------------------------------------------- gradients, dtype, errors
def test_gradcheck_float64():
    b = random_batch(B=8, d=4, seed=11)
    za = b["za"].clone().requires_grad_(True)
    zb = b["zb"].clone().requires_grad_(True)
    meta = meta_of(b)
    for loss in (YAwareInfoNCE(["age_z", "psa_z", "psad_z"], sigma=0.8, temperature=0.3),
                 supcon_majority(0.3),
                 ConditionalContrastive(0.3),
                 ConditionalContrastive(0.3, use_confidence=False),
                 ConditionalContrastive(form="align_unif"),
                 ConditionalContrastive(form="align_unif", uniformity="global")):
        assert torch.autograd.gradcheck(lambda a, c: loss(a, c, **meta), (za, zb)), loss


def test_loss_ignores_autocast_and_extra_keys():
    b = random_batch(B=8, seed=12, dtype=torch.float32)
    meta = {**meta_of(b), "center": torch.zeros(8)}
    loss = ConditionalContrastive(0.2)
    ref = float(loss(b["za"], b["zb"], **meta))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(b["za"].bfloat16(), b["zb"].bfloat16(), **meta)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(ref, abs=0.05)          # inputs rounded to bf16 only


def test_clear_errors():
    z = torch.randn(4, 3)
    with pytest.raises(KeyError, match="pirads_conf"):
        ConditionalContrastive()(z, z, pirads_majority=torch.ones(4))
    with pytest.raises(ValueError, match="3 values for a batch of 4"):
        YAwareInfoNCE("age")(z, z, age=torch.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        YAwareInfoNCE("age")(z, z[:3], age=torch.ones(4))
    with pytest.raises(ValueError, match="sigma"):
        YAwareInfoNCE("age", sigma=0.0)
    with pytest.raises(ValueError, match="finite confidence"):
        conditional_kernel(torch.tensor([1.0, 0.0]), torch.tensor([float("nan"), 1.0]))
