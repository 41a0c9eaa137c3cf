"""ONNX export of the task models and an onnxruntime predictor.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The dynamo exporter
of torch 2.13 fails on the Swin window attention (its SDPA decomposition emits an invalid
view), while the TorchScript path exports it exactly (max |diff| ~1e-6 on the tiny model).
The spatial size is fixed at export (``tile_size``), the batch dimension is dynamic.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

PathLike = Union[str, os.PathLike]
INPUT_NAMES = {"segmentation": ["image"], "change": ["pre", "post"], "damage": ["pre", "post"]}
META_KEY = "skysense_meta"


class OnnxExportError(Exception):
    """The model cannot be exported, or the exported graph is not valid."""


def export_onnx(model: nn.Module, path: PathLike, tile_size: int = 512, in_chans: Optional[int] = None,
                opset: int = 17, meta: Optional[Mapping[str, Any]] = None, check: bool = True) -> Path:
    """Export a segmentation / change / damage model to ``path`` (temp file + rename).

    Inputs are float32 NCHW named ``image`` (segmentation) or ``pre``/``post``; the output
    is ``logits`` [B, K, tile, tile]. ``meta`` (JSON-able, e.g. the model file's classes and
    normalisation) is stored in the ONNX metadata under ``skysense_meta``.
    """
    task = getattr(model, "task", None)
    if task not in INPUT_NAMES:
        raise OnnxExportError(f"ONNX export supports {sorted(INPUT_NAMES)} models, not {task!r}")
    if tile_size <= 0 or tile_size % 32:
        raise OnnxExportError(f"tile_size must be a positive multiple of 32, got {tile_size}")
    in_chans = in_chans or getattr(model, "in_chans", 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = INPUT_NAMES[task]
    was_training = model.training
    model = model.eval()
    device = next(model.parameters()).device
    example = tuple(torch.zeros(2, in_chans, tile_size, tile_size, device=device) for _ in names)
    dynamic = {n: {0: "batch"} for n in names + ["logits"]}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python ints are expected here
            torch.onnx.export(model, example, tmp, input_names=names, output_names=["logits"],
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)
        _finalise(tmp, meta, tile_size, task, check)
        os.replace(tmp, path)
    except OnnxExportError:
        raise
    except Exception as exc:
        raise OnnxExportError(f"{path}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
        model.train(was_training)
    return path


def _finalise(tmp: str, meta: Optional[Mapping[str, Any]], tile_size: int, task: str, check: bool) -> None:
    import onnx

    proto = onnx.load(tmp)
    info = {k: v for k, v in (meta or {}).items() if k != "state_dict"}
    info.update(tile_size=tile_size, task=task)  # what the graph is, whatever the model file's meta said
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(info, default=str)
    if check:
        onnx.checker.check_model(proto)
    onnx.save(proto, tmp)


def read_onnx_meta(path: PathLike) -> Dict[str, Any]:
    """The SkySense metadata of an exported .onnx file, without building an onnxruntime session.

    Same shape as ``models.checkpoint.read_model_meta`` for .pth files (task, classes, bands,
    normalization, tile_size, gsd, metrics...), plus ``"runtime": "onnx"`` and ``"inputs"`` (the graph's
    input names). ``tile_size`` and ``in_chans`` come from the graph itself (fixed at export).
    Raises OnnxExportError naming the file: unreadable, exported without SkySense metadata, or
    inputs that do not match the task.
    """
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise OnnxExportError(f"{path.name} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise OnnxExportError(f"{path.name} was exported without SkySense metadata (no '{META_KEY}' entry): "
                              "re-export it from the .pth model file with `python -m backend.cli export-onnx`")
    try:
        meta = json.loads(props[META_KEY])
    except ValueError as exc:
        raise OnnxExportError(f"{path.name}: its '{META_KEY}' metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise OnnxExportError(f"{path.name}: its '{META_KEY}' metadata is not a JSON object")
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    names = [i.name for i in inputs]
    task = meta.get("task")
    if task not in INPUT_NAMES:
        raise OnnxExportError(f"{path.name}: unknown task {task!r} in its metadata (expected one of {sorted(INPUT_NAMES)})")
    if names != INPUT_NAMES[task]:
        raise OnnxExportError(f"{path.name}: a {task!r} model needs inputs {INPUT_NAMES[task]}, the graph has {names}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[2]:
        meta["tile_size"] = int(dims[2])
    if len(dims) == 4 and dims[1]:
        meta["in_chans"] = int(dims[1])
    meta.update(runtime="onnx", inputs=names)
    return meta


def available_providers(device: str = "auto") -> List[str]:
    """onnxruntime providers for ``"auto"`` (CUDA when present), ``"cuda"`` or ``"cpu"``."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in have:
            raise OnnxExportError(f"device 'cuda' asked for, but onnxruntime offers only {have}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class OnnxPredictor:
    """Runs an exported model: ``predictor(batch[B,C,H,W] float32, ...) -> logits ndarray``."""

    def __init__(self, path: PathLike, device: str = "auto", threads: Optional[int] = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxExportError(f"{self.path}: no such ONNX file")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                providers=available_providers(device))
        except Exception as exc:
            raise OnnxExportError(f"{self.path}: cannot load ONNX model ({type(exc).__name__}: {exc})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_shape = self.session.get_inputs()[0].shape  # ['batch', C, H, W]
        raw = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        self.meta: Dict[str, Any] = json.loads(raw) if raw else {}

    @property
    def providers(self) -> List[str]:
        return self.session.get_providers()

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def __call__(self, *batches: np.ndarray) -> np.ndarray:
        if len(batches) != len(self.input_names):
            raise ValueError(f"{self.path.name} takes {len(self.input_names)} inputs "
                             f"({', '.join(self.input_names)}), got {len(batches)}")
        feeds = {}
        for name, arr in zip(self.input_names, batches):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            want = self.input_shape[1:]
            if arr.ndim != 4 or any(isinstance(w, int) and w != a for w, a in zip(want, arr.shape[1:])):
                raise ValueError(f"{name}: expected [B, {', '.join(map(str, want))}], got {list(arr.shape)}")
            feeds[name] = arr
        return self.session.run(["logits"], feeds)[0]
