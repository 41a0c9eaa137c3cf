"""Pipeline registry: job kind -> ``run(params, progress) -> result dict``.

Built-in kinds are imported lazily on first use, so a missing or broken pipeline
module fails that job with a clear message instead of stopping the server.
Extra kinds (used by tests, or by plug-in code) are added with
:func:`register_pipeline`.
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Union

from backend.errors import SkySenseError

Runner = Callable[[dict, Any], dict]

# kind -> module that exposes run(params, progress) (or run_<kind>).
BUILTIN_PIPELINES: Dict[str, str] = {
    "landcover": "backend.pipelines.landcover",
    "change": "backend.pipelines.change",
    "damage": "backend.pipelines.damage",
    "finetune": "backend.pipelines.finetune",
    "export": "backend.pipelines.export",
}


class PipelineUnavailable(SkySenseError):
    """The pipeline for a job kind cannot be imported or has no run function."""


@dataclass
class _Entry:
    target: Union[str, Runner]
    params_model: Optional[type] = None


_lock = threading.Lock()
_extra: Dict[str, _Entry] = {}
_resolved: Dict[str, Runner] = {}


def register_pipeline(kind: str, target: Union[str, Runner], params_model: Optional[type] = None) -> None:
    """Add (or replace) a job kind.

    ``target`` is a callable ``run(params: dict, progress) -> dict`` or the dotted
    name of a module exposing one. ``params_model`` is a pydantic model with
    ``extra="forbid"``; the server builds its request schema from the kinds
    registered when the app is created.
    """
    if not kind or not kind.replace("_", "").isalnum():
        raise ValueError(f"job kind {kind!r} must be alphanumeric")
    with _lock:
        _extra[kind] = _Entry(target, params_model)
        _resolved.pop(kind, None)


def unregister_pipeline(kind: str) -> None:
    """Remove a kind added with :func:`register_pipeline` (built-ins come back)."""
    with _lock:
        _extra.pop(kind, None)
        _resolved.pop(kind, None)


def pipeline_kinds() -> list:
    """All job kinds, built-in first."""
    with _lock:
        return list(BUILTIN_PIPELINES) + [k for k in _extra if k not in BUILTIN_PIPELINES]


def params_model(kind: str) -> type:
    """The pydantic params model of a kind (KeyError for unknown kinds)."""
    with _lock:
        entry = _extra.get(kind)
    if entry is not None and entry.params_model is not None:
        return entry.params_model
    from backend.server.schemas import PARAMS_MODELS  # light module: pydantic only
    if kind in PARAMS_MODELS:
        return PARAMS_MODELS[kind]
    raise KeyError(f"unknown job kind {kind!r}; known kinds: {', '.join(pipeline_kinds())}")


def get_runner(kind: str) -> Runner:
    """Import (once) and return the run function of a kind."""
    with _lock:
        if kind in _resolved:
            return _resolved[kind]
        entry = _extra.get(kind)
        target = entry.target if entry is not None else BUILTIN_PIPELINES.get(kind)
    if target is None:
        raise PipelineUnavailable(f"unknown job kind {kind!r}; known kinds: {', '.join(pipeline_kinds())}")
    runner = target if callable(target) else _import_runner(kind, target)
    with _lock:
        _resolved[kind] = runner
    return runner


def _import_runner(kind: str, module_name: str) -> Runner:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise PipelineUnavailable(
            f"the {kind} pipeline is not installed ({module_name} could not be imported: {exc})") from exc
    except Exception as exc:  # a broken module must not take the server down
        raise PipelineUnavailable(
            f"the {kind} pipeline failed to load ({type(exc).__name__}: {exc})") from exc
    for attr in ("run", f"run_{kind}"):
        fn = getattr(module, attr, None)
        if callable(fn):
            return fn
    raise PipelineUnavailable(f"the {kind} pipeline module {module_name} has no run(params, progress) function")


def run_pipeline(kind: str, params: dict, progress) -> dict:
    """Run one job in the calling thread (the server's worker or the CLI)."""
    return get_runner(kind)(params, progress)
