"""Notebook 06: every notebook's per-case scores, compared the same way, and what they allow us
to conclude.

**The primary endpoint** (declared in docs/PROTOCOL.md before any result, never changed after):
the patient-level AUROC delta of the PI-RADS-aware contrastive pretraining (``pirads_conf``,
notebook 04, fine-tuned) against fine-tuning from scratch, at the smallest label budget of the
profile, with its paired patient-bootstrap 95 % interval (:data:`PRIMARY`). Everything else -
other arms, budgets, read-outs, detection metrics - is *secondary*.

With m secondary comparisons at level 0.05, about 0.05 m of them look "significant" by chance
even when nothing works. :func:`holm` adjusts their bootstrap p-values (Holm 1979,
"A simple sequentially rejective multiple test procedure"): sort p_(1) <= ... <= p_(m), adjust
p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)); a comparison is resolved after adjustment
when p~ < 0.05. The family-wise error rate (any false "better" among the m) stays <= 0.05.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import compare

#: the course's one primary comparison
PRIMARY = {"task": "classification", "metric": "auroc", "method": "pirads_conf", "protocol": "finetune",
           "reference": "scratch", "budget": "smallest"}
#: the notebooks whose per-case scores notebook 06 compares
NOTEBOOKS = ("01_transfer_learning", "02_generative", "03_contrastive", "04_metadata_contrastive",
             "05_detection")
#: the metrics compared per task (lesion-level ones need the lesion results)
TASK_METRICS = {"classification": ("auroc",), "detection": ("auroc", "ap", "score")}


@dataclass
class CourseRun:
    """Everything a run wrote: results by notebook, per-case scores, lesion results, protocols."""

    directory: Path
    results: dict
    scores: pd.DataFrame
    lesions: pd.DataFrame
    protocols: dict
    missing: list = field(default_factory=list)

    @property
    def stand_ins(self) -> pd.DataFrame:
        rows = [{"notebook": nb, **s} for nb, r in self.results.items() for s in r["stand_ins"]]
        return pd.DataFrame(rows, columns=["notebook", "artifact", "reason"])

    @property
    def unavailable(self) -> pd.DataFrame:
        rows = [{"notebook": nb, **u} for nb, r in self.results.items() for u in r["unavailable"]]
        return pd.DataFrame(rows, columns=["notebook", "method", "protocol", "reason"])


def load_run(directory) -> CourseRun:
    """Read every results JSON, scores file and lesion file of a run's results folder (a
    profile name or a folder). Notebooks that left nothing are listed in ``missing``."""
    from .results import load_lesions, load_results, load_scores
    from .paths import results_dir

    d = Path(directory)
    if not d.is_dir():
        d = results_dir(str(directory))
    results = load_results(d) if d.is_dir() else {}
    scores, protocols = load_scores(d) if results else (pd.DataFrame(), {})
    lesions = load_lesions(d) if results else pd.DataFrame()
    missing = [nb for nb in NOTEBOOKS if nb not in results or not results[nb].get("scores")]
    return CourseRun(d, results, scores, lesions, protocols, missing)


def _with_reference(run: CourseRun, nb: str, reference: str) -> tuple[pd.DataFrame, str]:
    """Notebook ``nb``'s scores, plus the reference arm borrowed, read-out by read-out, from
    another notebook run under the same protocol (same hash) for every read-out ``nb`` has arms
    in but no reference of its own (e.g. 04 probes scratch itself but reuses 01's fine-tuned
    scratch). Returns the scores and where the reference came from ("" if nowhere)."""
    sc = run.scores[run.scores.notebook == nb]
    own = set(sc.loc[sc.method == reference, "protocol"])
    need = set(sc.loc[sc.method != reference, "protocol"].dropna()) - own
    want = (run.protocols.get(nb) or {}).get("hash")
    borrowed, sources = [], []
    for other, proto in run.protocols.items():
        if not need or not want:
            break
        if other == nb or (proto or {}).get("hash") != want:
            continue
        ref = run.scores[(run.scores.notebook == other) & (run.scores.method == reference)
                         & run.scores.protocol.isin(need)]
        if len(ref):
            borrowed.append(ref)
            sources.append(other)
            need -= set(ref.protocol)
    where = ([nb] if own else []) + sources
    return (pd.concat([sc, *borrowed], ignore_index=True) if borrowed else sc), ", ".join(where)


def all_deltas(run: CourseRun, reference: str = "scratch", n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Paired deltas against ``reference`` (same read-out protocol) for every notebook, task and
    metric of :data:`TASK_METRICS`, with the notebook, whether the arm is a stand-in, and where
    the reference came from. Clinical reference rows (no label fraction) are not compared."""
    from .detection import evaluate as _registers_ap_and_score  # noqa: F401

    out = []
    stand = run.stand_ins
    for nb in sorted(run.scores.notebook.unique()) if len(run.scores) else []:
        sc, ref_from = _with_reference(run, nb, reference)
        if not ref_from:
            continue
        sc = sc.drop(columns="notebook")
        les = run.lesions[run.lesions.notebook == nb].drop(columns="notebook") if len(run.lesions) else None
        for task, metrics in TASK_METRICS.items():
            if not (sc.task == task).any():
                continue
            for metric in metrics:
                lesion_level = isinstance(compare.METRICS.get(metric), compare.LesionMetric)
                if lesion_level and (les is None or les.empty):
                    continue
                d = compare.paired_deltas(sc, reference=reference, metric=metric, n_boot=n_boot,
                                          seed=seed, tasks=[task], lesions=les if lesion_level else None)
                if d.empty:
                    continue
                d.insert(0, "notebook", nb)
                d["reference_from"] = ref_from
                d["stand_in"] = d.method.isin(stand[stand.notebook == nb].artifact)
                out.append(d)
    if not out:
        return pd.DataFrame(columns=["notebook", *compare.DELTA_COLUMNS, "p_value", "stand_in"])
    # an encoder re-read by a later notebook (04 probes 03's DCL checkpoint) is the same
    # comparison again: counted once, in the notebook that made it (notebooks are in order)
    keys = ["task", "metric", "method", "protocol", "label_fraction"]
    return pd.concat(out, ignore_index=True).drop_duplicates(keys, keep="first").reset_index(drop=True)


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (see the module docstring); NaN stays NaN."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


def is_primary(deltas: pd.DataFrame, fractions) -> pd.Series:
    """Which rows are the primary comparison (:data:`PRIMARY`) at the smallest of ``fractions``."""
    smallest = min(fractions) if len(fractions) else np.nan
    p = PRIMARY
    return ((deltas.task == p["task"]) & (deltas.metric == p["metric"]) & (deltas.method == p["method"])
            & (deltas.protocol == p["protocol"]) & np.isclose(deltas.label_fraction.astype(float), smallest))


def endpoint_table(deltas: pd.DataFrame, fractions, alpha: float = 0.05) -> pd.DataFrame:
    """The deltas with ``role`` (primary / secondary), Holm-adjusted p over the secondary ones,
    and the verdict before and after adjustment."""
    d = deltas.copy()
    prim = is_primary(d, fractions) if len(d) else pd.Series(dtype=bool)
    d["role"] = np.where(prim, "primary", "secondary")
    d["p_holm"] = np.nan
    sec = d.role == "secondary"
    d.loc[sec, "p_holm"] = holm(d.loc[sec, "p_value"])
    d.loc[~sec, "p_holm"] = d.loc[~sec, "p_value"]
    d["verdict"] = compare.resolved(d) if len(d) else []
    d["verdict_holm"] = np.where(d.p_holm < alpha, d["verdict"], "not resolved")
    return d.sort_values(["role", "task", "metric", "label_fraction", "notebook", "method"],
                         key=lambda s: s.map({"primary": 0, "secondary": 1}) if s.name == "role" else s,
                         ignore_index=True)


def primary_sentence(table: pd.DataFrame, fractions) -> str:
    """The primary endpoint's result in one sentence (or why it is missing)."""
    p = PRIMARY
    smallest = min(fractions) if len(fractions) else float("nan")
    row = table[table.role == "primary"]
    what = (f"{p['method']} vs {p['reference']} (fine-tuned), patient AUROC, {smallest:.0%} of the labels")
    if row.empty:
        return f"Primary endpoint ({what}): NOT AVAILABLE in this run (the arm or its reference has no scores)."
    r = row.iloc[0]
    verdict = {"better": "better than scratch", "worse": "worse than scratch",
               "not resolved": "not distinguishable from scratch"}[r.verdict]
    flag = " (on a STAND-IN encoder)" if r.get("stand_in", False) else ""
    return (f"Primary endpoint ({what}): delta {r.delta:+.3f} (95 % CI {r.delta_lo:+.3f} to "
            f"{r.delta_hi:+.3f}, {int(r.n_test_patients)} test patients, {int(r.n_seeds)} seeds){flag} "
            f"-> {verdict}.")


def conclusions(table: pd.DataFrame, run: CourseRun, fractions) -> list[str]:
    """Plain-words conclusions computed from the numbers."""
    out = [primary_sentence(table, fractions)]
    sec = table[table.role == "secondary"]
    m = len(sec)
    raw = int((sec.verdict != "not resolved").sum())
    adj = int((sec.verdict_holm != "not resolved").sum())
    out.append(f"Secondary comparisons: {m}. Resolved at 95 % without adjustment: {raw} "
               f"(about {0.05 * m:.1f} expected by chance alone if no arm differed from scratch); "
               f"after Holm's adjustment: {adj}.")
    for (task, metric), g in sec.groupby(["task", "metric"]):
        better = sorted(set(g[g.verdict_holm == "better"].method))
        worse = sorted(set(g[g.verdict_holm == "worse"].method))
        hw = g.half_width.median()
        s = f"{task} {metric}: median 95 % half-width {hw:.3f}"
        s += f"; better than scratch after adjustment: {', '.join(better)}" if better else "; no arm resolved better than scratch after adjustment"
        if worse:
            s += f"; worse: {', '.join(worse)}"
        fr = sorted(g.label_fraction.unique())
        if len(fr) > 1:
            lo, hi = g[g.label_fraction == fr[0]].delta.mean(), g[g.label_fraction == fr[-1]].delta.mean()
            s += f"; mean delta {lo:+.3f} at {fr[0]:.0%} vs {hi:+.3f} at {fr[-1]:.0%} of the labels"
        out.append(s + ".")
    if (table.get("stand_in", pd.Series(dtype=bool)) == True).any():      # noqa: E712
        out.append("Some arms ran on quick stand-ins for missing pretraining checkpoints: they "
                   "measure the pipeline, not the method (flagged in the table).")
    if run.missing:
        out.append("Not in this run (no results): " + ", ".join(run.missing) + ".")
    return out


def limits(run: CourseRun, deltas: pd.DataFrame, profile=None) -> list[str]:
    """The limits of the evidence, with this run's numbers."""
    out = []
    key = next((p.get("dataset_key", "") for p in run.protocols.values() if p), "")
    if str(key).startswith("synthetic"):
        out.append("Data: a synthetic cohort with known ground truth, calibrated to the PI-CAI "
                   "marksheet but not real MRI; rankings of methods need not transfer to real scans.")
    else:
        out.append(f"Data: {key or 'unknown'}; one public dataset, centres and scanners of PI-CAI only.")
    if len(deltas):
        out.append(f"Size: {int(deltas.n_test_patients.max())} test patients; seeds per arm "
                   f"{int(deltas.n_seeds.min())}-{int(deltas.n_seeds.max())}. Intervals describe the "
                   "test-set uncertainty of the seed mean, not the spread of a new training run.")
    un = run.unavailable
    if len(un):
        why = {r.method: r.reason.split(":")[0].split(". ")[0].rstrip(".") for r in un.itertuples()}
        out.append("Not run: " + "; ".join(f"{m} ({w})" for m, w in sorted(why.items())) + ".")
    if len(run.stand_ins):
        out.append(f"Stand-ins: {', '.join(sorted(set(run.stand_ins.artifact)))} replaced missing "
                   "checkpoints with quick pretrainings.")
    out.append("2D slices of a 3D exam, one crop size, one resolution per profile, short training: "
               "the full PI-CAI challenge trains 3D networks for days.")
    return out


def plot_course_deltas(table: pd.DataFrame, axes=None):
    """One panel per (task, metric): deltas against scratch by label budget (viz.plot_deltas),
    the primary comparison ringed."""
    import matplotlib.pyplot as plt

    from .viz import plot_deltas

    panels = [(t, m) for t, ms in TASK_METRICS.items() for m in ms
              if len(table) and ((table.task == t) & (table.metric == m)).any()]
    if not panels:
        raise ValueError("no paired deltas to plot (no notebook with scratch and another arm)")
    if axes is None:
        _, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.9), squeeze=False)
        axes = axes[0]
    for ax, (task, metric) in zip(axes, panels):
        d = table[(table.task == task) & (table.metric == metric)].copy()
        label = d.method + np.where(d.protocol == "finetune", "", " (" + d.protocol.str.replace("_", " ") + ")")
        d["method"] = label + np.where(d.stand_in, " *", "")
        d["protocol"] = "finetune"
        plot_deltas(d, ax=ax, title=f"{task}: {metric}")
        prim = d[d.role == "primary"]
        if len(prim):
            ax.annotate("primary", xy=(0, prim.delta.iloc[0]), xytext=(0.25, 0.92), textcoords="axes fraction",
                        arrowprops={"arrowstyle": "->", "color": "k"}, fontsize=8)
    return axes[0].figure


__all__ = ["PRIMARY", "NOTEBOOKS", "TASK_METRICS", "CourseRun", "load_run", "all_deltas", "holm",
           "is_primary", "endpoint_table", "primary_sentence", "conclusions", "limits",
           "plot_course_deltas"]
