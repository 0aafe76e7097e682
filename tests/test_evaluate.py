"""Metrics: weighted and bootstrapped AUROC, case scores, probes, layer change."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from prostate_course import evaluate as ev
from prostate_course import models

from fakes import blob_slices


def test_weighted_auroc_equals_sklearn_on_the_repeated_sample():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 30)
    s = np.round(rng.random(30) + 0.4 * y, 1)          # rounding makes ties
    w = rng.integers(0, 4, size=(25, 30)).astype(float)
    got = ev.weighted_auroc(y, s, w)
    for b in range(25):
        yy, ss = np.repeat(y, w[b].astype(int)), np.repeat(s, w[b].astype(int))
        want = roc_auc_score(yy, ss) if len(set(yy)) == 2 else np.nan
        assert np.isclose(got[b], want, equal_nan=True)
    assert ev.weighted_auroc(y, s, np.ones(30))[0] == pytest.approx(roc_auc_score(y, s))
    with pytest.raises(ValueError, match="columns"):
        ev.weighted_auroc(y, s, np.ones((2, 29)))


def test_bootstrap_matches_sklearn_per_replicate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.random(40) + 0.3 * y, 1)
    reps = ev.bootstrap_auroc(y, s, n_boot=30, seed=7)
    counts = np.random.default_rng(7).multinomial(40, np.full(40, 1 / 40), size=30)
    for b in range(30):
        yy, ss = np.repeat(y, counts[b]), np.repeat(s, counts[b])
        want = roc_auc_score(yy, ss) if len(set(yy)) == 2 else np.nan
        assert np.isclose(reps[b], want, equal_nan=True)
    groups = np.repeat(np.arange(10), 4)               # cluster bootstrap: whole groups drawn
    reps = ev.bootstrap_auroc(y, s, n_boot=20, seed=3, groups=groups)
    counts = np.random.default_rng(3).multinomial(10, np.full(10, 0.1), size=20)
    for b in range(20):
        w = counts[b][groups]
        yy, ss = np.repeat(y, w), np.repeat(s, w)
        want = roc_auc_score(yy, ss) if len(set(yy)) == 2 else np.nan
        assert np.isclose(reps[b], want, equal_nan=True)


def test_auroc_with_ci_limits():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.random(200) + 0.5 * y
    auc, lo, hi = ev.auroc_with_ci(y, s, n_boot=300, seed=0)
    assert auc == pytest.approx(roc_auc_score(y, s))
    assert lo < auc < hi and hi - lo < 0.2
    assert ev.auroc_with_ci(y, s, n_boot=300, seed=0) == (auc, lo, hi)  # seeded
    assert ev.auroc_with_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_boot=50) == (1.0, 1.0, 1.0)
    assert all(math.isnan(v) for v in ev.auroc_with_ci([0, 0, 0], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="differ in length"):
        ev.bootstrap_auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        ev.bootstrap_auroc([0, 1], [0.1, float("nan")])


def test_evaluate_scores_patient_is_max_over_slices():
    # case 0 (neg): slices 0.1, 0.7 -> 0.7; case 1 (pos): 0.2, 0.6 -> 0.6; case 2 (pos): 0.9
    scores = [0.1, 0.7, 0.2, 0.6, 0.9]
    out = ev.evaluate_scores(scores, [0, 0, 0, 1, 1], [0, 0, 1, 1, 2], [0, 1, 1], n_boot=50)
    assert out["auroc_patient"] == pytest.approx(0.5)   # 0.7 beats 0.6, loses to 0.9
    assert out["auroc_slice"] == pytest.approx(roc_auc_score([0, 0, 0, 1, 1], scores))
    assert set(ev.METRIC_KEYS) <= set(out) and out["n_cases"] == 3
    np.testing.assert_allclose(ev.case_scores(scores, [0, 0, 1, 1, 2]), [0.7, 0.6, 0.9])
    with pytest.raises(ValueError, match="one entry per slice"):
        ev.evaluate_scores(scores, [0, 1], [0, 0, 1, 1, 2], [0, 1, 1])
    with pytest.raises(ValueError, match="case 2"):
        ev.evaluate_scores(scores, [0, 0, 0, 1, 1], [0, 0, 1, 1, 2], [0, 1])


def test_layer_change_blocks():
    torch.manual_seed(0)
    a = models.Classifier(models.resnet18_encoder())
    b = models.Classifier(models.resnet18_encoder())
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.encoder.layer4[1].conv2.weight.mul_(1.5)
    df = ev.layer_change(a, b)
    assert list(df["block"]) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    ch = df.set_index("block")["rel_change"]
    assert ch.drop("layer4").abs().max() == 0 and ch["layer4"] > 0
    per = ev.layer_change(a, b, by="param").set_index("param")["rel_change"]
    assert per["encoder.layer4.1.conv2.weight"] == pytest.approx(0.5, rel=1e-5)
    with pytest.raises(ValueError, match="shape"):
        ev.layer_change({"w": torch.zeros(2)}, {"w": torch.zeros(3)})


class BlobFeatures(nn.Module):
    """A hand-made "encoder": per-channel means and maxima (the blob shows in the maxima)."""

    out_features = 6

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)


def test_linear_probe_on_fixed_features():
    tr, va, te = (blob_slices(seed=s, prefix=p) for s, p in ((0, "t"), (1, "v"), (2, "e")))
    out = ev.linear_probe(BlobFeatures(), tr, va, te, device="cpu", n_boot=50)
    assert out["auroc_slice"] > 0.8 and out["C"] in (0.01, 0.1, 1.0)
    assert out["auroc_slice_lo"] <= out["auroc_slice"] <= out["auroc_slice_hi"]
    with pytest.raises(ValueError, match="NaN/inf training features"):
        ev.fit_linear_probe(np.full((4, 2), np.nan), [0, 1, 0, 1])


def test_knn_probe_known_neighbours():
    # two tight clusters on the sphere: every point's neighbours share its label
    rng = np.random.default_rng(0)
    a = np.array([1.0, 0, 0]) + 0.01 * rng.standard_normal((20, 3))
    b = np.array([0, 1.0, 0]) + 0.01 * rng.standard_normal((20, 3))
    f, y = np.vstack([a, b]), np.r_[np.zeros(20), np.ones(20)]
    knn = ev.fit_knn_probe(f, y, f, y, ks=(3, 5))
    assert knn.k in (3, 5) and knn.val_auroc == 1.0
    # cosine: scaling a feature vector does not move it
    np.testing.assert_allclose(knn.predict(np.array([[5.0, 0, 0], [0, 0.2, 0]])), [0.0, 1.0])
    assert ev.fit_knn_probe(f, y, ks=(1, 3, 99)).k == 3          # no validation: the middle k
    with pytest.raises(ValueError, match="one class"):
        ev.fit_knn_probe(f, np.zeros(40))
