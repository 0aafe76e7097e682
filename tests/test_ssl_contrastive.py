"""The two-view contrastive step, its sampler, diagnostics, pretraining runs and checkpoints; and
the rule that pretraining sees the training split's images only."""
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from fakes import blob_slices
from prostate_course import artifacts, models, protocol
from prostate_course.data.dataset import PreparedDataset
from prostate_course.samplers import OnePerExamBatches, RandomBatches
from prostate_course.ssl import contrastive as C
from prostate_course.ssl import diagnostics as D
from prostate_course.ssl.losses import NTXentLoss
from prostate_course.ssl.views import contrastive_views
from prostate_course.train import fit


# ------------------------------------------------------------------------------- sampler
def test_one_per_exam_batches():
    ci = torch.tensor([0] * 7 + [1] * 2 + [2] * 5 + [3] * 1 + [4] * 9 + [5] * 3)   # 6 exams, 27 slices
    perm = torch.randperm(len(ci), generator=torch.Generator().manual_seed(0))
    ci = ci[perm]                                          # slices of one exam need not be adjacent
    s = OnePerExamBatches(ci)
    b = s(len(ci), 4000, 5, torch.Generator().manual_seed(1))
    assert b.shape == (4000, 5)
    exams = ci[b]
    assert all(len(set(row.tolist())) == 5 for row in exams)     # never two slices of one exam
    # every exam equally often (5/6 of the batches), every slice of an exam equally often
    freq = torch.bincount(exams.flatten(), minlength=6).float() / 4000
    np.testing.assert_allclose(freq.numpy(), 5 / 6, atol=0.03)
    per_slice = torch.bincount(b.flatten(), minlength=len(ci)).float()
    for e in range(6):
        counts = per_slice[ci == e]
        assert counts.min() > 0.7 * counts.mean()
    again = s(len(ci), 4000, 5, torch.Generator().manual_seed(1))
    assert torch.equal(b, again)
    # the default sampler does put slices of one exam together: the test above can fail
    r = RandomBatches()(len(ci), 200, 5, torch.Generator().manual_seed(1))
    assert any(len(set(row.tolist())) < 5 for row in ci[r])
    with pytest.raises(ValueError, match="exceeds the 6 exams"):
        s(len(ci), 1, 7, torch.Generator())
    with pytest.raises(ValueError, match="27 items"):
        s(30, 1, 2, torch.Generator())


# --------------------------------------------------------------------------- diagnostics
def test_alignment_and_uniformity_known_values():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(400, 512, generator=g, dtype=torch.float64), dim=1)
    assert float(D.alignment(z, z)) == pytest.approx(0.0, abs=1e-12)
    assert float(D.alignment(z, -z)) == pytest.approx(4.0)              # antipodal pairs
    assert float(D.alignment(z, -z, alpha=1)) == pytest.approx(2.0)
    # points spread over a high-dimensional sphere: cos ~ N(0, 1/d), so
    # log E exp(-2 ||zi - zj||^2) = log E exp(-4 + 4 cos) ~ -4 + 8/d
    assert float(D.uniformity(z)) == pytest.approx(-4 + 8 / 512, abs=0.01)
    assert float(D.uniformity(torch.ones(10, 8))) == pytest.approx(0.0, abs=1e-6)  # collapse
    two = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert float(D.uniformity(two)) == pytest.approx(-8.0)              # ||zi - zj||^2 = 4
    assert float(D.feature_std(z)) == pytest.approx(1 / math.sqrt(512), rel=0.05)
    # uniformity compares distinct pairs only, and averages the two views
    assert float(D.two_view_uniformity(z, two.repeat(200, 256))) == pytest.approx(
        (float(D.uniformity(z)) + float(D.uniformity(two.repeat(200, 256)))) / 2)


def test_collapse_check():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(256, 64, generator=g)
    ok = D.collapse_check(spread)
    assert not ok["collapsed"] and ok["std_ratio"] == pytest.approx(1.0, abs=0.1)
    assert ok["effective_rank"] > 0.7 * 64
    point = torch.ones(256, 64) + 1e-3 * torch.randn(256, 64, generator=g)
    bad = D.collapse_check(point)
    assert bad["collapsed"] and "one point" in bad["message"]
    # dimensional collapse: spread along one direction only
    line = torch.randn(256, 1, generator=g) * torch.ones(1, 64) + 1e-4 * torch.randn(256, 64, generator=g)
    assert D.effective_rank(line) < 1.5
    assert D.collapse_check(line)["collapsed"]


# ------------------------------------------------------------------------------- metadata
def test_meta_tensor_keeps_missing_as_nan_and_codes_text():
    ints = pd.Series([1, pd.NA, 0], dtype="Int64")
    np.testing.assert_array_equal(C.meta_tensor(ints).numpy(), [1.0, np.nan, 0.0])
    floats = pd.Series([0.5, np.nan, 2.0])
    np.testing.assert_array_equal(C.meta_tensor(floats).numpy(), [0.5, np.nan, 2.0])
    text = pd.Series(["UMCG", "", "RUMC", "UMCG", None], dtype=object)
    np.testing.assert_array_equal(C.meta_tensor(text).numpy(), [1.0, np.nan, 0.0, 1.0, np.nan])


class SpyLoss(NTXentLoss):
    """NT-Xent that records what the step hands it."""

    def __init__(self):
        super().__init__(0.2)
        self.calls = []

    def forward(self, z_a, z_b, **meta):
        self.calls.append((z_a.detach().clone(), z_b.detach().clone(),
                           {k: v.clone() for k, v in meta.items()}))
        return super().forward(z_a, z_b, **meta)


class Recorder(RandomBatches):
    def __init__(self):
        self.batches = []

    def __call__(self, n, steps, batch_size, g):
        b = super().__call__(n, steps, batch_size, g)
        self.batches.append(b.clone())
        return b


def test_step_hands_normalised_views_and_the_batch_metadata():
    tr = blob_slices(n_cases=12, n_slices=4, px=16).unlabelled()
    tr.meta["psa"] = np.where(np.arange(12) % 4 == 1, np.nan, np.arange(12) * 1.5)
    tr.meta["pirads_majority"] = pd.array([1, 0, pd.NA] * 4, dtype="Int64")
    loss, rec = SpyLoss(), Recorder()
    step = C.ContrastiveStep(loss, contrastive_views(seed=0),
                             meta_keys=("patient_age", "psa", "pirads_majority", "case_index"))
    model = C.ContrastiveModel(models.resnet18_encoder(), out_features=32)
    res = fit(model, tr, step=step, epochs=1, steps_per_epoch=2, batch_size=6, sampler=rec,
              device="cpu", progress=False)
    assert len(loss.calls) == 2
    per_case = tr.meta
    for (z_a, z_b, meta), idx in zip(loss.calls, rec.batches[0]):
        assert z_a.shape == (6, 32) and z_b.shape == (6, 32)
        torch.testing.assert_close(z_a.norm(dim=1), torch.ones(6))
        assert not torch.allclose(z_a, z_b)                      # two different views
        case = tr.case_index[idx].numpy()
        np.testing.assert_array_equal(meta["case_index"].numpy(), case)
        np.testing.assert_array_equal(meta["patient_age"].numpy(), per_case["patient_age"].to_numpy()[case])
        np.testing.assert_array_equal(meta["psa"].numpy(), per_case["psa"].to_numpy()[case])  # NaN kept
        want = per_case["pirads_majority"].to_numpy(dtype=float, na_value=np.nan)[case]
        np.testing.assert_array_equal(meta["pirads_majority"].numpy(), want)
    for col in ("train_loss", "train_align", "train_uniform", "train_feature_std"):
        assert col in res.history and np.isfinite(res.history[col]).all()
    assert res.info["meta_missing"] == {"patient_age": 0, "psa": 12, "pirads_majority": 16, "case_index": 0}
    with pytest.raises(KeyError, match="'psd'.*patient_age"):
        fit(model, tr, step=C.ContrastiveStep(loss, contrastive_views(), meta_keys=("psd",)),
            epochs=1, steps_per_epoch=1, batch_size=4, device="cpu", progress=False)


def test_pretraining_is_seeded_validates_and_learns_to_align():
    tr = blob_slices(n_cases=24, n_slices=3, px=16).unlabelled()
    va = blob_slices(n_cases=12, n_slices=3, px=16, seed=5, prefix="v").unlabelled()
    kw = dict(steps=8, batch_size=12, epochs=2, temperature=0.2, lr=3e-3, progress=False, val=va)
    r1 = C.pretrain_run("simclr", tr, seed=0, device="cpu", **kw)
    r2 = C.pretrain_run("simclr", tr, seed=0, device="cpu", **kw)
    pd.testing.assert_frame_equal(r1.history.drop(columns="time"), r2.history.drop(columns="time"))
    for k, v in r1.encoder.state_dict().items():
        assert torch.equal(v, r2.encoder.state_dict()[k]), k
    h = r1.history
    assert {"val_loss", "val_align", "val_uniform", "val_feature_std"} <= set(h.columns)
    assert r1.config["one_per_exam"] and r1.config["steps"] == 8
    # the loss pulls the two views of each image together: alignment falls during training
    assert h["train_align"].iloc[-1] < h["train_align"].iloc[0]
    r3 = C.pretrain_run("dcl", tr, seed=1, device="cpu", **kw)
    assert not torch.equal(r3.encoder.conv1.weight, r1.encoder.conv1.weight)
    with pytest.raises(ValueError, match="unlabelled"):
        C.pretrain("simclr", blob_slices(n_cases=4), steps=1, device="cpu")
    with pytest.raises(ValueError, match="unknown contrastive method"):
        C.pretrain("byol", tr, steps=1, device="cpu")
    with pytest.warns(UserWarning, match="cut to the 24 exams"):
        C.pretrain_run("dclw", tr, steps=1, batch_size=64, device="cpu", progress=False)


# ------------------------------------------------------- training split only; checkpoints
@pytest.fixture
def split_cohort(prepared_cohort, tmp_path):
    """The 4-case prepared cohort with two patients (three exams) in train and one in test."""
    out = tmp_path / "ds"
    shutil.copytree(prepared_cohort, out)
    t = pd.read_csv(out / "cases.csv", dtype=str, keep_default_na=False)
    t["split"] = np.where(t["patient_id"] == "10002", "test", "train")
    t.to_csv(out / "cases.csv", index=False)
    return PreparedDataset(out)


class SpyViews:
    """Contrastive views that keep every raw batch they are given."""

    def __init__(self):
        self.inner = contrastive_views(seed=0)
        self.seen = []

    def reset(self, seed):
        self.inner.reset(seed)

    def __call__(self, x, generator=None):
        self.seen.append(x.detach().clone())
        return self.inner(x, generator=generator)


def _keys(images):
    return {img.float().numpy().tobytes() for img in images}


def test_no_test_image_enters_a_pretraining_batch(split_cohort):
    ds = split_cohort
    train_keys = _keys(ds.slices("train").images)
    test_keys = _keys(ds.slices("test").images)
    assert test_keys and not (test_keys & train_keys)      # the images can be told apart
    pre = C.pretraining_slices(ds)
    assert pre.slice_label is None and pre.case_label is None and pre.lesion_mask is None
    assert set(pre.case_ids) == set(ds.table.loc[ds.table.split == "train", "case_id"])
    spy = SpyViews()
    C.pretrain("simclr", pre, steps=4, batch_size=3, epochs=2, views=spy, device="cpu", progress=False)
    seen = [img for batch in spy.seen for img in batch]
    assert len(seen) == 4 * 3 * 2                            # two views of every batch
    assert _keys(seen) <= train_keys and not (_keys(seen) & test_keys)
    # negative control: the same check catches a pretraining set that includes the test split
    with pytest.warns(UserWarning, match="only the training split"):
        leaky = C.pretraining_slices(ds, split="all")
    spy = SpyViews()
    C.pretrain("simclr", leaky, steps=2, batch_size=4, epochs=1, views=spy, device="cpu", progress=False)
    assert _keys([i for b in spy.seen for i in b]) & test_keys


def test_checkpoint_round_trip_and_stand_in(split_cohort, tmp_path, monkeypatch):
    monkeypatch.setenv("PROSTATE_COURSE_RUNS", str(tmp_path / "runs"))
    ds = split_cohort
    pre = C.pretraining_slices(ds)
    init, stand_in, note = C.encoder_or_stand_in("smoke", "dcl", ds, seed=0, slices=pre, steps=2,
                                                 batch_size=3, device="cpu")
    assert stand_in and "no usable checkpoint" in stand_in and "does not exist" in stand_in
    a, b = init(0), init(1)
    assert a is not b and torch.equal(a.conv1.weight, b.conv1.weight)
    path = C.save_encoder(a, ds, "smoke", "03_contrastive", "dcl", seed=0, steps=2)
    assert path == artifacts.checkpoint_path("smoke", "03_contrastive", "dcl", 0)
    manifest = models.read_manifest(path)
    assert manifest["method"] == "dcl" and manifest["seed"] == 0 and manifest["steps"] == 2
    assert manifest["split_hash"] == artifacts.split_hash(ds.table)
    init2, stand_in2, note2 = C.encoder_or_stand_in("smoke", "dcl", ds, seed=3, device="cpu")
    assert stand_in2 is None and "seed 0" in note2                # seed 0 serves every seed
    enc = init2(3)
    for k, v in a.state_dict().items():
        assert torch.equal(v, enc.state_dict()[k]), k
    assert isinstance(protocol.Arm("dcl", init2), protocol.Arm)
