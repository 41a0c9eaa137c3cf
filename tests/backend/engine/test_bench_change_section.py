"""`make bench` section 1f (a default change job before and after OpenVINO's preparation), run small."""
import os

import pytest

from backend.inference import runtime
from backend.inference.openvino_predictor import openvino_available
from benchmarks.change_job import bench_change_job


@pytest.mark.skipif(not openvino_available(), reason="openvino is in requirements/backend.txt")
def test_change_section_runs_pytorch_on_a_new_install_and_openvino_once_prepared(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "mine"))
    monkeypatch.setattr(runtime, "_LAST_OPENVINO", {})
    results = {}
    # 1024² pair: 25 tiles of 256, both orders, 3.3 MP: OpenVINO once its IR is cached
    text = bench_change_job(tmp_path, 1024, results, jobs=2, sizes_ahead=1)
    jobs = results["change_job_1024"]["jobs"]
    assert [("OpenVINO" in job["runtime"]) for job in jobs] == [False, False, True, True], jobs
    assert all(job["wall"] > 0 for job in jobs) and results["change_job_1024"]["preparation_s"] > 0
    assert "after the start's background preparation, job 1: " in text and "tiles 256:" in text
    assert "vs the best PyTorch job" in text
    # the section's cache was its own: the user's setting is back as it was, and untouched
    assert os.environ["SKYSENSE_CACHE"] == str(tmp_path / "mine") and not (tmp_path / "mine").exists()
