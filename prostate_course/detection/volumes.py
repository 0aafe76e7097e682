"""2D slices back to 3D volumes: what picai_eval scores is one probability volume per case.

The 2D U-Net sees the gland's axial slices one by one (``SliceSet``: ``case_index`` and
``slice_z`` say where each came from). PI-CAI evaluates *3D* lesion candidates, so the slice
predictions are stacked back onto the prepared grid (D, H, W) of each case; slices the network
never saw (outside the gland) are 0, "no lesion" - prepared lesions lie inside the gland.
"""
from __future__ import annotations

import numpy as np
import torch

from ..evaluate import to_numpy


def _positions(case_index, slice_z, n_cases: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(case, z) of every slice as int64 arrays; positions off the grid or claimed twice raise."""
    ci = to_numpy(case_index).astype(np.int64).ravel()
    zi = to_numpy(slice_z).astype(np.int64).ravel()
    if len(ci) != len(zi):
        raise ValueError(f"case_index {ci.shape} and slice_z {zi.shape} do not match")
    if len(ci) and (ci.min() < 0 or ci.max() >= n_cases or zi.min() < 0 or zi.max() >= depth):
        raise ValueError(f"slice positions outside {n_cases} cases x {depth} slices")
    if len(np.unique(ci * depth + zi)) != len(ci):
        raise ValueError("two slices of one case claim the same z position")
    return ci, zi


def stack_slices(slice_maps, case_index, slice_z, n_cases: int, depth: int) -> np.ndarray:
    """(n_cases, depth, H, W) float32 volumes with ``slice_maps[i]`` (N, H, W) at
    ``[case_index[i], slice_z[i]]`` and 0 elsewhere. Two slices for one position raise."""
    m = to_numpy(slice_maps).astype(np.float32, copy=False)
    if m.ndim != 3:
        raise ValueError(f"slice maps are (N, H, W), got shape {m.shape}")
    ci, zi = _positions(case_index, slice_z, n_cases, depth)
    if len(m) != len(ci):
        raise ValueError(f"slice maps {m.shape}, case_index {ci.shape} and slice_z {zi.shape} do not match")
    out = np.zeros((n_cases, depth) + m.shape[1:], np.float32)
    out[ci, zi] = m
    return out


def unstack_volumes(volumes, case_index, slice_z) -> np.ndarray:
    """The inverse for the slices that exist: ``volumes[case_index, slice_z]`` (N, H, W)."""
    v = to_numpy(volumes)
    return v[to_numpy(case_index).astype(np.int64), to_numpy(slice_z).astype(np.int64)]


def predict_volumes(model, slices, depth: int, *, device=None, batch_size: int | None = None,
                    chunk: int = 512) -> np.ndarray:
    """Per case of the SliceSet ``slices`` a 3D probability volume (n_cases, depth, H, W): the
    U-Net's slice maps (:func:`prostate_course.detection.steps.predict_slices`) stacked back.
    ``chunk`` slices at a time are predicted and written into place, so no second copy of every
    slice map exists beside the volumes (memory)."""
    from .steps import predict_slices

    ci, zi = _positions(slices.case_index, slices.slice_z, len(slices.case_ids), depth)
    out = np.zeros((len(slices.case_ids), depth) + tuple(slices.images.shape[-2:]), np.float32)
    for i in range(0, len(ci), chunk):
        part = predict_slices(model, slices.images[i:i + chunk], device=device, batch_size=batch_size)
        out[ci[i:i + chunk], zi[i:i + chunk]] = part.numpy()
    return out


def reference_volumes(dataset, case_ids) -> np.ndarray:
    """The prepared lesion masks (n, D, H, W) uint8 (ISUP values) of ``case_ids``, in that order:
    the ground truth picai_eval compares the detections with."""
    cache = dataset.cache()                     # the masks only: no float copy of the images
    pos = {c: i for i, c in enumerate(cache["case_ids"])}
    missing = [c for c in case_ids if c not in pos]
    if missing:
        raise KeyError(f"cases not in the prepared dataset {getattr(dataset, 'root', '')}: {missing[:5]}")
    idx = torch.tensor([pos[c] for c in case_ids], dtype=torch.long)
    return cache["lesions"][idx].numpy().astype(np.uint8)


__all__ = ["stack_slices", "unstack_volumes", "predict_volumes", "reference_volumes"]
