"""Progress bar, status line and Cancel button for the running job."""
from __future__ import annotations

from typing import Optional

from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget


class JobPanel(QWidget):
    cancelRequested = pyqtSignal()

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.status = QLabel("No job running.")
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)

    def job_started(self, text: str) -> None:
        self.progress.setValue(0)
        self.status.setText(text)
        self.cancel_button.setEnabled(True)

    def job_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(round(100 * fraction)))
        if message:
            self.status.setText(message)

    def job_ended(self, text: str, success: bool) -> None:
        if success:
            self.progress.setValue(100)
        self.status.setText(text)
        self.cancel_button.setEnabled(False)
