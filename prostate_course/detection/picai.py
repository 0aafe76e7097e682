"""The PI-CAI evaluation packages, imported once and quietly.

``picai_eval`` (Saha et al. 2024; Bosma et al.) and ``report_guided_annotation`` (Bosma et al.
2023) print a citation and issue-tracker banner when they are imported. A notebook that prints it
in every executed copy buries its own output, so the two modules are imported here with their
standard output captured; the citations are in notebook 05's references instead.
"""
from __future__ import annotations

import contextlib
import functools
import io


@functools.lru_cache(maxsize=None)
def _quiet_import(name: str):
    import importlib

    with contextlib.redirect_stdout(io.StringIO()):
        return importlib.import_module(name)


def picai_eval():
    """The ``picai_eval`` module (``evaluate``, ``Metrics``), imported without its banner."""
    return _quiet_import("picai_eval")


def extract_lesion_candidates(softmax, **kw):
    """``report_guided_annotation.extract_lesion_candidates`` (imported without its banner):
    returns ``(detection_map, confidences, indexed_blobs)``."""
    return _quiet_import("report_guided_annotation").extract_lesion_candidates(softmax, **kw)


__all__ = ["picai_eval", "extract_lesion_candidates"]
