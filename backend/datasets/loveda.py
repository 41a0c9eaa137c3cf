"""LoveDA sample tiles (1024x1024 RGB PNG + 7-class masks, no CRS) and a plausible georeference for them.

The PNGs carry no coordinates. For demos and tests each tile is placed on the UTM zone 50N grid near
Wuhan at LoveDA's ~0.3 m GSD, side by side with a gap, so every tile has its own distinct origin.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import Affine

from backend.datasets.palettes import hex_to_rgb, load_palette
from backend.errors import InputError

LOVEDA_CRS = "EPSG:32650"
LOVEDA_GSD = 0.3
LOVEDA_NODATA = 0
# Around Wuhan (114.3 E, 30.6 N) in UTM 50N; tiles step east by 400 m (a tile spans 307.2 m).
_ORIGIN_EASTING = 226000.0
_ORIGIN_NORTHING = 3386000.0
_TILE_STEP = 400.0


def loveda_palette() -> dict:
    """Classes 1..7 (background, building, road, water, barren, forest, agriculture) with colours."""
    return load_palette("loveda")


def loveda_tile_ids(data_dir) -> list[str]:
    """Tile names (PNG stems) that have both an image and a mask, in numeric order."""
    root = Path(data_dir) / "loveda"
    images = {p.stem for p in (root / "img_dir").glob("*.png")}
    masks = {p.stem for p in (root / "ann_dir").glob("*.png")}
    ids = sorted(images & masks, key=lambda s: (len(s), s))
    if not ids:
        raise InputError(f"no LoveDA tiles (img_dir/*.png with matching ann_dir/*.png) under {root}")
    return ids


def loveda_paths(data_dir, tile_id: str) -> tuple[Path, Path]:
    root = Path(data_dir) / "loveda"
    return root / "img_dir" / f"{tile_id}.png", root / "ann_dir" / f"{tile_id}.png"


def read_loveda_tile(data_dir, tile_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [3, H, W], mask uint8 [H, W] with 1..7 and 0 = no-data)."""
    image_path, mask_path = loveda_paths(data_dir, tile_id)
    image = _read_png(image_path)
    mask = _read_png(mask_path)
    if image.ndim != 3 or image.shape[0] != 3:
        raise InputError(f"{image_path} is not an RGB image (shape {image.shape})")
    if mask.ndim != 2 or mask.shape != image.shape[1:]:
        raise InputError(f"{mask_path} does not match its image {image_path} (shape {mask.shape})")
    return image, mask


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            array = np.array(img)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., :3].transpose(2, 0, 1))
    return array


def loveda_transform(tile_id: str) -> Affine:
    """Affine for one tile: 0.3 m pixels, north-up, origin stepping east with the tile number."""
    try:
        index = int(tile_id)
    except ValueError:
        # Non-numeric names still get a stable, distinct slot.
        index = 1000 + sum(ord(c) * (i + 1) for i, c in enumerate(tile_id)) % 100000
    return Affine(LOVEDA_GSD, 0.0, _ORIGIN_EASTING + index * _TILE_STEP,
                  0.0, -LOVEDA_GSD, _ORIGIN_NORTHING)


def georeference_loveda_tile(png, out_tif, tile_id: str | None = None) -> Path:
    """Write a LoveDA PNG (image or mask) as a tiled, compressed GeoTIFF in EPSG:32650.

    Masks (single band) get nodata 0 and the LoveDA colour table. The file appears only when complete.
    """
    png, out_tif = Path(png), Path(out_tif)
    tile_id = png.stem if tile_id is None else tile_id
    array = _read_png(png)
    if array.ndim == 2:
        array = array[None]
    is_mask = array.shape[0] == 1
    profile = {
        "driver": "GTiff", "width": array.shape[2], "height": array.shape[1], "count": array.shape[0],
        "dtype": "uint8", "crs": LOVEDA_CRS, "transform": loveda_transform(tile_id),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        "photometric": "minisblack" if is_mask else "rgb",
    }
    if is_mask:
        profile["nodata"] = LOVEDA_NODATA
    out_tif.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_tif.with_name(out_tif.name + ".tmp.tif")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)
            if is_mask:
                dst.write_colormap(1, {c["value"]: hex_to_rgb(c["color"]) + (255,)
                                       for c in loveda_palette()["classes"]})
        os.replace(tmp, out_tif)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_tif


def georeference_loveda(data_dir, out_dir, tile_ids=None) -> list[tuple[Path, Path]]:
    """GeoTIFFs for every (or the given) LoveDA tile: [(image_tif, mask_tif), ...] named <id>.tif, <id>_mask.tif."""
    out_dir = Path(out_dir)
    pairs = []
    for tile_id in tile_ids or loveda_tile_ids(data_dir):
        image_png, mask_png = loveda_paths(data_dir, tile_id)
        pairs.append((georeference_loveda_tile(image_png, out_dir / f"loveda_{tile_id}.tif", tile_id),
                      georeference_loveda_tile(mask_png, out_dir / f"loveda_{tile_id}_mask.tif", tile_id)))
    return pairs


def loveda_polygons(mask_tif, out_path, window=None, min_pixels: int = 200, shrink: float = 0.9,
                    crs: str | None = None, class_field: str = "class", as_names: bool = True,
                    driver: str = "GPKG", cell: int | None = None, max_per_class: int | None = None,
                    seed: int = 0) -> Path:
    """Polygonise (part of) a georeferenced LoveDA mask into a label layer that stands in for user digitising.

    window: rasterio Window to cut from the mask (default whole tile); regions under `min_pixels` are dropped
    and the rest shrunk inwards by `shrink` metres (users draw inside class areas, not on the borders).
    `crs` reprojects the polygons (e.g. "EPSG:4326") to exercise CRS handling. The class field holds
    class names (as_names) or LoveDA codes 1..7. `cell` cuts regions along a grid of that many pixels
    (users digitise many small samples, not one polygon per region) and `max_per_class` keeps a seeded
    random subset of the pieces per class (sparse labelling).
    """
    import fiona
    from rasterio.features import shapes
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping, shape

    names = {c["value"]: c["name"] for c in loveda_palette()["classes"]}
    out_path = Path(out_path)
    with rasterio.open(mask_tif) as source:
        mask = source.read(1, window=window)
        transform = source.window_transform(window) if window is not None else source.transform
        source_crs = source.crs
        pixel_area = abs(transform.a * transform.e)
    records = []
    pieces = []
    if cell:
        rows, cols = np.indices(mask.shape)
        zones = (rows // cell) * (mask.shape[1] // cell + 1) + cols // cell
        # A unique id per (class, grid cell) splits each region at the cell borders.
        keyed = (zones.astype(np.int32) * 8 + mask).astype(np.int32)
        pieces = [(g, int(v) % 8) for g, v in shapes(keyed, mask=mask > 0, transform=transform)]
    else:
        pieces = [(g, int(v)) for g, v in shapes(mask, mask=mask > 0, transform=transform)]
    for geometry, value in pieces:
        polygon = shape(geometry)
        if polygon.area < min_pixels * pixel_area:
            continue
        polygon = polygon.buffer(-shrink) if shrink else polygon
        if polygon.is_empty:
            continue
        geojson = mapping(polygon)
        if crs:
            geojson = transform_geom(source_crs, crs, geojson)
        code = int(value)
        records.append({"geometry": geojson, "properties": {class_field: names[code] if as_names else code}})
    if max_per_class:
        rng = np.random.default_rng(seed)
        kept = []
        for code in sorted({r["properties"][class_field] for r in records}, key=str):
            members = [r for r in records if r["properties"][class_field] == code]
            order = rng.permutation(len(members))[:max_per_class]
            kept.extend(members[i] for i in sorted(order))
        records = kept
    if not records:
        raise InputError(f"no LoveDA regions of at least {min_pixels} pixels in the requested part of {mask_tif}")
    schema = {"geometry": "Unknown", "properties": {class_field: "str" if as_names else "int"}}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name("tmp_" + out_path.name)
    with fiona.open(tmp, "w", driver=driver, schema=schema, crs=crs or source_crs.to_string()) as sink:
        for record in records:
            sink.write(fiona.Feature.from_dict(**record))
    if driver == "ESRI Shapefile":
        for part in tmp.parent.glob(tmp.stem + ".*"):
            os.replace(part, out_path.with_suffix(part.suffix))
    else:
        os.replace(tmp, out_path)
    return out_path
