"""Checks of notebook 00 (bpMRI primer).

1. :func:`check_voxel_to_world`: implement x_mm = o + D diag(s) (i, j, k) (formula).
2. :func:`check_verification_bias`: recorded vs true csPCa rate at PI-RADS 1-2 and what it
   means (interpretation, tested against the numbers computed from the cohort).
3. :func:`check_annotation_experiment`: raise the lesion contrast, predict, measure the
   annotators' lesion Dice, compare (experiment).
"""
from __future__ import annotations

import numpy as np

from . import UNANSWERED, call_answer, correct, is_unanswered, number, one_of, unanswered, wrong

EX1 = "Exercise 1 (voxel -> world)"
EX2 = "Exercise 2 (verification bias)"
EX3 = "Exercise 3 (annotation experiment)"

#: Exercise 2: the statements the student chooses from.
VERIFICATION_CHOICES = {
    "A": "PI-RADS 1-2 rules csPCa out: the recorded rate is the true rate.",
    "B": "The recorded rate understates the truth: most PI-RADS 1-2 men were never biopsied, "
         "and PI-CAI counts them as negative.",
    "C": "The recorded rate overstates the truth: biopsies at PI-RADS 1-2 find cancers that are "
         "not there.",
}
#: Exercise 3: the possible effects (for the prediction and for the observation).
EFFECTS = ("higher", "lower", "about the same")
SAME_WITHIN = 0.02   # Dice difference below which "about the same" is the right observation


# ------------------------------------------------------------------------------ exercise 1
def voxel_to_world_reference(index, origin, spacing, direction) -> np.ndarray:
    """x = o + D diag(s) (i, j, k): origin o, direction cosines D (columns = array axes)."""
    D = np.asarray(direction, float).reshape(3, 3)
    return np.asarray(origin, float) + D @ (np.asarray(spacing, float) * np.asarray(index, float))


def _test_images(image=None) -> list:
    """The case's T2W (if any) and a crafted image: rotated about two axes, anisotropic."""
    import SimpleITK as sitk

    crafted = sitk.Image(8, 9, 5, sitk.sitkUInt8)
    a, b = np.radians(30.0), np.radians(12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    crafted.SetDirection(tuple((rz @ rx).ravel()))
    crafted.SetSpacing((0.45, 0.6, 3.3))
    crafted.SetOrigin((-12.5, 40.0, -71.0))
    return ([image] if image is not None else []) + [crafted]


def check_voxel_to_world(answer, image=None):
    """``answer(index, origin, spacing, direction)`` -> world point (mm) of a voxel index.

    Compared with SimpleITK's ``TransformIndexToPhysicalPoint`` on the case's T2W ``image`` and
    on a crafted oblique, anisotropic image (so forgetting the direction, transposing it or
    scaling after rotating all fail). Returns the function to use afterwards.
    """
    if is_unanswered(answer):
        return unanswered(EX1, voxel_to_world_reference)
    for img in _test_images(image):
        D = np.reshape(img.GetDirection(), (3, 3))
        size = img.GetSize()
        for idx in [(0, 0, 0), (size[0] - 1, 0, 0), (1, size[1] - 1, 2), (size[0] // 2, 3, size[2] - 1)]:
            got = call_answer(EX1, answer, idx, img.GetOrigin(), img.GetSpacing(), D)
            if is_unanswered(got):
                return unanswered(EX1, voxel_to_world_reference)
            want = np.array(img.TransformIndexToPhysicalPoint(tuple(int(v) for v in idx)))
            got = np.asarray(got, float).ravel()
            if got.shape != (3,):
                raise wrong(EX1, f"return one point of 3 coordinates (x, y, z), got shape {got.shape}")
            if not np.allclose(got, want, atol=1e-3):
                hint = ("each column of D is where one array axis points: multiply D by the "
                        "spacing-scaled index, D @ (s * ijk)")
                raise wrong(EX1, f"index {idx} of a {img.GetSize()} image: you give "
                                 f"{np.round(got, 2).tolist()} mm, SimpleITK {np.round(want, 2).tolist()} mm; {hint}")
    correct(EX1, "your formula matches SimpleITK on the case and on an oblique test image")
    return answer


# ------------------------------------------------------------------------------ exercise 2
def verification_rates(cohort) -> tuple[float, float]:
    """(recorded, true) csPCa rate among cases whose routine case PI-RADS is 1 or 2."""
    from ..data.readers import case_pirads

    pir = cohort["lesion_PIRADS"].map(case_pirads)
    low = pir <= 2
    recorded = float((cohort.loc[low, "case_csPCa"] == "YES").mean())
    true = float(cohort.loc[low, "gt_csPCa"].astype(int).mean())
    return recorded, true


def _expected_choice(recorded: float, true: float) -> str:
    if abs(true - recorded) < 1e-9:
        return "A"
    return "B" if true > recorded else "C"


def check_verification_bias(recorded_rate, true_rate, conclusion, cohort):
    """Recorded and true csPCa rates at PI-RADS 1-2 (fractions) and the conclusion (A, B, C).

    ``cohort``: a :func:`prostate_course.data.synthetic.simulate_clinical` table (it has the
    truth, ``gt_csPCa``). The rates must match the cohort within 0.005; the conclusion must be
    the one the numbers support. Returns (recorded, true, conclusion) for the cells after it.
    """
    recorded, true = verification_rates(cohort)
    ref = (recorded, true, _expected_choice(recorded, true))
    if any(is_unanswered(a) for a in (recorded_rate, true_rate, conclusion)):
        return unanswered(EX2, ref)
    for name, got, want in (("recorded_rate", recorded_rate, recorded), ("true_rate", true_rate, true)):
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise wrong(EX2, f"{name} must be a number (a fraction between 0 and 1), got {got!r}") from None
        if got > 1:
            raise wrong(EX2, f"{name} = {got}: give a fraction (0.05), not a percentage (5)")
        if abs(got - want) > 0.005:
            raise wrong(EX2, f"{name} = {got:.4f} does not match the cohort. Restrict to cases whose "
                             f"case PI-RADS (highest lesion_PIRADS) is 1 or 2, then take the share with "
                             f"{'case_csPCa == YES' if name == 'recorded_rate' else 'gt_csPCa == 1'}.")
    choice = str(conclusion).strip().upper()[:1]
    if choice not in VERIFICATION_CHOICES:
        raise wrong(EX2, f"conclusion must be one of {sorted(VERIFICATION_CHOICES)}, got {conclusion!r}")
    if choice != ref[2]:
        raise wrong(EX2, f"the numbers you computed (recorded {recorded:.1%}, true {true:.1%}) do not "
                         f"support {choice!r}. Who gets a biopsy at PI-RADS 1-2, and what does PI-CAI "
                         f"record for the others?")
    correct(EX2, f"recorded {recorded:.1%} vs true {true:.1%}: {VERIFICATION_CHOICES[choice]}")
    return float(recorded_rate), float(true_rate), choice


# ------------------------------------------------------------------------------ exercise 3
def lesion_dice(cohort, seed: int, lesion_contrast: float, n_cases: int, params=None) -> float:
    """Mean pairwise lesion Dice of the simulated annotators at ``lesion_contrast``."""
    import dataclasses

    from ..data.synthetic import SynthParams, annotation_agreement

    p = dataclasses.replace(params or SynthParams(), lesion_contrast=float(lesion_contrast))
    d = annotation_agreement(cohort, seed, p, n_cases=n_cases, structures=("lesion",))
    return float(d["dice"].mean())


def _effect(diff: float) -> str:
    return "about the same" if abs(diff) < SAME_WITHIN else ("higher" if diff > 0 else "lower")


def check_annotation_experiment(prediction, dice_high_contrast, observed, cohort, seed: int,
                                n_cases: int, high_contrast: float = 1.2, params=None):
    """The experiment: lesion Dice at ``lesion_contrast`` = ``high_contrast`` vs the default.

    ``prediction`` (one of :data:`EFFECTS`) is recorded, not graded: a wrong prediction is how
    one learns. ``dice_high_contrast`` must match the check's own run within 0.005, and
    ``observed`` must describe the measured change. Returns (prediction, dice_high_contrast,
    observed) for the cells after it.
    """
    from ..data.synthetic import SynthParams

    p = params or SynthParams()
    base = lesion_dice(cohort, seed, p.lesion_contrast, n_cases, p)
    high = lesion_dice(cohort, seed, high_contrast, n_cases, p)
    seen = _effect(high - base)
    if any(is_unanswered(a) for a in (prediction, dice_high_contrast, observed)):
        return unanswered(EX3, (seen, high, seen))
    one_of(EX3, {"prediction": prediction, "observed": observed}, EFFECTS)
    got = number(EX3, "dice_high_contrast", dice_high_contrast)
    if abs(got - high) > 0.005:
        raise wrong(EX3, f"dice_high_contrast = {got:.3f}, but the run with lesion_contrast={high_contrast} "
                         f"gives {high:.3f}: take the mean of the 'dice' column of the lesion rows")
    if str(observed).strip().lower() != seen:
        raise wrong(EX3, f"you observed {observed!r}, but the Dice went from {base:.3f} to {high:.3f} "
                         f"({high - base:+.3f}): that is {seen!r}")
    verdict = "as you predicted" if str(prediction).strip().lower() == seen else f"you predicted {prediction!r}"
    correct(EX3, f"lesion Dice {base:.2f} -> {high:.2f} ({seen}; {verdict})")
    return str(prediction).strip().lower(), got, seen


__all__ = ["check_voxel_to_world", "check_verification_bias", "check_annotation_experiment",
           "voxel_to_world_reference", "verification_rates", "lesion_dice", "VERIFICATION_CHOICES",
           "EFFECTS", "UNANSWERED"]
