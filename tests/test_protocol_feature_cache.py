"""Probes of a seed-independent encoder (one checkpoint for every seed) extract its features once
for all seeds, with the same scores as extracting them per seed."""
import copy

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
