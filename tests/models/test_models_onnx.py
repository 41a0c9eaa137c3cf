"""ONNX export and the onnxruntime predictor: parity with PyTorch."""
import numpy as np
import pytest
import torch

from models.onnx_export import OnnxExportError, OnnxPredictor, available_providers, export_onnx
from models.registry import create_model


def test_segmentation_parity_and_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = create_model("skysense_seg_tiny", num_classes=5).eval()
    meta = {"classes": [{"value": 1, "name": "a", "color": "#000000"}], "normalization": {"hr": {"mean": [1], "std": [2]}}}
    path = export_onnx(model, tmp_path / "seg.onnx", tile_size=64, meta=meta)
    assert [p.name for p in tmp_path.iterdir()] == ["seg.onnx"]
    pred = OnnxPredictor(path, device="cpu")
    assert pred.input_names == ["image"] and pred.device == "cpu"
    assert pred.meta["tile_size"] == 64 and pred.meta["classes"] == meta["classes"]
    x = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)  # batch 3 != traced batch 2
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    out = pred(x)
    assert out.shape == (3, 5, 64, 64)
    assert np.abs(out - ref).max() < 1e-4
    assert (out.argmax(1) == ref.argmax(1)).mean() > 0.999


def test_change_model_parity(tmp_path):
    torch.manual_seed(0)
    model = create_model("skysense_change_tiny").eval()
    path = export_onnx(model, tmp_path / "change.onnx", tile_size=64)
    pred = OnnxPredictor(path)
    assert pred.input_names == ["pre", "post"]
    a, b = (np.random.default_rng(i).normal(size=(1, 3, 64, 64)).astype(np.float32) for i in (1, 2))
    with torch.inference_mode():
        ref = model(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.abs(pred(a, b) - ref).max() < 1e-4


def test_bad_requests_are_explained(tmp_path):
    model = create_model("skysense_seg_tiny", num_classes=2)
    with pytest.raises(OnnxExportError, match="multiple of 32"):
        export_onnx(model, tmp_path / "x.onnx", tile_size=50)
    with pytest.raises(OnnxExportError, match="temporal"):
        export_onnx(create_model("skysense_temporal_tiny"), tmp_path / "t.onnx", tile_size=64)
    assert not list(tmp_path.iterdir())
    path = export_onnx(model, tmp_path / "seg.onnx", tile_size=32)
    pred = OnnxPredictor(path)
    with pytest.raises(ValueError, match="expected"):
        pred(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="takes 1 inputs"):
        pred(np.zeros((1, 3, 32, 32), np.float32), np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(OnnxExportError, match="no such"):
        OnnxPredictor(tmp_path / "missing.onnx")


def test_provider_choice():
    assert available_providers("cpu") == ["CPUExecutionProvider"]
    assert available_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(ValueError):
        available_providers("tpu")
