"""Mask geometry: how far a mask's grid lies from the T2W grid, and the mask moved onto it.

Real picai_labels masks do not always share the T2W grid exactly: their NIfTI headers store the
geometry in float32, and the AI gland masks and the expert lesion masks of one case differ in
their direction cosines by ~2e-4, which moves the grid corners by up to ~0.2 mm (half a voxel on
a 0.5 mm grid). As picai_prep does (``Sample.resample_to_first_scan``), a mask whose grid differs
from the T2W grid is resampled onto it with nearest-neighbour interpolation; the shift is
measured and recorded, never silently ignored:

- :func:`grid_shift`: how far the corners of the mask's field of view lie from the T2W ones,
  in mm and in T2W voxels (per axis, the worst corner);
- :func:`to_reference_grid`: the mask on the T2W grid, with a check that the two overlap
  physically and, for lesion masks, that no lesion component vanishes in the resampling;
- :func:`count_lesions`: lesions counted the way picai_eval counts them (connected components of
  ``mask > 0`` with a 3 x 3 x 3 structuring element, i.e. 26-connectivity).

References: picai_prep and picai_eval (DIAGNijmegen; Saha et al., PI-CAI, Lancet Oncology 2024).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: picai_eval's structuring element for lesion candidates and reference lesions (26-connected).
LESION_STRUCTURE = np.ones((3, 3, 3), dtype=bool)
#: Below this many T2W voxels, two grids count as the same grid (float32 header rounding).
SAME_GRID_VOXELS = 1e-3


class MaskGeometryError(ValueError):
    """A mask cannot be put on the T2W grid (no overlap, or a lesion would vanish)."""


@dataclass(frozen=True)
class GridShift:
    """How a mask grid differs from the reference grid.

    ``mm``: the largest distance between corresponding corners of the two fields of view;
    ``voxels``: the same displacement in reference voxels, the largest per-axis component;
    ``same_layout``: equal size and spacing (then only origin/direction differ).
    """

    mm: float
    voxels: float
    same_layout: bool

    @property
    def is_same_grid(self) -> bool:
        return self.same_layout and self.voxels < SAME_GRID_VOXELS


def _fov_corners(img: sitk.Image) -> np.ndarray:
    """Physical (LPS mm) corners of the field of view (voxel edges, continuous index -0.5 and
    size - 0.5), (8, 3), in a fixed corner order."""
    lo = -0.5
    hi = np.array(img.GetSize(), dtype=float) - 0.5
    idx = [[x, y, z] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])]
    return np.array([img.TransformContinuousIndexToPhysicalPoint([float(v) for v in i]) for i in idx])


def grid_shift(img: sitk.Image, ref: sitk.Image) -> GridShift:
    """Worst corner displacement between the field of view of ``img`` and that of ``ref``.

    The voxel figure maps each displacement d (mm) into ``ref``'s index space,
    ``|D^T d| / spacing`` per axis (D the direction matrix), and keeps the largest component.
    """
    a, b = _fov_corners(img), _fov_corners(ref)
    d = a - b
    direction = np.array(ref.GetDirection(), dtype=float).reshape(3, 3)
    in_voxels = np.abs(d @ direction) / np.array(ref.GetSpacing(), dtype=float)
    same = img.GetSize() == ref.GetSize() and np.allclose(img.GetSpacing(), ref.GetSpacing(),
                                                          rtol=1e-4, atol=1e-6)
    return GridShift(float(np.linalg.norm(d, axis=1).max()), float(in_voxels.max()), bool(same))


def label_components(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of ``arr > 0`` as picai_eval labels them (26-connected)."""
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(arr) > 0, structure=LESION_STRUCTURE)
    return labels, int(n)


def count_lesions(arr: np.ndarray) -> int:
    """Number of lesions in a mask, counted as picai_eval counts them (26-connected)."""
    return label_components(arr)[1]


#: Bias (in source voxels) added to every sampling position of a nearest-neighbour resampling.
TIE_BIAS_VOXELS = 1e-4


def _resample_nearest(img: sitk.Image, ref: sitk.Image, pixel) -> sitk.Image:
    """Nearest-neighbour resampling of ``img`` onto ``ref``'s grid, ties broken one way.

    A shift of exactly k + 0.5 voxels puts every sampling position on a tie; float rounding in
    the direction cosines then rounds some rows up and others down, which duplicates or drops
    whole rows of a lesion (131 -> 123 voxels for a real lesion moved by 1.5 voxels). Moving
    every position by :data:`TIE_BIAS_VOXELS` along each source axis breaks all ties the same
    way and changes nothing else (positions that close to a tie are ties anyway).
    """
    d = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    offset = d @ (np.array(img.GetSpacing(), dtype=float) * TIE_BIAS_VOXELS)
    t = sitk.TranslationTransform(3, [float(v) for v in offset])
    return sitk.Resample(img, ref, t, sitk.sitkNearestNeighbor, 0, pixel)


def to_reference_grid(mask: sitk.Image, ref: sitk.Image, *, lesions: bool = False):
    """``mask`` on ``ref``'s grid (nearest neighbour), and how far it had to move.

    Returns ``(mask_on_ref, shift, info)``; ``info`` has ``resampled`` (bool) and, for
    ``lesions=True``, ``n_source`` (lesions in the source mask) and ``voxels`` (per source
    component: (source voxels, voxels on ``ref``)).

    Raises :class:`MaskGeometryError` when no voxel centre of ``ref`` lies inside the mask's
    field of view (no physical overlap), or, for lesion masks, when a source component has no
    voxel left on ``ref`` (it would vanish from the prepared data).
    """
    shift = grid_shift(mask, ref)
    info: dict = {"resampled": False}
    src = sitk.GetArrayViewFromImage(mask)
    if lesions:
        labels, n = label_components(src)
        info["n_source"] = n
    if shift.is_same_grid:
        out = sitk.Image(mask)
        out.CopyInformation(ref)  # the same grid up to header rounding: take T2W's exactly
        if lesions:
            sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            info["voxels"] = [(int(s), int(s)) for s in sizes]
        return out, shift, info
    info["resampled"] = True
    # Footprint of the mask's grid on ref: 1 wherever a ref voxel centre falls inside it.
    ones = sitk.Image(mask.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(mask)
    # (GetArrayFromImage, not a view: the resampled images are temporaries)
    if not sitk.GetArrayFromImage(_resample_nearest(ones, ref, sitk.sitkUInt8)).any():
        raise MaskGeometryError(
            f"the mask does not overlap the T2W image (its field of view is {shift.mm:.1f} mm "
            f"from the T2W one at the farthest corner)")
    out = _resample_nearest(mask, ref, sitk.sitkUInt8)
    if lesions and n:
        lab = sitk.GetImageFromArray(labels.astype(np.uint32))
        lab.CopyInformation(mask)
        moved = sitk.GetArrayFromImage(_resample_nearest(lab, ref, sitk.sitkUInt32))
        before = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        after = np.bincount(moved.ravel(), minlength=n + 1)[1 : n + 1]
        info["voxels"] = [(int(b), int(a)) for b, a in zip(before, after)]
        lost = [i + 1 for i in range(n) if after[i] == 0]
        if lost:
            raise MaskGeometryError(
                f"{len(lost)} of {n} lesion component(s) vanish when the mask is resampled onto "
                f"the T2W grid (component {lost[0]}: {int(before[lost[0] - 1])} voxel(s); grid "
                f"shift {shift.voxels:.2f} voxels, {shift.mm:.2f} mm)")
    return out, shift, info


__all__ = ["GridShift", "MaskGeometryError", "LESION_STRUCTURE", "grid_shift", "to_reference_grid",
           "count_lesions", "label_components"]
