"""Renderers for SkySense results: paletted class rasters, change masks, categorized damage polygons."""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

from qgis.core import (QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsPalettedRasterRenderer,
                       QgsRasterLayer, QgsRendererCategory, QgsSymbol, QgsVectorLayer)
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtGui import QColor

# Same values as resources/palettes/damage.json (a test keeps them identical); the plugin
# carries its own copy so it still works when installed without the repository.
DAMAGE_CLASSES = [
    {"value": 1, "name": "no damage", "color": "#1a9641"},
    {"value": 2, "name": "minor damage", "color": "#ffffbf"},
    {"value": 3, "name": "major damage", "color": "#fdae61"},
    {"value": 4, "name": "destroyed", "color": "#d7191c"},
]

# Fields the backend may use for the class of a polygon, most specific first.
CLASS_FIELD_CANDIDATES = ("damage", "damage_class", "class_name", "class", "label", "value", "DN")


def parse_color(text: str) -> QColor:
    """'#rrggbb' or CSS-style '#rrggbbaa' (alpha last, as in the project palettes)."""
    text = (text or "").strip()
    if text.startswith("#") and len(text) == 9:
        color = QColor(text[:7])
        color.setAlpha(int(text[7:9], 16))
        return color
    color = QColor(text)
    return color if color.isValid() else QColor("#808080")


def apply_paletted(layer: QgsRasterLayer, classes: Sequence[dict], band: int = 1) -> QgsPalettedRasterRenderer:
    """Class raster -> paletted renderer whose legend lists every class name with its colour."""
    entries = [QgsPalettedRasterRenderer.Class(int(c["value"]), parse_color(c.get("color", "")),
                                               str(c.get("name", c["value"])))
               for c in classes]
    renderer = QgsPalettedRasterRenderer(layer.dataProvider(), band, entries)
    layer.setRenderer(renderer)
    layer.triggerRepaint()
    return renderer


def apply_change_mask(layer: QgsRasterLayer, classes: Optional[Sequence[dict]] = None) -> QgsPalettedRasterRenderer:
    """Change mask: 'no change' fully transparent so the imagery shows through."""
    classes = list(classes or [{"value": 0, "name": "no change", "color": "#00000000"},
                               {"value": 1, "name": "change", "color": "#ff00ff"}])
    renderer = apply_paletted(layer, classes)
    layer.setOpacity(0.8)
    return renderer


def pick_class_field(layer: QgsVectorLayer, preferred: Iterable[str] = ()) -> Optional[str]:
    names = {f.name().lower(): f.name() for f in layer.fields()}
    for candidate in list(preferred) + list(CLASS_FIELD_CANDIDATES):
        if candidate and candidate.lower() in names:
            return names[candidate.lower()]
    return None


def apply_categorized(layer: QgsVectorLayer, field: str, classes: Sequence[dict],
                      outline: str = "#404040") -> QgsCategorizedSymbolRenderer:
    """One category per class; matches the field by value (numbers) or by name (text)."""
    index = layer.fields().indexOf(field)
    is_text = index >= 0 and layer.fields().at(index).type() == QVariant.String
    categories: List[QgsRendererCategory] = []
    for cls in classes:
        symbol = QgsSymbol.defaultSymbol(layer.geometryType())
        if symbol is None:
            symbol = QgsFillSymbol.createSimple({})
        symbol.setColor(parse_color(cls.get("color", "")))
        if isinstance(symbol, QgsFillSymbol):
            symbol.symbolLayer(0).setStrokeColor(QColor(outline))
        key = str(cls.get("name")) if is_text else int(cls["value"])
        categories.append(QgsRendererCategory(key, symbol, str(cls.get("name", cls["value"]))))
    renderer = QgsCategorizedSymbolRenderer(field, categories)
    layer.setRenderer(renderer)
    layer.triggerRepaint()
    return renderer


def apply_damage(layer: QgsVectorLayer, classes: Optional[Sequence[dict]] = None,
                 field: Optional[str] = None) -> Optional[QgsCategorizedSymbolRenderer]:
    """Building polygons coloured no damage / minor / major / destroyed."""
    field = field or pick_class_field(layer)
    if field is None:
        return None
    usable = [c for c in (classes or DAMAGE_CLASSES) if str(c.get("name", "")).lower() != "background"]
    return apply_categorized(layer, field, usable)
