"""Training loop, prediction, AUROC with bootstrap intervals, linear probe, layer change and
the label-efficiency protocol, on small synthetic tensors shaped like the data code's SliceSet."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from prostate_course import evaluate as ev
from prostate_course import models, train
from prostate_course.augment import default_augmentation
from prostate_course.results import Results


class FakeSlices:
    """Duck-typed SliceSet: per case ``n_slices`` slices of (3, px, px); positive cases have a
    bright (HBV) dark (ADC) blob on some slices."""

    def __init__(self, images, slice_label, case_index, case_ids, case_label, patient_ids):
        self.images, self.slice_label, self.case_index = images, slice_label, case_index
        self.case_ids, self.case_label, self.patient_ids = case_ids, case_label, patient_ids

    @classmethod
    def make(cls, n_cases=24, n_slices=6, px=16, seed=0, prefix="c", contrast=2.5):
        g = torch.Generator().manual_seed(seed)
        case_label = (torch.arange(n_cases) % 3 == 0).long()       # a third positive
        imgs, labels, cidx = [], [], []
        for c in range(n_cases):
            x = torch.randn(n_slices, 3, px, px, generator=g)
            lab = torch.zeros(n_slices, dtype=torch.long)
            if case_label[c]:
                for s in range(1, n_slices - 1, 2):
                    r, q = torch.randint(3, px - 6, (2,), generator=g).tolist()
                    x[s, 2, r:r + 4, q:q + 4] += contrast
                    x[s, 1, r:r + 4, q:q + 4] -= contrast
                    lab[s] = 1
            imgs.append(x), labels.append(lab), cidx.append(torch.full((n_slices,), c))
        ids = [f"{prefix}{c:03d}" for c in range(n_cases)]
        return cls(torch.cat(imgs), torch.cat(labels), torch.cat(cidx), ids, case_label.numpy(),
                   np.array([f"p{prefix}{c // 2}" for c in range(n_cases)]))

    def subset(self, case_ids):
        keep = [i for i, c in enumerate(self.case_ids) if c in set(case_ids)]
        remap = {old: new for new, old in enumerate(keep)}
        mask = torch.isin(self.case_index, torch.tensor(keep))
        ci = torch.tensor([remap[int(c)] for c in self.case_index[mask]])
        return FakeSlices(self.images[mask], self.slice_label[mask], ci,
                          [self.case_ids[i] for i in keep], self.case_label[keep],
                          self.patient_ids[keep])


def fake_budget(table, fraction, seed):
    """Nested, >= 1 positive: a seeded order of the training cases, positives interleaved."""
    rng = np.random.default_rng(seed)
    pos = [c for c, y in zip(table["case_id"], table["case_csPCa"]) if y]
    neg = [c for c, y in zip(table["case_id"], table["case_csPCa"]) if not y]
    rng.shuffle(pos), rng.shuffle(neg)
    k = max(1, round(fraction * len(pos))), max(1, round(fraction * len(neg)))
    return pos[:k[0]] + neg[:k[1]]


# --------------------------------------------------------------------------- evaluation

def test_bootstrap_matches_sklearn_per_replicate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.random(40) + 0.3 * y, 1)       # rounding makes ties
    reps = ev.bootstrap_auroc(y, s, n_boot=30, seed=7)
    counts = np.random.default_rng(7).multinomial(40, np.full(40, 1 / 40), size=30)
    for b in range(30):
        yy, ss = np.repeat(y, counts[b]), np.repeat(s, counts[b])
        want = roc_auc_score(yy, ss) if len(set(yy)) == 2 else np.nan
        assert np.isclose(reps[b], want, equal_nan=True)
    # cluster bootstrap: whole groups are drawn
    groups = np.repeat(np.arange(10), 4)
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


# --------------------------------------------------------------------------- training

class Linear(nn.Module):
    def __init__(self, px=16):
        super().__init__()
        self.fc = nn.Linear(3 * px * px, 1)

    def forward(self, x):
        return self.fc(x.flatten(1)).squeeze(1)


def test_fit_seeded_and_learns():
    tr, va = FakeSlices.make(n_cases=15, seed=0), FakeSlices.make(n_cases=12, seed=1, prefix="v")

    def run(seed):
        torch.manual_seed(0)
        model = models.Classifier(models.resnet18_encoder())
        res = train.fit(model, tr, va, epochs=2, batch_size=16, lr=3e-3, device="cpu", seed=seed,
                        augment=default_augmentation(), progress=False, monitor="val_auroc")
        return model, res

    m1, r1 = run(0)
    m2, r2 = run(0)
    pd.testing.assert_frame_equal(r1.history.drop(columns="time"), r2.history.drop(columns="time"))
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    torch.manual_seed(0)
    other = train.fit(Linear(), tr, va, epochs=2, batch_size=16, device="cpu", seed=1, progress=False)
    torch.manual_seed(0)
    again = train.fit(Linear(), tr, va, epochs=2, batch_size=16, device="cpu", seed=2, progress=False)
    assert not np.allclose(other.history["train_loss"], again.history["train_loss"])
    h = r1.history
    assert list(h.columns) == ["epoch", "train_loss", "val_loss", "val_auroc", "val_auroc_patient",
                               "lr", "time"]
    assert len(h) == 2 and r1.steps == 2 * math.ceil(len(tr.images) / 16)
    assert r1.pos_weight == pytest.approx((len(tr.images) - int(tr.slice_label.sum()))
                                          / int(tr.slice_label.sum()))
    assert h["val_auroc"].max() > 0.8           # a bright blob in HBV is learnable
    out = ev.evaluate_classifier(m1, va, device="cpu", n_boot=50)
    assert out["auroc_slice"] == pytest.approx(r1.best_score, abs=1e-6)
    p = train.predict(m1, va.images, device="cpu")
    assert p.shape == (len(va.images),) and (p >= 0).all() and (p <= 1).all()


def test_early_stopping_and_restore_best():
    tr, va = FakeSlices.make(seed=0), FakeSlices.make(seed=1, prefix="v")
    res = train.fit(Linear(), tr, va, epochs=10, batch_size=16, lr=0.0, device="cpu",
                    patience=2, progress=False)
    assert res.stopped_early and len(res.history) == 3 and res.best_epoch == 1
    model = Linear()
    res = train.fit(model, (tr.images, tr.slice_label), (va.images, va.slice_label), epochs=4,
                    batch_size=16, lr=1e-2, device="cpu", steps_per_epoch=5, progress=False)
    assert res.steps == 20 and not res.stopped_early
    assert math.isnan(res.history["val_auroc_patient"].iloc[0])   # no case index given
    for k, v in model.state_dict().items():
        assert torch.equal(v, res.best_state[k])
    n = len(tr.images)                   # 144 images: 9 steps of 16 per pass
    res = train.fit(Linear(), tr, epochs=2, batch_size=16, device="cpu", progress=False,
                    min_steps_per_epoch=12)
    assert res.steps == 24
    res = train.fit(Linear(), tr, epochs=2, batch_size=16, device="cpu", progress=False,
                    max_steps_per_epoch=4)
    assert res.steps == 8 and n == 144
    with pytest.raises(ValueError, match="monitor"):
        train.fit(Linear(), tr, va, monitor="accuracy")
    with pytest.raises(ValueError, match="labels"):
        train.fit(Linear(), (tr.images, tr.slice_label[:5]))


def test_balanced_sampler_stream():
    labels = torch.tensor([1] * 10 + [0] * 190)
    idx = train._index_stream(200, labels, 4000, "sampler", torch.Generator().manual_seed(0))
    frac_pos = labels[idx].float().mean().item()
    assert 0.45 < frac_pos < 0.55
    idx = train._index_stream(200, labels, 450, None, torch.Generator().manual_seed(0))
    assert len(idx) == 450 and set(idx[:200].tolist()) == set(range(200))
    res = train.fit(Linear(), (torch.randn(40, 3, 16, 16), labels[:40].roll(3)), epochs=1,
                    batch_size=8, balance="sampler", device="cpu", progress=False)
    assert res.pos_weight is None


def test_amp_dtype_cpu():
    assert train.amp_dtype(torch.device("cpu")) is None
    assert train.amp_dtype(torch.device("cpu"), "fp16") is None


# --------------------------------------------------------------------------- probe + protocol

def test_linear_probe_on_fixed_features():
    tr, va, te = (FakeSlices.make(seed=s, prefix=p) for s, p in ((0, "t"), (1, "v"), (2, "e")))

    class BlobFeatures(nn.Module):      # a hand-made "encoder": channel means and maxima
        out_features = 6

        def forward(self, x):
            return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)

    out = ev.linear_probe(BlobFeatures(), tr, va, te, device="cpu", n_boot=50)
    assert out["auroc_slice"] > 0.8 and out["C"] in (0.01, 0.1, 1.0)
    assert out["auroc_slice_lo"] <= out["auroc_slice"] <= out["auroc_slice_hi"]
    with pytest.raises(ValueError, match="NaN/inf training features"):
        ev.fit_linear_probe(np.full((4, 2), np.nan), [0, 1, 0, 1])


def test_run_label_efficiency_rows_and_unavailable(tmp_path):
    tr, va, te = (FakeSlices.make(n_cases=12, n_slices=4, seed=s, prefix=p)
                  for s, p in ((0, "t"), (1, "v"), (2, "e")))
    table = pd.DataFrame({"case_id": tr.case_ids, "case_csPCa": tr.case_label})
    arms = [train.Arm("scratch", lambda s: models.resnet18_encoder()),
            train.Arm("scratch", lambda s: models.resnet18_encoder(), protocol="linear_probe"),
            train.Arm("imagenet", None, unavailable="no ImageNet weight file offline")]
    res = Results("01_transfer_learning", "test", seeds=[0, 1])
    le = train.run_label_efficiency(
        arms, tr, va, te, table=table, fractions=[0.5, 1.0], seeds=[0, 1],
        fit_kwargs=dict(epochs=1, batch_size=16, lr=1e-3, patience=1), n_boot=20,
        device="cpu", budget_fn=fake_budget, results=res, progress=False)
    rows = le.rows
    assert len(rows) == 2 * 2 * 2
    assert set(rows["protocol"]) == {"finetune", "linear_probe"} and set(rows["method"]) == {"scratch"}
    assert (rows["task"] == "classification").all()
    for k in ev.METRIC_KEYS:
        assert rows[k].between(0, 1).all(), k
    full = rows[(rows.label_fraction == 1.0)]
    assert (full["n_train_cases"] == 12).all()
    assert (rows[rows.label_fraction == 0.5]["n_train_cases"] < 12).all()
    assert set(le.snapshots) == {"scratch"} and ("scratch", 0.5, 1) in le.histories
    d = res.to_dict()
    assert d["unavailable"] == [{"method": "imagenet", "reason": "no ImageNet weight file offline"}]
    assert len(d["rows"]) == 8
    summ = train.summarise(rows)
    assert set(summ["arm"]) == {"scratch", "scratch (linear probe)"}
    import matplotlib
    matplotlib.use("Agg")
    train.plot_label_efficiency(rows)
