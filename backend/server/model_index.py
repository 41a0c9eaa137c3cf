"""List the project's and the user's model files with their metadata.

Metadata is read with ``torch.load(weights_only=True)`` (through models.checkpoint
when it offers a metadata reader), so opening a model file never runs code.
Results are cached by (path, size, mtime).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

log = logging.getLogger("skysense.models")

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_MODELS_DIR = REPO_ROOT / "resources" / "models"
MODEL_SUFFIXES = (".pth", ".pt")
_META_KEYS = ("task", "classes", "bands", "tile_size", "gsd", "metrics", "arch", "format",
              "normalization", "trained_on")


def default_user_models_dir() -> Path:
    """$SKYSENSE_MODELS_DIR, else the model manager's user folder (~/.skysense/models)."""
    env = os.environ.get("SKYSENSE_MODELS_DIR")
    if env:
        return Path(env)
    try:
        from backend.model_manager import user_models_dir
        return Path(user_models_dir())
    except Exception:  # noqa: BLE001 - keep listing even if that module is broken
        return Path.home() / ".skysense" / "models"


def read_metadata(path: Path) -> dict:
    """Model metadata without the weights; raises with a message naming the problem."""
    try:
        from models import checkpoint  # the models engineer's reader, when present
    except Exception:  # noqa: BLE001 - fall back to a safe direct read below
        checkpoint = None
    for name in ("read_model_meta", "read_metadata"):
        reader = getattr(checkpoint, name, None)
        if callable(reader):
            meta = reader(path)
            return {k: v for k, v in dict(meta).items() if k != "state_dict"}
    import torch
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path.name} is not a readable model file ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or not str(blob.get("format", "")).startswith("skysense-qgis/"):
        raise ValueError(f"{path.name} is not a SkySense project model file (no 'format' entry)")
    return {k: blob[k] for k in _META_KEYS if k in blob}


class ModelIndex:
    """Scans model folders on request; caches metadata of unchanged files."""

    def __init__(self, project_dir: Path = PROJECT_MODELS_DIR, user_dir: Optional[Path] = None):
        self.folders: List[Tuple[str, Path]] = [("project", Path(project_dir)),
                                                ("user", Path(user_dir or default_user_models_dir()))]
        self._cache: Dict[Tuple[str, int, float], dict] = {}
        self._lock = threading.Lock()

    def _files(self) -> Iterable[Tuple[str, Path]]:
        for source, folder in self.folders:
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.suffix.lower() in MODEL_SUFFIXES and path.is_file():
                        yield source, path

    def entry(self, source: str, path: Path) -> dict:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        base = {"path": str(path.resolve()), "name": path.stem, "source": source, "task": None,
                "classes": [], "bands": {}, "tile_size": None, "gsd": None, "metrics": {}, "error": None}
        try:
            meta = read_metadata(path)
            from backend.server.runner import to_jsonable
            meta = to_jsonable(meta)
            base.update({k: meta[k] for k in ("task", "classes", "bands", "tile_size", "gsd", "metrics")
                         if meta.get(k) is not None})
            base["name"] = str(meta.get("name") or path.stem)
        except Exception as exc:  # noqa: BLE001 - one bad file must not hide the others
            log.warning("could not read model %s: %s", path, exc)
            base["error"] = str(exc)
        with self._lock:
            self._cache[key] = base
        return base

    def list(self) -> List[dict]:
        return [self.entry(source, path) for source, path in self._files()]
