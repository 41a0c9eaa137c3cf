"""Export a vector layer to GeoPackage or ESRI Shapefile with fiona.

CRS and attributes are kept; shapefile field names are cut to 10 characters
(kept unique); the output is written under a temporary name and renamed at the
end, so an existing good file is never replaced by a half-written one.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Dict, List, Optional

from backend.errors import InputError, OutputError

DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile"}
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")
SHP_FIELD_LEN = 10
# Shapefile (dBase) has no datetime/time/bool columns; store them as text/int.
SHP_TYPE_FALLBACK = {"datetime": "str", "time": "str", "bool": "int"}


def shapefile_field_names(names: List[str]) -> Dict[str, str]:
    """Map field names to unique names of at most 10 characters (case-insensitive unique)."""
    mapping, used = {}, set()
    for name in names:
        short = name[:SHP_FIELD_LEN]
        n = 1
        while short.lower() in used:
            suffix = f"_{n}"
            short = name[:SHP_FIELD_LEN - len(suffix)] + suffix
            n += 1
        used.add(short.lower())
        mapping[name] = short
    return mapping


def _driver_for(dest: Path, driver: Optional[str]) -> str:
    by_ext = DRIVERS.get(dest.suffix.lower())
    if driver is None:
        if by_ext is None:
            raise InputError(f"cannot tell the output format of '{dest.name}': use a .gpkg or .shp name")
        return by_ext
    if driver not in DRIVERS.values():
        raise InputError(f"unsupported export format {driver!r}; use GPKG or ESRI Shapefile")
    if by_ext is not None and by_ext != driver:
        raise InputError(f"'{dest.name}' has the extension of {by_ext}, but the format asked is {driver}")
    if by_ext is None:
        raise InputError(f"'{dest.name}' needs the extension {'.gpkg' if driver == 'GPKG' else '.shp'}")
    return driver


def _pick_layer(fiona, source: Path, layer: Optional[str]) -> Optional[str]:
    try:
        layers = fiona.listlayers(str(source))
    except Exception as exc:  # noqa: BLE001 - fiona raises several kinds for non-vector files
        raise InputError(f"'{source}' is not a readable vector file ({exc})") from None
    if not layers:
        raise InputError(f"'{source}' holds no vector layer")
    if layer is None:
        return layers[0]
    if layer not in layers:
        raise InputError(f"layer {layer!r} is not in '{source.name}' (layers: {', '.join(layers)})")
    return layer


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def export_vector(source, dest, layer: Optional[str] = None, driver: Optional[str] = None,
                  progress=None) -> dict:
    """Copy ``layer`` of ``source`` to ``dest`` (GPKG or ESRI Shapefile); returns a result dict."""
    import fiona

    source, dest = Path(source), Path(dest)
    if not source.is_file():
        raise InputError(f"export source '{source}' does not exist or is not a file")
    driver = _driver_for(dest, driver)
    if source.resolve() == dest.resolve():
        raise InputError(f"export destination '{dest}' is the source itself")
    layer = _pick_layer(fiona, source, layer)
    if not dest.parent.is_dir():
        raise OutputError(f"output folder '{dest.parent}' does not exist")

    token = secrets.token_hex(4)
    tmp = dest.with_name(f".{dest.stem}.{token}.tmp{dest.suffix}")
    tmp_parts = [tmp.with_suffix(s) for s in SHAPEFILE_PARTS] if driver == "ESRI Shapefile" else [tmp]
    count = 0
    try:
        with fiona.open(str(source), layer=layer) as src:
            schema = {"geometry": src.schema["geometry"], "properties": dict(src.schema["properties"])}
            total = len(src) if hasattr(src, "__len__") else None
            renames = {name: name for name in schema["properties"]}
            out_layer = layer
            if driver == "ESRI Shapefile":
                renames = shapefile_field_names(list(schema["properties"]))
                props = {}
                for name, ftype in schema["properties"].items():
                    base = ftype.split(":")[0]
                    props[renames[name]] = SHP_TYPE_FALLBACK.get(base, ftype)
                schema["properties"] = props
                out_layer = None
                if schema["geometry"] in ("Unknown", "Any", None):
                    schema["geometry"] = _single_geometry_type(src)
            elif isinstance(schema["geometry"], str) and schema["geometry"] in ("Polygon", "LineString"):
                # Shapefile sources report Polygon but may hold MultiPolygons: accept both.
                schema["geometry"] = (schema["geometry"], "Multi" + schema["geometry"])
            options = {"ENCODING": "UTF-8"} if driver == "ESRI Shapefile" else {}
            with fiona.open(str(tmp), "w", driver=driver, schema=schema, crs=src.crs,
                            layer=out_layer if driver == "GPKG" else None, **options) as dst:
                converted = {k: v.split(":")[0] for k, v in schema["properties"].items()}
                for feature in src:
                    props = {}
                    for key, value in dict(feature.properties).items():
                        short = renames.get(key, key)
                        if value is not None and converted.get(short) == "str" and not isinstance(value, str):
                            value = str(value)
                        props[short] = value
                    dst.write(fiona.Feature(geometry=feature.geometry,
                                            properties=fiona.Properties.from_dict(props)))
                    count += 1
                    if progress is not None and count % 500 == 0:
                        progress.update(count / total if total else 0.5, f"{count} features")
        if progress is not None:
            progress.check_cancelled()
        # Publish: rename every part; stale side files of an older dest go away.
        if driver == "ESRI Shapefile":
            for part in SHAPEFILE_PARTS:
                target = dest.with_suffix(part)
                if tmp.with_suffix(part).exists():
                    os.replace(tmp.with_suffix(part), target)
                else:
                    _remove_quietly(target)
        else:
            os.replace(tmp, dest)
    except BaseException as exc:
        for part in tmp_parts:
            _remove_quietly(part)
        if isinstance(exc, (InputError, OutputError)) or not isinstance(exc, Exception):
            raise
        if isinstance(exc, OSError):
            raise OutputError(f"could not write '{dest}': {exc}") from exc
        if type(exc).__module__.startswith("fiona"):
            raise OutputError(f"could not export '{source.name}' to {driver}: {exc}") from exc
        raise
    if progress is not None:
        progress.update(1.0, f"exported {count} features")
    output = {"path": str(dest), "kind": "vector", "role": "export",
              "layer": layer if driver == "GPKG" else dest.stem}
    return {"outputs": [output], "features": count, "format": driver,
            "renamed_fields": {k: v for k, v in renames.items() if k != v}}


def _single_geometry_type(src) -> str:
    """Shapefiles hold one geometry family; find it from the features."""
    types = {f.geometry.type for f in src if f.geometry is not None}
    families = {t.replace("Multi", "") for t in types}
    if len(families) > 1:
        raise InputError(f"the layer mixes geometry types ({', '.join(sorted(types))}); "
                         "a shapefile holds one type: export to GPKG instead")
    if not types:
        return "Point"
    family = families.pop()
    if family != "Point":
        return family  # fiona lets a Polygon/LineString shapefile take the Multi types too
    if len(types) > 1:
        raise InputError("the layer mixes Point and MultiPoint geometries, which a shapefile "
                         "cannot hold together: export to GPKG instead")
    return types.pop()


def run(params: dict, progress) -> dict:
    """Job entry point: params as in backend.server.schemas.ExportParams."""
    progress.update(0.0, "exporting")
    return export_vector(params["source"], params["dest"], layer=params.get("layer"),
                         driver=params.get("format"), progress=progress)
