"""Small in-memory stand-ins for prepared data, shared by the training and protocol tests."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from prostate_course.data.dataset import SliceSet


def blob_slices(n_cases: int = 24, n_slices: int = 6, px: int = 16, seed: int = 0,
                prefix: str = "c", contrast: float = 2.5, positive_every: int = 3) -> SliceSet:
    """A real :class:`SliceSet` of random slices; every ``positive_every``-th case is positive
    and has a bright (HBV) / dark (ADC) 4x4 blob on every other slice (a learnable lesion).
    Two cases per patient."""
    g = torch.Generator().manual_seed(seed)
    case_label = (torch.arange(n_cases) % positive_every == 0).long()
    imgs, labels, cidx, masks = [], [], [], []
    for c in range(n_cases):
        x = torch.randn(n_slices, 3, px, px, generator=g)
        m = torch.zeros(n_slices, px, px, dtype=torch.uint8)
        if case_label[c]:
            for s in range(1, n_slices - 1, 2):
                r, q = torch.randint(3, px - 6, (2,), generator=g).tolist()
                x[s, 2, r:r + 4, q:q + 4] += contrast
                x[s, 1, r:r + 4, q:q + 4] -= contrast
                m[s, r:r + 4, q:q + 4] = 3
        imgs.append(x), masks.append(m), cidx.append(torch.full((n_slices,), c))
    mask = torch.cat(masks)
    ids = [f"{prefix}{c:03d}" for c in range(n_cases)]
    meta = pd.DataFrame({"patient_age": 60 + np.arange(n_cases) % 15,
                         "psad": np.where(case_label.numpy() > 0, 0.3, 0.1)})
    return SliceSet(images=torch.cat(imgs).half(), slice_label=(mask.flatten(1) > 0).any(1).long(),
                    case_index=torch.cat(cidx), case_ids=ids, case_label=case_label,
                    patient_ids=[f"p{prefix}{c // 2}" for c in range(n_cases)],
                    slice_z=torch.arange(n_slices).repeat(n_cases), lesion_mask=mask,
                    gland_mask=torch.ones_like(mask), meta=meta)


def table_of(*sets: tuple[SliceSet, str]) -> pd.DataFrame:
    """A cases table (case_id, patient_id, case_csPCa, split) for SliceSets with their split."""
    rows = []
    for s, split in sets:
        for cid, pid, y in zip(s.case_ids, s.patient_ids, s.case_label.tolist()):
            rows.append({"case_id": cid, "patient_id": pid, "case_csPCa": int(y), "split": split})
    return pd.DataFrame(rows)


#: PI-RADS reports (one per reader, ";"-separated; "" = unannotated) cycled over a cohort's exams
REPORTS = ["4;4;4", "2;4", "", "2", "4;2;2", "3", "5;5", "1;1;2", "4;4;2;2;2", "5", "2;2", "4;5"]


def pirads_cohort(n_train: int = 12, n_test: int = 8, px: int = 16):
    """(train, test, table): blob slices and a cases table with PI-RADS reports (their
    consensus and confidence), age, PSA (every 4th missing) and PSA density."""
    from prostate_course.data.readers import add_pirads_consensus

    tr = blob_slices(n_train, 2, px=px, prefix="a")
    te = blob_slices(n_test, 2, px=px, prefix="b", seed=1)
    t = table_of((tr, "train"), (te, "test"))
    t["pirads_reports"] = (REPORTS * 3)[: len(t)]
    t["patient_age"] = 55.0 + np.arange(len(t))
    t["psa"] = np.where(np.arange(len(t)) % 4 == 0, np.nan, 5.0 + np.arange(len(t)))
    t["psad"] = 0.1 + 0.01 * np.arange(len(t))
    return tr, te, add_pirads_consensus(t)


class SlicesDataset:
    """What the pretraining code asks of a prepared dataset: ``slices(split)``, ``table``,
    ``root`` and a manifest key (for checkpoint provenance)."""

    def __init__(self, train: SliceSet, test: SliceSet, table: pd.DataFrame, root, key: str = "synthetic-test"):
        self._s, self.table, self.root = {"train": train, "test": test}, table, root
        self.manifest = {"key": key}

    def slices(self, split="train", masks=True):
        return self._s[split]
