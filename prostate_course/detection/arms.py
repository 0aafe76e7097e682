"""Where each detection arm's encoder comes from: scratch, ImageNet, or a pretraining of 02-04.

Every arm is the same U-Net (:class:`prostate_course.models.ResNetUNet`) whose encoder, the
course's ResNet-18, starts from

- ``scratch``: :func:`prostate_course.protocol.random_init`;
- ``imagenet``: torchvision's ImageNet weights (:func:`prostate_course.models.imagenet_encoder`),
  unavailable offline without the weight file - recorded, never replaced;
- ``genesis`` (notebook 02), ``dcl`` (03), ``pirads_conf`` (04): the notebook's checkpoint
  (:func:`prostate_course.artifacts.find_checkpoint`, which refuses checkpoints made for other
  data). When it is missing and a *stand-in* factory is registered for the method
  (:func:`register_stand_in`: a quick pretraining, e.g. from ``prostate_course.ssl``), the arm
  runs on the stand-in and is flagged (``Arm(stand_in=...)``, ``results.stand_in``); otherwise it
  is recorded as unavailable with the reason.
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
#: quick pretrainings that notebooks 02-04's packages offer, "module:function"; the function is
#: called as ``fn(unlabelled_slices, seed=seed, profile=profile)`` and returns an encoder
#: (e.g. {"dcl": "prostate_course.ssl.contrastive:pretrain"}); entries that do not import are skipped
STAND_IN_FUNCTIONS: dict[str, str] = {}


def register_stand_in(method: str, factory: Callable) -> None:
    """Use ``factory(seed) -> encoder`` when ``method``'s checkpoint is missing, e.g.
    ``register_stand_in("dcl", lambda seed: contrastive.pretrain(train.unlabelled(), seed=seed))``.
    The factory pretrains on the training split's unlabelled slices only."""
    if method not in PRETRAINED:
        raise ValueError(f"stand-ins replace the checkpoints of {sorted(PRETRAINED)}, not {method!r}")
    STAND_INS[method] = factory


def stand_in_factories(unlabelled, profile, functions: dict | None = None) -> dict:
    """{method: factory(seed)} for the entries of :data:`STAND_IN_FUNCTIONS` (or ``functions``)
    that import; each pretrains on ``unlabelled`` (the training split without labels)."""
    import importlib

    out = {}
    for method, target in (STAND_IN_FUNCTIONS if functions is None else functions).items():
        module, _, name = target.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        out[method] = (lambda f: lambda seed: f(unlabelled, seed=seed, profile=profile))(fn)
    return out


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


__all__ = ["PRETRAINED", "METHODS", "STAND_INS", "STAND_IN_FUNCTIONS", "register_stand_in",
           "stand_in_factories", "encoder_arms"]
