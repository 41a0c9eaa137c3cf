"""Synthetic raster factory for the raster I/O tests."""
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin


@pytest.fixture
def make_raster(tmp_path):
    """make_raster(data[C,H,W], name=..., crs=..., transform=..., nodata=..., **profile) -> path."""
    def _make(data, name="r.tif", crs="EPSG:32633", transform=None, nodata=None, **profile):
        data = np.asarray(data)
        if data.ndim == 2:
            data = data[None]
        path = tmp_path / name
        transform = transform or from_origin(500000.0, 4000000.0, 2.0, 2.0)
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                           count=data.shape[0], dtype=data.dtype, crs=crs, transform=transform,
                           nodata=nodata, **profile) as ds:
            ds.write(data)
        return path
    return _make


@pytest.fixture(scope="session")
def exported_landcover(tmp_path_factory):
    """The tiny land-cover test model as a .pth, the same model exported to .onnx (tile 64, with the
    model file's metadata), and an .onnx copy stripped of its SkySense metadata:
    {"pth", "onnx", "bare"} paths (one export per test session)."""
    import json
    from pathlib import Path

    import onnx
    import torch

    from models.checkpoint import load_model_file, save_model_file
    from models.onnx_export import export_onnx
    from models.registry import create_model

    root = Path(__file__).resolve().parents[2]
    folder = tmp_path_factory.mktemp("onnx_models")
    torch.manual_seed(0)
    classes = json.loads((root / "resources" / "palettes" / "loveda.json").read_text())["classes"]
    pth = folder / "lc_tiny.pth"
    save_model_file(pth, create_model("skysense_seg_tiny", num_classes=7),
                    {"task": "segmentation", "classes": classes, "bands": {"hr": [1, 2, 3]},
                     "normalization": {"hr": {"mean": [120.0] * 3, "std": [60.0] * 3}},
                     "tile_size": 64, "gsd": 0.5, "metrics": {"miou": 0.5}})
    model, meta = load_model_file(pth)
    exported = export_onnx(model, folder / "lc_tiny.onnx", tile_size=64, meta=meta)
    proto = onnx.load(str(exported))
    del proto.metadata_props[:]
    bare = folder / "bare.onnx"
    onnx.save(proto, str(bare))
    return {"pth": pth, "onnx": exported, "bare": bare}


@pytest.fixture(autouse=True)
def _no_openvino_wish_outlives_its_test():
    """A job's wish for OpenVINO (runtime._WANTED) is prepared by the next idle job worker: keep it from
    reaching another test's server."""
    yield
    from backend.inference import runtime
    runtime._WANTED.clear()
    runtime._PREVIOUS_CPU_JOB.clear()


@pytest.fixture
def stand_in_model_file(monkeypatch, tmp_path):
    """A model file whose hash alone keys the caches (the `model` fixture is what gets exported), with an
    empty cache in tmp_path/cache, fp32 (as on CPUs without bf16) and no compiled model held."""
    from backend.inference import runtime

    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(runtime, "_LAST_OPENVINO", {})
    model_path = tmp_path / "weights.bin"
    model_path.write_bytes(b"stand-in for a model file")
    return model_path
