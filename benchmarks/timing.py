"""Wall-clock timing on a shared machine: interleaved rounds, retaken while other processes are busy."""
from __future__ import annotations

import os
import time


def _cpu_counters():
    with open("/proc/stat") as fh:
        fields = [float(v) for v in fh.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]


def others_busy(run) -> tuple:
    """(wall seconds of run(), share of the CPUs that OTHER processes used meanwhile; 0 if unknown)."""
    try:
        total0, idle0 = _cpu_counters()
    except (OSError, ValueError, IndexError):
        total0 = None
    cpu0, start = time.process_time(), time.perf_counter()
    run()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    if total0 is None:
        return wall, 0.0
    total1, idle1 = _cpu_counters()
    busy = ((total1 - total0) - (idle1 - idle0)) / os.sysconf("SC_CLK_TCK")
    # /proc/stat counts in clock ticks (10 ms): over a short run on loaded CPUs the count can overshoot
    return wall, min(1.0, max(0.0, busy - cpu) / (wall * (os.cpu_count() or 1)))


def timed(run, retries: int = 2) -> float:
    """Wall seconds of run(), taken again (after a pause) while other processes used > 5 % of the CPUs."""
    for _ in range(retries):
        wall, others = others_busy(run)
        if others < 0.05:
            return wall
        time.sleep(3)
    return others_busy(run)[0]


def best_of_each(runs: dict, repeat: int) -> dict:
    """Best of `repeat` wall-clock times of each run, taken round-robin (a, b, c, a, b, c, ...) so that a
    spell of load hits every run alike, not just the runs measured during it; each time is retaken
    while other processes are busy (timed)."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            best[name] = min(best[name], timed(run))
    return best
