"""Figures for the course, one module per kind:

- :mod:`.cases` - raw-case overlays, the slice viewer (ipywidgets with a static fallback), cohort
  and reader-study plots (notebook 00);
- :mod:`.curves` - learning curves, AUROC against the label budget, paired deltas with their
  intervals (notebooks 01-06);
- :mod:`.embeddings` - embedding maps (t-SNE) and the alignment/uniformity plane (notebooks 03-04);
- :mod:`.metadata` - reader agreement, PI-RADS confidence, weight matrices, reader noise (notebook 04).

Everything is importable from ``prostate_course.viz`` directly.
"""
from .cases import *  # noqa: F401,F403
from .cases import STATIC_ENV, SEQ_NAMES, SEQUENCES, ISUP_COLOURS, _wilson  # noqa: F401
from .cases import __all__ as _cases_all
from .curves import *  # noqa: F401,F403
from .curves import __all__ as _curves_all
from .embeddings import *  # noqa: F401,F403
from .embeddings import __all__ as _embeddings_all
from .metadata import *  # noqa: F401,F403
from .metadata import __all__ as _metadata_all

__all__ = list(_cases_all) + list(_curves_all) + list(_embeddings_all) + list(_metadata_all)
