"""Post-training int8 quantization on the CPU: engine speed and real-data accuracy against fp32 and bf16.

bench_int8(tmp, size, results) -> a printed table (section 5 of `make bench`, wired in by run_all):
  * speed: seconds of the engine (tile 512 overlap 64, batch 0 = auto) on a size x size synthetic raster,
    best of run_all.REPEAT interleaved rounds (every runtime once per round, so a slow spell on a shared
    machine hits them all), for
      - PyTorch fp32, and bf16 autocast (on CPUs with bf16 in hardware);
      - PyTorch int8 dynamic: torch.ao.quantization.quantize_dynamic on nn.Linear (the Swin attention's
        qkv projection is called through F.linear with a composed bias, and the position-bias MLP runs on
        a constant table: both stay fp32);
      - ONNX Runtime fp32, and int8 dynamic: onnxruntime.quantization.quantize_dynamic on the MatMul /
        Gemm nodes (weights int8; activations quantized per batch at run time, no calibration data);
      - ONNX Runtime int8 static QDQ: quantize_static on MatMul / Gemm / Conv, activation ranges calibrated
        (MinMax) on crops of the LoveDA tiles' training regions (never their held-out strips). Only
        measured with the sample data present. Benchmark-only: a job has no calibration data for a model.
  * accuracy: overall accuracy and mIoU on the held-out strips of the real LoveDA sample tiles
    (backend.trainers.train_defaults.heldout_window, the right-most 256 columns), and the share of labels
    identical to PyTorch fp32 over the whole tiles.
The ONNX graphs are exported at the tile the engine fits (plan_tiles), so every runtime runs the same tiles.
Run alone: PYTHONPATH=. python -m benchmarks.quantized [--size 2048] [--repeat 3]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch

from backend.inference.engine import EngineInput, run_inference
from backend.inference.predictors import OnnxRuntimePredictor, TorchPredictor, cpu_has_native_bf16
from backend.io.tiling import plan_tiles
from benchmarks import run_all
from benchmarks.models import DEFAULT_MODEL, build_model
from benchmarks.run_all import CLASSES, NORM, ROOT, table
from benchmarks.synthetic import make_test_raster
from benchmarks.timing import best_of_each

FP32 = "PyTorch fp32"
BF16 = "PyTorch bf16 autocast"
TORCH_INT8 = "PyTorch int8 dynamic (Linear)"
ORT_FP32 = "ONNX Runtime fp32"
ORT_INT8 = "ONNX Runtime int8 dynamic (MatMul)"
ORT_STATIC = "ONNX Runtime int8 static QDQ (MatMul+Conv)"


# --- quantization -----------------------------------------------------------------------------------------

def quantize_torch_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with its nn.Linear layers dynamically quantized to int8, except the attention
    qkv projections (used through F.linear(x, qkv.weight, ...)) and the position-bias MLPs."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    model = copy.deepcopy(model).cpu().eval()
    names = {name: default_dynamic_qconfig for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and "cpb_mlp" not in name and not name.endswith(".qkv")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        return quantize_dynamic(model, names, dtype=torch.qint8)


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization warns on the root logger (pre-processing advice): keep the tables clean."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_onnx_dynamic(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                         per_channel=False, reduce_range=False)
    return dst


def quantize_onnx_static(src: Path, dst: Path, batches: list) -> Path:
    """QDQ int8 (uint8 activations, per-channel int8 weights) of MatMul / Gemm / Conv, calibrated on
    `batches` (float32 [1, C, T, T], normalised like the model's inputs)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"image": b} for b in batches])

        def get_next(self):
            return next(self.feeds, None)

    pre = dst.with_suffix(".pre.onnx")
    with _quiet():
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=False)
    pre.unlink(missing_ok=True)
    return dst


# --- data -------------------------------------------------------------------------------------------------

def _loveda():
    """(data folder, model, meta) when the default model and the LoveDA sample tiles are present, else None."""
    data = Path(os.environ.get("SKYSENSE_DATA") or ROOT.parent / "shared" / "data")
    if not DEFAULT_MODEL.exists() or not (data / "loveda").is_dir():
        return None
    from models.checkpoint import load_model_file
    model, meta = load_model_file(DEFAULT_MODEL)
    return data, model, meta


def _calibration_batches(data: Path, meta: dict, tile: int) -> list:
    """Corner crops (tile x tile) of every LoveDA tile's training region, normalised: 4 per tile."""
    from backend.datasets.loveda import read_loveda_tile
    from backend.trainers.train_defaults import TILES, split_regions

    norm = meta["normalization"]["hr"]
    mean = np.asarray(norm["mean"], np.float32)[:, None, None]
    std = np.asarray(norm["std"], np.float32)[:, None, None]
    batches = []
    for tile_id in TILES:
        image = read_loveda_tile(data, tile_id)[0]
        rows, cols = split_regions(*image.shape[1:])["train"]
        train = image[:, rows, cols]
        h, w = train.shape[1:]
        for r in sorted({0, max(0, h - tile)}):
            for c in sorted({0, max(0, w - tile)}):
                crop = np.zeros((3, tile, tile), np.float32)
                part = train[:, r:r + tile, c:c + tile]
                crop[:, :part.shape[1], :part.shape[2]] = part
                batches.append(((crop - mean) / std)[None].astype(np.float32))
    return batches


def _labels(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _file(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


# --- runtimes ---------------------------------------------------------------------------------------------

def _predictors(model, folder: Path, tile: int, notes: list, calibration=None) -> dict:
    """name -> predictor for every runtime this machine can run (the ONNX ones fixed at `tile`)."""
    from models.onnx_export import export_onnx

    runners = {FP32: TorchPredictor(model, device="cpu", as_tensor=True)}
    if cpu_has_native_bf16():
        runners[BF16] = TorchPredictor(model, device="cpu", as_tensor=True, cpu_bf16=True)
    start = time.perf_counter()
    runners[TORCH_INT8] = TorchPredictor(quantize_torch_int8(model), device="cpu", as_tensor=True)
    notes.append(f"PyTorch quantize_dynamic: {time.perf_counter() - start:.1f}s "
                 f"(quantized engine {torch.backends.quantized.engine})")
    fp32 = folder / f"q_tiny_{tile}.onnx"
    try:
        start = time.perf_counter()
        export_onnx(model, fp32, tile_size=tile)
        exported = time.perf_counter()
        dynamic = quantize_onnx_dynamic(fp32, folder / f"q_tiny_{tile}_dynamic.onnx")
        quantized = time.perf_counter()
    except Exception as exc:  # report, do not abort the other runs
        notes.append(f"ONNX Runtime runs skipped ({type(exc).__name__}: {exc})")
        return runners
    notes.append(f"ONNX export (tile {tile}): {exported - start:.1f}s; quantize_dynamic: {quantized - exported:.1f}s")
    runners[ORT_FP32] = OnnxRuntimePredictor(fp32, device="cpu")
    runners[ORT_INT8] = OnnxRuntimePredictor(dynamic, device="cpu")
    if calibration:
        try:
            start = time.perf_counter()
            static = quantize_onnx_static(fp32, folder / f"q_tiny_{tile}_static.onnx", calibration)
            notes.append(f"quantize_static (tile {tile}, {len(calibration)} calibration crops): "
                         f"{time.perf_counter() - start:.1f}s")
            runners[ORT_STATIC] = OnnxRuntimePredictor(static, device="cpu")
        except Exception as exc:
            notes.append(f"static QDQ skipped ({type(exc).__name__}: {exc})")
    return runners


def _real_accuracy(tmp: Path, loveda, notes: list) -> dict:
    """name -> (held-out OA, held-out mIoU, share of labels identical to fp32) on the LoveDA tiles."""
    from backend.datasets.loveda import georeference_loveda_tile, loveda_paths, read_loveda_tile
    from backend.trainers.metrics import ConfusionAccumulator
    from backend.trainers.train_defaults import TILES, heldout_window

    if loveda is None:
        notes.append("real-data accuracy skipped (no default model or no LoveDA sample data)")
        return {}
    data, model, meta = loveda
    norm = meta["normalization"]["hr"]
    names = [c["name"] for c in meta["classes"]]
    lookup = np.full(256, -1, np.int64)
    lookup[[c["value"] for c in meta["classes"]]] = np.arange(len(names))
    tifs, masks = {}, {}
    for tile_id in TILES:
        png, _ = loveda_paths(data, tile_id)
        tifs[tile_id] = georeference_loveda_tile(png, tmp / f"q_loveda_{tile_id}.tif", tile_id=tile_id)
        masks[tile_id] = read_loveda_tile(data, tile_id)[1]
    fitted = plan_tiles(*masks[TILES[0]].shape, 512, 64).tile
    scores = {}
    runners = _predictors(model, tmp, fitted, notes, _calibration_batches(data, meta, fitted))
    for name, predictor in runners.items():
        acc = ConfusionAccumulator(len(names))
        same = total = 0
        for tile_id in TILES:
            out = tmp / f"q_loveda_{tile_id}_{_file(name)}.tif"
            run_inference([EngineInput(tifs[tile_id], bands=[1, 2, 3], **norm)], predictor, out, meta["classes"],
                          tile_size=512, overlap=64, batch_size=0)
            pred, mask = _labels(out), masks[tile_id]
            window = heldout_window(*mask.shape)
            truth, guess = lookup[mask[window]], lookup[pred[window]]
            ok = (truth >= 0) & (guess >= 0)
            acc.update(truth[ok], guess[ok])
            ref = _labels(tmp / f"q_loveda_{tile_id}_{_file(FP32)}.tif")
            same += int((ref == pred).sum())
            total += ref.size
        s = acc.scores(names)
        scores[name] = (s["overall_accuracy"], s["miou"], same / total)
    return scores


# --- timing -----------------------------------------------------------------------------------------------

def bench_int8(tmp: Path, size: int, results: dict) -> str:
    """Engine speed (size x size synthetic raster) and real-data accuracy of int8 runtimes vs fp32 / bf16."""
    raster = tmp / f"speed_{size}.tif"
    if not raster.exists():
        make_test_raster(raster, size)
    model = build_model("tiny")
    loveda = _loveda()
    notes: list = []
    tile = plan_tiles(size, size, 512, 64).tile
    calibration = _calibration_batches(loveda[0], loveda[2], tile) if loveda else None
    runners = _predictors(model, tmp, tile, notes, calibration)
    mp = size * size / 1e6

    def engine(name):
        return lambda: run_inference([EngineInput(raster, **NORM)], runners[name], tmp / f"q_{_file(name)}.tif",
                                     CLASSES, tile_size=512, overlap=64, batch_size=0)

    for name in runners:  # warm-up: first-call allocations, kernel selection, ORT arenas
        engine(name)()
    secs = best_of_each({name: engine(name) for name in runners}, run_all.REPEAT)
    ref = _labels(tmp / f"q_{_file(FP32)}.tif")
    real = _real_accuracy(tmp, loveda, notes)
    base = secs[FP32]
    fmt = (lambda v, d=3: "-" if v is None else f"{v:.{d}f}")
    rows = []
    results["int8"] = {}
    for name, s in secs.items():
        agree = float((_labels(tmp / f"q_{_file(name)}.tif") == ref).mean())
        oa, miou, real_agree = real.get(name, (None, None, None))
        results["int8"][name] = {"seconds": s, "mps": mp / s, "speedup": base / s, "synthetic_agreement": agree,
                                 "real_oa": oa, "real_miou": miou, "real_agreement": real_agree}
        rows.append([name, f"{s:.2f}", f"{mp / s:.3f}", f"{base / s:.2f}x", f"{agree:.4f}", fmt(oa), fmt(miou),
                     fmt(real_agree, 4)])
    if not cpu_has_native_bf16():
        notes.append("bf16 autocast not measured: this CPU has no bf16 in hardware")
    if ORT_FP32 in secs and ORT_INT8 in secs:
        notes.append(f"int8 dynamic vs fp32 within ONNX Runtime: {secs[ORT_FP32] / secs[ORT_INT8]:.2f}x"
                     + (f"; static QDQ vs fp32 within ONNX Runtime: {secs[ORT_FP32] / secs[ORT_STATIC]:.2f}x"
                        if ORT_STATIC in secs else ""))
    return (table(f"5. int8 quantization on the CPU, engine tile 512/64 (fitted {tile}) batch auto, {size}x{size} px "
                  f"(torch threads {torch.get_num_threads()}, best of {run_all.REPEAT} interleaved rounds)",
                  ["runtime", "seconds", "MP/s", "vs PyTorch fp32", "labels = fp32 (synthetic)",
                   "held-out OA", "held-out mIoU", "labels = fp32 (LoveDA)"], rows)
            + "\n" + "\n".join(notes))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    run_all.REPEAT = max(1, args.repeat)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="skysense-int8-") as tmpdir:
        print(bench_int8(Path(tmpdir), args.size, results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
