"""Where each detection arm's encoder comes from: scratch, ImageNet, or a pretraining of 02-04.

Every arm is the same U-Net (:class:`prostate_course.models.ResNetUNet`) whose encoder, the
course's ResNet-18, starts from

- ``scratch``: :func:`prostate_course.protocol.random_init`;
- ``imagenet``: torchvision's ImageNet weights (:func:`prostate_course.models.imagenet_encoder`),
  unavailable offline without the weight file - recorded, never replaced;
- ``genesis`` (notebook 02), ``dcl`` (03), ``pirads_conf`` (04): the notebook's checkpoint
  (:func:`prostate_course.artifacts.find_checkpoint`, which refuses checkpoints made for other
  data). When it is missing and a *stand-in* factory is given (:func:`stand_in_factories`: a
  quick pretraining with the method's own code from ``prostate_course.ssl``, or
  :func:`register_stand_in`), the arm runs on the stand-in and is flagged
  (``Arm(stand_in=...)``, ``results.stand_in``); otherwise it is recorded as unavailable with
  the reason.
"""
from __future__ import annotations

from typing import Callable

import pandas as pd

from ..protocol import Arm, from_checkpoint, random_init

#: method -> (notebook stem, method name) of the checkpoint notebook 05 reuses
PRETRAINED = {"genesis": ("02_generative", "genesis"),
              "dcl": ("03_contrastive", "dcl"),
              "pirads_conf": ("04_metadata_contrastive", "pirads_conf")}
#: the arms of notebook 05, in the order of its tables
METHODS = ("scratch", "imagenet") + tuple(PRETRAINED)

#: method -> factory(seed) -> a pretrained ResNet-18 encoder (quick stand-ins; see register_stand_in)
STAND_INS: dict[str, Callable] = {}
#: pretraining steps of a stand-in where the profile's notebook-05 section gives no ``stand_in_steps``
STAND_IN_STEPS = 30


def register_stand_in(method: str, factory: Callable) -> None:
    """Use ``factory(seed) -> encoder`` when ``method``'s checkpoint is missing, e.g.
    ``register_stand_in("dcl", lambda seed: contrastive.pretrain("dcl", train.unlabelled(), 50, seed))``.
    The factory pretrains on the training split's unlabelled slices only."""
    if method not in PRETRAINED:
        raise ValueError(f"stand-ins replace the checkpoints of {sorted(PRETRAINED)}, not {method!r}")
    STAND_INS[method] = factory


def stand_in_factories(dataset, steps: int = STAND_IN_STEPS, device=None, methods=tuple(PRETRAINED)) -> dict:
    """{method: factory(seed)}: a quick pretraining of each of ``methods`` for ``steps`` steps
    on ``dataset``'s training split (no labels; notebook 04's method also sees the clinical
    table, as in 04): Models Genesis restoration (02), DCL (03), PI-RADS-confidence
    contrastive (04). Nothing is trained until an arm asks for its encoder, so a method whose
    checkpoint exists costs nothing."""
    def genesis(seed):
        from ..ssl import contrastive, restoration
        return restoration.pretrain("genesis", contrastive.pretraining_slices(dataset), steps, seed=seed,
                                    device=device, table=dataset.table).cpu().eval()

    def dcl(seed):
        from ..ssl import contrastive
        return contrastive.pretrain("dcl", contrastive.pretraining_slices(dataset), steps, seed=seed,
                                    device=device, progress=False)

    def pirads_conf(seed):
        from ..ssl import metadata_pretrain
        return metadata_pretrain.quick_pretrain(dataset, "pirads_conf", steps, seed, device)

    made = {"genesis": genesis, "dcl": dcl, "pirads_conf": pirads_conf}
    return {m: made[m] for m in methods}


def _checkpoint_init(paths: dict) -> Callable:
    def init(seed: int):
        p = paths.get(seed, paths.get(min(paths)))
        return from_checkpoint(p)(seed)

    return init


def encoder_arms(profile: str, dataset, seeds, methods=METHODS, *, imagenet_weights=None,
                 imagenet_reason: str | None = None, stand_ins: dict | None = None) -> tuple[list, pd.DataFrame]:
    """The detection arms of ``methods`` and a table saying where each encoder comes from.

    ``seeds``: the fine-tuning seeds (a checkpoint per seed, else the seed-0 one serves all).
    ``imagenet_weights``: a weight file (``models.get_imagenet_weights``); without it,
    ``imagenet_reason`` says why. ``stand_ins`` adds factories to the registered ones.
    """
    from ..artifacts import find_checkpoint
    from ..models import imagenet_encoder

    factories = {**STAND_INS, **(stand_ins or {})}
    arms, notes = [], []
    for method in methods:
        if method == "scratch":
            arms.append(Arm("scratch", random_init))
            notes.append({"method": method, "encoder": "random initialisation", "note": ""})
        elif method == "imagenet":
            if imagenet_weights is not None:
                arms.append(Arm("imagenet", lambda seed: imagenet_encoder(imagenet_weights)))
                notes.append({"method": method, "encoder": "ImageNet (torchvision)", "note": str(imagenet_weights)})
            else:
                why = imagenet_reason or "no ImageNet weight file on this machine"
                arms.append(Arm("imagenet", None, unavailable=why))
                notes.append({"method": method, "encoder": "unavailable", "note": why})
        elif method in PRETRAINED:
            nb, name = PRETRAINED[method]
            found = {s: find_checkpoint(profile, nb, name, dataset, seed=s) for s in seeds}
            paths = {s: p for s, (p, _) in found.items() if p is not None}
            if paths:
                arms.append(Arm(method, _checkpoint_init(paths)))
                notes.append({"method": method, "encoder": f"checkpoint of {nb}",
                              "note": "; ".join(dict.fromkeys(n for _, n in found.values()))})
                continue
            why = f"no usable checkpoint of {nb}: " + "; ".join(dict.fromkeys(n for _, n in found.values()))
            if method in factories:
                arms.append(Arm(method, factories[method], stand_in=why))
                notes.append({"method": method, "encoder": "stand-in (quick pretraining)", "note": why})
            else:
                why += f" (run notebook {nb[:2]} first; no stand-in registered)"
                arms.append(Arm(method, None, unavailable=why))
                notes.append({"method": method, "encoder": "unavailable", "note": why})
        else:
            raise ValueError(f"unknown detection arm {method!r}; known: {METHODS}")
    return arms, pd.DataFrame(notes)


__all__ = ["PRETRAINED", "METHODS", "STAND_INS", "STAND_IN_STEPS", "register_stand_in",
           "stand_in_factories", "encoder_arms"]
