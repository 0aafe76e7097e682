"""Reproducibility: seeding, device choice, environment report, run manifest."""
from __future__ import annotations

import os
import platform
import random
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

CORE_PACKAGES = (
    "prostate-course", "torch", "monai", "numpy", "pandas", "nibabel", "SimpleITK",
    "scikit-learn", "matplotlib", "picai_eval", "papermill", "nbval",
)


def seed_everything(seed: int, deterministic: bool = True) -> int:
    """Seed python, numpy and torch (CPU and all GPUs); on CPU ask torch for deterministic
    algorithms so the same seed gives the same numbers. DataLoader workers are seeded by
    :func:`seed_worker` (pass it as ``worker_init_fn``). Returns the seed."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        # warn_only: a few CUDA kernels have no deterministic version; CPU ones all do.
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False
    return seed


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoader: derive numpy/random seeds from torch's per-worker seed."""
    import torch

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _libc():
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def tune_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Fix glibc malloc's two thresholds for tensor work; True where they were set (glibc).

    By default glibc serves blocks over 128 KiB with a fresh ``mmap`` and raises that threshold
    (up to 32 MiB) only after such a block is freed, and it hands the heap's top back to the
    system as soon as 2x the threshold is free there. Whether a training step's 4-16 MiB
    activations then reuse resident pages or are zero-filled anew by the kernel at every step
    depends on what ran before: a fresh 05 fit took 7 million page faults and 11 s more system
    time than the same fit after a large load had raised the threshold. Fixed at 32 MiB (glibc's
    own ceiling) and a 256 MiB trim threshold, steps reuse the heap; :func:`release_memory`
    still returns free memory at the points the course chooses (``man 3 mallopt``). Pinning
    both low instead (128 KiB: every activation an mmap) made training 1.5x slower for 84 MB
    less peak (docs/PROTOCOL.md, "Memory").
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
                and libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))


#: Imported (and frozen) by :func:`freeze_imports`: the libraries every training notebook loads.
COURSE_LIBRARIES = ("torch", "monai.networks.nets", "pandas", "sklearn.linear_model")


def freeze_imports(modules=COURSE_LIBRARIES) -> int:
    """Import ``modules``, then move every object alive into the garbage collector's permanent
    generation (``gc.freeze``), so that later collections walk only what the notebook creates.

    Python's cyclic collector visits every tracked object at each full collection. After
    ``import monai`` (which pulls in jsonschema's grammars) that is about 460,000 objects, and
    one ``gc.collect()`` took 0.33 s on 2 cores: notebook 03's probe cell paid it 21 times (8 s
    of its 13 s at the smoke profile). Module-level objects live as long as the kernel, so
    freezing them loses nothing; objects freed by reference counting are still freed.
    Returns the number of frozen objects.
    """
    import gc
    import importlib

    for name in modules:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def release_memory() -> None:
    """Collect garbage and hand free heap memory back to the system (glibc ``malloc_trim``)."""
    import gc

    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def torch_generator(seed: int):
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return g


def get_device(preference: str = "auto"):
    """The training device: ``auto`` picks CUDA, then Apple MPS, then CPU. Notebooks never
    hard-code ``cuda``; they call this."""
    import torch

    if preference not in ("auto", None):
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def package_versions(names=CORE_PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def platform_kind() -> str:
    """'colab', 'binder', 'ci' or 'local'."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("BINDER_SERVICE_HOST") or os.environ.get("BINDER_REQUEST"):
        return "binder"
    if os.environ.get("CI"):
        return "ci"
    return "local"


def environment_report(device=None) -> dict:
    """Versions, CPU/GPU, RAM and where we run (Colab, Binder, CI or local); ``device`` is the
    one in use (default: what ``get_device("auto")`` picks)."""
    import psutil
    import torch

    report = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "where": platform_kind(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "device": str(device if device is not None else get_device()),
        "gpu": None,
        "versions": package_versions(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return report


def format_environment_report(report: dict | None = None) -> str:
    report = report or environment_report()
    lines = [
        f"python {report['python']} on {report['platform']} ({report['where']})",
        f"CPU cores: {report['cpu_count']} (torch threads {report['torch_threads']}), RAM {report['ram_gb']} GiB",
        f"device: {report['device']}" + (f" - {report['gpu']}" if report["gpu"] else ""),
        "packages: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
    ]
    return "\n".join(lines)


def run_manifest(what: str, config: dict, seed: int | None = None, metrics: dict | None = None,
                 files: list[str | Path] | None = None) -> dict:
    """A small manifest for an artifact: what it is, the config and seed that made it, its
    metrics, the sha256 of its files, versions and time."""
    from .io_utils import sha256_file

    return {
        "what": what,
        "config": config,
        "seed": seed,
        "metrics": metrics or {},
        "files": {Path(f).name: sha256_file(f) for f in files or []},
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
