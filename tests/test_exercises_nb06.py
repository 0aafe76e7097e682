"""Every check of notebook 06 rejects a plausible wrong answer and accepts the right one."""
import numpy as np
import pytest

from prostate_course.exercises import nb06
from prostate_course.exercises import UNANSWERED, WrongAnswer


def bonferroni(p):
    return np.minimum(1, len(p) * np.asarray(p))


def holm(p):
    p = np.asarray(p, float)
    order = np.argsort(p)
    adj = np.maximum.accumulate(np.minimum(1, (len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(adj)
    out[order] = adj
    return out


def test_check_holm():
    with pytest.raises(WrongAnswer, match="Bonferroni"):
        nb06.check_holm(bonferroni)
    assert nb06.check_holm(holm) is holm


def test_check_family_error():
    with pytest.raises(WrongAnswer, match="expected NUMBER"):
        nb06.check_family_error(0.05 * 12, 12)
    assert nb06.check_family_error(1 - 0.95 ** 12, 12) == pytest.approx(0.4596, abs=1e-4)


# cases for tests/test_exercises.py: case(**fixtures) -> (check, data, stub_args, is_reference)
def case_holm(**_):
    with pytest.raises(WrongAnswer, match="Bonferroni"):
        nb06.check_holm(bonferroni)
    nb06.check_holm(holm)
    p = np.array([0.04, 0.01, 0.03])                       # Holm by hand: 0.06, 0.03, 0.06 (sorted 3p, 2p, p, running max)
    return nb06.check_holm, (), [UNANSWERED], lambda ref: np.allclose(ref(p), [0.06, 0.03, 0.06])


def case_family_error(**_):
    with pytest.raises(WrongAnswer, match="expected NUMBER"):
        nb06.check_family_error(0.05 * 3, 3)
    nb06.check_family_error(1 - 0.95 ** 3, 3)
    return nb06.check_family_error, (3,), [UNANSWERED], lambda ref: ref == pytest.approx(0.142625)


CASES = {
    nb06.check_holm: case_holm,
    nb06.check_family_error: case_family_error,
}
