"""Change detection between two dates with the siamese SkySense change model.

``run_change(params, progress) -> result dict`` (docs/ARCHITECTURE.md, docs/api_change.md).
The post image is reprojected on the fly onto the pre image's grid, cropped to the area both
cover (and to the AOI). Outputs: change mask GeoTIFF (0 no change, 1 change, 255 no data) with a
QML (change magenta, no change transparent), P(change) as confidence raster, change polygons
(GeoPackage, min-area filter) and, with a land-cover model, a from-to raster + table + polygon
attributes. After the (streaming) engine, all of this is computed one processing window at a time
(run_change's ``window``, 4096 px by default), so memory does not grow with the raster.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
import shapely
import shapely.geometry
import torch
from rasterio.windows import Window

from backend.errors import InputError, OutputError
from backend.inference.engine import EngineInput, run_inference
from backend.inference.predictors import TorchPredictor, cpu_has_native_bf16, resolve_device
from backend.inference.runtime import load_task_predictor, openvino_for_big_cpu_job
from backend.io.tiling import plan_tiles
from backend.io.aoi import aoi_window, parse_aoi
from backend.io.atomic import AtomicOutputs, describe_os_error
from backend.io.raster import Grid, open_raster
from backend.io.style import raster_qml, vector_qml, write_qml
from backend.pipelines.change_windows import (DEFAULT_WINDOW, PolygonSink, WindowRasterWriter, component_means,
                                              component_polygons, processing_windows, table_counts, window_size)
from backend.progress import Progress

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHANGE_MODEL = ROOT / "resources" / "models" / "change_levir_tiny.pth"
DEFAULT_LANDCOVER_MODEL = ROOT / "resources" / "models" / "landcover_loveda_tiny.pth"
CHANGE_PALETTE = ROOT / "resources" / "palettes" / "change.json"
CHANGE_NODATA = 255


# ----------------------------------------------------------------------------- inputs and models

def input_spec(value: Any, key: str) -> Tuple[str, Optional[List[int]]]:
    """A raster parameter given as a path or {"path": ..., "bands": [...]} -> (path, bands)."""
    if isinstance(value, dict):
        path, bands = value.get("path"), value.get("bands")
    else:
        path, bands = value, None
    if not path or not isinstance(path, (str, Path)):
        raise InputError(f"parameter '{key}' must be a raster path (or {{\"path\": ..., \"bands\": [...]}})")
    return str(path), ([int(b) for b in bands] if bands else None)


def mosaic_vrt(paths: Sequence[Any], dest: Path, key: str) -> str:
    """Several tiles of one date (same CRS, bands, pixel size) -> a GDAL VRT mosaic at dest."""
    from xml.sax.saxutils import escape

    if not paths:
        raise InputError(f"parameter '{key}' is an empty list of rasters")
    infos = []
    for path in paths:
        path = str(path)
        with open_raster(path) as src:
            infos.append((path, src.crs, src.transform, src.width, src.height, src.count, src.dtypes[0], src.nodata))
    _, crs, t0, _, _, count, dtype, nodata = infos[0]
    for path, crs_i, t, _, _, count_i, dtype_i, _ in infos[1:]:
        if crs_i != crs or count_i != count or dtype_i != dtype:
            raise InputError(f"tiles of '{key}' must share CRS, band count and data type: {path} differs from "
                             f"{infos[0][0]}")
        if abs(t.a - t0.a) > 1e-9 * max(1, abs(t0.a)) or abs(t.e - t0.e) > 1e-9 * max(1, abs(t0.e)) or t.b or t.d:
            raise InputError(f"tiles of '{key}' must share one north-up pixel size: {path} differs")
    left = min(t.c for _, _, t, *_ in infos)
    top = max(t.f for _, _, t, *_ in infos)
    right = max(t.c + t.a * w for _, _, t, w, *_ in infos)
    bottom = min(t.f + t.e * h for _, _, t, _, h, *_ in infos)
    width, height = round((right - left) / t0.a), round((bottom - top) / t0.e)
    vrt_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
                "float32": "Float32", "float64": "Float64"}.get(dtype)
    if vrt_type is None:
        raise InputError(f"tiles of '{key}' have an unsupported data type {dtype}")
    bands = []
    for band in range(1, count + 1):
        sources = []
        for path, _, t, w, h, *_ in infos:
            x_off, y_off = round((t.c - left) / t0.a), round((t.f - top) / t0.e)
            sources.append(f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(str(Path(path).resolve()))}'
                           f'</SourceFilename><SourceBand>{band}</SourceBand>'
                           f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                           f'<DstRect xOff="{x_off}" yOff="{y_off}" xSize="{w}" ySize="{h}"/></SimpleSource>')
        nodata_xml = f"<NoDataValue>{nodata}</NoDataValue>" if nodata is not None else ""
        bands.append(f'<VRTRasterBand dataType="{vrt_type}" band="{band}">{nodata_xml}{"".join(sources)}'
                     "</VRTRasterBand>")
    # Gaps between tiles must read as no data, not black: an explicit mask band marks covered pixels.
    mask_sources = "".join(
        f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(str(Path(path).resolve()))}</SourceFilename>'
        f'<SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
        f'<DstRect xOff="{round((t.c - left) / t0.a)}" yOff="{round((t.f - top) / t0.e)}" xSize="{w}" ySize="{h}"/>'
        f'<ScaleOffset>255</ScaleOffset><ScaleRatio>0</ScaleRatio></ComplexSource>'
        for path, _, t, w, h, *_ in infos)
    mask = (f'<MaskBand><VRTRasterBand dataType="Byte">{mask_sources}</VRTRasterBand></MaskBand>'
            if nodata is None else "")
    gt = f"{left}, {t0.a}, 0, {top}, 0, {t0.e}"
    xml = (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{escape(crs.to_wkt())}</SRS>'
           f"<GeoTransform>{gt}</GeoTransform>{mask}{''.join(bands)}</VRTDataset>")
    dest = Path(dest)
    dest.write_text(xml)
    return str(dest)


def resolve_inputs(params: Dict[str, Any], keys: Sequence[str], workdir: Path) -> Dict[str, Any]:
    """Copy of params where list-of-tiles inputs under `keys` are replaced by VRT mosaics in workdir."""
    params = dict(params)
    for key in keys:
        value = params.get(key)
        if isinstance(value, (list, tuple)):
            paths = [v["path"] if isinstance(v, dict) else v for v in value]
            bands = value[0].get("bands") if value and isinstance(value[0], dict) else None
            vrt = mosaic_vrt(paths, workdir / f"{key}_mosaic.vrt", key)
            params[key] = {"path": vrt, "bands": bands} if bands else vrt
    return params


def load_task_model(path: Any, tasks: Sequence[str], what: str, device: str = "auto"):
    """(model or predictor, meta) of a model file whose task is one of `tasks`; clear errors otherwise.
    .pth -> nn.Module; exported .onnx -> OnnxRuntimePredictor (backend.inference.runtime.load_task_predictor)."""
    return load_task_predictor(path, tasks, device=device, what=what)


def job_layout(grid: Grid, model_path: Any, tile_size: int, overlap: int, passes: int = 1) -> Dict[str, Any]:
    """What runtime "auto" weighs for a job on `grid` (as land cover does): the model file (keys the ONNX
    export cache), the engine's fitted tile size and the tiles computed (x passes, e.g. both orders)."""
    layout = plan_tiles(grid.height, grid.width, int(tile_size), int(overlap))
    return {"model_path": model_path, "tile_size": layout.tile, "expected_tiles": layout.n_tiles * passes}


def as_task_predictor(model: Any, device: str, job: Optional[Dict[str, Any]] = None):
    """nn.Module -> predictor on `device` (numpy out): with `job` (job_layout), OpenVINO for CPU jobs as
    big as land cover's runtime "auto" gives it (openvino_for_big_cpu_job); else a TorchPredictor: fp16
    autocast on CUDA, bf16 autocast on CPUs that do bf16 in hardware (LEVIR held-out F1 0.5524 vs 0.5521 in
    fp32, 1.15-1.3x faster), fp32 elsewhere. A predictor (e.g. ONNX Runtime) is returned as it is."""
    if not isinstance(model, torch.nn.Module):
        return model
    if job is not None:
        chosen = openvino_for_big_cpu_job(model, device=device, **job)
        if chosen is not None:
            return chosen
    return TorchPredictor(model, device=device, cpu_bf16=cpu_has_native_bf16())


def _norm(meta: Dict[str, Any], n_bands: int) -> Tuple[Optional[list], Optional[list]]:
    norm = (meta.get("normalization") or {}).get("hr") or {}
    return norm.get("mean"), norm.get("std")


def overlap_grid(pre_path: str, post_path: str) -> Grid:
    """The pre raster's grid cropped to the area the post raster also covers (whole pixels)."""
    with open_raster(pre_path, allow_pixel_grid=True) as pre, open_raster(post_path, allow_pixel_grid=True) as post:
        pre_grid, post_grid = Grid.of(pre), Grid.of(post)
    if (pre_grid.crs is None) != (post_grid.crs is None):
        raise InputError(f"cannot align the two dates: {pre_path if pre_grid.crs is None else post_path} has no CRS "
                         "and the other raster has one")
    if pre_grid.crs is None:
        if (pre_grid.width, pre_grid.height) != (post_grid.width, post_grid.height):
            raise InputError(f"ungeoreferenced pre and post images differ in size ({pre_grid.width}x{pre_grid.height}"
                             f" vs {post_grid.width}x{post_grid.height}); georeference them or give equal sizes")
        return pre_grid
    left, bottom, right, top = rasterio.warp.transform_bounds(post_grid.crs, pre_grid.crs, *post_grid.bounds,
                                                              densify_pts=21)
    p_left, p_bottom, p_right, p_top = pre_grid.bounds
    i_left, i_right = max(left, p_left), min(right, p_right)
    i_bottom, i_top = max(bottom, p_bottom), min(top, p_top)
    if i_right <= i_left or i_top <= i_bottom:
        raise InputError(f"the pre and post rasters do not overlap: {pre_path} covers "
                         f"{tuple(round(v, 6) for v in pre_grid.bounds)} and {post_path} covers "
                         f"{tuple(round(v, 6) for v in (left, bottom, right, top))} (in {pre_grid.crs})")
    win = rasterio.windows.from_bounds(i_left, i_bottom, i_right, i_top, transform=pre_grid.transform)
    col0, row0 = max(0, math.floor(win.col_off + 1e-6)), max(0, math.floor(win.row_off + 1e-6))
    col1 = min(pre_grid.width, math.ceil(win.col_off + win.width - 1e-6))
    row1 = min(pre_grid.height, math.ceil(win.row_off + win.height - 1e-6))
    if col1 <= col0 or row1 <= row0:
        raise InputError(f"the pre and post rasters overlap by less than one pixel: {pre_path}, {post_path}")
    return pre_grid.subgrid(Window(col0, row0, col1 - col0, row1 - row0))


def check_aoi(aoi: Optional[dict], grid: Grid) -> None:
    """Clear error when the AOI misses the area both dates cover."""
    if aoi:
        aoi_window(grid, parse_aoi(aoi, grid), name="the area covered by both dates")


class ChangePredictor:
    """Engine predictor: [a, b] tiles -> [B, 2, T, T] probabilities (no change, change).

    model: an nn.Module (run by a TorchPredictor on `device`) or any predictor returning numpy
    probabilities for [a, b], e.g. the OnnxRuntimePredictor of an exported .onnx change model (its
    fixed tile size is passed on to the engine).
    symmetric: average P(change) over (a, b) and (b, a) since change has no direction.
    threshold: decision threshold on P(change); probabilities are re-weighted so that the engine's
    argmax equals ``P(change) >= threshold`` (0.5 leaves them unchanged).
    """

    def __init__(self, model, device: str = "auto", symmetric: bool = True, threshold: float = 0.5,
                 job: Optional[Dict[str, Any]] = None):
        if not 0.0 < threshold < 1.0:
            raise InputError(f"threshold must be between 0 and 1, got {threshold}")
        self.base = as_task_predictor(model, device, job)
        self.device = getattr(self.base, "device", "cpu")
        self.precision = getattr(self.base, "precision", None)
        self.fixed_tile_size = getattr(self.base, "fixed_tile_size", None)
        self.preferred_batch_size = getattr(self.base, "preferred_batch_size", None)
        self.symmetric, self.threshold = symmetric, float(threshold)

    def __call__(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        a, b = arrays
        probs = np.asarray(self.base([a, b]), dtype=np.float32)
        if self.symmetric:
            probs = 0.5 * (probs + np.asarray(self.base([b, a]), dtype=np.float32))
        if self.threshold != 0.5:
            p1 = probs[:, 1] * (1 - self.threshold)
            p0 = probs[:, 0] * self.threshold
            p1 = p1 / np.maximum(p0 + p1, 1e-12)
            probs = np.stack([1 - p1, p1], axis=1).astype(np.float32)
        return probs


def change_probability(classes: np.ndarray, confidence: np.ndarray,
                       threshold: float = 0.5) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P(change) float32, change bool, valid bool) of a block of the engine's class + confidence
    (uint8 percent) rasters; threshold: the ChangePredictor's, whose re-weighting is undone so that P
    is the model's own P(change) (known to 1 %; the change decision stays the engine's)."""
    valid = classes != CHANGE_NODATA
    change = classes == 1
    prob = confidence.astype(np.float32)
    prob /= 100.0
    np.subtract(1.0, prob, out=prob, where=~change)
    prob[~valid] = 0.0
    if threshold != 0.5:  # undo ChangePredictor's re-weighting: back to the model's P(change)
        t = threshold
        prob = (prob * t / np.maximum(prob * t + (1 - prob) * (1 - t), 1e-12)).astype(np.float32)
        prob[~valid] = 0.0
    return prob, change, valid


def probability_percent(prob: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """P(change) x 100 as written to the probability raster (uint8, 255 = no data)."""
    percent = prob * 100
    np.rint(percent, out=percent)
    percent[~valid] = 255
    return percent.astype(np.uint8)


def read_change_probability(class_path: Path, confidence_path: Path, window: Optional[Window] = None,
                            threshold: float = 0.5) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P(change) float32 [H,W], change bool [H,W], valid bool [H,W]) from the engine's class +
    confidence rasters (P is known to 1 %; the change decision is the engine's own), for the whole
    raster or one window of it."""
    with rasterio.open(class_path) as src:
        classes = src.read(1, window=window)
    with rasterio.open(confidence_path) as src:
        confidence = src.read(1, window=window)
    return change_probability(classes, confidence, threshold)


class _EngineConfidence:
    """Move the engine's confidence raster (max(P, 1 - P)) aside inside the AtomicOutputs folder, so
    that P(change) can be written window by window under its name; removed again on close."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.aside = self.path.with_name(self.path.stem + ".engine" + self.path.suffix)
        os.replace(self.path, self.aside)
        self.src = rasterio.open(self.aside)

    def read(self, window: Window) -> np.ndarray:
        return self.src.read(1, window=window)

    def close(self) -> None:
        self.src.close()
        with contextlib.suppress(OSError):
            os.remove(self.aside)


def write_change_probability(result: Any, probability_path: Path, threshold: float, *,
                             window: int = DEFAULT_WINDOW,
                             on_window: Optional[Any] = None,
                             progress: Optional[Progress] = None) -> None:
    """Replace the engine's confidence raster by P(change) x 100, window by window.

    on_window(window, probability float32, change bool, valid bool): called with each window's
    arrays (e.g. per-building statistics of a damage job, accumulated window by window)."""
    grid = result.grid
    windows = processing_windows(grid.width, grid.height, window)
    with contextlib.ExitStack() as stack:
        classes_src = stack.enter_context(rasterio.open(result.written_path))
        engine = _EngineConfidence(result.confidence_written_path)
        stack.callback(engine.close)
        out = WindowRasterWriter(result.confidence_written_path, grid, np.uint8, 255, Path(probability_path))
        stack.callback(out.discard)
        for k, win in enumerate(windows):
            if progress is not None:
                progress.update(k / len(windows), "writing P(change)")
            prob, change, valid = change_probability(classes_src.read(1, window=win), engine.read(win), threshold)
            out.write(probability_percent(prob, valid), win)
            if on_window is not None:
                on_window(win, prob, change, valid)
        out.close()


def predict_change(pre: Any, post: Any, outputs: AtomicOutputs, class_path: Path, probability_path: Path, *,
                   model_path: Any = None, aoi: Optional[dict] = None, tile_size: Optional[int] = None,
                   overlap: int = 32, batch_size: int = 0, device: str = "auto", symmetric: bool = True,
                   threshold: float = 0.5, progress: Optional[Progress] = None,
                   tasks: Sequence[str] = ("change",),
                   write_probability: bool = True, window: int = DEFAULT_WINDOW) -> Dict[str, Any]:
    """Run the change (or damage) model over the overlap of pre and post; returns the engine result,
    the grid, model meta and the change predictor's threshold.

    For change models the engine's confidence raster is then rewritten as P(change) x 100, window by
    window (write_probability=False leaves that to the caller, as run_change and run_damage do in
    their own pass)."""
    progress = progress or Progress()
    pre_path, pre_bands = input_spec(pre, "pre")
    post_path, post_bands = input_spec(post, "post")
    grid = overlap_grid(pre_path, post_path)
    check_aoi(aoi, grid)
    model, meta = load_task_model(model_path or DEFAULT_CHANGE_MODEL, tasks, "change", device=device)
    n_bands = len((meta.get("bands") or {}).get("hr") or [1, 2, 3])
    mean, std = _norm(meta, n_bands)
    inputs = [EngineInput(pre_path, pre_bands, mean, std, expected_bands=n_bands),
              EngineInput(post_path, post_bands, mean, std, expected_bands=n_bands)]
    tile_size = int(tile_size or meta.get("tile_size", 256))
    job = job_layout(grid, model_path or DEFAULT_CHANGE_MODEL, tile_size, overlap,
                     passes=2 if symmetric and meta["task"] == "change" else 1)
    if meta["task"] == "change":
        predictor = ChangePredictor(model, device=device, symmetric=symmetric, threshold=threshold, job=job)
        classes = [{"value": c["value"], "name": c["name"], "color": c.get("color", "#808080")}
                   for c in json.loads(CHANGE_PALETTE.read_text())["classes"]]
    else:
        predictor = as_task_predictor(model, device, job)
        classes = [{"value": k, "name": n, "color": "#808080"} for k, n in
                   enumerate(("background", "no damage", "minor damage", "major damage", "destroyed"))]
    result = run_inference(inputs, predictor, class_path, classes, tile_size=tile_size,
                           overlap=int(overlap), batch_size=int(batch_size), aoi=aoi, grid=grid,
                           allow_pixel_grid=True, confidence_path=probability_path, progress=progress,
                           outputs=outputs)
    out = {"engine": result, "grid": result.grid, "meta": meta, "model": model, "device": result.device,
           "threshold": getattr(predictor, "threshold", 0.5), "precision": getattr(predictor, "precision", None)}
    if meta["task"] == "change" and write_probability:
        write_change_probability(result, probability_path, out["threshold"], window=window)
    return out


def engine_figures(found: Dict[str, Any]) -> Dict[str, Any]:
    """How predict_change's engine run went, for a job's metrics: seconds, megapixels, precision/runtime."""
    engine = found["engine"]
    return {"seconds": round(engine.seconds, 3), "megapixels": round(engine.megapixels, 4),
            "tiles": engine.tiles, "tiles_without_data": engine.skipped_tiles, "precision": found.get("precision")}


def predict_landcover(image: Any, grid: Grid, outputs: AtomicOutputs, path: Path, model_path: Any, *,
                      aoi: Optional[dict], tile_size: Optional[int], overlap: int, batch_size: int,
                      device: str, progress: Progress, what: str,
                      read_classes: bool = True) -> Tuple[Optional[np.ndarray], Dict[str, Any], Any]:
    """(classes [H,W], model meta, engine result) of a land-cover model on `grid`; the class raster is
    written to `path` inside outputs. read_classes=False: classes is None (read the raster back
    window by window from result.written_path instead of holding the whole array)."""
    model, meta = load_task_model(model_path, ("segmentation",), what, device=device)
    image_path, bands = input_spec(image, what)
    n_bands = len((meta.get("bands") or {}).get("hr") or [1, 2, 3])
    mean, std = _norm(meta, n_bands)
    tile_size = int(tile_size or meta.get("tile_size", 512))
    result = run_inference([EngineInput(image_path, bands or (meta.get("bands") or {}).get("hr"), mean, std,
                                        expected_bands=n_bands)],
                           as_task_predictor(model, device, job_layout(grid, model_path, tile_size, overlap)),
                           path, meta["classes"], tile_size=tile_size, overlap=int(overlap),
                           batch_size=int(batch_size), aoi=aoi, grid=grid, allow_pixel_grid=True,
                           progress=progress, outputs=outputs)
    if not read_classes:
        return None, meta, result
    with rasterio.open(result.written_path) as src:
        classes = src.read(1)
    return classes, meta, result


# ----------------------------------------------------------------------------- polygons

def pixel_area(grid: Grid) -> Tuple[float, str]:
    """(area of one pixel, unit): square metres for georeferenced grids, pixels otherwise."""
    area = grid.pixel_area_m2()
    return (area, "m2") if area is not None else (1.0, "px")


def metres_to_grid_units(grid: Grid, metres: float) -> float:
    """A length in metres in the grid CRS's units (degrees for geographic grids, pixels for pixel grids)."""
    if grid.crs is None:
        return metres * max(grid.res)
    if grid.crs.is_geographic:
        lat = (grid.bounds[1] + grid.bounds[3]) / 2.0
        return metres / (111_320.0 * max(math.cos(math.radians(lat)), 1e-6))
    factor = grid.crs.linear_units_factor[1] if grid.crs.linear_units_factor else 1.0
    return metres / factor


def mask_polygons(mask: np.ndarray, grid: Grid, min_area: float = 0.0,
                  simplify: float = 0.0) -> Tuple[List[Any], np.ndarray, np.ndarray]:
    """Connected regions of mask (4-connectivity) as polygons in the grid CRS.

    Returns (geometries, component label image int32 [H,W], kept component ids); regions smaller
    than min_area (m², or pixels on ungeoreferenced grids) are dropped; simplify is a tolerance in
    metres (pixels on ungeoreferenced grids).
    """
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    labels = labels.astype(np.int32, copy=False)
    if n == 0:
        return [], labels, np.zeros(0, np.int64)
    unit_area, _ = pixel_area(grid)
    tolerance = metres_to_grid_units(grid, float(simplify)) if simplify > 0 else 0.0
    geoms, keep, _ = component_polygons(labels, n, grid.transform, unit_area, min_area, tolerance)
    return geoms, labels, keep


def component_majority(labels: np.ndarray, keep: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Most frequent value of `values` inside each kept component."""
    from scipy import ndimage

    out = np.zeros(len(keep), np.int64)
    slices = ndimage.find_objects(labels)
    for k, cid in enumerate(keep):
        sl = slices[int(cid) - 1]
        inside = values[sl][labels[sl] == cid]
        if inside.size:
            out[k] = np.bincount(inside.astype(np.int64)).argmax()
    return out


def write_polygons(path: Path, layer: str, geoms: Sequence, records: Sequence[Dict[str, Any]],
                   fields: Dict[str, str], crs, final_name: Optional[Path] = None) -> None:
    """Write polygons + attributes to a GeoPackage (path is a temporary name inside AtomicOutputs)."""
    import fiona

    schema = {"geometry": "MultiPolygon", "properties": dict(fields)}
    try:
        with fiona.open(path, "w", driver="GPKG", layer=layer, schema=schema,
                        crs=crs.to_wkt() if crs is not None else None) as dst:
            for geom, record in zip(geoms, records):
                if geom.geom_type == "Polygon":
                    geom = shapely.geometry.MultiPolygon([geom])
                dst.write({"geometry": shapely.geometry.mapping(geom), "properties": record})
    except Exception as exc:
        raise OutputError(f"could not write {final_name or path}: {describe_os_error(exc)}") from None


# ----------------------------------------------------------------------------- from-to

def from_to_codes(pre_classes: np.ndarray, post_classes: np.ndarray, change: np.ndarray) -> np.ndarray:
    """uint16 code from*100 + to on changed pixels, 0 elsewhere (e.g. 207 = class 2 -> class 7)."""
    codes = pre_classes.astype(np.uint16) * 100 + post_classes.astype(np.uint16)
    return np.where(change, codes, 0).astype(np.uint16)


def from_to_table(codes: np.ndarray, class_names: Dict[int, str], unit_area: float, unit: str) -> List[Dict[str, Any]]:
    """Rows {"code", "from_class", "to_class", "pixels", "area"} sorted by area, largest first."""
    return from_to_table_counts(np.bincount(codes[codes > 0].ravel()), class_names, unit_area, unit)


def from_to_table_counts(counts: Optional[np.ndarray], class_names: Dict[int, str], unit_area: float,
                         unit: str) -> List[Dict[str, Any]]:
    """from_to_table from pixel counts per code (np.bincount of the codes, accumulated window by window)."""
    rows = []
    values = np.nonzero(counts)[0] if counts is not None else []
    for value in values:
        value, count = int(value), int(counts[value])
        if value <= 0:
            continue
        src, dst = divmod(value, 100)
        rows.append({"code": value, "from_class": class_names.get(src, str(src)),
                     "to_class": class_names.get(dst, str(dst)), "pixels": count,
                     f"area_{unit}": round(count * unit_area, 2)})
    return sorted(rows, key=lambda r: -r["pixels"])


def _write_raster(path: Path, array: np.ndarray, grid: Grid, nodata, final_name: Path) -> None:
    import warnings
    from rasterio.errors import NotGeoreferencedWarning

    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=1, dtype=array.dtype.name,
                   crs=grid.crs, transform=grid.transform, nodata=nodata, tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(array, 1)
    except Exception as exc:
        raise OutputError(f"could not write {final_name}: {describe_os_error(exc)}") from None


# ----------------------------------------------------------------------------- pipeline

def _float_param(params: Dict[str, Any], key: str, default: float) -> float:
    value = params.get(key, default)
    try:
        value = float(default if value is None else value)
    except (TypeError, ValueError):
        raise InputError(f"parameter '{key}' must be a number, got {value!r}") from None
    if value < 0:
        raise InputError(f"parameter '{key}' must not be negative, got {value}")
    return value


def run_change(params: Dict[str, Any], progress: Optional[Progress] = None) -> Dict[str, Any]:
    """Change mask + polygons (+ from-to classes with a land-cover model) for a pre/post pair.

    params: pre, post (path, {"path", "bands"}, or a list of tiles of one date -> mosaic), output_dir, name="change", model=None (default
    LEVIR-CD model), landcover_model=None, aoi=None, tile_size=None (model's), overlap=32,
    batch_size=0 (auto), device="auto", threshold=0.5, symmetric=True, vectorize=True, min_area=0
    (m², pixels on ungeoreferenced images), simplify=0 (metres), window=4096 (px, a multiple of 256).

    Memory: the engine streams, and everything after it (P(change) raster, metrics, from-to raster
    and table, polygons) runs one processing window (window x window px) at a time, so memory is
    set by the window, not by the raster. Like land-cover polygonisation (backend.io.vector), a
    change region crossing a window edge becomes one polygon per window: its area, mean probability
    and from/to majority classes are those of its part in that window, and min_area applies to each
    part. Rasters that fit in one window (up to 4096 x 4096 px by default) are not split at all.
    """
    progress = progress or Progress()
    for key in ("pre", "post", "output_dir"):
        if not params.get(key):
            raise InputError(f"missing parameter '{key}'")
    window_size(params.get("window"))
    with tempfile.TemporaryDirectory(prefix="skysense-change-") as workdir:
        return _run_change(resolve_inputs(params, ("pre", "post"), Path(workdir)), progress)


_ROW_CHUNK = 512  # rows of a window processed at once for the pixel-by-pixel outputs (whole blocks)


def _postprocess_change(found: Dict[str, Any], outputs: AtomicOutputs, paths: Dict[str, Path], *, name: str,
                        window: int, landcover: Optional[Dict[str, Any]], vectorize: bool, min_area: float,
                        simplify: float, progress: Progress) -> Dict[str, Any]:
    """One pass over the processing windows after the engine(s): P(change) raster, pixel counts,
    from-to raster + counts per code, polygons (see run_change for windows and polygons).

    landcover: None or {"pre", "post": class raster paths (temporary), "names": value -> name}.
    Returns {"changed", "valid", "from_to_counts", "polygons"}."""
    from scipy import ndimage

    engine, grid = found["engine"], found["grid"]
    unit_area, unit = pixel_area(grid)
    tolerance = metres_to_grid_units(grid, float(simplify)) if simplify > 0 else 0.0
    names = landcover["names"] if landcover else {}
    windows = processing_windows(grid.width, grid.height, window)
    changed = valid_pixels = 0
    from_to_counts = None
    with contextlib.ExitStack() as stack:
        classes_src = stack.enter_context(rasterio.open(engine.written_path))
        confidence = _EngineConfidence(engine.confidence_written_path)
        stack.callback(confidence.close)
        percent_out = WindowRasterWriter(engine.confidence_written_path, grid, np.uint8, 255, paths["probability"])
        stack.callback(percent_out.discard)
        codes_out = sink = None
        if landcover:
            pre_src = stack.enter_context(rasterio.open(landcover["pre"]))
            post_src = stack.enter_context(rasterio.open(landcover["post"]))
            codes_out = WindowRasterWriter(outputs.path_for(paths["from_to"]), grid, np.uint16, 0, paths["from_to"])
            stack.callback(codes_out.discard)
        if vectorize:
            fields = {"id": "int", "class_id": "int", f"area_{unit}": "float", "mean_probability": "float"}
            if landcover:
                fields.update({"from_class": "str", "to_class": "str", "from_to": "str"})
            sink = PolygonSink(outputs.path_for(paths["vector"]), name, fields, grid.crs, paths["vector"])
            stack.callback(sink.discard)
        for k, win in enumerate(windows):
            progress.update(k / len(windows), f"post-processing change (window {k + 1} of {len(windows)})")
            # Pixel by pixel work in block rows of the window (small temporaries); only P(change) and
            # the change mask of the whole window are kept, for its polygons.
            prob = change = labels = None  # the previous window's, freed before allocating this one's
            prob = np.empty((win.height, win.width), np.float32) if sink is not None else None
            change = np.empty((win.height, win.width), bool) if sink is not None else None
            n_changed = 0
            for r0 in range(0, win.height, _ROW_CHUNK):
                part = Window(win.col_off, win.row_off + r0, win.width, min(_ROW_CHUNK, win.height - r0))
                p, c, v = change_probability(classes_src.read(1, window=part), confidence.read(part),
                                             found["threshold"])
                percent_out.write(probability_percent(p, v), part)
                n_changed += int(np.count_nonzero(c))
                valid_pixels += int(np.count_nonzero(v))
                if landcover:
                    codes = from_to_codes(pre_src.read(1, window=part), post_src.read(1, window=part), c)
                    codes_out.write(codes, part)
                    from_to_counts = table_counts(from_to_counts, codes[codes > 0])
                    del codes
                if sink is not None:
                    prob[r0:r0 + part.height], change[r0:r0 + part.height] = p, c
                del p, c, v
            changed += n_changed
            if sink is None or n_changed == 0:
                continue
            labels, n = ndimage.label(change)
            del change
            labels = labels.astype(np.int32, copy=False)
            geoms, keep, area_px = component_polygons(labels, n, grid.window_transform(win), unit_area,
                                                      min_area, tolerance)
            if not len(keep):
                continue
            mean_prob = component_means(labels, n, prob, keep)
            del prob
            records = [{"id": sink.count + j + 1, "class_id": 1,
                        f"area_{unit}": round(float(area_px[cid]) * unit_area, 2),
                        "mean_probability": round(float(mean_prob[j]), 4)} for j, cid in enumerate(keep.tolist())]
            if landcover:
                src = component_majority(labels, keep, pre_src.read(1, window=win))
                dst = component_majority(labels, keep, post_src.read(1, window=win))
                for record, a, b in zip(records, src.tolist(), dst.tolist()):
                    record.update({"from_class": names.get(a, str(a)), "to_class": names.get(b, str(b)),
                                   "from_to": f"{names.get(a, a)} -> {names.get(b, b)}"})
            sink.write(geoms, records)
        percent_out.close()
        if codes_out is not None:
            codes_out.close()
        if sink is not None:
            sink.close()
    progress.update(1.0)
    return {"changed": changed, "valid": valid_pixels, "from_to_counts": from_to_counts,
            "polygons": sink.count if sink is not None else None}


def _run_change(params: Dict[str, Any], progress: Progress) -> Dict[str, Any]:
    name = str(params.get("name") or "change")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise InputError(f"output name {name!r} may only hold letters, digits, '_' and '-'")
    min_area = _float_param(params, "min_area", 0.0)
    simplify = _float_param(params, "simplify", 0.0)
    threshold = _float_param(params, "threshold", 0.5)
    window = window_size(params.get("window"))
    overlap = int(params.get("overlap", 32) if params.get("overlap") is not None else 32)
    batch_size = int(params.get("batch_size") or 0)  # 0: the engine picks for the device
    device = resolve_device(params.get("device") or "auto")
    landcover_model = params.get("landcover_model")
    vectorize = bool(params.get("vectorize", True))
    out_dir = Path(params["output_dir"]).resolve()
    paths = {k: out_dir / f"{name}{suffix}" for k, suffix in [
        ("mask", ".tif"), ("mask_qml", ".qml"), ("probability", "_probability.tif"), ("vector", ".gpkg"),
        ("vector_qml", "_vector.qml"), ("pre_classes", "_pre_classes.tif"), ("post_classes", "_post_classes.tif"),
        ("from_to", "_from_to.tif"), ("from_to_qml", "_from_to.qml"), ("table", "_from_to.csv")]}

    with AtomicOutputs(out_dir) as outputs:
        lc_share = 0.3 if landcover_model else 0.0
        found = predict_change(params["pre"], params["post"], outputs, paths["mask"], paths["probability"],
                               model_path=params.get("model"), aoi=params.get("aoi"),
                               tile_size=params.get("tile_size"), overlap=overlap, batch_size=batch_size,
                               device=device, symmetric=bool(params.get("symmetric", True)), threshold=threshold,
                               progress=progress.sub(0.0, 0.8 - lc_share), write_probability=False)
        grid = found["grid"]
        palette = json.loads(CHANGE_PALETTE.read_text())["classes"]
        write_qml(outputs.path_for(paths["mask_qml"]), raster_qml(palette), paths["mask_qml"])
        unit_area, unit = pixel_area(grid)
        outs = [{"path": str(paths["mask"]), "kind": "raster", "role": "change", "qml": str(paths["mask_qml"])},
                {"path": str(paths["probability"]), "kind": "raster", "role": "probability",
                 "description": "P(change) x 100 (uint8, 255 = no data)"}]
        classes_out = [{"value": c["value"], "name": c["name"], "color": c["color"]} for c in palette]

        landcover = None
        if landcover_model:
            common = dict(aoi=params.get("aoi"), tile_size=params.get("landcover_tile_size"), overlap=overlap,
                          batch_size=batch_size, device=device, read_classes=False)
            _, lc_meta, pre_result = predict_landcover(params["pre"], grid, outputs, paths["pre_classes"],
                                                       landcover_model, progress=progress.sub(0.5, 0.65),
                                                       what="pre", **common)
            _, _, post_result = predict_landcover(params["post"], grid, outputs, paths["post_classes"],
                                                  landcover_model, progress=progress.sub(0.65, 0.8),
                                                  what="post", **common)
            landcover = {"pre": pre_result.written_path, "post": post_result.written_path,
                         "names": {int(c["value"]): str(c["name"]) for c in lc_meta["classes"]}}

        counts = _postprocess_change(found, outputs, paths, name=name, window=window, landcover=landcover,
                                     vectorize=vectorize, min_area=min_area, simplify=simplify,
                                     progress=progress.sub(0.8, 0.98))
        changed, valid = counts["changed"], counts["valid"]
        metrics: Dict[str, Any] = {
            "changed_pixels": changed, "valid_pixels": valid,
            "changed_fraction": round(float(changed) / max(valid, 1), 5),
            f"changed_area_{unit}": round(float(changed) * unit_area, 2),
            "grid": {"crs": grid.crs.to_string() if grid.crs else None, "width": grid.width, "height": grid.height,
                     "transform": list(grid.transform)[:6]},
            "model": str(params.get("model") or DEFAULT_CHANGE_MODEL),
            **engine_figures(found),
        }

        if landcover:
            table = from_to_table_counts(counts["from_to_counts"], landcover["names"], unit_area, unit)
            colors = {int(c["value"]): c.get("color", "#808080") for c in lc_meta["classes"]}
            from_to_classes = [{"value": r["code"], "name": f"{r['from_class']} -> {r['to_class']}",
                                "color": colors.get(r["code"] % 100, "#808080")} for r in table]
            write_qml(outputs.path_for(paths["from_to_qml"]), raster_qml(from_to_classes), paths["from_to_qml"])
            with open(outputs.path_for(paths["table"]), "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=["code", "from_class", "to_class", "pixels", f"area_{unit}"])
                writer.writeheader()
                writer.writerows(table)
            metrics["from_to"] = table
            lc_classes = [{"value": c["value"], "name": c["name"], "color": c.get("color", "#808080")}
                          for c in lc_meta["classes"]]
            outs += [{"path": str(paths["from_to"]), "kind": "raster", "role": "from_to",
                      "qml": str(paths["from_to_qml"]), "description": "code = from_value * 100 + to_value"},
                     {"path": str(paths["table"]), "kind": "table", "role": "from_to_table"},
                     {"path": str(paths["pre_classes"]), "kind": "raster", "role": "pre_classes",
                      "classes": lc_classes},
                     {"path": str(paths["post_classes"]), "kind": "raster", "role": "post_classes",
                      "classes": lc_classes}]

        if vectorize:
            write_qml(outputs.path_for(paths["vector_qml"]), vector_qml([palette[1]], field="class_id", outline=True,
                                                                    fill_alpha=110), paths["vector_qml"])
            metrics["polygons"] = counts["polygons"]
            outs.append({"path": str(paths["vector"]), "kind": "vector", "role": "polygons", "layer": name,
                         "qml": str(paths["vector_qml"])})
        progress.update(0.98, "writing outputs")
    progress.update(1.0, f"change detected on {metrics['changed_fraction']:.1%} of the area")
    return {"outputs": outs, "classes": classes_out, "metrics": metrics, "device": found["device"]}
