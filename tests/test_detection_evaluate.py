"""The detection wrapper gives picai_eval's own numbers; the weighted AP behind the paired
bootstrap equals picai_eval's AP at unit weights and on resampled case lists."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from prostate_course import compare
from prostate_course.detection import evaluate as de
from prostate_course.detection.picai import extract_lesion_candidates, picai_eval

PICAI_LABELS = Path(__file__).parent / "fixtures" / "picai_labels"
SHAPE = (12, 32, 32)


def ball(centre, radius, shape=SHAPE, spacing=(3.0, 1.0, 1.0)):
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    cz, cy, cx = (c * s for c, s in zip(centre, spacing))
    return ((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2).astype(np.uint8)


def cohort():
    """Six cases: three with one lesion (ISUP values), one with two, two without."""
    refs = [ball((5, 10, 10), 4) * 3, ball((6, 20, 18), 5) * 2, ball((4, 12, 22), 4) * 4,
            np.maximum(ball((3, 8, 8), 4), ball((8, 24, 24), 4)) * 2,
            np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)]
    return [f"c{i}" for i in range(len(refs))], refs


def test_a_perfect_prediction_scores_auroc_1_and_ap_1():
    ids, refs = cohort()
    ev = de.evaluate_detection([(r > 0).astype(np.float32) for r in refs], refs, ids)
    s = ev.summary()
    assert s["auroc"] == 1.0 and s["ap"] == 1.0 and s["score"] == 1.0
    assert s["n_lesions"] == 5 and s["n_hits"] == 5 and s["n_candidates"] == 5
    assert list(ev.labels) == [1, 1, 1, 1, 0, 0]


def test_an_empty_prediction_scores_ap_0_and_misses_every_lesion():
    ids, refs = cohort()
    ev = de.evaluate_detection([np.zeros(SHAPE, np.float32) for _ in refs], refs, ids)
    s = ev.summary()
    assert s["ap"] == 0.0 and s["auroc"] == 0.5 and s["n_hits"] == 0
    assert s["sens_at_1fp"] == 0.0
    les = ev.lesions
    assert (les.is_lesion == 1).sum() == 5 and (les.confidence == 0).all()


def iou(a, b):
    a, b = a > 0, b > 0
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("shift, hit", [(2, True), (7, False)])
def test_a_shifted_lesion_is_a_hit_only_when_iou_reaches_0_1(shift, hit):
    ref = ball((6, 16, 12), 5)
    pred = ball((6, 16, 12 + shift), 5)
    assert (iou(ref, pred) >= 0.1) == hit                        # the crafted overlap, by hand
    ev = de.evaluate_detection([0.8 * pred.astype(np.float32)], [ref], ["c0"])
    les = ev.lesions
    if hit:
        assert les.to_dict("records") == [{"case_id": "c0", "lesion": 0, "is_lesion": 1,
                                           "confidence": pytest.approx(0.8),
                                           "overlap": pytest.approx(iou(ref, pred))}]
    else:   # the lesion is missed and the candidate is a false positive
        assert sorted(zip(les.is_lesion, les.confidence.round(3))) == [(0, 0.8), (1, 0.0)]
        assert ev.summary()["ap"] == 0.0


def test_the_wrapper_gives_picai_evals_own_numbers_on_noisy_maps():
    ids, refs = cohort()
    rng = np.random.default_rng(0)
    probs = []
    for i, r in enumerate(refs):
        p = 0.05 * rng.random(SHAPE)
        p[r > 0] += 0.3 + 0.1 * i                                # lesions found with graded confidence
        p += 0.5 * ball((9, 4 + 4 * i, 28), 3)                   # and one false positive per case
        probs.append(np.clip(p, 0, 1).astype(np.float32))
    ev = de.evaluate_detection(probs, refs, ids)
    maps = [extract_lesion_candidates(p)[0] for p in probs]
    m = picai_eval().evaluate(y_det=maps, y_true=[(r > 0).astype(int) for r in refs], subject_list=ids)
    s = ev.summary()
    assert s["auroc"] == pytest.approx(m.auroc) and s["ap"] == pytest.approx(m.AP)
    assert s["score"] == pytest.approx(m.score)
    assert s["sens_at_1fp"] == pytest.approx(m.lesion_TPR_at_FPR(1.0))
    assert 0 < s["ap"] < 1 and s["n_candidates"] > s["n_hits"] > 0
    assert ev.case_table().n_false_positives.sum() == (ev.lesions.is_lesion == 0).sum()


def test_the_real_picai_labels_against_themselves_give_a_perfect_score():
    files = sorted((PICAI_LABELS / "csPCa_lesion_delineations/human_expert/resampled").glob("*.nii.gz"))
    refs = [np.asarray(nib.load(str(f)).dataobj).astype(np.uint8).transpose(2, 1, 0) for f in files]
    ids = [f.name.split(".")[0] for f in files]
    assert sum(r.any() for r in refs) == 3 and len(refs) == 8   # 3 csPCa, 5 without
    ev = de.evaluate_detection([(r > 0).astype(np.float32) for r in refs], refs, ids)
    s = ev.summary()
    assert (s["auroc"], s["ap"], s["score"]) == (1.0, 1.0, 1.0)
    assert s["n_lesions"] == s["n_hits"] == 3


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="c1: detection"):
        de.evaluate_detection([np.zeros(SHAPE), np.zeros((2, 2, 2))], [np.zeros(SHAPE)] * 2, ["c0", "c1"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        de.detection_map(np.full(SHAPE, 1.5))


# ------------------------------------------------------------------ weighted AP vs picai_eval
def random_lesion_results(rng, n_cases=30):
    """picai_eval-style per-case lists: hits, misses (confidence 0) and false positives, with
    ties in the confidences."""
    results = {}
    for i in range(n_cases):
        entries = []
        for _ in range(rng.integers(0, 3)):                      # reference lesions
            entries.append((1, float(np.round(rng.random(), 1)) if rng.random() < 0.7 else 0.0, 0.5))
        for _ in range(rng.integers(0, 3)):                      # false positives
            entries.append((0, float(np.round(rng.random() * 0.8, 1) + 0.05), 0.0))
        results[f"c{i:02d}"] = entries
    return results


def flat(results, ids):
    pos = [i for i, c in enumerate(ids) for _ in results[c]]
    y = [e[0] for c in ids for e in results[c]]
    conf = [e[1] for c in ids for e in results[c]]
    return np.array(pos), np.array(y), np.array(conf)


def test_weighted_ap_at_unit_weights_is_picai_evals_ap():
    Metrics = picai_eval().Metrics
    for seed in range(5):
        res = random_lesion_results(np.random.default_rng(seed))
        ids = sorted(res)
        got = de.weighted_ap(*flat(res, ids), np.ones((1, len(ids))))[0]
        assert got == pytest.approx(Metrics(lesion_results=res).AP, abs=1e-12)


def test_weighted_ap_on_bootstrap_weights_matches_picai_eval_on_resampled_case_lists():
    Metrics = picai_eval().Metrics
    rng = np.random.default_rng(7)
    res = random_lesion_results(rng)
    ids = sorted(res)
    m = Metrics(lesion_results=res)
    for _ in range(20):
        draw = rng.integers(0, len(ids), len(ids))
        w = np.bincount(draw, minlength=len(ids))[None, :].astype(float)
        got = de.weighted_ap(*flat(res, ids), w)[0]
        want = m.calc_AP(subject_list=[ids[i] for i in draw])
        if not np.isfinite(got):       # no reference lesion drawn: undefined (picai_eval says 0)
            assert sum(e[0] for i in draw for e in res[ids[i]]) == 0
            continue
        assert got == pytest.approx(want, abs=1e-12)


# ----------------------------------------------------------------- paired deltas for AP / score
def arm_tables(arms: dict, labels, patients, fraction=0.05):
    """{(method, seed): per-case lesion results} -> (scores, lesions) in the course's format."""
    ids = [f"c{i:02d}" for i in range(len(labels))]
    scores, lesions = [], []
    for (method, seed), res in arms.items():
        key = {"task": "detection", "method": method, "protocol": "finetune",
               "label_fraction": fraction, "seed": seed}
        cs = [max([e[1] for e in res[c]], default=0.0) for c in ids]
        scores.append(pd.DataFrame({"case_id": ids, "patient_id": patients, "label": labels, **key, "score": cs}))
        lesions.append(pd.DataFrame([{"case_id": c, **key, "is_lesion": e[0], "confidence": e[1]}
                                     for c in ids for e in res[c]]))
    return pd.concat(scores, ignore_index=True), pd.concat(lesions, ignore_index=True)


def two_arms(rng, n=40):
    """Two arms on the same reference lesions: the better one ranks its hits higher."""
    labels = (rng.random(n) < 0.5).astype(int)
    ref = {}
    arms = {"scratch": {}, "genesis": {}}
    for i in range(n):
        c = f"c{i:02d}"
        n_les = rng.integers(1, 3) if labels[i] else 0
        for method, boost in (("scratch", 0.0), ("genesis", 0.25)):
            e = [(1, float(np.clip(rng.random() * 0.7 + boost, 0, 1)) if rng.random() < 0.8 else 0.0, 0.4)
                 for _ in range(n_les)]
            e += [(0, float(rng.random() * 0.7 + 0.01), 0.0) for _ in range(rng.integers(0, 3))]
            arms[method][c] = e
        ref[c] = n_les
    return labels, arms


def test_paired_ap_delta_is_picai_evals_difference_and_matches_a_slow_loop():
    Metrics = picai_eval().Metrics
    rng = np.random.default_rng(1)
    labels, arms = two_arms(rng)
    n = len(labels)
    patients = [f"p{i // 2}" for i in range(n)]                 # two studies per patient
    scores, lesions = arm_tables({("scratch", 0): arms["scratch"], ("genesis", 0): arms["genesis"]},
                                 labels, patients)
    n_boot, seed = 40, 3
    d = compare.paired_deltas(scores, metric="ap", lesions=lesions, n_boot=n_boot, seed=seed).iloc[0]
    ap = {k: Metrics(lesion_results=v).AP for k, v in arms.items()}
    assert d["method"] == "genesis" and d["delta"] == pytest.approx(ap["genesis"] - ap["scratch"])
    assert d["value"] == pytest.approx(ap["genesis"])

    # the slow way: draw patients, rebuild each arm's case list, picai_eval's AP on it
    ids = sorted(arms["scratch"])
    uniq, gidx = np.unique(patients, return_inverse=True)
    draws = np.random.default_rng(seed).multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)), size=n_boot)
    ms = {k: Metrics(lesion_results=v) for k, v in arms.items()}
    reps = []
    for counts in draws:
        sample = [c for c, g in zip(ids, gidx) for _ in range(counts[g])]
        reps.append(ms["genesis"].calc_AP(subject_list=sample) - ms["scratch"].calc_AP(subject_list=sample))
    lo, hi = np.quantile(reps, [0.025, 0.975])
    assert d["delta_lo"] == pytest.approx(lo) and d["delta_hi"] == pytest.approx(hi)


def test_paired_score_delta_is_the_mean_of_auroc_and_ap_deltas():
    rng = np.random.default_rng(4)
    labels, arms = two_arms(rng)
    patients = [f"p{i}" for i in range(len(labels))]
    scores, lesions = arm_tables({("scratch", 0): arms["scratch"], ("genesis", 0): arms["genesis"]},
                                 labels, patients)
    kw = dict(lesions=lesions, n_boot=50)
    auc = compare.paired_deltas(scores, metric="auroc", n_boot=50).iloc[0]
    ap = compare.paired_deltas(scores, metric="ap", **kw).iloc[0]
    sc = compare.paired_deltas(scores, metric="score", **kw).iloc[0]
    assert sc["delta"] == pytest.approx((auc["delta"] + ap["delta"]) / 2)


def test_lesion_metrics_need_consistent_lesion_results():
    rng = np.random.default_rng(5)
    labels, arms = two_arms(rng)
    patients = [f"p{i}" for i in range(len(labels))]
    scores, lesions = arm_tables({("scratch", 0): arms["scratch"], ("genesis", 0): arms["genesis"]},
                                 labels, patients)
    with pytest.raises(ValueError, match="lesions="):
        compare.paired_deltas(scores, metric="ap")
    extra = lesions.iloc[[0]].assign(method="genesis", is_lesion=1, confidence=0.0, case_id="c05")
    bad = pd.concat([lesions, extra], ignore_index=True)
    with pytest.raises(ValueError, match="disagree on the reference lesions"):
        compare.paired_deltas(scores, metric="ap", lesions=bad, n_boot=10)
