"""Build the JSON params of each backend job kind from QGIS layers (shared by dock and Processing)."""
from __future__ import annotations

import datetime as dt
import os
import re
from typing import Optional, Sequence, Tuple

from qgis.core import QgsMapLayer, QgsRasterLayer, QgsVectorLayer

from .layer_sources import LayerSourceError, guess_date, raster_path, vector_source

DEVICES = ("auto", "cpu", "cuda")
RUNTIMES = ("auto", "torch", "onnx", "compile", "openvino")  # new ones last: Processing stores the index. The backend's land-cover runtimes (backend.inference.runtime)


def job_name(kind: str, when: Optional[dt.datetime] = None) -> str:
    """Unique, file-name safe name so a new run never overwrites an earlier result."""
    when = when or dt.datetime.now()
    return f"{kind}_{when.strftime('%Y%m%d_%H%M%S')}"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "result"


def _output_dir(path: str) -> str:
    if not path:
        raise LayerSourceError("Choose an output folder.")
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    return path


def _device(device: str) -> str:
    if device not in DEVICES:
        raise LayerSourceError(f"Unknown device '{device}': use one of {', '.join(DEVICES)}.")
    return device


def _runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise LayerSourceError(f"Unknown runtime '{runtime}': use one of {', '.join(RUNTIMES)}.")
    return runtime


def dated_stack(entries: Sequence[Tuple[QgsRasterLayer, Optional[dt.date]]], label: str) -> list:
    """[{'path', 'date'}] for a Sentinel stack; every layer needs a date."""
    stack = []
    for layer, date in entries:
        path = raster_path(layer)
        date = date or guess_date(layer.name()) or guess_date(os.path.basename(path))
        if date is None:
            raise LayerSourceError(f"{label} layer '{layer.name()}' has no acquisition date: set it in the table.")
        stack.append({"path": path, "bands": None, "date": date.isoformat()})
    return stack


def landcover_params(hr: QgsRasterLayer, output_dir: str, name: str, *, bands: Sequence[int] = (1, 2, 3),
                     s2=(), s1=(), model: Optional[str] = None, tile_size: Optional[int] = None, overlap: int = 64,
                     batch_size: int = 0, device: str = "auto", aoi: Optional[dict] = None,
                     vectorize: bool = True, min_area: float = 0.0, simplify: float = 0.0,
                     runtime: str = "auto", tta: bool = False) -> dict:
    hr_path = raster_path(hr)  # refuses non-file layers before anything else is checked
    if hr.bandCount() < max(bands):
        raise LayerSourceError(f"Layer '{hr.name()}' has {hr.bandCount()} band(s); the model reads bands "
                               f"{list(bands)}.")
    tile_size = int(tile_size) if tile_size else None  # None or 0: the model's own tile size
    if tile_size and overlap * 2 >= tile_size:
        raise LayerSourceError(f"Overlap {overlap} is too large for tiles of {tile_size} pixels.")
    if tta and (s2 or s1):
        raise LayerSourceError("Averaging over flips applies to high-resolution maps only: remove the "
                               "Sentinel-2/-1 layers or untick it.")
    return {
        "hr": [{"path": hr_path, "bands": list(bands)}],
        "s2": dated_stack(s2, "Sentinel-2"),
        "s1": dated_stack(s1, "Sentinel-1"),
        "model": model or None,
        "output_dir": _output_dir(output_dir),
        "name": safe_name(name),
        "tile_size": tile_size, "overlap": int(overlap), "batch_size": int(batch_size),
        "device": _device(device), "runtime": _runtime(runtime), "aoi": aoi,
        "vectorize": bool(vectorize), "min_area": float(min_area), "simplify": float(simplify),
        "tta": bool(tta),
    }


def pair_tiling(tile_size: Optional[int], overlap: Optional[int] = None) -> dict:
    """tile_size/overlap of a change or damage job. No tile size (or 0): the model file's own, with the
    backend's pair overlap (32); a tile size with no overlap gets a quarter of the tile, at most 64."""
    tile = int(tile_size) if tile_size else None
    if overlap is None:
        overlap = min(64, tile // 4) if tile else PAIR_OVERLAP
    if tile and overlap * 2 >= tile:
        raise LayerSourceError(f"Overlap {overlap} is too large for tiles of {tile} pixels.")
    return {"tile_size": tile, "overlap": int(overlap)}


PAIR_OVERLAP = 32  # the backend's default overlap for change and damage jobs (PairOptions)


def change_params(pre: QgsRasterLayer, post: QgsRasterLayer, output_dir: str, name: str, *,
                  aoi: Optional[dict] = None, model: Optional[str] = None,
                  landcover_model: Optional[str] = None, tile_size: Optional[int] = None,
                  overlap: Optional[int] = None, device: str = "auto", vectorize: bool = True) -> dict:
    return {
        "pre": raster_path(pre), "post": raster_path(post),
        "aoi": aoi, "model": model or None, "landcover_model": landcover_model or None,
        "output_dir": _output_dir(output_dir), "name": safe_name(name),
        **pair_tiling(tile_size, overlap), "device": _device(device),
        "vectorize": bool(vectorize),
    }


def damage_params(pre: QgsRasterLayer, post: QgsRasterLayer, output_dir: str, name: str, *,
                  buildings: Optional[QgsVectorLayer] = None, model: Optional[str] = None,
                  aoi: Optional[dict] = None, tile_size: Optional[int] = None, overlap: Optional[int] = None,
                  device: str = "auto") -> dict:
    # A multi-layer GeoPackage is copied so the backend reads exactly the chosen layer.
    buildings_path = (vector_source(buildings, allow_memory_export=True, single_layer=True)[0]
                      if buildings is not None else None)
    return {
        "pre": raster_path(pre), "post": raster_path(post),
        "buildings": buildings_path,
        "aoi": aoi, "model": model or None,
        "output_dir": _output_dir(output_dir), "name": safe_name(name),
        **pair_tiling(tile_size, overlap), "device": _device(device),
    }


def finetune_params(raster: QgsRasterLayer, labels: QgsVectorLayer, class_field: str, output_dir: str,
                    name: str, *, base_model: Optional[str] = None, epochs: int = 10,
                    freeze_encoder: bool = False, resume: bool = False, device: str = "auto") -> dict:
    if labels is None:
        raise LayerSourceError("Choose a polygon layer with training labels.")
    if labels.fields().indexOf(class_field) < 0:
        raise LayerSourceError(f"Layer '{labels.name()}' has no field '{class_field}'.")
    if labels.featureCount() == 0:
        raise LayerSourceError(f"Layer '{labels.name()}' has no features to train on.")
    labels_path = vector_source(labels, allow_memory_export=True, single_layer=True)[0]
    if epochs < 1:
        raise LayerSourceError("Train for at least one epoch.")
    return {
        "raster": raster_path(raster), "labels": labels_path,
        "class_field": class_field, "base_model": base_model or None, "epochs": int(epochs),
        "freeze_encoder": bool(freeze_encoder), "resume": bool(resume), "device": _device(device),
        "output_dir": _output_dir(output_dir), "name": safe_name(name),
    }


def finetune_checkpoint(output_dir: str, name: str) -> str:
    """Where the backend saves a fine-tune's last completed epoch (what `resume` continues from)."""
    return os.path.join(os.path.abspath(os.path.expanduser(output_dir)), f"{safe_name(name)}_checkpoint.pth")


def export_params(source: str, dest: str, layer: Optional[str] = None) -> dict:
    fmt = {".gpkg": "GPKG", ".shp": "ESRI Shapefile"}.get(os.path.splitext(dest)[1].lower())
    if fmt is None:
        raise LayerSourceError(f"Cannot export to '{dest}': use a .gpkg or .shp file name.")
    return {"source": source, "layer": layer, "dest": os.path.abspath(dest), "format": fmt}


def layer_is_polygon(layer: QgsMapLayer) -> bool:
    from qgis.core import QgsWkbTypes
    return isinstance(layer, QgsVectorLayer) and layer.geometryType() == QgsWkbTypes.PolygonGeometry
