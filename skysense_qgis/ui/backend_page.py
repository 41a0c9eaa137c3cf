"""'Backend' section: interpreter, start/stop, health (version, CPU or GPU name)."""
from __future__ import annotations

from typing import Optional

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from .widgets import folder_widget, form, hint


class BackendPage(QWidget):
    def __init__(self, interpreter: str, backend_root: str, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.interpreter = QgsFileWidget()
        self.interpreter.setStorageMode(QgsFileWidget.GetFile)
        self.interpreter.setFilePath(interpreter)
        self.interpreter.setToolTip("Python with PyTorch and the backend requirements (not QGIS's Python)")
        self.backend_root = folder_widget(backend_root)
        self.backend_root.setToolTip("Folder that contains backend/ (the SkySense repository)")
        self.start_button = QPushButton("Start backend")
        self.stop_button = QPushButton("Stop")
        self.refresh_button = QPushButton("Check")
        self.start_with_panel = QCheckBox("Start the backend when this panel opens")
        self.start_with_panel.setToolTip(
            "The first job then need not wait for the backend to start, and the backend has OpenVINO ready "
            "for the model and tile size of the last CPU job (the backend uses memory while it runs)")
        self.status = QLabel("Backend not running.")
        self.status.setWordWrap(True)
        self.status.setObjectName("backendStatus")
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.refresh_button)
        layout = QVBoxLayout(self)
        box = QWidget()
        f = form(box)
        f.addRow("Python", self.interpreter)
        f.addRow("Backend folder", self.backend_root)
        layout.addWidget(box)
        layout.addLayout(buttons)
        layout.addWidget(self.start_with_panel)
        layout.addWidget(self.status)
        layout.addWidget(hint("The backend runs on this computer only (127.0.0.1) and every request "
                              "carries a secret token; it starts on its own when a job is run."))
        layout.addStretch(1)

    def show_health(self, health: Optional[dict], error: str = "") -> None:
        if health is None:
            self.status.setText(error or "Backend not running.")
            return
        if health.get("device") == "cuda" or health.get("gpu_name"):
            where = f"GPU: {health.get('gpu_name') or 'CUDA'}"
        else:
            where = "CPU"
        text = f"Running — SkySense backend {health.get('version', '?')}, torch {health.get('torch', '?')}, {where}"
        if health.get("preparing"):
            text += (f". Preparing {health['preparing']} in the background: until it is done, "
                     "the first CPU jobs may run slower")
        self.status.setText(text)
