"""Exported .onnx model files are usable models: the land-cover pipeline runs them with ONNX Runtime
(classes, bands and normalisation from the metadata stored at export) and gets the .pth's labels."""
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from backend.errors import InputError
from backend.inference.predictors import OnnxRuntimePredictor
from backend.inference.runtime import load_task_predictor
from backend.io.tiling import plan_tiles
from backend.model_manager import read_model_meta
from backend.pipelines import landcover


@pytest.fixture
def scene(tmp_path):
    """160 x 128 px, 3 bands: a greenish and a grey half with noise and a bright square."""
    rng = np.random.default_rng(7)
    img = np.zeros((3, 128, 160), np.uint8)
    img[:, :, :80] = np.array([40, 120, 40], np.uint8)[:, None, None]
    img[:, :, 80:] = 150
    img[:, 30:60, 100:140] = 230
    img = np.clip(img + rng.integers(0, 25, img.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=160, height=128, count=3, dtype="uint8",
                       crs="EPSG:32615", transform=from_origin(360000, 4105000, 0.5, 0.5)) as ds:
        ds.write(img)
    return path


def _params(scene, model, out, **extra):
    return {"hr": [{"path": str(scene)}], "model": str(model), "output_dir": str(out), "tile_size": 64,
            "overlap": 16, "batch_size": 2, "device": "cpu", "vectorize": False, **extra}


def test_onnx_meta_is_the_model_files_meta(exported_landcover):
    pth, onx = read_model_meta(exported_landcover["pth"]), read_model_meta(exported_landcover["onnx"])
    for key in ("task", "classes", "bands", "normalization", "tile_size", "gsd", "metrics"):
        assert onx[key] == pth[key], key
    assert onx["runtime"] == "onnx" and onx["inputs"] == ["image"] and onx["in_chans"] == 3


def test_onnx_landcover_job_gives_the_pth_labels(exported_landcover, scene, tmp_path):
    # Same tiling either way: the .pth's fitted layout keeps tile 64, the ONNX graph is fixed at 64.
    assert plan_tiles(128, 160, 64, 16).tile == 64
    ref = landcover.run(_params(scene, exported_landcover["pth"], tmp_path, name="ref", runtime="torch"))
    got = landcover.run(_params(scene, exported_landcover["onnx"], tmp_path, name="onnx", tile_size=None))
    assert got["metrics"]["runtime"] == "OnnxRuntimePredictor" and got["device"] == "cpu"
    assert got["classes"] == ref["classes"] and len(got["classes"]) == 7
    with rasterio.open(tmp_path / "ref.tif") as a, rasterio.open(tmp_path / "onnx.tif") as b:
        ref_labels, onnx_labels = a.read(1), b.read(1)
        assert b.crs == a.crs and b.transform == a.transform
    assert ref_labels.shape == (128, 160)
    agreement = (ref_labels == onnx_labels).mean()
    assert agreement > 0.999, agreement


def test_onnx_predictor_respects_the_device(exported_landcover):
    model, meta = load_task_predictor(exported_landcover["onnx"], ("segmentation",), device="cpu")
    assert isinstance(model, OnnxRuntimePredictor) and model.fixed_tile_size == 64 == meta["tile_size"]
    assert model.session.get_providers() == ["CPUExecutionProvider"] and model.device == "cpu"
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(InputError, match="no CUDA provider"):
            load_task_predictor(exported_landcover["onnx"], ("segmentation",), device="cuda")
        auto, _ = load_task_predictor(exported_landcover["onnx"], ("segmentation",), device="auto")
        assert auto.device == "cpu"


def test_onnx_model_errors_are_clear(exported_landcover, scene, tmp_path):
    with pytest.raises(InputError, match=r"bare\.onnx was exported without SkySense metadata"):
        landcover.run(_params(scene, exported_landcover["bare"], tmp_path))
    with pytest.raises(InputError, match="'segmentation' model; the change step needs a 'change' model"):
        load_task_predictor(exported_landcover["onnx"], ("change",), what="change")
    with pytest.raises(InputError, match="exported ONNX model, which PyTorch cannot run"):
        landcover.run(_params(scene, exported_landcover["onnx"], tmp_path, runtime="torch"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not an onnx graph")
    with pytest.raises(InputError, match=r"junk\.onnx"):
        landcover.run(_params(scene, junk, tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx", "scene.tif"]
