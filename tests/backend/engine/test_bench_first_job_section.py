"""`make bench` section 1h (a single job on a freshly started backend), run small."""
import os

import pytest

from backend.inference.openvino_predictor import openvino_available
from benchmarks.first_job import bench_first_job


@pytest.mark.skipif(not openvino_available(), reason="openvino is in requirements/backend.txt")
def test_first_job_section_shows_the_noted_model_compiled_at_the_start(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "mine"))
    results = {}
    text = bench_first_job(tmp_path, 384, results, jobs=2, repeat=1, wait=1.0)
    figures = results["first_job_384"]
    unnoted, noted = figures["starts"].values()
    # 384² is one tile of 384 (0.15 MP): too small to compile OpenVINO in the job, so without a note the
    # first job runs PyTorch; with the note the start compiled it, and every job runs OpenVINO
    assert figures["tile"] == 384
    assert ["OpenVINO" in job["runtime"] for job in unnoted] == [False, True], unnoted
    assert ["OpenVINO" in job["runtime"] for job in noted] == [True, True], noted
    assert all(job["wall"] >= job["engine"] > 0 for job in unnoted + noted)
    assert "1h. A single default land-cover job on a freshly started backend, 384x384 px" in text
    assert "the last job noted: compiled at the start, before any job; job 1:" in text
    # the section's cache and switches were its own
    assert os.environ["SKYSENSE_CACHE"] == str(tmp_path / "mine") and not (tmp_path / "mine").exists()
    assert os.environ.get("SKYSENSE_OPENVINO_WARMUP") == "0"  # as the test suite runs (conftest)
