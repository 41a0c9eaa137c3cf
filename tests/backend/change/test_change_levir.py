"""LEVIR-CD sample loading, held-out split and paired augmentation."""
import numpy as np
import pytest

from backend.datasets.levir import (HELD_OUT_PAIRS, LevirChangeDataset, augment_change_pair, list_levir_pairs,
                                    load_levir_pair, split_levir_pairs)
from backend.errors import InputError


def test_pairs_skip_unlabelled_and_hold_out_whole_pairs(data_dir):
    pairs = list_levir_pairs(data_dir)
    names = [p.name for p in pairs]
    assert "test_113_0256" not in names  # no label
    assert len(pairs) == 11
    train, test = split_levir_pairs(pairs)
    assert sorted(p.name for p in test) == sorted(HELD_OUT_PAIRS)
    assert not {p.name for p in train} & {p.name for p in test}
    a, b, label = load_levir_pair(test[0])
    assert a.shape == b.shape == (256, 256, 3) and label.shape == (256, 256)
    assert set(np.unique(label)) <= {0, 1} and label.any()


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="A/, B/ and label/"):
        list_levir_pairs(tmp_path)


def test_augmentation_moves_images_and_label_together():
    rng = np.random.default_rng(1)
    label = np.zeros((64, 64), np.uint8)
    label[5:20, 30:60] = 1
    # Both dates encode the label, so after any geometric transform they must still match it.
    a = np.repeat(label[None].astype(np.float32), 3, axis=0)
    b = a * 2.0
    for _ in range(20):
        aa, bb, ll = augment_change_pair(a, b, label, rng, crop=48)
        assert aa.shape == (3, 48, 48) and ll.shape == (48, 48)
        for img in (aa, bb):
            # undo the photometric jitter: the foreground is brighter than the background
            fg = img[0] > (img[0].max() + img[0].min()) / 2 if img[0].max() > img[0].min() else None
            if fg is not None:
                assert np.array_equal(fg, ll.astype(bool))


def test_dataset_items_are_normalised_tensors(data_dir):
    train, _ = split_levir_pairs(list_levir_pairs(data_dir))
    ds = LevirChangeDataset(train[:2], [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], augment=True,
                            crop=128, repeats=3)
    assert len(ds) == 6
    a, b, y = ds[0]
    assert a.shape == b.shape == (3, 128, 128) and y.shape == (128, 128)
    assert abs(float(a.mean())) < 3 and y.dtype.is_floating_point is False


def test_change_encoder_starts_from_a_land_cover_model_file(tmp_path):
    """--init-from: the change model's encoder takes the land-cover model's weights, head untouched;
    a model whose encoder does not fit is refused naming the file."""
    import torch

    from backend.trainers.change import copy_encoder
    from models.checkpoint import save_model_file
    from models.registry import create_model

    torch.manual_seed(1)
    source = create_model("skysense_seg_tiny", num_classes=7)
    path = tmp_path / "landcover.pth"
    save_model_file(path, source, {"task": "segmentation", "name": "LC test", "classes": [
        {"value": v, "name": f"c{v}"} for v in range(1, 8)]})
    torch.manual_seed(2)
    change = create_model("skysense_change_tiny")
    head_before = {k: v.clone() for k, v in change.state_dict().items() if k.startswith("decode_head.")}
    assert copy_encoder(change, path) == "LC test"
    state, wanted = change.state_dict(), source.state_dict()
    encoder_keys = [k for k in state if k.startswith("backbone.")]
    assert encoder_keys and all(torch.equal(state[k], wanted[k]) for k in encoder_keys)
    assert all(torch.equal(state[k], v) for k, v in head_before.items())

    wide = create_model("skysense_seg_tiny", num_classes=7, encoder={"embed_dims": 48})
    other = tmp_path / "wide.pth"
    save_model_file(other, wide, {"task": "segmentation", "classes": [{"value": 1, "name": "a"}]})
    with pytest.raises(InputError, match="wide.pth: its encoder does not fit"):
        copy_encoder(create_model("skysense_change_tiny"), other)
