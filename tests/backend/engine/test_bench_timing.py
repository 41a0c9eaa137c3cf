"""Benchmark timing: runs are interleaved, the best time of each is kept, busy spells are retaken."""
from benchmarks import timing


def test_best_of_each_interleaves_the_runs_and_keeps_each_best(monkeypatch):
    calls, times = [], iter([5.0, 3.0, 4.0, 1.0, 6.0, 2.0])

    def fake_timed(run):
        run()
        return next(times)

    monkeypatch.setattr(timing, "timed", fake_timed)
    best = timing.best_of_each({"loop": lambda: calls.append("loop"), "engine": lambda: calls.append("engine")}, 3)
    assert calls == ["loop", "engine"] * 3  # round-robin, not all loops then all engines
    assert best == {"loop": 4.0, "engine": 1.0}


def test_a_run_measured_while_others_load_the_cpus_is_taken_again(monkeypatch):
    readings = iter([(9.0, 0.5), (2.0, 0.01)])  # (wall seconds, others' CPU share)
    monkeypatch.setattr(timing, "others_busy", lambda run: next(readings))
    monkeypatch.setattr(timing.time, "sleep", lambda s: None)
    assert timing.timed(lambda: None) == 2.0


def test_others_busy_reports_the_wall_time_of_the_run():
    import time
    wall, others = timing.others_busy(lambda: time.sleep(0.05))
    assert 0.04 < wall < 1.0 and 0.0 <= others <= 1.0
