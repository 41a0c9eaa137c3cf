"""Load a job's outputs into the project as styled layers inside a group named after the job."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

from qgis.core import QgsLayerTreeGroup, QgsMapLayer, QgsProject, QgsRasterLayer, QgsVectorLayer

from . import styles

# Raster roles holding continuous values (no class palette).
CONTINUOUS_ROLES = ("probability", "confidence", "uncertainty", "entropy", "features")
# Raster roles whose pixel values are the result's classes.
CLASS_ROLES = ("classes", "damage", "landcover", "pixel_classes")


class ResultLoadError(RuntimeError):
    """An output file named by the backend could not be opened."""


def add_result_layers(result: dict, group_name: str, job_kind: str = "",
                      project: Optional[QgsProject] = None) -> Tuple[Optional[QgsLayerTreeGroup], List[QgsMapLayer]]:
    """Adds every map output of `result` under a new top group; returns (group or None, layers)."""
    project = project or QgsProject.instance()
    layers: List[QgsMapLayer] = []
    # Only map layers: previews (kind "image"), tables and model files stay on disk.
    outputs = [o for o in result.get("outputs") or [] if o.get("kind") in ("raster", "vector")]
    if not outputs:
        return None, layers
    group = project.layerTreeRoot().insertGroup(0, group_name)
    # Vectors above rasters so polygons are not hidden under the class raster.
    outputs.sort(key=lambda o: 0 if o.get("kind") == "vector" else 1)
    for output in outputs:
        layer = load_output(output, result, job_kind)
        project.addMapLayer(layer, False)
        group.addLayer(layer)
        layers.append(layer)
    return group, layers


def load_output(output: dict, result: dict, job_kind: str = "") -> QgsMapLayer:
    path = output.get("path", "")
    role = str(output.get("role") or "")
    name = f"{job_kind or 'result'} {role}".strip() if role else os.path.splitext(os.path.basename(path))[0]
    if output.get("kind") == "vector":
        uri = path + (f"|layername={output['layer']}" if output.get("layer") else "")
        layer = QgsVectorLayer(uri, name, "ogr")
        if not layer.isValid():
            raise ResultLoadError(f"The result file {path} could not be opened as a vector layer.")
        style_vector(layer, output, result, job_kind)
    else:
        layer = QgsRasterLayer(path, name, "gdal")
        if not layer.isValid():
            raise ResultLoadError(f"The result file {path} could not be opened as a raster layer.")
        style_raster(layer, output, result, job_kind)
    return layer


def _load_qml(layer: QgsMapLayer, output: dict) -> bool:
    qml = output.get("qml")
    if qml and os.path.isfile(qml):
        _, ok = layer.loadNamedStyle(qml)
        return bool(ok)
    return False


def style_raster(layer: QgsRasterLayer, output: dict, result: dict, job_kind: str = "") -> None:
    """Class rasters end up paletted with class names in the legend; continuous ones keep their QML."""
    role = str(output.get("role") or "")
    loaded = _load_qml(layer, output)
    if role in CONTINUOUS_ROLES:
        return
    own = output.get("classes")
    if role == "change":
        styles.apply_change_mask(layer, own or result.get("classes"))
    elif own:
        styles.apply_paletted(layer, own)
    elif loaded and layer.renderer() is not None and layer.renderer().type() == "paletted" and _has_labels(layer):
        return
    elif role in CLASS_ROLES and result.get("classes"):
        styles.apply_paletted(layer, result["classes"])


def _has_labels(layer: QgsRasterLayer) -> bool:
    return all(c.label for c in layer.renderer().classes())


def style_vector(layer: QgsVectorLayer, output: dict, result: dict, job_kind: str = "") -> None:
    loaded = _load_qml(layer, output)
    classes = output.get("classes") or result.get("classes") or []
    is_damage = job_kind == "damage" or str(output.get("role")) in ("buildings", "damage")
    if is_damage:
        renderer = layer.renderer()
        if not loaded or renderer is None or renderer.type() != "categorizedSymbol":
            styles.apply_damage(layer, classes or None, output.get("class_field"))
    elif not loaded and classes:
        field = styles.pick_class_field(layer, [output.get("class_field") or ""])
        if field:
            styles.apply_categorized(layer, field, classes)
