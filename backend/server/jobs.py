"""Job queue: FIFO with ONE worker thread, so two jobs never share the GPU or
write at the same time. Jobs live in memory for the life of the server. When the
queue runs empty the worker does the idle work (by default: preparing the OpenVINO
model the last CPU job would have run had it been ready), so later jobs run faster."""
from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional

from backend.errors import CancelledError, SkySenseError
from backend.progress import Progress
from backend.server.paths import OutputPlan
from backend.server.runner import run_job

log = logging.getLogger("skysense.jobs")

FINISHED = ("done", "failed", "cancelled")


_IDLE_WORK = object()  # what _next hands the worker when it is asked to do its idle work


class UnknownJob(KeyError):
    """No job with this id."""


class JobStillActive(RuntimeError):
    """The job is queued or running, so it cannot be forgotten."""


@dataclass
class Job:
    id: str
    kind: str
    params: dict
    plan: Optional[OutputPlan]
    state: str = "queued"
    progress: float = 0.0
    message: str = "queued"
    result: Optional[dict] = None
    error: Optional[str] = None
    created: float = field(default_factory=time.time)
    started: Optional[float] = None
    finished: Optional[float] = None
    cancel_event: threading.Event = field(default_factory=threading.Event)


class JobManager:
    """Submit, inspect, cancel and forget jobs; one daemon worker runs them in order."""

    def __init__(self, max_finished: int = 500, idle_work: Optional[Callable[[], Optional[str]]] = None):
        """idle_work: called by the worker after a job when no other is queued; returns what it did (or
        None). Jobs submitted meanwhile wait for it. Default: runtime.prepare_openvino_while_idle."""
        if idle_work is None:
            from backend.inference.runtime import prepare_openvino_while_idle as idle_work
        self._idle_work = idle_work
        self._idle_since: Optional[float] = None  # when the idle work began, while it runs
        self._idle_requested = False  # prepare_while_idle: idle work wanted before any job ends
        self._jobs: Dict[str, Job] = {}
        self._queue: Deque[str] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._running: Optional[str] = None
        self._max_finished = max_finished
        self._worker = threading.Thread(target=self._work, name="skysense-job-worker", daemon=True)
        self._worker.start()

    # -- public API ---------------------------------------------------------------
    def submit(self, kind: str, params: dict, plan: Optional[OutputPlan] = None) -> Job:
        job = Job(id=uuid.uuid4().hex, kind=kind, params=params, plan=plan)
        with self._cond:
            if self._closing:
                raise RuntimeError("the server is shutting down")
            self._jobs[job.id] = job
            self._queue.append(job.id)
            self._prune()
            self._cond.notify_all()
        log.info("job %s (%s) queued", job.id, kind)
        return job

    def get(self, job_id: str) -> dict:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownJob(job_id)
            return self._describe(job)

    def list(self) -> List[dict]:
        with self._cond:
            return [self._describe(j) for j in self._jobs.values()]

    def cancel(self, job_id: str) -> dict:
        """Queued: cancelled now. Running: stops at its next progress check."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownJob(job_id)
            job.cancel_event.set()
            if job.state == "queued":
                self._queue.remove(job.id)
                self._finish(job, "cancelled", "cancelled before it started")
            elif job.state == "running":
                job.message = "cancelling..."
            return self._describe(job)

    def forget(self, job_id: str) -> None:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownJob(job_id)
            if job.state not in FINISHED:
                raise JobStillActive(job_id)
            del self._jobs[job_id]

    def prepare_while_idle(self) -> None:
        """Have the worker do its idle work now if no job is queued (else after the queued jobs): what the
        server's start asks once it knows what to prepare (runtime.want_last_sessions_job)."""
        with self._cond:
            self._idle_requested = True
            self._cond.notify_all()

    def preparing(self) -> bool:
        """True while idle work is asked for or running (a job submitted now waits for it)."""
        with self._cond:
            return self._idle_requested or self._idle_since is not None

    def counts(self) -> Dict[str, int]:
        with self._cond:
            return {"queued": len(self._queue), "running": int(self._running is not None)}

    def wait(self, job_id: str, timeout: Optional[float] = None) -> dict:
        """Block until the job has finished (tests, CLI); returns its description."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                job = self._jobs.get(job_id)
                if job is None:
                    raise UnknownJob(job_id)
                if job.state in FINISHED:
                    return self._describe(job)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return self._describe(job)
                self._cond.wait(left)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the worker (server shutdown)."""
        with self._cond:
            self._closing = True
            for job_id in list(self._queue):
                job = self._jobs[job_id]
                job.cancel_event.set()
                self._finish(job, "cancelled", "cancelled: the server shut down")
            self._queue.clear()
            if self._running:
                self._jobs[self._running].cancel_event.set()
            self._cond.notify_all()
        self._worker.join(timeout)

    # -- internals ----------------------------------------------------------------
    def _describe(self, job: Job) -> dict:
        position, message = None, job.message
        if job.state == "queued":
            position = self._queue.index(job.id) + (1 if self._running else 0)
            if self._idle_since is not None:
                message = (f"queued: the backend is preparing OpenVINO so that this job runs faster "
                           f"({time.time() - self._idle_since:.0f} s so far)")
        return {"id": job.id, "kind": job.kind, "state": job.state, "progress": job.progress,
                "message": message, "result": job.result, "error": job.error,
                "created": job.created, "started": job.started, "finished": job.finished,
                "queue_position": position}

    def _finish(self, job: Job, state: str, message: str, error: Optional[str] = None,
                result: Optional[dict] = None) -> None:
        job.state, job.message, job.error, job.result = state, message, error, result
        job.finished = time.time()
        if state == "done":
            job.progress = 1.0
        self._cond.notify_all()

    def _prune(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in FINISHED]
        for job in finished[: max(0, len(finished) - self._max_finished)]:
            del self._jobs[job.id]

    def _next(self) -> object:
        """The next job, None when closing, or _IDLE_WORK when idle work was asked for and none is queued."""
        with self._cond:
            while not self._queue and not self._closing and not self._idle_requested:
                self._cond.wait()
            if self._closing:
                return None
            if not self._queue:
                self._idle_since = time.time()
                return _IDLE_WORK
            job = self._jobs[self._queue.popleft()]
            job.state, job.started, job.message = "running", time.time(), "starting"
            self._running = job.id
            self._cond.notify_all()
            return job

    def _report(self, job: Job, fraction: float, message: str) -> None:
        with self._cond:
            if job.state == "running":
                job.progress = fraction
                if message and not job.cancel_event.is_set():
                    job.message = message
                self._cond.notify_all()

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            if job is _IDLE_WORK:
                self._do_idle_work()
                continue
            progress = Progress(lambda f, m, job=job: self._report(job, f, m), job.cancel_event)
            log.info("job %s (%s) started", job.id, job.kind)
            try:
                result = run_job(job.kind, job.params, job.plan, progress)
            except CancelledError as exc:
                outcome = ("cancelled", str(exc) or "cancelled", None, None)
            except SkySenseError as exc:
                outcome = ("failed", "failed", str(exc), None)
            except BaseException as exc:  # never let the worker die
                log.exception("job %s crashed the runner", job.id)
                outcome = ("failed", "failed", f"internal error: {type(exc).__name__}", None)
            else:
                if job.cancel_event.is_set():
                    # Finished in the same instant it was cancelled: the result stands.
                    log.info("job %s finished before the cancel took effect", job.id)
                outcome = ("done", "done", None, result)
            with self._cond:
                self._running = None
                self._finish(job, *outcome)
                idle = not self._queue and not self._closing
                if idle:
                    self._idle_since = time.time()
            log.info("job %s %s%s", job.id, outcome[0], f": {outcome[2]}" if outcome[2] else "")
            if idle:
                self._do_idle_work()

    def _do_idle_work(self) -> None:
        with self._cond:
            self._idle_requested = False  # done now, whoever asked
        try:
            done = self._idle_work()
        except BaseException:  # never let the worker die
            log.exception("idle work failed")
            done = None
        with self._cond:
            if done:
                log.info("prepared while idle in %.1f s: %s", time.time() - self._idle_since, done)
            self._idle_since = None
            self._cond.notify_all()
