"""What every notebook's setup cell calls: :func:`start` returns a :class:`Session`.

A session loads the profile (with the notebook's own settings), seeds everything, chooses the
device (CUDA, MPS, else CPU: never hard-coded), prints the environment report, and opens the
notebook's results file, so a notebook reads::

    session = pc.course.start("01_transfer_learning", PROFILE, OVERRIDES)
    ds = session.dataset()            # synth + prepare on first use, cached by parameters
    ...
    session.results.add_row(task="classification", method="scratch", ...)
    session.results.save()
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .paths import DATA_ENV, RUNS_ENV, run_root
from .profile import AUTO, Profile, load_profile, resolve_profile_name
from .repro import (environment_report, format_environment_report, freeze_imports, get_device, seed_everything,
                    tune_allocator)
from .results import Results


class Config(dict):
    """A notebook's settings: a dict that also allows ``cfg.epochs``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"this notebook's profile section has no setting {name!r} "
                f"(it has: {', '.join(self) or 'none'})"
            ) from None


@dataclass
class Session:
    notebook: str
    profile: Profile
    cfg: Config
    device: object
    results: Results
    seed: int
    environment: dict = field(repr=False, default_factory=dict)
    _dataset: object = field(default=None, repr=False)

    @property
    def run_dir(self) -> Path:
        """``runs/<profile>/`` (absolute)."""
        return run_root(self.profile.name)

    @property
    def artifacts_dir(self) -> Path:
        """Where this notebook writes artifacts later notebooks read (checkpoints, tables)."""
        d = self.run_dir / "artifacts" / self.notebook
        d.mkdir(parents=True, exist_ok=True)
        return d

    def dataset(self):
        """The profile's prepared dataset (made on first use: synth + prepare, cached)."""
        if self._dataset is None:
            from .data.dataset import ensure_dataset

            self._dataset = ensure_dataset(self.profile)
        return self._dataset

    def raw_dataset(self) -> Path:
        """The profile's raw dataset folder (``images/`` and ``labels/``), made if synthetic."""
        from .data.dataset import ensure_raw

        return ensure_raw(self.profile)


#: Shown under the smoke profile: its numbers must not be read as results.
SMOKE_BANNER = (
    "*** SMOKE PROFILE ***  A tiny cohort and a few training steps: every number below only "
    "proves that the code runs. It says nothing about the methods. For real lessons set "
    'PROFILE = "auto" (gpu if there is one, else cpu) or "cpu".'
)


def _show_banner(text: str) -> None:
    """A visible box in Jupyter (HTML), plain text elsewhere (papermill logs, scripts)."""
    line = "*" * min(len(text), 96)
    print(f"{line}\n{text}\n{line}")
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display

        if get_ipython() is not None and type(get_ipython()).__name__ == "ZMQInteractiveShell":
            display(HTML(f'<div style="border:3px solid #d50000;padding:8px;background:#fff3e0;'
                         f'font-weight:bold">{text}</div>'))
    except ImportError:
        pass


def start(notebook: str, profile: str | Profile = AUTO, overrides: dict | None = None,
          quiet: bool = False) -> Session:
    """Set up a notebook run for ``profile`` and return the :class:`Session`.

    ``profile="auto"`` (the notebooks' default) picks gpu when torch sees CUDA or Apple MPS,
    else cpu; the runner and CI pass a name (smoke in CI). Under smoke a banner warns that the
    numbers only prove the code runs.
    """
    requested = profile
    if isinstance(profile, str):
        profile = resolve_profile_name(profile)
    prof = load_profile(profile, overrides)  # a Profile is returned as it is
    stem = Path(notebook).stem
    seed = prof.seeds[0] if prof.seeds else 0
    freeze_imports()                          # later gc.collect() calls skip the libraries (speed)
    tune_allocator()                          # training steps reuse heap pages (speed; repro.tune_allocator)
    seed_everything(seed)
    device = get_device(prof.device)
    env = environment_report(device)
    if not quiet:
        picked = f" (auto: {'a GPU was found' if prof.name == 'gpu' else 'no CUDA or MPS GPU'})" if requested == AUTO else ""
        print(f"prostate-course | notebook {stem} | profile {prof.name}{picked}: {prof.raw.get('description', '')}")
        print(format_environment_report(env))
        if prof.name == "smoke":
            _show_banner(SMOKE_BANNER)
    results = Results(stem, prof.name, seeds=prof.seeds, device=str(device))
    return Session(notebook=stem, profile=prof, cfg=Config(prof.notebook(stem)), device=device,
                   results=results, seed=seed, environment=env)


def use_google_drive(folder: str = "prostate-course") -> Path:
    """On Colab: mount Google Drive and keep the data and run roots there, so downloads,
    prepared data and artifacts survive between notebooks and sessions."""
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount("/content/drive")
    base = Path("/content/drive/MyDrive") / folder
    os.environ[DATA_ENV] = str(base / "data")
    os.environ[RUNS_ENV] = str(base / "runs")
    print(f"data in {base / 'data'}, runs in {base / 'runs'}")
    return base
