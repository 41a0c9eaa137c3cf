"""FastAPI application: health, models, jobs and shutdown, behind the SecurityGuard."""

import logging
import os
import threading
from pathlib import Path
from typing import Callable, List, Literal, Optional, Sequence, Union

from fastapi import Body, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, ValidationError, create_model
from typing_extensions import Annotated

import backend
from backend.errors import SkySenseError
from backend.pipelines import params_model, pipeline_kinds
from backend.server.jobs import JobManager, JobStillActive, UnknownJob
from backend.server.model_index import ModelIndex
from backend.server.paths import validate_job_paths
from backend.server.schemas import Health, JobCreated, JobInfo, JobStateAnswer, ModelEntry
from backend.server.security import MAX_BODY_BYTES, SecurityGuard

log = logging.getLogger("skysense.server")

_health_cache: dict = {}
_health_lock = threading.Lock()


def device_info() -> dict:
    """torch version and the compute device (imported once, on first use)."""
    with _health_lock:
        if not _health_cache:
            import torch
            cuda = bool(torch.cuda.is_available())
            _health_cache.update({
                "device": "cuda" if cuda else "cpu",
                "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
                "torch": torch.__version__,
                "cuda": torch.version.cuda if cuda else None,
            })
        return dict(_health_cache)


def _job_request_model(kinds: Sequence[str]):
    """A discriminated union {"kind": <literal>, "params": <that kind's params>} so the
    OpenAPI document spells out every kind's params."""
    variants = []
    for kind in kinds:
        variants.append(create_model(
            f"{kind.capitalize()}Job",
            __config__=ConfigDict(extra="forbid"),
            kind=(Literal[kind], ...),
            params=(params_model(kind), ...),
        ))
    if len(variants) == 1:
        return Annotated[variants[0], Body()]
    return Annotated[Union[tuple(variants)], Body(discriminator="kind")]


def create_app(token: str, jobs: Optional[JobManager] = None,
               output_roots: Optional[Sequence[Path]] = None,
               models: Optional[ModelIndex] = None,
               on_shutdown: Optional[Callable[[], None]] = None,
               max_body: int = MAX_BODY_BYTES,
               allowed_hosts: Optional[Sequence[str]] = None):
    """Build the ASGI app. Job kinds are those registered when this is called."""
    jobs = jobs or JobManager()
    models = models or ModelIndex()
    roots = [Path(r) for r in output_roots] if output_roots else None
    JobRequest = _job_request_model(pipeline_kinds())

    # No /docs or /redoc pages: they load scripts from a CDN and a browser could not send the token.
    app = FastAPI(title="SkySense local backend", version=backend.__version__, docs_url=None, redoc_url=None,
                  description="Token-protected local API driven by the SkySense QGIS plugin. "
                              "Every request needs `Authorization: Bearer <token>`.")
    app.state.jobs = jobs

    @app.exception_handler(SkySenseError)
    async def _skysense_error(request, exc: SkySenseError):
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.get("/health", response_model=Health)
    def health():
        counts = jobs.counts()
        from backend.inference.openvino_warmup import background_warmer
        return {"status": "ok", "version": backend.__version__, **device_info(), "pid": os.getpid(),
                "jobs_queued": counts["queued"], "jobs_running": counts["running"],
                "preparing": background_warmer().describe()}

    @app.get("/models", response_model=List[ModelEntry])
    def list_models():
        out = []
        for entry in models.list():
            try:
                out.append(ModelEntry(**entry))
            except ValidationError as exc:
                out.append(ModelEntry(path=entry["path"], name=entry["name"], task=None,
                                      source=entry["source"], error=f"unexpected metadata: {exc.errors()[0]['msg']}"))
        return out

    @app.post("/jobs", response_model=JobCreated, responses={400: {"description": "a path was refused"}})
    def submit_job(request: JobRequest):
        params = request.params.model_dump(mode="json")
        plan = validate_job_paths(params, roots)  # PathRefused -> 400 via the handler
        job = jobs.submit(request.kind, params, plan)
        return {"id": job.id, "state": job.state}

    @app.get("/jobs", response_model=List[JobInfo])
    def list_jobs():
        return jobs.list()

    def _job_or_404(fn, job_id):
        try:
            return fn(job_id)
        except UnknownJob:
            raise HTTPException(status_code=404, detail=f"no job with id {job_id!r}") from None

    @app.get("/jobs/{job_id}", response_model=JobInfo, responses={404: {"description": "no such job"}})
    def get_job(job_id: str):
        return _job_or_404(jobs.get, job_id)

    @app.post("/jobs/{job_id}/cancel", response_model=JobStateAnswer, responses={404: {"description": "no such job"}})
    def cancel_job(job_id: str):
        info = _job_or_404(jobs.cancel, job_id)
        return {"id": info["id"], "state": info["state"]}

    @app.delete("/jobs/{job_id}", status_code=204, responses={404: {"description": "no such job"},
                                                              409: {"description": "job still queued or running"}})
    def forget_job(job_id: str):
        try:
            _job_or_404(jobs.forget, job_id)
        except JobStillActive:
            raise HTTPException(status_code=409, detail="the job is still queued or running; cancel it first") from None

    @app.post("/shutdown", responses={200: {"description": "the server stops after answering"}})
    def shutdown():
        log.info("shutdown requested")
        if on_shutdown is not None:
            threading.Timer(0.05, on_shutdown).start()  # answer first, then stop
        return {"status": "shutting down"}

    return SecurityGuard(app, token=token, max_body=max_body, allowed_hosts=allowed_hosts)
