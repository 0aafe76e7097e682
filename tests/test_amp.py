"""AMP by compute capability (faked: there is no GPU here) and the one inference loop."""
import numpy as np
import pytest
import torch
from torch import nn

from prostate_course import amp, inference, models

CUDA = torch.device("cuda")


@pytest.fixture
def gpu(monkeypatch):
    """Pretend to be a CUDA GPU of a given compute capability; is_bf16_supported says yes
    everywhere, as it does on a T4 (emulated bfloat16): the rule must not trust it."""
    state = {"cap": (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: state["cap"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    return state


@pytest.mark.parametrize("cap, want", [((7, 5), torch.float16),      # Colab T4
                                       ((7, 0), torch.float16),      # V100
                                       ((8, 0), torch.bfloat16),     # A100
                                       ((9, 0), torch.bfloat16)])    # H100 / H200
def test_auto_picks_bf16_only_with_native_support(gpu, cap, want):
    gpu["cap"] = cap
    assert amp.amp_dtype(CUDA, "auto") is want
    assert amp.amp_dtype(CUDA, True) is want
    assert amp.needs_grad_scaler(amp.amp_dtype(CUDA)) == (want is torch.float16)


def test_explicit_choices(gpu):
    gpu["cap"] = (7, 5)
    with pytest.warns(UserWarning, match="no native bfloat16"):
        assert amp.amp_dtype(CUDA, "bf16") is torch.float16
    gpu["cap"] = (9, 0)
    assert amp.amp_dtype(CUDA, "fp16") is torch.float16
    assert amp.amp_dtype(CUDA, False) is None
    for off in ("auto", "bf16", "fp16"):
        assert amp.amp_dtype(torch.device("cpu"), off) is None
        assert amp.amp_dtype(torch.device("mps"), off) is None
    with pytest.raises(ValueError, match="amp must be"):
        amp.amp_dtype(CUDA, "int8")


def test_inference_matches_the_model_in_eval_mode():
    torch.manual_seed(0)
    model = models.Classifier(models.resnet18_encoder())
    x = torch.randn(70, 3, 32, 32).half()        # float16 storage, as the slice cache keeps it
    model.train()
    logits = inference.predict_logits(model, x, batch_size=32, device="cpu")
    assert model.training                           # the mode is restored
    with torch.no_grad():
        want = model.eval()(x.float())
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-5)
    p = inference.predict(model, x, device="cpu")
    np.testing.assert_allclose(p, torch.sigmoid(want).numpy(), rtol=1e-4, atol=1e-6)
    f = inference.extract_features(model.encoder, x, device="cpu")
    assert f.shape == (70, 512) and f.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(f, model.encoder(x.float()).numpy(), rtol=1e-4, atol=1e-5)
    assert inference.extract_features(model.encoder, x[:0], device="cpu").shape == (0, 512)
    assert inference.eval_batch_size("cpu") == 64 and inference.eval_batch_size("cuda") == 256
