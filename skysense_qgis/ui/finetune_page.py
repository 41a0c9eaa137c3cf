"""'Fine-tune' section: labelled polygons + class field, base model, epochs; loss curve and accuracy."""
from __future__ import annotations

import re
from typing import Optional

from qgis.gui import QgsFieldComboBox
from qgis.PyQt.QtWidgets import (QCheckBox, QHeaderView, QLabel, QPushButton, QTableWidget,
                                 QTableWidgetItem, QVBoxLayout, QWidget)

from .. import job_params
from .loss_plot import LossPlot
from .widgets import ModelChooser, device_combo, form, hint, layer_combo, spin

_LOSS_IN_MESSAGE = re.compile(r"loss[^0-9\-+.]{0,3}([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)", re.IGNORECASE)
_EPOCH_IN_MESSAGE = re.compile(r"epoch\s*(\d+)", re.IGNORECASE)


def loss_history(result: dict) -> tuple:
    """(train losses, validation losses) from a fine-tune result, whatever key the backend used."""
    metrics = result.get("metrics") or {}
    history = metrics.get("history") or result.get("history") or {}
    if isinstance(history, list):  # [{"epoch":1,"loss":..,"val_loss":..}]
        train = [h.get("loss", h.get("train_loss")) for h in history if isinstance(h, dict)]
        val = [h.get("val_loss") for h in history if isinstance(h, dict) and h.get("val_loss") is not None]
        return [v for v in train if v is not None], val
    if isinstance(result.get("loss_curve"), list):
        return loss_history({"metrics": {"history": result["loss_curve"]}})
    for src in (history, metrics):
        for key in ("train_loss", "loss_history", "losses", "loss"):
            if isinstance(src.get(key), list):
                return src[key], src.get("val_loss") if isinstance(src.get("val_loss"), list) else []
    return [], []


def per_class_accuracy(result: dict) -> list:
    """[(class name, accuracy 0..1)] from the result metrics, when present."""
    metrics = result.get("metrics") or {}
    for key in ("per_class", "per_class_accuracy", "class_accuracy", "per_class_iou", "iou_per_class"):
        value = result.get(key) if key in result else metrics.get(key)
        if isinstance(value, dict):
            return [(str(k), float(v)) for k, v in value.items() if isinstance(v, (int, float))]
        if isinstance(value, list):
            rows = []
            for item in value:
                if isinstance(item, dict):
                    score = next((item[k] for k in ("accuracy", "acc", "iou", "recall") if k in item), None)
                    if score is not None:
                        rows.append((str(item.get("name", item.get("value"))), float(score)))
            return rows
    return []


class FinetunePage(QWidget):
    def __init__(self, canvas, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.raster = layer_combo("raster")
        self.labels = layer_combo("polygon")
        self.class_field = QgsFieldComboBox()
        self.labels.layerChanged.connect(self.class_field.setLayer)
        self.class_field.setLayer(self.labels.currentLayer())
        self.base_model = ModelChooser(["segmentation"])
        self.epochs = spin(10, 1, 1000)
        self.freeze = QCheckBox("Freeze the encoder")
        self.freeze.setToolTip("Train the decoder head only: faster, and safer with very few labels. "
                               "Unticked, the whole model is fine-tuned (better with the small default model).")
        self.freeze.setChecked(False)
        self.resume = QCheckBox("Resume the last interrupted run")
        self.resume.setToolTip("Continue the last fine-tune that stopped before finishing (e.g. the backend was "
                               "killed) from its last saved epoch, in the same output folder and under the same "
                               "name. Keep the same raster, labels, class field, epochs and encoder setting.")
        self.device = device_combo()
        self.run_button = QPushButton("Fine-tune")
        self.plot = LossPlot()
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.accuracy = QTableWidget(0, 2)
        self.accuracy.setHorizontalHeaderLabels(["Class", "Accuracy"])
        self.accuracy.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.accuracy.verticalHeader().setVisible(False)
        self.accuracy.setMinimumHeight(80)
        layout = QVBoxLayout(self)
        layout.addWidget(hint("Draw or load polygons over the raster with a field holding the class name or "
                              "number; SkySense rasterises them and trains on the pixels inside."))
        box = QWidget()
        f = form(box)
        f.addRow("Raster", self.raster)
        f.addRow("Labels", self.labels)
        f.addRow("Class field", self.class_field)
        f.addRow("Base model", self.base_model)
        f.addRow("Epochs", self.epochs)
        f.addRow("Device", self.device)
        f.addRow(self.freeze)
        f.addRow(self.resume)
        layout.addWidget(box)
        layout.addWidget(self.run_button)
        layout.addWidget(self.plot)
        layout.addWidget(self.summary)
        layout.addWidget(self.accuracy)
        layout.addStretch(1)

    def params(self, output_dir: str, name: str) -> dict:
        return job_params.finetune_params(
            self.raster.currentLayer(), self.labels.currentLayer(), self.class_field.currentField(),
            output_dir, name, base_model=self.base_model.model_path(), epochs=self.epochs.value(),
            freeze_encoder=self.freeze.isChecked(), resume=self.resume.isChecked(),
            device=self.device.currentData())

    def job_started(self) -> None:
        self.plot.set_series([])
        self.accuracy.setRowCount(0)
        self.summary.setText("")
        self._last_epoch = None

    def progress_message(self, message: str) -> None:
        """Live curve: the backend reports the running loss, e.g. 'epoch 3/10: loss 0.412'.

        One point per epoch, updated while the epoch runs, so the last value is the epoch's mean loss."""
        loss, epoch = _LOSS_IN_MESSAGE.search(message or ""), _EPOCH_IN_MESSAGE.search(message or "")
        if not (loss and epoch):
            return
        if epoch.group(1) != getattr(self, "_last_epoch", None) or not self.plot.train:
            self._last_epoch = epoch.group(1)
            self.plot.append(float(loss.group(1)))
        else:
            self.plot.train[-1] = float(loss.group(1))
            self.plot.update()

    def show_result(self, result: dict) -> None:
        train, val = loss_history(result)
        if train:
            self.plot.set_series(train, val)
        rows = per_class_accuracy(result)
        self.accuracy.setRowCount(len(rows))
        for i, (name, score) in enumerate(rows):
            self.accuracy.setItem(i, 0, QTableWidgetItem(name))
            self.accuracy.setItem(i, 1, QTableWidgetItem(f"{100 * score:.1f} %"))
        metrics = result.get("metrics") or {}
        overall = metrics.get("overall_accuracy", metrics.get("accuracy"))
        model = next((o["path"] for o in result.get("outputs", []) if o.get("kind") == "model"), None)
        parts = []
        if isinstance(overall, (int, float)):
            parts.append(f"Overall accuracy {100 * overall:.1f} %")
        if isinstance(metrics.get("miou"), (int, float)):
            parts.append(f"mIoU {metrics['miou']:.3f}")
        baseline = metrics.get("random_forest")
        if isinstance(baseline, dict) and isinstance(baseline.get("overall_accuracy"), (int, float)):
            parts.append(f"random-forest baseline {100 * baseline['overall_accuracy']:.1f} %")
        if metrics.get("resumed_from_epoch"):
            parts.append(f"resumed after epoch {metrics['resumed_from_epoch']}")
        if model:
            parts.append(f"model saved to {model}")
        self.summary.setText("; ".join(parts))
