"""Encoders, heads, ImageNet initialisation and checkpoints.

Every notebook (01-05) uses the same 2D ResNet-18 encoder, so that ImageNet weights and every
self-supervised pretraining initialise exactly the same parameters:

- :func:`resnet18_encoder` - MONAI's ResNet-18 (He et al. 2016, "Deep residual learning for image
  recognition") in torchvision's layout: 7x7 stride-2 stem, max-pool, shortcut "B" (1x1
  convolution + BN where the shape changes) without bias, global average pool -> 512 features.
- :class:`ClassificationHead`, :class:`ProjectionHead` (SimCLR's MLP), :class:`Classifier`.
- :func:`load_imagenet_weights` - torchvision's published ImageNet ResNet-18 weights into the
  MONAI encoder. The keys and shapes are identical (a test maps every key); the 1000-way
  ``fc`` layer is dropped. Every key and shape is checked; a missing, extra or mis-shaped key is
  an error that names it.
- :func:`save_checkpoint` / :func:`load_checkpoint` - state dict + manifest, written atomically,
  read back with ``torch.load(weights_only=True)`` (no pickled code is ever executed).

**What "RGB" means here.** ImageNet networks see (red, green, blue). Our three channels are T2W,
ADC and HBV: three different physical measurements of the same voxel, not three colours. Loading
ImageNet weights therefore maps T2W onto the filters that learnt "red", ADC onto "green" and HBV
onto "blue".

**Two normalisations, not one.** ImageNet's normalisation is a fixed affine map per channel for
the whole dataset, ``(x - mean_c) / std_c`` with the ImageNet means and stds: each photo keeps
its brightness relative to the others. The prepared bpMRI is z-scored *per case* and per channel
(after 0.5/99.5 percentile clipping, as the PI-CAI baseline does): every case is rescaled on
its own. For T2W and HBV (arbitrary, scanner-dependent units) that is the usual choice; for ADC,
a quantitative map (10^-6 mm^2/s), it discards the absolute values that radiologists read.
Both leave the filters with inputs of a familiar *scale*, neither with the channels' meaning.
Applying ImageNet's constants on top of the z-score would only shift and rescale each channel
by a constant (|shift| < 2.2 std), which the first convolution and BatchNorm absorb, so we do
not; :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` are exported for notebook 01 to show.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from .io_utils import atomic_path, sha256_file, write_json_atomic

#: torchvision's ResNet18_Weights.IMAGENET1K_V1 (top-1 69.76 % on ImageNet-1k).
IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
#: torchvision's file name; the 8 hex digits are the start of the file's sha256.
IMAGENET_FILENAME = "resnet18-f37072fd.pth"
IMAGENET_HASH_PREFIX = "f37072fd"
#: Environment variable that may point at a local copy of the weight file.
IMAGENET_ENV = "PROSTATE_COURSE_IMAGENET"
#: Set to 1 to never try the network (the ImageNet arm then needs a local file).
OFFLINE_ENV = "PROSTATE_COURSE_OFFLINE"
#: ImageNet's per-channel normalisation (R, G, B) - shown in notebook 01, not applied (see above).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchvision's classifier layer: no place in the encoder, dropped on loading.
TORCHVISION_DROPPED = ("fc.weight", "fc.bias")
ENCODER_FEATURES = 512


class ImageNetWeightsUnavailable(FileNotFoundError):
    """The ImageNet weight file is not on this machine and could not be downloaded."""


class WeightMappingError(ValueError):
    """A weight file does not fit the encoder: missing, unexpected or mis-shaped keys."""


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------

def resnet18_encoder(in_channels: int = 3, spatial_dims: int = 2) -> nn.Module:
    """MONAI ResNet-18 without its classifier: (N, C, H, W) -> (N, 512) pooled features.

    Built exactly like torchvision's resnet18 (7x7 stride-2 stem conv without bias, 3x3
    stride-2 max-pool, BasicBlocks [2, 2, 2, 2], shortcut "B" = 1x1 conv + BN, no bias), so its
    ``state_dict`` has torchvision's keys and shapes minus ``fc``. ``in_channels`` = 3 for
    (T2W, ADC, HBV). ``spatial_dims=3`` gives the 3D variant (no ImageNet weights for it).
    """
    from monai.networks.nets import resnet18

    enc = resnet18(spatial_dims=spatial_dims, n_input_channels=in_channels, conv1_t_size=7,
                   conv1_t_stride=2, bias_downsample=False, shortcut_type="B",
                   feed_forward=False, pretrained=False)
    enc.out_features = ENCODER_FEATURES
    return enc


class ClassificationHead(nn.Module):
    """Linear classifier on the encoder features (optionally dropout first).

    ``n_classes=1`` gives one logit per image (binary csPCa vs not, used with
    ``BCEWithLogitsLoss``); the output is then (N,), else (N, n_classes).
    """

    def __init__(self, in_features: int = ENCODER_FEATURES, n_classes: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.n_classes = n_classes
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.fc(self.dropout(h))
        return out.squeeze(1) if self.n_classes == 1 else out


class ProjectionHead(nn.Module):
    """SimCLR's projection MLP g(h) = W2 ReLU(BN(W1 h)) (Chen et al. 2020, ICML), used only
    during contrastive pretraining; the loss is computed on z = g(h), the encoder's h is kept.

    ``n_layers`` linear layers; hidden ones are followed by BatchNorm (if ``batchnorm``) and ReLU.
    """

    def __init__(self, in_features: int = ENCODER_FEATURES, hidden: int = 512, out_features: int = 128,
                 n_layers: int = 2, batchnorm: bool = True):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"ProjectionHead needs n_layers >= 1, got {n_layers}")
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(n_layers - 1):
            layers.append(nn.Linear(d, hidden, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU(inplace=True))
            d = hidden
        layers.append(nn.Linear(d, out_features))
        self.mlp = nn.Sequential(*layers)
        self.out_features = out_features

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(h)


class Classifier(nn.Module):
    """``head(encoder(x))``. ``features(x)`` gives the encoder's 512-d representation."""

    def __init__(self, encoder: nn.Module, head: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head if head is not None else ClassificationHead(
            getattr(encoder, "out_features", ENCODER_FEATURES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class _UpBlock(nn.Module):
    """Upsample x2 (bilinear), concatenate the skip, two 3x3 conv + BN + ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch + skip_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else tuple(2 * s for s in x.shape[-2:])
        x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], 1) if skip is not None else x)


class ResNetUNet(nn.Module):
    """A U-Net whose encoder is the course's 2D ResNet-18 (:func:`resnet18_encoder`).

    Ronneberger et al. 2015 ("U-Net", MICCAI) with a residual encoder: the decoder upsamples
    layer4's features and joins, by concatenation, layer3, layer2, layer1 and the stem (strides
    16, 8, 4, 2), then one more x2 step back to the input size and a 1x1 convolution to
    ``out_channels``. ``self.encoder`` IS the ResNet-18 module, with exactly its state-dict keys,
    so scratch, ImageNet and every pretraining of notebooks 02-04 initialise the same weights,
    and the encoder of a trained U-Net loads back into the classifier. Used for restoration
    pretraining (notebook 02, ``out_channels=3``) and lesion detection (notebook 05,
    ``out_channels=1`` logit map). Input height and width divisible by 32 (64, 128, 160 px).
    """

    def __init__(self, encoder: nn.Module | None = None, out_channels: int = 1,
                 widths: tuple[int, int, int, int, int] = (256, 128, 64, 64, 32)):
        super().__init__()
        self.encoder = encoder if encoder is not None else resnet18_encoder()
        w = widths
        self.up4 = _UpBlock(512, 256, w[0])   # stride 32 -> 16, joins layer3
        self.up3 = _UpBlock(w[0], 128, w[1])  # -> 8, layer2
        self.up2 = _UpBlock(w[1], 64, w[2])   # -> 4, layer1
        self.up1 = _UpBlock(w[2], 64, w[3])   # -> 2, stem
        self.up0 = _UpBlock(w[3], 0, w[4])    # -> 1, input resolution
        self.out = nn.Conv2d(w[4], out_channels, 1)
        self.out_channels = out_channels

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps at strides 2 (stem), 4, 8, 16, 32 (layer1-4)."""
        e = self.encoder
        s = e.act(e.bn1(e.conv1(x)))
        l1 = e.layer1(e.maxpool(s))
        l2 = e.layer2(l1)
        l3 = e.layer3(l2)
        return [s, l1, l2, l3, e.layer4(l3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, l1, l2, l3, l4 = self.features(x)
        y = self.up0(self.up1(self.up2(self.up3(self.up4(l4, l3), l2), l1), s), None)
        return self.out(y)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------
# ImageNet weights
# ---------------------------------------------------------------------------------------------

def _how_to_get() -> str:
    return (
        f"To use ImageNet initialisation, get torchvision's ResNet-18 weights file "
        f"{IMAGENET_FILENAME} (sha256 starts with {IMAGENET_HASH_PREFIX}) from {IMAGENET_URL} "
        f"on a machine with internet access, and either put it in the torch hub cache at "
        f"{hub_checkpoint_path()} or point the environment variable {IMAGENET_ENV} at it "
        f"(or pass its path). Online, prostate_course.models.download_imagenet_weights() "
        f"fetches it with a hash check."
    )


def hub_checkpoint_path() -> Path:
    """Where torchvision itself caches the file: ``torch.hub.get_dir()/checkpoints/<name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILENAME


def find_imagenet_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The first existing weight file among: ``path``, ``$PROSTATE_COURSE_IMAGENET``, the torch
    hub cache; ``None`` if there is none. An explicit ``path`` that does not exist is an error."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ImageNetWeightsUnavailable(f"ImageNet weight file {p} does not exist. " + _how_to_get())
        return p
    env = os.environ.get(IMAGENET_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ImageNetWeightsUnavailable(
                f"{IMAGENET_ENV}={env} but no such file exists. " + _how_to_get())
        return p
    p = hub_checkpoint_path()
    return p if p.is_file() else None


def imagenet_weights_path(path: str | os.PathLike | None = None) -> Path:
    """Like :func:`find_imagenet_weights` but raises :class:`ImageNetWeightsUnavailable`
    (with instructions) when no file is found. Never touches the network."""
    return get_imagenet_weights(path, download=False)


def _online(url: str, timeout: float = 3.0) -> bool:
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def download_imagenet_weights(dst: str | os.PathLike | None = None, progress: bool = True,
                              url: str = IMAGENET_URL) -> Path:
    """Download torchvision's ResNet-18 ImageNet weights into the torch hub cache (or ``dst``),
    checking that the file's sha256 starts with :data:`IMAGENET_HASH_PREFIX`
    (``torch.hub.download_url_to_file`` writes to a temporary file and renames it only when the
    hash matches). Offline, or with ``$PROSTATE_COURSE_OFFLINE=1``, raises
    :class:`ImageNetWeightsUnavailable` explaining how to get the file."""
    dst = Path(dst) if dst is not None else hub_checkpoint_path()
    if dst.is_file():
        return dst
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise ImageNetWeightsUnavailable(f"{OFFLINE_ENV} is set, not downloading. " + _how_to_get())
    if not _online(url):
        raise ImageNetWeightsUnavailable(
            f"Cannot reach {urlparse(url).hostname} (offline?). " + _how_to_get())
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=IMAGENET_HASH_PREFIX,
                                       progress=progress)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a hash mismatch a RuntimeError
        raise ImageNetWeightsUnavailable(f"Download of {url} failed: {e}. " + _how_to_get()) from e
    return dst


def get_imagenet_weights(path: str | os.PathLike | None = None, download: bool = True,
                         progress: bool = True) -> Path:
    """A local ImageNet weight file: found (see :func:`find_imagenet_weights`) or, if
    ``download``, downloaded. Raises :class:`ImageNetWeightsUnavailable` otherwise."""
    p = find_imagenet_weights(path)
    if p is not None:
        return p
    if not download:
        raise ImageNetWeightsUnavailable("No ImageNet weight file on this machine. " + _how_to_get())
    return download_imagenet_weights(progress=progress)


def torchvision_to_monai_key(key: str) -> str | None:
    """Map one torchvision resnet18 key to the MONAI encoder's key (``None`` = dropped).

    The two layouts agree (conv1, bn1, layer1-4 with ``.downsample.0/1``), so the map is the
    identity except for the classifier ``fc.*``, which the encoder does not have."""
    if key in TORCHVISION_DROPPED:
        return None
    return key


@dataclass
class WeightLoadReport:
    """What :func:`load_imagenet_weights` did: counts and the keys that did not fit."""

    path: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)      # in the file, deliberately unused (fc)
    missing: list[str] = field(default_factory=list)      # in the encoder, not in the file
    unexpected: list[str] = field(default_factory=list)   # in the file, not in the encoder
    mismatched: list[str] = field(default_factory=list)   # "key: file shape vs encoder shape"
    defaulted: list[str] = field(default_factory=list)    # BN step counters absent in the file

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        s = (f"{self.path}: loaded {len(self.loaded)} tensors, dropped {self.dropped}, "
             f"missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
             f"mis-shaped {len(self.mismatched)}")
        for name in ("missing", "unexpected", "mismatched"):
            items = getattr(self, name)
            if items:
                s += f"\n  {name}: " + ", ".join(items[:10]) + (" ..." if len(items) > 10 else "")
        return s


def load_imagenet_weights(encoder: nn.Module, path: str | os.PathLike | None = None,
                          strict: bool = True) -> WeightLoadReport:
    """Copy torchvision's ImageNet ResNet-18 weights into ``encoder`` (from
    :func:`resnet18_encoder`), in place.

    Every tensor of the file except ``fc.*`` must land on an encoder tensor of the same shape,
    and every encoder tensor must be covered (BatchNorm's ``num_batches_tracked`` counters,
    which older files omit, are the one allowed exception: they keep their value). With
    ``strict=True`` any missing, unexpected or mis-shaped key raises :class:`WeightMappingError`
    listing them and nothing is changed; with ``strict=False`` the fitting tensors are loaded
    and the report lists the rest. The file is read with ``torch.load(weights_only=True)``.
    """
    p = imagenet_weights_path(path)
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, not a torch file, or pickled code
        raise WeightMappingError(f"{p}: cannot be read as a torch state dict ({e})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightMappingError(f"{p}: expected a state dict of tensors (torchvision's format)")

    target = encoder.state_dict()
    report = WeightLoadReport(path=str(p))
    new, misshaped = {}, set()
    for key, value in sd.items():
        mkey = torchvision_to_monai_key(key)
        if mkey is None:
            report.dropped.append(key)
        elif mkey not in target:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[mkey].shape):
            misshaped.add(mkey)
            report.mismatched.append(
                f"{key}: file {tuple(value.shape)} vs encoder {tuple(target[mkey].shape)}")
        else:
            new[mkey] = value.to(dtype=target[mkey].dtype)
            report.loaded.append(key)
    for key in target:
        if key not in new and key not in misshaped:
            if key.endswith("num_batches_tracked"):
                report.defaulted.append(key)
            else:
                report.missing.append(key)
    if strict and not report.ok:
        raise WeightMappingError("ImageNet weights do not fit the encoder: " + str(report))
    target.update(new)
    encoder.load_state_dict(target, strict=True)
    return report


def imagenet_encoder(path: str | os.PathLike | None = None, download: bool = False) -> nn.Module:
    """A :func:`resnet18_encoder` initialised with ImageNet weights (raises
    :class:`ImageNetWeightsUnavailable` when there is no file and no download)."""
    enc = resnet18_encoder()
    load_imagenet_weights(enc, get_imagenet_weights(path, download=download))
    return enc


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def save_checkpoint(model: nn.Module | dict, path: str | os.PathLike, manifest: dict | None = None,
                    **extra) -> Path:
    """Save ``model``'s state dict and ``manifest`` to ``path`` (atomically), plus a sidecar
    ``<path>.json`` with the manifest and the checkpoint's sha256.

    ``manifest`` is typically :func:`prostate_course.repro.run_manifest` output; if ``None`` a
    minimal one is made (``what`` = the file name). Extra keyword arguments are added to it.
    Tensors are moved to the CPU so the file loads anywhere.
    """
    from .repro import run_manifest

    path = Path(path)
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    sd = {k: v.detach().cpu().clone() for k, v in sd.items()}
    manifest = dict(manifest) if manifest is not None else run_manifest(what=path.stem, config={})
    manifest.update(extra)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": sd, "manifest": manifest}, tmp)
    sidecar = dict(manifest)
    sidecar["checkpoint"] = {"file": path.name, "sha256": sha256_file(path)}
    write_json_atomic(path.with_name(path.name + ".json"), sidecar)
    return path


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a checkpoint written by :func:`save_checkpoint`, from its ``.json``
    sidecar (no need to load the weights); ``{}`` when there is no sidecar."""
    import json

    side = Path(path).with_name(Path(path).name + ".json")
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint manifest {side} is not valid JSON: {e}") from e


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None,
                    map_location="cpu", strict: bool = True) -> tuple[dict, dict]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``;
    returns ``(state_dict, manifest)`` and, if ``model`` is given, loads the weights into it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read safely: {e}") from e
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise ValueError(f"checkpoint {path} has no 'state_dict' (not written by save_checkpoint?)")
    sd, manifest = obj["state_dict"], obj.get("manifest", {})
    if model is not None:
        try:
            model.load_state_dict(sd, strict=strict)
        except RuntimeError as e:
            raise ValueError(f"checkpoint {path} does not fit the model: {e}") from e
    return sd, manifest
