"""Project model files: round trip, atomic writes, clear errors for bad files."""
import pickle

import pytest
import torch

from models.checkpoint import CheckpointError, load_model_file, read_model_meta, save_model_file
from models.registry import create_model

CLASSES = [{"value": 1, "name": "background", "color": "#ffffff"}, {"value": 2, "name": "building", "color": "#ff0000"}]


def _meta():
    return {"task": "segmentation", "classes": CLASSES, "bands": {"hr": [1, 2, 3]},
            "normalization": {"hr": {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}}, "tile_size": 256}


def test_round_trip_restores_weights_and_meta(tmp_path):
    torch.manual_seed(0)
    model = create_model("skysense_seg_tiny", num_classes=2).eval()
    path = save_model_file(tmp_path / "m.pth", model, _meta())
    loaded, meta = load_model_file(path)
    assert not loaded.training
    assert meta["arch"] == {"name": "skysense_seg_tiny", "kwargs": {"num_classes": 2}}
    assert meta["classes"] == CLASSES and "state_dict" not in meta
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))
    assert read_model_meta(path)["bands"] == {"hr": [1, 2, 3]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]  # no temp file left behind


def test_fp16_weights_load_as_fp32(tmp_path):
    model = create_model("skysense_change_tiny").eval().half()
    path = save_model_file(tmp_path / "c.pth", model, {"task": "change", "classes": CLASSES})
    loaded, _ = load_model_file(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    model = create_model("skysense_seg_tiny", num_classes=2)
    path = save_model_file(tmp_path / "m.pth", model, _meta())
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model_file(path, model, _meta())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]


def test_corrupt_file_names_file_and_problem(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pth: not a readable PyTorch checkpoint"):
        load_model_file(bad)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model_file(empty)
    with pytest.raises(CheckpointError, match="no such"):
        load_model_file(tmp_path / "missing.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"format": "skysense-qgis/1", "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pth: refused"):
        load_model_file(path)


def test_foreign_state_dict_is_explained(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="bare state_dict"):
        load_model_file(path)


def test_weights_for_another_architecture_are_refused(tmp_path):
    model = create_model("skysense_seg_tiny", num_classes=2)
    meta = dict(_meta(), arch={"name": "skysense_seg_tiny", "kwargs": {"num_classes": 5}})
    path = save_model_file(tmp_path / "m.pth", model, meta)
    with pytest.raises(CheckpointError, match="shape mismatches.*conv_seg"):
        load_model_file(path)


def test_bad_meta_is_refused_before_writing(tmp_path):
    model = create_model("skysense_seg_tiny", num_classes=2)
    with pytest.raises(CheckpointError, match="unknown task"):
        save_model_file(tmp_path / "m.pth", model, dict(_meta(), task="painting"))
    assert not list(tmp_path.iterdir())
