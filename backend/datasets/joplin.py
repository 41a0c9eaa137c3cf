"""The Joplin (2011 tornado) sample: pre tiles (EPSG:26915), post tiles (EPSG:4326), footprints (CRS84).

No damage labels exist for it; it is used to exercise reprojection, mosaicking and the per-building
damage pipeline on real imagery.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

from backend.errors import InputError


@dataclass(frozen=True)
class JoplinSample:
    pre: List[str]
    post: List[str]
    buildings: str


def joplin_sample(data_dir: str | Path) -> JoplinSample:
    """Tile lists and footprint file under data_dir/joplin (or data_dir itself)."""
    root = Path(data_dir)
    if (root / "joplin").is_dir():
        root = root / "joplin"
    pre = sorted(str(p) for p in (root / "pre").glob("*.tif"))
    post = sorted(str(p) for p in (root / "post").glob("*.tif"))
    buildings = root / "buildings.geojson"
    if not pre or not post or not buildings.is_file():
        raise InputError(f"Joplin sample incomplete under {root}: expected pre/*.tif, post/*.tif and buildings.geojson")
    return JoplinSample(pre, post, str(buildings))
