"""The label-efficiency protocol: honest budgets, arms, per-case scores, clinical references,
checkpoint arms and the scores file beside the results JSON."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from prostate_course import models, protocol
from prostate_course.compare import SCORE_COLUMNS, paired_deltas
from prostate_course.data.splits import label_budget
from prostate_course.results import Results, load_results, load_scores, validate_results

from fakes import blob_slices, table_of


def big_table(n_pat=120, seed=0):
    rng = np.random.default_rng(seed)
    pats = [f"p{i:03d}" for i in range(n_pat)]
    y = (rng.random(n_pat) < 0.3).astype(int)
    rows = [{"case_id": f"{p}_1", "patient_id": p, "case_csPCa": int(l), "split": "train"}
            for p, l in zip(pats, y)]
    rows += [{"case_id": f"{p}_2", "patient_id": p, "case_csPCa": int(l), "split": "train"}
             for p, l in zip(pats[::4], y[::4])]                  # a second study for some
    return pd.DataFrame(rows)


def test_budget_validation_is_inside_the_budget():
    t = big_table()
    for f in (0.25, 0.5, 1.0):
        b = protocol.make_budget(t, f, seed=1)
        assert sorted(b.case_ids) == sorted(label_budget(t, f, seed=1))       # nothing extra
        assert b.val_ids, f"{f}: enough positives for a validation set"
        pf = set(t.set_index("case_id").loc[b.fit_ids, "patient_id"])
        pv = set(t.set_index("case_id").loc[b.val_ids, "patient_id"])
        assert not pf & pv                                                   # patient-level
        val = t[t.case_id.isin(b.val_ids)].groupby("patient_id").case_csPCa.max()
        n_pat = t[t.case_id.isin(b.case_ids)].patient_id.nunique()
        assert val.sum() >= 1 and (val == 0).sum() >= 1                      # stratified
        assert 0.1 < len(val) / n_pat < 0.3                                  # about a fifth
    small = protocol.make_budget(t, 0.05, seed=1)
    assert small.val_ids == [] and "no validation" in small.rule
    assert small.n_positive_patients < 5


def test_seeds_for_fraction():
    assert protocol.seeds_for(0.05, [0, 1]) == [0, 1]
    by = {0.05: [0, 1, 2, 3], "default": [0, 1]}
    assert protocol.seeds_for(0.05, by) == [0, 1, 2, 3] and protocol.seeds_for(0.5, by) == [0, 1]


class SpySlices:
    """Wraps a SliceSet and records every case id a budget asks for."""

    def __init__(self, inner):
        self.inner, self.asked = inner, set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def subset(self, ids):
        self.asked |= set(ids)
        return self.inner.subset(ids)


def test_run_label_efficiency_rows_scores_and_no_label_leak(tmp_path):
    tr = blob_slices(n_cases=60, n_slices=4, seed=0, prefix="t")
    te = blob_slices(n_cases=20, n_slices=4, seed=2, prefix="e")
    table = table_of((tr, "train"), (te, "test"))
    spy = SpySlices(tr)
    arms = [protocol.Arm("scratch", protocol.random_init),
            protocol.Arm("scratch", protocol.random_init, protocol="linear_probe"),
            protocol.Arm("scratch", protocol.random_init, protocol="knn"),
            protocol.Arm("imagenet", None, unavailable="no ImageNet weight file offline")]
    res = Results("01_transfer_learning", "test", seeds=[0, 1])
    le = protocol.run_label_efficiency(
        arms, spy, te, table=table, fractions=[0.25, 1.0], seeds={0.25: [0, 1], "default": [0]},
        fit_kwargs=dict(epochs=1, batch_size=16, lr=1e-3), n_boot=20, device="cpu",
        min_val_positives=3, knn_ks=(3, 5), results=res, keep_snapshots=True, progress=False)
    rows, sc = le.rows, le.scores
    assert len(rows) == 3 * (2 + 1)                                 # 3 arms x (2 seeds + 1 seed)
    assert set(rows["protocol"]) == {"finetune", "linear_probe", "knn"}
    labelled = set()
    for f, s in ((0.25, 0), (0.25, 1), (1.0, 0)):
        labelled |= set(protocol.make_budget(table, f, s, min_val_positives=3).case_ids)
    assert spy.asked <= labelled and spy.asked                      # no label outside a budget
    assert (rows[rows.label_fraction == 1.0]["n_fit_cases"] + rows[rows.label_fraction == 1.0]["n_val_cases"] == 60).all()
    assert list(sc.columns) == list(SCORE_COLUMNS)
    assert len(sc) == len(rows) * len(te.case_ids) and set(sc.case_id) == set(te.case_ids)
    # the patient score is the max over the case's slices: AUROC from the saved scores matches the row
    from sklearn.metrics import roc_auc_score
    r0 = rows.iloc[0]
    s0 = sc[(sc.method == r0.method) & (sc.protocol == r0.protocol) & (sc.seed == r0.seed)
            & (sc.label_fraction == r0.label_fraction)]
    assert roc_auc_score(s0.label, s0.score) == pytest.approx(r0.auroc_patient)
    d = res.to_dict()
    assert d["unavailable"] == [{"method": "imagenet", "protocol": "finetune",
                                 "reason": "no ImageNet weight file offline"}]
    path = res.save(tmp_path)
    saved = json.loads(path.read_text())
    assert saved["scores"] == "01_transfer_learning.scores.csv" and (tmp_path / saved["scores"]).is_file()
    back, _ = load_scores(tmp_path)
    assert len(back) == len(sc) and set(back.notebook) == {"01_transfer_learning"}
    assert paired_deltas(back, n_boot=50).empty      # scratch is the only method: no other arm
    deltas = paired_deltas(back, reference=("scratch", "finetune"), n_boot=50)
    assert set(deltas.protocol) == {"linear_probe", "knn"}
    assert set(le.snapshots) == {"scratch"} and ("scratch", 1.0, 0) in le.histories
    assert set(le.budgets.columns) >= {"label_fraction", "seed", "n_fit_cases", "n_val_cases", "rule"}


def test_the_validator_checks_the_scores_link(tmp_path):
    res = Results("02_generative", "test")
    sc = protocol.score_rows(["c1", "c2"], ["p1", "p2"], [0, 1], [0.2, 0.9], task="classification",
                             method="genesis", protocol="finetune", label_fraction=0.1, seed=0)
    res.add_scores(sc)
    with pytest.raises(ValueError, match="without result rows"):
        res.save(tmp_path)                           # scores of an arm that has no row
    res.add_row(task="classification", method="genesis", protocol="finetune", label_fraction=0.1,
                seed=0, auroc_patient=1.0)
    res.save(tmp_path)
    assert load_results(tmp_path)["02_generative"]["scores"] == "02_generative.scores.csv"
    (tmp_path / "02_generative.scores.csv").unlink()
    with pytest.raises(ValueError, match="does not exist"):
        load_results(tmp_path)


def test_clinical_scores_and_their_repairs():
    table = pd.DataFrame({
        "case_id": ["a", "b", "c", "d", "e"], "patient_id": ["1", "2", "3", "4", "5"],
        "split": ["train", "train", "test", "test", "test"], "case_csPCa": [0, 1, 0, 1, 1],
        "pirads_reports": ["2", "5;4", "2;3", "4;5;5", ""], "psad": [0.1, 0.3, np.nan, 0.4, 0.2]})
    sc, repairs = protocol.clinical_scores(table, ["c", "d", "e"])
    pir = sc[sc.method == "pirads"].set_index("case_id")["score"]
    assert pir["c"] == 2.5 and pir["d"] == pytest.approx(14 / 3)
    assert pir["e"] == pytest.approx(np.median([2.0, 4.5]))     # no report: training median
    assert sc[sc.method == "psad"].set_index("case_id").loc["c", "score"] == pytest.approx(0.2)
    assert len(repairs) == 2 and all("training median" in r for r in repairs)
    assert sc.label_fraction.isna().all() and set(sc.protocol) == {"clinical"}


def test_from_checkpoint_loads_an_encoder_and_refuses_stale_ones(tmp_path):
    torch.manual_seed(3)
    model = models.Classifier(models.resnet18_encoder())
    path = tmp_path / "seed0.pt"
    models.save_checkpoint(model, path, {"what": "simclr"}, dataset_key="synthetic-abc")
    enc = protocol.from_checkpoint(tmp_path / "seed{seed}.pt", expect={"dataset_key": "synthetic-abc"})(0)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc.state_dict()[k]), k
    with pytest.raises(protocol.StaleCheckpoint, match="dataset_key"):
        protocol.from_checkpoint(path, expect={"dataset_key": "synthetic-xyz"})(0)
    with pytest.raises(FileNotFoundError):
        protocol.from_checkpoint(tmp_path / "seed{seed}.pt")(1)


def test_protocol_settings_hash_tracks_what_matters():
    base = dict(dataset_key="k", fractions=[0.05, 1.0], seeds=[0, 1], fit_kwargs={"epochs": 2},
                augment=True, val_share=0.2, min_val_positives=5, probe_Cs=[0.1], knn_ks=[5],
                test_case_ids=["a", "b"])
    h = protocol.protocol_settings(**base)["hash"]
    assert protocol.protocol_settings(**base)["hash"] == h
    for k, v in (("fit_kwargs", {"epochs": 3}), ("test_case_ids", ["a", "c"]), ("dataset_key", "j")):
        assert protocol.protocol_settings(**{**base, k: v})["hash"] != h


def test_record_arms_keeps_the_runnable_and_records_the_rest():
    class Recorder:
        def __init__(self):
            self.calls = []

        def unavailable(self, method, reason, protocol=None):
            self.calls.append(("unavailable", method, protocol, reason))

        def stand_in(self, method, reason):
            self.calls.append(("stand_in", method, reason))

    arms = [protocol.Arm("scratch", protocol.random_init),
            protocol.Arm("imagenet", None, protocol="linear_probe", unavailable="no weight file"),
            protocol.Arm("dcl", protocol.random_init, stand_in="no checkpoint of 03")]
    rec = Recorder()
    runnable, missing = protocol.record_arms(arms, rec)
    assert [a.method for a in runnable] == ["scratch", "dcl"]
    assert missing == [{"method": "imagenet", "protocol": "linear_probe", "reason": "no weight file"}]
    assert rec.calls == [("unavailable", "imagenet", "linear_probe", "no weight file"),
                         ("stand_in", "dcl", "no checkpoint of 03")]
    assert protocol.record_arms(arms)[1] == missing          # without a Results: nothing to record
