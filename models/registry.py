"""Named model configurations: ``create_model("skysense_seg_tiny", num_classes=7)``.

A registered function returns a plain config dict (JSON-able, so it can be stored
in a model file). ``create_model`` merges overrides into it and builds the task model.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List

from torch import nn

_CONFIGS: Dict[str, Callable[[], Dict[str, Any]]] = {}


def register_model(name: str) -> Callable:
    """Decorator registering a zero-argument function that returns a config dict."""

    def wrap(fn: Callable[[], Dict[str, Any]]):
        if name in _CONFIGS:
            raise ValueError(f"model name {name!r} is already registered")
        _CONFIGS[name] = fn
        return fn

    return wrap


def list_models() -> List[str]:
    """Sorted registered names."""
    _ensure_loaded()
    return sorted(_CONFIGS)


def get_config(name: str, **overrides: Any) -> Dict[str, Any]:
    """A fresh copy of the named config with overrides merged in (nested dicts merge)."""
    _ensure_loaded()
    if name not in _CONFIGS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_CONFIGS))}")
    cfg = copy.deepcopy(_CONFIGS[name]())
    return _merge(cfg, copy.deepcopy(overrides))


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the task model for a registered name; overrides e.g. ``num_classes=7, in_chans=4``.

    The model remembers ``model.arch = {"name": name, "kwargs": overrides}`` so that
    ``save_model_file`` can record how to rebuild it.
    """
    from . import tasks

    cfg = get_config(name, **overrides)
    model = tasks.build_task_model(cfg)
    model.arch = {"name": name, "kwargs": copy.deepcopy(overrides)}
    return model


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    return base


def _ensure_loaded() -> None:
    # The configs live in models/configs.py; importing it registers them.
    from . import configs  # noqa: F401
