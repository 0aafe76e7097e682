"""Paired comparisons: limit cases, known shifts, pairing, and a slow reference loop."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from prostate_course import compare


def scores_table(arms: dict, labels, patients=None, fraction=0.1, task="classification"):
    """{(method, protocol, seed): scores} -> the long per-case format."""
    n = len(labels)
    patients = patients if patients is not None else [f"p{i}" for i in range(n)]
    frames = []
    for (method, protocol, seed), s in arms.items():
        frames.append(pd.DataFrame({
            "case_id": [f"c{i:03d}" for i in range(n)], "patient_id": patients, "label": labels,
            "task": task, "method": method, "protocol": protocol,
            "label_fraction": fraction, "seed": seed, "score": s}))
    return pd.concat(frames, ignore_index=True)


def noisy_arms(n=120, seed=0, shift=0.0, shared=1.0, own=0.5):
    """Scores of two arms that share a per-case difficulty term (correlated errors)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    hard = rng.standard_normal(n) * shared
    ref = y + hard + own * rng.standard_normal(n)
    arm = y * (1 + shift) + hard + own * rng.standard_normal(n)
    return y, ref, arm


def test_an_arm_against_itself_gives_zero_with_zero_width():
    y, ref, _ = noisy_arms()
    t = scores_table({("scratch", "finetune", 0): ref, ("copy", "finetune", 0): ref}, y)
    d = compare.paired_deltas(t, n_boot=300)
    assert len(d) == 1 and d.loc[0, "method"] == "copy"
    assert d.loc[0, "delta"] == 0 and d.loc[0, "delta_lo"] == 0 and d.loc[0, "delta_hi"] == 0
    assert d.loc[0, "n_test_patients"] == len(y) and d.loc[0, "n_seeds"] == 1


def test_a_known_shift_gives_the_expected_sign():
    y, ref, _ = noisy_arms()
    better = ref + 3.0 * y              # positives pushed up: the AUROC can only grow
    worse = ref - 3.0 * y
    t = scores_table({("scratch", "finetune", 0): ref, ("better", "finetune", 0): better,
                      ("worse", "finetune", 0): worse}, y)
    d = compare.paired_deltas(t, n_boot=500).set_index("method")
    assert d.loc["better", "delta"] == pytest.approx(roc_auc_score(y, better) - roc_auc_score(y, ref))
    assert d.loc["better", "delta_lo"] > 0 and d.loc["worse", "delta_hi"] < 0
    assert list(compare.resolved(d.reset_index())) == ["better", "worse"]
    assert "better than scratch" in compare.describe(d.reset_index())[0]


def test_paired_interval_is_narrower_than_unpaired_on_correlated_scores():
    y, ref, arm = noisy_arms(n=150, shift=0.3, shared=1.5, own=0.3)
    t = scores_table({("scratch", "finetune", 0): ref, ("simclr", "finetune", 0): arm}, y)
    paired = compare.paired_deltas(t, n_boot=1000).iloc[0]
    unpaired = compare.paired_deltas(t, n_boot=1000, paired=False).iloc[0]
    assert paired["delta"] == unpaired["delta"]
    assert paired["half_width"] < 0.6 * unpaired["half_width"]


def test_vectorised_bootstrap_matches_a_slow_reference_loop():
    rng = np.random.default_rng(3)
    n, n_pat = 40, 25
    patients = [f"p{i}" for i in rng.integers(0, n_pat, n)]       # some patients have 2+ studies
    y = (rng.random(n) < 0.4).astype(int)
    arms = {("scratch", "finetune", s): y + rng.standard_normal(n) for s in (0, 1)}
    arms.update({("dcl", "finetune", s): 1.3 * y + rng.standard_normal(n) for s in (0, 1, 2)})
    t = scores_table(arms, y, patients)
    n_boot, seed = 60, 11
    got = compare.paired_deltas(t, n_boot=n_boot, seed=seed).iloc[0]

    # the slow way: resample patients, rebuild the sample, sklearn AUROC per seed and arm
    cases = sorted(set(t.case_id))
    pid = t.drop_duplicates("case_id").set_index("case_id").loc[cases, "patient_id"].to_numpy()
    uniq, gidx = np.unique(pid, return_inverse=True)
    draws = np.random.default_rng(seed).multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)),
                                                    size=n_boot)
    def arm_scores(method):
        return [t[(t.method == method) & (t.seed == s)].set_index("case_id").loc[cases, "score"].to_numpy()
                for s in sorted(t[t.method == method].seed.unique())]
    a, r = arm_scores("dcl"), arm_scores("scratch")
    yy = t.drop_duplicates("case_id").set_index("case_id").loc[cases, "label"].to_numpy()
    deltas = []
    for b in range(n_boot):
        idx = np.repeat(np.arange(len(cases)), draws[b][gidx])
        if len(set(yy[idx])) < 2:
            continue
        deltas.append(np.mean([roc_auc_score(yy[idx], s[idx]) for s in a])
                      - np.mean([roc_auc_score(yy[idx], s[idx]) for s in r]))
    lo, hi = np.quantile(deltas, [0.025, 0.975])
    assert got["delta_lo"] == pytest.approx(lo, abs=1e-12)
    assert got["delta_hi"] == pytest.approx(hi, abs=1e-12)
    assert got["n_seeds"] == 3 and got["n_reference_seeds"] == 2 and got["n_test_patients"] == len(uniq)
    point = np.mean([roc_auc_score(yy, s) for s in a]) - np.mean([roc_auc_score(yy, s) for s in r])
    assert got["delta"] == pytest.approx(point)


def test_protocols_budgets_and_a_clinical_reference():
    y, ref, arm = noisy_arms(n=80, shift=0.5)
    t = pd.concat([
        scores_table({("scratch", "finetune", 0): ref, ("simclr", "finetune", 0): arm,
                      ("scratch", "linear_probe", 0): ref, ("simclr", "linear_probe", 0): arm}, y, fraction=f)
        for f in (0.05, 1.0)], ignore_index=True)
    d = compare.paired_deltas(t, n_boot=100)
    assert set(zip(d.method, d.protocol, d.label_fraction)) == {
        ("simclr", p, f) for p in ("finetune", "linear_probe") for f in (0.05, 1.0)}
    pirads = scores_table({("pirads", "clinical", 0): y + 0.1}, y).assign(label_fraction=np.nan, seed=np.nan)
    d = compare.paired_deltas(pd.concat([t, pirads]), reference=("pirads", "clinical"), n_boot=100)
    assert set(d.label_fraction) == {0.05, 1.0} and set(d.reference) == {"pirads (clinical)"}
    assert (d.delta < 0).all()            # a perfect score is not beaten


def test_bad_inputs_are_named():
    y, ref, arm = noisy_arms(n=30)
    t = scores_table({("scratch", "finetune", 0): ref, ("dcl", "finetune", 0): arm}, y)
    with pytest.raises(ValueError, match="no score for 1 test cases"):
        compare.paired_deltas(t.drop(index=t.index[(t.method == "dcl")][:1]))
    with pytest.raises(ValueError, match="reference method 'imagenet'"):
        compare.paired_deltas(t, reference="imagenet")
    with pytest.raises(ValueError, match="unknown metric"):
        compare.paired_deltas(t, metric="dice")
    with pytest.raises(ValueError, match="missing columns"):
        compare.check_scores(t.drop(columns="patient_id"))
    bad = t.copy()
    bad.loc[0, "score"] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        compare.check_scores(bad)
