"""Change detection pipeline on real LEVIR-CD and Joplin imagery with the committed model."""
import threading

import fiona
import numpy as np
import pytest
import rasterio
import torch

from backend.errors import CancelledError, InputError
from backend.pipelines.change import run_change
from backend.progress import Progress

from .conftest import CHANGE_MODEL

# ~250 x 200 m inside the overlap of pre tile_337-9136 (EPSG:26915) and post tile_31500-5137 (EPSG:4326).
JOPLIN_AOI = {"geometry": {"type": "Polygon", "coordinates": [[
    [-94.4985, 37.0715], [-94.4957, 37.0715], [-94.4957, 37.0733], [-94.4985, 37.0733], [-94.4985, 37.0715]]]},
    "crs": "EPSG:4326"}


def _out(result, role):
    return next(o for o in result["outputs"] if o["role"] == role)


def test_levir_pair_matches_its_label(data_dir, tmp_path):
    name = "val_27_0000_0256"
    levir = data_dir / "levir_cd"
    result = run_change({"pre": str(levir / "A" / f"{name}.png"), "post": str(levir / "B" / f"{name}.png"),
                         "output_dir": str(tmp_path), "name": "levir"})
    with rasterio.open(_out(result, "change")["path"]) as src:
        mask = src.read(1)
    from PIL import Image
    truth = np.asarray(Image.open(levir / "label" / f"{name}.png").convert("L")) > 127
    assert set(np.unique(mask)) <= {0, 1}
    pred = mask == 1
    f1 = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert f1 > 0.6, f"held-out pair F1 {f1:.3f}"
    qml = open(_out(result, "change")["qml"]).read()
    assert 'color="#ff00ff"' in qml and 'alpha="0"' in qml  # change magenta, no change transparent
    with fiona.open(_out(result, "polygons")["path"]) as layer:
        assert len(layer) == result["metrics"]["polygons"] > 0
    assert result["metrics"]["megapixels"] == pytest.approx(256 * 256 / 1e6, abs=1e-4)
    assert result["metrics"]["seconds"] > 0
    # "auto" runs fp16 autocast on a CUDA GPU; on a CPU fp32, or bf16 where the CPU does it in hardware
    expected = ("fp16 mixed",) if torch.cuda.is_available() else ("fp32", "bf16 mixed")
    assert result["metrics"]["precision"].split(",")[0] in expected


def test_joplin_different_crs_with_aoi_from_to_and_min_area(data_dir, tmp_path, landcover_model_file):
    pre = str(data_dir / "joplin" / "pre" / "tile_337-9136.tif")
    post = str(data_dir / "joplin" / "post" / "tile_31500-5137.tif")
    result = run_change({"pre": pre, "post": post, "aoi": JOPLIN_AOI, "output_dir": str(tmp_path),
                         "landcover_model": str(landcover_model_file), "min_area": 10})
    with rasterio.open(_out(result, "change")["path"]) as mask_src, rasterio.open(pre) as pre_src:
        assert mask_src.crs == pre_src.crs  # post reprojected onto the pre grid
        assert mask_src.res == pre_src.res
        assert 300 < mask_src.width < 500 and 250 < mask_src.height < 400  # AOI window, not the whole tile
        mask = mask_src.read(1)
    assert set(np.unique(mask)) <= {0, 1, 255}
    with rasterio.open(_out(result, "from_to")["path"]) as src:
        codes = src.read(1)
    assert np.array_equal(codes > 0, mask == 1)
    from_values, to_values = np.divmod(codes[codes > 0], 100)
    assert set(from_values) | set(to_values) <= set(range(1, 8))
    table = result["metrics"]["from_to"]
    assert sum(r["pixels"] for r in table) == int((mask == 1).sum())
    with fiona.open(_out(result, "polygons")["path"]) as layer:
        assert layer.crs_wkt and "26915" in rasterio.crs.CRS.from_wkt(layer.crs_wkt).to_string()
        records = [f.properties for f in layer]
    assert records and all(r["area_m2"] >= 10 for r in records)
    assert all(r["from_to"] == f"{r['from_class']} -> {r['to_class']}" for r in records)
    assert open(_out(result, "from_to_table")["path"]).readline().startswith("code,from_class,to_class")


def test_bad_inputs_are_clear_errors(data_dir, tmp_path, landcover_model_file):
    joplin = data_dir / "joplin"
    pre, post = str(joplin / "pre" / "tile_1361-9136.tif"), str(joplin / "post" / "tile_31500-6161.tif")
    with pytest.raises(InputError, match="do not overlap"):
        run_change({"pre": pre, "post": post, "output_dir": str(tmp_path)})
    far_aoi = dict(JOPLIN_AOI, geometry={"type": "Polygon", "coordinates": [[[10, 10], [11, 10], [11, 11], [10, 10]]]})
    with pytest.raises(InputError, match="AOI does not overlap"):
        run_change({"pre": str(joplin / "pre" / "tile_337-9136.tif"), "post": str(joplin / "post" / "tile_31500-5137.tif"),
                    "aoi": far_aoi, "output_dir": str(tmp_path)})
    text = tmp_path / "pre.tif"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a readable raster"):
        run_change({"pre": str(text), "post": post, "output_dir": str(tmp_path)})
    with pytest.raises(InputError, match="'segmentation' model; the change step needs a 'change' model"):
        run_change({"pre": str(joplin / "pre" / "tile_337-9136.tif"), "post": str(joplin / "post" / "tile_31500-5137.tif"),
                    "model": str(landcover_model_file), "output_dir": str(tmp_path)})
    with pytest.raises(InputError, match="missing parameter 'post'"):
        run_change({"pre": pre, "output_dir": str(tmp_path)})


def test_cancel_leaves_no_output(data_dir, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        run_change({"pre": str(data_dir / "joplin" / "pre" / "tile_337-9136.tif"),
                    "post": str(data_dir / "joplin" / "post" / "tile_31500-5137.tif"), "aoi": JOPLIN_AOI,
                    "output_dir": str(tmp_path / "out")}, Progress(cancel_event=cancel))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_committed_model_metadata_holds_heldout_metrics():
    from models.checkpoint import read_model_meta

    meta = read_model_meta(CHANGE_MODEL)
    held = meta["metrics"]["levir_heldout"]
    assert meta["task"] == "change" and set(held) >= {"f1", "iou", "precision", "recall", "pairs"}
    assert CHANGE_MODEL.stat().st_size < 10e6


def test_evaluate_levir_reproduces_the_stored_heldout_metrics(data_dir):
    from backend.trainers.change import evaluate_levir
    from models.checkpoint import read_model_meta

    stored = read_model_meta(CHANGE_MODEL)["metrics"]["levir_heldout"]
    metrics = evaluate_levir(data_dir)
    assert metrics["pairs"] == stored["pairs"]
    for key in ("f1", "iou", "precision", "recall"):
        assert metrics[key] == pytest.approx(stored[key], abs=0.01), key
    assert metrics["f1"] > 0.4 and metrics["iou"] > 0.25


def test_tiles_of_one_date_must_share_crs(data_dir, tmp_path):
    joplin = data_dir / "joplin"
    mixed = [str(joplin / "pre" / "tile_337-9136.tif"), str(joplin / "post" / "tile_31500-5137.tif")]
    with pytest.raises(InputError, match="must share CRS"):
        run_change({"pre": mixed, "post": mixed[1], "output_dir": str(tmp_path)})


def test_mosaic_of_tiles_equals_the_tiles(data_dir, tmp_path):
    from pathlib import Path

    from rasterio.windows import from_bounds

    from backend.pipelines.change import mosaic_vrt

    tiles = sorted(str(p) for p in (data_dir / "joplin" / "pre").glob("*.tif"))
    vrt = mosaic_vrt(tiles, Path(tmp_path) / "pre.vrt", "pre")
    with rasterio.open(vrt) as mosaic:
        assert (mosaic.width, mosaic.height) == (2048, 2048)
        for tile in tiles:
            with rasterio.open(tile) as src:
                window = from_bounds(*src.bounds, transform=mosaic.transform).round_offsets().round_lengths()
                assert np.array_equal(mosaic.read(window=window), src.read())


def test_an_image_against_itself_shows_no_change(data_dir, tmp_path):
    image = str(data_dir / "levir_cd" / "B" / "test_2_0000_0000.png")
    result = run_change({"pre": image, "post": image, "output_dir": str(tmp_path), "vectorize": False})
    with rasterio.open(_out(result, "change")["path"]) as src:
        assert (src.read(1) == 1).mean() < 0.01


def test_threshold_moves_the_decision_consistently(data_dir, tmp_path):
    levir = data_dir / "levir_cd"
    name = "test_7_0256_0512"
    counts, probs = {}, {}
    for threshold in (0.2, 0.5, 0.8):
        result = run_change({"pre": str(levir / "A" / f"{name}.png"), "post": str(levir / "B" / f"{name}.png"),
                             "output_dir": str(tmp_path / str(threshold)), "threshold": threshold, "vectorize": False})
        with rasterio.open(_out(result, "change")["path"]) as src:
            counts[threshold] = int((src.read(1) == 1).sum())
        with rasterio.open(_out(result, "probability")["path"]) as src:
            probs[threshold] = src.read(1)
    assert counts[0.2] > counts[0.5] > counts[0.8] > 0
    # the written probability is the model's P(change) whatever the threshold: the mask is P >= threshold
    for threshold in (0.5, 0.8):
        with rasterio.open(tmp_path / str(threshold) / "change.tif") as src:
            mask = src.read(1) == 1
        assert np.abs(probs[threshold].astype(int) - probs[0.5]).max() <= 2
        assert probs[threshold][mask].min() >= 100 * threshold - 2
        assert probs[threshold][~mask].max() <= 100 * threshold + 2


@pytest.mark.parametrize("native_bf16", [True, False])
def test_change_runs_bf16_only_on_cpus_that_do_it_in_hardware(data_dir, tmp_path, monkeypatch, native_bf16):
    """Like land cover's runtime "auto": bf16 autocast where the CPU has it (same F1 on the held-out
    LEVIR pairs, faster), fp32 elsewhere (emulated bf16 would be slower). The precision reaches the job's
    progress messages, and the held-out pair still matches its label."""
    from backend.pipelines import change as change_mod

    monkeypatch.setattr(change_mod, "cpu_has_native_bf16", lambda: native_bf16)
    messages = []
    progress = Progress(callback=lambda fraction, message: messages.append(message))
    name = "val_27_0000_0256"
    levir = data_dir / "levir_cd"
    result = run_change({"pre": str(levir / "A" / f"{name}.png"), "post": str(levir / "B" / f"{name}.png"),
                         "output_dir": str(tmp_path), "name": "levir", "device": "cpu", "vectorize": False},
                        progress)
    expected = "bf16 mixed" if native_bf16 else "fp32"
    assert any(f"on cpu ({expected})" in m for m in messages), messages[:3]
    with rasterio.open(_out(result, "change")["path"]) as src:
        pred = src.read(1) == 1
    from PIL import Image
    truth = np.asarray(Image.open(levir / "label" / f"{name}.png").convert("L")) > 127
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.6


def test_big_cpu_change_jobs_run_with_openvino_like_land_cover(data_dir, tmp_path, monkeypatch):
    """Change jobs choose their runtime as land cover's "auto" does: OpenVINO from the job's size up (the
    threshold is lowered here so that a LEVIR pair counts as big), with the labels of the PyTorch path."""
    from backend.inference import openvino_predictor, runtime

    if not openvino_predictor.openvino_available():
        pytest.skip("openvino is in requirements/backend.txt")
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))
    name = "val_27_0000_0256"
    levir = data_dir / "levir_cd"
    params = {"pre": str(levir / "A" / f"{name}.png"), "post": str(levir / "B" / f"{name}.png"), "device": "cpu",
              "vectorize": False}
    run_change({**params, "output_dir": str(tmp_path / "torch"), "name": "levir"})
    # 256² x 2 orders = 0.13 MP: counts as a big job, whatever is ready
    monkeypatch.setattr(runtime, "OPENVINO_MIN_MEGAPIXELS", dict.fromkeys(runtime.OPENVINO_MIN_MEGAPIXELS, 0.1))
    messages = []
    result = run_change({**params, "output_dir": str(tmp_path / "ov"), "name": "levir"},
                        Progress(callback=lambda fraction, message: messages.append(message)))
    assert any("OpenVINO" in m for m in messages), messages[:3]
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    with rasterio.open(tmp_path / "torch" / "levir.tif") as a, rasterio.open(_out(result, "change")["path"]) as b:
        reference, got = a.read(1), b.read(1)
    assert (reference == got).mean() > 0.99
    from PIL import Image
    truth = np.asarray(Image.open(levir / "label" / f"{name}.png").convert("L")) > 127
    pred = got == 1
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.6
