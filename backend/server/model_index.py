"""List the project's and the user's model files with their metadata.

Which files count as model files (.pth, .pt, .onnx) and how their metadata is read are
backend.model_manager's (``model_files_in``, ``read_model_meta``): .pth/.pt with
``torch.load(weights_only=True)``, .onnx from the ONNX metadata without building a session,
so opening a model file never runs code. Results are cached by (path, size, mtime).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from backend.model_manager import MODEL_SUFFIXES, model_files_in, read_model_meta  # noqa: F401 - MODEL_SUFFIXES re-exported

log = logging.getLogger("skysense.models")

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_MODELS_DIR = REPO_ROOT / "resources" / "models"


def default_user_models_dir() -> Path:
    """$SKYSENSE_MODELS_DIR, else the model manager's user folder (~/.skysense/models)."""
    env = os.environ.get("SKYSENSE_MODELS_DIR")
    if env:
        return Path(env)
    from backend.model_manager import user_models_dir
    return Path(user_models_dir())


def read_metadata(path: Path) -> dict:
    """Model metadata without the weights; raises with a message naming the file and the problem."""
    return {k: v for k, v in dict(read_model_meta(path)).items() if k != "state_dict"}


class ModelIndex:
    """Scans model folders on request; caches metadata of unchanged files."""

    def __init__(self, project_dir: Path = PROJECT_MODELS_DIR, user_dir: Optional[Path] = None):
        self.folders: List[Tuple[str, Path]] = [("project", Path(project_dir)),
                                                ("user", Path(user_dir or default_user_models_dir()))]
        self._cache: Dict[Tuple[str, int, float], dict] = {}
        self._lock = threading.Lock()

    def _files(self) -> Iterable[Tuple[str, Path]]:
        for source, folder in self.folders:
            for path in model_files_in(folder):
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
