"""Submit a backend job and follow it to the end: the one loop the dock and Processing share."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional

from .backend_client import BackendClient, BackendError, BackendUnavailable

FINAL_STATES = ("done", "failed", "cancelled")


class JobFailed(BackendError):
    """The backend ran the job and reported an error (message from the backend)."""


class JobCancelled(BackendError):
    """The user cancelled the job."""


class BackendDied(BackendUnavailable):
    """The backend process went away while a job was running."""


def run_job(client: BackendClient, kind: str, params: Dict[str, Any],
            on_progress: Callable[[float, str], None] = lambda f, m: None,
            is_cancelled: Callable[[], bool] = lambda: False,
            on_submitted: Callable[[str], None] = lambda job_id: None,
            backend_exited: Optional[Callable[[], bool]] = None,
            poll_interval: float = 0.3, cancel_grace_s: float = 60.0) -> Dict[str, Any]:
    """Blocks until the job ends; returns its result dict or raises JobFailed / JobCancelled / BackendDied."""
    try:
        job_id = str(client.submit(kind, params)["id"])
    except BackendUnavailable as exc:
        raise _died_or(exc, backend_exited) from exc
    on_submitted(job_id)
    cancel_sent = False
    cancel_deadline = 0.0
    misses = 0
    while True:
        if is_cancelled() and not cancel_sent:
            try:
                client.cancel(job_id)
            except BackendUnavailable as exc:
                raise _died_or(exc, backend_exited) from exc
            cancel_sent = True
            cancel_deadline = time.monotonic() + cancel_grace_s
        if cancel_sent and time.monotonic() > cancel_deadline:
            # The backend checks for cancel between tiles; do not wait forever on a stuck job.
            raise JobCancelled(f"The {kind} job was cancelled (the backend had not confirmed yet).")
        try:
            status = client.job(job_id)
            misses = 0
        except BackendError as exc:
            if not isinstance(exc, BackendUnavailable):
                # A garbled answer from a process that just died is a crash, not a job error.
                if backend_exited is not None and backend_exited():
                    raise _died_or(BackendUnavailable(str(exc)), backend_exited) from exc
                raise
            misses += 1
            # One slow answer under load is not a crash; a dead process or repeated refusals are.
            if (backend_exited is not None and backend_exited()) or misses >= 3:
                raise _died_or(exc, backend_exited) from exc
            time.sleep(poll_interval)
            continue
        state = status.get("state")
        on_progress(float(status.get("progress") or 0.0), str(status.get("message") or ""))
        if state == "done":
            return status.get("result") or {}
        if state == "failed":
            raise JobFailed(status.get("error") or f"The {kind} job failed without a message.")
        if state == "cancelled":
            raise JobCancelled(f"The {kind} job was cancelled.")
        time.sleep(poll_interval)


def _died_or(exc: BackendUnavailable, backend_exited: Optional[Callable[[], bool]]) -> BackendUnavailable:
    if backend_exited is not None and backend_exited():
        return BackendDied("The SkySense backend stopped while the job was running. "
                           "Restart it and run the job again.")
    return BackendDied(str(exc))
