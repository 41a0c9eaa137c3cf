"""OpenVINO runtime: same probabilities as PyTorch in fp32, bf16 close to them, chosen by "auto" for big CPU
jobs, clear errors when asked for and unusable, and usable on exported .onnx model files."""
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from backend.errors import InputError
from backend.inference import runtime
from backend.inference.openvino_predictor import OpenVinoPredictor, openvino_available
from backend.inference.predictors import OnnxRuntimePredictor, TorchPredictor
from backend.pipelines import landcover
from models.registry import create_model

from .test_engine_onnx_models import _params, scene  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(not openvino_available(), reason="openvino is in requirements/backend.txt")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("skysense_seg_tiny", num_classes=7).eval()


@pytest.fixture
def tiles():
    rng = np.random.default_rng(3)
    return rng.normal(size=(3, 3, 64, 64)).astype(np.float32)


def test_fp32_gives_pytorch_probabilities_for_every_batch_size(exported_landcover, tiles):
    from models.checkpoint import load_model_file

    net, _ = load_model_file(exported_landcover["pth"])
    reference = TorchPredictor(net.eval(), device="cpu")
    ov = OpenVinoPredictor(exported_landcover["onnx"], precision="fp32")
    assert ov.fixed_tile_size == 64 and ov.device == "cpu" and ov.precision == "fp32, OpenVINO"
    assert ov.preferred_batch_size == 2  # what the engine runs it with by default: a tile per stream
    first = ov([tiles[:2]])
    kept = first.copy()
    last = ov([tiles[2:]])  # a shorter batch: one stream, must not overwrite `first`
    np.testing.assert_allclose(first, np.asarray(reference([tiles[:2]])), atol=1e-4)
    np.testing.assert_allclose(last, np.asarray(reference([tiles[2:]])), atol=1e-4)
    np.testing.assert_array_equal(first, kept)
    assert first.shape == (2, 7, 64, 64) and last.shape == (1, 7, 64, 64) and first.dtype == np.float32
    np.testing.assert_allclose(first.sum(axis=1), 1.0, atol=1e-5)
    again = ov([tiles[:2]])  # a shape seen before: its compiled request again
    np.testing.assert_allclose(again, first, atol=1e-6)
    three = ov([tiles])  # more tiles than streams: two waves
    np.testing.assert_allclose(three, np.asarray(reference([tiles])), atol=1e-4)
    # one model compiled for one tile serves every batch, with an infer request per stream
    assert list(ov._requests) == [((1, 3, 64, 64),)] and len(ov._requests[((1, 3, 64, 64),)]) == 2
    single = OpenVinoPredictor(exported_landcover["onnx"], precision="fp32", streams=1)
    assert single.preferred_batch_size == 1 and single._config["PERFORMANCE_HINT"] == "LATENCY"
    np.testing.assert_allclose(single([tiles]), three, atol=1e-5)


def test_bf16_stays_close_to_fp32(exported_landcover, tiles):
    fp32 = OpenVinoPredictor(exported_landcover["onnx"], precision="fp32")([tiles])
    bf16_predictor = OpenVinoPredictor(exported_landcover["onnx"], precision="bf16")
    assert bf16_predictor.precision == "bf16, OpenVINO"
    bf16 = bf16_predictor([tiles])
    assert (bf16.argmax(1) == fp32.argmax(1)).mean() > 0.97
    assert np.abs(bf16 - fp32).max() < 0.15


def test_auto_picks_openvino_for_big_cpu_jobs(monkeypatch, tmp_path, model, tiles):
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))
    model_path = tmp_path / "weights.bin"
    model_path.write_bytes(b"stand-in for a model file: only its hash keys the cache")
    for native_bf16, expected in ((True, "bf16, OpenVINO"), (False, "fp32, OpenVINO")):
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native_bf16)
        big = runtime.make_predictor(model, device="cpu", tile_size=64, expected_tiles=10000, model_path=model_path)
        assert isinstance(big, OpenVinoPredictor) and big.precision == expected and big.fixed_tile_size == 64
    no_amp = runtime.make_predictor(model, device="cpu", tile_size=64, expected_tiles=10000, model_path=model_path,
                                    amp=False)
    assert no_amp.precision == "fp32, OpenVINO"
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1  # one export serves them all
    small = runtime.make_predictor(model, device="cpu", tile_size=64, expected_tiles=100, model_path=model_path)
    assert small is no_amp  # 0.4 MP, but the model compiled for its tile is held: nothing left to pay
    other_tile = runtime.make_predictor(model, device="cpu", tile_size=96, expected_tiles=50, model_path=model_path)
    assert isinstance(other_tile, TorchPredictor)  # 0.5 MP at a tile with no export: not worth one
    chosen = runtime.make_predictor(model, device="cpu", runtime="openvino", tile_size=64, expected_tiles=1)
    assert isinstance(chosen, OpenVinoPredictor)
    np.testing.assert_allclose(no_amp([tiles]), np.asarray(TorchPredictor(model, device="cpu")([tiles])), atol=1e-4)


def test_auto_falls_back_when_openvino_fails_and_explicit_requests_say_why(monkeypatch, tmp_path, model, caplog):
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)

    def broken(*args, **kwargs):
        raise RuntimeError("Exception from src/inference: unsupported operation")
    monkeypatch.setattr(runtime, "_openvino_predictor", broken)
    with caplog.at_level(logging.WARNING):
        fallback = runtime.make_predictor(model, device="cpu", tile_size=64, expected_tiles=10000)
    assert isinstance(fallback, OnnxRuntimePredictor)
    assert "OpenVINO unavailable for this model (Exception from src/inference" in caplog.text
    with pytest.raises(InputError, match="could not be run with OpenVINO: RuntimeError: Exception from src"):
        runtime.make_predictor(model, device="cpu", runtime="openvino", tile_size=64)
    monkeypatch.setattr(runtime, "resolve_device", lambda device: "cuda")
    with pytest.raises(InputError, match="runtime 'openvino' runs on the CPU"):
        runtime.make_predictor(model, device="cuda", runtime="openvino", tile_size=64)


def test_missing_openvino_is_named(monkeypatch, exported_landcover, tmp_path, model):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    assert not openvino_available()
    with pytest.raises(InputError, match="needs the openvino package"):
        OpenVinoPredictor(exported_landcover["onnx"])
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="could not be run with OpenVINO: runtime 'openvino' needs the openvino"):
        runtime.make_predictor(model, device="cpu", runtime="openvino", tile_size=64)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    auto = runtime.make_predictor(model, device="cpu", tile_size=64, expected_tiles=10000)
    assert isinstance(auto, TorchPredictor) and auto.precision == "bf16 mixed"


def test_landcover_job_runs_an_onnx_file_with_openvino(exported_landcover, scene, tmp_path):  # noqa: F811
    ref = landcover.run(_params(scene, exported_landcover["pth"], tmp_path, name="ref", runtime="torch"))
    got = landcover.run(_params(scene, exported_landcover["onnx"], tmp_path, name="ov", tile_size=None,
                                runtime="openvino"))
    assert got["metrics"]["runtime"] == "OpenVinoPredictor" and got["classes"] == ref["classes"]
    assert got["metrics"]["precision"].endswith("OpenVINO")
    with rasterio.open(tmp_path / "ref.tif") as a, rasterio.open(tmp_path / "ov.tif") as b:
        agreement = (a.read(1) == b.read(1)).mean()
    assert agreement > (0.999 if got["metrics"]["precision"].startswith("fp32") else 0.97), agreement
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not an onnx graph")
    with pytest.raises(InputError, match=r"junk\.onnx"):
        OpenVinoPredictor(junk)


@pytest.mark.parametrize("name, classes", [("skysense_change_tiny", 2), ("skysense_damage_tiny", 5)])
def test_two_input_models_give_pytorch_probabilities(tmp_path, name, classes):
    from models.onnx_export import export_onnx

    torch.manual_seed(1)
    net = create_model(name, num_classes=classes).eval()
    path = export_onnx(net, tmp_path / f"{name}.onnx", tile_size=64)
    ov = OpenVinoPredictor(path, precision="fp32")
    assert ov.input_names == ["pre", "post"]
    rng = np.random.default_rng(5)
    pre, post = (rng.normal(size=(2, 3, 64, 64)).astype(np.float32) for _ in range(2))
    expected = np.asarray(TorchPredictor(net, device="cpu")([pre, post]))
    np.testing.assert_allclose(ov([pre, post]), expected, atol=1e-4)
    swapped = np.asarray(TorchPredictor(net, device="cpu")([post, pre]))
    np.testing.assert_allclose(ov([post, pre]), swapped, atol=1e-4)  # inputs are fed by name, in order


def test_in_memory_models_leave_no_export_behind(monkeypatch, tmp_path, model, tiles):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the private export goes
    chosen = runtime.make_predictor(model, device="cpu", runtime="openvino", tile_size=64, amp=False)
    onnx_ort = runtime.make_predictor(model, device="cpu", runtime="onnx", tile_size=64)
    assert list(tmp_path.iterdir()) == []  # both runtimes read the file before it was removed
    reference = np.asarray(TorchPredictor(model, device="cpu")([tiles]))
    np.testing.assert_allclose(chosen([tiles]), reference, atol=1e-4)
    np.testing.assert_allclose(onnx_ort([tiles]), reference, atol=1e-4)


def test_consecutive_jobs_reuse_the_compiled_model(monkeypatch, tmp_path, model, tiles):
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    model_path = tmp_path / "weights.bin"
    model_path.write_bytes(b"stand-in for a model file")

    def job():
        return runtime.make_predictor(model, device="cpu", tile_size=64, expected_tiles=10000, model_path=model_path)
    first = job()
    first([tiles[:1]])
    second = job()
    assert second is first and len(second._requests) == 1  # same model file, tile and precision: compiled
    second([tiles[:1]])
    assert len(second._requests) == 1
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert job() is not first  # another precision: another predictor


def test_a_model_openvino_cannot_compile_falls_back_under_auto_and_is_named_otherwise(
        monkeypatch, tmp_path, exported_landcover, scene, caplog):  # noqa: F811
    import openvino

    def refuse(self, *args, **kwargs):
        raise RuntimeError("Exception from src/plugins/intel_cpu: unsupported operation Foo")
    monkeypatch.setattr(openvino.Core, "compile_model", refuse)
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))
    # this small scene counts as a big job, whatever is ready
    monkeypatch.setattr(runtime, "OPENVINO_MIN_MEGAPIXELS", dict.fromkeys(runtime.OPENVINO_MIN_MEGAPIXELS, 0.001))
    with caplog.at_level(logging.WARNING):
        auto = landcover.run(_params(scene, exported_landcover["pth"], tmp_path / "auto", name="auto"))
    assert "OpenVINO could not compile" in caplog.text and "continues with the fallback runtime" in caplog.text
    assert auto["metrics"]["runtime"] == "OpenVinoPredictor" and "OpenVINO" not in auto["metrics"]["precision"]
    ref = landcover.run(_params(scene, exported_landcover["pth"], tmp_path / "ref", name="ref", runtime="torch"))
    with rasterio.open(tmp_path / "auto" / "auto.tif") as a, rasterio.open(tmp_path / "ref" / "ref.tif") as b:
        assert (a.read(1) == b.read(1)).mean() > 0.97  # PyTorch ran it (bf16 where the CPU has it)
    with pytest.raises(InputError, match=r"OpenVINO could not compile lc_tiny\.onnx .*unsupported operation Foo"):
        landcover.run(_params(scene, exported_landcover["onnx"], tmp_path / "chosen", name="chosen", tile_size=None,
                              runtime="openvino"))
    assert not (tmp_path / "chosen").exists() or list((tmp_path / "chosen").iterdir()) == []


def test_the_engine_batches_as_the_predictor_prefers_unless_told(scene, tmp_path):  # noqa: F811
    from backend.inference.engine import EngineInput, run_inference
    from backend.inference.predictors import FlipTTA

    seen = []

    def stub(arrays):
        seen.append(arrays[0].shape[0])
        out = np.zeros((arrays[0].shape[0], 2) + arrays[0].shape[2:], np.float32)
        out[:, 0] = 1.0
        return out
    stub.device = "cpu"
    stub.preferred_batch_size = 3  # the CPU's automatic batch would be 2
    for predictor in (stub, FlipTTA(stub, flips=())):
        seen.clear()
        run_inference([EngineInput(scene)], predictor, tmp_path / "auto.tif", [1, 2], tile_size=64, overlap=16)
        assert max(seen) == 3, seen
    seen.clear()
    run_inference([EngineInput(scene)], stub, tmp_path / "told.tif", [1, 2], tile_size=64, overlap=16, batch_size=1)
    assert set(seen) == {1}


def test_auto_needs_less_work_for_openvino_the_more_of_its_start_up_is_ready(monkeypatch, tmp_path, model, tiles,
                                                                           stand_in_model_file):
    model_path = stand_in_model_file
    thresholds = runtime.OPENVINO_MIN_MEGAPIXELS
    assert thresholds["compiled"] < thresholds["exported"] < thresholds["nothing"]

    def job(megapixels):  # tiles of 64 px
        return runtime.make_predictor(model, device="cpu", tile_size=64, model_path=model_path,
                                      expected_tiles=int(megapixels * 1e6 / 64 ** 2) + 1)

    assert runtime.openvino_ready(model_path, 64) == "nothing"
    assert isinstance(job(thresholds["nothing"] * 0.9), TorchPredictor)
    assert not (tmp_path / "cache" / "onnx").exists()  # a job too small to repay it exports nothing

    chosen = runtime.make_predictor(model, device="cpu", runtime="openvino", tile_size=64, model_path=model_path)
    chosen([tiles[:1]])  # compiles, and OpenVINO caches the compiled model
    assert runtime.openvino_ready(model_path, 64) == "compiled"
    assert job(thresholds["exported"] * 0.5) is chosen  # the held model: nothing left to pay
    assert job(0.0) is chosen  # a one-tile job too (OpenVINO was the faster at every size measured)
    assert runtime.openvino_ready(model_path, 64, amp=False) == "compiled"  # no bf16 here: the same fp32 model

    monkeypatch.setattr(runtime, "_LAST_OPENVINO", {})  # e.g. after a restart: the export is still on disk
    assert runtime.openvino_ready(model_path, 64) == "exported"
    assert isinstance(job(thresholds["exported"] * 0.9), TorchPredictor)
    again = job(thresholds["exported"] * 1.1)
    assert isinstance(again, OpenVinoPredictor) and again is not chosen
    assert list((tmp_path / "cache" / "openvino").glob("*.blob"))  # compiled models kept for the next compile
    np.testing.assert_allclose(again([tiles[:1]]), chosen([tiles[:1]]), atol=1e-5)

    model_path.write_bytes(b"another model in the same file")  # a changed file is hashed again
    assert runtime.openvino_ready(model_path, 64) == "nothing"


def test_an_unusable_compiled_model_cache_only_costs_compile_time(exported_landcover, tmp_path, tiles, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING):
        predictor = OpenVinoPredictor(exported_landcover["onnx"], precision="fp32", cache_dir=blocker / "openvino")
    assert "OpenVINO model cache" in caplog.text and "compiling without it" in caplog.text
    reference = OpenVinoPredictor(exported_landcover["onnx"], precision="fp32")
    np.testing.assert_allclose(predictor([tiles]), reference([tiles]), atol=1e-6)


def test_a_tile_that_fails_to_start_leaves_no_stream_running(exported_landcover, tiles):
    """A batch's tiles start side by side: when one fails, the others are waited for before the error goes
    up, so no infer request is left running (it would refuse the next batch as busy)."""
    ov = OpenVinoPredictor(exported_landcover["onnx"], precision="fp32")
    good = ov([tiles[:2]])
    shape = ((1, 3, 64, 64),)
    real = ov._requests[shape]

    class Refusing:
        def start_async(self, feeds):
            raise RuntimeError("refused to start")

        def wait(self):
            pass

    ov._requests[shape] = [real[0], Refusing()]
    with pytest.raises(RuntimeError, match="refused to start"):
        ov([tiles[:2]])
    assert real[0].wait_for(0)  # the first tile, started before the failure, has finished
    ov._requests[shape] = real
    np.testing.assert_allclose(ov([tiles[:2]]), good, atol=1e-6)


def test_a_repeated_job_that_found_openvino_unready_has_it_prepared_while_idle_for_the_next(
        monkeypatch, tmp_path, model, tiles, caplog, stand_in_model_file):
    import openvino

    monkeypatch.setattr(runtime, "_WANTED", {})
    monkeypatch.setattr(runtime, "_PREVIOUS_CPU_JOB", {})
    model_path = stand_in_model_file
    other_path = tmp_path / "other.bin"
    other_path.write_bytes(b"another model file")
    small = runtime.OPENVINO_MIN_MEGAPIXELS["exported"] * 0.5  # too small to repay an export or a compile

    def job(path=model_path, tile=64, megapixels=small):
        return runtime.make_predictor(model, device="cpu", tile_size=tile, model_path=path,
                                      expected_tiles=int(megapixels * 1e6 / tile ** 2) + 1)

    assert isinstance(job(), TorchPredictor)
    assert runtime.prepare_openvino_while_idle() is None  # one job is no batch: nothing to prepare
    assert isinstance(job(tile=96), TorchPredictor)  # another size, so another fitted tile
    assert isinstance(job(path=other_path, tile=96), TorchPredictor)  # another model
    assert isinstance(job(path=None, tile=96), TorchPredictor)
    assert isinstance(job(path=None, tile=96), TorchPredictor)  # in-memory models have no lasting export
    assert runtime.prepare_openvino_while_idle() is None
    assert not (tmp_path / "cache" / "onnx").exists()

    assert isinstance(job(), TorchPredictor)
    assert isinstance(job(), TorchPredictor)  # the same model and tile twice in a row: a batch run...
    prepared = runtime.prepare_openvino_while_idle()  # ...so the idle server prepares OpenVINO
    assert prepared == "weights.bin, tile 64, fp32, OpenVINO"
    assert runtime.openvino_ready(model_path, 64) == "compiled"
    assert runtime.prepare_openvino_while_idle() is None  # once

    compiles = []
    real_compile = openvino.Core.compile_model
    monkeypatch.setattr(openvino.Core, "compile_model",
                        lambda self, *a, **k: compiles.append(a) or real_compile(self, *a, **k))
    chosen = job()
    assert isinstance(chosen, OpenVinoPredictor)
    out = chosen([tiles[:2]])
    assert compiles == []  # the job's tile shape was compiled while idle
    np.testing.assert_allclose(out, np.asarray(TorchPredictor(model, device="cpu")([tiles[:2]])), atol=1e-4)
    assert runtime.prepare_openvino_while_idle() is None  # it ran OpenVINO: nothing wanted

    # after a restart the export is cached; a compile that fails while idle leaves nothing half-held
    monkeypatch.setattr(runtime, "_LAST_OPENVINO", {})
    assert isinstance(job(), TorchPredictor)

    def refuse(self, *args, **kwargs):
        raise RuntimeError("Exception from src/plugins/intel_cpu: unsupported operation Foo")
    monkeypatch.setattr(openvino.Core, "compile_model", refuse)
    with caplog.at_level(logging.WARNING):
        assert runtime.prepare_openvino_while_idle() is None
    assert "could not prepare OpenVINO for weights.bin at tile 64" in caplog.text
    assert runtime.openvino_ready(model_path, 64) == "exported"
    assert isinstance(job(), TorchPredictor)


def test_a_batch_of_default_jobs_through_the_job_queue_runs_openvino_from_the_third(
        monkeypatch, tmp_path, exported_landcover, scene):  # noqa: F811
    from backend.server.jobs import JobManager

    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "_LAST_OPENVINO", {})
    monkeypatch.setattr(runtime, "_WANTED", {})
    monkeypatch.setattr(runtime, "_PREVIOUS_CPU_JOB", {})
    import models.checkpoint
    builds = []
    real_load = models.checkpoint.load_model_file
    monkeypatch.setattr(models.checkpoint, "load_model_file", lambda *a, **k: builds.append(a) or real_load(*a, **k))
    manager = JobManager()
    try:
        results, built = [], []
        for k in range(4):
            job = manager.submit("landcover", _params(scene, exported_landcover["pth"], tmp_path / f"job{k}",
                                                       name=f"job{k}", batch_size=0))
            info = manager.wait(job.id, 120)
            assert info["state"] == "done", info
            results.append(info["result"]["metrics"])
            built.append(len(builds))
            if k == 1:  # a second job like the first: the worker prepares OpenVINO once the queue is empty
                end = time.monotonic() + 120
                while runtime.openvino_ready(exported_landcover["pth"], 64) != "compiled":
                    assert time.monotonic() < end, "OpenVINO was not prepared while idle"
                    time.sleep(0.05)
    finally:
        manager.close(timeout=60)
    runtimes = [m["runtime"] for m in results]
    assert runtimes == ["TorchPredictor"] * 2 + ["OpenVinoPredictor"] * 2, runtimes
    # the PyTorch jobs built the model (the preparation exported the second job's), and the jobs that ran
    # the held compiled model never built it
    assert built == [1, 2, 2, 2], built
    assert "OpenVINO" in results[2]["precision"] and "OpenVINO" not in results[1]["precision"]
    with rasterio.open(tmp_path / "job0" / "job0.tif") as a, rasterio.open(tmp_path / "job2" / "job2.tif") as b:
        assert (a.read(1) == b.read(1)).mean() > 0.97


def test_a_restarted_backend_compiles_the_cached_ir_straight_from_its_file(monkeypatch, tmp_path, model, tiles,
                                                                           stand_in_model_file):
    import openvino

    import models.onnx_export

    model_path = stand_in_model_file
    first = runtime.make_predictor(model, device="cpu", runtime="openvino", tile_size=64, model_path=model_path)
    expected = first([tiles[:2]])
    irs = list((tmp_path / "cache" / "openvino" / "ir").iterdir())
    assert sorted(p.suffix for p in irs) == [".bin", ".xml"]  # the pair, no temporary files left
    np.testing.assert_allclose(expected, np.asarray(TorchPredictor(model, device="cpu")([tiles[:2]])), atol=1e-4)

    monkeypatch.setattr(runtime, "_LAST_OPENVINO", {})  # a new backend process
    monkeypatch.setattr(models.onnx_export, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    reads, compiled_from = [], []
    real_read, real_compile = openvino.Core.read_model, openvino.Core.compile_model
    monkeypatch.setattr(openvino.Core, "read_model", lambda self, path, *a, **k: reads.append(Path(path).suffix)
                        or real_read(self, path, *a, **k))
    monkeypatch.setattr(openvino.Core, "compile_model", lambda self, what, *a, **k: compiled_from.append(
        what if isinstance(what, str) else "an in-memory model") or real_compile(self, what, *a, **k))
    assert runtime.openvino_ready(model_path, 64) == "exported"
    again = runtime.make_predictor(model, device="cpu", tile_size=64, model_path=model_path,
                                   expected_tiles=int(runtime.OPENVINO_MIN_MEGAPIXELS["exported"] * 1e6 / 64 ** 2) + 1)
    assert isinstance(again, OpenVinoPredictor) and again is not first
    np.testing.assert_allclose(again([tiles[:2]]), expected, atol=1e-6)
    # neither the ONNX graph nor the IR's is read: the compiled model loads from the file and OpenVINO's cache
    assert reads == []
    assert len(compiled_from) == 1 and compiled_from[0].endswith(".xml")  # compiled from the file (and the cache)
    again([tiles[2:]])  # a one-tile batch: the same compiled model
    assert len(compiled_from) == 1


def test_a_damaged_cached_ir_is_made_again_and_the_job_runs_openvino(model, tiles, stand_in_model_file, tmp_path,
                                                                     caplog):
    first = runtime.make_predictor(model, device="cpu", runtime="openvino", tile_size=64,
                                   model_path=stand_in_model_file)
    expected = first([tiles[:1]])
    (xml,) = (tmp_path / "cache" / "openvino" / "ir").glob("*.xml")
    xml.write_text("<net name='truncated'")  # e.g. a disk that failed under it
    runtime._LAST_OPENVINO.clear()  # a new backend process
    with caplog.at_level(logging.WARNING):
        tiles_needed = int(runtime.OPENVINO_MIN_MEGAPIXELS["exported"] * 1e6 / 64 ** 2) + 1
        again = runtime.make_predictor(model, device="cpu", tile_size=64, model_path=stand_in_model_file,
                                       expected_tiles=tiles_needed)
    assert f"cached OpenVINO model {xml.name} is unusable" in caplog.text and "making it again" in caplog.text
    assert isinstance(again, OpenVinoPredictor)
    np.testing.assert_allclose(again([tiles[:1]]), expected, atol=1e-6)
    assert "<net" in xml.read_text() and xml.read_text() != "<net name='truncated'"


def test_a_new_backend_compiles_ahead_the_model_and_tile_of_the_last_cpu_job_before_it(
        monkeypatch, tmp_path, model, tiles, caplog, stand_in_model_file):
    import openvino

    from backend.inference import last_job

    for name in ("_WANTED", "_PREVIOUS_CPU_JOB", "_LAST_OPENVINO"):
        monkeypatch.setattr(runtime, name, {})
    monkeypatch.setattr(last_job, "_WRITTEN", {})
    note = tmp_path / "cache" / last_job.FILE_NAME
    small = int(runtime.OPENVINO_MIN_MEGAPIXELS["exported"] * 0.5e6 / 64 ** 2)  # a job too small for an export

    def restart():
        for name in ("_WANTED", "_PREVIOUS_CPU_JOB", "_LAST_OPENVINO"):
            getattr(runtime, name).clear()

    assert runtime.want_last_sessions_job() is None  # no job ever ran
    job = runtime.make_predictor(model, device="cpu", tile_size=64, model_path=stand_in_model_file,
                                 expected_tiles=small)
    assert isinstance(job, TorchPredictor) and note.is_file()  # noted, whatever it ran with
    restart()
    assert runtime.want_last_sessions_job() is None  # its IR was never made: nothing to compile at the start
    runtime.make_predictor(model, device="cpu", runtime="openvino", tile_size=64, model_path=stand_in_model_file)
    restart()
    assert runtime.want_last_sessions_job() == "weights.bin, tile 64"
    assert runtime.openvino_ready(stand_in_model_file, 64) == "exported"
    assert runtime.prepare_openvino_while_idle() == "weights.bin, tile 64, fp32, OpenVINO"  # the idle worker
    assert runtime.openvino_ready(stand_in_model_file, 64) == "compiled"
    (held,) = runtime._LAST_OPENVINO.values()
    for request in held._requests[((1, 3, 64, 64),)]:  # every stream has run a tile (its buffers allocated)
        np.testing.assert_allclose(request.get_output_tensor(0).data.sum(axis=1), 1.0, atol=1e-4)

    compiles = []
    real_compile = openvino.Core.compile_model
    monkeypatch.setattr(openvino.Core, "compile_model",
                        lambda self, *a, **k: compiles.append(a) or real_compile(self, *a, **k))
    first = runtime.make_predictor(model, device="cpu", tile_size=64, model_path=stand_in_model_file,
                                   expected_tiles=small)
    assert isinstance(first, OpenVinoPredictor)  # the new backend's first job, small as it is, runs OpenVINO...
    out = first([tiles[:2]])
    assert compiles == []  # ...compiled before it came
    np.testing.assert_allclose(out, np.asarray(TorchPredictor(model, device="cpu")([tiles[:2]])), atol=1e-4)
    assert runtime.want_last_sessions_job() is None  # once a job has run, it says what it wants itself

    restart()
    monkeypatch.setattr(runtime, "resolve_device", lambda device="auto": "cuda")
    assert runtime.want_last_sessions_job() is None  # jobs would run on the GPU
    monkeypatch.setattr(runtime, "resolve_device", lambda device="auto": "cpu")
    note.write_text(note.read_text().replace('"tile_size": 64', '"tile_size": 96'))
    assert runtime.want_last_sessions_job() is None  # a tile whose IR is not cached: left to its job
    note.write_text("{half a no")
    with caplog.at_level(logging.WARNING):
        assert runtime.want_last_sessions_job() is None
    assert "ignoring the last job's note" in caplog.text and not runtime._WANTED
