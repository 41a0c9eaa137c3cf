"""`make bench` section 1e (a batch of default jobs through the job queue), run small."""
import os

import pytest

from backend.inference import runtime
from backend.inference.openvino_predictor import openvino_available
from benchmarks.job_batch import bench_job_batch


@pytest.mark.skipif(not openvino_available(), reason="openvino is in requirements/backend.txt")
def test_batch_section_shows_openvino_taking_over_after_two_same_sized_jobs_and_from_a_restarts_first_job(
        tmp_path, monkeypatch):
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "mine"))
    monkeypatch.setattr(runtime, "_LAST_OPENVINO", {})
    results = {}
    text = bench_job_batch(tmp_path, 384, results, jobs=4, repeat=1)
    rounds = results["job_batch_384"]["rounds"]
    assert list(rounds) == ["new install (nothing cached)", "restarted backend (IR cached)"]
    new, restarted = rounds.values()
    # two jobs make a batch: the idle worker exports, converts and compiles, and the third waits for it
    assert ["OpenVINO" in job["runtime"] for job in new] == [False, False, True, True], new
    assert new[2]["waited"] > 0 and new[3]["waited"] < new[2]["waited"]
    # restarted, with the IR cached: the start has the idle worker compile what the last job ran, so the
    # first job runs OpenVINO too
    assert ["OpenVINO" in job["runtime"] for job in restarted] == [True, True, True, True], restarted
    assert results["job_batch_384"]["compiled_at_start_s"] > 0
    assert "(the restarted backend's start compiled OpenVINO for the last job's model and tile in" in text
    assert all(job["wall"] >= job["engine"] > 0 for job in new + restarted)
    assert results["job_batch_384"]["background_s"] is None  # the tests turn the background preparation off
    assert "(no background preparation: SKYSENSE_OPENVINO_WARMUP=0" in text
    assert results["job_batch_384"]["later_jobs_speedup"] > 0
    assert "plain loop, PyTorch fp32, tile 256/32" in text
    assert "job 4: bf16, OpenVINO" in text or "job 4: fp32, OpenVINO" in text
    # the section's export/compile cache was its own: the user's cache setting is back as it was
    assert os.environ["SKYSENSE_CACHE"] == str(tmp_path / "mine") and not (tmp_path / "mine").exists()
