"""Figures of representations (notebooks 03-04): embedding maps and alignment vs uniformity.

- :func:`plot_embedding` - a 2D map (t-SNE) of frozen features, one colour per class (csPCa
  or not; PI-RADS 1-5 with "no report"), counts in the legend;
- :func:`plot_alignment_uniformity` - Wang & Isola's (2020) plane: alignment (x) against
  uniformity (y), both lower-is-better, one trajectory per method over the pretraining epochs
  and its last epoch marked.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["plot_embedding", "plot_alignment_uniformity"]


def plot_embedding(xy, labels, ax=None, title: str | None = None, names: dict | None = None,
                   cmap: str | None = None, size: float = 6.0, missing: str = "missing"):
    """Scatter ``xy`` (N, 2) coloured by ``labels`` (N,): one colour and legend entry per
    value ("name (count)"), NaN shown in grey as ``missing``. ``names`` maps values to legend
    names (e.g. {0: "no csPCa", 1: "csPCa"}); ``cmap`` colours ordered classes (e.g.
    "viridis" for PI-RADS), else the default cycle. Rare classes are drawn last (on top)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    xy = np.asarray(xy, dtype=float)
    y = pd.Series(np.asarray(labels, dtype=float).ravel())
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) != len(y):
        raise ValueError(f"plot_embedding needs (N, 2) points and N labels, got {xy.shape} and {len(y)}")
    values = sorted(y.dropna().unique())
    colours = (plt.get_cmap(cmap)(np.linspace(0.0, 0.9, len(values))) if cmap
               else [f"C{i}" for i in range(len(values))])
    groups = [(v, colours[i], y == v) for i, v in enumerate(values)]
    if y.isna().any():
        groups.insert(0, (None, "0.75", y.isna()))
    groups.sort(key=lambda g: -int(g[2].sum()))          # large classes first, rare ones on top
    for v, colour, m in groups:
        name = missing if v is None else (names or {}).get(v, (names or {}).get(int(v), f"{v:g}"))
        ax.scatter(xy[m.to_numpy(), 0], xy[m.to_numpy(), 1], s=size, color=colour, alpha=0.8,
                   linewidths=0, label=f"{name} ({int(m.sum())})")
    ax.set_xticks([]), ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="best")
    if title:
        ax.set_title(title)
    return ax


def plot_alignment_uniformity(df: pd.DataFrame, ax=None, title: str | None = None,
                              x: str = "align", y: str = "uniform", by: str = "method"):
    """One line per ``by`` group through its (``x``, ``y``) points in ``epoch`` order (when
    there is an ``epoch`` column), a filled marker at the last point, a hollow one at the
    first. Lower-left is better (well aligned views, uniformly spread images)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for col in (x, y, by):
        if col not in df:
            raise ValueError(f"plot_alignment_uniformity needs a {col!r} column, got {list(df.columns)}")
    for i, (name, d) in enumerate(df.groupby(by, sort=False)):
        d = d.sort_values("epoch") if "epoch" in d else d
        colour = f"C{i}"
        ax.plot(d[x], d[y], "-", color=colour, lw=1, alpha=0.7)
        ax.plot(d[x].iloc[:1], d[y].iloc[:1], "o", mfc="white", color=colour)
        ax.plot(d[x].iloc[-1:], d[y].iloc[-1:], "o", color=colour, label=str(name))
    ax.set_xlabel("alignment  E||z - z'||^2  (lower: views agree)")
    ax.set_ylabel("uniformity  log E exp(-2||z_i - z_j||^2)  (lower: spread)")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax
