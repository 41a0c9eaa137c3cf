"""Class palettes: the shipped JSON palettes and generated colours for user-defined classes."""
from __future__ import annotations

import colorsys
import json
from pathlib import Path

PALETTE_DIR = Path(__file__).resolve().parents[2] / "resources" / "palettes"


def load_palette(name: str) -> dict:
    """resources/palettes/<name>.json as {"name", "nodata", "classes": [{"value", "name", "color"}]}."""
    path = PALETTE_DIR / f"{name}.json"
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def generated_colors(count: int) -> list[str]:
    """Distinct, saturated hex colours spaced around the hue circle (golden-ratio steps)."""
    colors = []
    hue = 0.11
    for _ in range(count):
        red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, 0.75, 0.92)
        colors.append("#{:02x}{:02x}{:02x}".format(round(red * 255), round(green * 255), round(blue * 255)))
        hue += 0.618033988749895
    return colors


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)
