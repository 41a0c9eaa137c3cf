"""Predictors: callables the engine feeds with a batch and gets class probabilities back.

Protocol: predictor(inputs: list of float32 numpy arrays [B, C_i, T, T], one per aligned input)
-> float32 numpy array [B, K, T, T] of class probabilities (softmax over K).
Attributes used by the engine when present: `device` (str).
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import logging
import os

import numpy as np
import torch

from backend.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["resolve_device", "cpu_has_native_bf16", "TorchPredictor", "OnnxRuntimePredictor", "onnx_providers",
           "FlipTTA", "as_predictor", "compile_module", "cache_root"]


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bfloat16 arithmetic in hardware (AVX512-BF16 or AMX): there bf16 autocast
    runs the tiny model ~1.3-1.5x faster; elsewhere it is emulated and slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    except Exception:  # an older torch or an unusual build: assume no
        return False


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when a CUDA GPU is usable, else "cpu"; asking for CUDA without one is an error."""
    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'")
        return device
    if device == "cpu":
        return "cpu"
    raise InputError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'")


CUDA_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchPredictor:
    """Runs an nn.Module under inference_mode, with autocast mixed precision where asked: on CUDA
    (`amp`, default on) in `cuda_dtype` ("fp16" or "bf16"), bfloat16 on the CPU (`cpu_bf16`, default
    off; worth it on CPUs with cpu_has_native_bf16()). fp32 otherwise; the same code path either way.
    The module returns logits (or probabilities with outputs='probs'); the engine always receives
    probabilities in float32.

    compile=True runs the module through torch.compile (compile_module): slow the first time for a
    model and tile shape, faster per tile after; batches smaller than the first one are padded to its
    size so one compiled graph serves the whole job. Where compiling fails it runs uncompiled."""

    def __init__(self, module: torch.nn.Module, device: str = "auto", amp: bool = True,
                 outputs: str = "logits", channels_last: bool | None = None, as_tensor: bool = False,
                 cpu_bf16: bool = False, compile: bool = False, cuda_dtype: str = "fp16"):
        if cuda_dtype not in CUDA_AMP_DTYPES:
            raise ValueError(f"cuda_dtype must be one of {sorted(CUDA_AMP_DTYPES)}, got {cuda_dtype!r}")
        self.as_tensor = as_tensor  # True: return the probabilities as a tensor on `device` (the engine
        # blends there, so only labels come back to the host); False: a numpy array
        self.device = resolve_device(device)
        on_cuda = self.device.startswith("cuda")
        self.amp_dtype = (CUDA_AMP_DTYPES[cuda_dtype] if on_cuda and amp else
                          torch.bfloat16 if not on_cuda and cpu_bf16 else None)
        self.amp = self.amp_dtype is not None
        self._precision = {None: "fp32", torch.float16: "fp16 mixed", torch.bfloat16: "bf16 mixed"}[self.amp_dtype]
        self.outputs = outputs
        # channels_last helps cuDNN convolutions, and oneDNN's fp32 ones on the CPU (tiny model, 2048²
        # engine run: 1.16x); under CPU bf16 autocast it gained nothing, so it is left off there.
        if channels_last is None:
            channels_last = on_cuda or self.amp_dtype is None
        self.channels_last = channels_last
        self.module = module.eval().to(self.device)
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.compiled = False
        self._batch = 0  # batch size of the compiled graph (the first batch's)
        self._batch_compiled = False  # True once the compiled graph has run
        self._eager = self.module
        self.split_batch = 0  # >0 once a batch ran out of GPU memory: the job goes on in slices this big
        if compile:
            self.module, self.compiled = compile_module(self.module)

    @property
    def precision(self) -> str:
        return (self._precision + (", compiled" if self.compiled else "")
                + (f", {self.split_batch} tiles per model call (GPU memory)" if self.split_batch else ""))

    @property
    def startup_note(self):
        """What the first batch will do besides predicting (shown in the job's progress), or None."""
        if self.compiled and not self._batch_compiled:
            return "compiling the model first: minutes the first time for a tile size, seconds after"
        return None

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if self.device.startswith("cuda"):
            t = t.pin_memory().to(self.device, non_blocking=True)
        if self.channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _run(self, tensors: list) -> torch.Tensor:
        if not self.compiled or self._batch_compiled:
            return self.module(*tensors)
        # torch.compile compiles at the first call: a missing C++ compiler shows up only here
        try:
            out = self.module(*tensors)
        except Exception as exc:
            log.warning("torch.compile failed (%s: %s); running the model uncompiled", type(exc).__name__,
                        str(exc).splitlines()[0] if str(exc) else "")
            self.module, self.compiled = self._eager, False
            return self.module(*tensors)
        self._batch_compiled = True
        return out

    def _pad_batch(self, tensors: list) -> tuple:
        """Pad a short batch with zero tiles to the compiled batch size (a new size would recompile)."""
        n = tensors[0].shape[0]
        self._batch = self._batch or n
        if n >= self._batch:
            return tensors, n
        padded = [torch.cat([t, t.new_zeros((self._batch - n,) + tuple(t.shape[1:]))]) for t in tensors]
        # cat may change the memory layout, and a new layout (strides) would recompile as well
        return [t.contiguous(memory_format=torch.channels_last) if self.channels_last and t.ndim == 4 else t
                for t in padded], n

    def __call__(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities of one batch. A batch that runs out of GPU memory is retried in halves (down to
        one tile), and later batches of the job start from that size: a smaller GPU finishes the job
        instead of failing it. Compiled graphs have one batch shape, so they are not split."""
        n = inputs[0].shape[0]
        while True:
            step = min(n, self.split_batch or n)
            try:
                if step == n:
                    return self._predict(inputs)
                parts = [self._predict([a[i:i + step] for a in inputs]) for i in range(0, n, step)]
                return torch.cat(parts) if self.as_tensor else np.concatenate(parts)
            except torch.cuda.OutOfMemoryError:
                if step == 1 or self.compiled:
                    raise
                self.split_batch = step // 2
            # outside the except block: the failed batch's tensors are released before the cache is emptied
            log.warning("out of GPU memory with %d tiles per model call; going on with %d", step, self.split_batch)
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()

    def _forward(self, tensors: list) -> torch.Tensor:
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        autocast = torch.autocast(device_type, dtype=self.amp_dtype) if self.amp else nullcontext()
        with torch.inference_mode(), autocast:
            return self._run(tensors)

    def _predict(self, inputs: Sequence[np.ndarray]):
        tensors = [self._tensor(a) for a in inputs]
        n = tensors[0].shape[0]
        if self.compiled:
            tensors, n = self._pad_batch(tensors)
        out = self._forward(tensors)[:n].float()
        if self.amp and not bool(torch.isfinite(out).all()):
            # fp16 overflows where a model's activations exceed 65504 (large models, some trained weights):
            # the labels would be garbage, so this batch and the rest of the job run in fp32
            log.warning("the model gave non-finite values in %s; running the rest of the job in fp32",
                        self._precision)
            self.amp, self.amp_dtype = False, None
            self._precision = f"fp32 (non-finite in {self._precision})"
            out = self._forward(tensors)[:n].float()
        if self.outputs == "logits":
            out = torch.softmax(out, dim=1)
        return out if self.as_tensor else out.cpu().numpy()


def cache_root() -> str:
    """The backend's cache folder (ONNX exports, compiled kernels): $SKYSENSE_CACHE or ~/.cache/skysense-qgis."""
    return os.environ.get("SKYSENSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "skysense-qgis")


def inductor_cache_dir() -> str:
    """Where compiled kernels are kept between runs, so a model and tile shape pay the compile once
    per machine, not once per job."""
    return os.path.join(cache_root(), "inductor")


def _use_skysense_kernel_cache() -> None:
    """Point inductor at inductor_cache_dir() unless the user chose a folder. torch writes its default
    (a /tmp folder, lost at reboot) into the variable the first time it looks, so that value counts as unset."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        torch_default = os.path.abspath(default_cache_dir())
    except Exception:  # private helper moved: only an unset variable counts as unset
        torch_default = None
    if current is None or os.path.abspath(current) == torch_default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache_dir()


def compile_module(module: torch.nn.Module) -> tuple:
    """(torch.compile'd module, True), or (module, False) with a logged warning where compiling is
    impossible (no C++ compiler, an unsupported platform or operator). Static shapes: tiles and
    batches have one size per job. The kernel cache lives in inductor_cache_dir() unless
    TORCHINDUCTOR_CACHE_DIR says otherwise."""
    _use_skysense_kernel_cache()
    try:
        return torch.compile(module, dynamic=False), True
    except Exception as exc:  # compile is an optimisation: never fail a job over it
        log.warning("torch.compile is unavailable (%s: %s); running the model uncompiled", type(exc).__name__, exc)
        return module, False


def onnx_providers(device: str = "auto") -> list:
    """onnxruntime providers for a device: "cpu" -> CPU only; "auto" -> CUDA first when onnxruntime
    offers it; "cuda" / "cuda:N" -> CUDA (device N), an InputError when onnxruntime has no CUDA provider."""
    import onnxruntime as ort

    device = (device or "auto").lower()
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "auto":
        return (["CUDAExecutionProvider"] if has_cuda else []) + ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if not has_cuda:
            raise InputError("device 'cuda' was requested but this onnxruntime has no CUDA provider "
                             "(install onnxruntime-gpu, or use 'auto' or 'cpu')")
        index = device.partition(":")[2]
        return [("CUDAExecutionProvider", {"device_id": int(index)}) if index.isdigit() else "CUDAExecutionProvider",
                "CPUExecutionProvider"]
    raise InputError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'")


class OnnxRuntimePredictor:
    """Runs an ONNX model with onnxruntime: the CUDA provider only when asked for ("cuda") or, with
    "auto", when onnxruntime offers it; "cpu" never touches CUDA (see onnx_providers).

    `session_or_path`: an onnxruntime.InferenceSession, a path to a .onnx file, or any object with
    a `run(None, feeds)`-style session attribute (e.g. models.onnx_export.OnnxPredictor.session)."""

    def __init__(self, session_or_path, device: str = "auto", outputs: str = "logits"):
        import onnxruntime as ort

        self.outputs = outputs
        if isinstance(session_or_path, ort.InferenceSession):
            self.session = session_or_path
        elif hasattr(session_or_path, "session"):
            self.session = session_or_path.session
        else:
            providers = onnx_providers(device)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = ort.InferenceSession(str(session_or_path), options, providers=providers)
            if str(device).lower().startswith("cuda") and "CUDAExecutionProvider" not in self.session.get_providers():
                raise InputError(f"device 'cuda' was requested but onnxruntime could not start CUDA for "
                                 f"{Path(str(session_or_path)).name}; use 'auto' or 'cpu'")
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.precision = "fp32, ONNX Runtime"
        self.input_names = [i.name for i in self.session.get_inputs()]
        shape = self.session.get_inputs()[0].shape  # [batch, C, H, W]; H, W fixed at export
        self.fixed_tile_size = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else None

    def __call__(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in zip(self.input_names, inputs)}
        out = self.session.run(None, feeds)[0].astype(np.float32, copy=False)
        if self.outputs == "logits":
            out = out - out.max(axis=1, keepdims=True)
            np.exp(out, out=out)
            out /= out.sum(axis=1, keepdims=True)
        return out


class FlipTTA:
    """Test-time augmentation: average the probabilities of the original and flipped tiles
    (horizontal, vertical, both), mapped back. Costs one extra prediction per flip; smooths
    orientation-dependent errors of models trained without rotation invariance."""

    def __init__(self, base: Callable, flips: Sequence[str] = ("h", "v")):
        self.base = base
        self.flips = [() if f == "none" else {"h": (-1,), "v": (-2,), "hv": (-2, -1)}[f] for f in flips]
        self.device = getattr(base, "device", "cpu")
        self.precision = getattr(base, "precision", None)
        self.fixed_tile_size = getattr(base, "fixed_tile_size", None)
        self.preferred_batch_size = getattr(base, "preferred_batch_size", None)

    def __call__(self, inputs: Sequence[np.ndarray]):
        first = self.base(inputs)
        on_device = isinstance(first, torch.Tensor)  # keep tensors where the base model put them
        total = first.float().clone() if on_device else np.asarray(first, dtype=np.float32).copy()
        for axes in self.flips:
            out = self.base([np.ascontiguousarray(np.flip(a, axis=axes)) for a in inputs])
            total += torch.flip(out.float(), dims=axes) if on_device else np.flip(np.asarray(out, np.float32), axis=axes)
        total /= 1 + len(self.flips)
        return total


def as_predictor(model, device: str = "auto", amp: bool = True) -> Callable:
    """nn.Module -> TorchPredictor; anything else callable is taken to follow the protocol already."""
    if isinstance(model, torch.nn.Module):
        return TorchPredictor(model, device=device, amp=amp, as_tensor=True)
    if callable(model):
        return model
    raise TypeError(f"not a model or predictor: {type(model).__name__}")
