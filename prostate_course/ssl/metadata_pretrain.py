"""Notebook 04's pretraining methods on the course's contrastive engine, their checkpoints, a
quick stand-in for notebook 05, and the reader-noise experiment.

Methods (the names of the results contract):

- ``yaware``: y-Aware InfoNCE on age, log PSA and log PSA density (standardised on the training
  exams), one RBF factor per variable, missing values dropped (Dufumier et al. 2021);
- ``supcon_majority``: supervised contrastive on the majority PI-RADS label, every annotated
  majority fully trusted (Khosla et al. 2020) - the naive baseline;
- ``pirads_conf``: the decoupled conditional contrastive loss weighted by the readers'
  confidence, unannotated exams in the same loss (Ruppli et al. 2023);
- ``pirads_noconf``: the same loss with every confidence set to 1;
- ``pirads_conf_nounlabelled``: ``pirads_conf`` on the annotated exams only.

Each pretrains the same encoder with the same views, optimiser, steps and one-slice-per-exam
batches as notebook 03 (:func:`prostate_course.ssl.contrastive.pretrain_run`); only the loss and
the metadata it reads change. Only training exams' metadata enter
(:func:`prostate_course.ssl.metadata.pretraining_set`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from torch import nn

from .metadata import Standardiser, pretraining_set, resample_reports
from .metadata_losses import ConditionalContrastive, YAwareInfoNCE, supcon_majority

NOTEBOOK = "04_metadata_contrastive"

#: method -> (what it is, trains on the annotated exams only)
METHODS = {
    "yaware": ("y-Aware InfoNCE on age, PSA, PSA density", False),
    "supcon_majority": ("supervised contrastive on the majority PI-RADS, no confidence", False),
    "pirads_conf": ("conditional contrastive, confidence-weighted, unannotated exams included", False),
    "pirads_noconf": ("conditional contrastive, every confidence 1, unannotated exams included", False),
    "pirads_conf_nounlabelled": ("conditional contrastive, confidence-weighted, annotated exams only", True),
}
PIRADS_KEYS = ("pirads_majority", "pirads_conf")


def _check(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown notebook-04 method {method!r}; known: {list(METHODS)}")


def make_metadata_loss(method: str, *, temperature: float = 0.1, sigma=1.0, form: str = "infonce",
                       variables: Sequence[str] = ("patient_age_z", "psa_z", "psad_z")
                       ) -> tuple[nn.Module, tuple]:
    """The loss of ``method`` and the metadata keys its step must gather. ``sigma``: the RBF
    bandwidth(s) of y-Aware in standard deviations; ``form``: the conditional loss's form
    ("infonce" or "align_unif")."""
    _check(method)
    if method == "yaware":
        return YAwareInfoNCE(list(variables), sigma=sigma, temperature=temperature), tuple(variables)
    if method == "supcon_majority":
        return supcon_majority(temperature), ("pirads_majority",)
    return (ConditionalContrastive(temperature, use_confidence=method != "pirads_noconf", form=form),
            PIRADS_KEYS)


def pretraining_data(method: str, train_slices, table: pd.DataFrame,
                     standardiser: Standardiser | None = None):
    """The slice set ``method`` pretrains on: the unlabelled training slices with their exams'
    standardised clinical values and PI-RADS labels from ``table`` (annotated exams only for
    ``pirads_conf_nounlabelled``)."""
    _check(method)
    if standardiser is None:
        standardiser = Standardiser.fit(table[table["case_id"].isin(train_slices.case_ids)])
    return pretraining_set(train_slices, table, standardiser, annotated_only=METHODS[method][1])


def pretrain_metadata(method: str, train_slices, table: pd.DataFrame, steps: int, seed: int = 0,
                      device=None, *, standardiser: Standardiser | None = None,
                      temperature: float = 0.1, sigma=1.0, form: str = "infonce", **kw):
    """Pretrain a fresh ResNet-18 with ``method`` for ``steps`` steps; returns the
    :class:`~prostate_course.ssl.contrastive.PretrainResult` (``.encoder``, ``.history``).
    ``kw`` go to :func:`~prostate_course.ssl.contrastive.pretrain_run` (batch_size, lr, ...)."""
    from .contrastive import pretrain_run

    loss, keys = make_metadata_loss(method, temperature=temperature, sigma=sigma, form=form)
    data = pretraining_data(method, train_slices, table, standardiser)
    res = pretrain_run(method, data, steps, seed, device, loss=loss, meta_keys=keys,
                       temperature=temperature, **kw)
    res.config.update({"n_exams": len(data.case_ids), "sigma": sigma, "form": form})
    return res


def quick_pretrain(dataset, method: str = "pirads_conf", steps: int = 50, seed: int = 0,
                   device=None, table: pd.DataFrame | None = None, **kw) -> nn.Module:
    """A quick pretraining of ``method`` on ``dataset``'s training split (e.g. notebook 05's
    stand-in for a missing notebook-04 checkpoint). Returns the encoder (CPU, eval mode)."""
    train = dataset.slices(split="train", masks=False)
    res = pretrain_metadata(method, train, dataset.table if table is None else table, steps, seed,
                            device, progress=False, **kw)
    return res.encoder.cpu().eval()


def encoder_or_stand_in(profile: str, dataset, method: str = "pirads_conf", seed: int = 0, *,
                        steps: int = 50, device=None, fallback_seed: int | None = 0, **kw):
    """An encoder factory for :class:`prostate_course.protocol.Arm`: notebook 04's checkpoint of
    ``method`` when it matches ``dataset``, else a quick stand-in (:func:`quick_pretrain`).
    Returns ``(init, stand_in, note)``; ``stand_in`` (None for a checkpoint) is the reason to
    pass as ``Arm(stand_in=...)``."""
    from .. import artifacts
    from ..protocol import from_checkpoint

    _check(method)
    path, note = artifacts.find_checkpoint(profile, NOTEBOOK, method, dataset, seed=seed,
                                           fallback_seed=fallback_seed)
    if path is not None:
        return from_checkpoint(path), None, note
    enc = quick_pretrain(dataset, method, steps, seed, device, **kw)
    reason = (f"no usable checkpoint of {method} from {NOTEBOOK} ({note}); a stand-in pretrained "
              f"for {steps} steps here")
    def init(_seed: int) -> nn.Module:
        return copy.deepcopy(enc)

    init.seed_independent = True                    # one encoder for every seed
    return init, reason, reason


def reference_encoder(profile: str, dataset, method: str = "dcl", seed: int = 0, *,
                      notebook: str = "03_contrastive", steps: int = 50, device=None, **kw):
    """Notebook 03's checkpoint of ``method`` (the fixed reference arm of notebook 04) or a quick
    stand-in (:func:`prostate_course.ssl.contrastive.encoder_or_stand_in`); the factory is
    marked seed-independent (one encoder for every seed). Returns ``(init, stand_in, note)``."""
    from .contrastive import encoder_or_stand_in as contrastive_encoder

    init, stand_in, note = contrastive_encoder(profile, method, dataset, seed, notebook=notebook,
                                               steps=steps, device=device, **kw)
    if stand_in is not None:
        init.seed_independent = True
    return init, stand_in, note


def exam_embedding(encoder: nn.Module, slices, device=None):
    """(n_exams, F) exam representations: the mean of the frozen features of each exam's slices
    (exams in ``slices.case_ids`` order): metadata belong to the exam, so do their maps."""
    from .embeddings import embed

    f = embed(encoder, slices.images, device=device)
    ci = slices.case_index.cpu().numpy()
    n = len(slices.case_ids)
    out = np.zeros((n, f.shape[1]), dtype=np.float64)
    np.add.at(out, ci, f)
    counts = np.bincount(ci, minlength=n)
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} exams have no slice in this set")
    return (out / counts[:, None]).astype(np.float32)


def reuse_or_run(proto, profile: str, test, references, fractions) -> tuple[list, list, list]:
    """Fine-tuned reference arms: another notebook's per-case scores of ``method`` when they were
    made under exactly this protocol (:meth:`prostate_course.protocol.Protocol.reuse_scores`),
    else an arm to run here. ``references``: ``(method, notebook, init, stand_in)`` tuples (a
    stand-in is never matched with another notebook's scores). Returns ``(scores, arms,
    notes)``: the reused score tables (fine-tuning rows at ``fractions``), the arms still to
    run, one sentence per reference."""
    from ..protocol import Arm

    reused, arms, notes = [], [], []
    for method, notebook, init, stand_in in references:
        sc, why = (None, stand_in) if stand_in else proto.reuse_scores(profile, test, method, notebook=notebook)
        if sc is not None:
            sc = sc[(sc["protocol"] == "finetune")
                    & np.isclose(sc["label_fraction"].astype(float).to_numpy()[:, None], list(fractions)).any(1)]
        if sc is not None and len(sc):
            reused.append(sc)
            notes.append(f"{method} fine-tuned: {why}")
        else:
            arms.append(Arm(method, init, stand_in=stand_in))
            notes.append(f"{method} fine-tuned here ({why if sc is None else 'no fine-tuning scores at these budgets'})")
    return reused, arms, notes


def noise_result_rows(results, noise_table: pd.DataFrame) -> None:
    """Record the reader-noise experiment's paired deltas as ``summary`` rows of ``results``
    (method "A - B", one row per noise level)."""
    for r in noise_table.itertuples():
        results.add_row(task="summary", method=f"{r.method} - {r.reference}", protocol=r.protocol,
                        label_fraction=r.label_fraction, seed=None, reader_noise=r.reader_noise,
                        delta=r.delta, delta_lo=r.delta_lo, delta_hi=r.delta_hi, n_seeds=r.n_seeds)


# -------------------------------------------------------------------- reader-noise experiment
@dataclass
class NoiseExperiment:
    """What :func:`reader_noise_experiment` returns: per noise level the resampled table, the
    per-case test scores of every method (column ``reader_noise``), the paired deltas of
    ``methods[0]`` against ``methods[1]`` and the pretraining histories."""

    tables: dict
    scores: pd.DataFrame
    deltas: pd.DataFrame
    histories: dict


def reader_noise_experiment(proto, train_slices, test_slices, table: pd.DataFrame, raw_root,
                            noise_levels: Sequence[float], *, steps: int,
                            methods: Sequence[str] = ("pirads_conf", "pirads_noconf"),
                            pretrain_seeds: Sequence[int] = (0,), fraction: float | None = None,
                            readout: str = "linear_probe", device=None, progress: bool = True,
                            known_scores: dict | None = None, **pretrain_kw) -> NoiseExperiment:
    """Resample the training exams' reports at each reader noise (:func:`resample_reports`;
    images unchanged), pretrain every method on them, read each encoder out with ``readout`` at
    label ``fraction`` (default: the protocol's smallest) for the protocol's seeds there, and
    compare ``methods[0]`` with ``methods[1]`` on the same test patients
    (:func:`prostate_course.compare.paired_deltas`). With several ``pretrain_seeds``, budget
    seed s reads out the encoder of pretraining seed ``pretrain_seeds[s % len]``. ``known_scores``:
    {noise: per-case scores} of the methods already pretrained and read out with exactly these
    settings (e.g. the main run's at the cohort's own noise): that level is not run again."""
    from tqdm.auto import tqdm

    from .. import compare

    fraction = min(proto.fractions) if fraction is None else fraction
    tables, scores, deltas, hist = {}, [], [], {}
    known_scores = known_scores or {}
    jobs = [(n, m, s) for n in noise_levels if n not in known_scores for m in methods for s in pretrain_seeds]
    bar = tqdm(total=len(jobs), desc="reader noise", disable=not progress)
    for noise in noise_levels:
        t = resample_reports(table, raw_root, noise)
        tables[noise] = t
        if noise in known_scores:
            k = known_scores[noise]
            sc = k[k["method"].isin(methods) & (k["protocol"] == readout)
                   & np.isclose(k["label_fraction"].astype(float), fraction)].assign(reader_noise=float(noise))
            missing = set(methods) - set(sc["method"])
            if missing:
                raise ValueError(f"known_scores at noise {noise} lack {sorted(missing)} ({readout}, {fraction:g})")
        else:
            sc = _run_level(proto, train_slices, test_slices, t, noise, methods, pretrain_seeds, steps,
                            fraction, readout, device, hist, bar, pretrain_kw)
        scores.append(sc)
        d = compare.paired_deltas(sc.drop(columns="reader_noise"), reference=methods[1],
                                  n_boot=proto.n_boot)
        deltas.append(d[d["method"] == methods[0]].assign(reader_noise=float(noise)))
    bar.close()
    return NoiseExperiment(tables, pd.concat(scores, ignore_index=True),
                           pd.concat(deltas, ignore_index=True), hist)


def _run_level(proto, train_slices, test_slices, t, noise, methods, pretrain_seeds, steps, fraction,
               readout, device, hist, bar, pretrain_kw) -> pd.DataFrame:
    """Pretrain ``methods`` on the reports of ``t`` and read them out: the level's scores."""
    from ..protocol import Arm

    arms = []
    for m in methods:
        encs = []
        for s in pretrain_seeds:
            bar.set_postfix_str(f"noise {noise:g} {m} seed {s}")
            res = pretrain_metadata(m, train_slices, t, steps, s, device, progress=False, **pretrain_kw)
            hist[(noise, m, s)] = res.history
            encs.append(res.encoder.cpu().eval())
            bar.update(1)
        init = (lambda e: lambda seed: copy.deepcopy(e[seed % len(e)]))(encs)
        init.seed_independent = len(encs) == 1
        arms.append(Arm(m, init, protocol=readout))
    le = proto.run(arms, train_slices, test_slices, fractions=[fraction], progress=False)
    return le.scores.assign(reader_noise=float(noise))


__all__ = ["NOTEBOOK", "METHODS", "PIRADS_KEYS", "make_metadata_loss", "pretraining_data",
           "pretrain_metadata", "quick_pretrain", "encoder_or_stand_in", "reference_encoder",
           "exam_embedding", "reuse_or_run", "noise_result_rows", "NoiseExperiment",
           "reader_noise_experiment"]
