"""A table of raster layers with acquisition dates, for Sentinel-2 / Sentinel-1 time series."""
from __future__ import annotations

import datetime as dt
from typing import List, Optional, Tuple

from qgis.core import QgsMapLayer, QgsRasterLayer
from qgis.PyQt.QtCore import QDate
from qgis.PyQt.QtWidgets import (QAbstractItemView, QDateEdit, QHBoxLayout, QHeaderView, QPushButton,
                                 QTableWidget, QVBoxLayout, QWidget)

from ..layer_sources import guess_date
from .widgets import layer_combo


class DatedLayerTable(QWidget):
    """Rows of (raster layer, date); the date is guessed from the layer name (…20230514…) when possible."""

    def __init__(self, title: str, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.title = title
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels([f"{title} layer", "Acquisition date"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeToContents)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(60)
        self.table.setMaximumHeight(110)
        add = QPushButton("Add")
        add.setToolTip(f"Add a {title} acquisition")
        add.clicked.connect(lambda: self.add_row())
        remove = QPushButton("Remove")
        remove.clicked.connect(self.remove_selected)
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(buttons)

    def add_row(self, layer: Optional[QgsMapLayer] = None, date: Optional[dt.date] = None) -> int:
        row = self.table.rowCount()
        self.table.insertRow(row)
        combo = layer_combo("raster")
        date_edit = QDateEdit()
        date_edit.setCalendarPopup(True)
        date_edit.setDisplayFormat("yyyy-MM-dd")
        self.table.setCellWidget(row, 0, combo)
        self.table.setCellWidget(row, 1, date_edit)
        combo.layerChanged.connect(lambda lyr, edit=date_edit: self._guess(lyr, edit))
        if layer is not None:
            combo.setLayer(layer)
        self._guess(combo.currentLayer(), date_edit)
        if date is not None:
            date_edit.setDate(QDate(date.year, date.month, date.day))
        return row

    @staticmethod
    def _guess(layer: Optional[QgsMapLayer], edit: QDateEdit) -> None:
        if layer is None:
            return
        guessed = guess_date(layer.name()) or guess_date(layer.source())
        if guessed is not None:
            edit.setDate(QDate(guessed.year, guessed.month, guessed.day))

    def remove_selected(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()}, reverse=True)
        if not rows and self.table.rowCount():
            rows = [self.table.rowCount() - 1]
        for row in rows:
            self.table.removeRow(row)

    def entries(self) -> List[Tuple[QgsRasterLayer, dt.date]]:
        out = []
        for row in range(self.table.rowCount()):
            layer = self.table.cellWidget(row, 0).currentLayer()
            if layer is None:
                continue
            qdate = self.table.cellWidget(row, 1).date()
            out.append((layer, dt.date(qdate.year(), qdate.month(), qdate.day())))
        return out
