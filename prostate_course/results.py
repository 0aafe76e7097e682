"""The results file every notebook writes (DESIGN.md "Contracts"), and its reader.

``runs/<profile>/results/<notebook-stem>.json``::

    {notebook, profile, seeds, versions, device, wall_s, peak_rss_mb, peak_gpu_mb,
     rows: [{task: "classification"|"detection", method, label_fraction, seed, <metric>: value}],
     unavailable: [{method, reason}], stand_ins: [{artifact, reason}]}

``method`` names the pretraining ("scratch", "imagenet", "genesis", "mae", "simclr", "dcl",
"yaware", "pirads_conf", ...) so that notebook 06 can join every notebook's rows.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .io_utils import write_json_atomic
from .paths import results_dir

TASKS = ("classification", "detection", "summary")
ROW_KEYS = ("task", "method", "label_fraction", "seed")
TOP_KEYS = ("notebook", "profile", "seeds", "versions", "device", "wall_s", "peak_rss_mb",
            "peak_gpu_mb", "rows", "unavailable", "stand_ins")


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (and finished children), in MB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _peak_gpu_mb() -> float | None:
    try:
        import torch

        if torch.cuda.is_available():
            return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except Exception:  # pragma: no cover - no torch / broken driver
        pass
    return None


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


class Results:
    """Collect a notebook's result rows and write them atomically.

    >>> res = Results("01_transfer_learning", "smoke", seeds=[0])
    >>> res.add_row(task="classification", method="scratch", label_fraction=0.25, seed=0,
    ...             auroc_patient=0.71)
    >>> res.unavailable("imagenet", "no ImageNet weight file offline")
    >>> path = res.save()
    """

    def __init__(self, notebook: str, profile: str, seeds=(), device: str | None = None):
        self.notebook = Path(notebook).stem
        self.profile = profile
        self.seeds = list(seeds)
        self.device = device
        self.rows: list[dict] = []
        self._unavailable: list[dict] = []
        self._stand_ins: list[dict] = []
        self._t0 = time.perf_counter()

    def add_row(self, task: str, method: str, label_fraction: float | None, seed: int | None,
                **metrics) -> dict:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        row = {"task": task, "method": method,
               "label_fraction": None if label_fraction is None else float(label_fraction),
               "seed": None if seed is None else int(seed)}
        row.update({k: _clean(v) for k, v in metrics.items()})
        self.rows.append(row)
        return row

    def unavailable(self, method: str, reason: str) -> None:
        """Record an arm that could not run (and why); it shows in every table that joins it."""
        self._unavailable.append({"method": method, "reason": reason})

    def stand_in(self, artifact: str, reason: str) -> None:
        """Record that a missing input artifact was replaced by a quick stand-in."""
        self._stand_ins.append({"artifact": artifact, "reason": reason})

    def to_dict(self) -> dict:
        from .repro import package_versions

        return {
            "notebook": self.notebook,
            "profile": self.profile,
            "seeds": self.seeds,
            "versions": package_versions(),
            "device": self.device,
            "wall_s": round(time.perf_counter() - self._t0, 1),
            "peak_rss_mb": _peak_rss_mb(),
            "peak_gpu_mb": _peak_gpu_mb(),
            "rows": self.rows,
            "unavailable": self._unavailable,
            "stand_ins": self._stand_ins,
        }

    def save(self, directory: str | Path | None = None) -> Path:
        directory = Path(directory) if directory else results_dir(self.profile)
        return write_json_atomic(directory / f"{self.notebook}.json", self.to_dict())

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def validate_results(obj: dict, source: str = "results") -> dict:
    """Check a results dict against the schema; raise ValueError naming the problem."""
    missing = [k for k in TOP_KEYS if k not in obj]
    if missing:
        raise ValueError(f"{source}: missing keys {missing}")
    for i, row in enumerate(obj["rows"]):
        lacking = [k for k in ROW_KEYS if k not in row]
        if lacking:
            raise ValueError(f"{source}: row {i} lacks {lacking}")
        if row["task"] not in TASKS:
            raise ValueError(f"{source}: row {i} has unknown task {row['task']!r}")
    for kind, keys in (("unavailable", ("method", "reason")), ("stand_ins", ("artifact", "reason"))):
        for i, item in enumerate(obj[kind]):
            if not all(k in item for k in keys):
                raise ValueError(f"{source}: {kind}[{i}] needs {keys}")
    return obj


def load_results(profile_or_dir: str | Path) -> dict[str, dict]:
    """All results files of a profile (or a results folder), by notebook stem, validated."""
    d = Path(profile_or_dir)
    if not d.is_dir():
        d = results_dir(str(profile_or_dir))
    out = {}
    for path in sorted(d.glob("*.json")):
        out[path.stem] = validate_results(json.loads(path.read_text()), source=str(path))
    return out
