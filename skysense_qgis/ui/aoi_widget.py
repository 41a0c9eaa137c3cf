"""Area-of-interest picker: whole raster, drawn rectangle/polygon, or selected polygons of a layer."""
from __future__ import annotations

from typing import Optional

from qgis.core import QgsCoordinateReferenceSystem, QgsGeometry
from qgis.PyQt.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..aoi_tools import PolygonAoiTool, RectangleAoiTool, aoi_from_selection, aoi_payload
from .widgets import layer_combo, shrinkable

WHOLE, EXTENT, DRAWN, SELECTED = "whole", "extent", "drawn", "selected"


class AoiWidget(QWidget):
    def __init__(self, canvas, parent: Optional[QWidget] = None, allow_whole: bool = True):
        super().__init__(parent)
        self.canvas = canvas
        self.geometry: Optional[QgsGeometry] = None
        self.geometry_crs = QgsCoordinateReferenceSystem()
        self.mode = QComboBox()
        shrinkable(self.mode)
        if allow_whole:
            self.mode.addItem("Whole overlap of the rasters", WHOLE)
        self.mode.addItem("Current map view", EXTENT)
        self.mode.addItem("Drawn on the map", DRAWN)
        self.mode.addItem("Selected features of a polygon layer", SELECTED)
        self.draw_rect = QPushButton("Rectangle")
        self.draw_rect.setToolTip("Drag a rectangle on the map")
        self.draw_poly = QPushButton("Polygon")
        self.draw_poly.setToolTip("Click vertices on the map; right-click to finish")
        self.draw_rect.clicked.connect(lambda: self._activate(RectangleAoiTool))
        self.draw_poly.clicked.connect(lambda: self._activate(PolygonAoiTool))
        self.polygon_layer = layer_combo("polygon", optional=True)
        self.state = QLabel("")
        draw_row = QHBoxLayout()
        draw_row.addWidget(self.draw_rect)
        draw_row.addWidget(self.draw_poly)
        draw_row.addWidget(self.state, 1)
        self.draw_box = QWidget()
        self.draw_box.setLayout(draw_row)
        draw_row.setContentsMargins(0, 0, 0, 0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.mode)
        layout.addWidget(self.draw_box)
        layout.addWidget(self.polygon_layer)
        self.tool = None
        self.mode.currentIndexChanged.connect(self._mode_changed)
        self._mode_changed()

    def _mode_changed(self) -> None:
        mode = self.mode.currentData()
        self.draw_box.setVisible(mode == DRAWN)
        self.polygon_layer.setVisible(mode == SELECTED)

    def _activate(self, tool_class) -> None:
        if self.tool is not None:
            self.tool.clear()
        self.tool = tool_class(self.canvas)
        self.tool.aoiDrawn.connect(self.set_drawn)
        self.canvas.setMapTool(self.tool)
        self.state.setText("Draw on the map…")

    def set_drawn(self, geometry: QgsGeometry, crs: Optional[QgsCoordinateReferenceSystem] = None) -> None:
        self.geometry = QgsGeometry(geometry)
        self.geometry_crs = crs or self.canvas.mapSettings().destinationCrs()
        self.mode.setCurrentIndex(self.mode.findData(DRAWN))
        self.state.setText("AOI set")

    def set_mode(self, mode: str) -> None:
        self.mode.setCurrentIndex(self.mode.findData(mode))

    def aoi(self) -> Optional[dict]:
        """The AOI payload for the backend, or None for the whole raster; raises LayerSourceError."""
        mode = self.mode.currentData()
        if mode == WHOLE:
            return None
        if mode == SELECTED:
            return aoi_from_selection(self.polygon_layer.currentLayer())
        if mode == EXTENT:
            settings = self.canvas.mapSettings()
            return aoi_payload(QgsGeometry.fromRect(settings.visibleExtent()), settings.destinationCrs())
        return aoi_payload(self.geometry, self.geometry_crs)

    def clear(self) -> None:
        if self.tool is not None:
            self.tool.clear()
        self.geometry = None
