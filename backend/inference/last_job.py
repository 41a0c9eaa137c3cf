"""The model file, tile size and precision of the backend's last CPU job, kept on disk across restarts, so a
new backend can have OpenVINO compiled for them before its first job (runtime.want_last_sessions_job).

One small JSON file in the backend's cache folder, replaced whole (written to a temporary name, then renamed).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Tuple

log = logging.getLogger(__name__)

__all__ = ["FILE_NAME", "record_last_job", "read_last_job"]

FILE_NAME = "last_cpu_job.json"
_WRITTEN: dict = {}  # folder -> the record last written there by this process (a job's write is then skipped)


def record_last_job(folder: Path, model_path: Path, tile_size: int, amp: bool) -> None:
    """Keep (model file, tile size, amp) as the last CPU job's, unless this process wrote the same already.
    A failure (read-only or full disk) is logged: only the next start's head start is lost."""
    record = {"model": str(Path(model_path).resolve()), "tile_size": int(tile_size), "amp": bool(amp)}
    folder = Path(folder)
    if _WRITTEN.get(str(folder)) == record:
        return
    tmp = folder / f".{FILE_NAME}.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record))
        os.replace(tmp, folder / FILE_NAME)
        _WRITTEN[str(folder)] = record
    except OSError as exc:
        log.warning("could not note the last job's model for the next start (%s)", exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


def read_last_job(folder: Path) -> Optional[Tuple[Path, int, bool]]:
    """(model file, tile size, amp) of the last CPU job noted in `folder`, or None: nothing noted, the file
    unreadable or malformed, or the model file gone."""
    try:
        record = json.loads((Path(folder) / FILE_NAME).read_text())
        model, tile, amp = Path(record["model"]), int(record["tile_size"]), bool(record["amp"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("ignoring the last job's note %s (%s)", Path(folder) / FILE_NAME, exc)
        return None
    if tile < 32 or not model.is_file():
        return None
    return model, tile, amp
