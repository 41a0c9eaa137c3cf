"""'Results' section: export a vector result to shapefile or GeoPackage."""
from __future__ import annotations

from typing import Optional

from qgis.PyQt.QtWidgets import QCheckBox, QFileDialog, QPushButton, QVBoxLayout, QWidget

from ..vector_export import export_vector_layer
from .widgets import form, hint, layer_combo


class ResultsPage(QWidget):
    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.vector_layer = layer_combo("vector")
        self.selected_only = QCheckBox("Selected features only")
        self.export_button = QPushButton("Export to shapefile / GeoPackage…")
        layout = QVBoxLayout(self)
        layout.addWidget(hint("Results are added as layer groups named after the job. Export keeps the "
                              "layer's CRS and attributes."))
        box = QWidget()
        f = form(box)
        f.addRow("Vector layer", self.vector_layer)
        f.addRow(self.selected_only)
        layout.addWidget(box)
        layout.addWidget(self.export_button)
        layout.addStretch(1)

    def ask_destination(self) -> str:
        path, _ = QFileDialog.getSaveFileName(self, "Export vector layer", "",
                                              "GeoPackage (*.gpkg);;ESRI Shapefile (*.shp)")
        return path

    def export_to(self, path: str) -> str:
        return export_vector_layer(self.vector_layer.currentLayer(), path, self.selected_only.isChecked())
