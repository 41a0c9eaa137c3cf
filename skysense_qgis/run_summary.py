"""One line on how a finished job ran (size, time, speed, device, precision/runtime), for the job panel."""
from __future__ import annotations


def run_summary(result: dict) -> str:
    """E.g. "42.0 MP in 18.3 s (2.30 MP/s) on cpu, bf16, OpenVINO; 34 of 121 tiles had no data" (those are
    not computed); "" when the result does not say."""
    metrics = result.get("metrics") or {}
    megapixels, seconds = metrics.get("megapixels"), metrics.get("seconds")
    if not isinstance(megapixels, (int, float)) or not isinstance(seconds, (int, float)) or seconds <= 0:
        return ""
    where = ", ".join(str(w) for w in (result.get("device"), metrics.get("precision")) if w)
    line = f"{megapixels:.1f} MP in {seconds:.1f} s ({megapixels / seconds:.2f} MP/s)"
    if where:
        line += f" on {where}"
    empty, tiles = metrics.get("tiles_without_data"), metrics.get("tiles")
    if isinstance(empty, int) and isinstance(tiles, int) and empty > 0:
        line += f"; {empty} of {tiles} tiles had no data"
    return line
