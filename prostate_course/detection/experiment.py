"""Notebook 05's experiment: every detection arm at its label budgets and seeds, on one test set.

The protocol is the course's (:mod:`prostate_course.protocol`): the same nested, stratified
label budgets, the same honest fit/validation split inside each budget, the same seeds, one
fixed test split, and the same fine-tuning settings for every arm. What changes is the task:
the U-Net (:class:`prostate_course.models.ResNetUNet`) learns a lesion mask per slice
(:class:`~prostate_course.detection.steps.SegmentationStep`), its slice maps are stacked into
one probability volume per test case (:mod:`~prostate_course.detection.volumes`) and scored with
picai_eval (:mod:`~prostate_course.detection.evaluate`).

A detection U-Net costs far more than a classifier, so which arms run at which budgets is
declared in the profile *before* anything runs (``notebooks."05".arms``): on the cpu profile a
few pre-declared arms, on the gpu profile every arm at every budget.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..protocol import Arm, make_budget, protocol_settings, record_arms, score_rows, seeds_for
from ..repro import get_device, release_memory
from .evaluate import DETECTION_METRICS, evaluate_detection, lesion_rows
from .steps import SegmentationStep
from .volumes import predict_volumes


def arm_plan(spec, methods: Sequence[str], fractions: Sequence[float]) -> dict:
    """{method: [fractions]} from the profile's declaration: ``"all"`` (every arm at every
    budget) or ``{method: "all" | [fractions]}``; ``"smallest"`` / ``"largest"`` name the
    profile's smallest / largest budget. Arms the declaration leaves out do not run."""
    fr = sorted(float(f) for f in fractions)
    alias = {"smallest": fr[0], "largest": fr[-1]}
    if spec in (None, "all"):
        return {m: list(fr) for m in methods}
    out = {}
    for m, fs in dict(spec).items():
        if m not in methods:
            raise ValueError(f"the arm plan names {m!r}, not one of {list(methods)}")
        if fs == "all":
            out[m] = list(fr)
            continue
        chosen = []
        for f in fs if isinstance(fs, (list, tuple)) else [fs]:
            f = alias.get(f, f)
            match = [g for g in fr if math.isclose(float(f), g)]
            if not match:
                raise ValueError(f"arm {m}: label fraction {f} is not one of the profile's {fr}")
            chosen.append(match[0])
        out[m] = sorted(set(chosen))
    return out


@dataclass
class DetectionProtocol:
    """The course protocol with the detection fine-tuning settings of the profile's notebook
    section: ``fit_kwargs`` (epochs, batch, learning rate, steps), ``loss``, U-Net ``widths``,
    ``candidates`` (extract_lesion_candidates settings), the arm ``plan`` and the ``seeds``."""

    base: object = field(repr=False)            # a prostate_course.protocol.Protocol
    fit_kwargs: dict
    loss: str = "focal"
    widths: tuple | None = None
    candidates: dict = field(default_factory=dict)
    plan_spec: object = "all"
    seeds: object = None
    balanced: bool = False

    @classmethod
    def from_profile(cls, profile, dataset, cfg: dict, device=None) -> "DetectionProtocol":
        from ..protocol import Protocol

        base = Protocol.from_profile(profile, dataset, device=device)
        return cls(base=base, fit_kwargs=dict(cfg["finetune"]), loss=cfg.get("loss", "focal"),
                   widths=tuple(cfg["widths"]) if cfg.get("widths") else None,
                   candidates=dict(cfg.get("candidates") or {}), plan_spec=cfg.get("arms", "all"),
                   seeds=cfg.get("seeds") or base.seeds, balanced=bool(cfg.get("balanced", False)))

    @property
    def fractions(self) -> list:
        return list(self.base.fractions)

    def seeds_at(self, fraction: float) -> list:
        return seeds_for(fraction, self.seeds)

    @property
    def all_seeds(self) -> list:
        return sorted({s for f in self.fractions for s in self.seeds_at(f)})

    def plan_table(self, arms: Sequence[Arm]) -> pd.DataFrame:
        """Arms x budgets: how many seeds each declared cell trains, or why an arm cannot run."""
        plan = self.plan([a.method for a in arms])
        rows = {}
        for a in arms:
            fr = plan.get(a.method, [])
            rows[a.method] = {f"{f:.0%}": ("" if f not in fr else "unavailable" if a.unavailable
                                           else f"{len(self.seeds_at(f))} seed(s)" + (" (stand-in)" if a.stand_in else ""))
                              for f in self.fractions}
        return pd.DataFrame(rows).T

    def plan(self, methods) -> dict:
        return arm_plan(self.plan_spec, methods, self.fractions)

    def settings(self, test) -> dict:
        b = self.base
        fit = {**self.fit_kwargs, "loss": self.loss, "widths": list(self.widths or []),
               "candidates": self.candidates, "balanced": self.balanced, "task": "detection"}
        return protocol_settings(dataset_key=b.dataset_key, fractions=b.fractions, seeds=self.seeds,
                                 fit_kwargs=fit, augment=b.augment, val_share=b.val_share,
                                 min_val_positives=b.min_val_positives, probe_Cs=[], knn_ks=[],
                                 test_case_ids=test.case_ids)

    def run(self, arms: Sequence[Arm], train, test, reference, *, results=None, keep=None,
            progress: bool = True) -> "DetectionExperiment":
        from ..augment import default_augmentation

        b = self.base
        if results is not None:
            results.set_protocol(self.settings(test))
        return run_detection(arms, train, test, reference, table=b.table,
                             plan=self.plan([a.method for a in arms]), seeds=self.seeds,
                             fit_kwargs=self.fit_kwargs, loss=self.loss, widths=self.widths,
                             candidates=self.candidates, balanced=self.balanced,
                             augment_factory=default_augmentation if b.augment else None,
                             val_share=b.val_share, min_val_positives=b.min_val_positives,
                             n_boot=b.n_boot, device=b.device, results=results, keep=keep,
                             progress=progress)


@dataclass
class DetectionExperiment:
    """What :func:`run_detection` returns: ``rows`` (one per arm x budget x seed), per-case
    ``scores`` and lesion-level ``lesions`` (long formats), the ``budgets``, learning curves
    ``histories[(method, fraction, seed)]``, picai_eval ``evaluations`` and the probability
    volumes kept (``probabilities``), and the arms that could not run."""

    rows: pd.DataFrame
    scores: pd.DataFrame
    lesions: pd.DataFrame
    budgets: pd.DataFrame
    histories: dict
    evaluations: dict = field(repr=False)
    probabilities: dict = field(repr=False)
    unavailable: list = field(default_factory=list)


def _sampler(balanced: bool, fit_set):
    if not balanced:
        return None
    from ..samplers import BalancedBatches

    return BalancedBatches(fit_set.slice_label)


def run_detection(arms: Sequence[Arm], train, test, reference, *, table: pd.DataFrame, plan: dict,
                  seeds, fit_kwargs: dict, loss: str = "focal", widths=None, candidates=None,
                  balanced: bool = False, augment_factory: Callable | None = None,
                  val_share: float = 0.2, min_val_positives: int = 5, n_boot: int = 1000,
                  device=None, results=None, keep=None, progress: bool = True) -> DetectionExperiment:
    """Train and evaluate every runnable arm at the budgets ``plan[method]`` and seeds
    (:func:`~prostate_course.protocol.seeds_for`); record rows, per-case scores and lesion
    results in ``results`` (a :class:`prostate_course.results.Results`).

    ``train`` / ``test``: SliceSets with lesion masks; ``reference``: the test cases' lesion
    volumes (n_test, D, H, W) in ``test.case_ids`` order. ``keep(method, fraction, seed)``
    says whose probability volumes to keep (default: the first arm's, at its largest budget
    and first seed). Jobs train from the largest budget down (memory: the largest fit meets the
    smallest process); everything returned and recorded is in the plan's order.
    """
    from tqdm.auto import tqdm

    from ..models import ResNetUNet
    from ..train import fit

    device = torch.device(device) if device is not None else get_device()
    reference = np.asarray(reference)
    if len(reference) != len(test.case_ids):
        raise ValueError(f"{len(reference)} reference volumes for {len(test.case_ids)} test cases")
    depth = reference.shape[1]
    runnable, unavailable = record_arms(arms, results)
    runnable = [a for a in runnable if plan.get(a.method)]
    jobs = [(a, f, s) for a in runnable for f in plan[a.method] for s in seeds_for(f, seeds)]
    if keep is None and jobs:
        first = jobs[0][0].method
        top = max(plan[first])
        s0 = min(seeds_for(top, seeds))

        def keep(method, frac, seed):
            return method == first and frac == top and seed == s0
    budgets_seen, done, histories, evaluations, probabilities = {}, {}, {}, {}, {}
    # the largest budgets first: the largest fit then meets the lowest memory baseline (no kept
    # volumes yet); each job is seeded on its own, so the order changes no number
    order = sorted(jobs, key=lambda j: -j[1])
    release_memory()                             # what earlier notebook cells freed, handed back
    bar = tqdm(order, desc="detection arms", disable=not progress)
    for arm, frac, seed in bar:
        bar.set_postfix_str(f"{arm.method} {frac:g} seed {seed}")
        b = budgets_seen.setdefault((frac, seed), make_budget(table, frac, seed, val_share=val_share,
                                                              min_val_positives=min_val_positives))
        fit_set = train.subset(b.fit_ids)
        val_set = train.subset(b.val_ids) if b.val_ids else None
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = ResNetUNet(arm.init(seed), out_channels=1, **({"widths": tuple(widths)} if widths else {}))
        step = SegmentationStep(augment=augment_factory(seed) if augment_factory else None, loss=loss)
        res = fit(model, fit_set, val_set, step=step, device=device, seed=seed, progress=False,
                  sampler=_sampler(balanced, fit_set), desc=arm.method, **fit_kwargs)
        train_s = time.perf_counter() - t0
        fitted = {"n_fit_slices": len(fit_set), "best_epoch": res.best_epoch, "epochs_run": len(res.history),
                  "steps": res.steps}
        key = (arm.method, frac, seed)
        histories[key] = res.history
        del fit_set, val_set, res, step          # the budget's image copies and the best-weights copy
        release_memory()                         # before inference needs room
        probs = predict_volumes(model, test, depth, device=device)
        del model
        ev = evaluate_detection(probs, reference, test.case_ids, patient_ids=test.patient_ids,
                                candidates=candidates)
        evaluations[key] = ev
        if keep(*key):
            probabilities[key] = probs
        else:
            ev.drop_maps()
        summary = ev.summary()
        arm_keys = {"task": "detection", "method": arm.method, "protocol": arm.protocol,
                    "label_fraction": float(frac), "seed": int(seed)}
        row = {**arm_keys, **{k: summary[k] for k in DETECTION_METRICS}, **ev.intervals(n_boot, seed),
               **{k: summary[k] for k in ("n_lesions", "n_candidates", "n_hits")},
               "n_fit_cases": len(b.fit_ids), "n_val_cases": len(b.val_ids), **fitted,
               "train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - t0 - train_s, 1)}
        if arm.stand_in:
            row["stand_in"] = True
        done[key] = (row, score_rows(test.case_ids, test.patient_ids, test.case_label.cpu().numpy(),
                                     ev.scores, **arm_keys), lesion_rows(ev, **arm_keys))
        release_memory()
    bar.close()
    keys = [(a.method, f, s) for a, f, s in jobs]            # back in the plan's order
    rows, scores, lesions = ([done[k][i] for k in keys] for i in range(3))
    histories, evaluations = ({k: d[k] for k in keys} for d in (histories, evaluations))
    if results is not None:
        for row, sc, les in zip(rows, scores, lesions):
            results.add_row(**row)
            results.add_scores(sc)
            results.add_lesions(les)
    budgets = pd.DataFrame([{"label_fraction": b.fraction, "seed": b.seed, "n_fit_cases": len(b.fit_ids),
                             "n_val_cases": len(b.val_ids), "n_positive_patients": b.n_positive_patients,
                             "rule": b.rule} for _, b in sorted(budgets_seen.items())])
    cat = (lambda fs: pd.concat(fs, ignore_index=True) if fs else pd.DataFrame())
    return DetectionExperiment(rows=pd.DataFrame(rows), scores=cat(scores), lesions=cat(lesions),
                               budgets=budgets, histories=histories, evaluations=evaluations,
                               probabilities=probabilities, unavailable=unavailable)


def main_table(rows: pd.DataFrame, metrics=DETECTION_METRICS) -> pd.DataFrame:
    """Mean over seeds per arm and budget (the number of seeds in ``n_seeds``)."""
    if rows.empty:
        return pd.DataFrame(columns=["method", "label_fraction", "n_seeds", *metrics])
    g = rows.groupby(["method", "label_fraction"], sort=False)
    out = g[list(metrics)].mean()
    out.insert(0, "n_seeds", g.size())
    return out.reset_index()


__all__ = ["arm_plan", "DetectionProtocol", "DetectionExperiment", "run_detection", "main_table"]
