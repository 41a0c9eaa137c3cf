"""Malformed raster files through the jobs API: each job fails with a clear message
naming the file, no job crashes the worker, and the server keeps serving."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin


def _good_tiff(path, size=512):
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32615", transform=from_origin(500000, 4100000, 0.5, 0.5),
                       tiled=True, blockxsize=128, blockysize=128, compress="deflate") as ds:
        ds.write(np.random.default_rng(0).integers(0, 255, (3, size, size), dtype=np.uint8))
    return path


def _huge_declared_tiff(path, side=2_000_000_000):
    """A TIFF header claiming 2e9 x 2e9 pixels, with no pixel data at all."""
    entries = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 4096), (277, 3, 1), (278, 4, side), (279, 4, 4_000_000_000)]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        ifd += struct.pack("<HHIHH", tag, typ, 1, value, 0) if typ == 3 else struct.pack("<HHII", tag, typ, 1, value)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 64)
    return path


def _make(kind, folder):
    path = folder / f"{kind}.tif"
    if kind == "truncated":
        good = _good_tiff(folder / "whole.tif")
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(7).bytes(20_000))
    elif kind == "zero_size":
        path.write_bytes(b"")
    elif kind == "wrong_extension":  # a GeoJSON document named .tif
        path.write_text('{"type": "FeatureCollection", "features": []}')
    elif kind == "huge_declared":
        _huge_declared_tiff(path)
    elif kind == "bad_ifd_offset":
        path.write_bytes(b"II*\x00" + struct.pack("<I", 10**8))
    elif kind == "png_header_only":
        path = folder / "png_header_only.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    return path


MALFORMED = ["truncated", "random_bytes", "zero_size", "wrong_extension", "huge_declared",
             "bad_ifd_offset", "png_header_only"]


@pytest.fixture
def bad_dir(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("kind", MALFORMED)
def test_server_malformed_raster_fails_job_clearly(client, auth, helpers, out_root, bad_dir, kind):
    path = _make(kind, bad_dir)
    body = {"kind": "rasterprobe", "params": {"path": str(path), "output_dir": str(out_root)}}
    response = client.post("/jobs", headers=auth, json=body)
    assert response.status_code == 200, response.text
    info = helpers.wait_job(client, response.json()["id"])
    assert info["state"] == "failed"
    assert path.name in info["error"], info["error"]
    assert "unexpectedly" not in info["error"], f"reader raised a raw exception: {info['error']}"
    assert client.get("/health", headers=auth).status_code == 200


def test_server_raster_probe_reads_a_good_file(client, auth, helpers, out_root, bad_dir):
    """Control: the same probe succeeds on a sound GeoTIFF, so failures above mean the file."""
    path = _good_tiff(bad_dir / "good.tif")
    body = {"kind": "rasterprobe", "params": {"path": str(path), "output_dir": str(out_root)}}
    info = helpers.wait_job(client, client.post("/jobs", headers=auth, json=body).json()["id"])
    assert info["state"] == "done", info["error"]
    assert info["result"]["windows"] == 4 and info["result"]["bands"] == 3


def test_server_many_malformed_jobs_in_a_row_keep_the_queue_alive(client, auth, helpers, out_root, bad_dir):
    ids = []
    for kind in MALFORMED:
        path = _make(kind, bad_dir)
        body = {"kind": "rasterprobe", "params": {"path": str(path), "output_dir": str(out_root)}}
        ids.append(client.post("/jobs", headers=auth, json=body).json()["id"])
    states = [helpers.wait_job(client, i)["state"] for i in ids]
    assert states == ["failed"] * len(MALFORMED)
    good = _good_tiff(bad_dir / "after.tif")
    body = {"kind": "rasterprobe", "params": {"path": str(good), "output_dir": str(out_root)}}
    assert helpers.wait_job(client, client.post("/jobs", headers=auth, json=body).json()["id"])["state"] == "done"
