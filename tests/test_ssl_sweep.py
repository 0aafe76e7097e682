"""Sweep helpers: equal images per run, arms that share one encoder, and linear contrasts of
AUROCs with a paired patient bootstrap (checked against compare.paired_deltas and known answers)."""
import numpy as np
import pandas as pd
import pytest
import torch

from fakes import blob_slices, table_of
from prostate_course import compare, protocol
from prostate_course.ssl import sweep as S


def _scores(arms: dict, n_pat=60, seed=0, seeds=(0,)):
    """Per-case scores of arms given as functions of (label, noise) -> score."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n_pat) % 3 == 0).astype(int)
    rows = []
    for name, fn in arms.items():
        for s in seeds:
            noise = rng.normal(size=n_pat)
            rows.append(pd.DataFrame({"case_id": [f"c{i}" for i in range(n_pat)],
                                      "patient_id": [f"p{i // 2}" for i in range(n_pat)],
                                      "label": y, "task": "classification", "method": name,
                                      "protocol": "linear_probe", "label_fraction": 1.0,
                                      "seed": s, "score": fn(y, noise)}))
    return pd.concat(rows, ignore_index=True)


def test_linear_contrast_matches_paired_deltas_and_known_answers():
    sc = _scores({"A": lambda y, e: y + 0.8 * e, "B": lambda y, e: y + 1.5 * e}, seeds=(0, 1))
    got = S.linear_contrast(sc, {"A": 1, "B": -1}, n_boot=500, seed=3)
    ref = compare.paired_deltas(sc, reference="B", n_boot=500, seed=3).iloc[0]
    assert got["estimate"] == pytest.approx(ref["delta"])
    assert (got["lo"], got["hi"]) == pytest.approx((ref["delta_lo"], ref["delta_hi"]))
    assert got["n_test_patients"] == 30
    perfect = _scores({"P": lambda y, e: y + 0.01 * e, "W": lambda y, e: -y + 0.01 * e,
                       "H": lambda y, e: e})
    d = S.linear_contrast(perfect, {"P": 1, "W": -1}, n_boot=200)
    assert d["estimate"] == pytest.approx(2 * 1 - 1) and d["lo"] == d["hi"] == pytest.approx(1.0)
    # a difference of differences: (P - H) - (H - W) = P + W - 2 H = 1 + 0 - 2 AUROC(H)
    auc_h = S.linear_contrast(perfect, {"H": 1}, n_boot=50)["estimate"]
    dd = S.linear_contrast(perfect, {"P": 1, "H": -2, "W": 1}, n_boot=300)
    assert dd["estimate"] == pytest.approx(1 - 2 * auc_h)
    assert dd["lo"] <= dd["estimate"] <= dd["hi"]
    with pytest.raises(ValueError, match="no scores for arm 'Q'"):
        S.linear_contrast(sc, {"A": 1, "Q": -1})


def test_batch_sensitivity_reads_the_claim():
    n = S.arm_name
    sc = _scores({n("simclr", 16, 0.1): lambda y, e: y + 2.0 * e,    # small batch hurts SimCLR
                  n("simclr", 64, 0.1): lambda y, e: y + 0.5 * e,
                  n("dcl", 16, 0.1): lambda y, e: y + 0.5 * e,       # ... and not DCL
                  n("dcl", 64, 0.1): lambda y, e: y + 0.5 * e}, n_pat=200)
    df = S.batch_sensitivity(sc, ["simclr", "dcl"], 16, 64, 0.1, n_boot=400)
    assert list(df["comparison"]) == ["simclr: batch 16 - batch 64", "dcl: batch 16 - batch 64",
                                      "(dcl change) - (simclr change)"]
    assert df.loc[0, "resolved"] == "below 0" and df.loc[2, "resolved"] == "above 0"
    assert df.loc[2, "estimate"] == pytest.approx(df.loc[1, "estimate"] - df.loc[0, "estimate"])


def test_run_sweep_sees_equal_images_and_arms_share_one_encoder():
    tr = blob_slices(n_cases=16, n_slices=3, px=16).unlabelled()
    runs = S.run_sweep(["simclr", "dcl"], [4, 8], [0.5], tr, pairs=16, device="cpu", progress=False)
    assert [(r.method, r.batch_size, r.steps) for r in runs] == [
        ("simclr", 4, 4), ("simclr", 8, 2), ("dcl", 4, 4), ("dcl", 8, 2)]
    assert runs[0].name == "simclr b4 t0.5"
    arms = S.sweep_arms(runs)
    assert [a.method for a in arms] == [r.name for r in runs] and arms[0].protocol == "linear_probe"
    a, b = arms[0].init(0), arms[0].init(1)
    assert a is not b and torch.equal(a.conv1.weight, runs[0].encoder.conv1.weight)
    assert arms[0].init.seed_independent


def test_run_sweep_to_checkpoints_keeps_no_encoder_and_arms_load_the_trained_weights(tmp_path):
    tr = blob_slices(n_cases=16, n_slices=3, px=16).unlabelled()
    kept = S.run_sweep(["dcl"], [4, 8], [0.5], tr, pairs=16, device="cpu", progress=False)
    runs = S.run_sweep(["dcl"], [4, 8], [0.5], tr, pairs=16, device="cpu", progress=False,
                       checkpoint_dir=tmp_path / "sweep")
    assert all(r.encoder is None and r.checkpoint.is_file() for r in runs)
    assert len({r.checkpoint for r in runs}) == 2
    arms = S.sweep_arms(runs)
    assert all(a.init.seed_independent for a in arms)
    for arm, ref in zip(arms, kept):             # same seed, same run: the very weights trained
        got = arm.init(3)
        assert all(torch.equal(x, y) for x, y in zip(got.state_dict().values(),
                                                      ref.encoder.state_dict().values()))
    with pytest.raises(ValueError, match="neither an encoder nor a checkpoint"):
        S.sweep_arms([S.SweepRun("dcl", 4, 0.5, 1, 0.0, kept[0].history, None)])


def test_shared_encoder_features_are_computed_once_for_every_seed():
    tr = blob_slices(n_cases=40, n_slices=3, px=16, seed=0, prefix="t")
    te = blob_slices(n_cases=12, n_slices=3, px=16, seed=2, prefix="e")
    calls = []

    def shared(seed):
        calls.append(("shared", seed))
        torch.manual_seed(0)
        return protocol.random_init(0)

    shared.seed_independent = True

    def per_seed(seed):
        calls.append(("per_seed", seed))
        return protocol.random_init(seed)

    arms = [protocol.Arm("a", shared, protocol="linear_probe"), protocol.Arm("a", shared, protocol="knn"),
            protocol.Arm("b", per_seed, protocol="linear_probe")]
    le = protocol.run_label_efficiency(arms, tr, te, table=table_of((tr, "train"), (te, "test")),
                                       fractions=[0.5, 1.0], seeds=[0, 1, 2], fit_kwargs={},
                                       min_val_positives=100, n_boot=10, device="cpu", progress=False)
    assert calls.count(("shared", 0)) == 1 and len([c for c in calls if c[0] == "shared"]) == 1
    assert sorted(s for k, s in calls if k == "per_seed") == [0, 1, 2]
    assert len(le.rows) == 3 * 2 * 3
    # at 100 % every seed fits on all cases (no validation here): a shared encoder's k-NN gives
    # the same scores for every seed, a per-seed encoder's probe does not
    def distinct(method, proto):
        d = le.scores[(le.scores.method == method) & (le.scores.protocol == proto)
                      & (le.scores.label_fraction == 1.0)]
        return d.groupby("seed")["score"].apply(lambda s: tuple(np.round(s, 6))).nunique()

    assert distinct("a", "knn") == 1 and distinct("b", "linear_probe") == 3
