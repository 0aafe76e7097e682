"""Every check of notebook 05 rejects a plausible wrong answer and accepts the right one."""
import functools

import numpy as np
import pytest

from prostate_course.detection.evaluate import evaluate_detection
from prostate_course.exercises import nb05
from prostate_course.exercises import UNANSWERED, WrongAnswer


def right_iou(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return (a & b).sum() / max((a | b).sum(), 1)


def dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return (a & b).sum() / (a.sum() + b.sum())


def test_check_iou():
    with pytest.raises(WrongAnswer, match="half the Dice"):
        nb05.check_iou(dice)
    assert nb05.check_iou(right_iou) is right_iou


@functools.lru_cache(maxsize=1)
def _small_eval():
    rng = np.random.default_rng(0)
    refs, probs = [], []
    for i in range(6):
        r = np.zeros((6, 20, 20), np.uint8)
        p = 0.02 * rng.random((6, 20, 20)).astype(np.float32)
        if i % 2 == 0:
            r[2:4, 4 + i:10 + i, 5:11] = 2
            p[2:4, 7 + i:13 + i, 5:11] += 0.4 + 0.1 * i              # shifted by half the lesion: IoU 1/3
        p[1, 15:19, 14:18] += 0.3 + 0.05 * i                          # false positives
        refs.append(r)
        probs.append(np.clip(p, 0, 1))
    ids = [f"c{i}" for i in range(6)]
    return probs, refs, ids, evaluate_detection(probs, refs, ids, candidates={"min_voxels": 3})


@pytest.fixture(scope="module")
def small_eval():
    return _small_eval()


def right_froc(lesions, n_cases, t):
    on = lesions.confidence >= t
    sens = ((lesions.is_lesion == 1) & on).sum() / (lesions.is_lesion == 1).sum()
    return sens, ((lesions.is_lesion == 0) & on).sum() / n_cases


def froc_per_case_with_candidates(lesions, n_cases, t):
    on = lesions.confidence >= t
    sens = ((lesions.is_lesion == 1) & on).sum() / (lesions.is_lesion == 1).sum()
    return sens, ((lesions.is_lesion == 0) & on).sum() / lesions.case_id.nunique() * 0.9


def test_check_froc_point(small_eval):
    *_, ev = small_eval
    with pytest.raises(WrongAnswer, match="false positives per case"):
        nb05.check_froc_point(froc_per_case_with_candidates, ev)
    assert nb05.check_froc_point(right_froc, ev) is right_froc


def test_check_overlap_experiment(small_eval):
    probs, refs, ids, ev = small_eval
    kw = {"min_voxels": 3}
    want = {k: evaluate_detection(probs, refs, ids, min_overlap=k, candidates=kw).summary()["ap"]
            for k in (0.1, 0.3, 0.6)}
    with pytest.raises(WrongAnswer, match="min_overlap"):
        nb05.check_overlap_experiment({k: want[0.1] for k in want}, probs, refs, ids, kw)
    assert want[0.6] < want[0.1]                         # the crafted shift: stricter rules cost AP
    got = nb05.check_overlap_experiment(dict(want), probs, refs, ids, kw)
    assert got == pytest.approx(want)


# cases for tests/test_exercises.py: case(**fixtures) -> (check, data, stub_args, is_reference)
def case_iou(**_):
    with pytest.raises(WrongAnswer, match="half the Dice"):
        nb05.check_iou(dice)
    assert nb05.check_iou(right_iou) is right_iou
    a = np.zeros((3, 8, 8), bool)
    a[1, 2:6, 2:6] = True
    b = np.zeros_like(a)
    b[1, 2:6, 4:8] = True                                     # 8 shared of 24 pixels: IoU 1/3
    return nb05.check_iou, (), [UNANSWERED], lambda ref: ref(a, b) == pytest.approx(1 / 3)


def case_froc_point(**_):
    *_, ev = _small_eval()
    with pytest.raises(WrongAnswer, match="false positives per case"):
        nb05.check_froc_point(froc_per_case_with_candidates, ev)
    nb05.check_froc_point(right_froc, ev)
    n = len(ev.case_ids)
    return nb05.check_froc_point, (ev,), [UNANSWERED], \
        lambda ref: all(np.allclose(ref(ev.lesions, n, t), right_froc(ev.lesions, n, t)) for t in (0.05, 0.3, 0.6))


def case_overlap_experiment(**_):
    probs, refs, ids, _ev = _small_eval()
    kw = {"min_voxels": 3}
    want = {k: evaluate_detection(probs, refs, ids, min_overlap=k, candidates=kw).summary()["ap"]
            for k in (0.1, 0.3, 0.5)}
    with pytest.raises(WrongAnswer, match="min_overlap"):
        nb05.check_overlap_experiment({k: want[0.1] for k in want}, probs, refs, ids, kw)
    nb05.check_overlap_experiment(dict(want), probs, refs, ids, kw)
    return nb05.check_overlap_experiment, (probs, refs, ids, kw), [UNANSWERED], \
        lambda ref: ref == pytest.approx(want)


CASES = {
    nb05.check_iou: case_iou,
    nb05.check_froc_point: case_froc_point,
    nb05.check_overlap_experiment: case_overlap_experiment,
}
