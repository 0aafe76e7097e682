"""Models: encoder shape, heads, ImageNet weight mapping (torchvision format, built by hand),
checkpoints."""
import json

import pytest
import torch

from prostate_course import models
from prostate_course.models import (Classifier, ClassificationHead, ImageNetWeightsUnavailable,
                                    ProjectionHead, WeightMappingError)


def torchvision_resnet18_shapes() -> dict[str, tuple]:
    """torchvision's resnet18 state_dict keys and shapes, written out from its architecture
    (independently of MONAI): stem conv 7x7, BasicBlocks [2, 2, 2, 2] with widths
    64/128/256/512, downsample (1x1 conv + BN) in the first block of layers 2-4, fc 512->1000."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        shapes.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,),
                       f"{prefix}.running_mean": (c,), f"{prefix}.running_var": (c,),
                       f"{prefix}.num_batches_tracked": ()})

    bn("bn1", 64)
    c_in = 64
    for i, c in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{i}.{b}"
            first_in = c_in if b == 0 else c
            shapes[f"{p}.conv1.weight"] = (c, first_in, 3, 3)
            bn(f"{p}.bn1", c)
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            bn(f"{p}.bn2", c)
            if b == 0 and i > 1:
                shapes[f"{p}.downsample.0.weight"] = (c, c_in, 1, 1)
                bn(f"{p}.downsample.1", c)
        c_in = c
    shapes["fc.weight"] = (1000, 512)
    shapes["fc.bias"] = (1000,)
    return shapes


def make_torchvision_file(path, drop=(), extra=None, reshape=None, counters=True):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape in torchvision_resnet18_shapes().items():
        if k in drop:
            continue
        if k.endswith("num_batches_tracked"):
            if counters:
                sd[k] = torch.tensor(7, dtype=torch.long)
            continue
        if reshape and k in reshape:
            shape = reshape[k]
        sd[k] = torch.randn(shape, generator=g)
        if k.endswith("running_var"):       # variances are positive
            sd[k] = sd[k].abs() + 0.5
    sd.update(extra or {})
    torch.save(sd, path)
    return sd


def test_encoder_outputs_512_features():
    enc = models.resnet18_encoder()
    assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    model = Classifier(enc)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2,)
    assert ClassificationHead(n_classes=3)(torch.randn(4, 512)).shape == (4, 3)
    assert ProjectionHead(out_features=128)(torch.randn(4, 512)).shape == (4, 128)
    assert ProjectionHead(n_layers=3, batchnorm=False).mlp[2].in_features == 512


def test_torchvision_key_list_matches_encoder():
    shapes = torchvision_resnet18_shapes()
    assert len(shapes) == 122  # torchvision's resnet18 has 122 state_dict entries
    enc = {k: tuple(v.shape) for k, v in models.resnet18_encoder().state_dict().items()}
    expected = {k: v for k, v in shapes.items() if not k.startswith("fc.")}
    assert enc == expected


def test_load_maps_every_key(tmp_path):
    f = tmp_path / "resnet18-f37072fd.pth"
    sd = make_torchvision_file(f)
    enc = models.resnet18_encoder()
    report = models.load_imagenet_weights(enc, f)
    assert report.ok
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == 120
    out = enc.state_dict()
    for k, v in sd.items():
        if not k.startswith("fc."):
            assert torch.equal(out[k], v), k
    # the loaded encoder computes with the loaded weights
    assert torch.equal(enc.conv1.weight.detach(), sd["conv1.weight"])


def test_load_without_bn_counters(tmp_path):
    f = tmp_path / "old.pth"
    make_torchvision_file(f, counters=False)
    enc = models.resnet18_encoder()
    report = models.load_imagenet_weights(enc, f)
    assert report.ok and len(report.defaulted) == 20 and len(report.loaded) == 100


@pytest.mark.parametrize("kind", ["missing", "extra", "shape"])
def test_bad_file_gives_clear_error(tmp_path, kind):
    f = tmp_path / "bad.pth"
    if kind == "missing":
        make_torchvision_file(f, drop=("layer3.0.downsample.0.weight",))
        needle = "layer3.0.downsample.0.weight"
    elif kind == "extra":
        make_torchvision_file(f, extra={"layer5.0.conv1.weight": torch.zeros(3)})
        needle = "layer5.0.conv1.weight"
    else:
        make_torchvision_file(f, reshape={"layer2.1.conv2.weight": (128, 128, 1, 1)})
        needle = "layer2.1.conv2.weight: file (128, 128, 1, 1) vs encoder (128, 128, 3, 3)"
    enc = models.resnet18_encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(WeightMappingError, match=r"bad\.pth") as exc:
        models.load_imagenet_weights(enc, f)
    assert needle in str(exc.value)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())  # untouched
    report = models.load_imagenet_weights(enc, f, strict=False)
    assert not report.ok and len(report.loaded) >= 117


def test_not_a_state_dict(tmp_path):
    f = tmp_path / "junk.pth"
    f.write_bytes(b"not a torch file")
    with pytest.raises(WeightMappingError, match="junk.pth"):
        models.load_imagenet_weights(models.resnet18_encoder(), f)


def test_weights_lookup_and_offline_message(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(models.IMAGENET_ENV, raising=False)
    monkeypatch.setenv(models.OFFLINE_ENV, "1")
    assert models.find_imagenet_weights() is None
    with pytest.raises(ImageNetWeightsUnavailable) as exc:
        models.get_imagenet_weights(download=True)
    msg = str(exc.value)
    assert models.IMAGENET_FILENAME in msg and models.IMAGENET_ENV in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg
    with pytest.raises(ImageNetWeightsUnavailable, match="nope.pth"):
        models.find_imagenet_weights(tmp_path / "nope.pth")
    monkeypatch.setenv(models.IMAGENET_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(ImageNetWeightsUnavailable, match="missing.pth"):
        models.find_imagenet_weights()
    # a file in the hub cache is found, and so is one named by the environment variable
    monkeypatch.delenv(models.IMAGENET_ENV)
    hub = tmp_path / "hub" / "checkpoints" / models.IMAGENET_FILENAME
    hub.parent.mkdir(parents=True)
    make_torchvision_file(hub)
    assert models.imagenet_weights_path() == hub
    other = tmp_path / "elsewhere.pth"
    make_torchvision_file(other)
    monkeypatch.setenv(models.IMAGENET_ENV, str(other))
    assert models.get_imagenet_weights(download=False) == other
    enc = models.imagenet_encoder()
    assert enc.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 512)


def test_checkpoint_roundtrip(tmp_path):
    from prostate_course.repro import run_manifest

    torch.manual_seed(0)
    model = Classifier(models.resnet18_encoder())
    path = tmp_path / "ckpt" / "enc.pt"
    man = run_manifest("test encoder", {"lr": 0.1}, seed=3)
    models.save_checkpoint(model, path, man, note="x")
    side = json.loads((tmp_path / "ckpt" / "enc.pt.json").read_text())
    assert side["checkpoint"]["file"] == "enc.pt" and len(side["checkpoint"]["sha256"]) == 64
    assert side["seed"] == 3 and side["note"] == "x"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    other = Classifier(models.resnet18_encoder())
    sd, manifest = models.load_checkpoint(path, other)
    assert manifest["config"] == {"lr": 0.1}
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    with pytest.raises(ValueError, match="enc.pt"):
        models.load_checkpoint(path, Classifier(models.resnet18_encoder(), ClassificationHead(n_classes=2)))
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        models.load_checkpoint(tmp_path / "absent.pt")


def test_resnet_unet_shapes_and_shared_encoder_keys():
    torch.manual_seed(0)
    enc = models.resnet18_encoder()
    net = models.ResNetUNet(enc, out_channels=3)
    assert net.encoder is enc
    for px in (64, 128):
        x = torch.randn(2, 3, px, px)
        assert net(x).shape == (2, 3, px, px)
    # the encoder part of a U-Net state dict is exactly the encoder's (loads into a classifier)
    keys = {k[len("encoder."):] for k in net.state_dict() if k.startswith("encoder.")}
    assert keys == set(models.resnet18_encoder().state_dict())
    clf = models.Classifier(models.resnet18_encoder())
    clf.encoder.load_state_dict(net.encoder.state_dict())
    # full resolution comes from the skips: the stem's features reach the output
    feats = net.features(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
