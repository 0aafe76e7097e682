"""Named run profiles: one YAML per profile, shipped in ``prostate_course/profiles/``.

Keys (the README's "Profiles" table; docs/ARCHITECTURE.md, docs/PROTOCOL.md): ``name``,
``description``, ``device``, ``timeout_s`` (per notebook), ``memory_limit_mb`` (peak resident
memory a notebook may use; the runner's report flags any notebook above it; null = no limit),
``data`` {source, n_cases, seed, spacing (z, y, x mm), crop (z, y, x voxels), download_folds
(the PI-CAI image archives data_download fetches), split {scheme: course | picai_official,
test_fraction, val_fraction, test_fold}}, ``label_fractions``, ``seeds``, ``protocol`` (the
fine-tuning and read-out settings every comparison of notebooks 01-05 shares, see
:data:`PROTOCOL_DEFAULTS`) and ``notebooks`` {"00": {...}, "01": {...}} with each notebook's
own settings.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

REQUIRED_KEYS = ("name", "data", "label_fractions", "seeds", "notebooks")

#: the shared evaluation protocol (prostate_course.protocol); a profile's ``protocol`` section
#: overrides these key by key
PROTOCOL_DEFAULTS = {
    "seeds_by_fraction": {},     # {fraction: [seeds]}: more seeds where training is cheap
    "finetune": {"epochs": 6, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4,
                 "min_steps_per_epoch": 5, "max_steps_per_epoch": 30},
    "augment": True,             # the course's default batch augmentation while fine-tuning
    "val_share": 0.2,            # the labelled patients of a budget: 4:1 fit / validation
    "min_val_positives": 5,      # below this many positive patients: no validation set
    "probe_Cs": [0.01, 0.1, 1.0],
    "knn_ks": [5, 20, 50],
    "bootstrap": 1000,           # replicates of every bootstrap interval
}
REQUIRED_DATA_KEYS = ("source", "n_cases", "seed", "spacing", "crop")


class UnknownProfileError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.args[0]


def available_profiles() -> list[str]:
    files = resources.files("prostate_course.profiles")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


@dataclass
class Profile:
    """A loaded profile. ``profile.notebook("01")`` gives that notebook's settings."""

    name: str
    raw: dict = field(repr=False)

    @property
    def data(self) -> dict:
        return self.raw["data"]

    @property
    def label_fractions(self) -> list[float]:
        return list(self.raw["label_fractions"])

    @property
    def seeds(self) -> list[int]:
        return list(self.raw["seeds"])

    @property
    def protocol(self) -> dict:
        """The shared protocol settings: :data:`PROTOCOL_DEFAULTS` with each key the profile
        gives replaced as a whole (a profile's ``finetune`` section is the complete set)."""
        out = copy.deepcopy(PROTOCOL_DEFAULTS)
        out.update(copy.deepcopy(self.raw.get("protocol") or {}))
        return out

    @property
    def protocol_seeds(self) -> dict:
        """Seeds per label fraction: {fraction: [seeds], "default": seeds}."""
        by = {float(k): [int(s) for s in v] for k, v in self.protocol["seeds_by_fraction"].items()}
        return {**by, "default": self.seeds}

    @property
    def device(self) -> str:
        return self.raw.get("device", "auto")

    @property
    def timeout_s(self) -> int:
        return int(self.raw.get("timeout_s", 1800))

    @property
    def memory_limit_mb(self) -> float | None:
        """Peak resident memory (MB) a notebook may use at this profile; None = no limit."""
        v = self.raw.get("memory_limit_mb")
        return None if v is None else float(v)

    @property
    def download_folds(self) -> list[int]:
        """The PI-CAI image archives (folds 0-4) ``data_download/picai.py`` fetches."""
        return [int(k) for k in self.data.get("download_folds", [0])]

    def notebook(self, number: str) -> dict:
        """Settings of notebook ``number`` ("01" or "01_transfer_learning"), {} if none."""
        return dict(self.raw.get("notebooks", {}).get(str(number)[:2], {}) or {})

    def to_dict(self) -> dict:
        return copy.deepcopy(self.raw)


#: keys a profile may leave out but an override may set
OPTIONAL_KEYS = {"data.synth", "data.download_folds", "data.split", "data.split.scheme",
                 "data.split.test_fraction", "data.split.val_fraction", "data.split.test_fold",
                 "memory_limit_mb"}


def _protocol_default(dotted: str) -> bool:
    """Whether ``dotted`` names a key of :data:`PROTOCOL_DEFAULTS` ("protocol.finetune.lr")."""
    keys = dotted.split(".")
    if keys[0] != "protocol":
        return False
    d = PROTOCOL_DEFAULTS
    for k in keys[1:]:
        if not isinstance(d, dict) or k not in d:
            return keys[1:2] == ["seeds_by_fraction"]
        d = d[k]
    return True


def _set_dotted(d: dict, dotted: str, value: Any) -> bool:
    """Set ``d[a][b][c] = value`` for ``"a.b.c"``; return whether the key already existed."""
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(d.get(k, {}), dict):
            raise ValueError(f"override {dotted!r}: {k!r} is not a section of the profile")
        d = d.setdefault(k, {})
    existed = keys[-1] in d
    d[keys[-1]] = value
    return existed


#: The profile name that picks one for the machine: gpu with a CUDA or Apple MPS device, else cpu.
AUTO = "auto"


def resolve_profile_name(name: str) -> str:
    """``"auto"`` -> ``"gpu"`` when torch sees a CUDA or MPS device, else ``"cpu"``; any other
    name is returned unchanged (so notebooks default to real lessons, never to smoke)."""
    if name != AUTO:
        return name
    import torch

    mps = getattr(torch.backends, "mps", None)
    return "gpu" if torch.cuda.is_available() or (mps is not None and mps.is_available()) else "cpu"


def load_profile(name: str, overrides: dict | None = None) -> Profile:
    """Load profile ``name``; ``overrides`` maps dotted keys to values, e.g.
    ``{"data.n_cases": 20, "notebooks.01.epochs": 1}``.

    An unknown name raises :class:`UnknownProfileError` naming the available ones.
    """
    if isinstance(name, Profile):
        return name
    names = available_profiles()
    if name not in names:
        raise UnknownProfileError(
            f"unknown profile {name!r}; available profiles: {', '.join(names)}"
        )
    text = resources.files("prostate_course.profiles").joinpath(f"{name}.yaml").read_text()
    raw = yaml.safe_load(text)
    for dotted, value in (overrides or {}).items():
        known = (_set_dotted(raw, dotted, value) or dotted in OPTIONAL_KEYS
                 or dotted.startswith("data.synth.") or _protocol_default(dotted))
        if not known:  # a new key may be meant (a notebook reads it with a default), or a typo
            warnings.warn(f"profile {name!r} has no key {dotted!r}; it was added - check the spelling "
                          f"if you meant an existing setting", stacklevel=2)
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    missing += [f"data.{k}" for k in REQUIRED_DATA_KEYS if k not in raw.get("data", {})]
    if missing:
        raise ValueError(f"profile {name!r} lacks keys: {', '.join(missing)}")
    return Profile(name=raw["name"], raw=raw)


def parse_override(text: str) -> tuple[str, Any]:
    """``"data.n_cases=20"`` -> ``("data.n_cases", 20)`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)
