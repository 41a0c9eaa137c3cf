"""OpenVINO prepared ahead by a low-priority background process: what it makes, when the backend asks for
it, and that no job waits for it."""
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from backend.inference import openvino_warmup, runtime
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
    warmer = openvino_warmup.BackgroundWarmer()
    assert warmer.request(pth, [64, 96], amp=False)
    assert warmer.wait(timeout=600), "the background preparation did not end"
    assert warmer.finished == [(pth.name, (64, 96), 0)]
    log = (warm_cache / "openvino" / "warmup.log").read_text()
    assert "nice 19" in log and ": lc_tiny.pth, tiles 64,96" in log
    assert "lc_tiny.pth tile 64: IR made and compiled (fp32, OpenVINO)" in log and "tile 96: IR made" in log
    assert runtime.openvino_ready(pth, 64, amp=False) == "exported" and runtime.openvino_ready(pth, 96, amp=False)
    assert not (warm_cache / "onnx").exists() or not any((warm_cache / "onnx").iterdir())  # export not kept
    assert list((warm_cache / "openvino").glob("*.blob"))  # OpenVINO's compiled-model cache, filled
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
    small = _tiles_for(runtime.OPENVINO_MIN_MEGAPIXELS["exported"] / 2)
    assert isinstance(runtime.make_predictor(model, device="cpu", tile_size=64, model_path=stand_in_model_file,
                                             expected_tiles=small), TorchPredictor)
    assert runtime.prepare_openvino_while_idle() == "weights.bin, tile 64, fp32, OpenVINO"  # one job is enough
    assert runtime.openvino_ready(stand_in_model_file, 64) == "compiled" and warmer.requests == []
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


def test_the_server_start_prepares_the_bundled_model_at_its_commonest_tiles(warm_cache, monkeypatch):
    import backend.inference.predictors
    from backend.pipelines.landcover import DEFAULT_MODEL
    from backend.server import __main__ as server_main

    warmer = RecordingWarmer()
    assert openvino_warmup.warm_default_model(warmer)
    assert warmer.requests == [(DEFAULT_MODEL, [640, 608, 576, 544], True)]
    with monkeypatch.context() as patched:
        patched.setattr(backend.inference.predictors, "resolve_device", lambda device="auto": "cuda")
        assert not openvino_warmup.warm_default_model(warmer)  # GPU jobs run PyTorch: nothing to prepare
    monkeypatch.setenv(openvino_warmup.SWITCH, "0")
    assert not openvino_warmup.warm_default_model(warmer) and len(warmer.requests) == 1

    called = threading.Event()
    monkeypatch.setattr(openvino_warmup, "warm_default_model", lambda: called.set())
    server_main._warm_up_in_background()  # what the server's main() calls once listening
    assert called.wait(10)


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
