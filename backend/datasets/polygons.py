"""User-digitised training polygons -> labelled scenes on a raster's pixel grid.

Reads a polygon layer (GeoPackage, shapefile, GeoJSON; any CRS), reprojects the geometries to the
raster's CRS, maps the class field (strings or integers) to class values, burns them onto the raster
grid in windows around the polygons, and splits *whole polygons* into training and validation sets.
Every way labels can be unusable ends in an InputError that says what is wrong and what to do.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import fiona
import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely.geometry import box, mapping, shape

from backend.datasets.palettes import generated_colors
from backend.datasets.scene import IGNORE_INDEX, LabelledScene
from backend.errors import InputError

MIN_PIXELS_PER_CLASS = 20
MIN_LABELLED_PIXELS = 200
MAX_SCENE_PIXELS = 64_000_000   # one merged window; beyond this the labels are spread too widely to hold


@dataclass
class PolygonLabels:
    """Polygons in raster CRS with their class index and a stable id (1-based, feature order)."""
    classes: list[dict]                  # [{"value", "name", "color"}] in index order
    geometries: list                     # shapely geometries in raster CRS, clipped to the raster
    class_indexes: np.ndarray            # per geometry
    notes: list[str] = field(default_factory=list)


@dataclass
class PolygonDataset:
    train: list[LabelledScene]
    val: list[LabelledScene]
    classes: list[dict]
    train_polygons: list[int]            # polygon ids (1-based) used for training
    val_polygons: list[int]
    pixel_counts: dict                   # {"train": [...per class], "val": [...]}
    notes: list[str] = field(default_factory=list)


def _coerce_class(value):
    """Class field value -> int when it is an integer (or integer-like text), else stripped text."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float):
        if np.isnan(value):
            return None
        return int(value) if value.is_integer() else str(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def build_classes(raw_values: list, palette_classes: Optional[list[dict]] = None) -> tuple[list[dict], dict]:
    """Class list + {raw value -> class index}.

    Integer fields keep their numbers as pixel values; text fields get values 1..K in sorted order.
    Colours (and names for integer codes) come from the palette when a class matches it by name or value.
    """
    palette_classes = palette_classes or []
    by_name = {str(c["name"]).lower(): c for c in palette_classes}
    by_value = {int(c["value"]): c for c in palette_classes}
    distinct = sorted(set(raw_values), key=lambda v: (isinstance(v, str), v))
    all_ints = all(isinstance(v, int) for v in distinct)
    if all_ints and any(v < 1 or v > 255 for v in distinct):
        bad = [v for v in distinct if v < 1 or v > 255]
        raise InputError(f"integer class codes must be 1..255 (0 is kept for no-data); found {bad[:5]}")
    colors = iter(generated_colors(len(distinct) + len(palette_classes)))
    used_colors = set()
    classes, lookup = [], {}
    for index, raw in enumerate(distinct):
        match = by_value.get(raw) if all_ints else by_name.get(str(raw).lower())
        value = raw if all_ints else index + 1
        name = match["name"] if (match and all_ints) else str(raw)
        color = match["color"] if match else None
        while color is None or color in used_colors:
            color = next(colors)
        used_colors.add(color)
        classes.append({"value": int(value), "name": name, "color": color})
        lookup[raw] = index
    return classes, lookup


def read_polygon_labels(labels_path, class_field: str, raster_crs, raster_bounds,
                        layer: Optional[str] = None, palette_classes: Optional[list[dict]] = None) -> PolygonLabels:
    """Read, validate and reproject labelled polygons; raise InputError naming any problem."""
    labels_path = Path(labels_path)
    if not labels_path.exists():
        raise InputError(f"label layer {labels_path} does not exist")
    try:
        with fiona.open(labels_path, layer=layer) as source:
            fields = list(source.schema["properties"].keys())
            layer_crs = source.crs_wkt or None
            features = list(source)
    except (fiona.errors.FionaError, fiona.errors.DriverError, OSError, ValueError) as exc:
        raise InputError(f"cannot read label layer {labels_path}: {exc}") from exc
    if not features:
        raise InputError(f"label layer {labels_path} is empty: digitise at least two classes of polygons")
    if class_field not in fields:
        matches = [f for f in fields if f.lower() == class_field.lower()]
        if len(matches) == 1:
            class_field = matches[0]
        else:
            raise InputError(f"class field {class_field!r} not found in {labels_path.name}; "
                             f"available fields: {', '.join(fields) if fields else '(none)'}")
    notes = []
    if not layer_crs:
        notes.append("label layer has no CRS; assumed to be in the raster's CRS")
    raster_box = box(*raster_bounds)
    geometries, raw_classes = [], []
    skipped_null = skipped_type = outside = 0
    for feature in features:
        geometry = feature.geometry
        raw = _coerce_class(feature.properties.get(class_field))
        if geometry is None or raw is None:
            skipped_null += 1
            continue
        if geometry["type"] not in ("Polygon", "MultiPolygon"):
            skipped_type += 1
            continue
        geojson = {"type": geometry["type"], "coordinates": geometry["coordinates"]}
        if layer_crs:
            geojson = transform_geom(layer_crs, raster_crs, geojson)
        polygon = shape(geojson)
        if not polygon.is_valid:
            polygon = polygon.buffer(0)   # self-intersections from hand digitising
        clipped = polygon.intersection(raster_box)
        if clipped.is_empty or clipped.area == 0:
            outside += 1
            continue
        geometries.append(clipped)
        raw_classes.append(raw)
    if skipped_null:
        notes.append(f"{skipped_null} feature(s) without geometry or without a {class_field!r} value were skipped")
    if skipped_type:
        notes.append(f"{skipped_type} non-polygon feature(s) were skipped")
    if outside:
        notes.append(f"{outside} polygon(s) outside the raster were skipped")
    if not geometries:
        if outside:
            raise InputError(f"none of the {outside} polygons in {labels_path.name} overlaps the raster "
                             f"(raster bounds {tuple(round(b, 2) for b in raster_bounds)} in its CRS); "
                             "check that both layers cover the same area")
        raise InputError(f"{labels_path.name} has no usable polygons with a {class_field!r} value")
    if len(set(raw_classes)) < 2:
        raise InputError(f"all polygons have the same class ({raw_classes[0]!r}) in field {class_field!r}: "
                         "training needs at least two classes")
    classes, lookup = build_classes(raw_classes, palette_classes)
    return PolygonLabels(classes, geometries, np.array([lookup[r] for r in raw_classes]), notes)


def _pixel_boxes(geometries, transform, width: int, height: int, min_size: int, margin: int) -> list[list[int]]:
    """Pixel windows [row0, col0, row1, col1] around each polygon (at least min_size square), merged when they touch."""
    inverse = ~transform
    boxes = []
    for geometry in geometries:
        minx, miny, maxx, maxy = geometry.bounds
        cols, rows = zip(*(inverse @ (x, y) for x, y in ((minx, miny), (maxx, maxy), (minx, maxy), (maxx, miny))))
        row0, row1 = int(np.floor(min(rows))) - margin, int(np.ceil(max(rows))) + margin
        col0, col1 = int(np.floor(min(cols))) - margin, int(np.ceil(max(cols))) + margin
        boxes.append(_fit_box([row0, col0, row1, col1], width, height, min_size))
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]:
                    boxes[i] = _fit_box([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])],
                                        width, height, min_size)
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return boxes


def _fit_box(bounds: list[int], width: int, height: int, min_size: int) -> list[int]:
    """Clamp to the raster and grow to min_size (when the raster allows)."""
    row0, col0, row1, col1 = bounds
    for lo, hi, limit in ((0, 2, height), (1, 3, width)):
        start, end = max(bounds[lo], 0), min(bounds[hi], limit)
        if end - start < min_size:
            centre = (start + end) // 2
            start = max(0, min(centre - min_size // 2, limit - min_size))
            end = min(limit, start + min_size)
        bounds[lo], bounds[hi] = start, end
    return bounds


def split_polygons(class_indexes: np.ndarray, areas: np.ndarray, val_fraction: float,
                   seed: int) -> tuple[list[int], list[int]]:
    """Whole-polygon hold-out: per class, shuffled polygons go to validation until ~val_fraction of the class
    area is reached, never taking more than half of a class's area and always leaving at least one polygon
    of each class for training. Returns 0-based polygon indexes."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for class_index in np.unique(class_indexes):
        members = np.flatnonzero(class_indexes == class_index)
        members = members[rng.permutation(len(members))]
        total = areas[members].sum()
        held = 0.0
        chosen = set()
        if len(members) > 1:
            for polygon in members:
                if held >= val_fraction * total:
                    break
                if held + areas[polygon] <= 0.5 * total:
                    chosen.add(int(polygon))
                    held += areas[polygon]
            if not chosen:   # every polygon is over half the area: hold out the smallest
                chosen.add(int(members[np.argmin(areas[members])]))
        val.extend(chosen)
        train.extend(int(p) for p in members if int(p) not in chosen)
    return sorted(train), sorted(val)


def build_polygon_dataset(raster_path, labels_path, class_field: str, *, bands: Optional[list[int]] = None,
                          layer: Optional[str] = None, palette_classes: Optional[list[dict]] = None,
                          chip_size: int = 256, val_fraction: float = 0.25, seed: int = 0) -> PolygonDataset:
    """Labelled train/validation scenes for fine-tuning from a raster and a polygon layer."""
    raster_path = Path(raster_path)
    try:
        source = rasterio.open(raster_path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot open raster {raster_path}: {exc}") from exc
    with source:
        if source.crs is None:
            raise InputError(f"raster {raster_path.name} has no CRS, so polygons cannot be placed on it")
        bands = list(bands) if bands else list(range(1, source.count + 1))
        if any(b < 1 or b > source.count for b in bands):
            raise InputError(f"raster {raster_path.name} has {source.count} band(s); bands {bands} were requested")
        polygons = read_polygon_labels(labels_path, class_field, source.crs, tuple(source.bounds), layer,
                                       palette_classes)
        num_classes = len(polygons.classes)
        transform = source.transform
        pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
        areas = np.array([g.area / pixel_area for g in polygons.geometries])
        train_ids, val_ids = split_polygons(polygons.class_indexes, areas, val_fraction, seed)
        if not val_ids:
            raise InputError("validation needs whole polygons held out, but every class has a single polygon; "
                             "digitise at least two separate polygons for some classes")
        role = np.zeros(len(polygons.geometries), dtype=np.int8)   # 1 = train, 2 = val
        role[train_ids], role[val_ids] = 1, 2
        train_scenes, val_scenes = [], []
        counts = {"train": np.zeros(num_classes, np.int64), "val": np.zeros(num_classes, np.int64)}
        margin = chip_size // 4
        for number, (row0, col0, row1, col1) in enumerate(
                _pixel_boxes(polygons.geometries, transform, source.width, source.height, chip_size, margin)):
            if (row1 - row0) * (col1 - col0) > MAX_SCENE_PIXELS:
                raise InputError(f"the labelled polygons form one block of {col1 - col0}x{row1 - row0} pixels, "
                                 f"more than {MAX_SCENE_PIXELS:,} pixels can be trained on at once; "
                                 "label a smaller area or use a coarser raster")
            window = Window(col0, row0, col1 - col0, row1 - row0)
            window_transform = source.window_transform(window)
            image = source.read(bands, window=window)
            valid = source.read_masks(bands[0], window=window) > 0
            window_box = box(*rasterio.windows.bounds(window, transform))
            shape_hw = (row1 - row0, col1 - col0)
            burn = [(mapping(g), i + 1) for i, g in enumerate(polygons.geometries) if g.intersects(window_box)]
            polygon_ids = rasterize(burn, out_shape=shape_hw, transform=window_transform, fill=0,
                                    dtype="int32") if burn else np.zeros(shape_hw, np.int32)
            polygon_ids[~valid] = 0
            class_of = np.concatenate([[IGNORE_INDEX], polygons.class_indexes]).astype(np.int16)
            role_of = np.concatenate([[0], role])
            labels = class_of[polygon_ids]
            pixel_role = role_of[polygon_ids]
            for split, code, scenes in (("train", 1, train_scenes), ("val", 2, val_scenes)):
                split_labels = np.where(pixel_role == code, labels, IGNORE_INDEX).astype(np.int16)
                if (split_labels != IGNORE_INDEX).any():
                    counts[split] += np.bincount(split_labels[split_labels != IGNORE_INDEX],
                                                 minlength=num_classes)[:num_classes]
                    scenes.append(LabelledScene(image, split_labels, f"{split}_{number}", window_transform,
                                                source.crs, valid))
    _check_pixel_counts(counts, polygons.classes)
    unvalidated = [c["name"] for c, n in zip(polygons.classes, counts["val"]) if n == 0]
    if unvalidated:
        polygons.notes.append(f"class(es) {', '.join(unvalidated)} have a single polygon, used for training only, "
                              "so their validation accuracy is not measured; digitise a second polygon to measure it")
    return PolygonDataset(train_scenes, val_scenes, polygons.classes, [i + 1 for i in train_ids],
                          [i + 1 for i in val_ids], {k: v.tolist() for k, v in counts.items()}, polygons.notes)


def _check_pixel_counts(counts: dict, classes: list[dict]) -> None:
    total = int(counts["train"].sum())
    if total < MIN_LABELLED_PIXELS:
        raise InputError(f"the polygons cover only {total} training pixels of the raster; at least "
                         f"{MIN_LABELLED_PIXELS} are needed (draw larger polygons or use a finer raster)")
    small = [f"{c['name']} ({int(n)} px)" for c, n in zip(classes, counts["train"]) if n < MIN_PIXELS_PER_CLASS]
    if small:
        raise InputError(f"too few training pixels for class(es) {', '.join(small)}; each class needs at least "
                         f"{MIN_PIXELS_PER_CLASS} pixels in polygons")
    if int(counts["val"].sum()) == 0:
        raise InputError("the held-out validation polygons cover no raster pixels; digitise more polygons")
