"""The change pipeline runs an exported two-input (pre/post) .onnx change model with ONNX Runtime
and finds the same change as the .pth it was exported from (real LEVIR-CD pair, committed model)."""
import numpy as np
import pytest
import rasterio

from backend.errors import InputError
from backend.inference.predictors import OnnxRuntimePredictor
from backend.pipelines.change import ChangePredictor, run_change

from .conftest import CHANGE_MODEL


@pytest.fixture(scope="module")
def change_onnx(tmp_path_factory):
    from models.checkpoint import load_model_file
    from models.onnx_export import export_onnx

    model, meta = load_model_file(CHANGE_MODEL)
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "change_levir_tiny.onnx", tile_size=256, meta=meta)


def _read(result, role):
    path = next(o["path"] for o in result["outputs"] if o["role"] == role)
    with rasterio.open(path) as src:
        return src.read(1)


def test_change_onnx_model_matches_the_pth(data_dir, tmp_path, change_onnx, monkeypatch):
    from backend.pipelines import change as change_mod

    # the export is compared with the fp32 model (on CPUs with hardware bf16 the .pth would run in bf16)
    monkeypatch.setattr(change_mod, "cpu_has_native_bf16", lambda: False)
    name = "val_27_0000_0256"  # 256 x 256: one tile either way, so both runs compute the same thing
    levir = data_dir / "levir_cd"
    common = {"pre": str(levir / "A" / f"{name}.png"), "post": str(levir / "B" / f"{name}.png"),
              "output_dir": str(tmp_path), "device": "cpu", "vectorize": False}
    ref = run_change({**common, "name": "ref"})
    got = run_change({**common, "name": "onnx", "model": str(change_onnx)})
    assert got["metrics"]["model"] == str(change_onnx) and got["device"] == "cpu"
    ref_mask, onnx_mask = _read(ref, "change"), _read(got, "change")
    assert (ref_mask == 1).sum() > 100  # the committed model finds change on this pair
    assert (ref_mask == onnx_mask).mean() > 0.999
    diff = np.abs(_read(ref, "probability").astype(int) - _read(got, "probability").astype(int))
    assert diff.max() <= 1  # P(change) in percent


def test_change_predictor_wraps_an_onnx_predictor(change_onnx):
    base = OnnxRuntimePredictor(change_onnx, device="cpu")
    predictor = ChangePredictor(base, threshold=0.3)
    assert predictor.base is base and predictor.fixed_tile_size == 256 and predictor.device == "cpu"
    a, b = (np.random.default_rng(k).normal(size=(1, 3, 256, 256)).astype(np.float32) for k in (1, 2))
    probs = predictor([a, b])
    assert probs.shape == (1, 2, 256, 256) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_change_onnx_segmentation_model_is_refused(data_dir, tmp_path, exported_landcover):
    levir = data_dir / "levir_cd"
    with pytest.raises(InputError, match="'segmentation' model; the change step needs a 'change' model"):
        run_change({"pre": str(levir / "A" / "val_27_0000_0256.png"), "post": str(levir / "B" / "val_27_0000_0256.png"),
                    "model": str(exported_landcover["onnx"]), "output_dir": str(tmp_path)})
