"""Area of interest: drawn on the map (rectangle or polygon) or taken from selected polygons."""
from __future__ import annotations

import json
from typing import Optional

from qgis.core import (QgsCoordinateReferenceSystem, QgsGeometry, QgsPointXY, QgsRectangle,
                       QgsVectorLayer, QgsWkbTypes)
from qgis.gui import QgsMapCanvas, QgsMapToolEmitPoint, QgsRubberBand
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor

from .layer_sources import LayerSourceError, crs_string


def aoi_payload(geometry: QgsGeometry, crs: QgsCoordinateReferenceSystem) -> dict:
    """{'geometry': GeoJSON, 'crs': authid or WKT} as the backend expects; never assumes EPSG:4326."""
    if geometry is None or geometry.isEmpty():
        raise LayerSourceError("The area of interest is empty.")
    if not crs.isValid():
        raise LayerSourceError("The area of interest has no coordinate reference system.")
    if not geometry.isGeosValid():
        geometry = geometry.makeValid()
    return {"geometry": json.loads(geometry.asJson(17)), "crs": crs_string(crs)}


def aoi_from_selection(layer: QgsVectorLayer) -> dict:
    """Union of the selected polygons of `layer`, in the layer's CRS."""
    if not isinstance(layer, QgsVectorLayer) or layer.geometryType() != QgsWkbTypes.PolygonGeometry:
        raise LayerSourceError("Choose a polygon layer for the area of interest.")
    geoms = [f.geometry() for f in layer.selectedFeatures() if f.hasGeometry()]
    if not geoms:
        raise LayerSourceError(f"Select at least one polygon in layer '{layer.name()}' to use as the area of interest.")
    return aoi_payload(QgsGeometry.unaryUnion(geoms), layer.crs())


def _rubber_band(canvas: QgsMapCanvas) -> QgsRubberBand:
    band = QgsRubberBand(canvas, QgsWkbTypes.PolygonGeometry)
    band.setColor(QColor(255, 0, 255, 60))
    band.setStrokeColor(QColor(200, 0, 200))
    band.setWidth(2)
    return band


class RectangleAoiTool(QgsMapToolEmitPoint):
    """Press, drag, release: emits the rectangle as a polygon geometry in the canvas CRS."""

    aoiDrawn = pyqtSignal(QgsGeometry)

    def __init__(self, canvas: QgsMapCanvas):
        super().__init__(canvas)
        self.canvas = canvas
        self.band = _rubber_band(canvas)
        self.start: Optional[QgsPointXY] = None

    def canvasPressEvent(self, event):
        self.start = self.toMapCoordinates(event.pos())
        self.band.reset(QgsWkbTypes.PolygonGeometry)

    def canvasMoveEvent(self, event):
        if self.start is not None:
            self._show(self.start, self.toMapCoordinates(event.pos()))

    def canvasReleaseEvent(self, event):
        if self.start is None:
            return
        end = self.toMapCoordinates(event.pos())
        rect = QgsRectangle(self.start, end)
        self.start = None
        if rect.width() > 0 and rect.height() > 0:
            self._show(QgsPointXY(rect.xMinimum(), rect.yMinimum()), QgsPointXY(rect.xMaximum(), rect.yMaximum()))
            self.aoiDrawn.emit(QgsGeometry.fromRect(rect))

    def _show(self, a: QgsPointXY, b: QgsPointXY):
        self.band.setToGeometry(QgsGeometry.fromRect(QgsRectangle(a, b)), None)

    def clear(self):
        self.band.reset(QgsWkbTypes.PolygonGeometry)


class PolygonAoiTool(QgsMapToolEmitPoint):
    """Left click adds a vertex, right click (or double click) closes the polygon."""

    aoiDrawn = pyqtSignal(QgsGeometry)

    def __init__(self, canvas: QgsMapCanvas):
        super().__init__(canvas)
        self.canvas = canvas
        self.band = _rubber_band(canvas)
        self.points = []

    def canvasReleaseEvent(self, event):
        if event.button() == Qt.RightButton:
            self.finish()
            return
        self.points.append(self.toMapCoordinates(event.pos()))
        self.band.addPoint(self.points[-1], True)

    def canvasDoubleClickEvent(self, event):
        self.finish()

    def canvasMoveEvent(self, event):
        if self.points:
            self.band.movePoint(self.toMapCoordinates(event.pos()))

    def finish(self):
        if len(self.points) >= 3:
            geom = QgsGeometry.fromPolygonXY([self.points + [self.points[0]]])
            self.band.setToGeometry(geom, None)
            self.aoiDrawn.emit(geom)
        self.points = []

    def clear(self):
        self.points = []
        self.band.reset(QgsWkbTypes.PolygonGeometry)
