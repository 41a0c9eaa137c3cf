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
