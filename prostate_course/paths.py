"""Where data and runs live: one function each, always absolute.

- data root: ``$PROSTATE_COURSE_DATA`` if set, else ``<repository>/data`` (when the package runs
  from a checkout) else ``./data`` of the current folder at first call.
- run root: ``$PROSTATE_COURSE_RUNS`` if set, else ``<repository>/runs``; one folder per profile.

Absolute paths let an executed copy of a notebook (``runs/<profile>/notebooks/``) work from any
folder.
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "PROSTATE_COURSE_DATA"
RUNS_ENV = "PROSTATE_COURSE_RUNS"


def repo_root() -> Path | None:
    """The checkout this package was imported from, or None for a plain (non-editable) install."""
    candidate = Path(__file__).resolve().parents[1]
    if (candidate / "pyproject.toml").is_file() and (candidate / "notebooks").is_dir():
        return candidate
    return None


def _base() -> Path:
    return repo_root() or Path.cwd().resolve()


def data_root() -> Path:
    """Root of all datasets: ``raw/<dataset>/`` and ``prepared/<key>/`` live below it."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser().resolve() if env else _base() / "data"


def runs_root() -> Path:
    """Root of all runs (one sub-folder per profile)."""
    env = os.environ.get(RUNS_ENV)
    return Path(env).expanduser().resolve() if env else _base() / "runs"


def run_root(profile: str) -> Path:
    """``runs/<profile>/``: executed notebooks, results JSON, checkpoints, report."""
    return runs_root() / profile


def results_dir(profile: str) -> Path:
    return run_root(profile) / "results"


def notebooks_dir() -> Path:
    """The course notebooks shipped in the checkout."""
    root = repo_root()
    if root is None:
        raise FileNotFoundError(
            "The notebooks live in the course repository; clone it and install with "
            "`pip install -e .` to run the course."
        )
    return root / "notebooks"
