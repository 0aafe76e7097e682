"""Probes of a seed-independent encoder (one checkpoint for every seed) extract its features once
for all seeds, with the same scores as extracting them per seed."""
import copy

import pytest
import torch

from prostate_course import models, protocol

from fakes import blob_slices, table_of


def test_seed_independent_encoders_extract_features_once(tmp_path, monkeypatch):
    tr = blob_slices(n_cases=30, n_slices=3, seed=0, prefix="t")
    te = blob_slices(n_cases=10, n_slices=3, seed=2, prefix="e")
    table = table_of((tr, "train"), (te, "test"))
    torch.manual_seed(0)
    path = models.save_checkpoint(models.resnet18_encoder(), tmp_path / "enc.pt", {"what": "x"})
    fixed = protocol.from_checkpoint(path)
    assert fixed.seed_independent and not protocol.from_checkpoint(str(tmp_path / "s{seed}.pt")).seed_independent
    enc = fixed(0)
    per_seed = lambda seed: copy.deepcopy(enc)          # the same weights, but not marked

    calls = []
    real = protocol.extract_features
    monkeypatch.setattr(protocol, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    seeds = {0.5: [0, 1, 2], "default": [0, 1, 2]}
    kw = dict(table=table, fractions=[0.5, 1.0], seeds=seeds, fit_kwargs={}, n_boot=10,
              device="cpu", min_val_positives=3, progress=False)
    a = protocol.run_label_efficiency([protocol.Arm("ckpt", fixed, protocol="linear_probe"),
                                       protocol.Arm("ckpt", fixed, protocol="knn")], tr, te, **kw)
    assert len(calls) == 2                              # train + test, once for 3 seeds x 2 read-outs
    calls.clear()
    b = protocol.run_label_efficiency([protocol.Arm("ckpt", per_seed, protocol="linear_probe"),
                                       protocol.Arm("ckpt", per_seed, protocol="knn")], tr, te, **kw)
    assert len(calls) == 2 * 3                          # once per seed
    assert a.scores.equals(b.scores)


def test_extra_seeds_of_a_small_budget_read_only_their_own_training_slices(monkeypatch):
    tr = blob_slices(n_cases=40, n_slices=3, seed=0, prefix="t")
    te = blob_slices(n_cases=10, n_slices=3, seed=2, prefix="e")
    table = table_of((tr, "train"), (te, "test"))
    seen = []
    real = protocol.extract_features
    monkeypatch.setattr(protocol, "extract_features", lambda enc, x, **k: seen.append(len(x)) or real(enc, x, **k))
    seeds = {0.25: [0, 1, 2], "default": [0]}
    kw = dict(table=table, fractions=[0.25, 1.0], seeds=seeds, fit_kwargs={}, n_boot=10,
              device="cpu", min_val_positives=3, progress=False)
    le = protocol.run_label_efficiency([protocol.Arm("rand", protocol.random_init, protocol="linear_probe")],
                                       tr, te, **kw)
    budgets = {s: protocol.make_budget(table, 0.25, s, min_val_positives=3) for s in (1, 2)}
    # seed 0 reads every training slice (its 100 % budget); seeds 1 and 2 their budget's 3 slices a case
    assert seen == [len(tr), len(te)] + [n for s in (1, 2) for n in (3 * len(budgets[s].case_ids), len(te))]
    # the same probe as one fitted on features of the whole training split (a limit case: full extraction)
    b = budgets[2]
    enc = protocol.random_init(2)
    full = real(enc, tr.images)
    fit = protocol._rows_of(tr, b.fit_ids)
    val = protocol._rows_of(tr, b.val_ids) if b.val_ids else None
    probe = protocol.fit_linear_probe(full[fit], tr.subset(b.fit_ids).slice_label,
                                      None if val is None else full[val],
                                      None if val is None else tr.subset(b.val_ids).slice_label,
                                      Cs=(0.01, 0.1, 1.0), seed=2)
    got = le.scores[(le.scores.seed == 2) & (le.scores.label_fraction == 0.25)]
    want = protocol.case_scores(probe.predict(real(enc, te.images)), te.case_index)
    assert got.score.to_numpy() == pytest.approx(want, abs=1e-5)
