"""Fixtures for the change / damage / temporal tests: small synthetic rasters and model files."""
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

ROOT = Path(__file__).resolve().parents[3]
CHANGE_MODEL = ROOT / "resources" / "models" / "change_levir_tiny.pth"


def write_raster(path, data, crs, transform, nodata=None):
    data = np.asarray(data)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
    return str(path)


@pytest.fixture(scope="session")
def landcover_model_file(tmp_path_factory):
    """A 7-class LoveDA-style segmentation model file biased so that 'building' (value 2) wins on
    bright pixels: deterministic enough to test the plumbing of from-to and localisation."""
    import torch
    from models.checkpoint import save_model_file
    from models.normalization import get_normalization
    from models.registry import create_model

    torch.manual_seed(0)
    model = create_model("skysense_seg_tiny", num_classes=7)
    classes = json.loads((ROOT / "resources" / "palettes" / "loveda.json").read_text())["classes"]
    path = tmp_path_factory.mktemp("models") / "landcover_random.pth"
    save_model_file(path, model, {"task": "segmentation", "classes": classes, "bands": {"hr": [1, 2, 3]},
                                  "normalization": {"hr": get_normalization("hr")}, "tile_size": 256})
    return path


@pytest.fixture(scope="session")
def temporal_model_file(tmp_path_factory):
    import torch
    from models.checkpoint import save_model_file
    from models.normalization import get_normalization
    from models.registry import create_model

    torch.manual_seed(0)
    model = create_model("skysense_temporal_tiny", num_classes=7)
    classes = json.loads((ROOT / "resources" / "palettes" / "loveda.json").read_text())["classes"]
    path = tmp_path_factory.mktemp("models") / "temporal_random.pth"
    save_model_file(path, model, {"task": "temporal", "classes": classes, "bands": {"hr": [1, 2, 3]},
                                  "normalization": {"hr": get_normalization("hr")}, "tile_size": 256})
    return path


@pytest.fixture()
def s2_scene(tmp_path):
    """HR raster in UTM 15N (300x260 px at 1 m) and three S2 dates in EPSG:4326 covering it;
    the second date is entirely cloud (bright white)."""
    rng = np.random.default_rng(0)
    hr = write_raster(tmp_path / "hr.tif", rng.integers(0, 255, (3, 260, 300), dtype=np.uint8), "EPSG:32615",
                      from_origin(500000, 4100000, 1.0, 1.0))
    left, bottom, right, top = transform_bounds("EPSG:32615", "EPSG:4326", 500000 - 60, 4100000 - 320,
                                                500000 + 360, 4100000 + 60)
    res = 0.0001
    width, height = int((right - left) / res) + 1, int((top - bottom) / res) + 1
    frames = []
    for k, (date, cloudy) in enumerate([("2023-04-01", False), ("2023-06-15", True), ("2023-08-30", False)]):
        data = rng.integers(200, 3000, (10, height, width)).astype("uint16")
        if cloudy:
            data[:] = 8000
        path = write_raster(tmp_path / f"s2_{k}.tif", data, "EPSG:4326", from_origin(left, top, res, res), nodata=0)
        frames.append({"path": path, "date": date})
    return {"hr": hr, "s2": frames, "dir": tmp_path}


@pytest.fixture(scope="session")
def building_model_factory(tmp_path_factory):
    """make(bias, name) -> a random tiny 7-class land-cover model file whose classifier leans towards
    'building' by `bias` (logit): exercises building localisation without a trained model."""
    def make(bias: float, name: str) -> Path:
        import torch
        from models.checkpoint import save_model_file
        from models.normalization import get_normalization
        from models.registry import create_model

        torch.manual_seed(0)
        model = create_model("skysense_seg_tiny", num_classes=7)
        with torch.no_grad():
            model.decode_head.conv_seg.bias.copy_(torch.tensor([0.0, bias, 0, 0, 0, 0, 0]))
        classes = json.loads((ROOT / "resources" / "palettes" / "loveda.json").read_text())["classes"]
        path = tmp_path_factory.mktemp("models") / f"{name}.pth"
        save_model_file(path, model, {"task": "segmentation", "classes": classes, "bands": {"hr": [1, 2, 3]},
                                      "normalization": {"hr": get_normalization("hr")}, "tile_size": 256})
        return path
    return make


@pytest.fixture(scope="session")
def building_model_file(building_model_factory):
    """Strongly biased: most pixels come out as building."""
    return building_model_factory(8.0, "building_biased")


def outcome_metrics(result) -> dict:
    """A job's metrics without its run time: what two runs of the same job must agree on."""
    return {k: v for k, v in result["metrics"].items() if k != "seconds"}
