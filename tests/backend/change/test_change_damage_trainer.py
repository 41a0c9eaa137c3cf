"""DamageModel trainer on a tiny synthetic xBD-format folder (no xBD data ships here)."""
import json

import numpy as np
import pytest
from PIL import Image

from backend.errors import InputError
from backend.trainers.damage import train_damage, xview2_scores
from backend.trainers.damage_data import list_xbd_samples, rasterize_xbd_label

from .conftest import CHANGE_MODEL


def _make_xbd(root, n=3):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        pre = rng.integers(60, 120, (64, 64, 3), dtype=np.uint8)
        post = pre.copy()
        post[10:30, 10:30] = 230  # the destroyed building turns into bright debris
        Image.fromarray(pre).save(root / "images" / f"storm_{k:03d}_pre_disaster.png")
        Image.fromarray(post).save(root / "images" / f"storm_{k:03d}_post_disaster.png")
        features = [
            {"properties": {"feature_type": "building", "subtype": "destroyed", "uid": "a"},
             "wkt": "POLYGON ((10 10, 30 10, 30 30, 10 30, 10 10))"},
            {"properties": {"feature_type": "building", "subtype": "no-damage", "uid": "b"},
             "wkt": "POLYGON ((40 40, 56 40, 56 56, 40 56, 40 40))"},
            {"properties": {"feature_type": "building", "subtype": "un-classified", "uid": "c"},
             "wkt": "POLYGON ((40 5, 50 5, 50 15, 40 15, 40 5))"}]
        (root / "labels" / f"storm_{k:03d}_post_disaster.json").write_text(json.dumps({"features": {"xy": features}}))


def test_xbd_labels_rasterise_with_classes_and_ignore(tmp_path):
    _make_xbd(tmp_path)
    samples = list_xbd_samples(tmp_path)
    assert [s.name for s in samples] == ["storm_000", "storm_001", "storm_002"]
    mask = rasterize_xbd_label(samples[0].label, (64, 64))
    assert mask[20, 20] == 4 and mask[48, 48] == 1 and mask[10, 45] == 255 and mask[60, 5] == 0
    with pytest.raises(InputError, match="images/ and labels/"):
        list_xbd_samples(tmp_path / "images")


def test_xview2_scores():
    target = np.array([0, 0, 1, 1, 4, 4, 255])
    perfect = xview2_scores(target.copy(), target)
    assert perfect["localization_f1"] == 1.0
    wrong = xview2_scores(np.array([0, 0, 4, 4, 1, 1, 0]), target)
    assert wrong["localization_f1"] == 1.0 and wrong["damage_f1"] < 0.01


def test_trainer_writes_a_damage_model_the_pipeline_accepts(tmp_path):
    from models.checkpoint import load_model_file

    _make_xbd(tmp_path / "xbd")
    out = tmp_path / "damage.pth"
    metrics = train_damage(tmp_path / "xbd", out, minutes=5, init_from=str(CHANGE_MODEL), batch_size=2, crop=64,
                           max_steps=3, log=lambda _: None)
    assert metrics["steps"] == 3 and metrics["val_samples"] == 1
    assert set(metrics["xbd_val"]) >= {"localization_f1", "damage_f1", "score"}
    model, meta = load_model_file(out)
    assert meta["task"] == "damage" and [c["value"] for c in meta["classes"]] == [0, 1, 2, 3, 4]
