"""`make bench` section 1d (a default CPU land-cover job against the plain loop), run small."""
import os

from benchmarks import run_all
from benchmarks.models import DEFAULT_MODEL
from models.checkpoint import read_model_meta


def test_big_raster_section_runs_the_job_as_a_default_job_would(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "mine"))
    results = {}
    text = run_all.bench_big_default(tmp_path, 512, results, repeat=1)
    own_tile = read_model_meta(DEFAULT_MODEL)["tile_size"]
    assert results["big_default"]["tile"] == own_tile == 640  # the model file's tile, as a default job
    assert results["big_default"]["speedup"] > 0
    # the model calls alone, on the same tiles and batches, are printed beside the job
    assert results["big_default"]["network_only_speedup"] > 0
    assert "its model calls alone" in text
    assert "plain loop, PyTorch fp32, tile 256/32" in text and f"tile {own_tile}/64" in text
    assert (tmp_path / "big_engine.tif").exists() and (tmp_path / "big_loop.tif").exists()
    # the section's export/compile cache was its own: the user's cache setting is back as it was
    assert os.environ["SKYSENSE_CACHE"] == str(tmp_path / "mine") and not (tmp_path / "mine").exists()
