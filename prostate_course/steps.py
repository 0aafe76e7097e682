"""Supervised steps for the training engine (:func:`prostate_course.train.fit`).

:class:`ClassificationStep`: is there csPCa in this slice? One logit per slice, binary
cross-entropy with the rare positives up-weighted,

    L = -(1/B) sum_i [ w y_i log sigma(z_i) + (1 - y_i) log(1 - sigma(z_i)) ],  w = n_neg / n_pos,

so each class contributes equally in expectation while every slice is still seen once per pass.
Validation reports the loss, the slice AUROC and the patient AUROC (score = max over slices).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .evaluate import auroc, case_scores, to_numpy
from .inference import predict_logits
from .train import Step, gather, to_device


def _labels(data) -> torch.Tensor:
    y = getattr(data, "slice_label", None)
    if y is None and isinstance(data, dict):
        y = data.get("slice_label")
    if y is None:
        raise ValueError("classification needs slice labels (got an unlabelled slice set?)")
    return torch.as_tensor(to_numpy(y) > 0, dtype=torch.float32)


def _images(data) -> torch.Tensor:
    if isinstance(data, (tuple, list)):
        return torch.as_tensor(data[0])
    x = data["images"] if isinstance(data, dict) else data.images
    return torch.as_tensor(x)


class ClassificationStep(Step):
    """Slice classification with weighted BCE (see the module docstring).

    ``augment``: a batch transform applied on the device (:mod:`prostate_course.augment`); its
    random stream restarts from the engine's seed. ``pos_weight``: ``"auto"`` (n_neg / n_pos of
    the training slices), a number, or None (plain BCE, e.g. with ``BalancedBatches``).
    ``data`` is a SliceSet-like object, a dict with ``images`` and ``slice_label``, or an
    ``(images, labels)`` tuple.
    """

    monitors = {"val_loss": "min", "val_auroc": "max", "val_auroc_patient": "max"}
    default_monitor = "val_auroc"

    def __init__(self, augment=None, pos_weight="auto"):
        self.augment = augment
        self.pos_weight = pos_weight

    def reset(self, seed: int) -> None:
        if self.augment is not None and hasattr(self.augment, "reset"):
            self.augment.reset(seed)

    def prepare(self, data, device):
        x = _images(data)
        y = _labels(data if not isinstance(data, (tuple, list)) else {"slice_label": data[1]})
        if len(y) != len(x):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        n, n_pos = len(y), int(y.sum())
        w = self.pos_weight
        if w == "auto":
            w = (n - n_pos) / n_pos if 0 < n_pos < n else None
        self._criterion = nn.BCEWithLogitsLoss(
            pos_weight=None if w is None else torch.tensor(float(w), device=device))
        self._info = {"pos_weight": w, "n_items": n, "n_positive": n_pos}
        return {"images": to_device(x, device), "target": y.to(device), "device": torch.device(device)}

    def info(self, d) -> dict:
        return self._info

    def size(self, d) -> int:
        return len(d["target"])

    def loss(self, model, d, idx):
        xb = gather(d["images"], idx, d["device"]).float()
        if self.augment is not None:
            xb = self.augment(xb)
        logits = model(self.input(xb))
        return self._criterion(logits.float(), d["target"][idx]), {}

    def validate(self, model, val, device, amp) -> dict:
        x = _images(val)
        y = _labels(val if not isinstance(val, (tuple, list)) else {"slice_label": val[1]})
        logits = predict_logits(model, x, device=device, amp=amp)
        out = {"val_loss": float(self._criterion(logits, y.to(logits.device)))}
        s = torch.sigmoid(logits).cpu().numpy()
        yv = y.numpy() > 0
        out["val_auroc"] = auroc(yv, s)
        ci, cl = getattr(val, "case_index", None), getattr(val, "case_label", None)
        if ci is not None and cl is not None:
            cs = case_scores(s, to_numpy(ci), len(cl))
            keep = ~np.isnan(cs)
            out["val_auroc_patient"] = auroc(to_numpy(cl)[keep] > 0, cs[keep])
        return out


__all__ = ["ClassificationStep"]
