"""prostate-course: helper package for the prostate bpMRI AI course.

The notebooks in ``notebooks/`` tell the story; this package holds everything reusable and
tested. Modules:

- :mod:`prostate_course.paths` - the data root and run root (one function each, absolute paths)
- :mod:`prostate_course.profiles` - named run profiles (smoke, cpu, gpu, full)
- :mod:`prostate_course.repro` - seeding, device choice, environment report, run manifest
- :mod:`prostate_course.results` - the results JSON every notebook writes
- :mod:`prostate_course.data` - synthetic cohort, PI-CAI readers, ``prepare``, splits, datasets
- :mod:`prostate_course.models` / :mod:`prostate_course.train` - encoders, heads, one training loop
- :mod:`prostate_course.download` - robust download and safe extraction of the real data
- :mod:`prostate_course.runner` / :mod:`prostate_course.cli` - run the course with papermill
- :mod:`prostate_course.exercises` - one check function per notebook exercise (``pc.exercises.nb00``)
"""

__version__ = "0.1.0"

#: The one place that names the repository (Colab badges and install cells are checked against it).
REPO_SLUG = "prostate-course/prostate-course"
REPO_URL = f"https://github.com/{REPO_SLUG}"


def __getattr__(name):  # ``pc.exercises`` (and its stubs' UNANSWERED) without an explicit import
    if name == "exercises":
        import importlib

        return importlib.import_module(f"{__name__}.exercises")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
