"""The results file every notebook writes (docs/ARCHITECTURE.md "Results"), and its reader.

``runs/<profile>/results/<notebook-stem>.json``::

    {notebook, profile, seeds, versions, device, wall_s, peak_rss_mb, peak_gpu_mb,
     rows: [{task: "classification"|"detection"|"summary", method, protocol, label_fraction,
             seed, <metric>: value}],
     scores: "<notebook-stem>.scores.csv" | null, protocol: {settings, hash} | null,
     unavailable: [{method, protocol, reason}], stand_ins: [{artifact, reason}]}

``method`` names the pretraining ("scratch", "imagenet", "genesis", "mae", "simclr", "dcl",
"yaware", "pirads_conf", ...) and ``protocol`` how it was read out, so that notebook 06 can join
every notebook's rows. Beside the JSON, ``<stem>.scores.csv`` holds the per-case test scores
(one row per case, task, method, protocol, label fraction and seed:
:data:`prostate_course.compare.SCORE_COLUMNS`), the basis of every paired comparison; the
validator checks that the file exists and matches the rows. Detection (notebook 05) adds
``<stem>.lesions.csv`` (key ``lesions``): one row per lesion candidate or reference lesion
(:data:`prostate_course.compare.LESION_COLUMNS`), the basis of paired AP comparisons. A results
file may also list ``figures`` ([{file, caption}], paths relative to ``runs/<profile>/``) and
``report_tables`` ([{title, rows}]) for the run's report.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .io_utils import atomic_path, write_json_atomic
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
        self._scores: list = []
        self.protocol: dict | None = None
        self._unavailable: list[dict] = []
        self._stand_ins: list[dict] = []
        self._lesions: list = []
        self.figures: list[dict] = []
        self.report_tables: list[dict] = []
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

    def unavailable(self, method: str, reason: str, protocol: str | None = None) -> None:
        """Record an arm that could not run (and why); it shows in every table that joins it."""
        self._unavailable.append({"method": method, "protocol": protocol, "reason": reason})

    def add_scores(self, scores) -> None:
        """Keep per-case test scores (a DataFrame in the long format) for the scores file."""
        from .compare import check_scores

        self._scores.append(check_scores(scores, f"{self.notebook} scores"))

    def scores(self):
        """All per-case scores added so far (a DataFrame; empty without any)."""
        import pandas as pd

        return pd.concat(self._scores, ignore_index=True) if self._scores else pd.DataFrame()

    def add_lesions(self, lesions) -> None:
        """Keep lesion-level results (a DataFrame with :data:`~prostate_course.compare.LESION_COLUMNS`)."""
        from .compare import LESION_COLUMNS

        missing = [c for c in LESION_COLUMNS if c not in lesions.columns]
        if missing:
            raise ValueError(f"{self.notebook} lesions: missing columns {missing}")
        self._lesions.append(lesions)

    def lesions(self):
        """All lesion-level results added so far (a DataFrame; empty without any)."""
        import pandas as pd

        return pd.concat(self._lesions, ignore_index=True) if self._lesions else pd.DataFrame()

    def add_figure(self, fig, name: str, caption: str = "", dpi: int = 110) -> str:
        """Save a matplotlib figure as ``runs/<profile>/figures/<notebook>/<name>.png`` (for the
        report and the published run) and list it; returns the path relative to the run root."""
        from .paths import run_root

        rel = f"figures/{self.notebook}/{name}.png"
        with atomic_path(run_root(self.profile) / rel) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        self.figures = [f for f in self.figures if f["file"] != rel] + [{"file": rel, "caption": caption}]
        return rel

    def add_report_table(self, title: str, table) -> None:
        """A table (DataFrame or list of dicts) the run's report shows under this notebook."""
        rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
        self.report_tables = [t for t in self.report_tables if t["title"] != title]
        self.report_tables.append({"title": title, "rows": [{k: _clean(v) for k, v in r.items()} for r in rows]})

    def set_protocol(self, settings: dict) -> None:
        """Record the protocol settings (with their ``hash``) the scores were made under."""
        self.protocol = dict(settings)

    def stand_in(self, artifact: str, reason: str) -> None:
        """Record that a missing input artifact was replaced by a quick stand-in (once)."""
        entry = {"artifact": artifact, "reason": reason}
        if entry not in self._stand_ins:
            self._stand_ins.append(entry)

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
            "scores": self.scores_file if self._scores else None,
            "lesions": self.lesions_file if self._lesions else None,
            "figures": self.figures,
            "report_tables": self.report_tables,
            "protocol": self.protocol,
            "unavailable": self._unavailable,
            "stand_ins": self._stand_ins,
        }

    @property
    def scores_file(self) -> str:
        return f"{self.notebook}.scores.csv"

    @property
    def lesions_file(self) -> str:
        return f"{self.notebook}.lesions.csv"

    def save(self, directory: str | Path | None = None) -> Path:
        """Write the scores file (if any), then the JSON that names it, both atomically."""
        directory = Path(directory) if directory else results_dir(self.profile)
        if self._scores:
            with atomic_path(directory / self.scores_file) as tmp:
                self.scores().to_csv(tmp, index=False)
        if self._lesions:
            with atomic_path(directory / self.lesions_file) as tmp:
                self.lesions().to_csv(tmp, index=False)
        out = self.to_dict()
        validate_results(out, source=self.notebook, directory=directory)
        return write_json_atomic(directory / f"{self.notebook}.json", out)

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def validate_results(obj: dict, source: str = "results", directory: str | Path | None = None) -> dict:
    """Check a results dict against the schema; raise ValueError naming the problem.

    With ``directory`` (where the JSON lives) the scores file it names must exist beside it,
    hold the score columns, and score only arms that have result rows.
    """
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
    if obj.get("scores") and directory is not None:
        _validate_scores_link(obj, source, Path(directory))
    if obj.get("lesions") and directory is not None:
        _validate_lesions_link(obj, source, Path(directory))
    return obj


def _validate_lesions_link(obj: dict, source: str, directory: Path) -> None:
    import pandas as pd

    from .compare import LESION_COLUMNS

    path = directory / obj["lesions"]
    if not path.is_file():
        raise ValueError(f"{source}: names the lesion results {path.name}, which do not exist in {directory}")
    lacking = [c for c in LESION_COLUMNS if c not in pd.read_csv(path, nrows=0).columns]
    if lacking:
        raise ValueError(f"{source}: lesion results {path.name} lack columns {lacking}")


def _validate_scores_link(obj: dict, source: str, directory: Path) -> None:
    import pandas as pd

    from .compare import SCORE_COLUMNS

    path = directory / obj["scores"]
    if not path.is_file():
        raise ValueError(f"{source}: names the scores file {path.name}, which does not exist in {directory}")
    head = pd.read_csv(path, nrows=0).columns
    lacking = [c for c in SCORE_COLUMNS if c not in head]
    if lacking:
        raise ValueError(f"{source}: scores file {path.name} lacks columns {lacking}")
    sc = pd.read_csv(path, usecols=["task", "method", "protocol", "label_fraction"])
    trained = sc[sc["label_fraction"].notna()].drop_duplicates()
    have = {(r.get("task"), r.get("method"), r.get("protocol"), r.get("label_fraction"))
            for r in obj["rows"]}
    orphans = [t for t in trained.itertuples(index=False) if tuple(t) not in have]
    if orphans:
        raise ValueError(f"{source}: scores file {path.name} scores arms without result rows, "
                         f"e.g. {tuple(orphans[0])}")


def load_results(profile_or_dir: str | Path) -> dict[str, dict]:
    """All results files of a profile (or a results folder), by notebook stem, validated."""
    d = Path(profile_or_dir)
    if not d.is_dir():
        d = results_dir(str(profile_or_dir))
    out = {}
    for path in sorted(d.glob("*.json")):
        out[path.stem] = validate_results(json.loads(path.read_text()), source=str(path), directory=d)
    return out


def load_lesions(profile_or_dir: str | Path, notebooks=None):
    """The lesion-level results of every (or the named) notebook of a run that saved them, with
    a ``notebook`` column (empty DataFrame when none did)."""
    import pandas as pd

    d = Path(profile_or_dir)
    if not d.is_dir():
        d = results_dir(str(profile_or_dir))
    frames = [pd.read_csv(d / res["lesions"], dtype={"case_id": str}).assign(notebook=stem)
              for stem, res in load_results(d).items()
              if res.get("lesions") and (notebooks is None or stem in notebooks)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_scores(profile_or_dir: str | Path, notebooks=None):
    """The per-case scores of every (or the named) notebook of a run, with a ``notebook``
    column, and each notebook's protocol settings: ``(scores, {stem: protocol})``."""
    import pandas as pd

    d = Path(profile_or_dir)
    if not d.is_dir():
        d = results_dir(str(profile_or_dir))
    frames, protocols = [], {}
    for stem, res in load_results(d).items():
        if notebooks is not None and stem not in notebooks or not res.get("scores"):
            continue
        frames.append(pd.read_csv(d / res["scores"], dtype={"case_id": str, "patient_id": str})
                      .assign(notebook=stem))
        protocols[stem] = res.get("protocol")
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), protocols
