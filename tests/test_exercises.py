"""Exercise checks (prostate_course.exercises): each passes the right answer, fails a plausible
wrong one with WrongAnswer, and reports UNANSWERED (returning the reference answer).

Every ``check_*`` function of every ``prostate_course/exercises/nbNN.py`` must have a case in
CASES: a new exercise without a wrong-answer test fails test_every_check_has_a_case.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

import prostate_course as pc
from prostate_course import exercises
from prostate_course.exercises import UNANSWERED, WrongAnswer, nb00, nb01
from test_exercises_nb02 import CASES as NB02_CASES
from test_exercises_nb03 import CASES as NB03_CASES
from test_exercises_nb04 import CASES as NB04_CASES
from test_exercises_nb05 import CASES as NB05_CASES
from test_exercises_nb06 import CASES as NB06_CASES


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def oblique_image():
    img = sitk.Image(6, 7, 4, sitk.sitkInt16)
    a = np.radians(20.0)
    img.SetDirection((np.cos(a), 0, np.sin(a), 0, 1, 0, -np.sin(a), 0, np.cos(a)))  # about y
    img.SetSpacing((0.5, 0.7, 3.0))
    img.SetOrigin((10.0, -20.0, 30.0))
    return img


@pytest.fixture(scope="module")
def cohort():
    from prostate_course.data.synthetic import simulate_clinical

    return simulate_clinical(800, seed=3)


@pytest.fixture(scope="module")
def small_cohort():
    from prostate_course.data.synthetic import simulate_clinical

    return simulate_clinical(40, seed=0)


# ----------------------------------------------------------------------- exercise 1 (00)
def _affine_answer(index, origin, spacing, direction):
    """Right, written differently: a 4x4 homogeneous affine, as nibabel would."""
    A = np.eye(4)
    A[:3, :3] = np.asarray(direction) * np.asarray(spacing)[None, :]
    A[:3, 3] = origin
    return (A @ np.r_[np.asarray(index, float), 1.0])[:3]


WRONG_VOXEL = {
    "direction ignored": lambda i, o, s, d: np.asarray(o) + np.asarray(s) * np.asarray(i),
    "direction transposed": lambda i, o, s, d: np.asarray(o) + np.asarray(d).T @ (np.asarray(s) * np.asarray(i)),
    "scaled after rotating": lambda i, o, s, d: np.asarray(o) + (np.asarray(d) @ np.asarray(i)) * np.asarray(s),
}


def case_voxel_to_world(oblique_image, **_):
    got = nb00.check_voxel_to_world(_affine_answer, oblique_image)
    assert got is _affine_answer
    for name, fn in WRONG_VOXEL.items():
        with pytest.raises(WrongAnswer, match="Exercise 1"):
            nb00.check_voxel_to_world(fn, oblique_image)
    # the check has its own oblique image: a wrong answer fails even with an axis-aligned case
    plain = sitk.Image(5, 5, 5, sitk.sitkUInt8)
    with pytest.raises(WrongAnswer):
        nb00.check_voxel_to_world(WRONG_VOXEL["direction ignored"], plain)
    with pytest.raises(WrongAnswer, match="raised ZeroDivisionError"):
        nb00.check_voxel_to_world(lambda i, o, s, d: 1 / 0, oblique_image)
    return nb00.check_voxel_to_world, (oblique_image,), [UNANSWERED], \
        lambda ref: np.allclose(ref((1, 2, 3), oblique_image.GetOrigin(), oblique_image.GetSpacing(),
                                    np.reshape(oblique_image.GetDirection(), (3, 3))),
                                oblique_image.TransformIndexToPhysicalPoint((1, 2, 3)))


# ----------------------------------------------------------------------- exercise 2 (00)
def _rates_by_hand(df: pd.DataFrame) -> tuple[float, float]:
    """Independent of the package: parse the marksheet strings here."""
    def case_max(cell):
        vals = [int(t) for t in cell.split(",") if t.strip() not in ("", "N/A")]
        return max(vals) if vals else np.nan

    low = df["lesion_PIRADS"].map(case_max) <= 2
    return float((df.loc[low, "case_csPCa"] == "YES").mean()), float(df.loc[low, "gt_csPCa"].mean())


def case_verification_bias(cohort, **_):
    rec, true = _rates_by_hand(cohort)
    assert true > rec  # the premise of the exercise holds in this cohort
    out = nb00.check_verification_bias(rec, true, "B", cohort)
    assert out == (rec, true, "B")
    assert nb00.check_verification_bias(rec, true, " b ", cohort)[2] == "B"
    wrong = {
        "all cases, not PI-RADS 1-2": ((cohort["case_csPCa"] == "YES").mean(), true, "B"),
        "a percentage": (100 * rec, 100 * true, "B"),
        "truth and record swapped": (true, rec, "B"),
        "MRI rules cancer out": (rec, true, "A"),
        "biopsies overstate": (rec, true, "C"),
        "not a letter": (rec, true, "yes"),
    }
    for name, args in wrong.items():
        with pytest.raises(WrongAnswer, match="Exercise 2"):
            nb00.check_verification_bias(*args, cohort)
    return nb00.check_verification_bias, (cohort,), [UNANSWERED, UNANSWERED, UNANSWERED], \
        lambda ref: ref == (rec, true, "B")


# ----------------------------------------------------------------------- exercise 3 (00)
def case_annotation_experiment(small_cohort, **_):
    from prostate_course.data.synthetic import SynthParams, annotation_agreement

    kw = dict(cohort=small_cohort, seed=0, n_cases=30)
    base = annotation_agreement(small_cohort, 0, n_cases=30, structures=("lesion",))["dice"].mean()
    high = annotation_agreement(small_cohort, 0, SynthParams(lesion_contrast=1.2), n_cases=30,
                                structures=("lesion",))["dice"].mean()
    assert high > base + nb00.SAME_WITHIN          # what the right observation is, by hand
    assert nb00.check_annotation_experiment("lower", high, "higher", **kw) == ("lower", high, "higher")
    wrong = {
        "observation contradicts the numbers": ("higher", high, "lower"),
        "ran the default contrast": ("higher", base, "higher"),
        "not one of the words": ("up", high, "higher"),
        "no number": ("higher", None, "higher"),
    }
    for name, args in wrong.items():
        with pytest.raises(WrongAnswer, match="Exercise 3"):
            nb00.check_annotation_experiment(*args, **kw)
    return (lambda *a: nb00.check_annotation_experiment(*a, **kw)), (), [UNANSWERED, high, "higher"], \
        lambda ref: ref == ("higher", pytest.approx(high), "higher")


# ----------------------------------------------------------------------- notebook 01
@pytest.fixture(scope="module")
def photo():
    return np.random.default_rng(2).random((12, 10, 3))


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def case_imagenet_normalisation(photo, **_):
    right = (photo - np.array(MEAN)) / np.array(STD)
    assert nb01.check_imagenet_normalisation(right, photo, MEAN, STD) is right
    wrong = {
        "green constants for every channel": (photo - MEAN[1]) / STD[1],
        "divided before subtracting": photo / np.array(STD) - np.array(MEAN),
        "channels first": right.transpose(2, 0, 1),
        "a per-image z-score": (photo - photo.mean((0, 1))) / photo.std((0, 1)),
    }
    for name, ans in wrong.items():
        with pytest.raises(WrongAnswer, match="Exercise 1"):
            nb01.check_imagenet_normalisation(ans, photo, MEAN, STD)
    return nb01.check_imagenet_normalisation, (photo, MEAN, STD), [UNANSWERED], \
        lambda ref: np.allclose(ref, right)


def case_auroc_by_pairs(**_):
    from sklearn.metrics import roc_auc_score

    def right(y, s):
        y, s = np.asarray(y), np.asarray(s)
        return np.mean([(a > b) + 0.5 * (a == b) for a in s[y == 1] for b in s[y == 0]])

    assert nb01.check_auroc_by_pairs(right) is right
    wrong = {
        "ties count 0": lambda y, s: float((np.asarray(s)[np.asarray(y) == 1][:, None]
                                            > np.asarray(s)[np.asarray(y) == 0][None, :]).mean()),
        "accuracy at 0.5": lambda y, s: float(((np.asarray(s) > 0.5) == np.asarray(y)).mean()),
        "labels and scores swapped": lambda y, s: roc_auc_score(s > 0.5, y),
    }
    for name, fn in wrong.items():
        with pytest.raises(WrongAnswer, match="Exercise 2"):
            nb01.check_auroc_by_pairs(fn)
    y, s = nb01._tie_rich(0)
    return nb01.check_auroc_by_pairs, (), [UNANSWERED], \
        lambda ref: np.isclose(ref(y, s), roc_auc_score(y, s))


def case_patient_max(**_):
    def right(p, ci, n):
        out = np.full(n, -np.inf)
        np.maximum.at(out, np.asarray(ci), np.asarray(p))
        return out

    assert nb01.check_patient_max(right) is right
    wrong = {
        "max starts at 0": lambda p, ci, n: np.array([max([0.0] + [v for v, c in zip(p, ci) if c == k])
                                                      for k in range(n)]),
        "mean instead of max": lambda p, ci, n: np.array([np.mean([v for v, c in zip(p, ci) if c == k]) for k in range(n)]),
        "one score per slice": lambda p, ci, n: np.asarray(p),
    }
    for name, fn in wrong.items():
        with pytest.raises(WrongAnswer, match="Exercise 3"):
            nb01.check_patient_max(fn)
    return nb01.check_patient_max, (), [UNANSWERED], \
        lambda ref: np.allclose(ref([0.2, -1.0, 0.7], [0, 1, 0], 2), [0.7, -1.0])


@pytest.fixture(scope="module")
def paired_scores():
    """Fine-tuned scratch and a linear probe that share each case's difficulty."""
    rng = np.random.default_rng(0)
    n = 120
    y = (rng.random(n) < 0.35).astype(int)
    hard = 1.5 * rng.standard_normal(n)
    rows = []
    for protocol, noise in (("finetune", 0.3), ("linear_probe", 0.3)):
        s = y + hard + noise * rng.standard_normal(n)
        rows.append(pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                                  "label": y, "task": "classification", "method": "scratch",
                                  "protocol": protocol, "label_fraction": 0.05, "seed": 0, "score": s}))
    return pd.concat(rows, ignore_index=True)


def case_pairing_experiment(paired_scores, **_):
    paired, unpaired = nb01.pairing_half_widths(paired_scores, 0.05, 300)
    assert unpaired > paired + nb01.SAME_WITHIN          # correlated arms: pairing narrows it
    kw = dict(scores=paired_scores, fraction=0.05, n_boot=300)
    assert nb01.check_pairing_experiment("narrower", unpaired, "wider", **kw)[1] == pytest.approx(unpaired)
    wrong = {
        "read the paired half-width": ("wider", paired, "wider"),
        "observation against the numbers": ("wider", unpaired, "narrower"),
        "not one of the words": ("wider", unpaired, "bigger"),
        "no number": ("wider", "wide", "wider"),
    }
    for name, args in wrong.items():
        with pytest.raises(WrongAnswer, match="Exercise 4"):
            nb01.check_pairing_experiment(*args, **kw)
    return (lambda *a: nb01.check_pairing_experiment(*a, **kw)), (), [UNANSWERED, UNANSWERED, UNANSWERED], \
        lambda ref: ref == ("wider", pytest.approx(unpaired), "wider")


CASES = {
    nb00.check_voxel_to_world: case_voxel_to_world,
    nb00.check_verification_bias: case_verification_bias,
    nb00.check_annotation_experiment: case_annotation_experiment,
    nb01.check_imagenet_normalisation: case_imagenet_normalisation,
    nb01.check_auroc_by_pairs: case_auroc_by_pairs,
    nb01.check_patient_max: case_patient_max,
    nb01.check_pairing_experiment: case_pairing_experiment,
}
for more in (NB02_CASES, NB03_CASES, NB04_CASES, NB05_CASES, NB06_CASES):
    CASES.update(more)


@pytest.mark.parametrize("check", list(CASES), ids=[f"{c.__module__.rsplit('.', 1)[-1]}.{c.__name__}" for c in CASES])
def test_check_passes_right_fails_wrong_and_reports_unanswered(check, capsys, request):
    case = CASES[check]
    fixtures = {name: request.getfixturevalue(name) for name in inspect.signature(case).parameters
                if name != "_"}
    fn, data, stub_args, is_reference = case(**fixtures)
    assert "correct:" in capsys.readouterr().out
    ref = fn(*stub_args, *data)
    out = capsys.readouterr().out
    assert out.startswith("unanswered:"), out
    assert is_reference(ref)


def test_every_check_has_a_case():
    found = set()
    for mod in pkgutil.iter_modules(exercises.__path__):
        if mod.name.startswith("nb"):
            m = importlib.import_module(f"prostate_course.exercises.{mod.name}")
            found |= {f for n, f in inspect.getmembers(m, inspect.isfunction)
                      if n.startswith("check_") and f.__module__ == m.__name__}
    missing = sorted(f"{f.__module__}.{f.__name__}" for f in found - set(CASES))
    assert not missing, f"checks without a wrong-answer test in tests/test_exercises.py: {missing}"


def test_a_stub_function_counts_as_unanswered(oblique_image, capsys):
    def voxel_to_world(index, origin, spacing, direction):
        return pc.exercises.UNANSWERED

    ref = nb00.check_voxel_to_world(voxel_to_world, oblique_image)
    assert ref is nb00.voxel_to_world_reference and "unanswered" in capsys.readouterr().out


def test_unanswered_is_a_singleton_that_survives_copying():
    import copy
    import pickle

    assert copy.deepcopy(UNANSWERED) is UNANSWERED and pickle.loads(pickle.dumps(UNANSWERED)) is UNANSWERED
    assert repr(UNANSWERED) == "UNANSWERED" and pc.exercises.UNANSWERED is UNANSWERED
    assert issubclass(WrongAnswer, AssertionError)
