"""The training engine: seeded, learns, selects and restores the best epoch, runs any step."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from prostate_course import evaluate as ev
from prostate_course import inference, models, train
from prostate_course.augment import default_augmentation
from prostate_course.samplers import BalancedBatches, RandomBatches
from prostate_course.steps import ClassificationStep

from fakes import blob_slices


def fit(*args, **kw):
    """train.fit with slice classification as the step unless another is given."""
    kw.setdefault("step", ClassificationStep())
    return train.fit(*args, **kw)


class Linear(nn.Module):
    def __init__(self, px=16):
        super().__init__()
        self.fc = nn.Linear(3 * px * px, 1)

    def forward(self, x):
        return self.fc(x.flatten(1)).squeeze(1)


def test_fit_seeded_and_learns():
    tr, va = blob_slices(n_cases=15, seed=0), blob_slices(n_cases=12, seed=1, prefix="v")

    def run(seed):
        torch.manual_seed(0)
        model = models.Classifier(models.resnet18_encoder())
        res = train.fit(model, tr, va, step=ClassificationStep(default_augmentation()), epochs=2,
                        batch_size=16, lr=3e-3, device="cpu", seed=seed, progress=False)
        return model, res

    m1, r1 = run(0)
    m2, r2 = run(0)
    pd.testing.assert_frame_equal(r1.history.drop(columns="time"), r2.history.drop(columns="time"))
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    torch.manual_seed(0)
    other = fit(Linear(), tr, va, epochs=2, batch_size=16, device="cpu", seed=1, progress=False)
    torch.manual_seed(0)
    again = fit(Linear(), tr, va, epochs=2, batch_size=16, device="cpu", seed=2, progress=False)
    assert not np.allclose(other.history["train_loss"], again.history["train_loss"])
    h = r1.history
    assert list(h.columns) == ["epoch", "train_loss", "lr", "val_loss", "val_auroc",
                               "val_auroc_patient", "time"]
    assert len(h) == 2 and r1.steps == 2 * math.ceil(len(tr) / 16)
    n_pos = int(tr.slice_label.sum())
    assert r1.pos_weight == pytest.approx((len(tr) - n_pos) / n_pos)
    assert h["val_auroc"].max() > 0.8           # a bright blob in HBV is learnable
    out = ev.evaluate_classifier(m1, va, device="cpu", n_boot=50)
    assert out["auroc_slice"] == pytest.approx(r1.best_score, abs=1e-6)
    p = inference.predict(m1, va.images, device="cpu")
    assert p.shape == (len(va),) and (p >= 0).all() and (p <= 1).all()


def test_model_selection_early_stopping_and_restore_best():
    tr, va = blob_slices(seed=0), blob_slices(seed=1, prefix="v")
    res = fit(Linear(), tr, va, epochs=10, batch_size=16, lr=0.0, device="cpu",
                    patience=2, progress=False)       # lr 0: no epoch improves on the first
    assert res.stopped_early and len(res.history) == 3 and res.best_epoch == 1
    model = Linear()
    res = fit(model, (tr.images, tr.slice_label), (va.images, va.slice_label), epochs=4,
                    batch_size=16, lr=1e-2, device="cpu", steps_per_epoch=5, progress=False)
    assert res.steps == 20 and not res.stopped_early
    assert "val_auroc_patient" not in res.history      # no case index given
    for k, v in model.state_dict().items():
        assert torch.equal(v, res.best_state[k])
    best = res.history.loc[res.history["val_auroc"].idxmax(), "epoch"]
    assert res.best_epoch == best
    # without validation: the last weights, every epoch run
    model = Linear()
    res = fit(model, tr, epochs=3, batch_size=16, device="cpu", progress=False)
    assert res.best_epoch == 3 and res.monitor is None and math.isnan(res.best_score)
    assert res.best_state == {}                       # the model holds the last weights: no copy
    with pytest.raises(ValueError, match="monitor"):
        fit(Linear(), tr, va, monitor="accuracy")
    with pytest.raises(ValueError, match="labels"):
        fit(Linear(), (tr.images, tr.slice_label[:5]))
    with pytest.raises(ValueError, match="unlabelled"):
        fit(Linear(), tr.unlabelled())


def test_restored_weights_are_the_best_epochs_not_a_later_one():
    tr, va = blob_slices(seed=0), blob_slices(seed=1, prefix="v")
    kw = dict(batch_size=16, lr=1.0, schedule=None, steps_per_epoch=2, device="cpu", progress=False)
    torch.manual_seed(0)
    model = Linear()
    res = fit(model, tr, va, epochs=6, **kw)    # a high rate: later epochs validate worse
    assert 1 < res.best_epoch < 6
    torch.manual_seed(0)
    replay = Linear()
    fit(replay, tr, epochs=res.best_epoch, **kw)  # the same batches, stopped at the best epoch
    for k, v in replay.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_without_restore_best_no_copy_of_the_weights_is_kept():
    tr, va = blob_slices(seed=0), blob_slices(seed=1, prefix="v")
    kw = dict(batch_size=16, lr=1.0, schedule=None, steps_per_epoch=2, device="cpu", progress=False)
    torch.manual_seed(0)
    model = Linear()
    res = fit(model, tr, va, epochs=6, restore_best=False, **kw)
    assert res.best_state == {} and 1 < res.best_epoch < 6    # the best epoch is still reported
    torch.manual_seed(0)
    replay = Linear()
    fit(replay, tr, epochs=6, **kw)                # the model keeps its last weights
    for k, v in replay.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_steps_per_epoch_bounds():
    n = 144                                     # 9 batches of 16 per pass
    assert train.epoch_steps(n, 16) == 9
    assert train.epoch_steps(n, 16, min_steps=12) == 12
    assert train.epoch_steps(n, 16, max_steps=4) == 4
    assert train.epoch_steps(n, 16, steps=5, max_steps=4) == 5
    res = fit(Linear(), blob_slices(seed=0), epochs=2, batch_size=16, device="cpu",
                    progress=False, max_steps_per_epoch=4)
    assert res.steps == 8


def test_samplers():
    g = torch.Generator().manual_seed(0)
    b = RandomBatches()(200, 10, 45, g)
    assert b.shape == (10, 45) and set(b.ravel()[:200].tolist()) == set(range(200))
    labels = torch.tensor([1] * 10 + [0] * 190)
    b = BalancedBatches(labels)(200, 100, 40, g)
    assert 0.45 < labels[b].float().mean().item() < 0.55
    res = fit(Linear(), (torch.randn(40, 3, 16, 16), labels[:40].roll(3)), epochs=1,
                    batch_size=8, step=ClassificationStep(pos_weight=None),
                    sampler=BalancedBatches(labels[:40].roll(3)), device="cpu", progress=False)
    assert res.pos_weight is None


class LeastSquaresStep(train.Step):
    """A step unlike classification: regress t = x A on vectors (tests that the engine is
    task-agnostic and averages the step's logs per epoch)."""

    monitors = {"val_mse": "min"}
    default_monitor = "val_mse"

    def prepare(self, data, device):
        return {"x": data[0].to(device), "t": data[1].to(device)}

    def size(self, d):
        return len(d["x"])

    def loss(self, model, d, idx):
        err = model(d["x"][idx]) - d["t"][idx]
        return (err ** 2).mean(), {"const": torch.tensor(2.0)}

    def validate(self, model, val, device, amp):
        with torch.no_grad():
            return {"val_mse": float(((model(val[0]) - val[1]) ** 2).mean())}


def test_engine_runs_a_custom_step_to_the_least_squares_solution():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    a = torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0], [2.0, 1.0]])
    t = x @ a
    model = nn.Linear(4, 2, bias=False)
    res = train.fit(model, (x, t), (x, t), step=LeastSquaresStep(), epochs=80, batch_size=32,
                    lr=0.05, weight_decay=0.0, device="cpu", progress=False)
    np.testing.assert_allclose(model.weight.detach().T.numpy(), a.numpy(), atol=2e-2)
    assert (res.history["train_const"] == 2.0).all()      # logged values averaged per epoch
    assert res.history["val_mse"].iloc[-1] < 1e-3 and res.monitor == "val_mse"


def test_frozen_parameters_do_not_move():
    model = models.Classifier(models.resnet18_encoder())
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    fit(model, blob_slices(seed=0), epochs=1, batch_size=16, device="cpu", progress=False)
    changed = [k for k, v in model.encoder.state_dict().items()
               if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))
               and not torch.equal(v, before[k])]
    assert changed == []
    with pytest.raises(ValueError, match="nothing to train"):
        fit(model, blob_slices(seed=0), params=model.encoder.parameters(), device="cpu",
                  progress=False)


def test_the_trained_model_keeps_no_gradients():
    """After fit, no parameter holds its last step's gradient (a model-sized buffer that every
    model a notebook keeps would carry), and training can start again from the same model."""
    model = nn.Linear(4, 2)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    train.fit(model, (x, x[:, :2]), step=LeastSquaresStep(), epochs=1, batch_size=16,
              device="cpu", progress=False)
    assert [n for n, p in model.named_parameters() if p.grad is not None] == []
    before = model.weight.detach().clone()
    train.fit(model, (x, x[:, :2]), step=LeastSquaresStep(), epochs=1, batch_size=16,
              device="cpu", progress=False)
    assert not torch.equal(model.weight.detach(), before)
