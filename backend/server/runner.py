"""Run one job in the calling thread: the pipeline call, removal of partial outputs
on failure or cancel, and turning exceptions into plain-language messages.

Shared by the server's worker thread and the headless CLI.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Set

from backend.errors import CancelledError, OutputError, SkySenseError
from backend.pipelines import run_pipeline
from backend.server.paths import OutputPlan

log = logging.getLogger("skysense.jobs")


class JobFailed(SkySenseError):
    """An unexpected error, summarised for the user (the traceback is in the log)."""


def _entries(folder: Path) -> Set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # leave it, but say so
        log.warning("could not remove partial output %s: %s", path, exc)


def remove_partial_outputs(plan: OutputPlan, before: Set[str]) -> list:
    """Delete what this job created in its output folder (nothing that was there before)."""
    removed = []
    for name in sorted(_entries(plan.output_dir) - before):
        path = plan.output_dir / name
        if plan.owns(name):
            _remove(path)
            removed.append(str(path))
    if removed:
        log.info("removed partial outputs: %s", ", ".join(removed))
    return removed


def to_jsonable(value: Any) -> Any:
    """Pipeline results may hold numpy scalars, Paths or tuples; make them JSON."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return to_jsonable(value.tolist())
    return str(value)


def summarise(exc: BaseException, kind: str) -> str:
    """A plain-language message for an exception that is not a SkySenseError."""
    name = type(exc).__name__
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError":
        return (f"the {kind} job ran out of memory; try a smaller batch_size or tile_size, "
                "or the CPU device")
    if isinstance(exc, PermissionError):
        return f"the {kind} job was not allowed to read or write a file: {exc}"
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
        return f"the {kind} job stopped because the disk is full"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"the {kind} job failed unexpectedly ({name}{': ' + text[:300] if text else ''}); see the server log"


def _check_result_paths(result: dict, plan: Optional[OutputPlan]) -> None:
    if plan is None:
        return
    for out in result.get("outputs", []) or []:
        for key in ("path", "qml"):
            value = out.get(key) if isinstance(out, dict) else None
            real = Path(os.path.realpath(value)) if value else None
            if real is not None and plan.output_dir not in real.parents:
                raise OutputError(f"the pipeline wrote '{value}' outside the output folder {plan.output_dir}")


def run_job(kind: str, params: dict, plan: Optional[OutputPlan], progress) -> dict:
    """Run a validated job; on any failure remove its partial outputs and raise a
    SkySenseError (CancelledError when cancelled) with a message for the user."""
    made_dir = False
    if plan is not None:
        made_dir = not plan.output_dir.exists()
        try:
            plan.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output folder {plan.output_dir}: {exc.strerror or exc}") from None
        before = _entries(plan.output_dir)
    try:
        progress.check_cancelled()
        result = run_pipeline(kind, params, progress)
        if result is None:
            result = {}
        if not isinstance(result, dict):
            raise JobFailed(f"the {kind} pipeline returned {type(result).__name__}, not a result dict")
        result = to_jsonable(result)
        _check_result_paths(result, plan)
        return result
    except BaseException as exc:
        if plan is not None:
            remove_partial_outputs(plan, before)
            if made_dir and not _entries(plan.output_dir):
                try:
                    plan.output_dir.rmdir()  # we made it for this job; leave no empty folder
                except OSError:
                    pass
        if isinstance(exc, SkySenseError):
            raise
        if isinstance(exc, KeyboardInterrupt):
            raise CancelledError("the job was interrupted") from exc
        if not isinstance(exc, Exception):
            raise
        log.error("%s job failed with an unexpected error", kind, exc_info=exc)
        raise JobFailed(summarise(exc, kind)) from exc
