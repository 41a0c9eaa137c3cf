"""Atomic outputs: files are written into a hidden temporary folder next to their destination
(same file system) and moved into place only when everything succeeded. A failed or cancelled
job therefore never leaves a half-written file, and never replaces a previous good one.

A process killed mid-job (crash, OOM killer, power loss) cannot clean up, so each temporary folder
names its owner (host and pid) and the next job writing to the same folder removes those whose
owner is gone."""
from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional

from backend.errors import OutputError

__all__ = ["AtomicOutputs", "ensure_output_dir", "describe_os_error", "close_quietly", "remove_stale_temporaries",
           "pid_alive", "free_bytes", "write_failure_reason"]

TMP_PREFIX, TMP_SUFFIX = ".skysense-", ".tmp"
OWNER_FILE = ".owner"
# A temporary folder without an owner file (killed between creating it and writing the file, or left by
# a version that wrote none) is only taken for abandoned once nothing could still be writing it.
UNOWNED_GRACE_S = 6 * 3600


_LOW_SPACE = 1 << 20  # below this many free bytes, a failed write is put down to a full disk


def _exception_chain(exc: BaseException) -> list:
    chain = []
    while exc is not None and exc not in chain and len(chain) < 16:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def free_bytes(path) -> Optional[int]:
    """Free bytes on the file system holding `path` (or its nearest existing parent); None if unknown."""
    path = Path(path)
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def write_failure_reason(path) -> str:
    """Why a write whose error GDAL did not name probably failed: a full disk when `path`'s has <1 MiB left."""
    free = free_bytes(path)
    return f"disk full ({free} bytes left)" if free is not None and free < _LOW_SPACE else WRITE_FAILED_HINT


def describe_os_error(exc: BaseException, path=None) -> str:
    """Plain words for a failed read or write. GDAL wraps the OS error in "Write failed. See previous
    exception", so the whole cause chain is read; with `path`, a nearly full disk names itself."""
    chain = _exception_chain(exc)
    for link in chain:
        if isinstance(link, OSError) and link.errno == errno.ENOSPC:
            return "disk full"
        if isinstance(link, OSError) and link.errno == errno.EFBIG:
            return FILE_TOO_LARGE
        if isinstance(link, OSError) and link.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return "permission denied"
    texts = [" ".join(str(link).split()) for link in chain]
    joined = " ".join(texts).lower()
    if "no space left" in joined or "disk full" in joined:
        return "disk full"
    if "file too large" in joined:
        return FILE_TOO_LARGE
    if path is not None:
        free = free_bytes(path)
        if free is not None and free < _LOW_SPACE:
            return f"disk full ({free} bytes left)"
    useful = [t for t in texts if t and "see previous exception" not in t.lower()]
    text = useful[0] if useful else (texts[0] or type(exc).__name__)
    if "sqlite3_" in joined or "database or disk is full" in joined:
        # GeoPackage writes go through SQLite, whose words name a failed statement, not the cause: the
        # cause first, its text after (without the bytes repr GDAL's Python bindings put around it)
        detail = text[2:-1] if text[:2] in ("b'", 'b"') and text[-1:] in ("'", '"') else text
        return f"the GeoPackage could not be written completely: {WRITE_FAILED_HINT} (SQLite: {detail})"
    # libtiff's own words when the OS refused a write
    if any(sign in joined for sign in ("write error", "does not read back", "tiffreadencoded")):
        text += f" ({WRITE_FAILED_HINT})"
    return text


WRITE_FAILED_HINT = "the disk may be full or failing, or a file size limit was reached"
FILE_TOO_LARGE = "file too large (more than the file system or this process's file size limit allows)"


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


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine; True when that cannot be known."""
    if pid <= 0:
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes
        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.windll.kernel32.GetLastError() != 87  # ERROR_INVALID_PARAMETER: no such process
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: exists, owned by another user
        return True
    return True


def _abandoned(folder: Path, host: str, now: float) -> bool:
    try:
        owner_host, _, pid = (folder / OWNER_FILE).read_text().strip().rpartition(" ")
        return owner_host == host and not pid_alive(int(pid))
    except FileNotFoundError:
        try:
            return now - folder.stat().st_mtime > UNOWNED_GRACE_S
        except OSError:
            return False
    except (OSError, ValueError):  # unreadable or garbled: leave it alone
        return False


def remove_stale_temporaries(directory) -> list:
    """Remove the temporary output folders in `directory` left by jobs whose process died; returns their
    names. Folders of running jobs (this process's included), of other machines sharing the folder, and
    unowned ones younger than UNOWNED_GRACE_S are kept."""
    host, now, removed = socket.gethostname(), time.time(), []
    try:
        candidates = [p for p in Path(directory).iterdir()
                      if p.name.startswith(TMP_PREFIX) and p.name.endswith(TMP_SUFFIX) and p.is_dir()]
    except OSError:
        return removed
    for folder in candidates:
        if _abandoned(folder, host, now):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder.name)
    return removed


class AtomicOutputs:
    """Context manager: `tmp = outs.path_for(final)` gives where to write `final`; on a clean exit
    every file written is moved onto its final name (os.replace), on an exception all are deleted."""

    def __init__(self, directory):
        self.directory = ensure_output_dir(directory)
        self.removed_stale = remove_stale_temporaries(self.directory)
        self._tmp = None
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=self.directory))
            (self._tmp / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}")
        except OSError as exc:
            self.abort()
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
        self._check_rasters()
        try:
            for final, tmp in self._finals.items():
                os.replace(tmp, final)
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot move outputs into {self.directory}: {describe_os_error(exc)}") from None
        self.abort()

    def _check_rasters(self) -> None:
        """Decode every GeoTIFF before publishing it: a write that failed when GDAL closed the file is silent."""
        from backend.io.readback import GEOTIFF_SUFFIXES, raster_read_back_problem

        for final, tmp in self._finals.items():
            if final.suffix.lower() not in GEOTIFF_SUFFIXES:
                continue
            problem = raster_read_back_problem(tmp)
            if problem is None:
                continue
            self.abort()
            raise OutputError(f"could not write {final}: the finished file does not read back ({problem}); "
                              f"{write_failure_reason(self.directory)}")

    def abort(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "AtomicOutputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
