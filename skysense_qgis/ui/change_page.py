"""'Change detection' section: pre/post rasters and an AOI."""
from __future__ import annotations

from typing import Optional

from qgis.PyQt.QtWidgets import QPushButton, QVBoxLayout, QWidget

from .. import job_params
from .aoi_widget import AoiWidget
from .widgets import ModelChooser, device_combo, form, hint, layer_combo, spin


class ChangePage(QWidget):
    def __init__(self, canvas, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.pre_layer = layer_combo("raster")
        self.post_layer = layer_combo("raster")
        self.model = ModelChooser(["change"])
        self.tile_size = spin(0, 0, 4096, 32, " px")
        self.tile_size.setSpecialValueText("Model's own")  # 0: the tile the model file names
        self.tile_size.setToolTip("Tile edge in pixels. Model's own: the size stored in the model file "
                                  "(256 for the bundled change model).")
        self.device = device_combo()
        self.aoi = AoiWidget(canvas)
        self.run_button = QPushButton("Detect changes")
        layout = QVBoxLayout(self)
        layout.addWidget(hint("The two dates may be in different CRSs and resolutions: the backend "
                              "reads both on the grid of the 'before' raster."))
        box = QWidget()
        f = form(box)
        f.addRow("Before", self.pre_layer)
        f.addRow("After", self.post_layer)
        f.addRow("Model", self.model)
        f.addRow("Tile size", self.tile_size)
        f.addRow("Device", self.device)
        f.addRow("Area", self.aoi)
        layout.addWidget(box)
        layout.addWidget(self.run_button)
        layout.addStretch(1)

    def params(self, output_dir: str, name: str) -> dict:
        return job_params.change_params(
            self.pre_layer.currentLayer(), self.post_layer.currentLayer(), output_dir, name,
            aoi=self.aoi.aoi(), model=self.model.model_path(), tile_size=self.tile_size.value(),
            device=self.device.currentData())
