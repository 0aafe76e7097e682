"""Masks moved onto the T2W grid: crafted header jitter on a real PI-CAI grid.

The reference ("T2W") grid is the real grid of case 10005_1000005 (384 x 384 x 19, 0.5 x 0.5 x
3 mm, its real direction) from tests/fixtures/picai_labels (CC BY-NC 4.0, Saha et al., Lancet
Oncology 2024). The lesion mask holds three lesions: the real lesions of 10005 and 10019 (same
grid size) and a small crafted one. Its header is then moved by a known amount; every lesion
must survive the nearest-neighbour resampling, each with its volume within max(1 voxel, 5 %)
and its world position kept.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import PICAI_LABELS
from prostate_course.data import readers
from prostate_course.data.geometry import (MaskGeometryError, count_lesions, grid_shift,
                                           to_reference_grid)

LESIONS = PICAI_LABELS / "csPCa_lesion_delineations" / "human_expert" / "resampled"


@pytest.fixture(scope="module")
def ref_and_mask():
    """(T2W-like reference image, lesion mask with 3 lesions on exactly that grid)."""
    ref = readers.read_mask(LESIONS / "10005_1000005.nii.gz")
    a = sitk.GetArrayFromImage(ref).astype(np.uint8)                      # real lesion, ISUP 3
    b = sitk.GetArrayFromImage(readers.read_mask(LESIONS / "10019_1000019.nii.gz"))
    assert a.shape == b.shape and not (a.astype(bool) & b.astype(bool)).any()
    arr = np.where(b > 0, 2, a).astype(np.uint8)                           # second real lesion, ISUP 2
    z, y, x = np.indices(arr.shape)
    small = ((y - 300) ** 2 + (x - 100) ** 2 <= 4 ** 2) & (z >= 9) & (z <= 10)  # crafted, ISUP 4
    assert not arr[small].any()
    arr[small] = 4
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(ref)
    assert count_lesions(arr) == 3
    return ref, mask


def _components(img: sitk.Image):
    """[(world centroid (mm), voxel count)] of the 26-connected components of ``img > 0``."""
    arr = sitk.GetArrayViewFromImage(img)
    lab, n = ndimage.label(arr > 0, structure=np.ones((3, 3, 3)))
    d = np.array(img.GetDirection()).reshape(3, 3)
    out = []
    for i in range(1, n + 1):
        idx = np.argwhere(lab == i)[:, ::-1].astype(float)  # (x, y, z)
        world = idx * np.array(img.GetSpacing()) @ d.T + np.array(img.GetOrigin())
        out.append((world.mean(0), len(idx)))
    return out


def _translated(mask, voxels: float) -> sitk.Image:
    """The same array with the grid moved by ``voxels`` along each index axis."""
    m = sitk.Image(mask)
    d = np.array(m.GetDirection()).reshape(3, 3)
    m.SetOrigin((np.array(m.GetOrigin()) + d @ (np.array(m.GetSpacing()) * voxels)).tolist())
    return m


def _rotated(mask, radians: float, axis=None) -> sitk.Image:
    """The same array with its direction rotated by ``radians`` about the grid centre (about
    ``axis`` in world coordinates; default: the grid's own slice normal)."""
    m = sitk.Image(mask)
    if axis is None:
        axis = np.array(m.GetDirection()).reshape(3, 3)[:, 2]
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    R = np.eye(3) + math.sin(radians) * K + (1 - math.cos(radians)) * K @ K
    centre = np.array(m.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in m.GetSize()]))
    d = np.array(m.GetDirection()).reshape(3, 3)
    m.SetDirection((R @ d).ravel().tolist())
    m.SetOrigin((centre + R @ (np.array(m.GetOrigin()) - centre)).tolist())
    return m


CASES = {
    "translate 0.05 voxel": (lambda m: _translated(m, 0.05), 0.05),
    "translate 0.2 voxel": (lambda m: _translated(m, 0.2), 0.2),
    "translate 1.5 voxels": (lambda m: _translated(m, 1.5), 1.5),
    # real picai_labels headers differ by ~2e-4 in their direction cosines
    "direction jitter 3e-4 rad": (lambda m: _rotated(m, 3e-4, (1.0, 2.0, 3.0)), None),
    "rotated 1 degree": (lambda m: _rotated(m, math.radians(1.0)), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_lesion_survives_with_its_volume(ref_and_mask, name):
    ref, mask = ref_and_mask
    move, expected_voxels = CASES[name]
    moved = move(mask)
    out, shift, info = to_reference_grid(moved, ref, lesions=True)
    assert info["resampled"] and info["n_source"] == 3
    if expected_voxels is not None:
        assert shift.voxels == pytest.approx(expected_voxels, rel=1e-3)
    # on the reference grid, exactly
    assert out.GetSize() == ref.GetSize() and out.GetOrigin() == ref.GetOrigin()
    assert out.GetDirection() == ref.GetDirection()
    src, got = _components(moved), _components(out)
    assert len(got) == 3, f"{name}: {len(got)} components after resampling"
    d = np.array(ref.GetDirection()).reshape(3, 3)
    for centroid, n in src:  # matched by world position
        dist = [np.linalg.norm(c - centroid) for c, _ in got]
        j = int(np.argmin(dist))
        # nearest neighbour moves a lesion by at most half a voxel per axis (+ edge effects)
        off = np.abs((got[j][0] - centroid) @ d) / np.array(ref.GetSpacing())
        assert (off <= 0.6).all(), f"{name}: a lesion moved by {off.round(2)} voxels"
        assert abs(got[j][1] - n) <= max(1, 0.05 * n), f"{name}: {n} -> {got[j][1]} voxels"
    # ISUP values are kept (nearest neighbour never invents values)
    assert set(np.unique(sitk.GetArrayViewFromImage(out))) == {0, 2, 3, 4}


def test_shift_figures_match_the_construction(ref_and_mask):
    ref, mask = ref_and_mask
    assert grid_shift(mask, ref).is_same_grid
    s = grid_shift(_translated(mask, 0.2), ref)
    assert s.voxels == pytest.approx(0.2, rel=1e-6)
    # a 0.2-voxel move along x, y and z: |(0.1, 0.1, 0.6)| mm at every corner
    assert s.mm == pytest.approx(math.sqrt(0.1 ** 2 + 0.1 ** 2 + 0.6 ** 2), rel=1e-6)
    # rotation by t about the grid centre: the farthest FOV corner moves by 2 r sin(t/2)
    t = math.radians(1.0)
    half = np.array(ref.GetSize()[:2]) * np.array(ref.GetSpacing()[:2]) / 2
    assert grid_shift(_rotated(mask, t), ref).mm == pytest.approx(
        2 * np.linalg.norm(half) * math.sin(t / 2), rel=1e-3)


def test_same_grid_up_to_rounding_takes_the_reference_header(ref_and_mask):
    ref, mask = ref_and_mask
    m = _translated(mask, 1e-5)
    out, shift, info = to_reference_grid(m, ref, lesions=True)
    assert not info["resampled"] and out.GetOrigin() == ref.GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out), sitk.GetArrayViewFromImage(mask))


def test_no_overlap_is_an_error(ref_and_mask):
    ref, mask = ref_and_mask
    far = sitk.Image(mask)
    far.SetOrigin((np.array(mask.GetOrigin()) + [500.0, 0.0, 0.0]).tolist())  # 0.5 m away
    with pytest.raises(MaskGeometryError, match="does not overlap"):
        to_reference_grid(far, ref)


def test_a_vanishing_lesion_is_an_error(ref_and_mask):
    """A lesion of one fine voxel lying between two T2W voxel centres has no voxel on T2W."""
    ref, _ = ref_and_mask
    fine = sitk.Image([ref.GetSize()[0] * 5, ref.GetSize()[1] * 5, ref.GetSize()[2]], sitk.sitkUInt8)
    fine.SetSpacing([ref.GetSpacing()[0] / 5, ref.GetSpacing()[1] / 5, ref.GetSpacing()[2]])
    fine.SetDirection(ref.GetDirection())
    fine.SetOrigin(ref.GetOrigin())
    fine[2, 2, 5] = 2  # 0.2 mm from the T2W voxel centre (0, 0): the T2W voxel samples fine[0, 0]
    fine[250, 250, 5] = 3  # this one sits on a T2W voxel centre (50, 50): it survives
    with pytest.raises(MaskGeometryError, match="1 of 2 lesion component"):
        to_reference_grid(fine, ref, lesions=True)
    fine[2, 2, 5] = 0
    out, _, info = to_reference_grid(fine, ref, lesions=True)
    assert info["voxels"] == [(1, 1)] and sitk.GetArrayViewFromImage(out)[5, 50, 50] == 3


def test_lesions_counted_26_connected():
    """Two voxels touching at a corner are one lesion (picai_eval's 3x3x3 structure)."""
    a = np.zeros((5, 5, 5), np.uint8)
    a[1, 1, 1] = 2
    a[2, 2, 2] = 4  # corner neighbour: one lesion under 26-connectivity (two under 6)
    a[4, 4, 0] = 3  # a separate one
    assert count_lesions(a) == 2
