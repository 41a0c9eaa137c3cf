"""runtime "compile": torch.compile'd PyTorch predictor, its batch padding, kernel cache and fallback."""
import logging

import numpy as np
import pytest
import torch

from backend.errors import InputError
from backend.inference import predictors, runtime
from backend.inference.predictors import TorchPredictor


def _small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 5, 1)).eval()


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A fresh SkySense cache and no TORCHINDUCTOR_CACHE_DIR (restored after the test)."""
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "placeholder")  # so that monkeypatch restores the original
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    return tmp_path / "cache"


def test_compiled_predictor_matches_eager_with_one_graph_for_short_batches(private_cache, monkeypatch):
    import torch._dynamo
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    torch._dynamo.reset()
    # torch wrote its default folder into the variable when it first looked: still ours to choose
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    torch._dynamo.utils.counters.clear()
    net = _small_net()
    eager = TorchPredictor(net, device="cpu")
    compiled = TorchPredictor(net, device="cpu", compile=True)
    assert "compiling the model first" in compiled.startup_note  # the job's progress says why batch 1 is slow
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    out = compiled([x])
    assert compiled.startup_note is None and eager.startup_note is None
    assert compiled.compiled and compiled.precision == "fp32, compiled"
    np.testing.assert_allclose(out, eager([x]), atol=1e-5)
    last = compiled([x[:3]])  # the job's last, shorter batch: padded, not recompiled
    assert last.shape == (3, 5, 32, 32)
    np.testing.assert_allclose(last, eager([x[:3]]), atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    # the kernels went to the SkySense cache, where the next job finds them
    assert any((private_cache / "inductor").rglob("*")), "no compiled kernels in the SkySense cache"


def test_a_kernel_cache_chosen_by_the_user_is_kept(private_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    predictors.compile_module(_small_net())
    assert predictors.os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_compile_failure_falls_back_to_the_uncompiled_model(monkeypatch, caplog):
    def broken_compile(module, **kwargs):
        def fails(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    net = _small_net()
    predictor = TorchPredictor(net, device="cpu", compile=True)
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger=predictors.__name__):
        out = predictor([x])
    assert not predictor.compiled and predictor.precision == "fp32"
    assert "no working C++ compiler" in caplog.text
    np.testing.assert_allclose(out, TorchPredictor(net, device="cpu")([x]), atol=1e-6)
    predictor([x])  # later batches run uncompiled without trying again
    assert caplog.text.count("torch.compile failed") == 1


def test_make_predictor_compile_runtime(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    fast = runtime.make_predictor(_small_net(), device="cpu", runtime="compile")
    assert fast.compiled and fast.amp_dtype == torch.bfloat16  # auto's precision, compiled
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    plain = runtime.make_predictor(_small_net(), device="cpu", runtime="compile")
    assert plain.compiled and plain.amp_dtype is None
    with pytest.raises(InputError, match="'compile'"):
        runtime.make_predictor(_small_net(), runtime="tensorrt")


def test_schema_and_cli_accept_the_compile_runtime():
    from backend.server.schemas import LandcoverParams

    assert LandcoverParams(hr=[{"path": "x.tif"}], output_dir="out", runtime="compile").runtime == "compile"
    with pytest.raises(Exception, match="runtime"):
        LandcoverParams(hr=[{"path": "x.tif"}], output_dir="out", runtime="jit")


def test_plugin_offers_exactly_the_backend_runtimes():
    """The plugin (which cannot import the backend) lists the runtimes itself: keep both lists equal."""
    import ast
    import typing
    from pathlib import Path

    from backend.server.schemas import LandcoverParams

    source = Path(__file__).resolve().parents[3] / "skysense_qgis" / "job_params.py"
    tree = ast.parse(source.read_text())
    (plugin_runtimes,) = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                          and any(getattr(t, "id", None) == "RUNTIMES" for t in node.targets)]
    assert plugin_runtimes == runtime.RUNTIMES
    assert typing.get_args(LandcoverParams.model_fields["runtime"].annotation) == runtime.RUNTIMES


def test_engine_with_a_compiled_predictor_writes_the_eager_labels_and_says_it_compiles(private_cache, tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    from backend.inference.engine import EngineInput, run_inference
    from backend.progress import Progress

    image = tmp_path / "img.tif"
    pixels = np.random.default_rng(2).integers(0, 255, (3, 200, 232), dtype=np.uint8)
    with rasterio.open(image, "w", driver="GTiff", width=232, height=200, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4000000, 1, 1)) as dst:
        dst.write(pixels)
    classes = [1, 2, 3, 4, 5]
    messages = []

    def run(predictor, out):
        return run_inference([EngineInput(image, mean=[128.0] * 3, std=[64.0] * 3)], predictor, tmp_path / out,
                             classes, tile_size=96, overlap=16, batch_size=3,
                             progress=Progress(lambda fraction, message: messages.append(message)))

    compiled = TorchPredictor(_small_net(), device="cpu", compile=True)
    result = run(compiled, "compiled.tif")
    assert result.tiles % 3 != 0  # the last batch is short: padded, then cut back
    assert compiled.compiled
    assert "compiling the model first" in messages[0] and "fp32, compiled" in messages[0]
    run(TorchPredictor(_small_net(), device="cpu"), "eager.tif")
    with rasterio.open(tmp_path / "compiled.tif") as a, rasterio.open(tmp_path / "eager.tif") as b:
        assert (a.read(1) == b.read(1)).mean() > 0.999
