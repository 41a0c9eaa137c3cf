"""Plugin icons (SVG files in icons/, a link to resources/icons in the repository)."""
from __future__ import annotations

import os

from qgis.PyQt.QtGui import QIcon

ICON_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "icons")


def icon(name: str) -> QIcon:
    return QIcon(os.path.join(ICON_DIR, name + ".svg"))
