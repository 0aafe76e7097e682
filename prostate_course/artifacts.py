"""Artifacts between notebooks: pretrained encoder checkpoints that later notebooks reuse.

A pretraining notebook (02-04) writes one checkpoint per method (and per seed where the profile
pretrains once per seed) under ``runs/<profile>/artifacts/<notebook>/<method>/seed<k>.pt``, with
a manifest that says what data and code made it::

    path = artifacts.checkpoint_path(session.profile.name, session.notebook, "simclr", seed=0)
    models.save_checkpoint(model.encoder, path, artifacts.provenance(ds), method="simclr", seed=0)

A later notebook asks for it with :func:`find_checkpoint`; it gets the path only when the
manifest's provenance matches the current dataset (key, generator version, split) - otherwise the
reason, and it then trains a quick stand-in and records it (``results.stand_in``), never using
something stale in silence.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from .paths import repo_root, run_root

#: the manifest entries a checkpoint must share with the current run to be reused
PROVENANCE_KEYS = ("dataset_key", "generator_version", "split_hash")


def checkpoint_path(profile: str, notebook: str, method: str, seed: int = 0) -> Path:
    """``runs/<profile>/artifacts/<notebook-stem>/<method>/seed<k>.pt`` (absolute)."""
    return run_root(profile) / "artifacts" / Path(notebook).stem / method / f"seed{int(seed)}.pt"


def split_hash(table) -> str:
    """A short hash of who is in which split (case id -> split), so a checkpoint pretrained on
    another split's training images is never reused."""
    pairs = sorted(zip(table["case_id"].astype(str), table["split"].astype(str)))
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def code_version() -> str:
    """The git commit of the checkout (with ``-dirty`` for local changes), else the package version."""
    from . import __version__

    root = repo_root()
    if root is not None and (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            if commit:
                return commit + ("-dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return f"prostate-course {__version__}"


def provenance(dataset) -> dict:
    """What a checkpoint is tied to: the prepared dataset's key, the synthetic generator
    version (None for real data), the split hash, and the code version (recorded, not checked:
    a commit that only fixes a typo should not throw away an hour of pretraining)."""
    from .data.synthetic import GENERATOR_VERSION

    m = dataset.manifest
    synthetic = str(m.get("key", "")).startswith("synthetic")
    return {"dataset_key": m.get("key") or dataset.root.name,
            "generator_version": GENERATOR_VERSION if synthetic else None,
            "split_hash": split_hash(dataset.table), "code": code_version()}


def find_checkpoint(profile: str, notebook: str, method: str, dataset, seed: int = 0,
                    fallback_seed: int | None = 0) -> tuple[Path | None, str]:
    """The checkpoint of ``method`` from ``notebook`` for ``seed`` if it exists and matches the
    current dataset; with ``fallback_seed`` a profile that pretrained once (seed 0) serves every
    fine-tuning seed. Returns ``(path, note)`` or ``(None, why not)``."""
    from .models import read_manifest

    want = provenance(dataset)
    tried = []
    for s in dict.fromkeys([seed] + ([fallback_seed] if fallback_seed is not None else [])):
        p = checkpoint_path(profile, notebook, method, s)
        if not p.is_file():
            tried.append(f"{p} does not exist")
            continue
        manifest = read_manifest(p)
        bad = [k for k in PROVENANCE_KEYS if manifest.get(k) != want[k]]
        if bad:
            return None, (f"{p} was made for other data ({', '.join(f'{k}: {manifest.get(k)!r} != {want[k]!r}' for k in bad)})")
        return p, f"{p.relative_to(run_root(profile))} (code {manifest.get('code')}, seed {s})"
    return None, "; ".join(tried)


__all__ = ["checkpoint_path", "split_hash", "code_version", "provenance", "find_checkpoint",
           "PROVENANCE_KEYS"]
