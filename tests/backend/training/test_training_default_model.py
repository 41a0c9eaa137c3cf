"""The committed default land-cover model: small, loads, maps, and its stored held-out figures are real."""
import numpy as np
import pytest
import torch

from backend.datasets.loveda import loveda_palette
from backend.trainers.train_defaults import DEFAULT_MODEL_PATH, HELDOUT_TILE, IMAGENET_NORMALIZATION


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
    assert meta["gsd"] == 0.3 and meta["tile_size"] % 32 == 0
    assert f"tile {HELDOUT_TILE}" in meta["metrics"]["heldout"]["dataset"]
    assert next(model.parameters()).dtype == torch.float32


def test_stored_heldout_figures_match_a_fresh_measurement(default_model, data_dir):
    from backend.datasets.loveda import read_loveda_tile
    from backend.datasets.scene import LabelledScene, values_to_indexes
    from backend.trainers.train_defaults import evaluate_scene

    model, meta = default_model
    image, mask = read_loveda_tile(data_dir, HELDOUT_TILE)
    scene = LabelledScene(image, values_to_indexes(mask, range(1, 8), nodata=0))
    names = [c["name"] for c in meta["classes"]]
    scores = evaluate_scene(model, scene, meta["normalization"]["hr"], names)
    stored = meta["metrics"]["heldout"]
    assert scores["pixels"] == stored["pixels"] == int((mask > 0).sum())
    # fp16 storage may flip a few pixels, nothing more
    assert scores["overall_accuracy"] == pytest.approx(stored["overall_accuracy"], abs=0.01)
    assert scores["miou"] == pytest.approx(stored["miou"], abs=0.01)
    assert np.array(stored["confusion_matrix"]).shape == (7, 7)
