"""Choosing how a model runs: PyTorch (CUDA with fp16 autocast; CPU in fp32 or bf16 autocast), OpenVINO
or ONNX Runtime on CPU.

On CPU, "auto" picks the fastest measured option (see `make bench`, sections 1-2). OpenVINO (where it is
installed; bf16 on CPUs that do bf16 in hardware, else fp32) is the fastest runtime measured, but it needs
an ONNX export converted to OpenVINO IR (several seconds, cached by model-file hash and tile size) and a
compile: a job runs with it from `OPENVINO_MIN_MEGAPIXELS` of work (tiles x tile area), a threshold that
falls as less of that start-up is left to pay (none once compiled for the job's tile). The server readies
it ahead: its idle job worker compiles a cached IR for the last job's tile (prepare_openvino_while_idle),
and a background process at the lowest priority makes missing IRs (openvino_warmup). Without OpenVINO, jobs of
`ONNX_MIN_MEGAPIXELS` run ONNX Runtime on CPUs without hardware bf16. Smaller jobs, and the fallbacks,
run PyTorch: bf16 autocast on CPUs with AVX512-BF16 / AMX (~1.2x fp32 inside the engine, label agreement
with fp32 ~99 %), fp32 elsewhere.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

from backend.errors import InputError
from backend.inference.last_job import read_last_job, record_last_job
from backend.inference.openvino_predictor import OpenVinoPredictor, openvino_available, save_probability_ir
from backend.inference.predictors import (OnnxRuntimePredictor, TorchPredictor, cache_root, cpu_has_native_bf16,
                                         resolve_device)

__all__ = ["RUNTIMES", "LazyModel", "model_file_meta", "make_predictor", "openvino_for_big_cpu_job",
           "openvino_ready", "load_task_predictor", "prepare_openvino_while_idle", "want_last_sessions_job",
           "onnx_cache_dir", "openvino_cache_dir", "ONNX_MIN_MEGAPIXELS", "OPENVINO_MIN_MEGAPIXELS"]

log = logging.getLogger(__name__)
# new runtimes go last: the Processing RUNTIME parameter stores the index
RUNTIMES = ("auto", "torch", "onnx", "compile", "openvino")
ONNX_MIN_MEGAPIXELS = 40.0  # ~40 s of eager CPU time for the tiny model: a ~10 % gain then repays the ~5 s export
# Work (MP) from which "auto" runs a CPU job with OpenVINO, by what the job finds ready: the compiled model
# for the job's tile held from an earlier job or prepared while idle (nothing to pay: OpenVINO bf16 was
# faster than PyTorch bf16 at every size measured, 512²: 0.10 against 0.12 s, 1024²: 0.25 against 0.44 s,
# 2048²: 1.1 against 2.0 s), the OpenVINO IR cached on disk (_lasting_ir: 0.2 s to load the compiled model
# from OpenVINO's cache, keyed by the IR file, without reading the graph; ~1.2 s when that cache misses; the
# first tile then allocates buffers, ~0.1 s. Whole jobs in fresh processes, three runs: 640² (one tile, 0.4
# MP) even, 0.45-0.57 against 0.39-0.67 s; 1024² (4 tiles of 544, 1.2 MP) 0.49-0.70 against 0.67-0.86 s;
# 2048² saved 0.7 s), or nothing (ONNX export and conversion 5-6 s, compile ~1 s).
OPENVINO_MIN_MEGAPIXELS = {"compiled": 0.0, "exported": 1.0, "nothing": ONNX_MIN_MEGAPIXELS}


class LazyModel:
    """A model file's nn.Module, built on first use (`get`). make_predictor and the functions below accept
    one wherever they take a model: a job that runs the compiled OpenVINO model already held for its file
    and tile never builds the module (1024²: 0.08 s of a 0.36 s job)."""

    def __init__(self, load: Callable[[], Any]):
        self._load, self._module = load, None

    def get(self):
        if self._module is None:
            self._module = self._load()
        return self._module


def _module(model):
    return model.get() if isinstance(model, LazyModel) else model


_METAS: Dict[tuple, Dict[str, Any]] = {}  # (path, size, mtime) -> metadata of a project model file


def model_file_meta(path, tasks: Sequence[str], what: str = "model") -> Dict[str, Any]:
    """The metadata of a project model file (.pth) whose task is one of `tasks`, read once per version of
    the file (a copy each time): what a job needs before it knows whether it will build the model at all.
    InputErrors as load_task_predictor's."""
    from models.checkpoint import CheckpointError, read_model_meta

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} model file not found: {path}")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _METAS:
        try:
            meta = read_model_meta(path)
        except CheckpointError as exc:
            raise InputError(f"{what} model {path} cannot be used: {exc}") from None
        _check_task(path, meta, tasks, what)
        if len(_METAS) >= 16:
            _METAS.clear()
        _METAS[key] = meta
    return copy.deepcopy(_METAS[key])


def onnx_cache_dir() -> Path:
    return Path(cache_root()) / "onnx"


def openvino_cache_dir() -> Path:
    """OpenVINO's own cache of compiled models (for exports that last), so a later job compiles faster."""
    return Path(cache_root()) / "openvino"


_DIGESTS: Dict[tuple, str] = {}  # (path, size, mtime) -> digest: a multi-GB model file is hashed once


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()[:20]
    return _DIGESTS[key]


def _cached_onnx_path(model_path: Path, tile_size: int) -> Path:
    import onnxruntime

    return onnx_cache_dir() / f"{_file_digest(Path(model_path))}_t{tile_size}_ort{onnxruntime.__version__}.onnx"


@contextlib.contextmanager
def _exported_onnx(model, model_path: Optional[Path], tile_size: int) -> Iterator[Tuple[Path, bool]]:
    """(ONNX file of the model, whether it is the lasting cached one): cached by model-file hash and tile
    size, else (an in-memory model) a temporary file removed on exit, once the runtime has read it."""
    from models.onnx_export import export_onnx

    if model_path is not None and Path(model_path).is_file():
        onnx_path = _cached_onnx_path(Path(model_path), tile_size)
        if not onnx_path.exists():
            export_onnx(_module(model), onnx_path, tile_size=tile_size)
        yield onnx_path, True
        return
    with tempfile.TemporaryDirectory(prefix="skysense-onnx-") as folder:
        yield export_onnx(_module(model), Path(folder) / "model.onnx", tile_size=tile_size), False


def _cached_ir_path(model_path: Path, tile_size: int) -> Path:
    import openvino

    version = re.sub(r"[^0-9A-Za-z.]+", "_", openvino.__version__.split("-")[0])  # e.g. "2026.4.1-22982-.../..."
    return openvino_cache_dir() / "ir" / f"{_file_digest(Path(model_path))}_t{tile_size}_ov{version}.xml"


def _lasting_ir(model, model_path: Path, tile_size: int, keep_onnx: bool = True) -> Path:
    """The model file's OpenVINO IR at this tile (softmax included, one-tile batch), made from its cached
    ONNX export (made first if needed; with keep_onnx False, a temporary export unless one is cached) unless
    already cached: OpenVINO compiles it from the file, and with its compiled-model cache a later process
    skips reading and converting the ONNX graph (0.2 s, against 1.4 s to read the ONNX file and 0.8 s to
    compile that from the cache)."""
    ir_path = _cached_ir_path(Path(model_path), tile_size)
    if not ir_path.is_file():
        keep = keep_onnx or _cached_onnx_path(Path(model_path), tile_size).is_file()
        with _exported_onnx(model, model_path if keep else None, tile_size) as (onnx_path, _):
            save_probability_ir(onnx_path, ir_path)
    return ir_path


def _onnx_predictor(model, model_path: Optional[Path], tile_size: int) -> OnnxRuntimePredictor:
    with _exported_onnx(model, model_path, tile_size) as (path, _):
        return OnnxRuntimePredictor(path, device="cpu")


# The last OpenVINO predictor built from a cached export: the next job with the same model, tile size and
# precision (a Processing batch run) reuses its compiled shapes instead of compiling again (2-3.5 s).
# Jobs run one at a time (the server's queue), so one predictor is never used by two jobs at once.
_LAST_OPENVINO: Dict[tuple, OpenVinoPredictor] = {}


def _openvino_precision(amp: bool) -> str:
    return "bf16" if amp and cpu_has_native_bf16() else "fp32"  # emulated bf16 would be slower


def _openvino_key(onnx_path: Path, precision: str) -> tuple:
    import torch

    stat = onnx_path.stat()
    return (str(onnx_path), stat.st_size, stat.st_mtime_ns, precision, torch.get_num_threads())


def openvino_ready(model_path, tile_size: int, amp: bool = True) -> str:
    """What a CPU job with this model file and tile size finds ready for OpenVINO: "compiled" (the
    previous job's compiled model is held), "exported" (the OpenVINO IR made from the ONNX export is cached)
    or "nothing"."""
    if model_path is None or not Path(model_path).is_file() or not openvino_available():
        return "nothing"
    ir_path = _cached_ir_path(Path(model_path), tile_size)
    if not ir_path.is_file():
        return "nothing"
    return "compiled" if _openvino_key(ir_path, _openvino_precision(amp)) in _LAST_OPENVINO else "exported"


def _openvino_predictor(model, model_path: Optional[Path], tile_size: int, amp: bool,
                        fallback: Optional[Callable] = None) -> OpenVinoPredictor:
    precision = _openvino_precision(amp)
    if model_path is None or not Path(model_path).is_file():
        with _exported_onnx(model, model_path, tile_size) as (path, _):
            return OpenVinoPredictor(path, precision=precision, fallback=fallback)
    predictor = _held_ir_predictor(model, Path(model_path), tile_size, precision)
    predictor.start_job(fallback)
    return predictor


def _held_ir_predictor(model, model_path: Path, tile_size: int, precision: str) -> OpenVinoPredictor:
    """The held predictor of the model file's lasting IR at this tile; a cached IR that OpenVINO cannot
    read (damaged on disk) is removed and made again once from the export."""
    ir_path = _lasting_ir(model, model_path, tile_size)
    try:
        return _held_openvino_predictor(ir_path, precision)
    except InputError as exc:
        log.warning("cached OpenVINO model %s is unusable (%s); making it again", ir_path.name, exc)
        for path in (ir_path, ir_path.with_suffix(".bin")):
            path.unlink(missing_ok=True)
        return _held_openvino_predictor(_lasting_ir(model, model_path, tile_size), precision)


def _held_openvino_predictor(ir_path: Path, precision: str) -> OpenVinoPredictor:
    """The held predictor of a lasting IR, made (and held in place of the previous one) if needed."""
    key = _openvino_key(ir_path, precision)
    predictor = _LAST_OPENVINO.get(key)
    if predictor is None:
        predictor = OpenVinoPredictor(ir_path, precision=precision, outputs="probabilities",
                                      cache_dir=openvino_cache_dir())
        _LAST_OPENVINO.clear()
        _LAST_OPENVINO[key] = predictor
    with contextlib.suppress(OSError):  # last use, for pruning the cache (the xml's own time keys the held model)
        os.utime(ir_path.with_suffix(".bin"))
    return predictor


# What the last CPU job would have run with OpenVINO had it been ready: (model, model file, tile size, amp,
# whether the job before it had the same model file, tile and amp, the job's work in MP).
# prepare_openvino_while_idle then readies it for the next job, by what it costs: a cached IR is compiled and
# held at once (0.3 s); a missing IR is made in the background for a job big enough to use it (1+ MP), or
# made here, the next job waiting, for a repeated job (a batch run, e.g. Processing's over same-sized
# rasters: the background process, at the lowest priority, would get no CPU between its jobs). A single
# small job is not evidence enough for that wait: jobs of other sizes (other fitted tiles) would each wait
# for a preparation of no use to them.
_WANTED: Dict[str, tuple] = {}
_PREVIOUS_CPU_JOB: Dict[str, tuple] = {}  # "key" -> (model file, tile size, amp) of the last CPU job


def prepare_openvino_while_idle() -> Optional[str]:
    """Ready OpenVINO, at its tile, for the model the last CPU job would have run with OpenVINO had it been
    ready (see _WANTED): compile and hold it for the next job, exporting it first if needed, or hand the
    export to the background process (openvino_warmup). Called by the server's job worker when its queue
    is empty. Returns what was prepared here, or None: nothing wanted, handed to the background, or it
    failed (logged; the next job then runs as it would have anyway)."""
    if not _WANTED:
        return None
    model, model_path, tile_size, amp, repeated, work = _WANTED.pop("last job")
    if openvino_ready(model_path, tile_size, amp) == "nothing" and not repeated:
        if work >= OPENVINO_MIN_MEGAPIXELS["exported"]:
            from backend.inference.openvino_warmup import background_warmer
            background_warmer().request(model_path, [tile_size], amp)
        return None
    try:
        predictor = _held_ir_predictor(model, model_path, tile_size, _openvino_precision(amp))
        predictor.compile_exported_shape()
    except Exception as exc:
        _LAST_OPENVINO.clear()  # nothing compiled: "compiled" would promise the next job what is not there
        log.warning("could not prepare OpenVINO for %s at tile %d (%s: %s); jobs run as before",
                    model_path.name, tile_size, type(exc).__name__, exc)
        return None
    from backend.inference.openvino_warmup import cache_budget_bytes, prune_cache
    for path in prune_cache(openvino_cache_dir(), cache_budget_bytes(), keep=[predictor.path]):
        log.info("removed %s from the OpenVINO cache (least recently used; over its budget)", path.name)
    return f"{model_path.name}, tile {tile_size}, {predictor.precision}"


def want_last_sessions_job() -> Optional[str]:
    """On the server's start, before any job: want OpenVINO compiled (by prepare_openvino_while_idle, which
    the caller has the idle job worker run) for the model file and tile of the last CPU job that any earlier
    backend ran, where its IR is still cached, jobs run on the CPU and openvino is installed: the first job
    at that tile then starts at once (2048²: 0.2 s of compile and 0.1 s of first inference). Returns what
    is wanted, or None."""
    if _PREVIOUS_CPU_JOB or resolve_device("auto") != "cpu" or not openvino_available():
        return None  # a job came first (it states its own wish), or jobs would not run OpenVINO
    last = read_last_job(Path(cache_root()))
    if last is None or openvino_ready(*last) != "exported":
        return None
    model_path, tile_size, amp = last

    def module():  # only should the cached IR prove unreadable and need making again
        from models.checkpoint import load_model_file
        return load_model_file(model_path)[0]

    _WANTED["last job"] = (LazyModel(module), model_path, tile_size, amp, False, 0.0)
    return f"{model_path.name}, tile {tile_size}"


def openvino_for_big_cpu_job(model, *, device: str, model_path=None, tile_size: int, expected_tiles: int,
                             amp: bool = True) -> Optional[OpenVinoPredictor]:
    """The OpenVINO predictor runtime "auto" uses for a CPU job big enough to repay OpenVINO's start-up
    (OPENVINO_MIN_MEGAPIXELS, by what openvino_ready finds) where openvino is installed, else None (a
    GPU, a small job, no openvino, or an export/compile failure, logged). A job with a model file that
    found OpenVINO not ready is remembered for prepare_openvino_while_idle."""
    _WANTED.clear()  # only the latest job's wish is prepared
    work = expected_tiles * tile_size * tile_size / 1e6
    if resolve_device(device) != "cpu" or work < min(OPENVINO_MIN_MEGAPIXELS.values()):
        return None
    lasting = model_path is not None and Path(model_path).is_file()  # an in-memory model has no lasting export
    key = (str(Path(model_path).resolve()), int(tile_size), bool(amp)) if lasting else None
    repeated = key is not None and _PREVIOUS_CPU_JOB.get("key") == key
    _PREVIOUS_CPU_JOB["key"] = key
    if not openvino_available():
        return None
    if lasting:
        record_last_job(Path(cache_root()), Path(model_path), tile_size, amp)
    if work < OPENVINO_MIN_MEGAPIXELS[openvino_ready(model_path, tile_size, amp)]:
        if lasting:
            _WANTED["last job"] = (model, Path(model_path), int(tile_size), amp, repeated, work)
        return None
    def pytorch():  # what auto would have run otherwise, should OpenVINO fail to compile the model mid-job
        return TorchPredictor(_module(model), device="cpu", as_tensor=True, cpu_bf16=amp and cpu_has_native_bf16())

    try:
        return _openvino_predictor(model, model_path, tile_size, amp, fallback=pytorch)
    except Exception as exc:
        log.warning("OpenVINO unavailable for this model (%s); using another runtime", exc)
        return None


def make_predictor(model, *, device: str = "auto", runtime: str = "auto", model_path=None,
                   tile_size: int = 512, expected_tiles: int = 0, amp: bool = True):
    """A predictor for the engine.

    runtime: "torch" (PyTorch on `device`: fp16 autocast on CUDA when `amp`, fp32 on CPU), "onnx" (ONNX
    Runtime on CPU; error if it cannot be exported), "openvino" (OpenVINO on CPU, bf16 where the CPU has
    native bf16 and `amp`, else fp32; error if openvino is missing or the export fails), "compile"
    (PyTorch through torch.compile, with auto's precision: fp16 on CUDA, bf16 on CPUs with native bf16,
    else fp32; uncompiled where compiling fails), or "auto": PyTorch on CUDA; on CPU, OpenVINO for jobs
    computing at least OPENVINO_MIN_MEGAPIXELS (expected_tiles x tile_size²; 40 or 1 MP by what is
    ready, any size once compiled, see openvino_ready) where installed, else ONNX Runtime for jobs of
    ONNX_MIN_MEGAPIXELS on CPUs without native bf16; otherwise (or where those fail) PyTorch, with bf16 autocast where
    the CPU has native bf16 (and `amp`), else fp32.
    """
    runtime = (runtime or "auto").lower()
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}: use {', '.join(repr(r) for r in RUNTIMES)}")
    resolved = resolve_device(device)
    work_mp = expected_tiles * tile_size * tile_size / 1e6
    if runtime == "compile":
        return TorchPredictor(_module(model), device=resolved, amp=amp, as_tensor=True, compile=True,
                              cpu_bf16=resolved == "cpu" and amp and cpu_has_native_bf16())
    if runtime == "openvino":
        if resolved != "cpu":
            raise InputError("runtime 'openvino' runs on the CPU; use runtime 'torch' for CUDA")
        try:
            return _openvino_predictor(model, model_path, tile_size, amp)
        except Exception as exc:
            detail = exc if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            raise InputError(f"the model could not be run with OpenVINO: {detail}") from None
    if runtime == "auto":
        chosen = openvino_for_big_cpu_job(model, device=resolved, model_path=model_path, tile_size=tile_size,
                                          expected_tiles=expected_tiles, amp=amp)
        if chosen is not None:
            return chosen
    if runtime == "auto" and resolved == "cpu" and amp and cpu_has_native_bf16():
        return TorchPredictor(_module(model), device="cpu", as_tensor=True, cpu_bf16=True)
    if runtime == "torch" or (runtime == "auto" and (resolved != "cpu" or work_mp < ONNX_MIN_MEGAPIXELS)):
        return TorchPredictor(_module(model), device=resolved, amp=amp, as_tensor=True)
    if runtime == "onnx" and resolved != "cpu":
        raise InputError("runtime 'onnx' runs on the CPU; use runtime 'torch' for CUDA")
    try:
        return _onnx_predictor(model, model_path, tile_size)
    except Exception as exc:
        if runtime == "onnx":
            raise InputError(f"the model could not be run with ONNX Runtime: {exc}") from None
        log.warning("ONNX Runtime unavailable for this model (%s); using PyTorch", exc)
        return TorchPredictor(_module(model), device=resolved, amp=amp, as_tensor=True)


def load_task_predictor(path, tasks: Sequence[str], device: str = "auto",
                        what: str = "model") -> Tuple[Any, Dict[str, Any]]:
    """(model or predictor, meta) of a model file whose task is one of `tasks`, for every pipeline.

    An exported ``.onnx`` file -> an OnnxRuntimePredictor on `device` (CUDA provider only for "cuda", or
    "auto" when onnxruntime offers it; fixed tile size, which the engine respects) and the metadata
    stored at export (models.onnx_export.read_onnx_meta). Any other file is a project model file
    (.pth) -> (nn.Module in eval mode, meta) from models.checkpoint.load_model_file, for the caller to
    wrap (make_predictor / TorchPredictor). Errors are InputErrors naming the file: missing,
    unreadable, exported without SkySense metadata, or a task not in `tasks`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} model file not found: {path}")
    if path.suffix.lower() == ".onnx":
        from models.onnx_export import OnnxExportError, read_onnx_meta
        try:
            meta = read_onnx_meta(path)
        except OnnxExportError as exc:
            raise InputError(f"{what} model {path} cannot be used: {exc}") from None
        _check_task(path, meta, tasks, what)
        try:
            model = OnnxRuntimePredictor(path, device=device)
        except InputError:
            raise
        except Exception as exc:  # onnxruntime's own errors: corrupt graph, unsupported operator...
            raise InputError(f"{what} model {path} cannot be loaded by ONNX Runtime "
                             f"({type(exc).__name__}: {exc})") from None
        return model, meta
    from models.checkpoint import CheckpointError, load_model_file
    try:
        model, meta = load_model_file(path)
    except CheckpointError as exc:
        raise InputError(f"{what} model {path} cannot be used: {exc}") from None
    _check_task(path, meta, tasks, what)
    return model, meta


def _check_task(path: Path, meta: Dict[str, Any], tasks: Sequence[str], what: str) -> None:
    if meta.get("task") not in tasks:
        raise InputError(f"{path} is a {meta.get('task')!r} model; the {what} step needs a "
                         f"{' or '.join(repr(t) for t in tasks)} model")
