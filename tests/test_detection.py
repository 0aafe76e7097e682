"""Detection package: slices <-> volumes, the segmentation step, arms, the experiment, reader
operating points, per-lesion sensitivity, lesion counts."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from prostate_course import models, protocol
from prostate_course.augment import Compose, RandFlip
from prostate_course.detection import arms as darms
from prostate_course.detection import evaluate as dev
from prostate_course.detection import experiment, readers, resolution, steps, volumes


# ----------------------------------------------------------------------------- volumes
def test_stack_slices_puts_each_slice_at_its_case_and_z_and_zeros_elsewhere():
    maps = torch.arange(4 * 2 * 2, dtype=torch.float32).view(4, 2, 2)
    v = volumes.stack_slices(maps, case_index=[0, 0, 1, 1], slice_z=[1, 3, 0, 2], n_cases=2, depth=5)
    assert v.shape == (2, 5, 2, 2)
    np.testing.assert_array_equal(v[0, 3], maps[1].numpy())
    np.testing.assert_array_equal(v[1, 0], maps[2].numpy())
    assert v[0, [0, 2, 4]].sum() == 0 and v[1, [1, 3, 4]].sum() == 0
    np.testing.assert_array_equal(volumes.unstack_volumes(v, [0, 0, 1, 1], [1, 3, 0, 2]), maps.numpy())
    with pytest.raises(ValueError, match="same z"):
        volumes.stack_slices(maps, [0, 0, 1, 1], [1, 1, 0, 2], 2, 5)
    with pytest.raises(ValueError, match="outside"):
        volumes.stack_slices(maps, [0, 0, 1, 2], [1, 3, 0, 2], 2, 5)


# ------------------------------------------------------------------------------- step
def toy_slices(n=48, size=32, seed=0):
    """Slices with a bright square (the 'lesion') in half of them, its mask, two cases."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, size, size, generator=g)
    m = torch.zeros(n, size, size, dtype=torch.uint8)
    for i in range(0, n, 2):
        r, c = torch.randint(4, size - 10, (2,), generator=g).tolist()
        x[i, :, r:r + 6, c:c + 6] += 2.0
        m[i, r:r + 6, c:c + 6] = 2
    return {"images": x.half(), "lesion_mask": m}


def test_the_focal_loss_is_the_alpha_balanced_formula():
    z = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    y = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    p = torch.sigmoid(z)
    pt = torch.where(y > 0, p, 1 - p)
    at = torch.where(y > 0, 0.75, 0.25)
    want = (-at * (1 - pt) ** 2 * torch.log(pt)).mean()
    got = steps.segmentation_loss("focal", gamma=2.0, alpha=0.75)(z, y)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    with pytest.raises(ValueError, match="loss must be"):
        steps.segmentation_loss("mse")


def test_geometric_augmentation_moves_the_mask_with_the_image():
    data = toy_slices(8)
    step = steps.SegmentationStep(augment=Compose([RandFlip(dims=(-1,), p=1.0)], seed=0))
    d = step.prepare(data, "cpu")
    xb, yb = step.batch(d, torch.arange(8))
    np.testing.assert_array_equal(yb[:, 0].numpy(), (data["lesion_mask"] > 0).flip(-1).float().numpy())
    np.testing.assert_allclose(xb.numpy(), data["images"].float().flip(-1).numpy())


def test_the_segmentation_step_learns_a_bright_square_through_the_engine():
    from prostate_course.train import fit

    data = toy_slices(48)
    torch.manual_seed(0)
    model = models.ResNetUNet(models.resnet18_encoder(), 1, widths=(32, 16, 16, 16, 8))
    res = fit(model, data, None, step=steps.SegmentationStep(loss="dice_ce"), epochs=4, batch_size=16,
              steps_per_epoch=10, lr=3e-3, device="cpu", progress=False)
    h = res.history
    assert h.train_loss.is_monotonic_decreasing and h.train_loss.iloc[-1] < 0.95 * h.train_loss.iloc[0]
    p = steps.predict_slices(model, data["images"], device="cpu")
    m = data["lesion_mask"] > 0
    assert p.shape == (48, 32, 32)
    assert float(p[m].mean()) > float(p[~m].mean()) + 0.1        # lesion pixels stand out
    with pytest.raises(ValueError, match="lesion masks"):
        steps.SegmentationStep().prepare({"images": data["images"]}, "cpu")


def test_predict_volumes_chunk_by_chunk_equals_stacking_every_slice_map_at_once():
    sl = ToySlices([f"c{i}" for i in range(3)], [1, 0, 1], 0)
    order = torch.randperm(len(sl), generator=torch.Generator().manual_seed(1))   # slices out of case order
    sl.images, sl.case_index, sl.slice_z = sl.images[order], sl.case_index[order], sl.slice_z[order]
    torch.manual_seed(0)
    model = models.ResNetUNet(models.resnet18_encoder(), 1, widths=(16, 8, 8, 8, 8)).eval()
    whole = volumes.stack_slices(steps.predict_slices(model, sl.images, device="cpu"), sl.case_index,
                                 sl.slice_z, 3, 4)
    chunked = volumes.predict_volumes(model, sl, 4, device="cpu", chunk=5)     # 12 slices: 5 + 5 + 2
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("loss", ["focal", "dice_ce"])
def test_the_validation_loss_is_the_loss_over_the_whole_set(loss):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(150, 1, 8, 8, generator=g)
    y = (torch.rand(150, 1, 8, 8, generator=g) > 0.9).to(torch.uint8)
    step = steps.SegmentationStep(loss=loss)
    whole = float(steps.segmentation_loss(loss)(logits, y.float()))     # one call over all 150 slices
    assert step._loss_over(logits, y, chunk=64) == pytest.approx(whole, rel=1e-6)


# ------------------------------------------------------------------------------- arms
def test_arm_plan_expands_all_and_aliases_and_rejects_unknown_budgets():
    methods = ("scratch", "genesis")
    assert experiment.arm_plan("all", methods, [0.1, 1.0, 0.05]) == {"scratch": [0.05, 0.1, 1.0],
                                                                    "genesis": [0.05, 0.1, 1.0]}
    plan = experiment.arm_plan({"scratch": ["smallest", "largest"], "genesis": [0.1]}, methods, [0.05, 0.1, 1.0])
    assert plan == {"scratch": [0.05, 1.0], "genesis": [0.1]}
    with pytest.raises(ValueError, match="not one of the profile"):
        experiment.arm_plan({"scratch": [0.3]}, methods, [0.05, 1.0])
    with pytest.raises(ValueError, match="names 'mae'"):
        experiment.arm_plan({"mae": "all"}, methods, [0.05, 1.0])


class FakeDataset:
    def __init__(self, key="synthetic-test"):
        self.manifest = {"key": key}
        self.table = pd.DataFrame({"case_id": ["a", "b"], "split": ["train", "test"]})
        self.root = None


def test_encoder_arms_use_a_matching_checkpoint_else_a_stand_in_else_record_why(tmp_path, monkeypatch):
    from prostate_course import artifacts

    monkeypatch.setenv("PROSTATE_COURSE_RUNS", str(tmp_path))
    ds = FakeDataset()
    torch.manual_seed(3)
    enc = models.resnet18_encoder()
    path = artifacts.checkpoint_path("t", "03_contrastive", "dcl", 0)
    models.save_checkpoint(enc, path, artifacts.provenance(ds))
    arms, notes = darms.encoder_arms("t", ds, [0, 1], imagenet_reason="offline",
                                     stand_ins={"genesis": lambda seed: models.resnet18_encoder()})
    by = {a.method: a for a in arms}
    assert by["imagenet"].unavailable == "offline"
    assert by["dcl"].init is not None and not by["dcl"].unavailable and not by["dcl"].stand_in
    loaded = by["dcl"].init(1)                       # seed 1 falls back to the seed-0 checkpoint
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), enc.state_dict().values()))
    assert by["genesis"].stand_in and "02_generative" in by["genesis"].stand_in
    assert by["pirads_conf"].unavailable and "no stand-in registered" in by["pirads_conf"].unavailable
    assert list(notes.method) == list(darms.METHODS)
    other = FakeDataset(key="synthetic-other")       # a checkpoint made for other data is refused
    arms2, _ = darms.encoder_arms("t", other, [0], methods=("dcl",))
    assert arms2[0].unavailable and "other data" in arms2[0].unavailable


def test_stand_ins_pretrain_each_missing_encoder_with_its_own_method(tmp_path, monkeypatch):
    from fakes import SlicesDataset, pirads_cohort

    monkeypatch.setenv("PROSTATE_COURSE_RUNS", str(tmp_path))
    ds = SlicesDataset(*pirads_cohort(), tmp_path)
    factories = darms.stand_in_factories(ds, steps=2, device="cpu")
    arms, notes = darms.encoder_arms("t", ds, [0], imagenet_reason="offline", stand_ins=factories)
    by = {a.method: a for a in arms}
    torch.manual_seed(0)
    untrained = protocol.random_init(0).state_dict()
    for m in darms.PRETRAINED:                    # no checkpoint anywhere: every one a stand-in
        assert by[m].stand_in and not by[m].unavailable
        enc = by[m].init(0)
        assert enc(torch.zeros(2, 3, 16, 16)).shape == (2, 512)
        moved = [k for k, v in enc.state_dict().items() if v.is_floating_point() and not torch.equal(v, untrained[k])]
        assert moved, f"{m}: the stand-in is the untrained encoder"
        again = by[m].init(0)                     # the same seed trains the same weights (CPU)
        assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), again.state_dict().values()))
    assert set(notes[notes.encoder.str.startswith("stand-in")].method) == set(darms.PRETRAINED)


# ------------------------------------------------------------------------- experiment
class ToySlices:
    """A SliceSet-like toy: 6 cases of 4 slices; positives carry a bright square lesion."""

    def __init__(self, case_ids, labels, seed):
        n = len(case_ids)
        g = torch.Generator().manual_seed(seed)
        self.images = 0.3 * torch.randn(n * 4, 3, 32, 32, generator=g)
        self.lesion_mask = torch.zeros(n * 4, 32, 32, dtype=torch.uint8)
        for i, y in enumerate(labels):
            if y:
                self.images[i * 4 + 1:i * 4 + 3, :, 8:16, 10:18] += 2.5
                self.lesion_mask[i * 4 + 1:i * 4 + 3, 8:16, 10:18] = 3
        self.images = self.images.half()
        self.case_index = torch.arange(n).repeat_interleave(4)
        self.slice_z = torch.arange(4).repeat(n)
        self.case_ids, self.patient_ids = list(case_ids), [f"p{c}" for c in case_ids]
        self.case_label = torch.tensor(labels)
        self.slice_label = (self.lesion_mask.flatten(1) > 0).any(1).long()

    def __len__(self):
        return len(self.images)

    def subset(self, ids):
        keep = [self.case_ids.index(c) for c in ids]
        out = ToySlices.__new__(ToySlices)
        rows = torch.cat([torch.arange(k * 4, k * 4 + 4) for k in keep])
        out.images, out.lesion_mask, out.slice_label = self.images[rows], self.lesion_mask[rows], self.slice_label[rows]
        out.case_index = torch.arange(len(keep)).repeat_interleave(4)
        out.slice_z = torch.arange(4).repeat(len(keep))
        out.case_ids = [self.case_ids[k] for k in keep]
        out.patient_ids = [self.patient_ids[k] for k in keep]
        out.case_label = self.case_label[keep]
        return out


def toy_detection_cohort():
    """8 training and 6 test toy cases (half with a lesion), the training table and the test
    cases' reference lesion volumes: what run_detection takes."""
    tr_ids, te_ids = [f"t{i}" for i in range(8)], [f"e{i}" for i in range(6)]
    tr_lab, te_lab = [1, 0, 1, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0]
    train, test = ToySlices(tr_ids, tr_lab, 0), ToySlices(te_ids, te_lab, 1)
    table = pd.DataFrame({"case_id": tr_ids, "patient_id": [f"p{c}" for c in tr_ids], "split": "train",
                          "case_csPCa": tr_lab})
    ref = volumes.stack_slices(test.lesion_mask, test.case_index, test.slice_z, 6, 4).astype(np.uint8)
    return train, test, table, ref


def test_run_detection_records_rows_scores_and_lesion_results(tmp_path):
    from prostate_course.protocol import Arm, random_init
    from prostate_course.results import Results, load_lesions, load_results

    train, test, table, ref = toy_detection_cohort()
    arms = [Arm("scratch", random_init), Arm("genesis", None, unavailable="no checkpoint")]
    res = Results("05_detection", "t", seeds=[0])
    ex = experiment.run_detection(
        arms, train, test, ref, table=table, plan={"scratch": [0.5, 1.0]}, seeds=[0],
        fit_kwargs={"epochs": 2, "batch_size": 8, "steps_per_epoch": 4, "lr": 3e-3},
        widths=(32, 16, 16, 16, 8), candidates={"min_voxels": 4}, min_val_positives=5, n_boot=50,
        device="cpu", results=res, progress=False)
    assert list(ex.rows.label_fraction) == [0.5, 1.0] and set(ex.rows.task) == {"detection"}
    for k in dev.DETECTION_METRICS:
        assert k in ex.rows
    assert len(ex.scores) == 12 and set(ex.scores.label) == {0, 1}
    n_ref = (ex.lesions.is_lesion == 1).groupby([ex.lesions.label_fraction]).sum()
    assert list(n_ref) == [3, 3]                     # the same 3 reference lesions for each arm
    assert ex.unavailable[0]["method"] == "genesis"
    assert list(ex.probabilities) == [("scratch", 1.0, 0)]
    assert ex.evaluations[("scratch", 0.5, 0)].maps is None
    path = res.save(tmp_path)
    saved = load_results(tmp_path)["05_detection"]
    assert saved["lesions"] == "05_detection.lesions.csv" and saved["unavailable"][0]["reason"] == "no checkpoint"
    assert len(load_lesions(tmp_path)) == len(ex.lesions)
    (tmp_path / "05_detection.lesions.csv").unlink()
    with pytest.raises(ValueError, match="lesion results 05_detection.lesions.csv"):
        load_results(tmp_path)
    assert json.loads(path.read_text())["scores"] == "05_detection.scores.csv"
    t = experiment.main_table(ex.rows)
    assert list(t.n_seeds) == [1, 1]


def test_run_detection_runs_the_largest_budget_first_yet_each_job_gives_what_it_gives_alone(monkeypatch):
    from prostate_course.protocol import Arm, random_init
    from prostate_course.results import Results

    train, test, table, ref = toy_detection_cohort()
    ran = []
    make_budget = experiment.make_budget
    monkeypatch.setattr(experiment, "make_budget", lambda t, f, *a, **k: ran.append(f) or make_budget(t, f, *a, **k))
    kw = dict(table=table, seeds=[0], fit_kwargs={"epochs": 1, "batch_size": 8, "steps_per_epoch": 3, "lr": 3e-3},
              widths=(32, 16, 16, 16, 8), candidates={"min_voxels": 4}, min_val_positives=5, n_boot=20,
              device="cpu", progress=False)
    arms = [Arm("scratch", random_init), Arm("genesis", random_init)]
    res = Results("05_detection", "t", seeds=[0])
    both = experiment.run_detection(arms, train, test, ref, plan={"scratch": [0.5, 1.0], "genesis": [0.5]},
                                    results=res, **kw)
    assert ran == [1.0, 0.5, 0.5]                              # scratch at 1.0 ran first ...
    assert list(zip(both.rows.method, both.rows.label_fraction)) == [("scratch", 0.5), ("scratch", 1.0),
                                                                     ("genesis", 0.5)]   # ... shown in plan order
    assert [(r["method"], r["label_fraction"]) for r in res.rows] == list(zip(both.rows.method, both.rows.label_fraction))
    alone = experiment.run_detection(arms[:1], train, test, ref, plan={"scratch": [0.5]}, **kw)
    cols = ["auroc", "ap", "n_candidates", "best_epoch"]
    pd.testing.assert_frame_equal(alone.rows[cols], both.rows[cols].iloc[:1])
    assert list(both.scores.groupby(["method", "label_fraction"], sort=False).size().index) == \
        [("scratch", 0.5), ("scratch", 1.0), ("genesis", 0.5)]


# ------------------------------------------------------------------------ the readers
def reader_table():
    #          csPCa  reports (routine first)
    cases = [("a", 1, "5;4;3"), ("b", 1, "4;3"), ("c", 1, "3;2;4"), ("d", 0, "2;2;3"),
             ("e", 0, "3;4"), ("f", 0, "1;2"), ("g", 1, "2"), ("h", 0, "4;2;2")]
    t = pd.DataFrame(cases, columns=["case_id", "case_csPCa", "pirads_reports"])
    return t, list(t.case_id), t.case_csPCa.to_numpy()


def test_reader_operating_points_per_report_and_pooled():
    t, ids, y = reader_table()
    ai = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.1, 0.4, 0.2])
    ops = readers.reader_operating_points(t, ids, y, ai).set_index(["reader", "threshold"])
    r1 = ops.loc[("report 1 (routine)", "PI-RADS >= 3")]
    # routine reports 5,4,3,2 for the 4 positives -> 3/4; 2,3,1,4 for the negatives -> 2/4 below 3
    assert r1.sensitivity == pytest.approx(0.75) and r1.specificity == pytest.approx(0.5)
    pooled = ops.loc[("pooled", "PI-RADS >= 4")]
    # readings of positives: 5,4,3,4,3,3,2,4,2 -> 4 of 9 at >= 4; negatives: 2,2,3,3,4,1,2,4,2,2 -> 8/10 below 4
    assert pooled.sensitivity == pytest.approx(4 / 9) and pooled.specificity == pytest.approx(8 / 10)
    assert ops.loc[("report 3", "PI-RADS >= 3"), "n_cases"] == 4     # a, c, d, h have 3 reports
    # AI at the routine reader's specificity (0.5): threshold 0.4 leaves 3 of 4 negatives below, sens 1.0
    assert r1.ai_sensitivity_at_reader_specificity == pytest.approx(1.0)
    assert 0 <= r1.sensitivity_lo <= r1.sensitivity <= r1.sensitivity_hi <= 1


def test_matched_operating_points_on_a_known_roc():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.3, 0.8, 0.5, 0.2, 0.1])
    assert readers.sensitivity_at_specificity(y, s, 0.75)[0] == pytest.approx(2 / 3)   # threshold 0.6
    assert readers.specificity_at_sensitivity(y, s, 1.0)[0] == pytest.approx(0.5)      # threshold 0.3


def test_reference_lesions_tell_which_lesion_was_hit_with_its_isup():
    ref = np.zeros((6, 24, 24), np.uint8)
    ref[1:3, 2:8, 2:8] = 2                       # ISUP 2, missed
    ref[3:6, 14:20, 14:20] = 4                   # ISUP 4, found
    prob = np.zeros(ref.shape, np.float32)
    prob[3:6, 14:20, 14:20] = 0.9
    prob[0, 20:24, 0:5] = 0.5                    # a false positive
    ev = dev.evaluate_detection([prob, np.zeros(ref.shape, np.float32)], [ref, np.zeros_like(ref)],
                                ["x", "y"], candidates={"min_voxels": 3})
    les = readers.reference_lesions(ev, [ref, np.zeros_like(ref)])
    assert list(zip(les.isup, les.hit)) == [(2, False), (4, True)]
    assert les.confidence.tolist() == [0.0, pytest.approx(0.9)]
    by = readers.sensitivity_by(les, "isup").set_index("isup")
    assert by.loc[2, "sensitivity"] == 0 and by.loc[4, "sensitivity"] == 1
    assert readers.sensitivity_by(les, "isup", threshold=0.95).n_found.sum() == 0
    at = float(les.confidence.max())             # the operating point's rule: score >= threshold
    assert readers.sensitivity_by(les, "isup", threshold=at).n_found.sum() == 1
    with pytest.raises(ValueError, match="detection maps"):
        readers.reference_lesions(ev.drop_maps(), [ref, ref])


# ------------------------------------------------------------------------- resolution
def test_lesions_count_26_connected_and_touching_balls_merge():
    a = np.zeros((3, 5, 5), bool)
    a[0, 0, 0] = a[1, 1, 1] = True               # corner neighbours: one lesion for picai_eval
    assert resolution.count_lesions(a) == 1
    a[2, 4, 4] = True
    assert resolution.count_lesions(a) == 2
    far = resolution.merge_demo(gap_mm=6.0)
    assert far["n_fine"] == 2 and far["n_coarse"] == 2
    touching = resolution.merge_demo(gap_mm=0.0, axis="z")
    assert touching["n_coarse"] == 1
    assert resolution.merge_rate(0.5, (3.0, 1.0, 1.0), "x", n=20) > resolution.merge_rate(0.5, (3.0, 0.5, 0.5), "x", n=20)
    assert resolution.merge_rate(2.0, (3.0, 1.0, 1.0), "z", n=20) > 0 == resolution.merge_rate(4.0, (3.0, 1.0, 1.0), "z", n=20)
