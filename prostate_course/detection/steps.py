"""The segmentation step for the training engine: 2D slices in, a csPCa logit per pixel out.

Lesions are rare and small: at the cpu profile about one slice in ten holds lesion voxels, and
inside those slices a lesion covers a few percent of the pixels. Plain cross-entropy is then
dominated by easy background. The PI-CAI baselines answer with:

- **focal loss** (Lin et al. 2017, "Focal loss for dense object detection"), the PI-CAI U-Net
  baseline's choice: per pixel, with p_t the probability of the true class,

      FL = -alpha_t (1 - p_t)^gamma log p_t,   alpha_t = alpha for lesion pixels, 1 - alpha else,

  which scales down the loss of well-classified pixels (gamma = 2, alpha = 0.75);
- **Dice + cross-entropy** (nnU-Net, Isensee et al. 2021, the PI-CAI nnU-Net baseline): the
  soft Dice of the lesion class over the whole batch (``batch=True``: slices without a lesion do
  not divide by zero) plus binary cross-entropy.

Both come from MONAI (``FocalLoss``, ``DiceCELoss``, ``DiceFocalLoss``). Geometric augmentation
moves the lesion mask with the image (:mod:`prostate_course.augment`, ``{"image", "label"}``
batches); intensity augmentation touches only the image. Validation reports the loss and the
patient AUROC of the per-case maximum probability (a cheap stand-in for picai_eval on the
validation cases, used to keep the best epoch).
"""
from __future__ import annotations

import numpy as np
import torch

from ..evaluate import auroc, case_scores, to_numpy
from ..inference import forward_batches
from ..train import Step, gather, to_device

LOSSES = ("focal", "dice_ce", "dice_focal")


def segmentation_loss(name: str = "focal", *, gamma: float = 2.0, alpha: float = 0.75):
    """MONAI's loss ``name`` for one sigmoid channel: "focal", "dice_ce" or "dice_focal"."""
    from monai.losses import DiceCELoss, DiceFocalLoss, FocalLoss

    if name == "focal":
        return FocalLoss(gamma=gamma, alpha=alpha, use_softmax=False, reduction="mean")
    if name == "dice_ce":
        return DiceCELoss(sigmoid=True, batch=True)
    if name == "dice_focal":
        return DiceFocalLoss(sigmoid=True, batch=True, gamma=gamma, alpha=alpha)
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")


def _lesion_target(data) -> torch.Tensor:
    m = data.get("lesion_mask") if isinstance(data, dict) else getattr(data, "lesion_mask", None)
    if m is None:
        raise ValueError("segmentation needs lesion masks (got an unlabelled slice set?)")
    return (torch.as_tensor(m) > 0).to(torch.uint8).unsqueeze(1)      # (N, 1, H, W)


def _images(data) -> torch.Tensor:
    return torch.as_tensor(data["images"] if isinstance(data, dict) else data.images)


class SegmentationStep(Step):
    """One step of lesion segmentation (see the module docstring).

    ``augment``: a :class:`prostate_course.augment.Compose` applied to ``{"image", "label"}``
    on the device (geometric transforms move the mask). ``loss``: "focal" (default), "dice_ce"
    or "dice_focal". ``data``: a SliceSet (images and lesion_mask), or a dict with ``images``
    (N, 3, H, W) and ``lesion_mask`` (N, H, W).
    """

    monitors = {"val_loss": "min", "val_auroc_patient": "max"}
    default_monitor = "val_loss"

    def __init__(self, augment=None, loss: str = "focal", **loss_kw):
        self.augment = augment
        self.loss_name = loss
        self.criterion = segmentation_loss(loss, **loss_kw)

    def reset(self, seed: int) -> None:
        if self.augment is not None and hasattr(self.augment, "reset"):
            self.augment.reset(seed)

    def prepare(self, data, device):
        x, y = _images(data), _lesion_target(data)
        if len(x) != len(y) or x.shape[-2:] != y.shape[-2:]:
            raise ValueError(f"images {tuple(x.shape)} and lesion masks {tuple(y.shape)} do not match")
        n_pos = int((y.flatten(1).amax(1) > 0).sum())
        self._info = {"n_items": len(x), "n_lesion_slices": n_pos,
                      "lesion_pixel_share": float(y.sum()) / max(y.numel(), 1)}   # no float copy of the masks
        return {"images": to_device(x, device), "masks": to_device(y, device),
                "device": torch.device(device)}

    def info(self, d) -> dict:
        return self._info

    def size(self, d) -> int:
        return len(d["images"])

    def batch(self, d, idx):
        """(images, masks) of one batch, float32, augmented."""
        xb = gather(d["images"], idx, d["device"]).float()
        yb = gather(d["masks"], idx, d["device"]).float()
        if self.augment is not None:
            b = self.augment({"image": xb, "label": yb})
            xb, yb = b["image"], b["label"]
        return xb, yb

    def loss(self, model, d, idx):
        xb, yb = self.batch(d, idx)
        logits = model(self.input(xb))
        return self.criterion(logits.float(), yb), {}

    def validate(self, model, val, device, amp) -> dict:
        x, y = _images(val), _lesion_target(val)
        logits = forward_batches(model, model, x, device=device, amp=amp)
        out = {"val_loss": self._loss_over(logits, y.to(logits.device))}
        ci, cl = getattr(val, "case_index", None), getattr(val, "case_label", None)
        if ci is not None and cl is not None:
            top = torch.sigmoid(logits.float()).flatten(1).amax(1).cpu().numpy()
            cs = case_scores(top, to_numpy(ci), len(cl))
            keep = ~np.isnan(cs)
            out["val_auroc_patient"] = auroc(to_numpy(cl)[keep] > 0, cs[keep])
        return out

    @torch.no_grad()
    def _loss_over(self, logits, y, chunk: int = 64) -> float:
        """The loss over a whole validation set. Focal loss is a mean over pixels, so it is summed
        ``chunk`` slices at a time (no set-sized temporaries; ~60 MB at 600 slices of 64 px);
        the Dice losses pool every slice of the set in one term and take it at once."""
        if self.loss_name != "focal":
            return float(self.criterion(logits.float(), y.float()))
        total = torch.zeros((), dtype=torch.float64, device=logits.device)   # one host sync, at the end
        for i in range(0, len(y), chunk):
            yc = y[i:i + chunk].float()
            total += self.criterion(logits[i:i + chunk].float(), yc).double() * yc.numel()
        return float(total) / max(y.numel(), 1)


def predict_slices(model, images, *, device=None, batch_size: int | None = None, amp="auto") -> torch.Tensor:
    """Lesion probability maps (N, H, W), float32 on the CPU: sigmoid of the U-Net's logit,
    batched by :func:`prostate_course.inference.forward_batches`."""
    probs = forward_batches(lambda xb: torch.sigmoid(model(xb).float())[:, 0], model, images,
                            batch_size=batch_size, device=device, amp=amp)
    return probs.cpu()


__all__ = ["SegmentationStep", "segmentation_loss", "predict_slices", "LOSSES"]
