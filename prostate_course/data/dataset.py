"""The prepared dataset as the notebooks see it: table, tensor cache, 2D slices, 3D volumes.

``ensure_dataset(profile)`` makes (synthesise + prepare) or finds the profile's prepared dataset,
keyed by its parameters, so the runner and every notebook share one copy::

    ds = ensure_dataset("smoke")
    slices = ds.slices(split="train")            # SliceSet of (N, 3, H, W) float32 slices
    slices.subset(label_budget(ds.table, 0.1))   # the 10 % label budget
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..io_utils import config_hash, sha256_file
from ..paths import data_root
from .prepare import prepare_dataset, prepare_params, update_splits
from .readers import MARKSHEET

_STR_COLS = {"case_id": str, "patient_id": str, "study_id": str, "pirads_reports": str,
             "lesion_PIRADS": str, "lesion_GS": str, "lesion_ISUP": str, "warnings": str,
             "masks_resampled": str}


def read_cases_table(path) -> pd.DataFrame:
    """Read ``cases.csv`` with ids and report strings kept as text ("" when empty)."""
    t = pd.read_csv(path, dtype=_STR_COLS, keep_default_na=True)
    for c in _STR_COLS:
        if c in t.columns:
            t[c] = t[c].fillna("").astype(object)
    if "pirads_majority" in t.columns:
        t["pirads_majority"] = t["pirads_majority"].astype("Int64")
    return t


def _select(table: pd.DataFrame, split, case_ids) -> list[str]:
    t = table
    if split not in (None, "all"):
        splits = [split] if isinstance(split, str) else list(split)
        unknown = set(splits) - {"train", "val", "test"}
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; use train, val, test or all")
        absent = [s for s in splits if not (t["split"] == s).any()]
        if absent:  # e.g. "val" with data.split.val_fraction 0: an empty selection, said aloud
            warnings.warn(f"this dataset has no {' or '.join(map(repr, absent))} split (see "
                          f"data.split in the profile; val_fraction 0 means no validation "
                          f"split): the selection is empty", stacklevel=3)
        t = t[t["split"].isin(splits)]
    if case_ids is not None:
        wanted = set(case_ids)
        missing = wanted - set(table["case_id"])
        if missing:
            raise KeyError(f"case ids not in the dataset: {sorted(missing)[:5]}")
        t = t[t["case_id"].isin(wanted)]
    return list(t["case_id"])


def _keep_rows(have: list, case_ids, what: str) -> list[int]:
    """Positions in ``have`` of the ids in ``case_ids`` (order of ``have``); unknown ids raise."""
    wanted = set(case_ids)
    missing = wanted - set(have)
    if missing:
        raise KeyError(f"case ids not in this {what}: {sorted(missing)[:5]}")
    return [i for i, c in enumerate(have) if c in wanted]


def _tensors_to(obj, device):
    """A copy of dataclass ``obj`` with its tensor fields moved to ``device``."""
    return replace(obj, **{f.name: getattr(obj, f.name).to(device) for f in fields(obj)
                           if isinstance(getattr(obj, f.name), torch.Tensor)})


#: per-exam metadata that slices and volumes carry: what a radiology report and the clinical
#: record give for every exam (no histopathology outcome), usable without spending labels
META_COLUMNS = ("patient_age", "psa", "psad", "prostate_volume", "center", "pirads_reports",
                "n_reports", "pirads_max", "pirads_majority", "pirads_conf")


def _meta(t: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in META_COLUMNS if c in t.columns]
    return t[cols].reset_index(drop=True)


@dataclass
class SliceSet:
    """2D axial slices of several cases, as tensors (index a batch with ``images[idx]``).

    images (N, 3, H, W) (T2W, ADC, HBV; float16 as cached - cast a batch with ``.float()``);
    slice_label (N,) int64: 1 if any lesion voxel (csPCa) is in the slice; case_index (N,)
    int64 into ``case_ids``; case_label (n_cases,) int64 = case_csPCa; patient_ids (n_cases,);
    slice_z (N,) slice number in the crop; lesion_mask (N, H, W) uint8 ISUP values and
    gland_mask (N, H, W) uint8; meta: one row per case (:data:`META_COLUMNS`: age, PSA, PSA
    density, volume, PI-RADS reports, majority, confidence). An *unlabelled* set
    (:meth:`unlabelled`, for pretraining) has no slice_label, case_label or lesion_mask.
    """

    images: torch.Tensor
    slice_label: torch.Tensor | None
    case_index: torch.Tensor
    case_ids: list
    case_label: torch.Tensor | None
    patient_ids: list
    slice_z: torch.Tensor
    lesion_mask: torch.Tensor | None = None
    gland_mask: torch.Tensor | None = None
    meta: pd.DataFrame | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labelled(self) -> bool:
        return self.slice_label is not None

    def unlabelled(self) -> "SliceSet":
        """The same slices without any label (no slice or case label, no lesion mask): what
        pretraining may see. Metadata (reports, clinical values) stay."""
        return replace(self, slice_label=None, case_label=None, lesion_mask=None)

    def subset(self, case_ids) -> "SliceSet":
        """The slices of ``case_ids`` only (case order of this set kept; unknown ids raise)."""
        keep = _keep_rows(self.case_ids, case_ids, "SliceSet")
        remap = torch.full((len(self.case_ids),), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        keep_t = torch.tensor(keep, dtype=torch.long)
        sel = torch.isin(self.case_index, keep_t.to(self.case_index.device))

        def take(t):
            return None if t is None else t[sel]

        return SliceSet(
            images=self.images[sel],
            slice_label=take(self.slice_label),
            case_index=remap.to(self.case_index.device)[self.case_index[sel]],
            case_ids=[self.case_ids[i] for i in keep],
            case_label=None if self.case_label is None else self.case_label[keep_t.to(self.case_label.device)],
            patient_ids=[self.patient_ids[i] for i in keep],
            slice_z=self.slice_z[sel],
            lesion_mask=take(self.lesion_mask),
            gland_mask=take(self.gland_mask),
            meta=None if self.meta is None else self.meta.iloc[keep].reset_index(drop=True),
        )

    def slice_meta(self) -> pd.DataFrame | None:
        """``meta`` repeated for every slice (row i = the exam of slice i)."""
        return None if self.meta is None else self.meta.iloc[self.case_index.cpu().numpy()].reset_index(drop=True)

    def to(self, device) -> "SliceSet":
        return _tensors_to(self, device)


@dataclass
class VolumeSet:
    """3D crops: images (N, 3, D, H, W) float32; lesions, gland, zones (N, D, H, W) uint8;
    case_label (N,) int64 = case_csPCa; case_ids, patient_ids lists; meta one row per case
    (:data:`META_COLUMNS`)."""

    images: torch.Tensor
    lesions: torch.Tensor
    gland: torch.Tensor
    zones: torch.Tensor
    case_label: torch.Tensor
    case_ids: list
    patient_ids: list
    meta: pd.DataFrame | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, case_ids) -> "VolumeSet":
        keep = _keep_rows(self.case_ids, case_ids, "VolumeSet")
        idx = torch.tensor(keep, dtype=torch.long, device=self.images.device)
        return VolumeSet(self.images[idx], self.lesions[idx], self.gland[idx], self.zones[idx],
                         self.case_label[idx], [self.case_ids[i] for i in keep],
                         [self.patient_ids[i] for i in keep],
                         None if self.meta is None else self.meta.iloc[keep].reset_index(drop=True))

    def to(self, device) -> "VolumeSet":
        return _tensors_to(self, device)


class PreparedDataset:
    """A prepared dataset folder (see docs/ARCHITECTURE.md "Prepared dataset")."""

    def __init__(self, root):
        self.root = Path(root)
        for f in ("cases.csv", "cache.pt", "manifest.json"):
            if not (self.root / f).is_file():
                raise FileNotFoundError(
                    f"{self.root} is not a finished prepared dataset ({f} missing); "
                    "run ensure_dataset(profile) or `prostate-course prepare`"
                )
        self.table = read_cases_table(self.root / "cases.csv")
        self.manifest = json.loads((self.root / "manifest.json").read_text())
        self._cache = None
        self._index: dict = {}

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.root)!r}, {len(self.table)} cases)"

    @property
    def key(self) -> str:
        """The dataset key (folder + split settings; see :func:`dataset_key`)."""
        return self.manifest.get("key", self.root.name)

    @property
    def splits(self) -> str:
        """Which split the table carries: ``"course"`` or ``"picai_official:fold<k>"``."""
        return self.manifest.get("splits", "course")

    def __len__(self) -> int:
        return len(self.table)

    def cache(self) -> dict:
        """The tensor cache (loaded once with ``weights_only=True``, then kept until
        :meth:`release`). It is memory-mapped: only the pages a gather reads come into RAM, and
        releasing it unmaps them, leaving no freed heap behind (05's data cell: 1.11 -> 0.95 GB peak)."""
        if self._cache is None:
            c = torch.load(self.root / "cache.pt", map_location="cpu", weights_only=True, mmap=True)
            if list(c["case_ids"]) != list(self.table["case_id"]):
                raise ValueError(f"{self.root}: cache.pt and cases.csv list different cases; re-run prepare")
            self._index = {cid: i for i, cid in enumerate(c["case_ids"])}
            self._cache = c
        return self._cache

    def load_case(self, case_id: str) -> dict:
        """NIfTI arrays of one case: image (x, y, z, 3) float32, gland/zones/lesions (x, y, z) uint8, affine."""
        import nibabel as nib

        d = self.root / "cases" / case_id
        if not d.is_dir():
            raise KeyError(f"case {case_id!r} not in {self.root}")
        img = nib.load(str(d / "image.nii.gz"))
        out = {"image": np.asarray(img.dataobj, dtype=np.float32), "affine": img.affine.copy()}
        for k in ("gland", "zones", "lesions"):
            out[k] = np.asarray(nib.load(str(d / f"{k}.nii.gz")).dataobj, dtype=np.uint8)
        return out

    def _rows(self, split, case_ids):
        ids = _select(self.table, split, case_ids)
        self.cache()  # loads the cache and fills self._index
        idx = torch.tensor([self._index[i] for i in ids], dtype=torch.long)
        t = self.table.set_index("case_id").loc[ids]
        return ids, idx, t

    def slices(self, split="train", case_ids=None, gland_only: bool = True,
               masks: bool = True) -> SliceSet:
        """Axial slices of the selected cases. ``gland_only`` keeps slices with gland voxels
        (all slices of a case without a gland mask); ``masks`` adds the lesion and gland masks.
        Images stay float16 as cached (half the memory of float32; batches are cast)."""
        ids, idx, t = self._rows(split, case_ids)
        c = self.cache()
        gl = c["gland"][idx]                    # (n, D, H, W) uint8: small
        n, d = gl.shape[:2]
        keep = torch.ones(n, d, dtype=torch.bool)
        if gland_only:
            has = (gl.flatten(2) > 0).any(-1)  # (n, d) bool
            no_gland = ~has.any(-1)
            keep = has | no_gland[:, None]
        ci, zi = keep.nonzero(as_tuple=True)
        rows = idx[ci]                          # one gather from the cache, no volume copy
        lesion_slices = c["lesions"][rows, zi]
        return SliceSet(
            images=c["images"][rows, :, zi],
            slice_label=(lesion_slices.flatten(1) > 0).any(-1).long(),
            case_index=ci.long(),
            case_ids=ids,
            case_label=torch.tensor(t["case_csPCa"].to_numpy(dtype=np.int64)),
            patient_ids=list(t["patient_id"]),
            slice_z=zi.long(),
            lesion_mask=lesion_slices if masks else None,
            gland_mask=c["gland"][rows, zi] if masks else None,
            meta=_meta(t),
        )

    def release(self) -> None:
        """Drop the tensor cache from memory (slice and volume sets are copies and stay valid;
        the next call that needs the cache loads it again)."""
        self._cache = None

    def volumes(self, split="train", case_ids=None) -> VolumeSet:
        """3D crops of the selected cases."""
        ids, idx, t = self._rows(split, case_ids)
        c = self.cache()
        return VolumeSet(c["images"][idx].float(), c["lesions"][idx], c["gland"][idx], c["zones"][idx],
                         torch.tensor(t["case_csPCa"].to_numpy(dtype=np.int64)), ids, list(t["patient_id"]),
                         _meta(t))


# ----------------------------------------------------------------------------- ensure_*
def _profile(profile):
    from ..profile import Profile, load_profile

    return profile if isinstance(profile, Profile) else load_profile(profile)


def _synth_name(data: dict) -> str:
    """Folder of a synthetic cohort: size, seed, generator version (a new generator version
    never reuses a cohort made by an older one) and a hash of any ``data.synth`` overrides."""
    from .synthetic import GENERATOR_VERSION

    name = f"synthetic-n{int(data['n_cases'])}-s{int(data['seed'])}-g{GENERATOR_VERSION}"
    synth = data.get("synth") or {}
    return f"{name}-{config_hash(synth)}" if synth else name


def _raw_complete(root: Path) -> bool:
    """A synthetic raw folder is complete once its marksheet exists (the generator writes it
    last) and its ``synth_manifest.json``, if any, says so."""
    if not (root / "labels" / MARKSHEET).is_file() or not (root / "images").is_dir():
        return False
    mf = root / "synth_manifest.json"
    if mf.is_file():
        try:
            return json.loads(mf.read_text()).get("status", "complete") == "complete"
        except json.JSONDecodeError:
            return False
    return True


def ensure_raw(profile, *, progress: bool = True) -> Path:
    """The raw dataset of ``profile``: generated on first use for synthetic data.

    synthetic: ``data_root()/raw/synthetic-n<N>-s<seed>[-<hash of data.synth>]`` made by
    ``generate_cohort`` with ``data.synth`` (SynthParams overrides); an interrupted generation
    resumes on the next call (the generator is resumable and writes its marksheet last).
    picai: ``data_root()/raw/picai`` must exist (run data_download/picai.py).
    """
    p = _profile(profile)
    data = p.data
    src = data["source"]
    raw_root = data_root() / "raw"
    if src == "synthetic":
        target = raw_root / _synth_name(data)
        if _raw_complete(target):
            return target
        from .synthetic import generate_cohort

        target.mkdir(parents=True, exist_ok=True)
        generate_cohort(target, int(data["n_cases"]), seed=int(data["seed"]), progress=progress,
                        **(data.get("synth") or {}))
        if not _raw_complete(target):
            raise RuntimeError(f"the synthetic generator did not finish {target} (no marksheet written)")
        return target
    if src == "picai":
        target = raw_root / "picai"
        need = [target / "images", target / "labels" / MARKSHEET]
        if not all(x.exists() for x in need):
            raise FileNotFoundError(
                f"PI-CAI data not found in {target} (need images/ and labels/clinical_information/"
                "marksheet.csv). Download it first: python data_download/picai.py --folds "
                f"{' '.join(str(k) for k in p.download_folds)} "
                f"(then set PROSTATE_COURSE_DATA if you keep data elsewhere than {data_root()})."
            )
        return target
    raise ValueError(f"profile {p.name!r}: unknown data.source {src!r} (synthetic or picai)")


def dataset_key(profile, *, progress: bool = True) -> tuple[str, dict]:
    """The dataset key ``<folder>-split-<hash>`` and the parameters it hashes (raw data,
    prepare parameters, split settings). Two runs with the same key see the same cases, the
    same arrays and the same train/val/test split."""
    p = _profile(profile)
    _, key, params = _dataset_key(p, ensure_raw(p, progress=progress))
    return key, params


def _dataset_key(p, raw: Path) -> tuple[str, str, dict]:
    """(prepared folder name, dataset key, key parameters).

    The folder, ``<source>-<hash(raw, prepare)>``, holds what the split does not change (cases,
    cache); the key adds the split settings, so changing them changes the key while the folder
    is kept and only its split columns are recomputed (:func:`.prepare.update_splits`).
    """
    from .splits import split_settings

    data = p.data
    if data["source"] == "synthetic":
        raw_id = {"name": raw.name}
    else:  # real data: identify it by its marksheet and the image folders present
        raw_id = {"name": raw.name, "marksheet": sha256_file(raw / "labels" / MARKSHEET),
                  "n_patients": sum(1 for _ in (raw / "images").glob("*/"))}
    n = data.get("n_cases")
    images = {"raw": raw_id, "prepare": prepare_params(data["spacing"], data["crop"], data.get("seed", 0),
                                                       None if data["source"] == "synthetic" else n)}
    split = split_settings(data.get("split"))
    folder = f"{data['source']}-{config_hash(images)}"
    return folder, f"{folder}-split-{config_hash(split)[:8]}", {**images, "split": split}


def ensure_dataset(profile, *, workers=None, progress=True) -> PreparedDataset:
    """Make (synthesise + prepare) or find the prepared dataset of ``profile`` (name or Profile).

    Reused when ``data_root()/prepared/<folder>/manifest.json`` records the same parameters; if
    only the split settings differ, the split is recomputed in place (no case is prepared again).
    """
    p = _profile(profile)
    raw = ensure_raw(p, progress=progress)
    folder, key, params = _dataset_key(p, raw)
    out = data_root() / "prepared" / folder
    mf = out / "manifest.json"
    want = json.loads(json.dumps(params))
    extra = {"key": key, "key_params": params, "profile": p.name}
    if mf.is_file():
        try:
            have = json.loads(mf.read_text()).get("key_params") or {}
        except (json.JSONDecodeError, FileNotFoundError):
            have = {}
        if have == want:
            return PreparedDataset(out)
        if have and {k: v for k, v in have.items() if k != "split"} == {k: v for k, v in want.items() if k != "split"}:
            update_splits(out, params["split"], extra_manifest=extra)
            return PreparedDataset(out)
    data = p.data
    prepare_dataset(
        raw / "images", raw / "labels", out,
        spacing=data["spacing"], crop=data["crop"], seed=data.get("seed", 0),
        max_cases=params["prepare"]["max_cases"], workers=workers, progress=progress,
        extra_manifest=extra, split=params["split"],
    )
    return PreparedDataset(out)


__all__ = ["PreparedDataset", "SliceSet", "VolumeSet", "META_COLUMNS", "ensure_raw", "ensure_dataset",
           "dataset_key", "read_cases_table"]
