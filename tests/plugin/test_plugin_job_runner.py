"""The job loop shared by the dock and Processing: progress, cancel, failures, dead backend."""
import pytest

from skysense_qgis.backend_client import BackendError, BackendUnavailable
from skysense_qgis.job_runner import BackendDied, JobCancelled, JobFailed, run_job


class ScriptedClient:
    """Answers GET /jobs/{id} from a list; an Exception in the list is raised instead."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.cancelled = []
        self.submitted = []

    def submit(self, kind, params):
        self.submitted.append((kind, params))
        return {"id": "job1", "state": "queued"}

    def job(self, job_id):
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def cancel(self, job_id):
        self.cancelled.append(job_id)
        return {"id": job_id, "state": "running"}


def _status(state, progress=0.0, message="", result=None, error=None):
    return {"id": "job1", "state": state, "progress": progress, "message": message, "result": result,
            "error": error}


def test_progress_is_reported_and_the_result_returned():
    seen = []
    client = ScriptedClient([_status("queued"), _status("running", 0.5, "tile 2/4"),
                             _status("done", 1.0, "done", result={"outputs": []})])
    result = run_job(client, "landcover", {"a": 1}, on_progress=lambda f, m: seen.append((f, m)), poll_interval=0)
    assert result == {"outputs": []}
    assert seen == [(0.0, ""), (0.5, "tile 2/4"), (1.0, "done")]
    assert client.submitted == [("landcover", {"a": 1})]


def test_backend_error_message_is_kept_word_for_word():
    client = ScriptedClient([_status("failed", error="hr[0]: the raster has no CRS")])
    with pytest.raises(JobFailed, match=r"^hr\[0\]: the raster has no CRS$"):
        run_job(client, "landcover", {}, poll_interval=0)


def test_cancel_is_sent_once_and_waits_for_the_backend():
    client = ScriptedClient([_status("running"), _status("running"), _status("cancelled")])
    with pytest.raises(JobCancelled):
        run_job(client, "change", {}, is_cancelled=lambda: True, poll_interval=0)
    assert client.cancelled == ["job1"]


def test_stuck_cancel_gives_up_after_the_grace_period():
    client = ScriptedClient([_status("running")])
    with pytest.raises(JobCancelled, match="had not confirmed"):
        run_job(client, "change", {}, is_cancelled=lambda: True, poll_interval=0.01, cancel_grace_s=0.05)


def test_dead_process_is_reported_as_backend_died():
    client = ScriptedClient([_status("running"), BackendUnavailable("refused")])
    with pytest.raises(BackendDied, match="stopped while the job was running"):
        run_job(client, "landcover", {}, backend_exited=lambda: len(client.answers) == 1, poll_interval=0)


def test_garbled_answer_from_a_dying_process_is_a_crash_not_a_job_error():
    client = ScriptedClient([BackendError("The backend sent an unreadable answer")])
    with pytest.raises(BackendDied):
        run_job(client, "landcover", {}, backend_exited=lambda: True, poll_interval=0)
    live = ScriptedClient([BackendError("The backend sent an unreadable answer")])
    with pytest.raises(BackendError, match="unreadable") as info:
        run_job(live, "landcover", {}, backend_exited=lambda: False, poll_interval=0)
    assert not isinstance(info.value, BackendDied)


def test_one_refused_poll_is_retried_but_three_mean_the_backend_is_gone():
    flaky = ScriptedClient([BackendUnavailable("x"), _status("done", 1.0, result={"ok": 1})])
    assert run_job(flaky, "landcover", {}, backend_exited=lambda: False, poll_interval=0) == {"ok": 1}
    gone = ScriptedClient([BackendUnavailable("refused")])
    with pytest.raises(BackendDied, match="refused"):
        run_job(gone, "landcover", {}, poll_interval=0)
