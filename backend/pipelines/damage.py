"""Building damage assessment from pre/post imagery (xBD joint damage scale).

Method (no damage labels exist in the sample data, so the default is an explicit rule on top of
the siamese change model, not a trained damage classifier):

1. P(change) per pixel from the siamese SkySense change model on the pre image's grid
   (the post image is reprojected onto it).
2. Per building footprint: the changed-pixel fraction inside the footprint (P >= threshold) and in
   a ring of ``ring_m`` metres around it (debris and collapse spill outside the outline).
3. ``score = 0.75 * footprint_fraction + 0.25 * ring_fraction``, mapped to the xBD classes with
   ``DAMAGE_THRESHOLDS``: score < 0.10 no damage, < 0.30 minor, < 0.55 major, else destroyed.
4. ``confidence`` = mean pixel certainty max(P, 1 - P) inside the footprint (how sure the model is
   of its changed / unchanged call for the pixels that produced the score).

A trained DamageModel checkpoint (task "damage", e.g. fine-tuned on xBD) runs instead when given
as ``model``: then the class is the argmax of the footprint-mean probabilities of classes 1..4 and
the confidence is that mean probability.  Without footprints, buildings are localised first with
the building class of the land-cover model on the pre image.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import rasterio.features
import shapely
import shapely.geometry

from backend.errors import InputError
from backend.io.raster import Grid

ROOT = Path(__file__).resolve().parents[2]
DAMAGE_PALETTE = ROOT / "resources" / "palettes" / "damage.json"
DAMAGE_THRESHOLDS: Tuple[float, float, float] = (0.10, 0.30, 0.55)
FOOTPRINT_WEIGHT = 0.75
MIN_COVERAGE = 0.5


def damage_classes() -> List[Dict[str, Any]]:
    """The four xBD classes (value 1..4) with names and colours from the damage palette."""
    return json.loads(DAMAGE_PALETTE.read_text())["classes"]


def damage_score(footprint_fraction: np.ndarray, ring_fraction: np.ndarray) -> np.ndarray:
    """Weighted changed fraction; rings with no valid pixel count as the footprint alone."""
    ring = np.where(np.isnan(ring_fraction), footprint_fraction, ring_fraction)
    return FOOTPRINT_WEIGHT * footprint_fraction + (1 - FOOTPRINT_WEIGHT) * ring


def classify_damage(score: np.ndarray, thresholds: Sequence[float] = DAMAGE_THRESHOLDS) -> np.ndarray:
    """Score -> xBD class value: 1 no damage, 2 minor, 3 major, 4 destroyed."""
    return (np.digitize(np.asarray(score, np.float64), np.asarray(thresholds)) + 1).astype(np.int64)


def _label_image(geoms: Sequence, grid: Grid, all_touched: bool = False) -> np.ndarray:
    """int32 [H,W]: 1-based index of the geometry covering each pixel centre, 0 elsewhere."""
    shapes = [(shapely.geometry.mapping(g), i + 1) for i, g in enumerate(geoms) if not g.is_empty]
    if not shapes:
        return np.zeros((grid.height, grid.width), np.int32)
    return rasterio.features.rasterize(shapes, out_shape=(grid.height, grid.width), transform=grid.transform,
                                       fill=0, dtype="int32", all_touched=all_touched)


@dataclass
class BuildingStats:
    """Per-building pixel statistics (arrays of length n_buildings)."""
    pixels: np.ndarray
    valid_pixels: np.ndarray
    coverage: np.ndarray
    footprint_fraction: np.ndarray
    ring_fraction: np.ndarray
    mean_probability: np.ndarray
    certainty: np.ndarray


def building_change_stats(probability: np.ndarray, valid: np.ndarray, grid: Grid, footprints: Sequence,
                          changed: Optional[np.ndarray] = None, threshold: float = 0.5,
                          ring_m: float = 2.0) -> BuildingStats:
    """Changed fractions, mean P(change) and certainty inside each footprint and its ring.

    changed: the change decision per pixel (default P >= threshold)."""
    n = len(footprints)
    ids = _label_image(footprints, grid)
    # Footprints smaller than a pixel centre get the pixels they touch.
    missing = np.setdiff1d(np.arange(1, n + 1), np.unique(ids))
    if missing.size:
        touched = _label_image([footprints[i - 1] for i in missing], grid, all_touched=True)
        fill = (ids == 0) & (touched > 0)
        ids[fill] = missing[touched[fill] - 1]
    from backend.pipelines.change import metres_to_grid_units

    ring_width = metres_to_grid_units(grid, ring_m)
    rings = [g.buffer(ring_width).difference(g) if ring_m > 0 else shapely.geometry.Polygon() for g in footprints]
    ring_ids = _label_image(rings, grid)
    ring_ids[ids > 0] = 0

    changed = ((probability >= threshold) if changed is None else changed) & valid
    certainty = np.maximum(probability, 1 - probability)

    def sums(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
        return np.bincount(labels.ravel(), weights=values.ravel(), minlength=n + 1)[1:]

    pixels = np.bincount(ids.ravel(), minlength=n + 1)[1:].astype(np.float64)
    valid_fp = sums(ids, valid.astype(np.float64))
    ring_valid = sums(ring_ids, valid.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        footprint_fraction = sums(ids, changed.astype(np.float64)) / valid_fp
        ring_fraction = sums(ring_ids, changed.astype(np.float64)) / ring_valid
        mean_probability = sums(ids, np.where(valid, probability, 0.0)) / valid_fp
        mean_certainty = sums(ids, np.where(valid, certainty, 0.0)) / valid_fp
    pixel_area = abs(grid.transform.a * grid.transform.e)
    areas = np.asarray([g.area for g in footprints], np.float64)
    coverage = np.clip(valid_fp * pixel_area / np.maximum(areas, pixel_area), 0.0, 1.0)
    return BuildingStats(pixels, valid_fp, coverage, footprint_fraction, ring_fraction,
                         mean_probability, mean_certainty)


def footprint_class_probabilities(class_probs: np.ndarray, valid: np.ndarray, grid: Grid,
                                  footprints: Sequence) -> Tuple[np.ndarray, np.ndarray]:
    """DamageModel route: mean probabilities of classes 1..4 (renormalised) per footprint, and valid pixels."""
    n = len(footprints)
    ids = _label_image(footprints, grid, all_touched=False)
    ids = np.where(valid, ids, 0)
    counts = np.bincount(ids.ravel(), minlength=n + 1)[1:].astype(np.float64)
    means = np.stack([np.bincount(ids.ravel(), weights=class_probs[k].ravel(), minlength=n + 1)[1:]
                      for k in range(1, 5)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = means / means.sum(axis=1, keepdims=True)
    return means, counts


# ----------------------------------------------------------------------------- footprints

def load_footprints(path: Any, grid: Grid) -> Tuple[List[Any], List[Any], int]:
    """Footprint polygons from any OGR vector (any CRS) -> (geoms in grid CRS, source ids, total read).

    Only footprints intersecting the grid are returned; multi-polygons stay whole.
    """
    import fiona
    import rasterio.warp
    from backend.io.raster import parse_crs

    path = Path(path)
    if not path.is_file():
        raise InputError(f"building footprints not found: {path}")
    try:
        collection = fiona.open(path)
    except Exception as exc:
        raise InputError(f"building footprints {path} are not a readable vector file ({exc})") from None
    with collection:
        src_crs = parse_crs(collection.crs_wkt) if collection.crs_wkt else None
        if src_crs is None and grid.crs is not None:
            raise InputError(f"building footprints {path} have no CRS; assign one (e.g. EPSG:4326)")
        grid_box = shapely.geometry.box(*grid.bounds)
        geoms, ids, total = [], [], 0
        for feature in collection:
            total += 1
            geom = feature.geometry
            if geom is None or geom.type not in ("Polygon", "MultiPolygon"):
                continue
            mapping = {"type": geom.type, "coordinates": geom.coordinates}
            if src_crs is not None and src_crs != grid.crs:
                mapping = rasterio.warp.transform_geom(src_crs, grid.crs, mapping)
            shape = shapely.geometry.shape(mapping)
            if not shape.is_valid:
                shape = shapely.make_valid(shape)
            if shape.is_empty or shape.area <= 0 or not shape.intersects(grid_box):
                continue
            geoms.append(shape)
            ids.append(feature.id)
    if total == 0:
        raise InputError(f"building footprints {path} hold no features")
    return geoms, ids, total


def localize_buildings(pre: Any, grid: Grid, outputs, path: Path, landcover_model: Any, *, aoi, tile_size,
                       overlap: int, batch_size: int, device: str, min_area: float, progress) -> Tuple[list, Dict]:
    """Building polygons from the land-cover model's 'building' class on the pre image."""
    from backend.pipelines.change import mask_polygons, predict_landcover

    classes, meta, _ = predict_landcover(pre, grid, outputs, path, landcover_model, aoi=aoi, tile_size=tile_size,
                                         overlap=overlap, batch_size=batch_size, device=device,
                                         progress=progress, what="pre")
    building = [int(c["value"]) for c in meta["classes"] if str(c["name"]).lower() in ("building", "buildings")]
    if not building:
        raise InputError(f"the land-cover model {landcover_model} has no 'building' class to localise buildings; "
                         "give building footprints instead")
    geoms, _, _ = mask_polygons(classes == building[0], grid, min_area=min_area)
    return geoms, meta


# ----------------------------------------------------------------------------- pipeline

def _classify_with_change(found: Dict[str, Any], grid: Grid, geoms: list, threshold: float,
                          ring_m: float) -> Dict[str, np.ndarray]:
    stats = building_change_stats(found["probability"], found["valid"], grid, geoms, changed=found["change"],
                                  ring_m=ring_m)
    score = damage_score(np.nan_to_num(stats.footprint_fraction), stats.ring_fraction)
    return {"damage": classify_damage(score), "confidence": np.nan_to_num(stats.certainty),
            "score": score, "changed_fraction": np.nan_to_num(stats.footprint_fraction),
            "ring_changed_fraction": np.nan_to_num(stats.ring_fraction, nan=-1.0),
            "mean_probability": np.nan_to_num(stats.mean_probability), "coverage": stats.coverage}


def _classify_with_damage_model(engine_result, grid: Grid, geoms: list) -> Dict[str, np.ndarray]:
    """Per building: class with the largest summed confidence among its pixels of classes 1..4."""
    import rasterio

    with rasterio.open(engine_result.written_path) as src:
        classes = src.read(1)
    with rasterio.open(engine_result.confidence_written_path) as src:
        confidence = src.read(1).astype(np.float64) / 100.0
    valid = classes != engine_result.nodata
    ids = _label_image(geoms, grid)
    n = len(geoms)
    votes = np.stack([np.bincount(ids.ravel(), weights=np.where(valid & (classes == k), confidence, 0).ravel(),
                                  minlength=n + 1)[1:] for k in range(1, 5)], axis=1)
    counts = np.stack([np.bincount(ids.ravel(), weights=(valid & (classes == k)).ravel().astype(np.float64),
                                   minlength=n + 1)[1:] for k in range(1, 5)], axis=1)
    damage = votes.argmax(axis=1) + 1
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = votes[np.arange(n), damage - 1] / counts[np.arange(n), damage - 1]
    valid_fp = np.bincount(ids.ravel(), weights=valid.ravel().astype(np.float64), minlength=n + 1)[1:]
    areas = np.asarray([g.area for g in geoms], np.float64)
    pixel_area = abs(grid.transform.a * grid.transform.e)
    coverage = np.clip(valid_fp * pixel_area / np.maximum(areas, pixel_area), 0, 1)
    # Footprints where the model saw only background get no class: coverage 0 drops them below.
    coverage = np.where(counts.sum(axis=1) > 0, coverage, 0.0)
    nan = np.full(n, -1.0)
    return {"damage": damage, "confidence": np.nan_to_num(conf), "score": nan, "changed_fraction": nan,
            "ring_changed_fraction": nan, "mean_probability": nan, "coverage": coverage}


def run_damage(params: Dict[str, Any], progress=None) -> Dict[str, Any]:
    """Per-building xBD damage classes (polygons + raster) from pre/post imagery.

    params: pre, post (path, {"path", "bands"} or list of tiles), output_dir, name="damage",
    buildings=None (vector path, any CRS; without it buildings are localised with landcover_model),
    model=None (change model -> rule in the module docstring; a "damage" model -> DamageModel head),
    landcover_model=None (default land-cover model), aoi=None, ring_m=2.0, min_coverage=0.5,
    min_building_area=20 (m², localised buildings only), tile_size, overlap=32, batch_size=0 (auto), device="auto".

    Memory: damage jobs are per AOI (a neighbourhood, not a scene): the per-building statistics use
    whole-raster P(change) / change / valid arrays (predict_change(whole_arrays=True), 6 bytes a
    pixel) and footprint label images. Scene-sized change maps go through run_change, whose
    post-processing is windowed.
    """
    import tempfile

    from backend.progress import Progress
    from backend.pipelines.change import resolve_inputs

    progress = progress or Progress()
    for key in ("pre", "post", "output_dir"):
        if not params.get(key):
            raise InputError(f"missing parameter '{key}'")
    with tempfile.TemporaryDirectory(prefix="skysense-damage-") as workdir:
        return _run_damage(resolve_inputs(params, ("pre", "post"), Path(workdir)), progress)


def _run_damage(params: Dict[str, Any], progress) -> Dict[str, Any]:
    from backend.inference.predictors import resolve_device
    from backend.io.atomic import AtomicOutputs
    from backend.io.writer import class_colormap
    from backend.io.style import raster_qml, vector_qml, write_qml
    from backend.pipelines.change import (DEFAULT_LANDCOVER_MODEL, _float_param, _write_raster, pixel_area,
                                          predict_change, write_polygons)

    name = str(params.get("name") or "damage")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise InputError(f"output name {name!r} may only hold letters, digits, '_' and '-'")
    ring_m = _float_param(params, "ring_m", 2.0)
    min_coverage = _float_param(params, "min_coverage", MIN_COVERAGE)
    min_building_area = _float_param(params, "min_building_area", 20.0)
    overlap = int(params.get("overlap", 32) if params.get("overlap") is not None else 32)
    batch_size = int(params.get("batch_size") or 0)  # 0: the engine picks for the device
    device = resolve_device(params.get("device") or "auto")
    out_dir = Path(params["output_dir"]).resolve()
    paths = {k: out_dir / f"{name}{suffix}" for k, suffix in [
        ("raster", ".tif"), ("raster_qml", ".qml"), ("vector", ".gpkg"), ("vector_qml", "_vector.qml"),
        ("pixels", "_pixels.tif"), ("probability", "_change_probability.tif"),
        ("buildings", "_localised_buildings_classes.tif")]}
    classes = damage_classes()

    with AtomicOutputs(out_dir) as outputs:
        found = predict_change(params["pre"], params["post"], outputs, paths["pixels"], paths["probability"],
                               model_path=params.get("model"), aoi=params.get("aoi"),
                               tile_size=params.get("tile_size"), overlap=overlap, batch_size=batch_size,
                               device=device, progress=progress.sub(0.0, 0.6), tasks=("change", "damage"),
                               whole_arrays=True)  # per-building statistics: whole arrays of the AOI
        grid = found["grid"]
        outs: List[Dict[str, Any]] = []
        if params.get("buildings"):
            geoms, source_ids, total = load_footprints(params["buildings"], grid)
            source = "footprints"
        else:
            geoms, _ = localize_buildings(params["pre"], grid, outputs, paths["buildings"],
                                          params.get("landcover_model") or DEFAULT_LANDCOVER_MODEL,
                                          aoi=params.get("aoi"), tile_size=params.get("landcover_tile_size"),
                                          overlap=overlap, batch_size=batch_size, device=device,
                                          min_area=min_building_area, progress=progress.sub(0.6, 0.85))
            source_ids, total, source = [str(k + 1) for k in range(len(geoms))], len(geoms), "landcover model"
            outs.append({"path": str(paths["buildings"]), "kind": "raster", "role": "landcover_pre"})
        progress.update(0.88, f"assessing {len(geoms)} buildings")
        if found["meta"]["task"] == "change":
            method = "change-model rule"
            result = _classify_with_change(found, grid, geoms, 0.5, ring_m)
        else:
            method = "damage model"
            result = _classify_with_damage_model(found["engine"], grid, geoms)
        assessed = np.nonzero(result["coverage"] >= min_coverage)[0] if geoms else np.zeros(0, np.int64)

        raster = np.zeros((grid.height, grid.width), np.uint8)
        if assessed.size:
            raster = rasterio.features.rasterize(
                [(shapely.geometry.mapping(geoms[i]), int(result["damage"][i])) for i in assessed],
                out_shape=raster.shape, transform=grid.transform, fill=0, dtype="uint8")
        _write_raster(outputs.path_for(paths["raster"]), raster, grid, 0, paths["raster"])
        with rasterio.open(outputs.path_for(paths["raster"]), "r+") as dst:
            dst.write_colormap(1, class_colormap(classes, 0))
        write_qml(outputs.path_for(paths["raster_qml"]), raster_qml(classes), paths["raster_qml"])

        names = {int(c["value"]): c["name"] for c in classes}
        unit_area, unit = pixel_area(grid)
        area_factor = unit_area / abs(grid.transform.a * grid.transform.e)
        records = []
        for i in assessed:
            records.append({
                "id": len(records) + 1, "source_id": str(source_ids[i]), "damage": int(result["damage"][i]),
                "damage_class": names[int(result["damage"][i])],
                "confidence": round(float(result["confidence"][i]), 4),
                "score": round(float(result["score"][i]), 4),
                "changed_fraction": round(float(result["changed_fraction"][i]), 4),
                "ring_changed_fraction": round(float(result["ring_changed_fraction"][i]), 4),
                "mean_change_probability": round(float(result["mean_probability"][i]), 4),
                "coverage": round(float(result["coverage"][i]), 4),
                f"area_{unit}": round(float(geoms[i].area) * area_factor, 2)})
        fields = {"id": "int", "source_id": "str", "damage": "int", "damage_class": "str", "confidence": "float",
                  "score": "float", "changed_fraction": "float", "ring_changed_fraction": "float",
                  "mean_change_probability": "float", "coverage": "float", f"area_{unit}": "float"}
        write_polygons(outputs.path_for(paths["vector"]), name, [geoms[i] for i in assessed], records, fields,
                       grid.crs, paths["vector"])
        write_qml(outputs.path_for(paths["vector_qml"]), vector_qml(classes, field="damage", outline=True),
                  paths["vector_qml"])
        progress.update(0.97, "writing outputs")

    counts = {c["name"]: int(sum(1 for r in records if r["damage"] == c["value"])) for c in classes}
    metrics = {
        "method": method, "buildings_source": source, "buildings_read": int(total),
        "buildings_in_grid": len(geoms), "buildings_assessed": len(records),
        "buildings_not_covered": int(len(geoms) - len(records)), "min_coverage": min_coverage,
        "damage_counts": counts, "thresholds": list(DAMAGE_THRESHOLDS), "ring_m": ring_m,
        "mean_confidence": round(float(np.mean([r["confidence"] for r in records])), 4) if records else None,
        "grid": {"crs": grid.crs.to_string() if grid.crs else None, "width": grid.width, "height": grid.height},
    }
    outs = [{"path": str(paths["vector"]), "kind": "vector", "role": "buildings", "layer": name,
             "qml": str(paths["vector_qml"])},
            {"path": str(paths["raster"]), "kind": "raster", "role": "damage", "qml": str(paths["raster_qml"])},
            {"path": str(paths["probability"]), "kind": "raster", "role": "probability",
             "description": "P(change) x 100 (uint8, 255 = no data)" if method != "damage model"
             else "confidence of the pixel class x 100"},
            {"path": str(paths["pixels"]), "kind": "raster", "role": "pixel_classes"}] + outs
    progress.update(1.0, f"{len(records)} buildings assessed")
    return {"outputs": outs, "classes": classes, "metrics": metrics, "device": found["device"]}
