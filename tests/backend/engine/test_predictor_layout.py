"""TorchPredictor's memory layout: channels_last for fp32 (faster oneDNN convolutions), same probabilities."""
import copy

import numpy as np
import torch

from backend.inference.predictors import TorchPredictor
from models.registry import create_model


def _model():
    torch.manual_seed(0)
    return create_model("skysense_seg_tiny", num_classes=7).eval()


def test_cpu_fp32_runs_channels_last_and_bf16_does_not():
    assert TorchPredictor(_model(), device="cpu").channels_last is True
    assert TorchPredictor(_model(), device="cpu", cpu_bf16=True).channels_last is False
    assert TorchPredictor(_model(), device="cpu", channels_last=False).channels_last is False


def test_channels_last_converts_weights_and_gives_the_same_probabilities():
    model = _model()
    x = np.random.default_rng(0).normal(size=(2, 3, 128, 128)).astype(np.float32)
    plain = TorchPredictor(copy.deepcopy(model), device="cpu", channels_last=False)
    fast = TorchPredictor(copy.deepcopy(model), device="cpu")
    convs = [m for m in fast.module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    a, b = plain([x]), fast([x])
    assert a.shape == b.shape == (2, 7, 128, 128)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.999
