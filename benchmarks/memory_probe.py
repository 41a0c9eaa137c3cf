"""One engine (or plain-loop) run in a fresh process, reporting its peak resident memory.

Run by benchmarks.run_all in a subprocess so each measurement starts from a clean process.
Peak = VmHWM from /proc/self/status (the resident high-water mark of this process image, reset at
exec); ru_maxrss is the fallback off Linux, but on Linux it starts at the parent's size at fork.
  python -m benchmarks.memory_probe RASTER OUT --model dummy|tiny [--runner engine|loop]
                                    [--runtime torch|openvino] [--tile 512 --overlap 64 --batch 0 (auto)]
Prints one JSON line: {"peak_rss_mb", "baseline_rss_mb", "seconds", "megapixels", "tiles"}.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def _status_mb(field: str):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_mb() -> float:
    now = _status_mb("VmRSS")
    return now if now is not None else _peak_mb()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("raster")
    ap.add_argument("out")
    ap.add_argument("--model", choices=["dummy", "tiny"], default="dummy")
    ap.add_argument("--runner", choices=["engine", "loop"], default="engine")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch", type=int, default=0, help="engine tiles per batch (0: the product's automatic choice)")
    ap.add_argument("--runtime", choices=["torch", "openvino"], default="torch",
                    help="engine predictor: PyTorch fp32, or OpenVINO as runtime auto picks it (exported first)")
    args = ap.parse_args(argv)

    import torch

    from backend.inference.engine import EngineInput, run_inference
    from backend.inference.predictors import TorchPredictor
    from benchmarks.models import build_model

    model = build_model(args.model)
    predictor = TorchPredictor(model, device="cpu", as_tensor=True)
    with torch.inference_mode():  # warm-up outside the measured run, so lazy init is in the baseline
        predictor([torch.zeros(1, 3, 64, 64).numpy()])
    if args.runtime == "openvino":  # the export is the job's setup, not its streaming: keep it out of the peak
        import tempfile
        from pathlib import Path

        from backend.inference.openvino_predictor import OpenVinoPredictor
        from backend.inference.predictors import cpu_has_native_bf16
        from backend.io.tiling import plan_tiles
        from models.onnx_export import export_onnx
        import rasterio

        with rasterio.open(args.raster) as src:
            fitted = plan_tiles(src.height, src.width, args.tile, args.overlap).tile
        onnx_path = export_onnx(model, Path(tempfile.mkdtemp(prefix="skysense-probe-")) / "m.onnx", tile_size=fitted)
        predictor = OpenVinoPredictor(onnx_path, precision="bf16" if cpu_has_native_bf16() else "fp32")
        import gc
        gc.collect()
    baseline = _current_mb()
    started = time.perf_counter()
    norm = dict(mean=[128.0] * 3, std=[64.0] * 3)
    if args.runner == "loop":
        from benchmarks.baseline_loop import plain_tile_loop
        import rasterio
        tiles = plain_tile_loop(args.raster, args.out, model, list(range(1, 8)), tile=args.tile, overlap=args.overlap,
                                **norm)
        with rasterio.open(args.raster) as src:
            megapixels = src.width * src.height / 1e6
    else:
        result = run_inference([EngineInput(args.raster, **norm)], predictor, args.out, list(range(1, 8)),
                               tile_size=args.tile, overlap=args.overlap, batch_size=args.batch)
        tiles, megapixels = result.tiles, result.megapixels
    print(json.dumps({"peak_rss_mb": round(_peak_mb(), 1), "baseline_rss_mb": round(baseline, 1),
                      "seconds": round(time.perf_counter() - started, 2), "megapixels": megapixels,
                      "tiles": tiles}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
