"""Writing the raw PI-CAI layout: images, masks, marksheet, hidden truth, manifest.

Deterministic, idempotent and atomic per file (see :func:`generate_cohort`).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from ...io_utils import write_json_atomic, write_text_atomic
from ..layout import MARKSHEET, SEQUENCES, gland_dir, lesion_dir, zones_dir
from .clinical import simulate_clinical
from .params import GENERATOR_VERSION, SynthParams
from .phantom import _Grid, render_case

_SEQS = SEQUENCES


def case_paths(out_dir: str | os.PathLike, patient_id: int, study_id: int) -> dict[str, Path]:
    """Where the files of one case live in the raw PI-CAI layout."""
    out = Path(out_dir)
    cid = f"{int(patient_id)}_{int(study_id)}"
    paths = {s: out / "images" / str(int(patient_id)) / f"{cid}_{s}.mha" for s in _SEQS}
    paths["gland"] = out / "labels" / gland_dir() / f"{cid}.nii.gz"
    paths["zones"] = out / "labels" / zones_dir() / f"{cid}.nii.gz"
    paths["lesions"] = out / "labels" / lesion_dir() / f"{cid}.nii.gz"
    return paths


def _write_sitk(arr: np.ndarray, grid: _Grid, path: Path, compress: bool = True) -> None:
    """Write with SimpleITK to a temporary name (same extension) and rename: never half-written."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(grid.spacing)
    img.SetOrigin(tuple(float(v) for v in grid.origin))
    img.SetDirection(tuple(float(v) for v in grid.direction.ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{ext}")
    try:
        sitk.WriteImage(img, str(tmp), useCompression=compress)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_case(job: tuple) -> tuple[str, float, bool]:
    """Worker: render and write one case unless all its files exist (idempotent)."""
    row, seed, pdict, out_dir = job
    t0 = time.perf_counter()
    paths = case_paths(out_dir, row["patient_id"], row["study_id"])
    cid = f"{int(row['patient_id'])}_{int(row['study_id'])}"
    if all(pth.is_file() for pth in paths.values()):
        return cid, 0.0, False
    try:
        c = render_case(row, seed, SynthParams(**pdict))
        for s in _SEQS:
            # T2W uncompressed (noise does not compress: zlib would cost ~40 % of the case time)
            _write_sitk(c[s], c["t2w_grid"] if s == "t2w" else c["dwi_grid"], paths[s], compress=s != "t2w")
        for k in ("gland", "zones", "lesions"):
            _write_sitk(c[k], c["t2w_grid"], paths[k])
    except Exception as e:  # name the case in the error
        raise RuntimeError(f"synthetic case {cid} (index {row['case_index']}) failed: {e!r}") from e
    return cid, time.perf_counter() - t0, True


def _fmt_num(x: float, decimals: int) -> str:
    """Format like the real marksheet: '13', '7.7', '0.09'; '' for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    s = f"{round(float(x), decimals):.{decimals}f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


def _marksheet_text(df: pd.DataFrame) -> str:
    """CSV text with the real formatting (integers without '.0', empty for missing)."""
    out = pd.DataFrame({
        "patient_id": df["patient_id"].astype(int).astype(str),
        "study_id": df["study_id"].astype(int).astype(str),
        "mri_date": df["mri_date"],
        "patient_age": df["patient_age"].astype(int).astype(str),
        "psa": [_fmt_num(x, 2) for x in df["psa"]],
        "psad": [_fmt_num(x, 2) for x in df["psad"]],
        "prostate_volume": [_fmt_num(x, 1) for x in df["prostate_volume"]],
        "histopath_type": df["histopath_type"], "lesion_PIRADS": df["lesion_PIRADS"],
        "lesion_GS": df["lesion_GS"], "lesion_ISUP": df["lesion_ISUP"],
        "case_ISUP": df["case_ISUP"].astype(int).astype(str),
        "case_csPCa": df["case_csPCa"], "center": df["center"],
        "pirads_reports": df["pirads_reports"],
    })
    return out.to_csv(index=False, lineterminator="\n")


def generate_cohort(out_dir: str | os.PathLike, n_cases: int, seed: int = 0, *,
                    workers: int | None = None, progress: bool = True, **params) -> Path:
    """Write a synthetic cohort of ``n_cases`` in the raw PI-CAI layout under ``out_dir``.

    Deterministic (same seed and parameters -> same bytes, whatever ``workers``), idempotent
    (finished cases are not rewritten; an interrupted run resumes) and atomic per file (temporary
    name, then rename); the marksheet is written last. ``params`` override :class:`SynthParams`
    fields, e.g. ``lesion_contrast=0.8``. A folder made with another seed, size or parameters is
    refused with a ValueError (use a new folder). Returns ``out_dir`` as an absolute Path.
    """
    out = Path(out_dir).expanduser().resolve()
    p = SynthParams.from_overrides(params)
    if int(n_cases) != n_cases or n_cases < 1:
        raise ValueError(f"n_cases must be a positive integer, got {n_cases!r}")
    n_cases = int(n_cases)
    identity = {"generator": "prostate_course.data.synthetic", "version": GENERATOR_VERSION,
                "seed": int(seed), "n_cases": n_cases, "params": p.to_dict()}
    manifest = out / "synth_manifest.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        old_id = {k: old.get(k) for k in identity}
        if old_id != json.loads(json.dumps(identity)):
            diff = [k for k in identity if old_id.get(k) != json.loads(json.dumps(identity[k]))]
            raise ValueError(f"{out} holds a synthetic cohort made with other settings ({diff} differ: "
                             f"{ {k: old_id.get(k) for k in diff} }); choose another out_dir")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(manifest, {**identity, "status": "in progress"})
    df = simulate_clinical(n_cases, seed, _params=p)
    rows = df.to_dict("records")
    jobs = [(r, int(seed), p.to_dict(), str(out)) for r in rows]
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    workers = max(1, min(int(workers), n_cases))
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    n_written = 0
    bar = tqdm(total=n_cases, desc=f"synthetic cohort ({workers} workers)", unit="case", disable=not progress)
    try:
        if workers == 1:
            for job in jobs:
                n_written += _write_case(job)[2]
                bar.update()
        else:
            import multiprocessing as mp

            # fork on Linux: works from notebooks and from scripts without a __main__ guard; the
            # workers use only numpy/SimpleITK (no torch, no thread pools inherited in use).
            # Elsewhere (macOS, Windows) fork is unsafe or absent: spawn.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            with mp.get_context(method).Pool(workers) as pool:
                for _, _, wrote in pool.imap_unordered(_write_case, jobs, chunksize=1):
                    n_written += wrote
                    bar.update()
    finally:
        bar.close()
    ms = out / "labels" / MARKSHEET
    text = _marksheet_text(df)
    if not ms.is_file() or ms.read_text() != text:
        write_text_atomic(ms, text)
    gt = out / "ground_truth.csv"
    gt_cols = ["patient_id", "study_id", "case_index"] + [c for c in df.columns if c.startswith("gt_")]
    gtext = df[gt_cols].to_csv(index=False, lineterminator="\n")
    if not gt.is_file() or gt.read_text() != gtext:
        write_text_atomic(gt, gtext)
    write_json_atomic(manifest, {**identity, "status": "complete", "n_written_last_run": n_written,
                                 "seconds_last_run": round(time.perf_counter() - t0, 2)})
    return out


def load_truth(raw_dir: str | os.PathLike) -> tuple[pd.DataFrame, int, SynthParams]:
    """The hidden truth of a generated cohort: (ground_truth.csv rows, seed, parameters).

    The rows carry what :func:`prostate_course.data.synthetic.phantom.case_phantom` and
    :func:`prostate_course.data.synthetic.simulate_annotators` need (case_index, gt_findings,
    gt_volume_ml, ...), so the phantom of any case can be drawn again. A folder that is not a
    complete synthetic cohort raises FileNotFoundError naming the missing file.
    """
    raw = Path(raw_dir)
    manifest, gt = raw / "synth_manifest.json", raw / "ground_truth.csv"
    for f in (manifest, gt):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: not found (not a synthetic cohort made by generate_cohort)")
    m = json.loads(manifest.read_text())
    if m.get("status") != "complete":
        raise FileNotFoundError(f"{manifest}: the cohort is not complete (status {m.get('status')!r})")
    return pd.read_csv(gt), int(m["seed"]), SynthParams.from_overrides(m.get("params") or {})
