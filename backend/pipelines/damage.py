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
import rasterio
import rasterio.features
import rasterio.windows
import shapely
import shapely.geometry
from rasterio.windows import Window

from backend.errors import InputError
from backend.io.raster import Grid
from backend.pipelines.change_windows import (DEFAULT_WINDOW, WindowRasterWriter, processing_windows, window_size,
                                              windowed_mask_polygons)

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


def _window_labels(geoms: Sequence, values: np.ndarray, transform, shape: Tuple[int, int],
                   all_touched: bool = False) -> np.ndarray:
    """int32 label image of `shape` on `transform`: values[i] on the pixels of geoms[i] (later win)."""
    shapes = [(shapely.geometry.mapping(g), int(v)) for g, v in zip(geoms, values) if not g.is_empty]
    if not shapes:
        return np.zeros(shape, np.int32)
    return rasterio.features.rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="int32",
                                       all_touched=all_touched)


class _Selector:
    """Which geometries may touch a processing window (bounds test with a one-pixel margin)."""

    def __init__(self, geoms: Sequence, grid: Grid):
        self.grid = grid
        self.bounds = shapely.bounds(list(geoms)) if len(geoms) else np.zeros((0, 4))
        self.margin_x, self.margin_y = abs(grid.transform.a) + abs(grid.transform.b), \
            abs(grid.transform.d) + abs(grid.transform.e)

    def __call__(self, window: Window, among: Optional[np.ndarray] = None) -> np.ndarray:
        """Indices (ascending) of the geometries (or of `among`) whose bounds meet the window."""
        left, bottom, right, top = rasterio.windows.bounds(window, self.grid.transform)
        left, right = min(left, right) - self.margin_x, max(left, right) + self.margin_x
        bottom, top = min(bottom, top) - self.margin_y, max(bottom, top) + self.margin_y
        b = self.bounds if among is None else self.bounds[among]
        hit = (b[:, 0] <= right) & (b[:, 2] >= left) & (b[:, 1] <= top) & (b[:, 3] >= bottom)
        return np.nonzero(hit)[0] if among is None else among[hit]


class BuildingLabels:
    """Footprint and ring label images of one processing window, as the whole-grid rasterisation
    would give them: footprints cover the pixel centres inside them (the later footprint wins);
    footprints with no pixel centre anywhere in the grid get the pixels they touch (where no other
    footprint is); rings (ring_width grid units around each footprint) lose all footprint pixels.

    Which footprints need the touched pixels is decided once, on the whole grid, window by window
    (a rasterisation pass without reading any raster), so windows never change the statistics.
    """

    def __init__(self, footprints: Sequence, grid: Grid, ring_width: Optional[float] = None, window: int = 0):
        self.footprints, self.grid = list(footprints), grid
        self.n = len(self.footprints)
        self.select = _Selector(self.footprints, grid)
        self.rings = None
        if ring_width is not None:
            self.rings = [g.buffer(ring_width).difference(g) if ring_width > 0 else shapely.geometry.Polygon()
                          for g in self.footprints]
            self.select_ring = _Selector(self.rings, grid)
        self.windows = processing_windows(grid.width, grid.height, int(window or DEFAULT_WINDOW))
        self._missing: Optional[np.ndarray] = None

    @property
    def missing(self) -> np.ndarray:
        """1-based ids (ascending) of the footprints with no pixel centre in the whole grid."""
        if self._missing is None:
            present = np.zeros(self.n + 1, bool)
            for win in self.windows:
                present[np.unique(self._centre_labels(win))] = True
            self._missing = np.nonzero(~present[1:])[0] + 1
            self.missing_value = np.zeros(self.n + 1, np.int64)
            self.missing_value[self._missing] = np.arange(1, len(self._missing) + 1)
        return self._missing

    def _shape(self, win: Window) -> Tuple[int, int]:
        return int(win.height), int(win.width)

    def _centre_labels(self, win: Window) -> np.ndarray:
        idx = self.select(win)
        return _window_labels([self.footprints[i] for i in idx], idx + 1,
                              self.grid.window_transform(win), self._shape(win))

    def footprint_labels(self, win: Window, fallback: bool = True) -> np.ndarray:
        """int32 ids (1-based, 0 = none) of the window's pixels; fallback: the sub-pixel rule."""
        ids = self._centre_labels(win)
        if fallback and self.missing.size:
            idx = self.select(win, self.missing - 1)
            if idx.size:
                # whole grid: values 1..len(missing) in the order of `missing` (later wins)
                touched = _window_labels([self.footprints[i] for i in idx], self.missing_value[idx + 1],
                                         self.grid.window_transform(win), self._shape(win),
                                         all_touched=True)
                fill = (ids == 0) & (touched > 0)
                ids[fill] = self.missing[touched[fill] - 1]
        return ids

    def ring_labels(self, win: Window, ids: np.ndarray) -> np.ndarray:
        idx = self.select_ring(win)
        ring_ids = _window_labels([self.rings[i] for i in idx], idx + 1,
                                  self.grid.window_transform(win), self._shape(win))
        ring_ids[ids > 0] = 0
        return ring_ids


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


class BuildingChangeAccumulator:
    """Per-building sums of a change map, added one processing window at a time (np.bincount with
    minlength). Counts are exact; P(change) from the engine is a whole percent in float32, so its
    float64 sums (and those of the certainty) are exact too: the statistics do not depend on the
    windows (for arbitrary float P, a building across window edges may differ in the last bit)."""

    def __init__(self, footprints: Sequence, grid: Grid, threshold: float = 0.5, ring_m: float = 2.0,
                 window: int = 0):
        from backend.pipelines.change import metres_to_grid_units

        self.grid, self.threshold, self.n = grid, float(threshold), len(footprints)
        self.areas = np.asarray([g.area for g in footprints], np.float64)
        ring_width = metres_to_grid_units(grid, ring_m) if ring_m > 0 else 0.0
        self.labels = BuildingLabels(footprints, grid, ring_width, window=window)
        self.windows = self.labels.windows
        names = ("pixels", "valid", "changed", "probability", "certainty", "ring_valid", "ring_changed")
        self.sums = {k: np.zeros(self.n + 1, np.float64) for k in names}

    def add(self, win: Window, probability: np.ndarray, change: Optional[np.ndarray], valid: np.ndarray) -> None:
        """One window's P(change) (float32), change decision (None: P >= threshold) and valid mask."""
        if not self.n:
            return
        ids = self.labels.footprint_labels(win)
        ring_ids = self.labels.ring_labels(win, ids)
        changed = ((probability >= self.threshold) if change is None else change) & valid
        certainty = np.maximum(probability, 1 - probability)
        n = self.n

        def add(key: str, labels: np.ndarray, values: Optional[np.ndarray]) -> None:
            self.sums[key] += np.bincount(labels.ravel(), weights=None if values is None else values.ravel(),
                                          minlength=n + 1)

        add("pixels", ids, None)
        add("valid", ids, valid.astype(np.float64))
        add("ring_valid", ring_ids, valid.astype(np.float64))
        add("changed", ids, changed.astype(np.float64))
        add("ring_changed", ring_ids, changed.astype(np.float64))
        add("probability", ids, np.where(valid, probability, 0.0))
        add("certainty", ids, np.where(valid, certainty, 0.0))

    def result(self) -> BuildingStats:
        s = {k: v[1:] for k, v in self.sums.items()}
        valid_fp = s["valid"]
        with np.errstate(invalid="ignore", divide="ignore"):
            footprint_fraction = s["changed"] / valid_fp
            ring_fraction = s["ring_changed"] / s["ring_valid"]
            mean_probability = s["probability"] / valid_fp
            mean_certainty = s["certainty"] / valid_fp
        pixel_area = abs(self.grid.transform.a * self.grid.transform.e)
        coverage = np.clip(valid_fp * pixel_area / np.maximum(self.areas, pixel_area), 0.0, 1.0)
        return BuildingStats(s["pixels"].copy(), valid_fp, coverage, footprint_fraction, ring_fraction,
                             mean_probability, mean_certainty)


def building_change_stats(probability: np.ndarray, valid: np.ndarray, grid: Grid, footprints: Sequence,
                          changed: Optional[np.ndarray] = None, threshold: float = 0.5,
                          ring_m: float = 2.0, window: int = 0) -> BuildingStats:
    """Changed fractions, mean P(change) and certainty inside each footprint and its ring, from
    whole-grid arrays (run_damage streams the windows of the engine's rasters instead).

    changed: the change decision per pixel (default P >= threshold); window: processing window (px,
    default change_windows.DEFAULT_WINDOW), which does not change the results."""
    acc = BuildingChangeAccumulator(footprints, grid, threshold=threshold, ring_m=ring_m, window=window)
    for win in acc.windows:
        rows, cols = win.toslices()
        acc.add(win, probability[rows, cols], None if changed is None else changed[rows, cols], valid[rows, cols])
    return acc.result()


class DamageVoteAccumulator:
    """DamageModel route, window by window: per footprint (pixel centres, no sub-pixel fallback) the
    summed confidence and the pixel count of each class 1..4, and its valid pixels. A footprint
    inside one window gets the very sums of one whole-grid pass; one across window edges adds its
    confidence / 100 (float64) in another order, so its confidence may differ in the last bit."""

    def __init__(self, footprints: Sequence, grid: Grid, nodata: int, window: int = 0):
        self.grid, self.nodata, self.n = grid, nodata, len(footprints)
        self.areas = np.asarray([g.area for g in footprints], np.float64)
        self.labels = BuildingLabels(footprints, grid, None, window=window) if self.n else None
        self.votes = np.zeros((self.n + 1, 4), np.float64)
        self.counts = np.zeros((self.n + 1, 4), np.float64)
        self.valid = np.zeros(self.n + 1, np.float64)

    def add(self, win: Window, classes: np.ndarray, confidence: np.ndarray) -> None:
        if not self.n:
            return
        ids = self.labels.footprint_labels(win, fallback=False).ravel()
        valid = classes != self.nodata
        confidence = confidence.astype(np.float64) / 100.0
        n = self.n
        for k in range(1, 5):
            hit = valid & (classes == k)
            self.votes[:, k - 1] += np.bincount(ids, weights=np.where(hit, confidence, 0).ravel(), minlength=n + 1)
            self.counts[:, k - 1] += np.bincount(ids, weights=hit.ravel().astype(np.float64), minlength=n + 1)
        self.valid += np.bincount(ids, weights=valid.ravel().astype(np.float64), minlength=n + 1)

    def result(self) -> Dict[str, np.ndarray]:
        """Per building: class with the largest summed confidence among its pixels of classes 1..4."""
        n = self.n
        votes, counts, valid_fp = self.votes[1:], self.counts[1:], self.valid[1:]
        damage = votes.argmax(axis=1) + 1
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = votes[np.arange(n), damage - 1] / counts[np.arange(n), damage - 1]
        pixel_area = abs(self.grid.transform.a * self.grid.transform.e)
        coverage = np.clip(valid_fp * pixel_area / np.maximum(self.areas, pixel_area), 0, 1)
        # Footprints where the model saw only background get no class: coverage 0 drops them below.
        coverage = np.where(counts.sum(axis=1) > 0, coverage, 0.0)
        nan = np.full(n, -1.0)
        return {"damage": damage, "confidence": np.nan_to_num(conf), "score": nan, "changed_fraction": nan,
                "ring_changed_fraction": nan, "mean_probability": nan, "coverage": coverage}


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
                       overlap: int, batch_size: int, device: str, min_area: float, progress,
                       window: int = 0) -> Tuple[list, Dict]:
    """Building polygons from the land-cover model's 'building' class on the pre image.

    The class raster is read back one processing window at a time (window px, default
    change_windows.DEFAULT_WINDOW); regions across window edges are merged, so the polygons and
    their order are those of mask_polygons on the whole grid, whatever the window."""
    from backend.pipelines.change import pixel_area, predict_landcover

    _, meta, result = predict_landcover(pre, grid, outputs, path, landcover_model, aoi=aoi, tile_size=tile_size,
                                        overlap=overlap, batch_size=batch_size, device=device,
                                        progress=progress.sub(0.0, 0.9), what="pre", read_classes=False)
    building = [int(c["value"]) for c in meta["classes"] if str(c["name"]).lower() in ("building", "buildings")]
    if not building:
        raise InputError(f"the land-cover model {landcover_model} has no 'building' class to localise buildings; "
                         "give building footprints instead")
    unit_area, _ = pixel_area(grid)
    with rasterio.open(result.written_path) as src:
        geoms = windowed_mask_polygons(lambda win: src.read(1, window=win) == building[0], grid,
                                       int(window or DEFAULT_WINDOW), unit_area, min_area=min_area,
                                       progress=progress.sub(0.9, 1.0))
    return geoms, meta


# ----------------------------------------------------------------------------- pipeline

def _change_result(stats: BuildingStats) -> Dict[str, np.ndarray]:
    score = damage_score(np.nan_to_num(stats.footprint_fraction), stats.ring_fraction)
    return {"damage": classify_damage(score), "confidence": np.nan_to_num(stats.certainty),
            "score": score, "changed_fraction": np.nan_to_num(stats.footprint_fraction),
            "ring_changed_fraction": np.nan_to_num(stats.ring_fraction, nan=-1.0),
            "mean_probability": np.nan_to_num(stats.mean_probability), "coverage": stats.coverage}


def _classify_with_change(found: Dict[str, Any], probability_path: Path, grid: Grid, geoms: list,
                          ring_m: float, window: int, progress) -> Dict[str, np.ndarray]:
    """Change-model rule: P(change) written window by window, each window's per-building sums added."""
    from backend.pipelines.change import write_change_probability

    acc = BuildingChangeAccumulator(geoms, grid, threshold=0.5, ring_m=ring_m, window=window)
    write_change_probability(found["engine"], probability_path, found["threshold"], window=window,
                             on_window=acc.add, progress=progress)
    return _change_result(acc.result())


def _classify_with_damage_model(engine_result, grid: Grid, geoms: list, window: int,
                                progress) -> Dict[str, np.ndarray]:
    """Per building: class with the largest summed confidence among its pixels of classes 1..4,
    from the engine's class + confidence rasters read one window at a time."""
    acc = DamageVoteAccumulator(geoms, grid, engine_result.nodata, window=window)
    windows = processing_windows(grid.width, grid.height, window)
    with rasterio.open(engine_result.written_path) as classes_src, \
            rasterio.open(engine_result.confidence_written_path) as confidence_src:
        for k, win in enumerate(windows):
            progress.update(k / len(windows), "per-building damage")
            acc.add(win, classes_src.read(1, window=win), confidence_src.read(1, window=win))
    return acc.result()


def _write_damage_raster(path: Path, final_name: Path, grid: Grid, geoms: list, assessed: np.ndarray,
                         damage: np.ndarray, window: int) -> None:
    """The assessed footprints burnt with their class (pixel centres, later wins), window by window."""
    from backend.io.writer import class_colormap

    select = _Selector([geoms[i] for i in assessed], grid)
    out = WindowRasterWriter(path, grid, np.uint8, 0, final_name)
    try:
        for win in processing_windows(grid.width, grid.height, window):
            idx = select(win)
            raster = _window_labels([geoms[assessed[j]] for j in idx], damage[assessed[idx]],
                                    grid.window_transform(win),
                                    (int(win.height), int(win.width))).astype(np.uint8)
            out.write(raster, win)
        out.close()
    except BaseException:
        out.discard()
        raise
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, class_colormap(damage_classes(), 0))


def run_damage(params: Dict[str, Any], progress=None) -> Dict[str, Any]:
    """Per-building xBD damage classes (polygons + raster) from pre/post imagery.

    params: pre, post (path, {"path", "bands"} or list of tiles), output_dir, name="damage",
    buildings=None (vector path, any CRS; without it buildings are localised with landcover_model),
    model=None (change model -> rule in the module docstring; a "damage" model -> DamageModel head),
    landcover_model=None (default land-cover model), aoi=None, ring_m=2.0, min_coverage=0.5,
    min_building_area=20 (m², localised buildings only), tile_size, overlap=32, batch_size=0 (auto), device="auto".

    window=4096: processing window (px, a multiple of 256) of the post-processing.

    Memory: after the streaming engine, everything runs one processing window at a time: without
    footprints, buildings are polygonised window by window (regions merged across window edges);
    the per-building statistics are sums over pixels (np.bincount) added window by window, from the
    footprints and rings that meet the window, and the damage raster is written window by window;
    the results do not depend on the window (damage-model route: the confidence of a footprint
    across window edges may differ in the last bit; a localised building across window edges is the
    same polygon with its vertices listed differently, so its area may differ in the last bit).
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
    from backend.io.style import raster_qml, vector_qml, write_qml
    from backend.pipelines.change import (DEFAULT_LANDCOVER_MODEL, _float_param, engine_figures, pixel_area,
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
    window = window_size(params.get("window"))
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
                               write_probability=False)  # P(change) written below with the statistics
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
                                          min_area=min_building_area, progress=progress.sub(0.6, 0.85),
                                          window=window)
            source_ids, total, source = [str(k + 1) for k in range(len(geoms))], len(geoms), "landcover model"
            outs.append({"path": str(paths["buildings"]), "kind": "raster", "role": "landcover_pre"})
        progress.update(0.88, f"assessing {len(geoms)} buildings")
        if found["meta"]["task"] == "change":
            method = "change-model rule"
            result = _classify_with_change(found, paths["probability"], grid, geoms, ring_m, window,
                                           progress.sub(0.88, 0.95))
        else:
            method = "damage model"
            result = _classify_with_damage_model(found["engine"], grid, geoms, window, progress.sub(0.88, 0.95))
        assessed = np.nonzero(result["coverage"] >= min_coverage)[0] if geoms else np.zeros(0, np.int64)

        _write_damage_raster(outputs.path_for(paths["raster"]), paths["raster"], grid, geoms, assessed,
                             np.asarray(result["damage"]), window)
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
        **engine_figures(found),
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
