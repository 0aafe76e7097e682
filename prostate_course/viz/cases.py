"""Case and cohort figures: raw-case overlays, a slice viewer, cohort and reader-study plots.

- :func:`load_raw_case` reads one case of the raw PI-CAI layout (SimpleITK for the ``.mha``
  images, nibabel via :func:`prostate_course.data.readers.read_mask` for the masks) into a
  :class:`RawCase` that can resample ADC/HBV onto the T2W grid for display.
- :func:`overlay`, :func:`show_case`, :func:`slice_viewer` (ipywidgets, with a static figure
  when widgets or a live frontend are not available).
- :func:`plot_anatomy` (the structures of one slice, labelled), :func:`plot_annotators` and
  :func:`plot_annotation_agreement` (simulated annotators and their pairwise Dice).
- :func:`plot_missing`, :func:`plot_pirads_vs_isup`, :func:`plot_reader_agreement`,
  :func:`annotation_costs` for notebook 00.

Colours: gland blue, PZ green, TZ pink; lesions by ISUP (2 yellow, 3 orange, 4 red, 5 magenta,
1 = "csPCa, grade unknown" white). Images are shown in radiological view (anterior up, patient
left on the image right), as the arrays come: (z, y, x) with y pointing posterior.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "ISUP_COLOURS", "RawCase", "load_raw_case", "geometry_table", "overlay", "show_case",
    "slice_viewer", "plot_missing", "plot_pirads_vs_isup", "plot_reader_agreement",
    "annotation_costs", "widgets_available", "plot_anatomy", "plot_annotators",
    "plot_annotation_agreement",
]

SEQUENCES = ("t2w", "adc", "hbv")
SEQ_NAMES = {"t2w": "T2W", "adc": "ADC", "hbv": "HBV (high b)"}
ISUP_COLOURS = {1: "#ffffff", 2: "#ffd600", 3: "#ff9100", 4: "#ff1744", 5: "#d500f9"}
GLAND_COLOUR = "#40c4ff"
ZONE_COLOURS = {1: "#00e676", 2: "#ff80ab"}
STATIC_ENV = "PROSTATE_COURSE_STATIC"  # set to 1 to force static figures (CI, HTML exports)


# ---------------------------------------------------------------------------------- loading
@dataclass
class RawCase:
    """One case of the raw layout: native SimpleITK images and masks (T2W grid)."""

    case_id: str
    images: dict                        # "t2w"/"adc"/"hbv" -> SimpleITK.Image (native grids)
    masks: dict                         # "gland"/"zones"/"lesions" -> SimpleITK.Image or None
    sources: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def reference(self):
        """The T2W image (or, without images, the first mask): the display grid."""
        if "t2w" in self.images:
            return self.images["t2w"]
        for m in self.masks.values():
            if m is not None:
                return m
        raise ValueError(f"case {self.case_id}: neither images nor masks were found")

    @property
    def n_slices(self) -> int:
        return int(self.reference.GetSize()[2])

    def array(self, seq: str) -> np.ndarray | None:
        """Sequence ``seq`` as float32 (z, y, x) on the T2W grid (ADC/HBV resampled, linear)."""
        import SimpleITK as sitk

        if seq not in self.images:
            return None
        if seq not in self._cache:
            img = self.images[seq]
            ref = self.reference
            if not _same_grid(img, ref):
                img = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            self._cache[seq] = sitk.GetArrayFromImage(img).astype(np.float32)
        return self._cache[seq]

    def mask(self, name: str) -> np.ndarray | None:
        import SimpleITK as sitk

        m = self.masks.get(name)
        if m is None:
            return None
        key = f"mask:{name}"
        if key not in self._cache:
            if not _same_grid(m, self.reference):
                m = sitk.Resample(m, self.reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            self._cache[key] = sitk.GetArrayFromImage(m).astype(np.uint8)
        return self._cache[key]

    def default_slice(self) -> int:
        """The slice with the most lesion voxels, else the gland's middle slice, else the centre."""
        for name in ("lesions", "gland"):
            m = self.mask(name)
            if m is not None and m.any():
                per = (m > 0).sum(axis=(1, 2))
                return int(np.argmax(per)) if name == "lesions" else int(np.round(np.average(np.arange(len(per)), weights=per)))
        return self.n_slices // 2


def _same_grid(a, b, tol: float = 1e-3) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def load_raw_case(raw_root: str | os.PathLike | None = None, case_id: str | None = None, *,
                  labels_root: str | os.PathLike | None = None) -> RawCase:
    """Read one case from ``raw_root`` (``images/`` + ``labels/``) or from a picai_labels folder.

    ``case_id`` (``<pid>_<sid>``) defaults to the first csPCa case that has a lesion mask (so
    there is something to see), else the first case. With only ``labels_root`` (the real
    picai_labels sample: no images), the case has masks only.
    """
    from ..data.readers import DataReadError, find_labels, image_paths, read_mask, read_sitk

    if raw_root is None and labels_root is None:
        raise ValueError("give raw_root (images/ + labels/) or labels_root (a picai_labels folder)")
    labels = Path(labels_root) if labels_root is not None else Path(raw_root) / "labels"
    images_root = Path(raw_root) / "images" if raw_root is not None else None
    if not labels.is_dir():
        raise DataReadError(labels, "labels folder not found")
    if case_id is None:
        case_id = _pick_case(labels, images_root)
    lp = find_labels(labels, case_id)
    images, paths = {}, {}
    if images_root is not None and images_root.is_dir():
        for seq, p in image_paths(images_root, case_id).items():
            if p.is_file():
                images[seq] = read_sitk(p)
                paths[seq] = p
    masks = {}
    for name, p in (("gland", lp.gland), ("zones", lp.zones), ("lesions", lp.lesion)):
        masks[name] = read_mask(p) if p is not None else None
        if p is not None:
            paths[name] = p
    if not images and not any(m is not None for m in masks.values()):
        raise DataReadError(labels, f"case {case_id}: no images and no masks found")
    return RawCase(case_id, images, masks, paths=paths,
                   sources={"gland": lp.gland_source, "zones": lp.zones_source, "lesions": lp.lesion_source})


def _pick_case(labels: Path, images_root: Path | None) -> str:
    from ..data.readers import MARKSHEET, find_labels, list_cases, read_marksheet

    ms = labels / MARKSHEET
    have = set(list_cases(images_root)) if images_root is not None and images_root.is_dir() else None
    if ms.is_file():
        df = read_marksheet(ms)
        df = df.sort_values(["case_csPCa", "case_ISUP"], ascending=False, kind="stable")
        for cid in df["case_id"]:
            if have is not None and cid not in have:
                continue
            lp = find_labels(labels, cid)
            if lp.lesion is not None and (have is not None or lp.gland is not None):
                return cid
    if have:
        return sorted(have)[0]
    found = sorted(p.name[: -len(".nii.gz")] for p in labels.rglob("*.nii.gz"))
    if not found:
        raise FileNotFoundError(f"no cases found under {labels}")
    return found[0]


def geometry_table(case: RawCase) -> pd.DataFrame:
    """Size, spacing, origin, direction and orientation code of every image and mask of a case."""
    import nibabel as nib

    from ..data.readers import sitk_affine_ras

    rows = []
    for name, img in [*case.images.items(), *case.masks.items()]:
        if img is None:
            continue
        aff = sitk_affine_ras(img)
        d = np.array(img.GetDirection()).reshape(3, 3)
        rows.append({
            "item": name, "size (x, y, z)": tuple(int(v) for v in img.GetSize()),
            "spacing mm": tuple(round(float(v), 3) for v in img.GetSpacing()),
            "origin mm (LPS)": tuple(round(float(v), 1) for v in img.GetOrigin()),
            "tilt deg": round(float(np.degrees(np.arccos(np.clip(d[2, 2], -1, 1)))), 1),
            "in-plane rotation deg": round(float(np.degrees(np.arctan2(d[1, 0], d[0, 0]))), 1),
            "axcodes (nibabel)": "".join(nib.aff2axcodes(aff)),
            "field of view mm": tuple(round(float(s * n), 0) for s, n in zip(img.GetSpacing(), img.GetSize())),
        })
    return pd.DataFrame(rows).set_index("item")


# ---------------------------------------------------------------------------------- drawing
def _window(img: np.ndarray, lo: float = 1, hi: float = 99.5) -> tuple[float, float]:
    vals = img[img > 0] if np.any(img > 0) else img.ravel()
    if vals.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(vals, [lo, hi])
    return float(a), float(max(b, a + 1e-6))


def overlay(ax, image: np.ndarray | None, gland: np.ndarray | None = None, zones: np.ndarray | None = None,
            lesions: np.ndarray | None = None, *, title: str | None = None, window=None,
            aspect: float = 1.0, linewidth: float = 1.2) -> None:
    """Draw a 2D slice with contours: gland (blue), PZ/TZ (green/pink), lesions by ISUP."""
    shape = next((a.shape for a in (image, gland, zones, lesions) if a is not None), None)
    if shape is None:
        raise ValueError("overlay needs an image or at least one mask")
    if image is None:
        ax.imshow(np.zeros(shape), cmap="gray", vmin=0, vmax=1, aspect=aspect)
    else:
        vmin, vmax = window or _window(image)
        ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
    if gland is not None and np.any(gland > 0):
        ax.contour(gland > 0, levels=[0.5], colors=[GLAND_COLOUR], linewidths=linewidth)
    if zones is not None:
        for v, c in ZONE_COLOURS.items():
            if np.any(zones == v):
                ax.contour(zones == v, levels=[0.5], colors=[c], linewidths=linewidth * 0.8, linestyles="--")
    if lesions is not None:
        for v in sorted(int(x) for x in np.unique(lesions) if x > 0):
            ax.contour(lesions == v, levels=[0.5], colors=[ISUP_COLOURS.get(v, "#ffffff")], linewidths=linewidth * 1.3)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(fig, lesion_values=()) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=GLAND_COLOUR, label="gland"),
               Line2D([], [], color=ZONE_COLOURS[1], ls="--", label="PZ"),
               Line2D([], [], color=ZONE_COLOURS[2], ls="--", label="TZ")]
    handles += [Line2D([], [], color=ISUP_COLOURS[v], lw=2, label=f"lesion ISUP {v}") for v in sorted(lesion_values)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)


def show_case(case: RawCase, z: int | None = None, *, sequences=SEQUENCES, overlays: bool = True,
              native: bool = False, figsize=None):
    """The three sequences side by side at T2W slice ``z`` (default: most lesion voxels).

    ``native=True`` shows each sequence on its own grid (nearest slice to the same world point,
    axes in voxels): T2W ~384 px, ADC/HBV ~128 px: they must be resampled before stacking.
    Otherwise ADC/HBV are resampled onto the T2W grid and the masks drawn on all three.
    """
    import matplotlib.pyplot as plt

    z = case.default_slice() if z is None else int(z)
    if not 0 <= z < case.n_slices:
        raise ValueError(f"slice {z} outside 0..{case.n_slices - 1} of case {case.case_id}")
    seqs = [s for s in sequences if s in case.images] or ["masks"]
    fig, axes = plt.subplots(1, len(seqs), figsize=figsize or (3.6 * len(seqs), 4.0), squeeze=False)
    les = case.mask("lesions")
    for ax, s in zip(axes[0], seqs):
        if native and s in case.images:
            img, k = _native_slice(case, s, z)
            sp = case.images[s].GetSpacing()
            ax.imshow(img, cmap="gray", vmin=_window(img)[0], vmax=_window(img)[1], aspect=sp[1] / sp[0])
            ax.set_title(f"{SEQ_NAMES[s]} native: {img.shape[1]} x {img.shape[0]} px, "
                         f"{sp[0]:.2f} mm, slice {k}", fontsize=8)
            ax.tick_params(labelsize=7)
            continue
        m = {}
        if overlays:
            m = {"gland": case.mask("gland"), "zones": case.mask("zones"), "lesions": les}
            m = {k: (v[z] if v is not None else None) for k, v in m.items()}
        img = case.array(s)
        overlay(ax, img[z] if img is not None else None, **m,
                title=f"{SEQ_NAMES.get(s, 'masks only (no images)')} | slice {z}")
    if overlays and not native:
        vals = [int(v) for v in np.unique(les[z]) if v > 0] if les is not None else []
        _legend(fig, vals)
    fig.suptitle(f"case {case.case_id}" + (" (native grids)" if native else " (on the T2W grid)"), fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return fig


def _native_slice(case: RawCase, seq: str, z: int):
    """The slice of ``seq``'s own grid nearest to the centre of T2W slice ``z``."""
    import SimpleITK as sitk

    ref = case.reference
    nx, ny, _ = ref.GetSize()
    pt = ref.TransformContinuousIndexToPhysicalPoint(((nx - 1) / 2, (ny - 1) / 2, float(z)))
    img = case.images[seq]
    k = int(np.clip(round(img.TransformPhysicalPointToContinuousIndex(pt)[2]), 0, img.GetSize()[2] - 1))
    return sitk.GetArrayViewFromImage(img)[k].astype(np.float32), k


def widgets_available() -> bool:
    """True in a Jupyter kernel with ipywidgets installed and static mode not forced."""
    if os.environ.get(STATIC_ENV, "").strip() not in ("", "0"):
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def slice_viewer(case: RawCase, *, interactive: bool | None = None, n_static: int = 4):
    """Slice slider, sequence selector and overlay toggles (ipywidgets).

    Without ipywidgets or a live frontend (papermill, an HTML export, ``PROSTATE_COURSE_STATIC=1``)
    it returns a static montage instead: ``n_static`` slices through the gland, T2W with overlays.
    """
    import matplotlib.pyplot as plt

    if interactive is None:
        interactive = widgets_available()
    if not interactive:
        gl = case.mask("gland")
        zs = np.nonzero(gl.reshape(gl.shape[0], -1).any(1))[0] if gl is not None and gl.any() else np.arange(case.n_slices)
        picks = np.unique(np.linspace(zs.min(), zs.max(), n_static).round().astype(int))
        fig, axes = plt.subplots(1, len(picks), figsize=(3.0 * len(picks), 3.4), squeeze=False)
        seq = "t2w" if "t2w" in case.images else None
        img = case.array(seq) if seq else None
        m = {k: case.mask(k) for k in ("gland", "zones", "lesions")}
        for ax, z in zip(axes[0], picks):
            overlay(ax, img[z] if img is not None else None,
                    **{k: (v[z] if v is not None else None) for k, v in m.items()}, title=f"slice {z}")
        fig.suptitle(f"case {case.case_id}: static view (no interactive widgets here)", fontsize=10)
        fig.tight_layout()
        return fig

    import ipywidgets as W
    from IPython.display import display

    seqs = [s for s in SEQUENCES if s in case.images] or ["masks"]
    z = W.IntSlider(value=case.default_slice(), min=0, max=case.n_slices - 1, description="slice",
                    continuous_update=False)
    seq = W.Dropdown(options=[(SEQ_NAMES.get(s, s), s) for s in seqs], value=seqs[0], description="sequence")
    boxes = {k: W.Checkbox(value=True, description=k) for k in ("gland", "zones", "lesions")}

    def draw(z, seq, gland, zones, lesions):
        fig, ax = plt.subplots(figsize=(5.5, 5.5))
        show = {"gland": gland, "zones": zones, "lesions": lesions}
        m = {k: (case.mask(k)[z] if show[k] and case.mask(k) is not None else None) for k in show}
        img = case.array(seq) if seq in case.images else None
        overlay(ax, img[z] if img is not None else None, **m, title=f"{case.case_id} | {SEQ_NAMES.get(seq, seq)} | slice {z}")
        plt.show()

    out = W.interactive_output(draw, {"z": z, "seq": seq, **boxes})
    ui = W.VBox([W.HBox([z, seq]), W.HBox(list(boxes.values())), out])
    display(ui)
    return ui


# ------------------------------------------------------------------------- cohort figures
def plot_missing(df: pd.DataFrame, columns=("patient_age", "psa", "psad", "prostate_volume",
                                              "histopath_type", "pirads_reports"), ax=None):
    """Share of missing (NaN or empty) values per column, as a horizontal bar chart."""
    import matplotlib.pyplot as plt

    cols = [c for c in columns if c in df]
    miss = pd.Series({c: _is_missing(df[c]).mean() for c in cols})
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 0.4 * len(cols) + 1))
    ax.barh(miss.index, miss.values * 100, color="#607d8b")
    for i, v in enumerate(miss.values):
        ax.text(v * 100 + 0.5, i, f"{v:.0%}", va="center", fontsize=8)
    ax.set_xlabel("missing (%)")
    ax.set_xlim(0, max(10, miss.max() * 100 * 1.2))
    ax.invert_yaxis()
    ax.set_title(f"missing values ({len(df)} cases)", fontsize=10)
    return ax


def _is_missing(s: pd.Series) -> pd.Series:
    if s.dtype == object or pd.api.types.is_string_dtype(s):
        return s.isna() | (s.astype(str).str.strip() == "")
    return s.isna()


def _case_pirads(df: pd.DataFrame) -> pd.Series:
    """Case-level PI-RADS: pirads_max (parsed marksheet) or the max of lesion_PIRADS."""
    from ..data.readers import case_pirads

    if "pirads_max" in df:
        return df["pirads_max"]
    return df["lesion_PIRADS"].map(case_pirads)


def plot_pirads_vs_isup(df: pd.DataFrame, axes=None):
    """Left: case ISUP mix per case PI-RADS (stacked bars). Right: csPCa rate per PI-RADS with
    95 % Wilson intervals. PI-RADS is the routine (first) reader's case score."""
    import matplotlib.pyplot as plt

    pir = _case_pirads(df)
    isup = df["case_ISUP"].astype(int)
    cs = (df["case_csPCa"].astype(str).str.upper().isin(["YES", "1", "TRUE"])
          if df["case_csPCa"].dtype == object or pd.api.types.is_string_dtype(df["case_csPCa"])
          else df["case_csPCa"].astype(int) == 1)
    ok = pir.notna()
    tab = pd.crosstab(pir[ok].astype(int), isup[ok]).reindex(index=range(1, 6), fill_value=0)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    bottom = np.zeros(len(tab))
    grey = {0: "#cfd8dc", 1: "#90a4ae"}
    for g in tab.columns:
        axes[0].bar(tab.index, tab[g].values, bottom=bottom, color=ISUP_COLOURS.get(g, grey.get(g)) if g >= 2 else grey[g],
                    edgecolor="k", linewidth=0.3, label=f"ISUP {g}")
        bottom += tab[g].values
    axes[0].set_ylim(0, max(1, bottom.max()) * 1.08)
    axes[0].set_xlabel("case PI-RADS")
    axes[0].set_ylabel("cases")
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title("case ISUP by PI-RADS", fontsize=10)
    rate = cs[ok].groupby(pir[ok].astype(int)).agg(["sum", "count"]).reindex(range(1, 6), fill_value=0)
    p = rate["sum"] / rate["count"].replace(0, np.nan)
    lo, hi = zip(*[_wilson(k, n) for k, n in zip(rate["sum"], rate["count"])])
    axes[1].errorbar(rate.index, p * 100, yerr=[(p - np.array(lo)) * 100, (np.array(hi) - p) * 100],
                     fmt="o-", color="#d50000", capsize=3)
    for x, (k, n) in zip(rate.index, zip(rate["sum"], rate["count"])):
        axes[1].text(x, 2, f"n={n}", ha="center", fontsize=7)
    axes[1].set_ylim(0, 100)
    axes[1].set_xlabel("case PI-RADS")
    axes[1].set_ylabel("csPCa (ISUP >= 2), %")
    axes[1].set_title("csPCa rate by PI-RADS (95 % Wilson CI)", fontsize=10)
    return axes


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927)."""
    if n == 0:
        return (np.nan, np.nan)
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (c - h, c + h)


def plot_reader_agreement(df: pd.DataFrame, axes=None, min_cases: int = 10):
    """Left: quadratic-weighted Cohen's kappa for every reader pair (heat map). Right: how the
    other readers scored a case, by the first reader's PI-RADS: the spread is widest at PI-RADS 3.

    Needs ``pirads_reports`` with >= 2 reports for some cases (real PI-CAI has one routine
    report per case: then a ValueError says so). Reader pairs with fewer than ``min_cases``
    shared cases are left out. Returns (axes, kappa table of
    :func:`prostate_course.agreement.reader_agreement`).
    """
    import matplotlib.pyplot as plt

    from ..agreement import reader_agreement
    from ..data.readers import parse_reports

    kap = reader_agreement(df, min_cases=min_cases)
    if kap.empty:
        raise ValueError("no cases with two or more PI-RADS reports: reader agreement cannot be "
                         "measured (real PI-CAI has one routine report per case)")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ids = sorted(set(kap.reader_a) | set(kap.reader_b))
    mat = pd.DataFrame(np.nan, index=ids, columns=ids)
    for r in kap.itertuples():
        mat.loc[r.reader_a, r.reader_b] = mat.loc[r.reader_b, r.reader_a] = r.kappa_quadratic
    im = axes[0].imshow(mat.values, vmin=0, vmax=1, cmap="viridis")
    for i in range(len(ids)):
        for j in range(len(ids)):
            if not np.isnan(mat.values[i, j]):
                axes[0].text(j, i, f"{mat.values[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    axes[0].set_xticks(range(len(ids)), [f"R{i}" for i in ids])
    axes[0].set_yticks(range(len(ids)), [f"R{i}" for i in ids])
    axes[0].set_title(f"quadratic-weighted kappa per reader pair\n(mean {kap.kappa_quadratic.mean():.2f}; "
                      f"unweighted {kap.kappa_unweighted.mean():.2f})", fontsize=9)
    plt.colorbar(im, ax=axes[0], fraction=0.046)
    rows = []
    for rep in df["pirads_reports"]:
        s = parse_reports(rep)
        rows += [(s[0], o) for o in s[1:]]
    t = pd.crosstab(pd.Series([a for a, _ in rows], name="first"), pd.Series([b for _, b in rows], name="other"),
                    normalize="index").reindex(index=range(1, 6), columns=range(1, 6), fill_value=0)
    axes[1].imshow(t.values, cmap="Blues", vmin=0, vmax=1)
    for i in range(5):
        for j in range(5):
            axes[1].text(j, i, f"{t.values[i, j]:.0%}", ha="center", va="center", fontsize=7)
    axes[1].set_xticks(range(5), range(1, 6))
    axes[1].set_yticks(range(5), range(1, 6))
    axes[1].set_xlabel("other readers' PI-RADS")
    axes[1].set_ylabel("first reader's PI-RADS")
    axes[1].set_title("what the others said (row %)", fontsize=10)
    return axes, kap


# ------------------------------------------------------------------ anatomy and annotators
def _centroid(mask2d: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(mask2d)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


def plot_anatomy(case: RawCase, landmarks: dict | None = None, z: int | None = None, ax=None):
    """One T2W slice with its structures outlined and labelled (the anatomy of bpMRI).

    Labels the peripheral and transition zones (from the zonal mask), the lesion (its ISUP) and,
    with ``landmarks`` (name -> world point in LPS mm, e.g. from the synthetic phantom's
    ``landmarks()``), the surrounding structures: rectum, pubic bone, obturator muscles, fat.
    ``z`` defaults to the slice with most lesion voxels (else mid-gland). Returns the axes; the
    labels are its text annotations.
    """
    import matplotlib.pyplot as plt

    z = case.default_slice() if z is None else int(z)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.2, 6.2))
    img = case.array("t2w")
    m = {k: case.mask(k) for k in ("gland", "zones", "lesions")}
    overlay(ax, img[z] if img is not None else None, **{k: (v[z] if v is not None else None) for k, v in m.items()},
            title=f"case {case.case_id}, T2W slice {z}: anatomy")
    box = dict(boxstyle="round,pad=0.2", fc="black", ec="none", alpha=0.6)
    labels = []   # (text, (x, y) in pixels, colour, offset in points or None = centred)
    zones = m["zones"][z] if m["zones"] is not None else None
    if zones is not None:
        for v, name, off in ((1, "peripheral zone (PZ)", (-70, -45)), (2, "transition zone (TZ)", (-70, 45))):
            if np.any(zones == v):
                ys, xs = np.nonzero(zones == v)
                # the PZ is a crescent: point at its posterior part, not its empty centroid
                c = (float(np.median(xs)), float(np.percentile(ys, 85) if v == 1 else ys.mean()))
                labels.append((name, c, ZONE_COLOURS[v], off))
    les = m["lesions"][z] if m["lesions"] is not None else None
    if les is not None and les.any():
        g = int(les.max())
        labels.append((f"lesion (csPCa, ISUP {g})", _centroid(les > 0), ISUP_COLOURS.get(g, "#ffffff"), (75, -35)))
    ref = case.reference
    nx, ny = ref.GetSize()[:2]
    for name, pt in (landmarks or {}).items():
        i, j, _ = ref.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in pt))
        if 0 <= i < nx and 0 <= j < ny:
            labels.append((name, (i, j), "#ffffff", None))
    for name, (x, y), colour, off in labels:
        if off is None:
            ax.annotate(name, (x, y), ha="center", va="center", fontsize=7.5, color=colour, bbox=box)
        else:
            ax.annotate(name, (x, y), xytext=off, textcoords="offset points", ha="center", va="center",
                        fontsize=7.5, color=colour, bbox=box, arrowprops=dict(arrowstyle="-", color=colour, lw=0.8))
    if not labels:
        ax.text(0.5, 0.02, "no zonal mask or landmarks to label", transform=ax.transAxes, ha="center",
                fontsize=8, color="w")
    gl = m["gland"][z] if m["gland"] is not None else None
    if gl is not None and gl.any():   # zoom on the pelvis around the gland (about 60 mm each way)
        ys, xs = np.nonzero(gl)
        half = 60.0 / float(ref.GetSpacing()[0])
        cx, cy = xs.mean(), ys.mean()
        ax.set_xlim(max(cx - half, 0), min(cx + half, nx - 1))
        ax.set_ylim(min(cy + half, ny - 1), max(cy - half, 0))
    return ax


def plot_annotators(ann: dict, axes=None):
    """The simulated annotators' contours on the middle slice of the gland and of the lesion.

    ``ann``: a :func:`prostate_course.data.synthetic.simulate_annotators` result. One colour per
    annotator, the truth dashed black. Returns the axes.
    """
    import matplotlib.pyplot as plt

    items = [("gland", ann["gland"], ann["gland_truth"])]
    if ann.get("lesion") is not None:
        items.append(("lesion", ann["lesion"], ann["lesion_truth"]))
    if axes is None:
        _, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 4.0), squeeze=False)
        axes = axes[0]
    colours = plt.get_cmap("tab10").colors
    for ax, (name, masks, truth) in zip(axes, items):
        per = truth.reshape(truth.shape[0], -1).sum(1)
        k = int(np.argmax(per))
        ax.imshow(np.zeros(truth.shape[1:]), cmap="gray", vmin=0, vmax=1)
        for a, mk in enumerate(masks):
            if mk[k].any():
                ax.contour(mk[k], levels=[0.5], colors=[colours[a % 10]], linewidths=1.0)
        ax.contour(truth[k], levels=[0.5], colors=["w"], linewidths=1.2, linestyles="--")
        ax.set_title(f"{name}: {len(masks)} annotators (truth dashed)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return axes


def plot_annotation_agreement(d: pd.DataFrame, ax=None, published: dict | None = None):
    """Pairwise Dice between annotators, gland (whole, apex, mid, base) and lesion: one dot per
    annotator pair and case, the mean as a bar, published figures as black marks.

    ``d``: :func:`prostate_course.data.synthetic.annotation_agreement`. ``published`` maps a
    column label to (value, source), e.g. {"gland whole": (0.92, "Montagne 2021")}.
    """
    import matplotlib.pyplot as plt

    order = [("gland", "whole"), ("gland", "apex"), ("gland", "mid"), ("gland", "base"), ("lesion", "whole")]
    order = [o for o in order if ((d.structure == o[0]) & (d.region == o[1])).any()]
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.6))
    rng = np.random.default_rng(0)
    for i, (st, rg) in enumerate(order):
        v = d.loc[(d.structure == st) & (d.region == rg), "dice"].dropna().to_numpy()
        colour = GLAND_COLOUR if st == "gland" else ISUP_COLOURS[4]
        ax.bar(i, v.mean(), color=colour, alpha=0.35, width=0.6)
        ax.scatter(i + rng.uniform(-0.22, 0.22, len(v)), v, s=6, color=colour, alpha=0.6)
        ax.text(i, 0.02, f"{v.mean():.2f}", ha="center", fontsize=8)
    labels = [f"{st} {rg}" if rg != "whole" or st == "gland" else st for st, rg in order]
    for label, (value, source) in (published or {}).items():
        if label in labels:
            i = labels.index(label)
            ax.plot([i - 0.3, i + 0.3], [value, value], color="k", lw=2)
            ax.text(i + 0.32, value, source, fontsize=7, va="center")
    ax.set_xticks(range(len(order)), labels, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("pairwise Dice")
    ax.set_title("agreement between simulated annotators (black: published)", fontsize=10)
    return ax


def annotation_costs(n_cases: int, *, rate_per_hour: float = 150.0, minutes: dict | None = None) -> pd.DataFrame:
    """What labelling ``n_cases`` costs in reader time, per annotation type.

    The minutes per case are the course's ASSUMPTIONS, not measurements from a paper: case label
    (csPCa yes/no, PI-RADS) 1-2, bounding box 5-10, voxel contour 15-30 per lesion. Published
    timings vary widely with the tool and the task; measure your own. ``rate_per_hour`` is an
    assumed fully loaded radiologist hour. Pass ``minutes`` to change either.
    """
    if n_cases < 0:
        raise ValueError(f"n_cases must be >= 0, got {n_cases}")
    minutes = minutes or {"case label (csPCa yes/no, PI-RADS)": (1, 2), "bounding box per lesion": (5, 10),
                          "voxel contour per lesion": (15, 30)}
    rows = []
    for name, (lo, hi) in minutes.items():
        rows.append({"annotation": name, "min/case": f"{lo}-{hi}",
                     "hours (low)": round(n_cases * lo / 60, 1), "hours (high)": round(n_cases * hi / 60, 1),
                     "cost (low)": round(n_cases * lo / 60 * rate_per_hour),
                     "cost (high)": round(n_cases * hi / 60 * rate_per_hour)})
    return pd.DataFrame(rows).set_index("annotation")
