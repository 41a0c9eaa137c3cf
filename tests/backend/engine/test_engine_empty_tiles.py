"""Tiles without a valid pixel (nodata, outside the AOI polygon) are not computed, and the map is the
one computing every tile would give, bit for bit."""
import numpy as np
import pytest
import rasterio
import torch

from backend.inference import engine
from backend.inference.engine import EngineInput, run_inference
from backend.inference.predictors import TorchPredictor

CLASSES = [{"value": v, "name": f"c{v}", "color": "#%02x0000" % (40 * v)} for v in (1, 2, 3, 4)]


class CountingPredictor(TorchPredictor):
    """Counts the tiles it is asked to compute."""

    def __init__(self, model):
        super().__init__(model, "cpu")
        self.tiles = 0

    def __call__(self, inputs):
        self.tiles += inputs[0].shape[0]
        return super().__call__(inputs)


def _model() -> torch.nn.Module:
    torch.manual_seed(1)  # 3x3 convolutions: a pixel's label depends on its neighbours, across tile borders
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 4, 3, padding=1))


def _collared(make_raster):
    """A 600x760 raster whose nodata (0) takes whole tiles: the first tile row's left part (so the first
    batch has nothing to compute), a block mid-raster, the right columns and the bottom rows, as a
    reprojected or drone scene's collar would."""
    rng = np.random.default_rng(7)
    base = rng.integers(1, 255, (3, 80, 100)).astype(np.float32)
    img = (np.kron(base, np.ones((1, 8, 8)))[:, :600, :760] * 0.8 + rng.integers(1, 50, (3, 600, 760)))
    img = np.clip(img, 1, 255).astype(np.uint8)
    img[:, :200, :330] = 0
    img[:, 250:420, 300:520] = 0
    img[:, :, 690:] = 0
    img[:, 560:, :] = 0
    return make_raster(img, nodata=0, name="collared.tif")


def _run(path, out, predictor, **kw):
    return run_inference([EngineInput(path, mean=[128.0] * 3, std=[64.0] * 3)], predictor, out, CLASSES,
                         tile_size=128, overlap=32, batch_size=3, confidence_path=out.with_name(out.stem + "_conf.tif"),
                         **kw)


def _read(result):
    with rasterio.open(result.path) as ds, rasterio.open(result.confidence_path) as cs:
        return ds.read(1), cs.read(1)


def _every_tile(valid, spans):
    return list(range(len(spans)))


@pytest.mark.parametrize("with_aoi", [False, True])
def test_tiles_without_data_are_skipped_and_the_map_is_unchanged(make_raster, tmp_path, monkeypatch, with_aoi):
    path = _collared(make_raster)
    kw = {}
    if with_aoi:
        with rasterio.open(path) as ds:
            t = ds.transform
        (x0, y0), (x1, y1), (x2, y2) = t @ (0, 0), t @ (760, 0), t @ (0, 600)
        kw["aoi"] = {"geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y1], [x2, y2], [x0, y0]]]},
                     "crs": "EPSG:32633"}
    skipping = CountingPredictor(_model())
    skipped = _run(path, tmp_path / "skip.tif", skipping, **kw)
    monkeypatch.setattr(engine, "_tiles_with_data", _every_tile)
    computing = CountingPredictor(_model())
    every = _run(path, tmp_path / "every.tif", computing, **kw)

    labels, conf = _read(skipped)
    every_labels, every_conf = _read(every)
    np.testing.assert_array_equal(labels, every_labels)
    np.testing.assert_array_equal(conf, every_conf)
    assert skipped.class_counts == every.class_counts and skipped.valid_pixels == every.valid_pixels
    assert len(np.unique(labels)) == 5  # four classes and nodata: the comparison is not trivial

    assert computing.tiles == every.tiles and every.skipped_tiles == 0
    assert skipping.tiles == skipped.tiles - skipped.skipped_tiles
    assert skipped.skipped_tiles >= (8 if with_aoi else 4)


def test_an_all_nodata_raster_computes_nothing_and_writes_nodata(make_raster, tmp_path):
    path = make_raster(np.zeros((3, 300, 400), np.uint8), nodata=0, name="empty.tif")
    predictor = CountingPredictor(_model())
    result = _run(path, tmp_path / "o.tif", predictor)
    labels, conf = _read(result)
    assert predictor.tiles == 0 and result.skipped_tiles == result.tiles > 0
    assert (labels == 0).all() and (conf == 255).all() and result.valid_pixels == 0


def test_a_pixel_only_skipped_tiles_cover_is_nodata_not_a_guess(make_raster, tmp_path, monkeypatch):
    """Validity is read per batch window; should a pixel read as valid where a tile covering it was
    judged empty (an AOI edge through pixel centres), it gets nodata rather than the label of all-zero
    scores."""
    rng = np.random.default_rng(3)
    path = make_raster(rng.integers(1, 255, (3, 300, 400), dtype=np.uint8), nodata=0, name="full.tif")

    def all_but_first_tile(valid, spans, state={"first": True}):
        kept = list(range(len(spans)))
        if state["first"]:
            state["first"] = False
            return kept[1:]
        return kept

    monkeypatch.setattr(engine, "_tiles_with_data", all_but_first_tile)
    result = _run(path, tmp_path / "o.tif", CountingPredictor(_model()))
    labels, conf = _read(result)
    # tile (0, 0) spans rows and columns 0..127; its neighbours start at 96 (stride 96)
    assert (labels[:96, :96] == 0).all() and (conf[:96, :96] == 255).all()
    assert (labels[:, 128:] != 0).all() and (labels[128:, :] != 0).all()
    assert result.skipped_tiles == 1 and result.valid_pixels == 300 * 400 - 96 * 96
