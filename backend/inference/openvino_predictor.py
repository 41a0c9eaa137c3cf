"""OpenVINO on the CPU: runs an exported ONNX model (models.onnx_export) with the predictor protocol.

On the benchmark CPU (AVX512-BF16) OpenVINO ran the tiny model ~1.7x faster than PyTorch eager in fp32
with identical labels, and ~2.8x in bf16 (`make bench`, sections 1-2). The model is compiled once per tile
shape, for one tile per inference (static shapes ran faster than OpenVINO's dynamic batch here: 0.051
against 0.076 s per 512 tile), in throughput mode: two streams share the inference threads, each with
its own infer request, so the engine's batch is one tile per stream and a batch's tiles run side by side.
On 2 cores that ran the model calls alone 12-14 % faster than one two-threaded stream, and the engine
4-5 % faster (2048² and 6144², identical labels).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from backend.errors import InputError

__all__ = ["openvino_available", "OpenVinoPredictor", "save_probability_ir"]

log = logging.getLogger(__name__)


def openvino_available() -> bool:
    """True when the openvino package imports and offers its CPU plugin."""
    try:
        import openvino as ov
        return "CPU" in ov.Core().available_devices
    except Exception:  # not installed, or a broken install: the other runtimes remain
        return False


class OpenVinoPredictor:
    """An ONNX file compiled by OpenVINO for the CPU.

    precision: "bf16" (bfloat16 inference, for CPUs with it in hardware), "fp32", or "auto" (bf16 where
    the CPU does bf16 natively). threads: OpenVINO's inference threads (default: torch's, so every
    runtime uses the same cores). streams: tiles computed at once, sharing those threads (default 2, 1 with
    one thread); the engine's batch (preferred_batch_size). outputs="logits" turns the model's logits into
    probabilities; outputs="probabilities" takes the model as it is (an IR from save_probability_ir, which
    is then compiled straight from its file: with cache_dir, a later process loads the compiled model
    without reading or converting the graph, 0.2 s against 2.2 s from the ONNX file).
    fallback: builds the predictor a job continues with when OpenVINO cannot compile the model (runtime
    "auto" gives PyTorch, with a logged warning); without one, that failure is an InputError naming the file.
    cache_dir: OpenVINO keeps compiled models there, so compiling the same model and shape again (a later
    job, another process) loads it instead (tiny model, tile 512: 0.8 s against 1.6 s).
    """

    def __init__(self, path, precision: str = "auto", threads: Optional[int] = None, outputs: str = "logits",
                 fallback: Optional[Callable[[], Callable]] = None, cache_dir=None,
                 streams: Optional[int] = None):
        try:
            import openvino as ov
        except ImportError:
            raise InputError("runtime 'openvino' needs the openvino package in the backend's environment "
                             "(pip install openvino), or use runtime 'auto'") from None
        import torch

        from backend.inference.predictors import cpu_has_native_bf16

        if precision not in ("auto", "bf16", "fp32"):
            raise InputError(f"unknown OpenVINO precision {precision!r}: use 'auto', 'bf16' or 'fp32'")
        bf16 = precision == "bf16" or (precision == "auto" and cpu_has_native_bf16())
        self.path = Path(path)
        self.outputs = outputs
        self.device = "cpu"
        self.precision = f"{'bf16' if bf16 else 'fp32'}, OpenVINO"
        self._core = ov.Core()
        if cache_dir is not None:
            try:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                self._core.set_property({"CACHE_DIR": str(cache_dir)})
            except (OSError, RuntimeError) as exc:  # a read-only cache only costs compile time
                log.warning("OpenVINO model cache %s unusable (%s); compiling without it", cache_dir, exc)
        threads = int(threads or torch.get_num_threads())
        streams = max(1, min(int(streams or 2), threads))
        self._config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "INFERENCE_NUM_THREADS": threads,
                        "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY", "NUM_STREAMS": streams}
        if outputs not in ("logits", "probabilities"):
            raise InputError(f"unknown OpenVINO outputs {outputs!r}: use 'logits' or 'probabilities'")
        self._requests: Dict[Tuple[tuple, ...], list] = {}  # one-tile input shapes -> a request per stream
        self.preferred_batch_size = streams
        self._model = None  # the graph, read when a shape other than the file's is wanted (or to compile it)
        # A probability IR with one-tile shapes compiles straight from its file: with OpenVINO's cache that
        # loads the compiled model without reading the graph at all (0.2 s, against 0.4 s reading it first)
        compiled = self._compiled_file() if outputs == "probabilities" else None
        if compiled is not None:
            self._file_shapes = _static_shapes(compiled)
            self.input_names = [port.get_any_name() for port in compiled.inputs]
            self._requests[self._file_shapes] = [compiled.create_infer_request() for _ in range(streams)]
            ports = compiled.inputs
        else:
            self._model = self._graph()
            if outputs == "logits":
                self._model = _with_softmax(self._model)
            # the file's own graph and one-tile shapes, which compile from the file (and OpenVINO's cache)
            self._file_shapes = (_static_shapes(self._model) if outputs == "probabilities" else None)
            self.input_names = [port.get_any_name() for port in self._model.inputs]
            ports = self._model.inputs
        shape = ports[0].get_partial_shape()  # [batch, C, H, W]; H, W fixed at export
        self.fixed_tile_size = (shape[2].get_length() if shape.rank.get_length() == 4 and shape[2].is_static
                                else None)
        self._input_shapes = [port.get_partial_shape() for port in ports]
        self._precision = self.precision
        self.start_job(fallback)

    def start_job(self, fallback: Optional[Callable[[], Callable]] = None) -> None:
        """A new job begins (the compiled shapes are kept): `fallback` as in __init__."""
        self._fallback, self._replacement = fallback, None
        self.precision = self._precision

    def compile_exported_shape(self) -> None:
        """Compile now, for one tile of the shape the model was exported at (the engine's fitted tile),
        what the first batch of a job would otherwise compile, and run a blank tile through every stream:
        a compiled model's first inference also allocates its buffers (1024²: 0.1 s of a 0.35 s job)."""
        shapes = []
        for shape in self._input_shapes:
            if not shape[1:].is_static:
                raise ValueError(f"{self.path.name} was exported without a fixed tile shape ({shape})")
            shapes.append((1,) + tuple(int(d.get_length()) for d in shape[1:]))
        requests = self._requests_for(tuple(shapes))
        blank = [np.zeros(shape, np.float32) for shape in shapes]
        started = []
        try:
            for request in requests:
                request.start_async(dict(zip(self.input_names, blank)))
                started.append(request)
            for request in started:
                request.wait()
        except BaseException:
            _settle(started)
            raise

    def _graph(self):
        """The model's graph, read from the file (once)."""
        if self._model is None:
            try:
                self._model = self._core.read_model(str(self.path))
            except Exception as exc:
                raise InputError(f"model {self.path} cannot be read by OpenVINO "
                                 f"({type(exc).__name__}: {exc})") from None
        return self._model

    def _compiled_file(self):
        """The file compiled as it is, or None where its shapes are not one tile's or it does not compile
        (the graph is then read, which names a damaged file; a compile failure comes with the first tile)."""
        try:
            compiled = self._core.compile_model(str(self.path), "CPU", self._config)
        except Exception:
            return None
        shapes = _static_shapes(compiled)
        return compiled if shapes is not None and all(shape[0] == 1 for shape in shapes) else None

    def _compile_failed(self, shapes: Tuple[tuple, ...], exc: Exception):
        what = f"OpenVINO could not compile {self.path.name} for inputs {list(shapes)} ({type(exc).__name__}: {exc})"
        if self._fallback is None:
            raise InputError(f"{what}; use another runtime") from None
        log.warning("%s; this job continues with the fallback runtime", what)
        self._replacement = self._fallback()
        self.precision = getattr(self._replacement, "precision", None)
        return self._replacement

    def _requests_for(self, shapes: Tuple[tuple, ...]) -> list:
        requests = self._requests.get(shapes)
        if requests is None:
            if shapes == self._file_shapes:
                compiled = self._core.compile_model(str(self.path), "CPU", self._config)
            else:
                model = self._graph().clone()
                model.reshape({name: list(shape) for name, shape in zip(self.input_names, shapes)})
                compiled = self._core.compile_model(model, "CPU", self._config)
            requests = [compiled.create_infer_request() for _ in range(self.preferred_batch_size)]
            self._requests[shapes] = requests
        return requests

    def __call__(self, inputs: Sequence[np.ndarray]):
        if self._replacement is not None:
            return self._replacement(inputs)
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in inputs]
        shapes = tuple((1,) + a.shape[1:] for a in arrays)
        try:
            requests = self._requests_for(shapes)
        except Exception as exc:  # an operator or shape the CPU plugin cannot compile
            return self._compile_failed(shapes, exc)(inputs)
        n = arrays[0].shape[0]
        out = None
        for first in range(0, n, len(requests)):
            wave = list(zip(range(first, n), requests))
            started = []
            try:
                for i, request in wave:  # the tiles of a wave run side by side, one per stream
                    request.start_async({name: a[i:i + 1] for name, a in zip(self.input_names, arrays)})
                    started.append(request)
                for i, request in wave:
                    request.wait()
                    # the output tensor is the request's own buffer, reused by its next tile: copy it out
                    tile = request.get_output_tensor(0).data
                    if out is None:
                        out = np.empty((n,) + tile.shape[1:], np.float32)
                    out[i] = tile[0]
            except BaseException:
                _settle(started)  # a request still running would refuse the next batch ("busy")
                raise
        return out


def _settle(requests: list) -> None:
    """Wait for every started infer request, ignoring their errors (one is being raised already)."""
    for request in requests:
        try:
            request.wait()
        except Exception:
            pass


def _with_softmax(model):
    """The model with a softmax over classes (axis 1) after its first output: OpenVINO computes it on
    all inference threads, where numpy's took 2-4 % of a tile's time on one."""
    import openvino as ov
    from openvino import opset13

    logits = model.get_results()[0].input_value(0)
    probs = opset13.softmax(logits, 1)
    return ov.Model([opset13.result(probs)], model.get_parameters(), model.get_friendly_name())


def _static_shapes(model) -> Optional[Tuple[tuple, ...]]:
    """The model's input shapes as int tuples, or None if any dimension is dynamic."""
    shapes = []
    for port in model.inputs:
        shape = port.get_partial_shape()
        if not shape.is_static:
            return None
        shapes.append(tuple(int(d.get_length()) for d in shape))
    return tuple(shapes)


def save_probability_ir(onnx_path, xml_path) -> Path:
    """Save an exported ONNX model as OpenVINO IR (xml + bin, weights kept in fp32) with the softmax over
    classes and a batch of one tile: what OpenVinoPredictor(xml_path, outputs="probabilities") compiles
    straight from the file. Written under temporary names and renamed (bin first), so a reader never sees
    half a pair."""
    import openvino as ov

    xml_path = Path(xml_path)
    model = _with_softmax(ov.Core().read_model(str(onnx_path)))
    model.reshape({port.get_any_name(): [1] + [int(d.get_length()) for d in port.get_partial_shape()[1:]]
                   for port in model.inputs})
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml_path.with_name(f".{xml_path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.xml")
    try:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(tmp, xml_path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    return xml_path
