"""Restoration pretraining: loss, step, no test image in a batch, checkpoints, figures."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fakes import blob_slices, table_of
from prostate_course import artifacts, models, protocol
from prostate_course.ssl import restoration as R


def test_restoration_loss_whole_image_and_masked_pixels():
    x = torch.zeros(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[:, :, :2] = True                                  # the top half of every image
    pred = torch.where(mask, torch.ones_like(x), torch.full_like(x, 3.0))
    assert R.restoration_loss(pred, x, mask).item() == pytest.approx(1.0)
    assert R.restoration_loss(pred, x).item() == pytest.approx((1 + 9) / 2)


class Constant(nn.Module):
    """Returns ``value`` everywhere (a stand-in restoration network)."""

    def __init__(self, value):
        super().__init__()
        self.value = value
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.full_like(x, self.value) + 0 * self.w


def test_masked_error_by_ratio_on_a_known_answer():
    ones = torch.ones(6, 3, 32, 32)
    perfect = R.masked_error_by_ratio(Constant(1.0), ones, [0.25, 0.75], device="cpu")
    np.testing.assert_allclose(perfect["restored_mse"], 0.0)
    np.testing.assert_allclose(perfect["fill_mse"], 1.0)       # hidden patches are 0, truth 1
    zero = R.masked_error_by_ratio(Constant(0.0), ones, [0.5], device="cpu")
    assert zero.loc[0, "restored_mse"] == pytest.approx(zero.loc[0, "fill_mse"])


def test_sharpness_of_flat_and_checkerboard_images():
    flat = torch.full((1, 1, 8, 8), 5.0)
    board = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1.0
    assert R.sharpness(flat).item() == 0.0
    assert R.sharpness(board.view(1, 1, 8, 8)).item() == pytest.approx(64.0)   # (-8 v)^2, v = +-1


def test_step_trains_beyond_copying_the_input_and_is_seeded():
    data = blob_slices(n_cases=8, n_slices=4, px=32).unlabelled()

    def run():
        return R.run_pretraining("genesis", data, epochs=3, steps_per_epoch=6, batch_size=8,
                                 lr=3e-3, seed=0, device="cpu", watch=8, keep=2, progress=False)

    a, b = run(), run()
    h = a.history
    assert list(h["train_loss"]) == list(b.history["train_loss"])
    assert h["val_loss"].iloc[-1] < 0.7 * h["val_copy_loss"].iloc[-1]
    assert [e for e, _ in a.snapshots] == [0, 1, 2, 3]
    assert a.snapshots[0][1].shape == (2, 3, 32, 32)
    s = a.summary()
    assert s["watch_loss"] == pytest.approx(h["val_loss"].iloc[-1]) and s["steps"] == 18


def test_a_narrower_decoder_still_restores_and_pretrains_the_same_encoder():
    data = blob_slices(n_cases=8, n_slices=4, px=32).unlabelled()
    widths = (32, 16, 8, 8, 4)
    pre = R.run_pretraining("genesis", data, epochs=3, steps_per_epoch=6, batch_size=8, lr=3e-3,
                            seed=0, device="cpu", watch=8, keep=2, progress=False, widths=widths)
    assert pre.model.out.in_channels == widths[-1] and pre.model.up4.conv[0].out_channels == widths[0]
    h = pre.history
    assert h["val_loss"].iloc[-1] < 0.7 * h["val_copy_loss"].iloc[-1]   # it beats copying, as the default does
    assert pre.encoder.state_dict().keys() == models.resnet18_encoder().state_dict().keys()
    assert pre.config["decoder_widths"] == list(widths)


def test_no_test_or_validation_image_enters_a_pretraining_batch(monkeypatch):
    train = blob_slices(n_cases=6, n_slices=4, px=32, prefix="tr", seed=0)
    val = blob_slices(n_cases=2, n_slices=4, px=32, prefix="va", seed=1)
    test = blob_slices(n_cases=4, n_slices=4, px=32, prefix="te", seed=2)
    table = table_of((train, "train"), (val, "val"), (test, "test"))
    seen = []
    real_gather = R.gather

    def spy(t, idx, device):
        out = real_gather(t, idx, device)
        seen.append(out.detach().cpu().clone())
        return out

    monkeypatch.setattr(R, "gather", spy)
    for method in R.METHODS:
        R.pretrain(method, train.unlabelled(), steps=4, batch_size=6, table=table, device="cpu")
    drawn = torch.cat(seen)
    assert len(drawn) == 2 * 4 * 6

    def rows(s):
        return {bytes(r.numpy().tobytes()) for r in s.images}

    forbidden, allowed = rows(test) | rows(val), rows(train)
    got = {bytes(r.numpy().tobytes()) for r in drawn}
    assert got <= allowed and not (got & forbidden)
    # what would leak is refused before any step
    with pytest.raises(ValueError, match="te000 .test."):
        R.pretrain("mae", test.unlabelled(), steps=1, table=table, device="cpu")
    with pytest.raises(ValueError, match="unlabelled"):
        R.pretrain("mae", train, steps=1, table=table, device="cpu")


def test_checkpoint_round_trip_and_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("PROSTATE_COURSE_RUNS", str(tmp_path / "runs"))
    data = blob_slices(n_cases=4, n_slices=4, px=32).unlabelled()
    table = table_of((blob_slices(n_cases=4, n_slices=4, px=32), "train"))
    ds = SimpleNamespace(manifest={"key": "real-abc"}, root=tmp_path / "ds", table=table)
    pre = R.run_pretraining("mae", data, epochs=1, steps_per_epoch=2, batch_size=4, device="cpu",
                            watch=0, progress=False)
    path = R.save_encoder(pre, ds, "cpu", seed=0)
    assert path == artifacts.checkpoint_path("cpu", "02_generative", "mae", 0)
    found, note = artifacts.find_checkpoint("cpu", "02_generative", "mae", ds, seed=3)
    assert found == path                                     # one pretraining serves every seed
    enc = protocol.from_checkpoint(found)(3)
    for k, v in pre.encoder.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v.cpu()), k
    manifest = models.read_manifest(path)
    assert manifest["method"] == "mae" and manifest["pretraining"]["mask_ratio"] == 0.6
    other = SimpleNamespace(manifest=ds.manifest, root=ds.root, table=table.assign(split="test"))
    assert artifacts.find_checkpoint("cpu", "02_generative", "mae", other)[0] is None
    fresh = models.resnet18_encoder()
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in enc.state_dict().items()
               if v.is_floating_point())


def test_reconstruction_figure_draws_the_given_images():
    import matplotlib
    matplotlib.use("Agg")
    x = torch.randn(3, 3, 16, 16)
    restored = {"epoch 0": torch.zeros(3, 3, 16, 16), "epoch 2": x * 0.5}
    mask = torch.zeros(3, 1, 16, 16, dtype=torch.bool)
    mask[..., :8, :8] = True
    fig = R.reconstruction_figure(x, x + 1, restored, mask=mask, channel=2)
    axes = np.array(fig.axes).reshape(3, 4)
    for i in range(3):
        for j, want in enumerate([x, x + 1, restored["epoch 0"], restored["epoch 2"]]):
            np.testing.assert_allclose(axes[i, j].images[0].get_array(), want[i, 2].numpy(), rtol=1e-6)
    assert [a.get_title() for a in axes[0]] == ["original", "input", "epoch 0", "epoch 2"]
    assert len(axes[0, 1].collections) > 0 and len(axes[0, 0].collections) == 0   # mask outline


def test_restoration_report_regions():
    imgs = torch.ones(4, 3, 32, 32)
    step = R.RestorationStep("mae", flip_p=0.0, mask_ratio=0.5, patch=8)
    lesion = torch.zeros(4, 32, 32, dtype=torch.bool)
    lesion[:, 8:16] = True
    rep = R.restoration_report(Constant(1.0), step, imgs, device="cpu", regions={"lesion": lesion})
    assert list(rep["region"]) == ["all", "lesion"]
    np.testing.assert_allclose(rep["restored_mse"], 0.0)
    np.testing.assert_allclose(rep["copy_mse"], 1.0)
    assert rep.loc[1, "pixels"] < rep.loc[0, "pixels"]
    assert isinstance(rep, pd.DataFrame)


def test_one_shared_checkpoint_is_featurised_once_for_every_seed(tmp_path):
    """protocol: a checkpoint that serves every seed is loaded once for the probes of all seeds;
    a per-seed path ({seed}) is loaded once per seed. The scores are those of that encoder."""
    tr = blob_slices(n_cases=24, n_slices=4, seed=0, prefix="t")
    te = blob_slices(n_cases=8, n_slices=4, seed=2, prefix="e")
    table = table_of((tr, "train"), (te, "test"))
    for s in (0, 1):
        torch.manual_seed(s)
        models.save_checkpoint(models.resnet18_encoder(), tmp_path / f"seed{s}.pt", {"what": "x"})
    loads = {}

    def counted(path):
        inner = protocol.from_checkpoint(path)

        def init(seed):
            loads[str(path)] = loads.get(str(path), 0) + 1
            return inner(seed)

        init.checkpoint = inner.checkpoint
        return init

    shared, per_seed = tmp_path / "seed0.pt", tmp_path / "seed{seed}.pt"
    arms = [protocol.Arm("a", counted(shared), protocol=p) for p in ("linear_probe", "knn")]
    arms += [protocol.Arm("b", counted(per_seed), protocol="linear_probe")]
    le = protocol.run_label_efficiency(arms, tr, te, table=table, fractions=[0.5, 1.0], seeds=[0, 1],
                                       fit_kwargs=dict(epochs=1, batch_size=8), n_boot=10, device="cpu",
                                       min_val_positives=99, knn_ks=(3,), progress=False)
    assert loads == {str(shared): 1, str(per_seed): 2}
    sc = le.scores.set_index(["method", "protocol", "label_fraction", "seed", "case_id"])["score"].sort_index()
    a, b = sc.loc[("a", "linear_probe", 1.0, 0)], sc.loc[("b", "linear_probe", 1.0, 0)]
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6)   # same file at seed 0
