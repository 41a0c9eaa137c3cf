"""The benchmark's plain-loop baseline must compute the same map as the engine (an honest comparison)."""
import numpy as np
import rasterio
import torch

from backend.inference.engine import EngineInput, run_inference
from backend.inference.predictors import TorchPredictor
from benchmarks.baseline_loop import plain_tile_loop
from benchmarks.synthetic import make_test_raster


def test_plain_loop_and_engine_agree_for_a_pointwise_model(tmp_path):
    raster = make_test_raster(tmp_path / "r.tif", 700)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 7, 1).eval()
    tiles = plain_tile_loop(raster, tmp_path / "loop.tif", model, list(range(1, 8)), tile=256, overlap=32)
    assert tiles == 3 * 3
    run_inference([EngineInput(raster, mean=[128.0] * 3, std=[64.0] * 3)], TorchPredictor(model, "cpu"),
                  tmp_path / "engine.tif", list(range(1, 8)), tile_size=256, overlap=32, batch_size=3)
    with rasterio.open(tmp_path / "loop.tif") as a, rasterio.open(tmp_path / "engine.tif") as b:
        assert a.transform == b.transform and a.crs == b.crs
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_plain_loop_runs_an_onnx_runtime_predictor_like_the_module(tmp_path):
    from backend.inference.predictors import OnnxRuntimePredictor
    from models.onnx_export import export_onnx
    from models.registry import create_model

    raster = make_test_raster(tmp_path / "r.tif", 300)
    torch.manual_seed(0)
    model = create_model("skysense_seg_tiny", num_classes=7).eval()
    onnx_path = export_onnx(model, tmp_path / "m.onnx", tile_size=256)
    classes = list(range(1, 8))
    plain_tile_loop(raster, tmp_path / "torch.tif", model, classes, tile=256, overlap=32)
    plain_tile_loop(raster, tmp_path / "ort.tif", OnnxRuntimePredictor(onnx_path, device="cpu"), classes,
                    tile=256, overlap=32)
    with rasterio.open(tmp_path / "torch.tif") as a, rasterio.open(tmp_path / "ort.tif") as b:
        assert (a.read(1) == b.read(1)).mean() > 0.999
