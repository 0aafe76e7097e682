"""What the voxel grid does to lesions: two lesions a few millimetres apart can become one.

picai_eval counts reference lesions as 26-connected components: voxels that share a face, an
edge or a corner belong to one lesion. On the T2W grid (0.3-0.5 mm in-plane) two cancers 2 mm
apart are two lesions; resampled to the cpu profile's 1 mm grid (3 mm between slices) the gap
can shrink to a voxel or vanish, and nearest-neighbour sampling may join them: the evaluation
then sees one lesion, and one detection covering both counts as a single hit. That is
sampling, not an annotation error, and it makes coarse-grid numbers incomparable with PI-CAI's
at full resolution.

:func:`count_lesions` counts as picai_eval does; :func:`merge_demo` builds two balls a known gap
apart on a fine grid and resamples them (nearest neighbour, as ``prepare`` does masks);
:func:`lesion_counts` compares, per case, the source mask's count with the prepared one's.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

#: picai_eval's connectivity: 26 neighbours in 3D
STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def count_lesions(mask) -> int:
    """The number of lesions picai_eval sees in ``mask``: its 26-connected components."""
    from scipy import ndimage

    return int(ndimage.label(np.asarray(mask) > 0, structure=STRUCTURE)[1])


def _balls(shape, spacing, centres, radius):
    grid = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    out = np.zeros(shape, bool)
    for c in centres:
        out |= sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= radius ** 2
    return out


def merge_demo(gap_mm: float, radius_mm: float = 4.0, fine=(3.0, 0.5, 0.5), coarse=(3.0, 1.0, 1.0),
               offset=(0.0, 0.0, 0.0), axis: str = "x", extent_mm: float = 36.0) -> dict:
    """Two balls of ``radius_mm`` whose surfaces are ``gap_mm`` apart, side by side along
    ``axis`` ("x": in-plane, "z": across slices), drawn on the ``fine`` grid (mm per voxel (z, y, x); default: a T2W-like 3 x 0.5
    x 0.5 mm) and on the ``coarse`` one (the cpu profile's 3 x 1 x 1 mm) by sampling the same
    geometry at each grid's voxel centres, as nearest-neighbour resampling does; ``offset``
    (mm) moves the pair against the grids. Returns both masks and their lesion counts."""
    ext = np.array([extent_mm] * 3)
    mid = ext / 2 + np.asarray(offset, float)
    step = {"z": np.array([1.0, 0, 0]), "x": np.array([0, 0, 1.0])}[axis] * (radius_mm + gap_mm / 2)
    c0, c1 = mid - step, mid + step
    out = {}
    for name, sp in (("fine", fine), ("coarse", coarse)):
        shape = tuple(int(round(extent_mm / s)) for s in sp)
        m = _balls(shape, sp, [c0, c1], radius_mm)
        out[name] = m
        out[f"n_{name}"] = count_lesions(m)
        out[f"{name}_spacing"] = tuple(sp)
    return out


def merging_example(gap_mm: float = 0.5, axis: str = "x", fine=(3.0, 0.5, 0.5), coarse=(3.0, 1.0, 1.0),
                    radius_mm: float = 4.0, steps: int = 8) -> dict | None:
    """The first position (on a regular sub-voxel grid of offsets) at which the pair of
    :func:`merge_demo` is two lesions on ``fine`` and ONE on ``coarse``; None if there is none."""
    for fz in np.linspace(-0.5, 0.5, steps, endpoint=False):
        for fx in np.linspace(-0.5, 0.5, steps, endpoint=False):
            off = np.array([fz, 0.0, fx]) * np.asarray(coarse)
            d = merge_demo(gap_mm, radius_mm, fine=fine, coarse=coarse, offset=off, axis=axis)
            if d["n_fine"] == 2 and d["n_coarse"] == 1:
                d["offset"] = tuple(off)
                return d
    return None


def merge_rate(gap_mm: float, spacing=(3.0, 1.0, 1.0), axis: str = "x", radius_mm: float = 4.0,
               n: int = 40, seed: int = 0) -> float:
    """The share of random positions (uniform sub-voxel offsets) at which two balls ``gap_mm``
    apart along ``axis`` count as ONE lesion on a grid of ``spacing``."""
    rng = np.random.default_rng(seed)
    merged = 0
    for _ in range(n):
        off = rng.uniform(-0.5, 0.5, 3) * np.asarray(spacing)
        d = merge_demo(gap_mm, radius_mm, fine=spacing, coarse=spacing, offset=off, axis=axis)
        merged += d["n_coarse"] == 1
    return merged / n


def lesion_counts(dataset, case_ids=None, labels_root=None) -> pd.DataFrame:
    """Per case with a lesion: the 26-connected lesion count of the source mask (its own grid;
    NaN when the source labels are not on this machine) and of the prepared mask. Uses the
    prepared table's ``n_lesions_source`` / ``n_lesions_prepared`` when ``prepare`` recorded
    them; else counts here (source masks read from ``labels_root``, default the labels folder
    in the dataset's manifest)."""
    from pathlib import Path

    t = dataset.table.set_index("case_id")
    ids = list(t.index if case_ids is None else case_ids)
    cache = dataset.cache()
    pos = {c: i for i, c in enumerate(cache["case_ids"])}
    root = Path(labels_root or dataset.manifest.get("labels", ""))
    rows = []
    for cid in ids:
        prepared = cache["lesions"][pos[cid]].numpy()
        if not prepared.any():
            continue
        n_prep = int(t.at[cid, "n_lesions_prepared"]) if "n_lesions_prepared" in t else count_lesions(prepared)
        if "n_lesions_source" in t and pd.notna(t.at[cid, "n_lesions_source"]):
            n_src = float(t.at[cid, "n_lesions_source"])
        else:
            n_src = _source_count(root, cid)
        rows.append({"case_id": cid, "n_lesions_source": n_src, "n_lesions_prepared": n_prep,
                     "lesion_voxels": int((prepared > 0).sum())})
    df = pd.DataFrame(rows, columns=["case_id", "n_lesions_source", "n_lesions_prepared", "lesion_voxels"])
    df["merged"] = df["n_lesions_source"] > df["n_lesions_prepared"]
    return df


def _source_count(labels_root, case_id) -> float:
    from ..data import readers

    try:
        path = readers.find_labels(labels_root, case_id).lesion
    except (OSError, ValueError, KeyError):
        return float("nan")
    if path is None or not path.is_file():
        return float("nan")
    import SimpleITK as sitk

    return float(count_lesions(sitk.GetArrayFromImage(readers.read_mask(path))))


__all__ = ["STRUCTURE", "count_lesions", "merge_demo", "merging_example", "merge_rate", "lesion_counts"]
