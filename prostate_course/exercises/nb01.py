"""Checks of notebook 01 (supervised transfer learning).

1. :func:`check_imagenet_normalisation`: (x - mean_c) / std_c, each channel with its own
   constants (formula).
2. :func:`check_auroc_by_pairs`: AUROC as the share of (positive, negative) pairs ranked right,
   ties counting one half (formula).
3. :func:`check_patient_max`: the patient score is the max over its slices (formula).
4. :func:`check_pairing_experiment`: resample the two arms' patients independently, predict and
   observe what happens to the interval of their difference (experiment).
"""
from __future__ import annotations

import numpy as np

from . import call_answer, correct, is_unanswered, number, one_of, unanswered, wrong

EX1 = "Exercise 1 (ImageNet normalisation)"
EX2 = "Exercise 2 (AUROC by counting pairs)"
EX3 = "Exercise 3 (the patient score)"
EX4 = "Exercise 4 (does pairing matter?)"

#: the possible observations of exercise 4
WIDTH_EFFECTS = ("wider", "narrower", "about the same")
SAME_WITHIN = 0.005   # half-width difference (AUROC points) below which "about the same" is right


# ------------------------------------------------------------------------------ exercise 1
def imagenet_normalised(photo, mean, std) -> np.ndarray:
    return (np.asarray(photo, float) - np.asarray(mean, float)) / np.asarray(std, float)


def check_imagenet_normalisation(answer, photo, mean, std):
    """Every channel compared with its own (x - mean_c) / std_c: normalising all three with the
    green channel's constants, or dividing before subtracting, fails."""
    ref = imagenet_normalised(photo, mean, std)
    if is_unanswered(answer):
        return unanswered(EX1, ref)
    a = np.asarray(answer, float)
    if a.shape != ref.shape:
        raise wrong(EX1, f"keep the (H, W, 3) shape of the photo, got {a.shape}")
    for c, name in enumerate("RGB"):
        if not np.allclose(a[..., c], ref[..., c], rtol=1e-4, atol=1e-5):
            raise wrong(EX1, f"channel {name} is off: each channel uses its own mean and std "
                             f"(mean {mean[c]}, std {std[c]}), subtract first, then divide")
    m, s = ref.reshape(-1, 3).mean(0), ref.reshape(-1, 3).std(0)
    correct(EX1, f"channel means {np.round(m, 2).tolist()}, stds {np.round(s, 2).tolist()}: not "
                 "0 and 1 - ImageNet's constants fit the average photo, not this one")
    return answer


# ------------------------------------------------------------------------------ exercise 2
def _tie_rich(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(rng.random(n) + 0.4 * y, 1)       # rounding makes many ties


def check_auroc_by_pairs(fn):
    """``fn(y, s)`` against scikit-learn on scores with many ties (forgetting the half for
    ties, or counting pairs within one class, fails)."""
    from sklearn.metrics import roc_auc_score

    if is_unanswered(fn):
        return unanswered(EX2, _auroc_reference)
    for seed in (0, 1):
        y, s = _tie_rich(seed)
        got = call_answer(EX2, fn, y, s)
        if is_unanswered(got):
            return unanswered(EX2, _auroc_reference)
        want = roc_auc_score(y, s)
        if not np.isclose(float(got), want, atol=1e-9):
            raise wrong(EX2, f"you give {float(got):.4f}, the AUROC is {want:.4f}; compare every "
                             "positive with every negative, and count a tie as one half")
    correct(EX2, f"{want:.4f}, as scikit-learn")
    return fn


def _auroc_reference(y, s):
    y, s = np.asarray(y).astype(bool), np.asarray(s, float)
    pos, neg = s[y][:, None], s[~y][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


# ------------------------------------------------------------------------------ exercise 3
def _patient_max_reference(p, case_index, n_cases):
    from ..evaluate import case_scores

    return case_scores(p, case_index, n_cases)


def check_patient_max(fn):
    """``fn(p, case_index, n_cases)`` -> one score per case, the max over its slices; tested
    with negative scores too (starting from 0 instead of -inf fails) and unsorted cases."""
    if is_unanswered(fn):
        return unanswered(EX3, _patient_max_reference)
    rng = np.random.default_rng(5)
    p = rng.random(50) - 0.5                 # negative scores: a max that starts at 0 is wrong
    ci = rng.permutation(np.repeat(np.arange(7), [9, 6, 8, 5, 7, 8, 7]))
    p[ci == 3] = -np.abs(p[ci == 3]) - 0.1   # one case with only negative scores
    got = call_answer(EX3, fn, p, ci, 7)
    if is_unanswered(got):
        return unanswered(EX3, _patient_max_reference)
    want = _patient_max_reference(p, ci, 7)
    got = np.asarray(got, float).ravel()
    if got.shape != want.shape:
        raise wrong(EX3, f"one score per case: expected {want.shape[0]} values, got {got.shape[0]}")
    if not np.allclose(got, want):
        raise wrong(EX3, "each case's score is the maximum of ITS slices' scores (scores can be "
                         "negative logits: start from -inf, not 0)")
    correct(EX3)
    return fn


# ------------------------------------------------------------------------------ exercise 4
def pairing_half_widths(scores, fraction: float, n_boot: int, method="scratch",
                        protocol="linear_probe") -> tuple[float, float]:
    """(paired, unpaired) half-width of the 95 % interval of ``method``/``protocol`` minus
    fine-tuned scratch at ``fraction``."""
    from ..compare import paired_deltas

    frac = np.isclose(scores["label_fraction"].astype(float), float(fraction))
    arms = (((scores.method == method) & (scores.protocol == protocol))
            | ((scores.method == "scratch") & (scores.protocol == "finetune")))
    scores = scores[frac & arms]                 # the two arms at this budget: nothing else to resample
    out = []
    for paired in (True, False):
        d = paired_deltas(scores, reference=("scratch", "finetune"), n_boot=n_boot, paired=paired)
        row = d[(d.method == method) & (d.protocol == protocol) & np.isclose(d.label_fraction, fraction)]
        if row.empty:
            raise ValueError(f"no {method}/{protocol} row at {fraction} in these scores")
        out.append(float(row["half_width"].iloc[0]))
    return out[0], out[1]


def check_pairing_experiment(prediction, unpaired_half_width, observed, scores, fraction, n_boot):
    """The student predicted, ran ``paired_deltas(..., paired=False)`` and read the linear
    probe's half-width at ``fraction``; the observation must agree with the numbers (the
    prediction is recorded, not graded). Returns (prediction, unpaired half-width, observed)."""
    paired, unpaired = pairing_half_widths(scores, fraction, n_boot)
    truth = ("about the same" if abs(unpaired - paired) < SAME_WITHIN
             else "wider" if unpaired > paired else "narrower")
    if is_unanswered(prediction) or is_unanswered(unpaired_half_width) or is_unanswered(observed):
        return unanswered(EX4, (truth, unpaired, truth))
    one_of(EX4, {"prediction": prediction, "observed": observed}, WIDTH_EFFECTS)
    u = number(EX4, "unpaired_half_width", unpaired_half_width)
    if not np.isclose(u, unpaired, atol=1e-6):
        hint = (" - that is the paired one: pass paired=False" if np.isclose(u, paired, atol=1e-6)
                else f" (use n_boot={n_boot} and the row at {fraction:.0%})")
        raise wrong(EX4, f"the unpaired half-width at {fraction:.0%} is {unpaired:.3f}, you give {u:.3f}{hint}")
    obs = str(observed).strip().lower()
    if obs != truth:
        raise wrong(EX4, f"paired half-width {paired:.3f}, unpaired {unpaired:.3f}: the unpaired "
                         f"interval is {truth}, not {obs}")
    pred = str(prediction).strip().lower()
    correct(EX4, f"paired {paired:.3f} vs unpaired {unpaired:.3f}: the unpaired interval is {truth}. "
                 + ("Your prediction was right." if pred == truth else
                    f"You predicted {pred}: the two arms share their hard cases, and pairing cancels "
                    "that shared part of the noise."))
    return prediction, u, observed


__all__ = ["check_imagenet_normalisation", "check_auroc_by_pairs", "check_patient_max",
           "check_pairing_experiment", "pairing_half_widths", "WIDTH_EFFECTS"]
