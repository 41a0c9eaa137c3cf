"""'Land cover' section: HR raster, optional Sentinel-2/-1 stacks, model, tiling, device, runtime."""
from __future__ import annotations

from typing import Optional

from qgis.gui import QgsCollapsibleGroupBox
from qgis.PyQt.QtWidgets import QCheckBox, QGroupBox, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from .. import job_params
from .aoi_widget import AoiWidget
from .dated_layer_table import DatedLayerTable
from .widgets import ModelChooser, device_combo, form, hint, layer_combo, runtime_combo, spin


class LandcoverPage(QWidget):
    def __init__(self, canvas, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.hr_layer = layer_combo("raster")
        self.hr_layer.setToolTip("High-resolution RGB raster (GeoTIFF or any GDAL file, any CRS)")
        self.band_r, self.band_g, self.band_b = spin(1, 1, 64), spin(2, 1, 64), spin(3, 1, 64)
        bands = QHBoxLayout()
        for label, box in (("R", self.band_r), ("G", self.band_g), ("B", self.band_b)):
            box.setPrefix(label + " ")
            bands.addWidget(box)
        self.s2_table = DatedLayerTable("Sentinel-2")
        self.s1_table = DatedLayerTable("Sentinel-1")
        self.model = ModelChooser(["segmentation", "temporal"])
        self.tile_size = spin(0, 0, 4096, 32, " px")
        self.tile_size.setSpecialValueText("Model's own")  # 0: the tile the model file names (640 for the default)
        self.tile_size.setToolTip("Tile edge in pixels. Model's own: the size stored in the model file, tuned for "
                                  "it (640 for the bundled land-cover model). Larger tiles are a little faster "
                                  "on big rasters and need more memory.")
        self.overlap = spin(64, 0, 1024, 16, " px")
        self.batch_size = spin(0, 0, 64)
        self.batch_size.setSpecialValueText("Auto")  # 0: the backend picks (8 on a GPU, 2 on a CPU)
        self.batch_size.setToolTip("Tiles per model call. Auto: 8 on a GPU, 2 on a CPU (larger CPU batches "
                                   "are not faster, they only use more memory).")
        self.device = device_combo()
        self.runtime = runtime_combo()
        self.vectorize = QCheckBox("Also write polygons")
        self.vectorize.setToolTip("Polygonize the class raster into a GeoPackage (one polygon per class region)")
        self.vectorize.setChecked(True)
        self.tta = QCheckBox("Average over flips (slower)")
        self.tta.setToolTip("Test-time augmentation: the model also sees each tile flipped horizontally and "
                            "vertically, and the three predictions are averaged. About 2-3x the time; on the "
                            "LoveDA held-out strips +0.3 points of overall accuracy and +1.5 of mIoU, no gain "
                            "on whole tiles. "
                            "High-resolution maps only (not with Sentinel time series).")
        self.aoi = AoiWidget(canvas)
        self.run_button = QPushButton("Map land cover")
        self.run_button.setObjectName("mapLandCoverButton")

        main = QVBoxLayout(self)
        inputs = QGroupBox("Imagery")
        f = form(inputs)
        f.addRow("High-res raster", self.hr_layer)
        f.addRow("Bands", bands)
        main.addWidget(inputs)
        series = QgsCollapsibleGroupBox("Time series (optional)")
        series.setCollapsed(True)
        s = QVBoxLayout(series)
        s.addWidget(hint("Sentinel-2 (10 bands) and Sentinel-1 (VV, VH) acquisitions; dates are read from "
                         "layer names such as S2A_20230514 when present."))
        s.addWidget(self.s2_table)
        s.addWidget(self.s1_table)
        main.addWidget(series)
        options = QGroupBox("Model and tiling")
        o = form(options)
        o.addRow("Model", self.model)
        o.addRow("Tile size", self.tile_size)
        o.addRow("Overlap", self.overlap)
        o.addRow("Batch size", self.batch_size)
        o.addRow("Device", self.device)
        o.addRow("Runtime", self.runtime)
        o.addRow("Area", self.aoi)
        o.addRow(self.vectorize)
        o.addRow(self.tta)
        main.addWidget(options)
        main.addWidget(self.run_button)
        main.addStretch(1)

    def params(self, output_dir: str, name: str) -> dict:
        return job_params.landcover_params(
            self.hr_layer.currentLayer(), output_dir, name,
            bands=(self.band_r.value(), self.band_g.value(), self.band_b.value()),
            s2=self.s2_table.entries(), s1=self.s1_table.entries(), model=self.model.model_path(),
            tile_size=self.tile_size.value(), overlap=self.overlap.value(),
            batch_size=self.batch_size.value(), device=self.device.currentData(),
            runtime=self.runtime.currentData(),
            aoi=self.aoi.aoi(), vectorize=self.vectorize.isChecked(), tta=self.tta.isChecked())
