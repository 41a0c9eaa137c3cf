"""Training loss curve drawn with QPainter (no plotting library needed)."""
from __future__ import annotations

from typing import List, Optional

from qgis.PyQt.QtCore import QPointF, QRectF, Qt
from qgis.PyQt.QtGui import QColor, QPainter, QPainterPath, QPen
from qgis.PyQt.QtWidgets import QSizePolicy, QWidget


class LossPlot(QWidget):
    """Line chart of loss per epoch (train, and validation when given)."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.train: List[float] = []
        self.val: List[float] = []
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

    def set_series(self, train: List[float], val: Optional[List[float]] = None) -> None:
        self.train = [float(v) for v in train or []]
        self.val = [float(v) for v in val or []]
        self.update()

    def append(self, value: float) -> None:
        self.train.append(float(value))
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt API)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        painter.fillRect(self.rect(), self.palette().base())
        plot = QRectF(self.rect()).adjusted(46, 12, -10, -22)
        painter.setPen(QPen(self.palette().text().color(), 1))
        painter.drawRect(plot)
        series = [s for s in (self.train, self.val) if s]
        if not series:
            painter.drawText(plot, Qt.AlignCenter, "Loss curve appears here during training")
            return
        values = [v for s in series for v in s]
        low, high = min(values), max(values)
        if high - low < 1e-12:
            high = low + 1.0
        count = max(len(s) for s in series)
        painter.drawText(QRectF(0, plot.top() - 7, 42, 16), Qt.AlignRight | Qt.AlignVCenter, f"{high:.3g}")
        painter.drawText(QRectF(0, plot.bottom() - 9, 42, 16), Qt.AlignRight | Qt.AlignVCenter, f"{low:.3g}")
        painter.drawText(QRectF(plot.left(), plot.bottom() + 4, plot.width(), 16), Qt.AlignCenter,
                         f"epoch (1–{count})")
        for data, color in ((self.train, QColor("#1f77b4")), (self.val, QColor("#ff7f0e"))):
            if not data:
                continue
            path = QPainterPath()
            for i, v in enumerate(data):
                x = plot.left() + (plot.width() * i / max(count - 1, 1))
                y = plot.bottom() - plot.height() * (v - low) / (high - low)
                (path.moveTo if i == 0 else path.lineTo)(QPointF(x, y))
            painter.setPen(QPen(color, 2))
            painter.drawPath(path)
        # Legend, top right, only for the series present.
        y = plot.top() + 4
        for data, color, label in ((self.train, QColor("#1f77b4"), "train loss"),
                                   (self.val, QColor("#ff7f0e"), "val. loss")):
            if data:
                painter.setPen(QPen(color, 2))
                painter.drawLine(QPointF(plot.right() - 128, y + 7), QPointF(plot.right() - 112, y + 7))
                painter.setPen(QPen(self.palette().text().color(), 1))
                painter.drawText(QRectF(plot.right() - 108, y, 106, 14), Qt.AlignLeft | Qt.AlignVCenter, label)
                y += 16
