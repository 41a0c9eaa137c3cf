"""Land cover from an HR image fused with Sentinel-2 / Sentinel-1 time series (SkySense fusion).

``run_temporal_landcover(params, progress)`` is called by the land-cover pipeline when ``"s2"`` or
``"s1"`` lists are non-empty. Steps:

1. The HR raster's grid (cropped to the AOI) is the output grid. Each Sentinel series is read onto
   a 10 m grid in the same CRS covering it (backend.datasets.sentinel: dates -> day of year, cloud /
   no-data tests, frames mostly invalid are skipped and reported).
2. The series is normalised with the SkySense S2/S1 statistics (models.normalization) and stored
   as a temporary 10 m raster (frames x bands + one per-pixel validity band per frame), which the
   shared engine reads onto the HR grid tile by tile next to the HR image.
3. For each tile the predictor pools the Sentinel bands back to 10 m pixels, marks a frame invalid
   for that tile when under half of its pixels there are valid, and runs the
   TemporalSegmentationModel (HR encoder + S2/S1 ViTs + temporal fusion transformer).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine

from backend.datasets.sentinel import SENSOR_BANDS, SentinelStack, read_sentinel_stack
from backend.errors import InputError, OutputError
from backend.inference.engine import EngineInput, normalise_classes, run_inference
from backend.inference.predictors import resolve_device
from backend.io.aoi import aoi_window, parse_aoi
from backend.io.atomic import AtomicOutputs, describe_os_error
from backend.io.raster import Grid, open_raster
from backend.io.style import raster_qml, vector_qml, write_qml
from backend.io.vector import polygonize
from backend.progress import Progress

SENTINEL_GSD_M = 10.0
MIN_TILE_VALID = 0.5


def sentinel_grid(hr_grid: Grid, gsd_m: float = SENTINEL_GSD_M) -> Grid:
    """A grid in the HR CRS at ~10 m covering the HR grid plus one pixel of margin on each side."""
    if hr_grid.crs is None:
        raise InputError("Sentinel time series need a georeferenced HR raster (it has no CRS)")
    if hr_grid.crs.is_geographic:
        lat = (hr_grid.bounds[1] + hr_grid.bounds[3]) / 2.0
        res_x = gsd_m / (111_320.0 * max(math.cos(math.radians(lat)), 1e-6))
        res_y = gsd_m / 111_320.0
    else:
        factor = hr_grid.crs.linear_units_factor[1] if hr_grid.crs.linear_units_factor else 1.0
        res_x = res_y = gsd_m / factor
    left, bottom, right, top = hr_grid.bounds
    width = max(1, math.ceil((right - left) / res_x)) + 2
    height = max(1, math.ceil((top - bottom) / res_y)) + 2
    return Grid(hr_grid.crs, Affine(res_x, 0.0, left - res_x, 0.0, -res_y, top + res_y), width, height)


def normalise_stack(stack: SentinelStack) -> np.ndarray:
    """[T,C,h,w] float32 normalised with the SkySense statistics; invalid pixels -> 0 (the mean)."""
    from models.normalization import get_normalization

    norm = get_normalization(stack.sensor)
    mean = np.asarray(norm["mean"], np.float32)[None, :, None, None]
    std = np.asarray(norm["std"], np.float32)[None, :, None, None]
    data = (stack.data - mean) / std
    data *= stack.pixel_valid[:, None]
    return data.astype(np.float32)


STACK_SCALE = 1000.0


def write_stack_raster(stack: SentinelStack, grid: Grid, path: Path) -> int:
    """Normalised frames (T*C bands) then per-pixel validity (T bands) as one int16 GeoTIFF scaled by
    STACK_SCALE: the engine reads whole row strips of it at HR resolution, so 2 bytes per value keep
    that strip (T * (C + 1) * tile * width values) half the size of float32."""
    data = normalise_stack(stack)
    t, c = data.shape[:2]
    bands = np.concatenate([data.reshape(t * c, grid.height, grid.width),
                            stack.pixel_valid.astype(np.float32)], axis=0)
    bands = np.clip(np.rint(bands * STACK_SCALE), -32767, 32767).astype(np.int16)
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=bands.shape[0], dtype="int16",
                   crs=grid.crs, transform=grid.transform, nodata=None, tiled=False, interleave="pixel")
    try:
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(bands)
    except Exception as exc:
        raise OutputError(f"could not write the temporary Sentinel stack {path}: {describe_os_error(exc)}") from None
    return bands.shape[0]


class TemporalPredictor:
    """Engine predictor: [hr, s2 stack?, s1 stack?] tiles on the HR grid -> class probabilities."""

    def __init__(self, model, device: str, hr_res_m: float, stacks: Dict[str, SentinelStack]):
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.hr_res_m = hr_res_m
        self.stacks = stacks  # ordered: the engine inputs follow this order after the HR image

    def _series(self, array: np.ndarray, stack: SentinelStack):
        b, _, tile, _ = array.shape
        t, c = len(stack.dates), len(SENSOR_BANDS[stack.sensor])
        x = torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(self.device)
        side = max(1, round(tile * self.hr_res_m / SENTINEL_GSD_M))
        pooled = F.adaptive_avg_pool2d(x, (side, side))
        series = pooled[:, : t * c].reshape(b, t, c, side, side)
        pixel_valid = pooled[:, t * c:].mean(dim=(-2, -1))  # fraction of valid pixels per frame in the tile
        frame_valid = torch.from_numpy(stack.frame_valid).to(self.device)[None]
        valid = (pixel_valid >= MIN_TILE_VALID) & frame_valid
        doy = torch.from_numpy(stack.doy).to(self.device)[None].expand(b, t)
        return series, doy, valid

    def __call__(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        hr = torch.from_numpy(np.ascontiguousarray(arrays[0], np.float32)).to(self.device)
        kwargs: Dict[str, Any] = {}
        for (sensor, stack), array in zip(self.stacks.items(), arrays[1:]):
            series, doy, valid = self._series(array, stack)
            kwargs.update({sensor: series, f"doy_{sensor}": doy, f"valid_{sensor}": valid})
        with torch.inference_mode():
            logits = self.model(hr, **kwargs)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def _hr_entry(params: Dict[str, Any], workdir: Path) -> Dict[str, Any]:
    from backend.pipelines.change import mosaic_vrt

    hr = params.get("hr")
    if isinstance(hr, (str, dict)):
        hr = [hr]
    if not hr:
        raise InputError("no input raster: 'hr' must list at least one {'path': ...}")
    hr = [{"path": h} if isinstance(h, str) else dict(h) for h in hr]
    if any(not h.get("path") for h in hr):
        raise InputError("every 'hr' entry needs a 'path'")
    if len(hr) == 1:
        return hr[0]
    return {"path": mosaic_vrt([h["path"] for h in hr], workdir / "hr_mosaic.vrt", "hr"), "bands": hr[0].get("bands")}


def run_temporal_landcover(params: Dict[str, Any], progress: Optional[Progress] = None) -> Dict[str, Any]:
    """Land cover from HR + Sentinel-2 and/or Sentinel-1 series; same params and result as the
    land-cover pipeline plus "s2": [{"path", "date"}], "s1": [{"path", "date"}], "model" (a
    task "temporal" model file, required) and "max_invalid_fraction" (default 0.5)."""
    progress = progress or Progress()
    with tempfile.TemporaryDirectory(prefix="skysense-temporal-") as workdir:
        return _run(params, progress, Path(workdir))


def _run(params: Dict[str, Any], progress: Progress, workdir: Path) -> Dict[str, Any]:
    from backend.pipelines.change import _float_param, load_task_model, pixel_area

    if not params.get("output_dir"):
        raise InputError("'output_dir' is required")
    if not params.get("model"):
        raise InputError("Sentinel-2/Sentinel-1 series need a temporal model file (task 'temporal', e.g. "
                         "trained with models 'skysense_temporal_tiny'); the default land-cover model is HR-only")
    name = str(params.get("name") or "landcover")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise InputError(f"output name {name!r} may only hold letters, digits, '_' and '-'")
    max_invalid = _float_param(params, "max_invalid_fraction", 0.5)
    min_area = _float_param(params, "min_area", 0.0)
    simplify = _float_param(params, "simplify", 0.0)
    overlap = int(params.get("overlap", 64) if params.get("overlap") is not None else 64)
    batch_size = int(params.get("batch_size") or 0)  # 0: the engine picks for the device
    output_dir = Path(params["output_dir"])

    progress.update(0.0, "loading model")
    model, meta = load_task_model(params["model"], ("temporal",), "temporal land-cover")
    classes = normalise_classes(meta["classes"])
    tile_size = int(params.get("tile_size") or meta.get("tile_size") or 512)
    hr = _hr_entry(params, workdir)
    with open_raster(hr["path"]) as src:
        hr_grid = Grid.of(src)
    aoi = params.get("aoi")
    grid = hr_grid.subgrid(aoi_window(hr_grid, parse_aoi(aoi, hr_grid), name=str(hr["path"]))) if aoi else hr_grid
    hr_res_m = math.sqrt(grid.pixel_area_m2())
    s_grid = sentinel_grid(grid)

    stacks: Dict[str, SentinelStack] = {}
    inputs = []
    norm = (meta.get("normalization") or {}).get("hr") or {}
    n_bands = len(norm.get("mean") or (meta.get("bands") or {}).get("hr") or [1, 2, 3])
    inputs.append(EngineInput(hr["path"], hr.get("bands") or (meta.get("bands") or {}).get("hr"),
                              norm.get("mean"), norm.get("std"), expected_bands=n_bands))
    for sensor in ("s2", "s1"):
        entries = params.get(sensor) or []
        if not entries:
            continue
        if not isinstance(entries, (list, tuple)):
            raise InputError(f"'{sensor}' must be a list of {{\"path\": ..., \"date\": \"YYYY-MM-DD\"}}")
        encoder = getattr(model, f"backbone_{sensor}", None)
        if encoder is None:
            raise InputError(f"the temporal model {params['model']} has no {sensor.upper()} encoder; "
                             f"remove the '{sensor}' series or use a model trained with it")
        progress.update(0.02, f"reading {len(entries)} {sensor.upper()} frames")
        stack = read_sentinel_stack(entries, sensor, s_grid, max_invalid_fraction=max_invalid)
        if stack.n_valid == 0:
            raise InputError(f"every {sensor.upper()} frame was skipped as cloudy or no-data: "
                             + "; ".join(f"{s['date']} ({s['reason']})" for s in stack.skipped))
        path = workdir / f"{sensor}_stack.tif"
        write_stack_raster(stack, s_grid, path)
        stacks[sensor] = stack
        n = len(stack.dates) * (len(SENSOR_BANDS[sensor]) + 1)
        inputs.append(EngineInput(str(path), mean=[0.0] * n, std=[STACK_SCALE] * n))
    if not stacks:
        raise InputError("no Sentinel-2 or Sentinel-1 frames given")

    predictor = TemporalPredictor(model, params.get("device") or "auto", hr_res_m, stacks)
    tif, qml = output_dir / f"{name}.tif", output_dir / f"{name}.qml"
    outputs: List[Dict[str, Any]] = []
    with AtomicOutputs(output_dir) as atomic:
        result = run_inference(inputs, predictor, tif, classes, tile_size=tile_size, overlap=overlap,
                               batch_size=batch_size, aoi=aoi, grid=hr_grid, progress=progress.sub(0.05, 0.85),
                               outputs=atomic, tags={"skysense_model": str(params["model"]),
                                                     "skysense_series": ",".join(stacks)})
        write_qml(atomic.path_for(qml), raster_qml(classes), final_name=qml)
        outputs.append({"path": str(tif.resolve()), "kind": "raster", "role": "classes", "qml": str(qml.resolve())})
        features = 0
        if params.get("vectorize", True):
            vec, vqml = output_dir / f"{name}.gpkg", output_dir / f"{name}_vector.qml"
            write_qml(atomic.path_for(vqml), vector_qml(classes), final_name=vqml)
            counts = polygonize(result.written_path, atomic.path_for(vec), classes, layer=name, min_area=min_area,
                                simplify=simplify, progress=progress.sub(0.85, 0.97), final_name=vec)
            features = counts["features"]
            outputs.append({"path": str(vec.resolve()), "kind": "vector", "role": "polygons", "layer": name,
                            "qml": str(vqml.resolve())})
    unit_area, _ = pixel_area(result.grid)
    metrics = {
        "tiles": result.tiles, "tiles_without_data": result.skipped_tiles, "seconds": round(result.seconds, 3),
        "megapixels": result.megapixels,
        "features": features,
        "class_pixels": {c["name"]: result.class_counts.get(c["value"], 0) for c in classes},
        "class_area_m2": {c["name"]: result.class_counts.get(c["value"], 0) * unit_area for c in classes},
        "series": {sensor: stack.report() for sensor, stack in stacks.items()},
    }
    skipped = sum(len(s.skipped) for s in stacks.values())
    progress.update(1.0, f"done ({skipped} Sentinel frame(s) skipped)" if skipped else "done")
    return {"outputs": outputs, "classes": classes, "metrics": metrics, "device": predictor.device}
