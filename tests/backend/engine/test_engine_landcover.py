"""Land-cover pipeline end to end on real Joplin imagery with a small SkySense segmentation model file."""
import json
import sys
import types
import xml.etree.ElementTree as ET

import fiona
import numpy as np
import pytest
import rasterio
from PIL import Image

from backend.errors import CancelledError, InputError
from backend.pipelines import landcover
from backend.progress import Progress

PRE = "joplin/pre/tile_337-9136.tif"
# ~150 m x 120 m inside the pre tile (EPSG:4326 lon/lat)
AOI = {"geometry": {"type": "Polygon", "coordinates": [[[-94.4985, 37.0740], [-94.4968, 37.0740],
                                                        [-94.4968, 37.0751], [-94.4985, 37.0751],
                                                        [-94.4985, 37.0740]]]},
       "crs": "EPSG:4326"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, repo_root):
    from models.checkpoint import save_model_file
    from models.registry import create_model
    import torch

    torch.manual_seed(0)
    model = create_model("skysense_seg_tiny", num_classes=7)
    classes = json.loads((repo_root / "resources" / "palettes" / "loveda.json").read_text())["classes"]
    path = tmp_path_factory.mktemp("model") / "lc.pth"
    save_model_file(path, model, {"task": "segmentation", "classes": classes, "bands": {"hr": [1, 2, 3]},
                                  "normalization": {"hr": {"mean": [123.675, 116.28, 103.53],
                                                           "std": [58.395, 57.12, 57.375]}},
                                  "tile_size": 256, "gsd": 0.6})
    return path


def _params(data_dir, model_file, out, **extra):
    params = {"hr": [{"path": str(data_dir / PRE), "bands": [1, 2, 3]}], "s2": [], "s1": [], "model": str(model_file),
              "output_dir": str(out), "name": "landcover", "tile_size": 128, "overlap": 32, "batch_size": 4,
              "device": "cpu", "runtime": "torch", "aoi": AOI, "vectorize": True, "min_area": 0, "simplify": 0}
    params.update(extra)
    return params


def test_landcover_outputs_are_complete_and_consistent(data_dir, model_file, tmp_path):
    seen = []
    result = landcover.run(_params(data_dir, model_file, tmp_path, shapefile=True, min_area=2.0),
                           Progress(lambda f, m: seen.append(f)))
    assert seen[-1] == 1.0 and seen == sorted(seen)
    assert result["device"] == "cpu"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["landcover.cpg", "landcover.dbf", "landcover.gpkg", "landcover.prj", "landcover.qml",
                     "landcover.shp", "landcover.shx", "landcover.tif", "landcover_preview.png",
                     "landcover_vector.qml"]
    roles = {(o["kind"], o["role"], o["path"].rsplit(".", 1)[1]) for o in result["outputs"]}
    assert roles == {("raster", "classes", "tif"), ("vector", "polygons", "gpkg"), ("vector", "polygons", "shp"),
                     ("image", "preview", "png")}
    with rasterio.open(data_dir / PRE) as src, rasterio.open(tmp_path / "landcover.tif") as out:
        assert out.crs == src.crs and out.res == src.res
        # output pixels sit exactly on the input grid
        col, row = ~src.transform @ (out.transform.c, out.transform.f)
        assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6
        labels = out.read(1)
    values = {c["value"] for c in result["classes"]}
    assert set(np.unique(labels)) <= values | {0}
    assert sum(result["metrics"]["class_pixels"].values()) == (labels != 0).sum()
    qml = ET.fromstring((tmp_path / "landcover.qml").read_text().split("\n", 1)[1])
    assert {e.get("label") for e in qml.iter("paletteEntry")} == {c["name"] for c in result["classes"]}
    with fiona.open(tmp_path / "landcover.gpkg", layer="landcover") as layer:
        assert layer.crs.to_epsg() == 26915
        areas = [f["properties"]["area_m2"] for f in layer]
        assert len(areas) == result["metrics"]["features"] > 0 and min(areas) >= 2.0
    with fiona.open(tmp_path / "landcover.shp") as layer:
        assert layer.crs.to_epsg() == 26915 and len(layer) == len(areas)
    with Image.open(tmp_path / "landcover_preview.png") as png:
        assert png.mode == "P" and png.size == (result["metrics"]["width"], result["metrics"]["height"])
        colours = np.asarray(png.convert("RGBA")).reshape(-1, 4)
    with rasterio.open(tmp_path / "landcover.tif") as ds:
        labels = ds.read(1).ravel()
    palette = {c["value"]: tuple(int(c["color"][i:i + 2], 16) for i in (1, 3, 5)) for c in result["classes"]}
    present = [int(v) for v in np.unique(labels) if int(v) in palette]
    assert len(present) >= 2
    for value in present:  # each class in its colour, opaque; nodata transparent
        assert tuple(colours[np.argmax(labels == value)]) == palette[value] + (255,)
    if (labels == 0).any():
        assert colours[np.argmax(labels == 0)][3] == 0


def test_landcover_runs_at_the_model_files_tile_unless_told_otherwise(data_dir, model_file, tmp_path):
    from backend.io.tiling import plan_tiles
    own = landcover.run(_params(data_dir, model_file, tmp_path / "own", tile_size=None, vectorize=False), Progress())
    height, width = own["metrics"]["height"], own["metrics"]["width"]
    assert own["metrics"]["tiles"] == plan_tiles(height, width, 256, 32).n_tiles  # the file says 256
    told = landcover.run(_params(data_dir, model_file, tmp_path / "told", vectorize=False), Progress())
    assert told["metrics"]["tiles"] == plan_tiles(height, width, 128, 32).n_tiles > own["metrics"]["tiles"]


def test_landcover_without_vectors_and_with_confidence(data_dir, model_file, tmp_path):
    result = landcover.run(_params(data_dir, model_file, tmp_path, vectorize=False, confidence=True, tta=True))
    assert result["metrics"]["tta"] is True
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["landcover.qml", "landcover.tif", "landcover_confidence.tif", "landcover_preview.png"]
    with rasterio.open(tmp_path / "landcover_confidence.tif") as ds:
        conf = ds.read(1)
        assert ds.nodata == 255
    with rasterio.open(tmp_path / "landcover.tif") as ds:
        labels = ds.read(1)
    np.testing.assert_array_equal(conf == 255, labels == 0)  # same nodata (outside the rotated AOI)
    valid = conf[conf != 255]
    assert valid.size > 0.9 * conf.size and valid.max() <= 100 and valid.min() >= 100 // 7
    assert any(o["role"] == "confidence" for o in result["outputs"])


def test_landcover_cancel_leaves_nothing(data_dir, model_file, tmp_path):
    cancel = __import__("threading").Event()

    def on_progress(fraction, message):
        if fraction > 0.1:
            cancel.set()

    with pytest.raises(CancelledError):
        landcover.run(_params(data_dir, model_file, tmp_path, aoi=None), Progress(on_progress, cancel))
    assert list(tmp_path.iterdir()) == []


def test_landcover_rejects_bad_params(data_dir, model_file, tmp_path):
    with pytest.raises(InputError, match="no input raster"):
        landcover.run(_params(data_dir, model_file, tmp_path, hr=[]))
    with pytest.raises(InputError, match="plain file name"):
        landcover.run(_params(data_dir, model_file, tmp_path, name="../evil"))
    with pytest.raises(InputError, match="model file not found"):
        landcover.run(_params(data_dir, model_file, tmp_path, model=str(tmp_path / "missing.pth")))
    with pytest.raises(InputError, match="needs 3 band"):
        landcover.run(_params(data_dir, model_file, tmp_path, hr=[{"path": str(data_dir / PRE), "bands": [1]}]))
    with pytest.raises(InputError, match="no CRS"):
        landcover.run(_params(data_dir, model_file, tmp_path, aoi=None,
                              hr=[{"path": str(data_dir / "loveda" / "img_dir" / "0.png")}]))
    assert list(tmp_path.iterdir()) == []


def test_sentinel_series_are_handed_to_the_temporal_pipeline(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("backend.pipelines.temporal")
    fake.run_temporal_landcover = lambda params, progress: calls.append(params) or {"outputs": [], "device": "cpu"}
    monkeypatch.setitem(sys.modules, "backend.pipelines.temporal", fake)
    import backend.pipelines as pipelines_pkg
    monkeypatch.setattr(pipelines_pkg, "temporal", fake, raising=False)
    params = {"hr": [{"path": "x.tif"}], "s2": [{"path": "s2.tif", "date": "2021-06-01"}], "output_dir": str(tmp_path)}
    assert landcover.run(params, Progress()) == {"outputs": [], "device": "cpu"}
    assert calls == [params]


def test_runtime_choice(monkeypatch, tmp_path):
    """auto without hardware bf16 or OpenVINO: PyTorch for small CPU jobs, ONNX Runtime (exported once, cached) for
    big ones."""
    import torch
    from backend.inference import runtime
    from backend.inference.predictors import OnnxRuntimePredictor, TorchPredictor
    from models.registry import create_model

    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)  # OpenVINO's turn: test_engine_openvino.py
    torch.manual_seed(0)
    model = create_model("skysense_seg_tiny", num_classes=7).eval()
    small = runtime.make_predictor(model, device="cpu", tile_size=64, expected_tiles=1)
    assert isinstance(small, TorchPredictor) and small.precision == "fp32"
    model_path = tmp_path / "weights.bin"
    model_path.write_bytes(b"stand-in for a model file: only its hash keys the cache")
    assert isinstance(runtime.make_predictor(model, device="cpu", tile_size=64, expected_tiles=9000,
                                             model_path=model_path), TorchPredictor)  # 37 MP: not worth exporting
    big = runtime.make_predictor(model, device="cpu", tile_size=64, expected_tiles=10000, model_path=model_path)
    assert isinstance(big, OnnxRuntimePredictor) and big.fixed_tile_size == 64
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(big([x]), small([x]), atol=1e-4)
    with pytest.raises(InputError, match="unknown runtime"):
        runtime.make_predictor(model, runtime="tensorrt")


def test_runtime_choice_on_a_cpu_with_native_bf16(monkeypatch):
    """auto on a bf16 CPU: PyTorch with bf16 autocast, whatever the job size; 'torch' stays fp32."""
    import torch
    from backend.inference import runtime
    from models.registry import create_model

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    torch.manual_seed(0)
    model = create_model("skysense_seg_tiny", num_classes=7).eval()
    fast = runtime.make_predictor(model, device="cpu", tile_size=64, expected_tiles=1000)
    assert fast.precision == "bf16 mixed" and fast.amp_dtype == torch.bfloat16
    exact = runtime.make_predictor(model, device="cpu", runtime="torch", tile_size=64, expected_tiles=1000)
    assert exact.precision == "fp32"
    assert runtime.make_predictor(model, device="cpu", amp=False, tile_size=64, expected_tiles=1).precision == "fp32"
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    p_fast, p_exact = fast([x]), exact([x])  # bf16 is emulated where the CPU lacks it: slower, same numbers
    assert p_fast.dtype == torch.float32
    assert (p_fast.argmax(1) == p_exact.argmax(1)).float().mean() > 0.97
    assert (p_fast - p_exact).abs().max() < 0.1


def test_cpu_bf16_predictor_really_computes_in_bf16():
    import torch
    from backend.inference.predictors import TorchPredictor

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            seen.append(y.dtype)
            return y

    x = [np.zeros((1, 3, 8, 8), np.float32)]
    TorchPredictor(Probe(), "cpu", cpu_bf16=True)(x)
    TorchPredictor(Probe(), "cpu")(x)
    assert seen == [torch.bfloat16, torch.float32]


def test_several_hr_tiles_make_one_mosaicked_map(data_dir, model_file, tmp_path):
    tiles = sorted((data_dir / "joplin" / "pre").glob("*.tif"))
    # a 100 m x 100 m AOI around the corner where the four tiles meet
    aoi = {"geometry": {"type": "Polygon", "coordinates": [[[367207.0, 4103846.8], [367307.0, 4103846.8],
                                                            [367307.0, 4103946.8], [367207.0, 4103946.8],
                                                            [367207.0, 4103846.8]]]}, "crs": "EPSG:26915"}
    result = landcover.run(_params(data_dir, model_file, tmp_path, hr=[{"path": str(t)} for t in tiles], aoi=aoi,
                                   vectorize=False))
    with rasterio.open(tmp_path / "landcover.tif") as out:
        assert abs(out.width - 167) <= 1 and abs(out.height - 167) <= 1
        labels = out.read(1)
    # inside the AOI (the outer pixel ring has centres outside it) the tile seams leave no gap
    assert (labels[1:-1, 1:-1] != 0).all()
    assert result["metrics"]["valid_pixels"] == (labels != 0).sum()


def test_tiles_outside_an_aoi_triangle_are_not_computed_and_the_map_is_unchanged(data_dir, model_file, tmp_path,
                                                                                 monkeypatch):
    from backend.inference import engine
    from backend.io.tiling import plan_tiles

    with rasterio.open(data_dir / PRE) as ds:
        assert ds.shape == (1024, 1024)
        (x0, y0), (x1, _), (_, y1) = ds.transform * (0, 0), ds.transform * (1024, 0), ds.transform * (0, 1024)
        crs = ds.crs.to_string()
    triangle = {"geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x0, y1], [x0, y0]]]}, "crs": crs}
    params = dict(aoi=triangle, vectorize=False, tile_size=256)
    skipping = landcover.run(_params(data_dir, model_file, tmp_path / "skip", **params))
    monkeypatch.setattr(engine, "_tiles_with_data", lambda valid, spans: list(range(len(spans))))
    every = landcover.run(_params(data_dir, model_file, tmp_path / "every", **params))
    with rasterio.open(tmp_path / "skip" / "landcover.tif") as a, \
            rasterio.open(tmp_path / "every" / "landcover.tif") as b:
        labels = a.read(1)
        np.testing.assert_array_equal(labels, b.read(1))
    assert (labels[:100, :100] != 0).all() and (labels[-100:, -100:] == 0).all()
    tiles = skipping["metrics"]["tiles"]
    assert every["metrics"]["tiles_without_data"] == 0 and every["metrics"]["tiles"] == tiles
    # a tile holds no pixel of the AOI when its top-left pixel's centre is below the diagonal
    layout = plan_tiles(1024, 1024, 256, 32)
    below = sum(1 for r in range(layout.rows) for c in range(layout.cols) if (r + c) * layout.stride + 1 > 1024)
    assert skipping["metrics"]["tiles_without_data"] == below == 10
