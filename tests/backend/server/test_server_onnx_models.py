"""GET /models lists exported .onnx model files with their SkySense metadata (task, classes, bands...),
names the ones that cannot be used, and a land-cover job runs with a chosen .onnx model."""
from __future__ import annotations

import shutil

import numpy as np
import rasterio
from rasterio.transform import from_origin

from backend.model_manager import list_model_files


def _user_folder(tmp_path, exported):
    user = tmp_path / "user_models"
    user.mkdir()
    for key in ("pth", "onnx", "bare"):
        shutil.copy(exported[key], user / exported[key].name)
    (user / "junk.onnx").write_bytes(b"\x00\x01 not an onnx graph")
    (user / "notes.txt").write_text("ignored")
    return user


def test_server_models_lists_onnx_files_with_their_metadata(make_client, auth, exported_landcover, tmp_path):
    from backend.server.model_index import ModelIndex

    user = _user_folder(tmp_path, exported_landcover)
    listed = make_client(models=ModelIndex(tmp_path / "none", user)).get("/models", headers=auth).json()
    by_file = {m["path"].rsplit("/", 1)[1]: m for m in listed}
    assert sorted(by_file) == ["bare.onnx", "junk.onnx", "lc_tiny.onnx", "lc_tiny.pth"]
    onnx, pth = by_file["lc_tiny.onnx"], by_file["lc_tiny.pth"]
    assert onnx["error"] is None and onnx["task"] == "segmentation" and onnx["source"] == "user"
    assert len(onnx["classes"]) == 7 and onnx["classes"] == pth["classes"]
    for key in ("bands", "tile_size", "gsd", "metrics"):
        assert onnx[key] == pth[key], key
    assert onnx["bands"] == {"hr": [1, 2, 3]} and onnx["tile_size"] == 64
    bare, junk = by_file["bare.onnx"], by_file["junk.onnx"]
    assert bare["task"] is None and "bare.onnx was exported without SkySense metadata" in bare["error"]
    assert junk["task"] is None and "junk.onnx is not a readable ONNX model" in junk["error"]
    # The model manager's listing (one list of suffixes) sees the same files.
    assert [e.path.name for e in list_model_files([user])] == sorted(by_file)


def test_server_landcover_job_with_an_onnx_model(client, auth, helpers, out_root, exported_landcover, tmp_path):
    scene = tmp_path / "scene.tif"
    rng = np.random.default_rng(3)
    with rasterio.open(scene, "w", driver="GTiff", width=96, height=96, count=3, dtype="uint8",
                       crs="EPSG:32615", transform=from_origin(360000, 4105000, 0.5, 0.5)) as ds:
        ds.write(rng.integers(0, 255, (3, 96, 96), dtype=np.uint8))
    params = {"hr": [{"path": str(scene)}], "model": str(exported_landcover["onnx"]), "output_dir": str(out_root / "lc"),
              "name": "onnx_map", "device": "cpu", "vectorize": False}
    response = client.post("/jobs", headers=auth, json={"kind": "landcover", "params": params})
    assert response.status_code == 200, response.text
    info = helpers.wait_job(client, response.json()["id"], timeout=120)
    assert info["state"] == "done", info["error"]
    assert info["result"]["metrics"]["runtime"] == "OnnxRuntimePredictor"
    with rasterio.open(out_root / "lc" / "onnx_map.tif") as ds:
        assert ds.shape == (96, 96) and set(np.unique(ds.read(1))) <= set(range(1, 8))

    params.update(model=str(exported_landcover["bare"]), name="bare_map")
    info = helpers.wait_job(client, client.post("/jobs", headers=auth, json={"kind": "landcover", "params": params})
                            .json()["id"], timeout=120)
    assert info["state"] == "failed" and "bare.onnx was exported without SkySense metadata" in info["error"]
