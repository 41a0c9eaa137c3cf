"""OpenVINO prepared ahead by a low-priority background process: what it makes, when the backend asks for
it, and that no job waits for it."""
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from backend.inference import engine_warmup, openvino_warmup, runtime
from backend.inference.openvino_predictor import OpenVinoPredictor, openvino_available
from backend.inference.predictors import TorchPredictor
from backend.io.tiling import fitted_tile_sizes, plan_tiles
from models.registry import create_model

pytestmark = pytest.mark.skipif(not openvino_available(), reason="openvino is in requirements/backend.txt")


class RecordingWarmer:
    def __init__(self):
        self.requests = []

    def request(self, model_path, tiles, amp=True):
        self.requests.append((model_path, list(tiles), amp))
        return True


@pytest.fixture
def warm_cache(monkeypatch, tmp_path):
    """Background preparation on, an empty cache in tmp_path/cache, no compiled model held, no wish left."""
    monkeypatch.setenv(openvino_warmup.SWITCH, "1")
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "_LAST_OPENVINO", {})
    monkeypatch.setattr(runtime, "_WANTED", {})
    monkeypatch.setattr(runtime, "_PREVIOUS_CPU_JOB", {})
    return tmp_path / "cache"


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("skysense_seg_tiny", num_classes=7).eval()


def _tiles_for(megapixels: float, tile: int = 64) -> int:
    return int(megapixels * 1e6 / tile ** 2) + 1


def test_fitted_tile_sizes_are_every_size_plan_tiles_fits_a_bigger_raster_to():
    sizes = fitted_tile_sizes(640, 64)
    assert sizes[0] == 640 and sizes == sorted(sizes, reverse=True) and all(s % 32 == 0 for s in sizes)
    chosen = {plan_tiles(h, w, 640, 64).tile for h in range(641, 9000, 97) for w in range(641, 9000, 89)}
    assert chosen <= set(sizes) and {640, 608, 576, 544} <= chosen
    assert fitted_tile_sizes(256, 32) == [256, 224, 192, 160, 128]


def test_the_background_child_makes_the_ir_at_low_priority_and_a_job_then_runs_it(
        warm_cache, exported_landcover, monkeypatch, model):
    import models.onnx_export

    pth = exported_landcover["pth"]
    stale = [warm_cache / "openvino" / "ir" / f"stale.{ext}" for ext in ("xml", "bin")]
    stale[0].parent.mkdir(parents=True)
    (warm_cache / "openvino" / "warmup.log").write_text("an old line\n" * 100_000)  # over 1 MB: started afresh
    for path in stale:
        path.write_bytes(b"an IR no job has used for long")
    monkeypatch.setenv("SKYSENSE_OPENVINO_CACHE_MB", "0")  # a budget nothing fits in, but what was just made
    warmer = openvino_warmup.BackgroundWarmer()
    assert warmer.request(pth, [64, 96], amp=False)
    assert warmer.wait(timeout=600), "the background preparation did not end"
    assert warmer.finished == [(pth.name, (64, 96), 0)]
    log = (warm_cache / "openvino" / "warmup.log").read_text()
    assert "nice 19" in log and ": lc_tiny.pth, tiles 64,96" in log and "an old line" not in log
    assert "lc_tiny.pth tile 64: IR made and compiled (fp32, OpenVINO)" in log and "tile 96: IR made" in log
    assert runtime.openvino_ready(pth, 64, amp=False) == "exported" and runtime.openvino_ready(pth, 96, amp=False)
    assert not (warm_cache / "onnx").exists() or not any((warm_cache / "onnx").iterdir())  # export not kept
    # OpenVINO's compiled-model cache was filled, then pruned to the budget with the stale IR; the new IRs stay
    assert "removed stale.xml" in log and "removed stale.bin" in log and ".blob (least recently used" in log
    assert not any(path.exists() for path in stale) and not list((warm_cache / "openvino").glob("*.blob"))
    assert not warmer.request(pth, [64, 96])  # every IR is cached: nothing to do

    monkeypatch.setattr(models.onnx_export, "export_onnx", lambda *a, **k: pytest.fail("exported in the job"))
    job = runtime.make_predictor(model, device="cpu", tile_size=64, model_path=pth, amp=False,
                                 expected_tiles=_tiles_for(runtime.OPENVINO_MIN_MEGAPIXELS["exported"]))
    assert isinstance(job, OpenVinoPredictor)
    from models.checkpoint import load_model_file
    net, _ = load_model_file(pth)
    tiles = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(job([tiles]), np.asarray(TorchPredictor(net.eval(), device="cpu")([tiles])), atol=1e-4)


def test_a_job_that_found_no_ir_hands_it_to_the_background_and_leaves_the_worker_free(
        warm_cache, monkeypatch, model, stand_in_model_file):
    warmer = RecordingWarmer()
    monkeypatch.setattr(openvino_warmup, "background_warmer", lambda: warmer)
    between = (runtime.OPENVINO_MIN_MEGAPIXELS["exported"] + runtime.OPENVINO_MIN_MEGAPIXELS["nothing"]) / 2

    def job(megapixels, tile=64):
        return runtime.make_predictor(model, device="cpu", tile_size=tile, model_path=stand_in_model_file,
                                      expected_tiles=_tiles_for(megapixels, tile))

    assert isinstance(job(between), TorchPredictor)  # too small to repay an export in the job itself
    start = time.perf_counter()
    assert runtime.prepare_openvino_while_idle() is None  # nothing made here: a next job does not wait
    assert time.perf_counter() - start < 1.0
    assert warmer.requests == [(stand_in_model_file, [64], True)]
    assert not (warm_cache / "onnx").exists() and not (warm_cache / "openvino").exists()

    assert isinstance(job(runtime.OPENVINO_MIN_MEGAPIXELS["exported"] / 2, tile=96), TorchPredictor)
    assert runtime.prepare_openvino_while_idle() is None
    assert len(warmer.requests) == 1  # a job too small for OpenVINO even with its IR cached asks nothing


def test_a_single_small_job_whose_ir_is_cached_has_it_compiled_while_idle(
        warm_cache, monkeypatch, model, stand_in_model_file):
    warmer = RecordingWarmer()
    monkeypatch.setattr(openvino_warmup, "background_warmer", lambda: warmer)
    made = runtime.make_predictor(model, device="cpu", runtime="openvino", tile_size=64,
                                  model_path=stand_in_model_file)
    tiles = np.random.default_rng(2).normal(size=(2, 3, 64, 64)).astype(np.float32)
    expected = made([tiles])
    runtime._LAST_OPENVINO.clear()  # a restarted backend: the IR is on disk, nothing compiled
    stale = warm_cache / "openvino" / "ir" / "stale.xml"
    stale.write_text("an IR no job has used for long")
    monkeypatch.setenv("SKYSENSE_OPENVINO_CACHE_MB", "0")  # the idle worker prunes too, never what it holds
    small = _tiles_for(runtime.OPENVINO_MIN_MEGAPIXELS["exported"] / 2)
    assert isinstance(runtime.make_predictor(model, device="cpu", tile_size=64, model_path=stand_in_model_file,
                                             expected_tiles=small), TorchPredictor)
    assert runtime.prepare_openvino_while_idle() == "weights.bin, tile 64, fp32, OpenVINO"  # one job is enough
    assert runtime.openvino_ready(stand_in_model_file, 64) == "compiled" and warmer.requests == []
    assert not stale.exists() and len(list(stale.parent.glob("*"))) == 2  # the held model's xml and bin
    again = runtime.make_predictor(model, device="cpu", tile_size=64, model_path=stand_in_model_file,
                                   expected_tiles=small)
    assert isinstance(again, OpenVinoPredictor)
    np.testing.assert_allclose(again([tiles]), expected, atol=1e-6)


def test_the_warmer_is_off_by_its_switch_and_for_missing_or_big_model_files(warm_cache, monkeypatch,
                                                                          stand_in_model_file, tmp_path):
    warmer = openvino_warmup.BackgroundWarmer()
    monkeypatch.setenv(openvino_warmup.SWITCH, "0")
    assert not openvino_warmup.warmup_enabled() and not warmer.request(stand_in_model_file, [64])
    monkeypatch.setenv(openvino_warmup.SWITCH, "1")
    assert not warmer.request(tmp_path / "missing.pth", [64])
    monkeypatch.setattr(openvino_warmup, "MAX_MODEL_BYTES", stand_in_model_file.stat().st_size - 1)
    assert not warmer.request(stand_in_model_file, [64])
    assert not warmer.busy() and warmer.finished == []


def test_closing_the_warmer_ends_its_running_child_and_drops_the_queue(warm_cache, monkeypatch, stand_in_model_file):
    warmer = openvino_warmup.BackgroundWarmer()
    monkeypatch.setattr(warmer, "_command", lambda *a: [sys.executable, "-c", "import time; time.sleep(120)"])
    assert warmer.request(stand_in_model_file, [64]) and warmer.request(stand_in_model_file, [96])
    assert warmer.request(stand_in_model_file, [64])  # already queued: not twice
    assert len(warmer._pending) == 2
    end = time.monotonic() + 30
    while warmer._child is None:
        assert time.monotonic() < end, "the child did not start"
        time.sleep(0.02)
    child = warmer._child
    start = time.monotonic()
    warmer.close()
    assert child.poll() is not None and time.monotonic() - start < 5
    assert warmer.wait(timeout=10) and not warmer.busy()
    assert [status for _, _, status in warmer.finished] == [child.returncode] and child.returncode != 0
    assert not warmer.request(stand_in_model_file, [128])  # a closed warmer takes nothing more


def test_the_server_start_prepares_the_bundled_models_at_their_commonest_tiles(warm_cache, monkeypatch):
    import backend.inference.predictors
    import backend.pipelines
    from backend.pipelines.change import DEFAULT_CHANGE_MODEL
    from backend.pipelines.landcover import DEFAULT_MODEL
    from backend.server import __main__ as server_main

    # the sizes prepared are those plan_tiles picks most often for rasters larger than the model's tile
    for path, _, overlap, sizes in openvino_warmup.bundled_models_ahead():
        tile = {DEFAULT_MODEL: 640, DEFAULT_CHANGE_MODEL: 256}[path]
        picked = [plan_tiles(n, n, tile, overlap).tile for n in range(tile + 1, 8193)]
        counts = sorted(((picked.count(t), t) for t in set(picked)), reverse=True)
        top = sorted((t for _, t in counts[:sizes]), reverse=True)
        assert fitted_tile_sizes(tile, overlap)[:sizes] == top
        assert sum(c for c, _ in counts[:sizes]) / len(picked) > 0.85
    warmer = RecordingWarmer()
    assert openvino_warmup.warm_bundled_models(warmer) == [DEFAULT_MODEL, DEFAULT_CHANGE_MODEL]
    assert warmer.requests == [(DEFAULT_MODEL, [640, 608, 576, 544], True), (DEFAULT_CHANGE_MODEL, [256, 224], True)]
    with monkeypatch.context() as patched:
        patched.setattr(backend.inference.predictors, "resolve_device", lambda device="auto": "cuda")
        assert openvino_warmup.warm_bundled_models(warmer) == []  # GPU jobs run PyTorch: nothing to prepare
    monkeypatch.setenv(openvino_warmup.SWITCH, "0")
    assert openvino_warmup.warm_bundled_models(warmer) == [] and len(warmer.requests) == 2

    called, loaded = threading.Event(), []

    def load(kind):  # then the main pipelines' modules are loaded, a failure left to that kind's jobs
        loaded.append(kind)
        if kind == "landcover":
            raise RuntimeError("a broken module")

    monkeypatch.setattr(openvino_warmup, "warm_bundled_models", lambda: called.set())
    monkeypatch.setattr(backend.pipelines, "get_runner", load)
    engine_runs = []
    monkeypatch.setattr(engine_warmup, "warm_up_engine", lambda: engine_runs.append(1) or 0.01)
    server_main._warm_up_in_background()  # what the server's main() calls once listening
    assert called.wait(10)
    deadline = time.monotonic() + 10
    while loaded != ["landcover", "change"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loaded == ["landcover", "change"]
    while not engine_runs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine_runs == [1]  # and the engine runs once on a tiny raster

    class Jobs:  # the server's JobManager: its idle worker compiles what an earlier backend's last job ran
        def __init__(self):
            self.asked = threading.Event()

        def prepare_while_idle(self):
            self.asked.set()

    for wanted in (None, "lc.pth, tile 576"):
        monkeypatch.setattr(runtime, "want_last_sessions_job", lambda: wanted)
        jobs, loaded[:] = Jobs(), []
        server_main._warm_up_in_background(jobs)
        deadline = time.monotonic() + 10
        while len(loaded) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert jobs.asked.wait(0.5 if wanted is None else 10) == (wanted is not None)


def test_the_child_command_line_fails_clearly_on_bad_tiles(warm_cache, stand_in_model_file):
    from tests.conftest import repo_env

    done = subprocess.run([sys.executable, "-m", "backend.inference.openvino_warmup", "--model",
                           str(stand_in_model_file), "--tiles", "64,big"], capture_output=True, text=True,
                          env=repo_env(), timeout=120)
    assert done.returncode == 2 and "--tiles must be integers separated by commas, got '64,big'" in done.stderr
    done = subprocess.run([sys.executable, "-m", "backend.inference.openvino_warmup", "--model",
                           str(stand_in_model_file), "--tiles", "64"], capture_output=True, text=True,
                          env=repo_env(), timeout=300)
    assert done.returncode == 1 and "failed for weights.bin: CheckpointError" in done.stdout


def test_the_cache_is_pruned_to_its_budget_least_recently_used_first_never_what_was_just_made(tmp_path, monkeypatch):
    import os

    folder = tmp_path / "openvino"
    (folder / "ir").mkdir(parents=True)

    def entry(name, size, used):
        paths = [folder / "ir" / f"{name}.xml", folder / "ir" / f"{name}.bin"] if "ir" in name else \
            [folder / f"{name}.blob"]
        for path in paths:
            path.write_bytes(b"x" * size)
            os.utime(path, (used, used))
        return paths

    old_ir = entry("ir_old", 100, 1000)
    kept_ir = entry("ir_kept", 100, 900)  # oldest of all, but just made for the job: never removed
    recent_ir = entry("ir_recent", 100, 3000)
    old_blob, new_blob = entry("111", 150, 1500), entry("222", 150, 3500)
    (folder / "warmup.log").write_text("not a cache entry")
    being_written = entry(".ir_tmp.123.tmp", 100, 10)  # oldest, but another process is about to rename it
    removed = openvino_warmup.prune_cache(folder, budget=600, keep=[kept_ir[0]])
    # 900 bytes held (an IR is two files of 100): the old IR and then the old blob go, which brings it to 550
    assert sorted(p.name for p in removed) == ["111.blob", "ir_old.bin", "ir_old.xml"]
    assert all(p.exists() for p in kept_ir + recent_ir + new_blob) and not any(p.exists() for p in old_ir + old_blob)
    assert (folder / "warmup.log").exists() and all(p.exists() for p in being_written)
    assert openvino_warmup.prune_cache(folder, budget=600) == []  # under budget: nothing more
    assert openvino_warmup.prune_cache(tmp_path / "none", budget=0) == []  # no cache yet

    monkeypatch.setenv("SKYSENSE_OPENVINO_CACHE_MB", "1.5")
    assert openvino_warmup.cache_budget_bytes() == int(1.5 * 2 ** 20)
    monkeypatch.setenv("SKYSENSE_OPENVINO_CACHE_MB", "lots")
    assert openvino_warmup.cache_budget_bytes() == 2048 * 2 ** 20


def test_a_job_using_a_cached_ir_marks_it_used_without_losing_the_held_model(warm_cache, model, stand_in_model_file):
    import os

    first = runtime.make_predictor(model, device="cpu", runtime="openvino", tile_size=64,
                                   model_path=stand_in_model_file)
    (xml,) = (warm_cache / "openvino" / "ir").glob("*.xml")
    os.utime(xml.with_suffix(".bin"), (1000, 1000))
    again = runtime.make_predictor(model, device="cpu", runtime="openvino", tile_size=64,
                                   model_path=stand_in_model_file)
    assert again is first  # the held model still matches its file
    assert xml.with_suffix(".bin").stat().st_mtime > 1000 + 3600


def test_the_child_ends_when_its_backend_is_killed_and_leaves_no_half_made_file(warm_cache, exported_landcover):
    import os
    import signal

    from tests.conftest import repo_env

    tiles = "64,96,128,160,192,224,256,288,320"  # long enough to be caught mid-way
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from backend.inference.openvino_warmup import BackgroundWarmer\n"
         "w = BackgroundWarmer()\n"
         f"assert w.request(sys.argv[1], [{tiles}], amp=False)\n"
         "while w._child is None: time.sleep(0.02)\n"
         "print(w._child.pid, flush=True)\n"
         "time.sleep(600)\n", str(exported_landcover["pth"])],
        stdout=subprocess.PIPE, text=True, env=repo_env())
    try:
        child = int(parent.stdout.readline())
        log = warm_cache / "openvino" / "warmup.log"
        end = time.monotonic() + 120
        while "tile 64:" not in (log.read_text() if log.exists() else ""):  # started, one tile made
            assert time.monotonic() < end and parent.poll() is None, "the background preparation did not start"
            time.sleep(0.05)
        parent.send_signal(signal.SIGKILL)  # the backend dies without closing anything
        parent.wait(10)

        def running():
            try:
                return "\nState:\tZ" not in open(f"/proc/{child}/status").read()  # a zombie has ended
            except FileNotFoundError:
                return False
        end = time.monotonic() + 60
        while running():
            assert time.monotonic() < end, "the background preparation outlived its backend"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()
    made = sorted(p.name for p in (warm_cache / "openvino" / "ir").iterdir())
    assert made and all(not name.startswith(".") for name in made), made  # no temporary file left
    assert len([n for n in made if n.endswith(".xml")]) < len(tiles.split(","))  # it stopped part-way
    assert all((warm_cache / "openvino" / "ir" / n).with_suffix(".bin").exists() for n in made if n.endswith(".xml"))
    assert os.environ.get("SKYSENSE_CACHE") == str(warm_cache)
