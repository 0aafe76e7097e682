"""The label-efficiency protocol that notebooks 01-05 share: arms, honest label budgets, per-case
test scores, and the reference lines from the clinic.

An *arm* is a way to get an encoder (``Arm("scratch", random_init)``,
``Arm("simclr", from_checkpoint(path))``) and a way to read it out (``protocol``: "finetune",
"linear_probe" or "knn"). :func:`run_label_efficiency` runs every arm at every label budget and
seed on the same data and keeps every arm's per-case test scores, so that
:func:`prostate_course.compare.paired_deltas` can compare any two arms on the same patients.

Honest budgets (Oliver et al., NeurIPS 2018, "Realistic evaluation of deep semi-supervised
learning algorithms"): a budget covers every label the arm sees. The labelled patients of
budget f (``label_budget``: nested, stratified) are split 4:1, stratified by csPCa, into a fit
set and a validation set that selects the epoch and the probe's C; when the budget holds fewer
than ``min_val_positives`` positive patients there is no validation set at all: fine-tuning
runs its fixed number of steps and keeps the last weights, and probes use the middle C / k.
Every arm gets the same steps and the same (lack of) tuning.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .evaluate import (METRIC_KEYS, case_scores, evaluate_scores, fit_knn_probe,
                       fit_linear_probe, to_numpy)
from .inference import extract_features, predict
from .io_utils import config_hash
from .repro import get_device, release_memory
from .steps import ClassificationStep
from .train import cpu_state, fit

PROTOCOLS = ("finetune", "linear_probe", "knn")


# ---------------------------------------------------------------------------------- arms
def random_init(seed: int) -> nn.Module:
    """A freshly initialised ResNet-18 encoder; the same seed gives the same weights."""
    from .models import resnet18_encoder

    torch.manual_seed(seed)
    return resnet18_encoder()


class StaleCheckpoint(ValueError):
    """A checkpoint was made for other data (dataset key, generator version, split) or code."""


def from_checkpoint(path, expect: dict | None = None) -> Callable[[int], nn.Module]:
    """An encoder factory that loads a pretraining checkpoint: ``Arm("simclr", from_checkpoint(p))``.

    ``path`` may contain ``{seed}`` (one checkpoint per seed). The state dict may be the
    encoder's own or a whole model's (keys ``encoder.*`` are taken). ``expect``: manifest
    entries that must match (e.g. the dataset key and split hash); a mismatch raises
    :class:`StaleCheckpoint` naming the entry, so nothing stale is used silently.
    """
    from .models import load_checkpoint, resnet18_encoder

    def init(seed: int) -> nn.Module:
        p = Path(str(path).format(seed=seed))
        sd, manifest = load_checkpoint(p)
        for k, v in (expect or {}).items():
            if manifest.get(k) != v:
                raise StaleCheckpoint(f"checkpoint {p}: {k} is {manifest.get(k)!r}, expected {v!r}")
        if any(k.startswith("encoder.") for k in sd):
            sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        enc = resnet18_encoder()
        try:
            enc.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ValueError(f"checkpoint {p} does not fit the ResNet-18 encoder: {e}") from e
        return enc

    init.checkpoint = str(path)
    init.seed_independent = "{seed}" not in str(path)   # one file for every seed
    return init


@dataclass
class Arm:
    """One arm of a comparison: ``method`` names the pretraining ("scratch", "imagenet",
    "simclr", ...), ``init(seed)`` returns a fresh encoder (512-d pooled features),
    ``protocol`` how it is read out. ``unavailable``: why the arm cannot run (it is then
    recorded, never replaced); ``stand_in``: why a quick stand-in replaces a missing artifact
    (rows are flagged)."""

    method: str
    init: Callable[[int], nn.Module] | None
    protocol: str = "finetune"
    unavailable: str | None = None
    stand_in: str | None = None

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"arm {self.method}: protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.init is None and not self.unavailable:
            raise ValueError(f"arm {self.method}: give an encoder factory or the reason it is unavailable")

    @property
    def label(self) -> str:
        return self.method if self.protocol == "finetune" else f"{self.method} ({self.protocol.replace('_', ' ')})"


def arm_label(method, protocol) -> str:
    return Arm(method, None, protocol, unavailable="-").label


# ------------------------------------------------------------------------------- budgets
@dataclass
class Budget:
    """The labelled cases of one (fraction, seed): ``fit_ids`` train, ``val_ids`` select the
    epoch / C (empty when the budget is too small: ``rule`` says which)."""

    fraction: float
    seed: int
    fit_ids: list
    val_ids: list
    rule: str
    n_positive_patients: int

    @property
    def case_ids(self) -> list:
        return list(self.fit_ids) + list(self.val_ids)


def make_budget(table: pd.DataFrame, fraction: float, seed: int, *, val_share: float = 0.2,
                min_val_positives: int = 5, split: str = "train") -> Budget:
    """The label budget ``fraction`` for ``seed`` (see the module docstring): the data code's
    nested, stratified ``label_budget``, then a stratified, patient-level fit/validation split
    of it (share ``val_share``), or no validation set below ``min_val_positives`` positive
    patients."""
    from .data.splits import label_budget

    ids = label_budget(table, fraction=fraction, seed=seed, split=split)
    t = table[table["case_id"].isin(ids)]
    pats = t.groupby("patient_id", sort=True)["case_csPCa"].max()
    n_pos = int(pats.sum())
    if n_pos < min_val_positives or val_share <= 0:
        return Budget(float(fraction), int(seed), ids, [],
                      f"no validation: {n_pos} positive patients < {min_val_positives}; fixed steps, "
                      f"last weights, middle C", n_pos)
    rng = np.random.default_rng([int(seed), int(round(fraction * 1e4)), 17])
    val_pats = []
    for label in (1, 0):
        p = np.array(sorted(pats.index[pats.values == label]), dtype=object)
        k = max(1, int(round(val_share * len(p)))) if len(p) > 1 else 0
        val_pats += list(p[rng.permutation(len(p))[:k]])
    val = set(val_pats)
    fit_ids = [c for c, p in zip(t["case_id"], t["patient_id"]) if p not in val]
    val_ids = [c for c, p in zip(t["case_id"], t["patient_id"]) if p in val]
    return Budget(float(fraction), int(seed), fit_ids, val_ids,
                  f"fit/validation {1 - val_share:.0%}/{val_share:.0%} of the labelled patients", n_pos)


def seeds_for(fraction: float, seeds: Sequence[int] | dict) -> list[int]:
    """The seeds run at ``fraction``: a list (every budget), or a dict {fraction: seeds,
    "default": seeds} giving small, cheap budgets more seeds."""
    if isinstance(seeds, dict):
        for k, v in seeds.items():
            if k != "default" and math.isclose(float(k), fraction):
                return [int(s) for s in v]
        return [int(s) for s in seeds["default"]]
    return [int(s) for s in seeds]


# ---------------------------------------------------------------------------------- results
@dataclass
class LabelEfficiency:
    """What :func:`run_label_efficiency` returns: one results row per arm x fraction x seed,
    the per-case test scores (long format, :data:`prostate_course.compare.SCORE_COLUMNS`), the
    budgets used, learning curves ``histories[(label, fraction, seed)]``, encoder weights
    before/after fine-tuning at the largest budget and first seed ``snapshots[label]`` (only
    with ``keep_snapshots``: two encoder copies per fine-tuned arm), and the arms that could
    not run."""

    rows: pd.DataFrame
    scores: pd.DataFrame
    budgets: pd.DataFrame
    histories: dict
    snapshots: dict
    unavailable: list


def score_rows(case_ids, patient_ids, labels, scores, **arm) -> pd.DataFrame:
    """Per-case scores of one arm/budget/seed in the long format."""
    return pd.DataFrame({"case_id": list(case_ids), "patient_id": list(patient_ids),
                         "label": np.asarray(labels).astype(int), **arm,
                         "score": np.asarray(scores, dtype=float)})


def _case_rows(test, slice_scores, **arm) -> pd.DataFrame:
    cs = case_scores(slice_scores, to_numpy(test.case_index), len(test.case_ids))
    return score_rows(test.case_ids, test.patient_ids, to_numpy(test.case_label), cs, **arm)


def protocol_settings(*, dataset_key: str, fractions, seeds, fit_kwargs: dict, augment: bool,
                      val_share: float, min_val_positives: int, probe_Cs, knn_ks,
                      test_case_ids) -> dict:
    """What must match for two notebooks' scores to be comparable (and one to reuse the
    other's reference arm); ``hash`` summarises it."""
    s = {"dataset_key": dataset_key, "fractions": [float(f) for f in fractions],
         "seeds": {str(k): v for k, v in seeds.items()} if isinstance(seeds, dict) else list(seeds),
         "fit": dict(sorted(fit_kwargs.items())), "augment": bool(augment),
         "val_share": float(val_share), "min_val_positives": int(min_val_positives),
         "probe_Cs": [float(c) for c in probe_Cs], "knn_ks": [int(k) for k in knn_ks],
         "test_cases": config_hash(sorted(test_case_ids))}
    s["hash"] = config_hash(s)
    return s


def record_arms(arms: Sequence[Arm], results=None) -> tuple[list[Arm], list[dict]]:
    """Split ``arms`` into the runnable ones and the records of those that cannot run
    ({method, protocol, reason}); with a ``Results``, record both the unavailable arms and the
    stand-ins (their rows are flagged), so that no arm disappears silently from a table."""
    runnable, unavailable = [], []
    for arm in arms:
        if arm.unavailable:
            unavailable.append({"method": arm.method, "protocol": arm.protocol, "reason": arm.unavailable})
            if results is not None:
                results.unavailable(arm.method, arm.unavailable, protocol=arm.protocol)
            continue
        if arm.stand_in and results is not None:
            results.stand_in(arm.method, arm.stand_in)
        runnable.append(arm)
    return runnable, unavailable


def run_label_efficiency(arms: Sequence[Arm], train, test, *, table: pd.DataFrame,
                         fractions: Sequence[float], seeds, fit_kwargs: dict,
                         augment_factory: Callable[[int], Callable] | None = None,
                         val_share: float = 0.2, min_val_positives: int = 5,
                         probe_Cs: Sequence[float] = (0.01, 0.1, 1.0),
                         knn_ks: Sequence[int] = (5, 20, 50), n_boot: int = 1000, device=None,
                         results=None, keep_snapshots: bool = False,
                         progress: bool = True) -> LabelEfficiency:
    """Run every arm at every label fraction and seed (:func:`seeds_for`); return (and, with a
    ``Results``, record) the rows and the per-case test scores.

    ``train``: the training split's SliceSet (all its cases; each budget takes its labelled
    cases from it), ``test``: the test split's. Fine-tuning: ``Classifier(init(seed))`` trained
    with :func:`prostate_course.train.fit` and ``fit_kwargs`` (the same for every arm),
    validation inside the budget; probes: frozen ``init(seed)`` features, the read-out fitted
    on the budget's fit cases, C / k chosen on its validation cases.
    """
    from tqdm.auto import tqdm

    from .models import Classifier

    device = torch.device(device) if device is not None else get_device()
    rows, scores, budgets, histories, snapshots = [], [], [], {}, {}
    runnable, unavailable = record_arms(arms, results)
    plan = {(f, s): make_budget(table, f, s, val_share=val_share, min_val_positives=min_val_positives)
            for f in fractions for s in seeds_for(f, seeds)}
    budgets = pd.DataFrame([{"label_fraction": b.fraction, "seed": b.seed,
                             "n_fit_cases": len(b.fit_ids), "n_val_cases": len(b.val_ids),
                             "n_positive_patients": b.n_positive_patients, "rule": b.rule}
                            for b in plan.values()])
    # seed, then arm (probes of one encoder next to each other: its features are computed once
    # per seed and serve every budget), then budget
    order = sorted(range(len(runnable)), key=lambda i: (runnable[i].protocol == "finetune" and -1 or 0,
                                                          runnable[i].method))
    jobs = [(runnable[i], f, s) for s in sorted({s for _, s in plan}) for i in order
            for f in fractions if (f, s) in plan]
    top, first_seed = max(fractions), min(s for _, s in plan)
    # the training cases whose frozen features some budget reads: per seed, and for an encoder
    # that serves every seed, over all seeds (a small budget's extra seeds then cost only the
    # test split's features and their own few training slices)
    needed = {s: sorted({c for (_, s2), b in plan.items() if s2 == s for c in b.case_ids}) for _, s in plan}
    needed[None] = sorted({c for ids in needed.values() for c in ids})
    feats: dict = {}
    bar = tqdm(jobs, desc="label efficiency", disable=not progress)
    for arm, frac, seed in bar:
        bar.set_postfix_str(f"{arm.label} {frac:g} seed {seed}")
        b = plan[(frac, seed)]
        fit_set = train.subset(b.fit_ids)
        val_set = train.subset(b.val_ids) if b.val_ids else None
        t0 = time.perf_counter()
        if arm.protocol == "finetune":
            torch.manual_seed(seed)
            model = Classifier(arm.init(seed))
            snap = keep_snapshots and frac == top and seed == first_seed
            before = copy.deepcopy(model.encoder.state_dict()) if snap else None
            step = ClassificationStep(augment=augment_factory(seed) if augment_factory else None)
            res = fit(model, fit_set, val_set, step=step, device=device, seed=seed,
                      progress=False, desc=arm.label, **fit_kwargs)
            histories[(arm.label, frac, seed)] = res.history
            if before is not None:
                snapshots[arm.label] = (before, cpu_state(model.encoder))
            slice_scores = predict(model, test.images, device=device)
            extra = {"best_epoch": res.best_epoch, "epochs_run": len(res.history), "steps": res.steps}
            del model, step, res
            release_memory()                      # the model's optimiser state and activations
        else:
            # one encoder's features serve every budget; a seed-independent encoder's (e.g. one
            # checkpoint for every seed) every seed too, so they are kept across seeds
            fixed = bool(getattr(arm.init, "seed_independent", False)) or _shared_checkpoint(arm.init) is not None
            key = (arm.method, None if fixed else seed)
            if key not in feats:
                for k in [k for k in feats if k[1] is not None]:
                    del feats[k]
                enc = arm.init(seed)
                rows_read = _rows_of(train, needed[key[1]])
                images = train.images if len(rows_read) == len(train) else train.images[torch.as_tensor(rows_read)]
                feats[key] = {"rows": rows_read, "train": extract_features(enc, images, device=device),
                              "test": extract_features(enc, test.images, device=device)}
                del enc, images
                release_memory()                  # the encoder and its activations
            f = feats[key]
            at = lambda ids: f["train"][np.searchsorted(f["rows"], _rows_of(train, ids))]
            fit_x, val_x, val_y = at(b.fit_ids), None, None
            if val_set is not None:
                val_x, val_y = at(b.val_ids), val_set.slice_label
            if arm.protocol == "linear_probe":
                probe = fit_linear_probe(fit_x, fit_set.slice_label, val_x, val_y, Cs=probe_Cs, seed=seed)
                extra = {"C": probe.C}
            else:
                probe = fit_knn_probe(fit_x, fit_set.slice_label, val_x, val_y, ks=knn_ks)
                extra = {"k": probe.k}
            slice_scores = probe.predict(f["test"])
        metrics = evaluate_scores(slice_scores, test.slice_label, test.case_index, test.case_label,
                                  test.patient_ids, n_boot=n_boot, seed=seed)
        arm_keys = {"task": "classification", "method": arm.method, "protocol": arm.protocol,
                    "label_fraction": float(frac), "seed": int(seed)}
        row = {**arm_keys, **{k: metrics[k] for k in METRIC_KEYS},
               "n_fit_cases": len(b.fit_ids), "n_val_cases": len(b.val_ids),
               "n_fit_slices": len(fit_set), "train_s": round(time.perf_counter() - t0, 1), **extra}
        if arm.stand_in:
            row["stand_in"] = True
        rows.append(row)
        scores.append(_case_rows(test, slice_scores, **arm_keys))
        if results is not None:
            results.add_row(**row)
    bar.close()
    sc = pd.concat(scores, ignore_index=True) if scores else pd.DataFrame()
    if results is not None and len(sc):
        results.add_scores(sc)
    return LabelEfficiency(rows=pd.DataFrame(rows), scores=sc, budgets=budgets,
                           histories=histories, snapshots=snapshots, unavailable=unavailable)


def _shared_checkpoint(init) -> str | None:
    """The checkpoint path of a :func:`from_checkpoint` factory that loads the same file for
    every seed (no ``{seed}`` in it): its frozen features are computed once and serve every
    seed's probes (one pretraining per method serving every fine-tuning seed)."""
    path = getattr(init, "checkpoint", None)
    return str(path) if path is not None and "{seed}" not in str(path) else None


def _rows_of(full, case_ids) -> np.ndarray:
    """Row numbers of the slices of ``case_ids`` inside the SliceSet ``full`` (slice order)."""
    pos = {c: i for i, c in enumerate(full.case_ids)}
    missing = [c for c in case_ids if c not in pos]
    if missing:
        raise KeyError(f"cases not in this slice set: {missing[:5]}")
    wanted = torch.tensor(sorted(pos[c] for c in case_ids), dtype=torch.long)
    return torch.isin(full.case_index.cpu(), wanted).nonzero().ravel().numpy()


# --------------------------------------------------------------------------- from a profile
@dataclass
class Protocol:
    """The protocol of one course run, read from the profile: the same label fractions, seeds,
    fine-tuning and read-out settings for every notebook, so that their scores compare::

        proto = Protocol.from_profile(session.profile, ds, device=session.device)
        le = proto.run(arms, train_slices, test_slices, results=session.results)
    """

    table: pd.DataFrame = field(repr=False)
    dataset_key: str
    fractions: list
    seeds: dict
    fit_kwargs: dict
    augment: bool = True
    val_share: float = 0.2
    min_val_positives: int = 5
    probe_Cs: list = field(default_factory=lambda: [0.01, 0.1, 1.0])
    knn_ks: list = field(default_factory=lambda: [5, 20, 50])
    n_boot: int = 1000
    device: object = None

    @classmethod
    def from_profile(cls, profile, dataset, device=None) -> "Protocol":
        pr = profile.protocol
        key = dataset.manifest.get("key") or dataset.root.name
        return cls(table=dataset.table, dataset_key=key, fractions=profile.label_fractions,
                   seeds=profile.protocol_seeds, fit_kwargs=dict(pr["finetune"]),
                   augment=bool(pr["augment"]), val_share=float(pr["val_share"]),
                   min_val_positives=int(pr["min_val_positives"]), probe_Cs=list(pr["probe_Cs"]),
                   knn_ks=list(pr["knn_ks"]), n_boot=int(pr["bootstrap"]), device=device)

    def seeds_at(self, fraction: float) -> list[int]:
        return seeds_for(fraction, self.seeds)

    def budget(self, fraction: float, seed: int) -> Budget:
        return make_budget(self.table, fraction, seed, val_share=self.val_share,
                           min_val_positives=self.min_val_positives)

    def settings(self, test) -> dict:
        """:func:`protocol_settings` of this protocol on the test set ``test``."""
        return protocol_settings(dataset_key=self.dataset_key, fractions=self.fractions,
                                 seeds=self.seeds, fit_kwargs=self.fit_kwargs, augment=self.augment,
                                 val_share=self.val_share, min_val_positives=self.min_val_positives,
                                 probe_Cs=self.probe_Cs, knn_ks=self.knn_ks,
                                 test_case_ids=test.case_ids)

    def run(self, arms: Sequence[Arm], train, test, *, results=None, fractions=None,
            progress: bool = True, **kw) -> LabelEfficiency:
        """:func:`run_label_efficiency` with this protocol's settings (``fractions`` may pick a
        subset of the profile's, e.g. the smallest and the largest for an expensive arm)."""
        from .augment import default_augmentation

        if results is not None:
            results.set_protocol(self.settings(test))
        return run_label_efficiency(
            arms, train, test, table=self.table, fractions=fractions or self.fractions,
            seeds=self.seeds, fit_kwargs=self.fit_kwargs,
            augment_factory=default_augmentation if self.augment else None,
            val_share=self.val_share, min_val_positives=self.min_val_positives,
            probe_Cs=self.probe_Cs, knn_ks=self.knn_ks, n_boot=self.n_boot, device=self.device,
            results=results, progress=progress, **kw)

    def reuse_scores(self, profile_name: str, test, method: str = "scratch",
                     notebook: str = "01_transfer_learning") -> tuple[pd.DataFrame | None, str]:
        """``notebook``'s per-case scores of ``method`` when they were made under exactly this
        protocol (same hash: dataset, budgets, seeds, fine-tuning, test cases); else
        ``(None, why)`` and the caller computes them itself."""
        from .results import load_scores
        from .paths import results_dir

        d = results_dir(profile_name)
        if not (d / f"{notebook}.json").is_file():
            return None, f"no results of {notebook} in {d}"
        try:
            sc, protos = load_scores(d, notebooks=[notebook])
        except ValueError as e:
            return None, f"the results of {notebook} are unusable: {e}"
        want = self.settings(test)["hash"]
        got = (protos.get(notebook) or {}).get("hash")
        if got != want:
            return None, f"{notebook} ran under other protocol settings (hash {got} != {want})"
        sc = sc[sc["method"] == method].drop(columns="notebook")
        if sc.empty:
            return None, f"{notebook} has no scores of {method!r}"
        return sc, f"reused from {notebook} (same protocol, hash {want})"


# ----------------------------------------------------------------------- clinical references
def clinical_scores(table: pd.DataFrame, test_ids, train_ids=None) -> tuple[pd.DataFrame, list]:
    """Case scores of the clinic's own tools on the test cases: the readers' PI-RADS (mean of
    the case's reports; one routine report for real PI-CAI) and PSA density (ng/mL^2).
    Missing values are filled with the training cases' median, and each repair is listed.
    Rows: method "pirads" / "psad", protocol "clinical", no label fraction or seed."""
    from .data.readers import parse_reports

    t = table.set_index("case_id")
    train_ids = list(t.index[t["split"] == "train"]) if train_ids is None else list(train_ids)
    pirads = t["pirads_reports"].fillna("").map(lambda r: np.mean(parse_reports(r)) if parse_reports(r) else np.nan)
    sources = {"pirads": pirads, "psad": t["psad"].astype(float)}
    out, repairs = [], []
    test = t.loc[list(test_ids)]
    for name, values in sources.items():
        v = values.loc[list(test_ids)]
        fill = float(np.nanmedian(values.loc[train_ids]))
        if v.isna().any():
            repairs.append(f"{name}: {int(v.isna().sum())} of {len(v)} test cases have no value; "
                           f"filled with the training median {fill:.3g}")
        out.append(score_rows(test.index, test["patient_id"], test["case_csPCa"], v.fillna(fill),
                              task="classification", method=name, protocol="clinical",
                              label_fraction=np.nan, seed=np.nan))
    return pd.concat(out, ignore_index=True), repairs


__all__ = ["Arm", "arm_label", "record_arms", "random_init", "from_checkpoint", "StaleCheckpoint", "Budget",
           "make_budget", "seeds_for", "LabelEfficiency", "run_label_efficiency", "score_rows",
           "protocol_settings", "Protocol", "clinical_scores", "summarise", "PROTOCOLS"]


def summarise(rows: pd.DataFrame, metric: str = "auroc_patient") -> pd.DataFrame:
    """Mean (and min/max over seeds) of ``metric`` per arm and label fraction."""
    from .viz.curves import arm_labels

    df = rows.assign(arm=arm_labels(rows))
    return (df.groupby(["arm", "label_fraction"])[metric]
              .agg(["mean", "min", "max", "count"]).round(3).reset_index())
