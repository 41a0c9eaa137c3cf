"""The real land-cover pipeline through the HTTP API: a tiny model file and a small
synthetic GeoTIFF in, styled class raster and polygons out; bad rasters fail cleanly."""
from __future__ import annotations

import json
import os

import fiona
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, repo_root):
    import torch

    from models.checkpoint import save_model_file
    from models.registry import create_model

    torch.manual_seed(0)
    model = create_model("skysense_seg_tiny", num_classes=7)
    classes = json.loads((repo_root / "resources" / "palettes" / "loveda.json").read_text())["classes"]
    path = tmp_path_factory.mktemp("models") / "lc_tiny.pth"
    save_model_file(path, model, {"task": "segmentation", "classes": classes, "bands": {"hr": [1, 2, 3]},
                                  "normalization": {"hr": {"mean": [120.0] * 3, "std": [60.0] * 3}},
                                  "tile_size": 64, "gsd": 0.5})
    return path


@pytest.fixture
def scene(tmp_path):
    path = tmp_path / "inputs" / "scene.tif"
    path.parent.mkdir()
    rng = np.random.default_rng(3)
    img = np.zeros((3, 96, 96), np.uint8)
    img[:, :48] = [[[40]], [[120]], [[40]]]     # a greenish half and a grey half, plus noise
    img[:, 48:] = [[[150]], [[150]], [[150]]]
    img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=96, height=96, count=3, dtype="uint8",
                       crs="EPSG:32615", transform=from_origin(360000, 4105000, 0.5, 0.5)) as ds:
        ds.write(img)
    return path


def _job(scene, model, out_dir, **extra):
    params = {"hr": [{"path": str(scene), "bands": [1, 2, 3]}], "model": str(model), "output_dir": str(out_dir),
              "tile_size": 64, "overlap": 16, "batch_size": 2, "device": "cpu", **extra}
    return {"kind": "landcover", "params": params}


def test_server_landcover_job_end_to_end(client, auth, helpers, out_root, scene, tiny_model):
    out = out_root / "lc"
    response = client.post("/jobs", headers=auth, json=_job(scene, tiny_model, out, name="map"))
    assert response.status_code == 200, response.text
    info = helpers.wait_job(client, response.json()["id"], timeout=300)
    assert info["state"] == "done", info["error"]
    assert info["progress"] == 1.0 and info["error"] is None
    result = info["result"]
    assert result["device"] == "cpu"
    assert {c["value"] for c in result["classes"]} == set(range(1, 8))
    by_role = {(o["kind"], o["role"]): o for o in result["outputs"]}
    raster = by_role[("raster", "classes")]
    for output in result["outputs"]:
        assert os.path.dirname(output["path"]) == str(out.resolve())
        assert os.path.isfile(output["path"])
    with rasterio.open(raster["path"]) as classes, rasterio.open(scene) as src:
        assert classes.crs == src.crs and classes.shape == src.shape
        assert set(np.unique(classes.read(1))) <= set(range(0, 8))
    assert os.path.isfile(raster["qml"])
    polygons = by_role[("vector", "polygons")]
    with fiona.open(polygons["path"], layer=polygons.get("layer")) as layer:
        assert layer.crs.to_epsg() == 32615 and len(layer) > 0
    # no temporary leftovers in the output folder
    assert not [n for n in os.listdir(out) if n.startswith(".") or n.endswith(".tmp")]


def test_server_landcover_rejects_non_raster_input(client, auth, helpers, out_root, tmp_path, tiny_model):
    text = tmp_path / "notes.tif"
    text.write_text("these are field notes, not an image\n" * 50)
    response = client.post("/jobs", headers=auth, json=_job(text, tiny_model, out_root))
    info = helpers.wait_job(client, response.json()["id"], timeout=300)
    assert info["state"] == "failed"
    assert "notes.tif" in info["error"] and "raster" in info["error"]
    assert "unexpectedly" not in info["error"]
    assert os.listdir(out_root) == []
    assert client.get("/health", headers=auth).status_code == 200


def test_server_landcover_truncated_raster_fails_cleanly(client, auth, helpers, out_root, scene, tiny_model):
    data = scene.read_bytes()
    broken = scene.with_name("broken.tif")
    broken.write_bytes(data[: len(data) // 2])
    response = client.post("/jobs", headers=auth, json=_job(broken, tiny_model, out_root))
    info = helpers.wait_job(client, response.json()["id"], timeout=300)
    assert info["state"] == "failed"
    assert "broken.tif" in info["error"] and "unexpectedly" not in info["error"]
    assert os.listdir(out_root) == []


def test_server_landcover_wrong_model_kind_fails_with_message(client, auth, helpers, out_root, scene, tmp_path):
    fake = tmp_path / "weights.pth"
    fake.write_bytes(b"PK\x03\x04 not really a checkpoint")
    response = client.post("/jobs", headers=auth, json=_job(scene, fake, out_root))
    info = helpers.wait_job(client, response.json()["id"], timeout=300)
    assert info["state"] == "failed" and "weights.pth" in info["error"]
    assert "unexpectedly" not in info["error"]


def test_server_models_endpoint_lists_model_metadata(make_client, auth, tiny_model, tmp_path):
    from backend.server.model_index import ModelIndex

    user = tmp_path / "user_models"
    user.mkdir()
    (user / "lc.pth").write_bytes(tiny_model.read_bytes())
    (user / "junk.pth").write_bytes(b"\x00" * 100)
    (user / "readme.txt").write_text("ignored")
    client = make_client(models=ModelIndex(tmp_path / "none", user))
    listed = client.get("/models", headers=auth).json()
    assert [m["name"] for m in listed] == ["junk", "lc"]
    junk, lc = listed
    assert junk["task"] is None and "junk.pth" in junk["error"]
    assert lc["task"] == "segmentation" and lc["error"] is None and lc["source"] == "user"
    assert lc["bands"] == {"hr": [1, 2, 3]} and len(lc["classes"]) == 7 and lc["tile_size"] == 64


def test_server_landcover_cancel_mid_run_leaves_nothing(client, auth, helpers, out_root, tmp_path, tiny_model):
    big = tmp_path / "inputs" / "big.tif"
    big.parent.mkdir(exist_ok=True)
    with rasterio.open(big, "w", driver="GTiff", width=2048, height=2048, count=3, dtype="uint8",
                       crs="EPSG:32615", transform=from_origin(360000, 4105000, 0.5, 0.5),
                       tiled=True, blockxsize=256, blockysize=256) as ds:
        ds.write(np.random.default_rng(2).integers(0, 255, (3, 2048, 2048), dtype=np.uint8))
    out = out_root / "cancelled"
    out.mkdir()
    job = client.post("/jobs", headers=auth, json=_job(big, tiny_model, out, batch_size=1)).json()["id"]
    # Cancel once tiles are being predicted (progress beyond model loading).
    assert helpers.wait_for(lambda: client.get(f"/jobs/{job}", headers=auth).json()["progress"] > 0.01, 240)
    assert client.post(f"/jobs/{job}/cancel", headers=auth).status_code == 200
    info = helpers.wait_job(client, job, timeout=240)
    assert info["state"] == "cancelled", info
    assert os.listdir(out) == []


def test_server_two_real_jobs_at_once_are_queued_and_both_intact(client, auth, helpers, out_root, scene, tiny_model):
    """Two land-cover jobs sent together into one folder: run one after the other, neither corrupts the other."""
    out = out_root / "pair"
    ids = [client.post("/jobs", headers=auth, json=_job(scene, tiny_model, out, name=name, runtime="torch")).json()["id"]
           for name in ("first", "second")]
    infos = [helpers.wait_job(client, job_id, timeout=300) for job_id in ids]
    assert [i["state"] for i in infos] == ["done", "done"], [i["error"] for i in infos]
    rasters = [next(o["path"] for o in i["result"]["outputs"] if o["role"] == "classes") for i in infos]
    assert [os.path.basename(p) for p in rasters] == ["first.tif", "second.tif"]
    with rasterio.open(rasters[0]) as a, rasterio.open(rasters[1]) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))  # same input, same model: the same map
    # the same name again replaces the earlier files as a whole (written aside, then renamed over them)
    again = client.post("/jobs", headers=auth, json=_job(scene, tiny_model, out, name="first", runtime="torch"))
    assert helpers.wait_job(client, again.json()["id"], timeout=300)["state"] == "done"
    with rasterio.open(rasters[0]) as a, rasterio.open(rasters[1]) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    assert not [n for n in os.listdir(out) if n.startswith(".") or n.endswith(".tmp")]
