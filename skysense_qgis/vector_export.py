"""Save vector results as shapefile or GeoPackage, keeping CRS and attributes."""
from __future__ import annotations

import os

from qgis.core import QgsProject, QgsVectorFileWriter, QgsVectorLayer

DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile"}


class ExportError(RuntimeError):
    """The layer could not be written; the message names the file and the reason."""


def driver_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in DRIVERS:
        raise ExportError(f"Cannot export to '{path}': use a .gpkg or .shp file name.")
    return DRIVERS[ext]


def export_vector_layer(layer: QgsVectorLayer, dest: str, selected_only: bool = False) -> str:
    """Writes `layer` to `dest` (.gpkg or .shp) in the layer's own CRS; returns the written path.

    Written under a temporary name first so an existing good file is only replaced by a complete one.
    """
    if layer is None or not isinstance(layer, QgsVectorLayer) or not layer.isValid():
        raise ExportError("Choose a valid vector layer to export.")
    dest = os.path.abspath(dest)
    driver = driver_for(dest)
    folder = os.path.dirname(dest)
    if not os.path.isdir(folder):
        raise ExportError(f"The folder {folder} does not exist.")
    stem, ext = os.path.splitext(dest)
    tmp = f"{stem}.part{ext}"
    _remove_dataset(tmp, driver)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = driver
    options.fileEncoding = "UTF-8"
    options.onlySelectedFeatures = selected_only
    options.layerName = os.path.basename(stem)
    err, message, _, _ = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, tmp, QgsProject.instance().transformContext(), options)
    if err != QgsVectorFileWriter.NoError:
        _remove_dataset(tmp, driver)
        raise ExportError(f"Could not write {dest}: {message or 'unknown error'}")
    _remove_dataset(dest, driver)
    for src_file, dst_file in _dataset_files(tmp, dest, driver):
        os.replace(src_file, dst_file)
    return dest


def _sidecars(path: str, driver: str):
    stem = os.path.splitext(path)[0]
    if driver == "ESRI Shapefile":
        return [stem + e for e in (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".qpj")]
    return [path]


def _dataset_files(tmp: str, dest: str, driver: str):
    pairs = zip(_sidecars(tmp, driver), _sidecars(dest, driver))
    return [(a, b) for a, b in pairs if os.path.exists(a)]


def _remove_dataset(path: str, driver: str) -> None:
    for f in _sidecars(path, driver):
        if os.path.exists(f):
            os.remove(f)
