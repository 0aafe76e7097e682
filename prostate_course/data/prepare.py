"""``prepare``: raw PI-CAI layout (real or synthetic) -> the prepared course dataset.

Per case (:func:`prepare_case`):

1. read T2W, ADC and HBV (.mha) with SimpleITK and the picai_labels masks with nibabel; a
   mask on another grid than the T2W (real headers differ by float32 rounding and small
   direction differences) is resampled onto the T2W grid, nearest neighbour, as picai_prep
   does (:mod:`.geometry`); the table records which masks moved and by how much, a shift of a
   voxel or more is a warning, and only a mask that does not overlap the T2W image, or a
   lesion component that would vanish, makes the case bad;
2. centre: the centre of the gland's bounding box, from the first non-empty gland mask in
   source order (whole_gland/AI/Guerbet23, then Bosma22b); without a usable gland mask, the
   centre of the T2W volume, with a warning (``gland_source = "none"``); the crop origin is
   snapped onto a T2W voxel centre (moves it by <= half a T2W voxel);
3. one output grid: the T2W orientation, the target ``spacing`` and the fixed ``crop`` size,
   centred there; ADC/HBV and T2W are resampled straight onto it (linear; masks nearest, from
   the T2W grid). This
   is "ADC/HBV onto the T2W grid, then to the target spacing" done as ONE interpolation per
   image (composing two resamplings would blur twice); regions outside an image's field of view
   are padded and then set to 0 after normalisation. As in picai_prep, no anti-aliasing filter
   is applied before down-sampling;
4. per-sequence z-score after clipping to the 0.5/99.5 percentiles (picai_prep / the PI-CAI
   U-Net baseline), with statistics over the whole crop (only voxels inside that sequence's
   field of view): simple, and defined even for cases without a gland mask;
5. save ``cases/<case_id>/{image,gland,zones,lesions}.nii.gz`` + ``meta.json``, written into a
   hidden temporary folder renamed into place at the end, so a case folder is complete by
   construction.

Lesions are counted as picai_eval counts them (26-connected components): ``n_lesions_source``
on the source mask and ``n_lesions_prepared`` on the prepared one. At a coarser prepared grid
two nearby lesions can touch and merge into one; that is sampling, not an error.

Then :func:`prepare_dataset` writes ``cases.csv`` (metadata, splits, PI-RADS consensus),
``cache.pt`` (float16 images + uint8 masks, docs/ARCHITECTURE.md "Prepared dataset"), ``bad_cases.csv``
and, last, ``manifest.json``. Rerunning skips finished cases (resumable, idempotent); leftover
temporary folders from a crash or Ctrl-C are removed first.

Reference: Saha et al., PI-CAI, Lancet Oncology 2024; picai_prep (DIAGNijmegen) preprocessing.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ..io_utils import atomic_path, sha256_file, write_json_atomic
from . import geometry, readers
from .readers import DataReadError, SEQUENCES

PREPARE_VERSION = 2  # 2: masks resampled onto the T2W grid, gland fallback, lesion counts
CASE_FILES = ("image.nii.gz", "gland.nii.gz", "zones.nii.gz", "lesions.nii.gz", "meta.json")
TMP_PREFIX = ".tmp-"
#: below this share of the crop inside the ADC/HBV field of view, the sequences do not overlap T2W
MIN_FOV_OVERLAP = 0.25


class CaseError(Exception):
    """A bad case: names the case, the file and the reason."""

    def __init__(self, case_id: str, file, reason: str):
        self.case_id, self.file, self.reason = case_id, str(file), reason
        super().__init__(f"case {case_id}: {file}: {reason}")

    def __reduce__(self):  # picklable across processes
        return (CaseError, (self.case_id, self.file, self.reason))


class PrepareError(RuntimeError):
    """Raised by ``prepare_dataset(strict=True)`` at the first bad case."""


@dataclass
class PrepareReport:
    out: Path
    n_cases: int  # prepared cases in the dataset
    n_new: int  # prepared by this call
    n_reused: int  # found finished from an earlier (possibly interrupted) call
    bad: pd.DataFrame  # case_id, file, reason
    seconds: float
    warnings: list = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"prepared {self.n_cases} cases in {self.out} ({self.n_new} new, {self.n_reused} reused, "
            f"{len(self.bad)} bad) in {self.seconds:.1f} s"
        )


# ------------------------------------------------------------------------------- geometry
def gland_centre(gland: sitk.Image) -> tuple[float, float, float] | None:
    """Physical (LPS, mm) centre of the gland mask's bounding box, or None if the mask is empty."""
    arr = sitk.GetArrayViewFromImage(gland)
    nz = [np.flatnonzero(arr.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    if any(len(n) == 0 for n in nz):
        return None
    centre_zyx = [(n[0] + n[-1]) / 2.0 for n in nz]
    return gland.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre_zyx[::-1]])


def volume_centre(img: sitk.Image) -> tuple[float, float, float]:
    return img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in img.GetSize()])


def crop_grid(reference: sitk.Image, centre, spacing_zyx, crop_zyx, snap: bool = True) -> sitk.Image:
    """An empty float32 image: ``reference``'s orientation, ``spacing`` and ``crop`` (both (z, y, x)),
    centred on the physical point ``centre``.

    With ``snap`` the grid origin is moved (by at most half a reference voxel per axis) onto a
    reference voxel centre, so when the target slice spacing equals the acquired one the output
    slices ARE the acquired slices (no interpolation between slices, which would blur lesions).
    """
    sp = np.array(spacing_zyx, dtype=float)[::-1]
    size = np.array(crop_zyx, dtype=int)[::-1]
    d = np.array(reference.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(centre, dtype=float) - d @ (sp * (size - 1) / 2.0)
    if snap:
        idx = np.array(reference.TransformPhysicalPointToContinuousIndex([float(o) for o in origin]))
        origin = np.array(reference.TransformContinuousIndexToPhysicalPoint([float(i) for i in np.round(idx)]))
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([float(s) for s in sp])
    grid.SetDirection(reference.GetDirection())
    grid.SetOrigin([float(o) for o in origin])
    return grid


def _resample(img: sitk.Image, grid: sitk.Image, interp, default: float, pixel) -> np.ndarray:
    out = sitk.Resample(img, grid, sitk.Transform(), interp, default, pixel)
    return sitk.GetArrayFromImage(out)  # (z, y, x)


def zscore_clip(arr: np.ndarray, valid: np.ndarray, lo_q: float = 0.5, hi_q: float = 99.5) -> np.ndarray:
    """Clip to the [lo_q, hi_q] percentiles, then z-score, statistics over ``valid`` voxels.

    x' = (clip(x, q_lo, q_hi) - mean) / std  (picai_prep / PI-CAI baseline); 0 outside ``valid``.
    """
    out = np.zeros(arr.shape, dtype=np.float32)
    v = arr[valid]
    if v.size == 0:
        return out
    lo, hi = np.percentile(v, [lo_q, hi_q])
    c = np.clip(v, lo, hi)
    sd = float(c.std())
    out[valid] = (c - float(c.mean())) / (sd if sd > 1e-6 else 1.0)
    return out


def _nifti(arr: np.ndarray, grid: sitk.Image, path: Path):
    """Save ``arr`` on ``grid``: (z, y, x), or (C, z, y, x) stored as (x, y, z, C)."""
    import nibabel as nib

    aff = readers.sitk_affine_ras(grid)
    img = nib.Nifti1Image(np.ascontiguousarray(arr.T), aff)
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    nib.save(img, str(path))


# ---------------------------------------------------------------------------------- a case
def prepare_case(
    case_id: str,
    images_root: str | os.PathLike,
    labels_root: str | os.PathLike,
    cases_dir: str | os.PathLike,
    *,
    spacing=(3.0, 1.0, 1.0),
    crop=(20, 64, 64),
    case_csPCa: int | None = None,
    return_arrays: bool = False,
):
    """Prepare one case into ``cases_dir/<case_id>/``; returns its meta dict (and, with
    ``return_arrays``, the cache arrays: image float16 (3, D, H, W), gland/zones/lesions uint8
    (D, H, W)).

    Raises :class:`CaseError` (case, file, reason) for a bad case; nothing is left behind then.
    """
    cases_dir = Path(cases_dir)
    final = cases_dir / case_id
    tmp = cases_dir / f"{TMP_PREFIX}{case_id}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        meta, arrays, grid = _process(case_id, Path(images_root), Path(labels_root), spacing, crop, case_csPCa)
        tmp.mkdir(parents=True)
        image = np.stack(arrays["image"])  # (3, z, y, x) float32
        _nifti(image, grid, tmp / "image.nii.gz")
        for name in ("gland", "zones", "lesions"):
            _nifti(arrays[name], grid, tmp / f"{name}.nii.gz")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if is_finished(final):  # finished meanwhile by another run: keep that one
            shutil.rmtree(tmp)
        else:
            if final.exists():  # a damaged folder (a file lost): move it aside, then replace it
                stale = cases_dir / f"{TMP_PREFIX}stale-{case_id}-{uuid.uuid4().hex[:6]}"
                os.rename(final, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(tmp, final)
        if return_arrays:
            cache = {"images": image.astype(np.float16)}
            cache.update({k: arrays[k] for k in ("gland", "zones", "lesions")})
            return meta, cache
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _process(case_id, images_root, labels_root, spacing, crop, case_csPCa):
    warn = []
    paths = readers.image_paths(images_root, case_id)
    imgs = {}
    for s, p in paths.items():
        if not p.is_file():
            raise CaseError(case_id, p, f"missing sequence {s.upper()}")
    for s, p in paths.items():
        try:
            imgs[s] = readers.read_sitk(p, sitk.sitkFloat32)
        except DataReadError as e:
            raise CaseError(case_id, p, e.reason) from None
        if not np.isfinite(sitk.GetArrayViewFromImage(imgs[s])).all():
            raise CaseError(case_id, p, "image contains NaN or infinite values")
    t2w = imgs["t2w"]
    lab = readers.find_labels(labels_root, case_id)
    moved = []  # (what, GridShift) of the masks resampled onto the T2W grid

    def mask(path, what, lesions=False):
        """The mask at ``path`` on the T2W grid (nearest neighbour, as picai_prep)."""
        try:
            m = readers.read_mask(path)
        except DataReadError as e:
            raise CaseError(case_id, path, e.reason) from None
        try:
            m, shift, info = geometry.to_reference_grid(m, t2w, lesions=lesions)
        except geometry.MaskGeometryError as e:
            raise CaseError(case_id, path, f"{what} mask geometry: {e}") from None
        if info["resampled"]:
            moved.append((what, shift))
            if shift.voxels >= 1:
                warn.append(f"{what} mask grid lies {shift.voxels:.2f} T2W voxels ({shift.mm:.2f} mm) "
                            f"from the T2W grid: resampled onto it")
        return m, info

    # Gland: the first non-empty mask in source order (Guerbet23, Bosma22b), else a centre crop.
    gland, gland_source, centre = None, "none", None
    for src, path in lab.glands:
        g, _ = mask(path, f"{src} gland")
        centre = gland_centre(g)
        if centre is not None:
            gland, gland_source = g, src
            break
        warn.append(f"{src} gland mask is empty")
    if gland is None:
        centre = volume_centre(t2w)
        warn.append("no usable gland mask: centre crop")
    lesion, lesion_info = mask(lab.lesion, "lesion", lesions=True) if lab.lesion else (None, {})
    zones = mask(lab.zones, "zonal")[0] if lab.zones else None
    if lesion is not None:
        lv = sitk.GetArrayViewFromImage(lesion)
        if lv.max() > 5:
            raise CaseError(case_id, lab.lesion, f"lesion mask values must be ISUP 0-5, max is {int(lv.max())}")
        if lab.lesion_source == "Pooch25":  # binary masks: 1 = csPCa, grade unknown
            lesion = sitk.Cast(lesion > 0, sitk.sitkUInt8)
    elif case_csPCa:
        warn.append("csPCa-positive case without a lesion mask")
    if zones is not None and sitk.GetArrayViewFromImage(zones).max() > 2:
        raise CaseError(case_id, lab.zones, "zonal mask values must be 0 (background), 1 (PZ), 2 (TZ)")

    grid = crop_grid(t2w, centre, spacing, crop)
    channels = []
    for s in SEQUENCES:
        a = _resample(imgs[s], grid, sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
        valid = np.isfinite(a)
        if s != "t2w" and valid.mean() < MIN_FOV_OVERLAP:
            raise CaseError(case_id, paths[s], f"{s.upper()} covers only {valid.mean():.0%} of the crop: it does not overlap the T2W field of view")
        channels.append(zscore_clip(np.nan_to_num(a), valid))
    vox_ratio = float(np.prod(grid.GetSpacing()) / np.prod(t2w.GetSpacing()))
    arrays = {"image": channels}
    for name, m in (("gland", gland), ("zones", zones), ("lesions", lesion)):
        arrays[name] = (
            _resample(m, grid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            if m is not None else np.zeros(tuple(crop), np.uint8)
        )
    gland_in_crop = float("nan")
    if gland is not None:
        n_ref = float(np.count_nonzero(sitk.GetArrayViewFromImage(gland)))
        gland_in_crop = float(np.count_nonzero(arrays["gland"]) * vox_ratio / n_ref)
        if gland_in_crop < 0.95:
            warn.append(f"crop holds {gland_in_crop:.0%} of the gland")
    n_source = int(lesion_info.get("n_source", 0))
    if n_source:
        lost = _lesions_lost_in_crop(lesion, grid)
        if lost:
            warn.append(f"{lost} of {n_source} lesion(s) have no voxel in the prepared crop "
                        f"(outside it, or smaller than a prepared voxel)")
    shift_mm = max((sh.mm for _, sh in moved), default=0.0)
    shift_vox = max((sh.voxels for _, sh in moved), default=0.0)
    meta = dict(
        case_id=case_id,
        gland_source=gland_source,
        lesion_source=lab.lesion_source,
        zones_source=lab.zones_source,
        gland_in_crop=round(gland_in_crop, 4) if gland is not None else None,
        lesion_voxels=int(np.count_nonzero(arrays["lesions"])),
        lesion_max=int(arrays["lesions"].max()),
        n_lesions_source=n_source,
        n_lesions_prepared=geometry.count_lesions(arrays["lesions"]),
        masks_resampled=";".join(what for what, _ in moved),
        mask_shift_mm=round(shift_mm, 4),
        mask_shift_voxels=round(shift_vox, 4),
        t2w_spacing=[round(v, 4) for v in t2w.GetSpacing()],
        t2w_size=list(t2w.GetSize()),
        adc_spacing=[round(v, 4) for v in imgs["adc"].GetSpacing()],
        warnings="; ".join(warn),
    )
    return meta, arrays, grid


def _lesions_lost_in_crop(lesion: sitk.Image, grid: sitk.Image) -> int:
    """How many lesion components of ``lesion`` (on the T2W grid) have no voxel on ``grid``."""
    labels, n = geometry.label_components(sitk.GetArrayViewFromImage(lesion))
    lab = sitk.GetImageFromArray(labels.astype(np.uint32))
    lab.CopyInformation(lesion)
    kept = np.unique(_resample(lab, grid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt32))
    return n - int(np.count_nonzero(kept))


def _case_job(args):
    """Worker entry point: ("ok", case_id, meta, arrays) or ("bad", case_id, file, reason)."""
    case_id, images_root, labels_root, cases_dir, spacing, crop, cs = args
    try:
        meta, arrays = prepare_case(case_id, images_root, labels_root, cases_dir, spacing=spacing,
                                    crop=crop, case_csPCa=cs, return_arrays=True)
        return ("ok", case_id, meta, arrays)
    except CaseError as e:
        return ("bad", case_id, e.file, e.reason)
    except Exception as e:  # an unexpected failure is a bad case too, reported with its type
        return ("bad", case_id, "", f"{type(e).__name__}: {e}")


def _init_worker() -> None:
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)  # one process per core already


def is_finished(case_dir: Path) -> bool:
    return all((case_dir / f).is_file() for f in CASE_FILES)


def clean_temporaries(out: Path) -> int:
    """Remove temporary folders/files left by an interrupted run. Returns how many."""
    n = 0
    for p in list((out / "cases").glob(f"{TMP_PREFIX}*")) + list(out.glob(".*.tmp")):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    return n


# -------------------------------------------------------------------------------- the cohort
def prepare_params(spacing, crop, seed, max_cases) -> dict:
    return dict(
        version=PREPARE_VERSION,
        spacing=[float(s) for s in spacing],
        crop=[int(c) for c in crop],
        seed=int(seed),
        max_cases=None if max_cases is None else int(max_cases),
        normalisation="zscore_clip_0.5_99.5_crop",
        interpolation="linear_images_nearest_masks_single_step",
    )


def prepare_dataset(
    raw_images: str | os.PathLike,
    labels: str | os.PathLike,
    out: str | os.PathLike,
    *,
    spacing=(3.0, 1.0, 1.0),
    crop=(20, 64, 64),
    workers: int | None = None,
    strict: bool = False,
    seed: int = 0,
    progress: bool = True,
    max_cases: int | None = None,
    extra_manifest: dict | None = None,
    split: dict | None = None,
) -> PrepareReport:
    """Turn the raw layout into the prepared dataset in ``out`` (see module docstring).

    ``spacing`` (mm) and ``crop`` (voxels) are (z, y, x). ``workers`` defaults to min(4, CPUs).
    ``split`` is a profile's ``data.split`` section (default: the course split, test 25 %,
    val 15 %; see :func:`.splits.split_settings`); ``seed`` seeds it.
    Bad cases are skipped and listed in ``bad_cases.csv``; ``strict=True`` raises
    :class:`PrepareError` at the first one. ``max_cases`` keeps the first N cases (sorted ids).
    Two calls on one ``out`` folder (two notebooks at once) are serialised by a lock file.
    """
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive numbers (z, y, x) in mm, got {spacing}")
    if len(crop) != 3 or min(crop) < 1:
        raise ValueError(f"crop must be 3 positive integers (z, y, x), got {crop}")
    from .splits import split_settings

    split = split_settings(split)  # a bad setting fails here, before any case is prepared
    if not Path(raw_images).is_dir():
        raise DataReadError(raw_images, "images folder not found")
    if not (Path(labels) / readers.MARKSHEET).is_file():
        raise DataReadError(Path(labels) / readers.MARKSHEET, "marksheet not found")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out / ".lock"):
        return _prepare_unlocked(
            raw_images, labels, out, spacing=spacing, crop=crop, workers=workers, strict=strict,
            seed=seed, progress=progress, max_cases=max_cases, extra_manifest=extra_manifest,
            split=split)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An advisory lock held for the whole prepare (POSIX flock; a no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows: single-user machines; concurrent prepares are not expected
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prepare_unlocked(raw_images, labels, out, *, spacing, crop, workers, strict, seed, progress,
                      max_cases, extra_manifest, split) -> PrepareReport:
    """The body of :func:`prepare_dataset`, run under its lock."""
    t0 = time.perf_counter()
    raw_images, labels, out = Path(raw_images), Path(labels), Path(out)
    params = prepare_params(spacing, crop, seed, max_cases)
    marksheet = readers.read_marksheet(labels / readers.MARKSHEET)
    case_ids = readers.list_cases(raw_images)
    if not case_ids:
        raise DataReadError(raw_images, "no cases (expected images/<pid>/<pid>_<sid>_t2w.mha)")
    if max_cases is not None:
        case_ids = case_ids[: int(max_cases)]

    (out / "cases").mkdir(exist_ok=True)  # ``out`` itself is made by prepare_dataset
    pfile = out / "params.json"
    if pfile.is_file():
        old = json.loads(pfile.read_text())
        if old != params:
            raise ValueError(
                f"{out} holds a dataset prepared with other parameters ({old}); "
                "use another output folder or delete this one"
            )
    else:
        write_json_atomic(pfile, params)
    clean_temporaries(out)

    ms = marksheet.set_index("case_id")
    bad: list[dict] = []
    not_in_ms = [c for c in case_ids if c not in ms.index]
    for c in not_in_ms:
        bad.append(dict(case_id=c, file=str(labels / readers.MARKSHEET), reason="case not in the marksheet"))
        if strict:
            raise PrepareError(f"case {c}: {labels / readers.MARKSHEET}: case not in the marksheet")
    case_ids = [c for c in case_ids if c in ms.index]
    # the split first: a scheme that cannot split these cases fails before any case is prepared
    splits = _splits_of(case_ids, ms, seed, split)
    done = [c for c in case_ids if is_finished(out / "cases" / c)]
    done_set = set(done)
    todo = [c for c in case_ids if c not in done_set]
    jobs = [(c, str(raw_images), str(labels), str(out / "cases"), tuple(spacing), tuple(crop),
             int(ms.at[c, "case_csPCa"])) for c in todo]
    n_workers = max(1, min(workers or min(4, os.cpu_count() or 1), len(jobs) or 1))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="prepare", unit="case", disable=not progress)

    row = {c: i for i, c in enumerate(case_ids)}
    buffers: dict = {}  # the cache, filled as cases arrive (no second read of the new cases)
    filled: set = set()

    def handle(res):
        bar.update(1)
        if res[0] == "ok":
            _, c, _, arrays = res
            _fill(buffers, len(case_ids), row[c], arrays)
            filled.add(c)
        if res[0] == "bad":
            _, c, f, reason = res
            bad.append(dict(case_id=c, file=f, reason=reason))
            if strict:
                raise PrepareError(f"case {c}: {f}: {reason}")

    try:
        if n_workers == 1:
            for j in jobs:
                handle(_case_job(j))
        elif jobs:
            import multiprocessing as mp

            ctx = mp.get_context("fork") if sys.platform.startswith("linux") else None
            ex = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_init_worker)
            try:
                pending = {ex.submit(_case_job, j) for j in jobs}
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        handle(fut.result())
            finally:
                ex.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
        clean_temporaries(out)

    prepared = [c for c in case_ids if is_finished(out / "cases" / c)]
    if not prepared:
        raise PrepareError(f"no case could be prepared from {raw_images}; see the reasons: {bad[:3]}")
    table = _build_table(out, prepared, ms, splits[0])
    # manifest.json marks a finished dataset: drop an earlier one before its tables change, so
    # a crash below leaves the folder unfinished (resumable), never old manifest + new table.
    (out / "manifest.json").unlink(missing_ok=True)
    with atomic_path(out / "cases.csv") as tmp:
        table.to_csv(tmp, index=False)
    _write_cache(out, prepared, buffers, row, filled)
    bad_df = pd.DataFrame(bad, columns=["case_id", "file", "reason"])
    with atomic_path(out / "bad_cases.csv") as tmp:
        bad_df.to_csv(tmp, index=False)
    warn = [f"{r.case_id}: {r.warnings}" for r in table.itertuples() if r.warnings]
    manifest = dict(
        params=params,
        raw_images=str(raw_images),
        labels=str(labels),
        marksheet_sha256=sha256_file(labels / readers.MARKSHEET),
        n_cases=len(prepared),
        n_bad=len(bad_df),
        n_positive=int(table["case_csPCa"].sum()),
        split_counts=_split_counts(table),
        splits=splits[1],
        split=split,
        split_candidates=case_ids,
        warnings=warn,
        versions=_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra_manifest or {}),
    )
    write_json_atomic(out / "manifest.json", manifest)
    return PrepareReport(out, len(prepared), len(prepared) - len(done), len(done), bad_df,
                         time.perf_counter() - t0, warn)


_TABLE_FIRST = [
    "case_id", "patient_id", "study_id", "split", "fold", "patient_age", "psa", "psad",
    "prostate_volume", "center", "case_ISUP", "case_csPCa", "pirads_reports", "n_reports",
    "pirads_max", "pirads_majority", "pirads_conf", "gland_source", "lesion_source",
]


def _split_counts(table: pd.DataFrame) -> dict:
    return {s: int(n) for s, n in table["split"].value_counts().items()}


def _splits_of(candidates: list[str], ms: pd.DataFrame, seed: int, split: dict) -> tuple[pd.DataFrame, str]:
    """split/fold of every candidate case (index case_id), and the scheme's label.

    Splits are drawn over every candidate case of the marksheet, not only the cases that
    prepared: fixing a bad case and rerunning never moves other patients between splits.
    """
    from .splits import make_splits

    cand = ms.loc[candidates, ["patient_id", "case_csPCa"]].reset_index()
    table, name = make_splits(cand, split, seed=seed)
    return table.set_index("case_id")[["split", "fold"]], name


def _build_table(out: Path, prepared: list[str], ms: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    metas = [json.loads((out / "cases" / c / "meta.json").read_text()) for c in prepared]
    t = ms.loc[prepared].reset_index()
    m = pd.DataFrame(metas).drop(columns=["case_id"])
    t = pd.concat([t.reset_index(drop=True), m], axis=1)
    for col in ("lesion_PIRADS", "lesion_GS", "lesion_ISUP"):  # lists -> "5,N/A" as in the marksheet
        t[col] = [",".join("N/A" if v is None else str(v) for v in lst) for lst in t[col]]
    t = readers.add_pirads_consensus(t)
    t = t.join(splits, on="case_id")
    for col in ("t2w_spacing", "t2w_size", "adc_spacing"):
        t[col] = [" ".join(str(v) for v in x) for x in t[col]]
    rest = [c for c in t.columns if c not in _TABLE_FIRST]
    return t[_TABLE_FIRST + rest]


def update_splits(out: str | os.PathLike, split: dict | None, *, seed: int | None = None,
                  extra_manifest: dict | None = None) -> dict:
    """Recompute the ``split``/``fold`` columns of a finished prepared dataset for other split
    settings, without preparing any case again (images and cache do not depend on the split).

    ``cases.csv`` and ``manifest.json`` are rewritten atomically under the dataset's lock (the
    manifest is dropped first, so a crash in between leaves an unfinished folder, never a new
    table beside an old manifest). The split is drawn over the same candidate cases as the
    first prepare (``split_candidates`` in the manifest), with the marksheet recorded there.
    Returns the new manifest.
    """
    from .splits import split_settings

    out = Path(out)
    split = split_settings(split)
    with _exclusive(out / ".lock"):
        manifest = json.loads((out / "manifest.json").read_text())
        seed = int(manifest["params"]["seed"] if seed is None else seed)
        labels = Path(manifest["labels"])
        ms_path = labels / readers.MARKSHEET
        if sha256_file(ms_path) != manifest["marksheet_sha256"]:
            raise ValueError(f"{ms_path} changed since {out} was prepared; prepare it again")
        ms = readers.read_marksheet(ms_path).set_index("case_id")
        # every column as the text it is, so the rest of the table is written back unchanged
        table = pd.read_csv(out / "cases.csv", dtype=str, keep_default_na=False)
        candidates = manifest.get("split_candidates") or list(table["case_id"])
        splits, name = _splits_of(candidates, ms, seed, split)
        table["split"] = table["case_id"].map(splits["split"])
        table["fold"] = table["case_id"].map(splits["fold"]).astype(int)
        (out / "manifest.json").unlink()
        with atomic_path(out / "cases.csv") as tmp:
            table.to_csv(tmp, index=False)
        manifest.update(split_counts=_split_counts(table), splits=name, split=split,
                        **(extra_manifest or {}))
        write_json_atomic(out / "manifest.json", manifest)
    return manifest


def _fill(buffers: dict, n: int, i: int, arrays: dict) -> None:
    """Put one case's arrays into row ``i`` of the cache tensors (allocated on first use)."""
    import torch

    if not buffers:
        buffers["images"] = torch.zeros((n, *arrays["images"].shape), dtype=torch.float16)
        for k in ("lesions", "gland", "zones"):
            buffers[k] = torch.zeros((n, *arrays[k].shape), dtype=torch.uint8)
    for k in ("images", "lesions", "gland", "zones"):
        buffers[k][i] = torch.from_numpy(np.ascontiguousarray(arrays[k]))


def _read_case_arrays(d: Path) -> dict:
    import nibabel as nib

    out = {"images": np.asarray(nib.load(str(d / "image.nii.gz")).dataobj, dtype=np.float32)
           .transpose(3, 2, 1, 0).astype(np.float16)}
    for k in ("lesions", "gland", "zones"):
        out[k] = np.asarray(nib.load(str(d / f"{k}.nii.gz")).dataobj, dtype=np.uint8).transpose(2, 1, 0)
    return out


def _write_cache(out: Path, prepared: list[str], buffers: dict, row: dict, filled: set) -> None:
    """cache.pt: images float16 (N, 3, D, H, W); lesions/gland/zones uint8 (N, D, H, W); case_ids.

    Cases prepared in this call are already in ``buffers`` (rows ``row[case_id]``); cases
    finished by an earlier call are read back from their NIfTI files. Peak memory ~ the cache
    itself (1000 cases at 20 x 128 x 128 are ~2 GB in float16), twice that only when some cases
    were bad (the rows of the prepared ones are then gathered).
    """
    import torch

    for c in prepared:
        if c not in filled:
            _fill(buffers, len(row), row[c], _read_case_arrays(out / "cases" / c))
    idx = [row[c] for c in prepared]
    if idx == list(range(len(row))):
        cache = dict(buffers)
    else:
        sel = torch.tensor(idx, dtype=torch.long)
        cache = {k: v.index_select(0, sel) for k, v in buffers.items()}
    cache["case_ids"] = list(prepared)
    with atomic_path(out / "cache.pt") as tmp:
        torch.save(cache, tmp)


def _versions() -> dict:
    from ..repro import package_versions

    names = ("prostate-course", "numpy", "SimpleITK", "nibabel", "torch", "scikit-learn", "pandas")
    return {"python": sys.version.split()[0],
            **{k: v for k, v in package_versions(names).items() if v != "not installed"}}


__all__ = ["prepare_dataset", "prepare_case", "update_splits", "PrepareReport", "PrepareError",
           "CaseError", "crop_grid", "gland_centre", "zscore_clip", "clean_temporaries"]
