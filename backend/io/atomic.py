"""Atomic outputs: files are written into a hidden temporary folder next to their destination
(same file system) and moved into place only when everything succeeded. A failed or cancelled
job therefore never leaves a half-written file, and never replaces a previous good one."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from backend.errors import OutputError

__all__ = ["AtomicOutputs", "ensure_output_dir", "describe_os_error", "close_quietly"]


def describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk full"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def close_quietly(handle) -> None:
    """Close a half-written dataset or layer, ignoring errors: the job already failed, and its temporary
    file is removed by AtomicOutputs."""
    if handle is not None:
        try:
            handle.close()
        except Exception:
            pass


def ensure_output_dir(path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {path}: {describe_os_error(exc)}") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"output folder is not writable: {path}")
    return path


class AtomicOutputs:
    """Context manager: `tmp = outs.path_for(final)` gives where to write `final`; on a clean exit
    every file written is moved onto its final name (os.replace), on an exception all are deleted."""

    def __init__(self, directory):
        self.directory = ensure_output_dir(directory)
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix=".skysense-", suffix=".tmp", dir=self.directory))
        except OSError as exc:
            raise OutputError(f"cannot write in {self.directory}: {describe_os_error(exc)}") from None
        self._finals: dict = {}  # final path -> temporary path

    def path_for(self, final) -> Path:
        final = Path(final)
        if final.parent.resolve() != self.directory.resolve():
            raise OutputError(f"output {final} must be inside {self.directory}")
        tmp = self._tmp / final.name
        self._finals[final] = tmp
        return tmp

    def sidecars(self, final, suffixes) -> None:
        """Register extra files written next to `final` (e.g. shapefile .shx/.dbf/.prj/.cpg)."""
        final = Path(final)
        for suffix in suffixes:
            tmp = self._tmp / final.with_suffix(suffix).name
            if tmp.exists():
                self._finals[final.with_suffix(suffix)] = tmp

    def commit(self) -> None:
        missing = [str(f) for f, t in self._finals.items() if not t.exists()]
        if missing:
            self.abort()
            raise OutputError(f"output was not produced: {', '.join(missing)}")
        try:
            for final, tmp in self._finals.items():
                os.replace(tmp, final)
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot move outputs into {self.directory}: {describe_os_error(exc)}") from None
        self.abort()

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "AtomicOutputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
