"""Result figures: learning curves, a metric against the label budget, paired deltas.

- :func:`plot_history` - a :func:`prostate_course.train.fit` history;
- :func:`plot_label_efficiency` - a metric against the labelled fraction, one line per arm;
- :func:`plot_deltas` - paired deltas against a reference arm with their 95 % intervals (the
  course's way to say "A beats B": an interval that excludes 0, never a threshold on a mean).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["plot_history", "plot_label_efficiency", "plot_deltas", "arm_labels"]


def arm_labels(df: pd.DataFrame) -> pd.Series:
    """"method" for fine-tuning rows, "method (linear probe)" / "method (knn)" otherwise."""
    proto = df["protocol"].fillna("finetune").astype(str)
    return pd.Series(np.where(proto == "finetune", df["method"],
                              df["method"] + " (" + proto.str.replace("_", " ") + ")"), index=df.index)


def plot_history(history: pd.DataFrame, ax=None, best_epoch: int | None = None):
    """Learning curves: training loss and (if any) validation loss on the left axis, the
    validation AUROC (slice level) on the right; the kept epoch dotted."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    h = history
    ax.plot(h["epoch"], h["train_loss"], "o-", label="train loss")
    if "val_loss" in h and h["val_loss"].notna().any():
        ax.plot(h["epoch"], h["val_loss"], "s-", label="val loss")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", ls=":", lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if "val_auroc" in h and h["val_auroc"].notna().any():
        ax2 = ax.twinx()
        ax2.plot(h["epoch"], h["val_auroc"], "^-", color="C2", label="val AUROC (slice)")
        ax2.set_ylabel("AUROC")
        ax2.set_ylim(0.0, 1.0)
        ax2.legend(loc="lower right")
    ax.legend(loc="upper right")
    return ax


def plot_label_efficiency(rows: pd.DataFrame, metric: str = "auroc_patient", ax=None,
                          references: dict | None = None):
    """``metric`` against the labelled fraction per arm: the mean over seeds (line) and the mean
    of the per-arm bootstrap 95 % interval bounds (band). ``references``: {name: value}
    horizontal lines (e.g. the readers' PI-RADS on the same test patients)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ax = ax or plt.gca()
    df = rows.assign(arm=arm_labels(rows))
    for i, (arm, d) in enumerate(df.groupby("arm", sort=False)):
        cols = [c for c in (metric, f"{metric}_lo", f"{metric}_hi") if c in d]
        m = d.groupby("label_fraction")[cols].mean()
        ax.plot(m.index, m[metric], "o-", color=f"C{i}", label=arm)
        if len(cols) == 3:
            ax.fill_between(m.index, m[f"{metric}_lo"], m[f"{metric}_hi"], color=f"C{i}", alpha=0.15)
    for j, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, color="k", ls=["--", "-.", ":"][j % 3], lw=1, label=name)
    ax.set_xscale("log")
    fr = sorted(df["label_fraction"].unique())
    ax.set_xticks(fr)
    ax.set_xticklabels([f"{f:.0%}" for f in fr])
    ax.xaxis.set_minor_formatter(NullFormatter())  # no "3 x 10^-1" labels between the budgets
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("labelled fraction of the training cases")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(fontsize=8)
    return ax


def plot_deltas(deltas: pd.DataFrame, ax=None, title: str | None = None):
    """Forest plot of :func:`prostate_course.compare.paired_deltas`: one marker per arm and
    budget at its delta, with its 95 % interval as a bar; budgets along the x axis, arms
    side by side; a line at 0 (no difference). Intervals that exclude 0 are drawn solid,
    the others hollow."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    df = deltas.assign(arm=arm_labels(deltas))
    arms = list(dict.fromkeys(df["arm"]))
    fracs = sorted(df["label_fraction"].unique())
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        d = df[df["arm"] == arm].set_index("label_fraction").reindex(fracs)
        x = np.arange(len(fracs)) - 0.4 + width * (i + 0.5)
        ok = d["delta"].notna().to_numpy()
        err = np.vstack([d["delta"] - d["delta_lo"], d["delta_hi"] - d["delta"]])
        ax.errorbar(x[ok], d["delta"][ok], yerr=err[:, ok], fmt="none", ecolor=f"C{i}", capsize=3)
        solid = ok & ((d["delta_lo"] > 0) | (d["delta_hi"] < 0)).to_numpy()
        ax.plot(x[solid], d["delta"][solid], "o", color=f"C{i}", label=arm)
        ax.plot(x[ok & ~solid], d["delta"][ok & ~solid], "o", mfc="white", color=f"C{i}",
                label=None if solid.any() else arm)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(fracs)))
    ax.set_xticklabels([f"{f:.0%}" for f in fracs])
    ax.set_xlabel("labelled fraction of the training cases")
    metric = df["metric"].iloc[0] if len(df) else "metric"
    ref = df["reference"].iloc[0] if len(df) else "reference"
    ax.set_ylabel(f"{metric} delta vs {ref} (95 % CI)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return ax
