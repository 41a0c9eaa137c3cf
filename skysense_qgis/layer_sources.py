"""Turn QGIS layers into what the backend accepts: file paths, band lists, CRS strings, dates."""
from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from typing import Optional

from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransformContext, QgsMapLayer,
                       QgsProviderRegistry, QgsRasterLayer, QgsVectorFileWriter, QgsVectorLayer)


class LayerSourceError(ValueError):
    """A layer cannot be sent to the backend; the message says why and what to do."""


def crs_string(crs: QgsCoordinateReferenceSystem) -> str:
    """Authority id when there is one (EPSG:32633), else WKT2 so custom CRSs survive."""
    if not crs.isValid():
        return ""
    authid = crs.authid()
    if authid and not authid.upper().startswith("USER:"):
        return authid
    return crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED)


def raster_path(layer: QgsMapLayer) -> str:
    """Absolute path of a file-based raster layer, or LayerSourceError naming the problem."""
    if layer is None:
        raise LayerSourceError("No raster layer was chosen.")
    if not isinstance(layer, QgsRasterLayer):
        raise LayerSourceError(f"Layer '{layer.name()}' is not a raster layer.")
    provider = layer.providerType()
    if provider != "gdal":
        raise LayerSourceError(
            f"Layer '{layer.name()}' is a {provider} layer, not a raster file: SkySense reads rasters from disk. "
            "Save it first (right-click > Export > Save As... GeoTIFF) and use the saved file.")
    path = QgsProviderRegistry.instance().decodeUri(provider, layer.source()).get("path") or layer.source()
    if not os.path.isfile(path):
        raise LayerSourceError(f"Layer '{layer.name()}' does not point to a file on disk ({path}).")
    if not layer.crs().isValid():
        raise LayerSourceError(f"Layer '{layer.name()}' has no coordinate reference system; "
                               "set one (Layer Properties > Source) before running SkySense.")
    return with_layer_crs(layer, os.path.abspath(path))


def with_layer_crs(layer: QgsRasterLayer, path: str) -> str:
    """The file itself when it carries the layer's CRS; else a small VRT that adds the CRS set in QGIS.

    The backend only sees files, so a CRS assigned in Layer Properties (e.g. to a PNG with a world
    file, or a GeoTIFF with a wrong CRS) must travel inside a file too.
    """
    from osgeo import gdal  # GDAL's Python bindings ship with every QGIS
    dataset = gdal.OpenEx(path, gdal.OF_RASTER)
    if dataset is None:
        raise LayerSourceError(f"Layer '{layer.name()}': GDAL cannot open {path}.")
    if dataset.GetGeoTransform(can_return_null=True) is None and not dataset.GetGCPCount():
        raise LayerSourceError(
            f"Layer '{layer.name()}' has no georeferencing (pixel coordinates only): georeference it first "
            "(Raster > Georeferencer, or a world file) so results land in the right place.")
    wkt = dataset.GetProjectionRef() or dataset.GetGCPProjection()
    file_crs = QgsCoordinateReferenceSystem.fromWkt(wkt) if wkt else QgsCoordinateReferenceSystem()
    if file_crs.isValid() and file_crs == layer.crs():
        return path
    folder = tempfile.mkdtemp(prefix="skysense_crs_")
    vrt = os.path.join(folder, os.path.splitext(os.path.basename(path))[0] + ".vrt")
    srs = layer.crs().toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL)
    if gdal.Translate(vrt, dataset, format="VRT", outputSRS=srs) is None:
        raise LayerSourceError(f"Layer '{layer.name()}': could not attach its CRS to {path}.")
    return vrt


def vector_source(layer: QgsMapLayer, allow_memory_export: bool = False,
                  selected_only: bool = False, single_layer: bool = False) -> tuple:
    """(path, layer name or None) of a vector file; memory layers are exported to a temporary GeoPackage.

    single_layer: the backend reads the first layer of a file, so a layer of a multi-layer
    dataset is copied out on its own.
    """
    if layer is None:
        raise LayerSourceError("No vector layer was chosen.")
    if not isinstance(layer, QgsVectorLayer):
        raise LayerSourceError(f"Layer '{layer.name()}' is not a vector layer.")
    provider = layer.providerType()
    if provider == "ogr" and not selected_only:
        parts = QgsProviderRegistry.instance().decodeUri(provider, layer.source())
        path = parts.get("path") or ""
        if os.path.isfile(path) and not parts.get("subset"):
            sublayer = parts.get("layerName") or None
            if not (single_layer and sublayer and _layer_count(path) > 1):
                return os.path.abspath(path), sublayer
    if provider == "ogr" or (provider == "memory" and allow_memory_export):
        # Selections, subset filters and memory layers only exist inside QGIS: hand over a copy.
        return export_to_temp_gpkg(layer, selected_only=selected_only), layer_table_name(layer)
    raise LayerSourceError(
        f"Layer '{layer.name()}' is a {provider} layer, not a vector file: save it as a GeoPackage or "
        "shapefile first (right-click > Export > Save Features As...).")


def _layer_count(path: str) -> int:
    probe = QgsVectorLayer(path, "probe", "ogr")
    return len(probe.dataProvider().subLayers()) if probe.isValid() else 1


def layer_table_name(layer: QgsVectorLayer) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", layer.name()).strip("_") or "layer"


def export_to_temp_gpkg(layer: QgsVectorLayer, selected_only: bool = False) -> str:
    """Writes the layer (CRS and attributes kept) to a new temporary GeoPackage."""
    folder = tempfile.mkdtemp(prefix="skysense_vector_")
    dest = os.path.join(folder, layer_table_name(layer) + ".gpkg")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = layer_table_name(layer)
    options.onlySelectedFeatures = selected_only
    err, message, _, _ = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, dest, QgsCoordinateTransformContext(), options)
    if err != QgsVectorFileWriter.NoError:
        raise LayerSourceError(f"Could not save layer '{layer.name()}' to a temporary GeoPackage: {message}")
    return dest


_DATE_PATTERNS = (
    re.compile(r"(?<!\d)((?:19|20)\d{2})[-_.]?(0[1-9]|1[0-2])[-_.]?(0[1-9]|[12]\d|3[01])(?!\d)"),
)


def guess_date(name: str) -> Optional[dt.date]:
    """Acquisition date from a layer or file name (S2A_..._20230514T..., s1_2023-05-14), if any."""
    for pattern in _DATE_PATTERNS:
        for match in pattern.finditer(name or ""):
            try:
                return dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
            except ValueError:
                continue
    return None
