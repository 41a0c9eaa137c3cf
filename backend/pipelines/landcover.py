"""Land-cover mapping of high-resolution imagery: class raster + QML, polygons + QML, PNG preview.

Params and result dict: docs/ARCHITECTURE.md (landcover job). With non-empty "s2"/"s1" series the
job is handed to the temporal pipeline (HR + Sentinel time series fusion).
"""
from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List

import rasterio
from torch import nn

from backend.errors import InputError
from backend.inference.engine import EngineInput, normalise_classes, run_inference
from backend.inference.predictors import FlipTTA
from backend.inference.openvino_predictor import OpenVinoPredictor
from backend.inference.runtime import LazyModel, load_task_predictor, make_predictor, model_file_meta
from backend.io.atomic import AtomicOutputs
from backend.io.mosaic import build_mosaic_vrt
from backend.io.preview import write_preview
from backend.io.tiling import plan_tiles
from backend.io.style import raster_qml, vector_qml, write_qml
from backend.io.vector import SHAPEFILE_SIDECARS, polygonize
from backend.progress import Progress

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "resources" / "models" / "landcover_loveda_tiny.pth"

__all__ = ["run", "run_landcover", "load_segmentation_model", "DEFAULT_MODEL"]


def load_segmentation_model(path, device: str = "auto", lazy: bool = False) -> tuple:
    """(model, meta) from a model file of task "segmentation"; InputError otherwise.

    A project model file (.pth) gives an nn.Module (with `lazy`, a LazyModel that builds it on first use,
    the metadata read once per version of the file); an exported .onnx file gives an
    OnnxRuntimePredictor on `device` (backend.inference.runtime.load_task_predictor)."""
    path = Path(path) if path else DEFAULT_MODEL
    if not path.exists():
        hint = " (train the default models with `make train-default`)" if path == DEFAULT_MODEL else ""
        raise InputError(f"model file not found: {path}{hint}")
    if lazy and path.suffix.lower() != ".onnx":
        meta = model_file_meta(path, ("segmentation",), what="land-cover")
        model = LazyModel(lambda: load_task_predictor(path, ("segmentation",), device=device, what="land-cover")[0])
    else:
        model, meta = load_task_predictor(path, ("segmentation",), device=device, what="land-cover")
    if not meta.get("classes"):
        raise InputError(f"{path} lists no classes")
    return model, meta


def _check_name(name: str) -> str:
    if not name or not re.fullmatch(r"[A-Za-z0-9_.\- ]+", name) or name.startswith("."):
        raise InputError(f"output name {name!r} must be a plain file name (letters, digits, _ - . space)")
    return name


def _int_param(params: dict, key: str, default: int, low: int) -> int:
    value = params.get(key, default)
    if value is None:
        value = default
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{key} must be an integer, got {params.get(key)!r}") from None
    if value < low:
        raise InputError(f"{key} must be at least {low}, got {value}")
    return value


def _full_layout(path, tile_size: int, overlap: int):
    """Tile layout for the whole raster (an upper bound with an AOI), used to choose the runtime
    and the ONNX export size; None if it cannot be opened yet (the engine reports that properly)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = rasterio.open(path)
        with ds:
            return plan_tiles(ds.height, ds.width, tile_size, overlap)
    except Exception:
        return None


def run(params: Dict[str, Any], progress: Progress | None = None) -> Dict[str, Any]:
    """Run a land-cover job; returns {"outputs", "classes", "metrics", "device"}.

    Several "hr" rasters are tiles of one scene: they are mosaicked (virtually) into one map.
    Extra params beyond ARCHITECTURE.md: "shapefile": true (also write <name>.shp),
    "confidence": true (also write <name>_confidence.tif, max probability in percent),
    "allow_pixel_grid": true (accept ungeoreferenced images, processed on their pixel grid),
    "runtime": "auto" | "torch" | "onnx" | "openvino" | "compile" (see backend.inference.runtime.make_predictor),
    "tta": true (average with horizontally and vertically flipped predictions; 3x the compute).
    """
    progress = progress or Progress()
    if params.get("tta") and (params.get("s2") or params.get("s1")):
        raise InputError("tta (averaging over flips) applies to high-resolution maps only, not with s2/s1 series")
    if params.get("s2") or params.get("s1"):
        from backend.pipelines.temporal import run_temporal_landcover
        return run_temporal_landcover(params, progress)

    hr = params.get("hr")
    if isinstance(hr, (str, dict)):
        hr = [hr]
    if not hr:
        raise InputError("no input raster: 'hr' must list at least one {'path': ...}")
    hr = [{"path": h} if isinstance(h, str) else dict(h) for h in hr]
    if any(not h.get("path") for h in hr):
        raise InputError("every 'hr' entry needs a 'path'")
    if not params.get("output_dir"):
        raise InputError("'output_dir' is required")
    output_dir = Path(params["output_dir"])
    name = _check_name(str(params.get("name") or "landcover"))
    min_area = float(params.get("min_area") or 0.0)
    simplify = float(params.get("simplify") or 0.0)
    if min_area < 0 or simplify < 0:
        raise InputError("min_area and simplify must not be negative")
    vectorize = bool(params.get("vectorize", True))
    shapefile = bool(params.get("shapefile")) or "shp" in [str(f).lower() for f in params.get("vector_formats") or []]
    allow_pixel_grid = bool(params.get("allow_pixel_grid"))

    progress.update(0.0, "loading model")
    device = params.get("device") or "auto"
    runtime = params.get("runtime") or "auto"
    # auto and openvino may run the compiled model held for this file: build the module only if needed
    model, meta = load_segmentation_model(params.get("model"), device=device, lazy=runtime in ("auto", "openvino"))
    if not isinstance(model, nn.Module) and runtime in ("torch", "compile"):
        raise InputError(f"{params.get('model')} is an exported ONNX model, which PyTorch cannot run; "
                         f"use runtime 'auto', 'onnx' or 'openvino', or a .pth model file for {runtime!r}")
    tile_size = _int_param(params, "tile_size", int(meta.get("tile_size") or 512), 32)
    overlap = _int_param(params, "overlap", 64, 0)
    batch_size = _int_param(params, "batch_size", 0, 0)  # 0: the engine picks for the device
    classes = normalise_classes(meta["classes"])
    model_bands = list((meta.get("bands") or {}).get("hr") or [])
    norm = (meta.get("normalization") or {}).get("hr") or {}
    n_bands = len(norm.get("mean") or model_bands) or None

    with tempfile.TemporaryDirectory(prefix="skysense-landcover-") as workdir:
        source = hr[0]["path"]
        if len(hr) > 1:
            source = str(build_mosaic_vrt([h["path"] for h in hr], Path(workdir) / "hr_mosaic.vrt",
                                          allow_pixel_grid=allow_pixel_grid))
        if isinstance(model, (nn.Module, LazyModel)):
            layout = _full_layout(source, tile_size, overlap)
            predictor = make_predictor(model, device=device, runtime=runtime,
                                       model_path=params.get("model") or DEFAULT_MODEL,
                                       tile_size=layout.tile if layout else tile_size,
                                       expected_tiles=layout.n_tiles if layout else 0)
        elif runtime == "openvino":  # an exported .onnx model, run by OpenVINO instead of ONNX Runtime
            predictor = OpenVinoPredictor(params["model"])
        else:  # an exported .onnx model: already an ONNX Runtime predictor (fixed tile size)
            predictor = model
        if params.get("tta"):
            predictor = FlipTTA(predictor)
        outputs: List[dict] = []
        tif, qml = output_dir / f"{name}.tif", output_dir / f"{name}.qml"
        confidence = output_dir / f"{name}_confidence.tif" if params.get("confidence") else None
        with AtomicOutputs(output_dir) as atomic:
            result = run_inference(
                [EngineInput(source, bands=hr[0].get("bands") or model_bands or None, mean=norm.get("mean"),
                             std=norm.get("std"), expected_bands=n_bands)],
                predictor, tif, classes, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                aoi=params.get("aoi"), allow_pixel_grid=allow_pixel_grid, confidence_path=confidence,
                progress=progress.sub(0.0, 0.8), outputs=atomic,
                tags={"skysense_model": str(params.get("model") or DEFAULT_MODEL)})
            write_qml(atomic.path_for(qml), raster_qml(classes), final_name=qml)
            outputs.append({"path": str(tif.resolve()), "kind": "raster", "role": "classes", "qml": str(qml.resolve())})
            if confidence is not None:
                outputs.append({"path": str(confidence.resolve()), "kind": "raster", "role": "confidence"})
            features = 0
            if vectorize:
                vqml = output_dir / f"{name}_vector.qml"
                write_qml(atomic.path_for(vqml), vector_qml(classes), final_name=vqml)
                formats = [("GPKG", ".gpkg")] + ([("ESRI Shapefile", ".shp")] if shapefile else [])
                for k, (driver, suffix) in enumerate(formats):
                    vec = output_dir / f"{name}{suffix}"
                    share = 0.15 / len(formats)
                    counts = polygonize(result.written_path, atomic.path_for(vec), classes, layer=name,
                                        driver=driver, min_area=min_area, simplify=simplify,
                                        progress=progress.sub(0.8 + k * share, 0.8 + (k + 1) * share), final_name=vec)
                    if suffix == ".shp":
                        atomic.sidecars(vec, SHAPEFILE_SIDECARS)
                    else:
                        features = counts["features"]
                    outputs.append({"path": str(vec.resolve()), "kind": "vector", "role": "polygons",
                                    "layer": name, "qml": str(vqml.resolve())})
            png = output_dir / f"{name}_preview.png"
            write_preview(result.written_path, atomic.path_for(png), classes, final_name=png)
            outputs.append({"path": str(png.resolve()), "kind": "image", "role": "preview"})
            progress.update(1.0, "done")

    pixel_area = result.grid.pixel_area_m2()
    metrics: Dict[str, Any] = {
        "tiles": result.tiles, "tiles_without_data": result.skipped_tiles, "seconds": round(result.seconds, 3),
        "megapixels": round(result.megapixels, 4),
        "megapixels_per_s": round(result.megapixels / result.seconds, 4) if result.seconds else None,
        "class_pixels": {c["name"]: result.class_counts.get(c["value"], 0) for c in classes},
        "class_area_m2": ({c["name"]: result.class_counts.get(c["value"], 0) * pixel_area for c in classes}
                          if pixel_area is not None else {}),
        "valid_pixels": result.valid_pixels, "features": features,
        "width": result.grid.width, "height": result.grid.height,
        "crs": result.grid.crs.to_string() if result.grid.crs else None,
        "runtime": type(getattr(predictor, "base", predictor)).__name__, "tta": bool(params.get("tta")),
        "precision": getattr(predictor, "precision", None),  # after the run: says whether compiling worked
    }
    return {"outputs": outputs, "classes": classes, "metrics": metrics, "device": result.device}


run_landcover = run
