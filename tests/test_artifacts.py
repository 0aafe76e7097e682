"""Checkpoints between notebooks: found when they match the data, refused (with the reason)
when they do not."""
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

from prostate_course import artifacts, models


def fake_dataset(splits=("train", "train", "test")):
    table = pd.DataFrame({"case_id": ["a", "b", "c"], "split": list(splits)})
    return SimpleNamespace(manifest={"key": "synthetic-123"}, table=table, root=Path("/x/synthetic-123"))


def test_checkpoint_is_found_only_for_the_same_data(tmp_path, monkeypatch):
    monkeypatch.setenv("PROSTATE_COURSE_RUNS", str(tmp_path))
    ds = fake_dataset()
    path = artifacts.checkpoint_path("cpu", "03_contrastive", "simclr", seed=0)
    assert path == tmp_path / "cpu" / "artifacts" / "03_contrastive" / "simclr" / "seed0.pt"
    enc = models.resnet18_encoder()
    models.save_checkpoint(enc, path, artifacts.provenance(ds), method="simclr")
    found, note = artifacts.find_checkpoint("cpu", "03_contrastive", "simclr", ds, seed=0)
    assert found == path and "seed 0" in note
    found, note = artifacts.find_checkpoint("cpu", "03_contrastive", "simclr", ds, seed=2)
    assert found == path                                          # pretrained once, serves every seed
    assert artifacts.find_checkpoint("cpu", "03_contrastive", "simclr", ds, seed=2,
                                     fallback_seed=None)[0] is None
    moved = fake_dataset(("train", "test", "train"))              # another split: other training images
    found, why = artifacts.find_checkpoint("cpu", "03_contrastive", "simclr", moved)
    assert found is None and "split_hash" in why
    found, why = artifacts.find_checkpoint("cpu", "03_contrastive", "dcl", ds)
    assert found is None and "does not exist" in why
    sd, manifest = models.load_checkpoint(path)
    assert manifest["dataset_key"] == "synthetic-123" and manifest["method"] == "simclr"
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in sd.items())


def test_split_hash_depends_on_who_is_where():
    assert artifacts.split_hash(fake_dataset().table) == artifacts.split_hash(fake_dataset().table)
    assert artifacts.split_hash(fake_dataset().table) != artifacts.split_hash(fake_dataset(("test", "train", "train")).table)
