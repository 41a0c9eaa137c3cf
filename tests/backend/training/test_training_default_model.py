"""The committed default land-cover model: small, loads, maps, and its stored held-out figures are real."""
import numpy as np
import pytest
import torch

from backend.datasets.loveda import loveda_palette
from backend.trainers.train_defaults import (DEFAULT_MODEL_PATH, IMAGENET_NORMALIZATION, INFERENCE_TILE, SPLIT_TEXT,
                                            TEST_COLS, TILES, VAL_ROWS, heldout_window, loveda_split, split_regions)


@pytest.fixture(scope="module")
def default_model():
    from models.checkpoint import load_model_file
    assert DEFAULT_MODEL_PATH.exists(), "run `make train-default`"
    return load_model_file(DEFAULT_MODEL_PATH)


def test_file_is_small_and_stores_fp16_weights():
    assert DEFAULT_MODEL_PATH.stat().st_size < 8_000_000
    payload = torch.load(DEFAULT_MODEL_PATH, map_location="cpu", weights_only=True)
    floats = [v for v in payload["state_dict"].values() if torch.is_floating_point(v)]
    assert floats and all(v.dtype == torch.float16 for v in floats)


def test_metadata_describes_the_model(default_model):
    model, meta = default_model
    assert meta["task"] == "segmentation" and meta["arch"]["name"] == "skysense_seg_tiny"
    assert meta["classes"] == loveda_palette()["classes"]
    assert meta["bands"] == {"hr": [1, 2, 3]}
    assert meta["normalization"]["hr"] == IMAGENET_NORMALIZATION
    # jobs run at the model's own tile unless told otherwise: the size measured best for it
    assert meta["gsd"] == 0.3 and meta["tile_size"] == INFERENCE_TILE == 640
    assert f"right-most {TEST_COLS} columns" in meta["metrics"]["heldout"]["dataset"]
    assert f"bottom {VAL_ROWS} rows" in meta["metrics"]["validation"]["dataset"]
    assert meta["trained_on"].startswith(SPLIT_TEXT)
    assert next(model.parameters()).dtype == torch.float32


def test_stored_heldout_figures_match_a_fresh_measurement(default_model, data_dir):
    from backend.datasets.loveda import read_loveda_tile
    from backend.trainers.train_defaults import evaluate_scenes

    model, meta = default_model
    _, _, heldout = loveda_split(data_dir)
    names = [c["name"] for c in meta["classes"]]
    scores = evaluate_scenes(model, heldout, meta["normalization"]["hr"], names)
    stored = meta["metrics"]["heldout"]
    labelled = 0
    for tile_id in TILES:
        _, mask = read_loveda_tile(data_dir, tile_id)
        labelled += int((mask[heldout_window(*mask.shape)] > 0).sum())
    assert scores["pixels"] == stored["pixels"] == labelled
    # fp16 storage may flip a few pixels, nothing more
    assert scores["overall_accuracy"] == pytest.approx(stored["overall_accuracy"], abs=0.01)
    assert scores["miou"] == pytest.approx(stored["miou"], abs=0.01)
    assert np.array(stored["confusion_matrix"]).shape == (7, 7)


@pytest.mark.parametrize("shape", [(1024, 1024), (700, 900)])
def test_split_regions_are_disjoint_and_cover_the_tile(shape):
    regions = split_regions(*shape)
    assert set(regions) == {"train", "val", "test"}
    cover = np.zeros(shape, dtype=np.int64)
    for rows, cols in regions.values():
        assert cover[rows, cols].size > 0
        cover[rows, cols] += 1
    assert (cover == 1).all()   # every pixel in exactly one region
    assert regions["test"] == heldout_window(*shape) == (slice(0, shape[0]), slice(shape[1] - TEST_COLS, shape[1]))
    assert regions["val"][0] == slice(shape[0] - VAL_ROWS, shape[0])


def test_loveda_split_uses_every_tile_once_per_region(data_dir):
    from backend.datasets.loveda import read_loveda_tile
    from backend.datasets.scene import values_to_indexes

    parts = dict(zip(("train", "val", "test"), loveda_split(data_dir)))
    for part, scenes in parts.items():
        assert [s.name for s in scenes] == [f"loveda_{t}_{part}" for t in TILES]
    for index, tile_id in enumerate(TILES):
        image, mask = read_loveda_tile(data_dir, tile_id)
        labels = values_to_indexes(mask, range(1, 8), nodata=0)
        assert sum(parts[p][index].labels.size for p in parts) == mask.size
        for part, (rows, cols) in split_regions(*mask.shape).items():
            np.testing.assert_array_equal(parts[part][index].labels, labels[rows, cols])
            np.testing.assert_array_equal(parts[part][index].image, image[:, rows, cols])
