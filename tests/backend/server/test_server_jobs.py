"""Job queue behaviour through the HTTP API: FIFO with one worker, cancel, failures."""
from __future__ import annotations

import os
import time

import pytest


def _gated(out_dir, gate, name="gated"):
    return {"kind": "gated", "params": {"output_dir": str(out_dir), "gate": gate, "name": name}}


def _submit(client, auth, body):
    response = client.post("/jobs", headers=auth, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "queued"
    return response.json()["id"]


def test_server_second_job_waits_for_the_first(client, auth, helpers, out_root):
    first_gate, second_gate = helpers.gate("first"), helpers.gate("second")
    first = _submit(client, auth, _gated(out_root / "a", "first"))
    second = _submit(client, auth, _gated(out_root / "b", "second"))
    assert helpers.started["first"].wait(30)
    assert helpers.wait_for(lambda: client.get(f"/jobs/{first}", headers=auth).json()["progress"] > 0)
    info = client.get(f"/jobs/{second}", headers=auth).json()
    assert info["state"] == "queued" and info["queue_position"] == 1
    assert client.get(f"/jobs/{first}", headers=auth).json()["state"] == "running"
    health = client.get("/health", headers=auth).json()
    assert (health["jobs_queued"], health["jobs_running"]) == (1, 1)
    second_gate.set()  # opening the second gate must not start it early
    assert not helpers.started["second"].wait(0.3)
    first_gate.set()
    done_first = helpers.wait_job(client, first)
    done_second = helpers.wait_job(client, second)
    assert done_first["state"] == done_second["state"] == "done"
    assert helpers.run_log == [("start", "first"), ("end", "first"), ("start", "second"), ("end", "second")]
    assert done_first["finished"] <= done_second["started"]
    assert done_first["progress"] == 1.0
    assert done_first["result"]["outputs"][0]["path"] == str(out_root / "a" / "gated.tif")
    assert sorted(os.listdir(out_root / "a")) == ["gated.gpkg", "gated.tif"]
    listed = client.get("/jobs", headers=auth).json()
    assert [j["id"] for j in listed] == [first, second]


def test_server_cancel_running_job_leaves_no_partial_output(client, auth, helpers, out_root):
    helpers.gate("long")
    out = out_root / "run"
    out.mkdir()
    (out / "keep_me.txt").write_text("was here before")
    (out / "gated_old_result.tif").write_text("older output with the same prefix")
    job = _submit(client, auth, _gated(out, "long"))
    assert helpers.started["long"].wait(30)
    assert (out / "gated.tif.tmp").exists() and (out / "gated.gpkg").exists()
    answer = client.post(f"/jobs/{job}/cancel", headers=auth)
    assert answer.status_code == 200 and answer.json()["id"] == job
    info = helpers.wait_job(client, job)
    assert info["state"] == "cancelled"
    assert info["result"] is None
    # The job's files are gone; files that were there before are untouched.
    assert sorted(os.listdir(out)) == ["gated_old_result.tif", "keep_me.txt"]


def test_server_cancel_queued_job_is_immediate(client, auth, helpers, out_root):
    blocker = helpers.gate("blocker")
    helpers.gate("never")
    first = _submit(client, auth, _gated(out_root / "a", "blocker"))
    queued = _submit(client, auth, _gated(out_root / "b", "never"))
    answer = client.post(f"/jobs/{queued}/cancel", headers=auth).json()
    assert answer == {"id": queued, "state": "cancelled"}
    blocker.set()
    assert helpers.wait_job(client, first)["state"] == "done"
    assert not helpers.started["never"].is_set()
    assert not (out_root / "b").exists()


def test_server_cancel_finished_job_keeps_its_state(client, auth, helpers, out_root):
    helpers.gate("quick").set()
    job = _submit(client, auth, _gated(out_root, "quick"))
    assert helpers.wait_job(client, job)["state"] == "done"
    assert client.post(f"/jobs/{job}/cancel", headers=auth).json()["state"] == "done"
    assert (out_root / "gated.tif").exists()


@pytest.mark.parametrize("how, expected", [
    ("input", "band 4 does not exist in scene.tif (it has 3 bands)"),
    ("memory", "ran out of memory"),
    ("crash", "failed unexpectedly (ZeroDivisionError: division by zero)"),
])
def test_server_failed_jobs_explain_and_clean_up(client, auth, helpers, out_root, how, expected, caplog):
    job = _submit(client, auth, {"kind": "failing", "params": {"output_dir": str(out_root), "how": how}})
    info = helpers.wait_job(client, job)
    assert info["state"] == "failed"
    assert expected in info["error"]
    assert os.listdir(out_root) == []
    if how == "crash":  # the traceback goes to the server log
        assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    assert client.get("/health", headers=auth).status_code == 200


def test_server_failed_job_removes_the_folder_it_created(client, auth, helpers, out_root):
    job = _submit(client, auth, {"kind": "failing", "params": {"output_dir": str(out_root / "new" / "deep"),
                                                               "how": "input"}})
    assert helpers.wait_job(client, job)["state"] == "failed"
    assert not (out_root / "new" / "deep").exists()


def test_server_missing_pipeline_module_fails_job_not_server(client, auth, helpers, out_root):
    job = _submit(client, auth, {"kind": "brokenimport",
                                 "params": {"output_dir": str(out_root), "gate": "x"}})
    info = helpers.wait_job(client, job)
    assert info["state"] == "failed"
    assert "brokenimport pipeline is not installed" in info["error"]
    helpers.gate("after").set()
    assert helpers.wait_job(client, _submit(client, auth, _gated(out_root, "after")))["state"] == "done"


def test_server_forget_finished_job(client, auth, helpers, out_root):
    gate = helpers.gate("forget")
    job = _submit(client, auth, _gated(out_root, "forget"))
    assert client.delete(f"/jobs/{job}", headers=auth).status_code == 409
    gate.set()
    helpers.wait_job(client, job)
    assert client.delete(f"/jobs/{job}", headers=auth).status_code == 204
    assert client.get(f"/jobs/{job}", headers=auth).status_code == 404


def test_server_job_manager_close_cancels_everything(test_kinds, helpers, out_root):
    from backend.server.jobs import JobManager
    from backend.server.paths import validate_job_paths

    manager = JobManager()
    helpers.gate("r")
    helpers.gate("q")
    params_r = {"output_dir": str(out_root / "r"), "gate": "r", "name": "gated", "source": None}
    params_q = {"output_dir": str(out_root / "q"), "gate": "q", "name": "gated", "source": None}
    running = manager.submit("gated", params_r, validate_job_paths(params_r))
    queued = manager.submit("gated", params_q, validate_job_paths(params_q))
    assert helpers.started["r"].wait(30)
    manager.close(timeout=30)
    assert manager.get(running.id)["state"] == "cancelled"
    assert manager.get(queued.id)["state"] == "cancelled"
    assert not (out_root / "r").exists()  # made for the job, removed with its partial files


def _manager_with_held_idle_work(helpers, out_root):
    """(JobManager, calls, release, submit): its idle work records the jobs run so far (calls) and holds the
    worker until `release` is set; submit(gate) queues a gated job."""
    import threading

    from backend.server.jobs import JobManager
    from backend.server.paths import validate_job_paths

    calls, release = [], threading.Event()

    def idle_work():
        calls.append(list(helpers.run_log))
        assert release.wait(30)
        return "a stand-in for OpenVINO"

    manager = JobManager(idle_work=idle_work)

    def submit(gate):
        params = {"output_dir": str(out_root / gate), "gate": gate, "name": "gated", "source": None}
        return manager.submit("gated", params, validate_job_paths(params))

    return manager, calls, release, submit


def test_idle_work_runs_once_the_queue_is_empty_and_jobs_queued_meanwhile_wait_saying_why(test_kinds, helpers,
                                                                                         out_root):
    manager, calls, release, submit = _manager_with_held_idle_work(helpers, out_root)
    try:
        for gate in ("a", "b", "c"):
            helpers.gate(gate)
        a, b = submit("a"), submit("b")  # queued together: no idle work between them
        assert helpers.started["a"].wait(30)
        helpers.gates["a"].set()
        helpers.gates["b"].set()
        assert manager.wait(b.id, 30)["state"] == "done"
        assert helpers.wait_for(lambda: len(calls) == 1)
        assert calls[0] == [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b")]
        helpers.gates["c"].set()
        c = submit("c")  # arrives while the worker prepares: waits, and says why
        assert not helpers.started["c"].wait(0.3)
        info = manager.get(c.id)
        assert info["state"] == "queued" and "preparing OpenVINO" in info["message"]
        release.set()
        assert manager.wait(c.id, 30)["state"] == "done"
        assert manager.get(c.id)["message"] == "done"
        assert helpers.wait_for(lambda: len(calls) == 2)  # after c, idle again
    finally:
        release.set()
        manager.close(timeout=30)


def test_idle_work_asked_for_before_any_job_runs_at_once_and_a_job_submitted_meanwhile_waits(test_kinds, helpers,
                                                                                              out_root):
    manager, calls, release, submit = _manager_with_held_idle_work(helpers, out_root)
    try:
        assert not manager.preparing() and not calls  # nothing asked, no job: the worker waits
        manager.prepare_while_idle()  # what the server's start asks when an earlier backend ran a CPU job
        assert helpers.wait_for(lambda: len(calls) == 1) and calls[0] == [] and manager.preparing()
        helpers.gate("a").set()
        job = submit("a")
        assert not helpers.started["a"].wait(0.3)
        assert "preparing OpenVINO" in manager.get(job.id)["message"]
        release.set()
        assert manager.wait(job.id, 30)["state"] == "done"
        assert helpers.wait_for(lambda: len(calls) == 2)  # after the job, idle work as always
        assert helpers.wait_for(lambda: not manager.preparing())
        time.sleep(0.2)
        assert len(calls) == 2  # asked once: done once, not again and again
    finally:
        release.set()
        manager.close(timeout=30)


def test_idle_work_that_fails_leaves_the_worker_running(test_kinds, helpers, out_root):
    from backend.server.jobs import JobManager
    from backend.server.paths import validate_job_paths

    def broken():
        raise RuntimeError("idle work blew up")

    manager = JobManager(idle_work=broken)
    try:
        for gate in ("x", "y"):
            helpers.gate(gate).set()
            params = {"output_dir": str(out_root / gate), "gate": gate, "name": "gated", "source": None}
            job = manager.submit("gated", params, validate_job_paths(params))
            assert manager.wait(job.id, 30)["state"] == "done"
    finally:
        manager.close(timeout=30)


def test_health_says_what_the_backend_prepares_in_the_background(client, auth, monkeypatch, tmp_path):
    import sys
    import time

    from backend.inference import openvino_predictor, openvino_warmup

    monkeypatch.setenv(openvino_warmup.SWITCH, "1")
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(openvino_predictor, "openvino_available", lambda: True)
    warmer = openvino_warmup.BackgroundWarmer()
    monkeypatch.setattr(warmer, "_command", lambda *a: [sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(openvino_warmup, "background_warmer", lambda: warmer)
    assert client.get("/health", headers=auth).json()["preparing"] is None
    model = tmp_path / "lc.pth"
    model.write_bytes(b"a model file")
    other = tmp_path / "change.pth"
    other.write_bytes(b"another model file")
    try:
        assert warmer.request(model, [640, 608]) and warmer.request(other, [256])
        assert client.get("/health", headers=auth).json()["preparing"] == \
            "OpenVINO for lc.pth at tiles 640, 608 (then 1 more)"
    finally:
        warmer.close()
    end = time.monotonic() + 10
    while client.get("/health", headers=auth).json()["preparing"] is not None:
        assert time.monotonic() < end
        time.sleep(0.05)
