"""Data: synthetic cohort, PI-CAI readers, prepare, splits and datasets.

Public API (docs/ARCHITECTURE.md "Data API")::

    from prostate_course.data import ensure_dataset, label_budget
    ds = ensure_dataset("smoke")                      # PreparedDataset
    slices = ds.slices(split="train")                 # SliceSet
    slices.subset(label_budget(ds.table, 0.1, seed=0))

Names are imported lazily (PEP 562) so that ``import prostate_course.data`` stays light (no
torch) in ``prepare``'s worker processes.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # readers
    "SimpleITKReader": "readers", "read_sitk": "readers", "read_mask": "readers",
    "find_labels": "readers", "read_marksheet": "readers", "lesion_table": "readers",
    "pirads_consensus": "readers", "add_pirads_consensus": "readers", "DataReadError": "readers",
    "list_cases": "readers",
    # prepare
    "prepare_dataset": "prepare", "PrepareReport": "prepare", "PrepareError": "prepare",
    "CaseError": "prepare", "update_splits": "prepare",
    # mask geometry
    "to_reference_grid": "geometry", "grid_shift": "geometry", "count_lesions": "geometry",
    # splits
    "assign_splits": "splits", "label_budget": "splits", "make_splits": "splits",
    "assign_official_splits": "splits", "split_settings": "splits", "official_folds": "splits",
    # datasets
    "PreparedDataset": "dataset", "SliceSet": "dataset", "VolumeSet": "dataset",
    "ensure_raw": "dataset", "ensure_dataset": "dataset",
    # synthetic cohort (written by the synthetic generator module)
    "generate_cohort": "synthetic", "simulate_clinical": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        mod = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
