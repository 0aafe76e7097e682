"""Detection figures (notebook 05): reference vs predicted lesions, FROC, ROC with readers.

- :func:`pick_examples` finds a hit, a missed lesion and a false positive in an evaluation
  (``prostate_course.detection.evaluate_detection`` with its detection maps kept);
- :func:`plot_overlays` shows each on T2W, ADC and HBV: the reference lesion in green, the
  predicted candidate in orange with its confidence (the course's closing image);
- :func:`plot_froc` - lesion sensitivity against false positives per case, 0.5 and 1 FP marked;
- :func:`plot_roc_readers` - the AI's case-level ROC with the readers' PI-RADS >= 3 and >= 4
  operating points, per report and pooled (and a student's own, from the reader study).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["REFERENCE_COLOUR", "PREDICTION_COLOUR", "pick_examples", "plot_overlays", "plot_froc",
           "plot_roc_readers"]

REFERENCE_COLOUR = "#00e676"    # green: the reference lesion
PREDICTION_COLOUR = "#ff9100"   # orange: the AI's lesion candidate
KINDS = ("hit", "miss", "false positive")


def _components(a):
    from scipy import ndimage

    return ndimage.label(np.asarray(a) > 0, structure=np.ones((3, 3, 3)))


def pick_examples(evaluation, reference, kinds=KINDS) -> pd.DataFrame:
    """One example per kind (the most confident hit, the largest missed lesion, the most
    confident false positive): case_id, case (position), z (the slice with most of it),
    confidence, and the reference lesion's ISUP. Kinds that do not occur are left out."""
    from ..detection.readers import reference_lesions

    ref_les = reference_lesions(evaluation, reference)
    pos = {c: i for i, c in enumerate(evaluation.case_ids)}
    rows = []
    for kind in kinds:
        if kind in ("hit", "miss"):
            cand = ref_les[ref_les.hit == (kind == "hit")]
            if cand.empty:
                continue
            r = (cand.sort_values("confidence", ascending=False) if kind == "hit"
                 else cand.sort_values("n_voxels", ascending=False)).iloc[0]
            i = pos[r.case_id]
            lab, _ = _components(reference[i])
            m = lab == r.lesion + 1
            rows.append({"kind": kind, "case_id": r.case_id, "case": i,
                         "z": int(m.reshape(m.shape[0], -1).sum(1).argmax()),
                         "confidence": float(r.confidence), "isup": int(r.isup)})
        else:
            les = evaluation.lesions
            fp = les[les.is_lesion == 0].sort_values("confidence", ascending=False)
            if fp.empty:
                continue
            r = fp.iloc[0]
            i = pos[r.case_id]
            det = evaluation.maps[i]
            m = np.isclose(det, r.confidence) & (det > 0)
            rows.append({"kind": kind, "case_id": r.case_id, "case": i,
                         "z": int(m.reshape(m.shape[0], -1).sum(1).argmax()),
                         "confidence": float(r.confidence), "isup": 0})
    return pd.DataFrame(rows, columns=["kind", "case_id", "case", "z", "confidence", "isup"])


def _slice_image(slices, case: int, z: int):
    """(3, H, W) image of slice z of case ``case`` from a SliceSet (None if not there)."""
    import torch

    hit = ((slices.case_index == case) & (slices.slice_z == z)).nonzero()
    if len(hit) == 0:
        return None
    return slices.images[int(hit[0, 0])].float().numpy() if isinstance(slices.images, torch.Tensor) \
        else np.asarray(slices.images[int(hit[0, 0])], float)


def plot_overlays(examples: pd.DataFrame, slices, reference, maps, *, channels=("T2W", "ADC", "HBV"),
                  axes=None):
    """One row per example, one column per sequence: the slice with the reference lesion
    contoured in green and the AI's candidate in orange (its confidence in the title). ``slices``:
    the test SliceSet (images by case and z); ``reference`` / ``maps``: the test cases' lesion
    masks and detection maps."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(examples)
    if n == 0:
        raise ValueError("no example to show (no hit, miss or false positive)")
    if axes is None:
        fig, axes = plt.subplots(n, len(channels), figsize=(2.9 * len(channels), 2.9 * n + 0.5), squeeze=False)
    else:
        axes = np.atleast_2d(axes)
        fig = axes[0, 0].figure
    from matplotlib.colors import ListedColormap

    fill = ListedColormap([PREDICTION_COLOUR])
    for r, (row, ex) in enumerate(zip(axes, examples.itertuples())):
        img = _slice_image(slices, ex.case, ex.z)
        ref = np.asarray(reference[ex.case][ex.z]) > 0
        det = np.asarray(maps[ex.case][ex.z]) > 0
        for c, (ax, name) in enumerate(zip(row, channels)):
            if img is not None:
                ax.imshow(img[c], cmap="gray", vmin=-2.5, vmax=2.5, interpolation="nearest")
            else:
                ax.imshow(np.zeros(ref.shape), cmap="gray", vmin=0, vmax=1)
            if det.any():      # the candidate: a light fill (small blobs stay visible) and a contour
                ax.imshow(np.ma.masked_where(~det, det), cmap=fill, alpha=0.35, interpolation="nearest")
                ax.contour(det, levels=[0.5], colors=[PREDICTION_COLOUR], linewidths=1.6, linestyles="--")
            if ref.any():
                ax.contour(ref, levels=[0.5], colors=[REFERENCE_COLOUR], linewidths=1.6)
            ax.set_xticks([]); ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=10)
        what = {"hit": f"hit, confidence {ex.confidence:.2f}", "miss": "missed lesion",
                "false positive": f"false positive, conf. {ex.confidence:.2f}"}[ex.kind]
        isup = f", ISUP {ex.isup}" if ex.isup else ""
        row[0].set_ylabel(f"{what}{isup}\n{ex.case_id}, slice {ex.z}", fontsize=8)
    fig.legend(handles=[Line2D([], [], color=REFERENCE_COLOUR, lw=2, label="reference lesion"),
                        Line2D([], [], color=PREDICTION_COLOUR, lw=2, ls="--", label="AI lesion candidate")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def plot_froc(curves: dict, ax=None, marks=(0.5, 1.0)):
    """FROC curves ``{label: DetectionEvaluation or DataFrame(fp_per_case, sensitivity)}``: lesion
    sensitivity against the mean number of false positives per case (log axis), with the
    operating points at ``marks`` FP per case."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for i, (label, c) in enumerate(curves.items()):
        f = c.froc() if hasattr(c, "froc") else c
        f = f[f.fp_per_case > 0]
        ax.step(f.fp_per_case, f.sensitivity, where="post", color=f"C{i}", label=label)
    for m in marks:
        ax.axvline(m, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlim(0.05, 10)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per case")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title("FROC")
    ax.legend(fontsize=8, loc="lower right")
    return ax


def plot_roc_readers(labels, ai_scores, readers: pd.DataFrame | None = None, ax=None, *,
                     student: pd.DataFrame | None = None, label: str = "AI (detection map max)",
                     student_label: str = "you"):
    """The AI's case-level ROC with reader operating points (rows of
    :func:`prostate_course.detection.readers.reader_operating_points`): circles for PI-RADS >= 3,
    squares for >= 4; hollow per report, filled pooled; ``student`` points (rows with
    threshold, sensitivity, specificity) as gold stars labelled ``student_label``."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    ax = ax or plt.gca()
    y = np.asarray(labels).astype(int)
    fpr, tpr, _ = roc_curve(y, np.asarray(ai_scores, float))
    ax.plot(fpr, tpr, color="C0", lw=2, label=f"{label}, AUROC {roc_auc_score(y, ai_scores):.2f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    marker = {"PI-RADS >= 3": "o", "PI-RADS >= 4": "s"}
    if readers is not None and len(readers):
        for thr, g in readers.groupby("threshold", sort=True):
            m = marker.get(thr, "D")
            pooled = g["reader"].eq("pooled")
            if (~pooled).any():
                ax.scatter(1 - g.specificity[~pooled], g.sensitivity[~pooled], s=28, marker=m,
                           facecolors="none", edgecolors="C3", label=f"single reports, {thr}")
            ax.scatter(1 - g.specificity[pooled], g.sensitivity[pooled], s=90, marker=m, color="C3",
                       edgecolors="k", zorder=5, label=f"pooled readers, {thr}")
    if student is not None and len(student):
        for thr, g in student.groupby("threshold", sort=True):
            ax.scatter(1 - g.specificity, g.sensitivity, s=300 if thr.endswith("3") else 200, marker="*",
                       color="gold" if thr.endswith("3") else "orange", edgecolors="k", zorder=6,
                       label=f"{student_label}, {thr}")
    ax.set_xlim(-0.02, 1.02); ax.set_ylim(-0.02, 1.04)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity")
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="lower right")
    return ax
