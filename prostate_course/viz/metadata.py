"""Figures of notebook 04: reader agreement, PI-RADS confidence, contrastive weight matrices and
the reader-noise experiment.

- :func:`plot_agreement_table` - PI-RADS of one report against another of the same exam;
- :func:`plot_confidence` - histogram of the exams' confidence, the statuses beside it;
- :func:`plot_weight_matrix` - a row-normalised weight matrix W~ (anchor rows), exams grouped;
- :func:`plot_noise_experiment` - paired delta of two methods against the reader noise.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["plot_agreement_table", "plot_confidence", "plot_weight_matrix", "plot_noise_experiment"]


def plot_agreement_table(table: pd.DataFrame, ax=None, title: str | None = None):
    """Heatmap of :func:`prostate_course.ssl.metadata.agreement_table` with the counts written
    in each cell; the diagonal (both reports agree) outlined."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ax = ax or plt.gca()
    m = np.asarray(table, dtype=float)
    ax.imshow(m, cmap="Blues")
    top = m.max() if m.size and m.max() > 0 else 1.0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if m[i, j] > 0.6 * top else "black")
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, lw=1.2, ec="k"))
    ax.set_xticks(range(m.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(m.shape[0]), [str(c) for c in table.index])
    ax.set_xlabel("PI-RADS of another report of the exam")
    ax.set_ylabel("PI-RADS of one report")
    ax.set_title(title or f"{int(m.sum()) // 2} report pairs within exams")
    return ax


def plot_confidence(status: pd.DataFrame, ax=None, bins: int = 20, title: str | None = None):
    """Histogram of ``pirads_conf`` of the annotated exams of
    :func:`prostate_course.ssl.metadata.report_status`, one colour per status ("agreement",
    "single report"); the unannotated exams are counted in the legend."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    edges = np.linspace(0, 1, bins + 1)
    for k, (name, colour) in enumerate((("agreement", "C0"), ("single report", "C1"))):
        c = status.loc[status["status"] == name, "pirads_conf"].to_numpy(dtype=float)
        ax.hist(c, bins=edges, color=colour, alpha=0.8, label=f"{name} ({len(c)})")
    n_un = int(status["pirads_majority"].isna().sum())
    ax.plot([], [], " ", label=f"unannotated: tie or no usable report ({n_un})")
    ax.set_xlabel("confidence c = 2 (p_maj - 1/2)")
    ax.set_ylabel("exams")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(title or "how sure the readers are")
    return ax


def plot_weight_matrix(W, ax=None, groups=None, title: str | None = None, vmax: float | None = None):
    """A (B, B) or (2B, 2B) row-normalised weight matrix: row i = how anchor i spreads its
    attraction over the other samples (0 = negative). ``groups``: a label per row (e.g. "1
    c=0.33"), written on the y axis."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    W = np.asarray(W, dtype=float)
    im = ax.imshow(W, cmap="magma_r", vmin=0, vmax=vmax or max(W.max(), 1e-9))
    if groups is not None:
        ax.set_yticks(range(len(groups)), list(groups), fontsize=6)
    else:
        ax.set_yticks([])
    ax.set_xticks([])
    ax.set_xlabel("other sample")
    ax.set_ylabel("anchor")
    plt.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_noise_experiment(deltas: pd.DataFrame, ax=None, summary: pd.DataFrame | None = None,
                          title: str | None = None):
    """``delta`` with its 95 % interval against ``reader_noise`` (one point per level); with
    ``summary`` (:func:`prostate_course.ssl.metadata.reader_noise_summary`) the reports' mean
    confidence on a second axis."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    d = deltas.sort_values("reader_noise")
    x = d["reader_noise"].to_numpy(dtype=float)
    err = np.vstack([d["delta"] - d["delta_lo"], d["delta_hi"] - d["delta"]])
    ax.errorbar(x, d["delta"], yerr=err, fmt="o-", capsize=4, color="C0",
                label=f"{d['method'].iloc[0]} - {d['reference'].iloc[0]}" if len(d) else None)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("reader noise (sd of each reading)")
    ax.set_ylabel("AUROC delta (95 % CI)")
    ax.legend(loc="upper left", fontsize=8)
    if summary is not None:
        ax2 = ax.twinx()
        s = summary.sort_values("reader_noise")
        ax2.plot(s["reader_noise"], s["mean confidence (>= 2 usable)"], "s--", color="C1",
                 label="mean confidence")
        ax2.set_ylabel("mean confidence", color="C1")
        ax2.set_ylim(0, 1.05)
        ax2.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    return ax
