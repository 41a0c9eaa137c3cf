"""Small reusable widgets: layer pickers, model chooser, form helpers."""
from __future__ import annotations

import os
from typing import List, Optional

from qgis.core import QgsMapLayerProxyModel
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QSpinBox,
                                 QToolButton, QWidget)


def layer_combo(kind: str = "raster", optional: bool = False) -> QgsMapLayerComboBox:
    combo = QgsMapLayerComboBox()
    filters = {"raster": QgsMapLayerProxyModel.RasterLayer,
               "polygon": QgsMapLayerProxyModel.PolygonLayer,
               "vector": QgsMapLayerProxyModel.VectorLayer}[kind]
    combo.setFilters(filters)
    combo.setAllowEmptyLayer(optional)
    shrinkable(combo)
    if optional:
        combo.setLayer(None)
    return combo


def shrinkable(combo: QComboBox) -> None:
    """Long layer names must not force the dock wider than the screen."""
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(10)


def spin(value: int, low: int, high: int, step: int = 1, suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setValue(value)
    if suffix:
        box.setSuffix(suffix)
    return box


def choice_combo(choices, tooltip: str = "") -> QComboBox:
    """A combo box of (label, value) pairs; currentData() is the chosen value."""
    combo = QComboBox()
    shrinkable(combo)
    for label, value in choices:
        combo.addItem(label, value)
    if tooltip:
        combo.setToolTip(tooltip)
    return combo


def device_combo() -> QComboBox:
    return choice_combo([("Auto (GPU when available)", "auto"), ("CPU", "cpu"), ("CUDA GPU", "cuda")])


def runtime_combo() -> QComboBox:
    return choice_combo([("Auto (fastest for this computer)", "auto"), ("PyTorch", "torch"),
                         ("ONNX Runtime (CPU)", "onnx"), ("PyTorch compiled", "compile"),
                         ("OpenVINO (CPU)", "openvino")],
                        "How the model runs. Auto picks OpenVINO on the CPU for large rasters when the backend "
                        "has it (the fastest CPU runtime measured). 'PyTorch compiled' spends minutes compiling the model the first "
                        "time for a tile size (seconds later on), then runs each tile faster: for large rasters.")


def form(parent: QWidget) -> QFormLayout:
    layout = QFormLayout(parent)
    layout.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
    return layout


def hint(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: palette(mid);")
    return label


def folder_widget(path: str = "") -> QgsFileWidget:
    widget = QgsFileWidget()
    widget.setStorageMode(QgsFileWidget.GetDirectory)
    widget.setFilePath(path)
    return widget


class ModelChooser(QWidget):
    """Models listed by the backend for one task, the backend default, or a browsed .pth/.onnx file."""

    def __init__(self, tasks: List[str], parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.tasks = tasks
        self.combo = QComboBox()
        shrinkable(self.combo)
        self.combo.setToolTip("Model used for this task; 'Default' lets the backend pick its bundled model.")
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("Use a model file (.pth project model or .onnx)")
        browse.clicked.connect(self.browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(browse)
        self.set_models([])

    def set_models(self, models: List[dict]) -> None:
        current = self.model_path()
        self.combo.clear()
        self.combo.addItem("Default (bundled model)", None)
        for m in models:
            if m.get("error") or (self.tasks and m.get("task") not in self.tasks):
                continue
            n = len(m.get("classes") or [])
            onnx = ", ONNX" if str(m["path"]).lower().endswith(".onnx") else ""
            label = f"{m.get('name') or os.path.basename(m['path'])} ({m.get('task')}, {n} classes{onnx})"
            self.combo.addItem(label, m["path"])
        if current:
            self.set_model_path(current)

    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a SkySense model", "",
                                              "SkySense models (*.pth *.onnx);;All files (*)")
        if path:
            self.set_model_path(path)

    def set_model_path(self, path: str) -> None:
        index = self.combo.findData(path)
        if index < 0:
            self.combo.addItem(os.path.basename(path), path)
            index = self.combo.count() - 1
        self.combo.setCurrentIndex(index)

    def model_path(self) -> Optional[str]:
        return self.combo.currentData()
