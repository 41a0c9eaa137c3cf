"""OpenVINO prepared ahead by a low-priority background process, so that no job waits for it.

A CPU job runs OpenVINO only when it is big enough to repay what is not ready yet (runtime.
OPENVINO_MIN_MEGAPIXELS): the OpenVINO IR of the model at the job's fitted tile size (an ONNX export and a
conversion, 5-6 s per model file and tile size) and its compile (about 1 s, kept in OpenVINO's cache). A
child process makes both at the lowest CPU priority (SCHED_IDLE and nice 19), so it takes mostly CPU that
jobs leave idle: on the server's start, for the bundled land-cover and change models at the tile sizes most
rasters are fitted to (about 50 s on 2 cores); after a job that would have run OpenVINO had it been ready,
for that job's model file and tile. Later jobs then start OpenVINO in 0.3 s. The ONNX export it goes
through is not kept (the IR is what jobs read).

    python -m backend.inference.openvino_warmup --model FILE --tiles 640,608 [--fp32]

SKYSENSE_OPENVINO_WARMUP=0 turns the background preparation off.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Deque, Iterable, List, Optional, Tuple

log = logging.getLogger(__name__)

__all__ = ["SWITCH", "MAX_MODEL_BYTES", "cache_budget_bytes", "prune_cache", "warmup_enabled", "prepare_tiles",
           "BackgroundWarmer", "background_warmer", "bundled_models_ahead", "warm_bundled_models"]

SWITCH = "SKYSENSE_OPENVINO_WARMUP"
# A bigger model's IR costs its size again on disk for every tile size: such models are prepared only when
# a job big enough asks for it (runtime.openvino_for_big_cpu_job), not ahead.
MAX_MODEL_BYTES = 256 << 20
REPO = Path(__file__).resolve().parents[2]


def cache_budget_bytes() -> int:
    """How much OpenVINO's part of the cache (IRs and compiled models) may hold: $SKYSENSE_OPENVINO_CACHE_MB,
    default 2048 MB (the bundled model's four prepared tile sizes take ~220 MB)."""
    try:
        return max(0, int(float(os.environ.get("SKYSENSE_OPENVINO_CACHE_MB", "2048")) * 2 ** 20))
    except ValueError:
        return 2048 * 2 ** 20


def prune_cache(folder: Path, budget: int, keep: Iterable[Path] = ()) -> List[Path]:
    """Remove the least recently used IRs (xml and bin together; a job's use touches the bin) and compiled
    models from OpenVINO's cache folder until it holds at most `budget` bytes, never an IR in `keep`.
    Returns what was removed. A removed entry is only made again when a job or the background wants it."""
    keep = {Path(p).with_suffix("") for p in keep}
    units, total = [], 0  # units: (last use, bytes, files) that may go; total: every byte, kept ones too
    for xml in (folder / "ir").glob("*.xml") if (folder / "ir").is_dir() else []:
        if xml.name.startswith("."):  # another process's IR being written: its rename must not fail
            continue
        files = [xml, xml.with_suffix(".bin")]
        stats = []
        for path in files:
            with contextlib.suppress(OSError):
                stats.append(path.stat())
        if not stats:
            continue
        size = sum(st.st_size for st in stats)
        total += size
        if xml.with_suffix("") not in keep:
            units.append((max(st.st_mtime for st in stats), size, files))
    for blob in folder.glob("*.blob") if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            st = blob.stat()
            units.append((st.st_mtime, st.st_size, [blob]))
            total += st.st_size
    removed = []
    for _, size, files in sorted(units, key=lambda unit: unit[0]):
        if total <= budget:
            break
        for path in files:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
        total -= size
    return removed


def warmup_enabled() -> bool:
    """Background preparation is on unless SKYSENSE_OPENVINO_WARMUP=0 (or openvino is missing)."""
    from backend.inference.openvino_predictor import openvino_available

    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off") and openvino_available()


def _load_module(model_path: Path):
    from backend.inference.runtime import load_task_predictor
    from models.checkpoint import read_model_meta

    task = read_model_meta(model_path).get("task")
    return load_task_predictor(model_path, (task,), device="cpu")[0]


def prepare_tiles(model_path, tiles: Iterable[int], amp: bool = True,
                  report: Callable[[str], None] = print) -> List[Tuple[int, bool, float]]:
    """In this process, for each tile size: the model file's OpenVINO IR (made unless cached) and its
    compile for one tile, which fills OpenVINO's compiled-model cache with the settings jobs use.
    Returns (tile, IR made here, seconds) per tile."""
    from backend.inference import runtime
    from backend.inference.openvino_predictor import OpenVinoPredictor

    model_path = Path(model_path)
    model = runtime.LazyModel(lambda: _load_module(model_path))  # not built when every IR is cached
    done = []
    for tile in tiles:
        start = time.perf_counter()
        ir_path = runtime._cached_ir_path(model_path, int(tile))
        made = not ir_path.is_file()
        if made:
            runtime._lasting_ir(model, model_path, int(tile), keep_onnx=False)
        predictor = OpenVinoPredictor(ir_path, precision=runtime._openvino_precision(amp), outputs="probabilities",
                                      cache_dir=runtime.openvino_cache_dir())
        predictor.compile_exported_shape()
        seconds = time.perf_counter() - start
        done.append((int(tile), made, seconds))
        report(f"{model_path.name} tile {tile}: {'IR made and ' if made else ''}compiled "
               f"({predictor.precision}) in {seconds:.1f} s")
    return done


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """One preparing process at a time on this cache (two backends share it); no lock where fcntl is missing."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class BackgroundWarmer:
    """Runs the preparation child processes one after the other, from a queue of (model file, tiles, amp)."""

    def __init__(self, python: Optional[str] = None):
        self.python = python or sys.executable  # the backend's own interpreter (never QGIS's)
        self._pending: Deque[Tuple[Path, Tuple[int, ...], bool]] = deque()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._child: Optional[subprocess.Popen] = None
        self._closing = False
        self.finished: List[Tuple[str, Tuple[int, ...], int]] = []  # (model file name, tiles, exit status)

    def request(self, model_path, tiles: Iterable[int], amp: bool = True) -> bool:
        """Queue a preparation of these tile sizes; False (and nothing queued) when background preparation
        is off, the model file is missing or too big to prepare ahead, or every tile's IR is cached."""
        from backend.inference import runtime

        model_path = Path(model_path)
        if self._closing or not warmup_enabled() or not model_path.is_file():
            return False
        if model_path.stat().st_size > MAX_MODEL_BYTES:
            log.info("%s is too big to prepare OpenVINO ahead for (%d MB)", model_path.name,
                     model_path.stat().st_size >> 20)
            return False
        wanted = tuple(int(t) for t in tiles if not runtime._cached_ir_path(model_path, int(t)).is_file())
        if not wanted:
            return False
        with self._cond:
            queued = {(p, t) for p, ts, _ in self._pending for t in ts}
            wanted = tuple(t for t in wanted if (model_path, t) not in queued)
            if not wanted:
                return True
            self._pending.append((model_path, wanted, bool(amp)))
            if self._thread is None:  # the runner clears it, under this lock, as it leaves
                self._thread = threading.Thread(target=self._run, name="skysense-openvino-warmup", daemon=True)
                self._thread.start()
        return True

    def describe(self) -> Optional[str]:
        """What is being prepared now (for /health), or None."""
        with self._cond:
            if not self._pending:
                return None
            model_path, tiles, _ = self._pending[0]
            more = sum(len(t) for _, t, _ in list(self._pending)[1:])
            return (f"OpenVINO for {model_path.name} at tile{'s' if len(tiles) > 1 else ''} "
                    f"{', '.join(map(str, tiles))}" + (f" (then {more} more)" if more else ""))

    def busy(self) -> bool:
        with self._cond:
            return bool(self._pending) or self._child is not None

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until nothing is queued or running; False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._child is not None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop: drop what is queued and end the running child (its files are written by rename, so
        nothing half-made is left behind)."""
        with self._cond:
            self._closing = True
            self._pending.clear()
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()

    def _command(self, model_path: Path, tiles: Tuple[int, ...], amp: bool) -> List[str]:
        command = [self.python, "-m", "backend.inference.openvino_warmup", "--model", str(model_path),
                   "--tiles", ",".join(str(t) for t in tiles), "--parent-pid", str(os.getpid())]
        return command + ([] if amp else ["--fp32"])

    def _run(self) -> None:
        from backend.inference import runtime

        while True:
            with self._cond:
                if not self._pending or self._closing:
                    self._thread = None
                    self._cond.notify_all()
                    return
                model_path, tiles, amp = self._pending[0]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
            log_path = runtime.openvino_cache_dir() / "warmup.log"
            start = time.monotonic()
            log.info("preparing OpenVINO in the background for %s, tiles %s (log: %s)", model_path.name,
                     ",".join(map(str, tiles)), log_path)
            try:
                log_path.parent.mkdir(parents=True, exist_ok=True)
                long_log = log_path.is_file() and log_path.stat().st_size > 1 << 20
                with open(log_path, "w" if long_log else "a", encoding="utf-8") as out:  # kept under ~1 MB
                    with self._cond:
                        if self._closing:
                            self._thread = None
                            self._cond.notify_all()
                            return
                        self._child = subprocess.Popen(self._command(model_path, tiles, amp), cwd=str(REPO),
                                                       env=env, stdin=subprocess.DEVNULL, stdout=out,
                                                       stderr=subprocess.STDOUT,
                                                       # Windows has no nice: its idle priority class instead
                                                       creationflags=getattr(subprocess, "IDLE_PRIORITY_CLASS", 0))
                    status = self._child.wait()
            except OSError as exc:
                log.warning("could not start the background OpenVINO preparation (%s)", exc)
                status = -1
            if status == 0:
                log.info("background OpenVINO preparation for %s done in %.0f s", model_path.name,
                         time.monotonic() - start)
            elif not self._closing:
                log.warning("background OpenVINO preparation for %s ended with status %s (see %s); jobs run "
                            "as before", model_path.name, status, log_path)
            with self._cond:
                self._child = None
                if self._pending and self._pending[0][:2] == (model_path, tiles):
                    self._pending.popleft()
                self.finished.append((model_path.name, tiles, status))
                self._cond.notify_all()


_WARMER: List[BackgroundWarmer] = []
_WARMER_LOCK = threading.Lock()


def background_warmer() -> BackgroundWarmer:
    """The process's warmer (one queue, one child at a time)."""
    with _WARMER_LOCK:
        if not _WARMER:
            _WARMER.append(BackgroundWarmer())
        return _WARMER[0]


def bundled_models_ahead() -> List[Tuple[Path, str, int, int]]:
    """What the server's start prepares: (model file, task, job overlap, how many fitted tile sizes). The
    land-cover model's four largest sizes (640, 608, 576, 544) are what plan_tiles picks for 89 % of square
    rasters from 641 to 8192 px; the change model's two (256, 224) for 96 % from 257 px. Each size costs
    ~55 MB of cache (IR and compiled model) for the land-cover model, so the rarer ones wait for a job."""
    from backend.pipelines.change import DEFAULT_CHANGE_MODEL
    from backend.pipelines.landcover import DEFAULT_MODEL

    return [(DEFAULT_MODEL, "segmentation", 64, 4), (DEFAULT_CHANGE_MODEL, "change", 32, 2)]


def warm_bundled_models(warmer: Optional[BackgroundWarmer] = None) -> List[Path]:
    """On the server's start, when jobs run on the CPU: queue the bundled models' preparation
    (bundled_models_ahead), land cover first. Returns the model files queued."""
    from backend.inference.predictors import resolve_device
    from backend.inference.runtime import model_file_meta
    from backend.io.tiling import fitted_tile_sizes

    warmer = warmer or background_warmer()
    if not warmup_enabled() or resolve_device("auto") != "cpu":
        return []
    queued = []
    for path, task, overlap, sizes in bundled_models_ahead():
        if not path.is_file():
            continue
        tile = int(model_file_meta(path, (task,)).get("tile_size") or 512)
        if warmer.request(path, fitted_tile_sizes(tile, overlap)[:sizes]):
            queued.append(path)
    return queued


def _lowest_priority() -> str:
    """Jobs come first: nice 19, and Linux's SCHED_IDLE where allowed; says what it got. (A 2048² PyTorch
    job beside this process measured 2.0-2.5 s against 2.0-2.4 s alone, with either setting.)"""
    got = []
    with contextlib.suppress(OSError, AttributeError):
        os.nice(19)
        got.append(f"nice {os.nice(0)}")
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        got.append("SCHED_IDLE")
    return ", ".join(got) or "normal priority"


def _end_with_parent(parent_pid: Optional[int]) -> bool:
    """Stop when the backend that started this process is gone, even killed (Linux: a SIGTERM on its death),
    and leave through Python's exit path, so the files being written are removed, not left half made.
    False if it is gone already."""
    import signal

    def leave(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, leave)
    if parent_pid is None:
        return True
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    return os.getppid() == parent_pid


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.inference.openvino_warmup",
                                     description="Make a model file's OpenVINO IR and compiled-model cache "
                                                 "for these tile sizes, at the lowest CPU priority")
    parser.add_argument("--model", type=Path, required=True, help="project model file (.pth)")
    parser.add_argument("--tiles", required=True, help="comma-separated tile sizes, e.g. 640,608")
    parser.add_argument("--fp32", action="store_true", help="compile for fp32 (jobs with amp off)")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process (the backend) is gone")
    args = parser.parse_args(argv)
    try:
        tiles = [int(t) for t in args.tiles.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--tiles must be integers separated by commas, got {args.tiles!r}")
    if not _end_with_parent(args.parent_pid):
        print(f"the backend (pid {args.parent_pid}) is gone: nothing prepared", flush=True)
        return 0
    priority = _lowest_priority()  # before torch and OpenVINO start threads, which inherit it
    from backend.inference import runtime

    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} {priority}: {args.model.name}, tiles "
          f"{','.join(map(str, tiles))}", flush=True)
    try:
        with _exclusive(runtime.openvino_cache_dir() / "warmup.lock"):
            prepare_tiles(args.model, tiles, amp=not args.fp32, report=lambda line: print(line, flush=True))
            made = [runtime._cached_ir_path(args.model, t) for t in tiles]
            for path in prune_cache(runtime.openvino_cache_dir(), cache_budget_bytes(), keep=made):
                print(f"removed {path.name} (least recently used; the cache is over its budget)", flush=True)
    except Exception as exc:  # the log says why; jobs run without it as before
        print(f"failed for {args.model.name}: {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
