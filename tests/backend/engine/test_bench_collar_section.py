"""`make bench` section 1g (a raster with no data around its footprint), run small."""
import os

from backend.inference import openvino_warmup
from backend.inference.openvino_predictor import openvino_available
from benchmarks.collar_job import bench_collar_job


def test_collar_section_computes_fewer_tiles_than_the_loop_with_identical_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "mine"))
    prepared = []
    # the section prepares OpenVINO as the server's start would (not here: the IR is not made), so PyTorch
    monkeypatch.setattr(openvino_warmup, "prepare_tiles", lambda path, tiles, **kw: prepared.append(list(tiles)))
    results = {}
    text = bench_collar_job(tmp_path, 1024, results, repeat=1, degrees=45, tile=256)
    figures = results["collar_1024"]
    assert figures["identical"] is True
    # a diamond leaves the four corner tiles (and more) without one valid pixel
    assert figures["tiles"] == 25 and 4 <= figures["tiles"] - figures["tiles_computed"] < 25
    assert abs(figures["valid_fraction"] - 0.5) < 0.01
    assert figures["speedup"] > 0 and figures["speedup_every_tile"] > 0
    assert "tiles with data only" in text and f"{figures['tiles_computed']} of 25" in text
    assert "labels with and without skipping identical" in text
    assert prepared == ([[256]] if openvino_available() else [])
    assert os.environ["SKYSENSE_CACHE"] == str(tmp_path / "mine") and not (tmp_path / "mine").exists()
