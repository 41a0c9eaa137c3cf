"""Training loop on real LoveDA pixels with tiny chips: checkpoints, exact resume, early stopping."""
import numpy as np
import pytest
import torch

from backend.datasets.scene import LabelledScene, values_to_indexes
from backend.errors import CancelledError
from backend.progress import Progress
from backend.trainers.segmentation import TrainConfig, load_checkpoint, train_segmentation
from backend.trainers.train_defaults import IMAGENET_NORMALIZATION

NAMES = ["background", "building", "road", "water", "barren", "forest", "agriculture"]


@pytest.fixture(scope="module")
def scenes(data_dir):
    from backend.datasets.loveda import read_loveda_tile
    image, mask = read_loveda_tile(data_dir, "1")
    labels = values_to_indexes(mask, range(1, 8), nodata=0)
    return ([LabelledScene(image[:, :192, :192], labels[:192, :192], "train")],
            [LabelledScene(image[:, 192:320, :128], labels[192:320, :128], "val")])


def _model():
    from models.registry import create_model
    torch.manual_seed(0)
    return create_model("skysense_seg_tiny", num_classes=7, in_chans=3)


def _config(**overrides):
    settings = dict(epochs=2, chip_size=64, chips_per_epoch=4, batch_size=2, lr=1e-3, patience=0, seed=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_checkpoint_every_epoch_and_resume_follows_the_same_trajectory(scenes, tmp_path):
    train, val = scenes
    reference = train_segmentation(_model(), train, val, NAMES, IMAGENET_NORMALIZATION, _config(),
                                   checkpoint_path=tmp_path / "ref.pth")
    assert [h["epoch"] for h in reference.history] == [1, 2]
    assert load_checkpoint(tmp_path / "ref.pth")["epoch"] == 2

    # Interrupt at the first step of epoch 2: the epoch-1 checkpoint must be on disk, complete.
    cancel = Progress()
    def stop_in_epoch_two(fraction, message):
        if message.startswith("epoch 2/"):
            cancel.cancel_event.set()
    interrupted = Progress(stop_in_epoch_two, cancel.cancel_event)
    with pytest.raises(CancelledError):
        train_segmentation(_model(), train, val, NAMES, IMAGENET_NORMALIZATION, _config(),
                           checkpoint_path=tmp_path / "run.pth", progress=interrupted)
    state = load_checkpoint(tmp_path / "run.pth")
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert not list(tmp_path.glob("*.tmp"))

    resumed = train_segmentation(_model(), train, val, NAMES, IMAGENET_NORMALIZATION, _config(),
                                 checkpoint_path=tmp_path / "run.pth", resume=True)
    assert resumed.resumed_from == 1
    for expected, got in zip(reference.history, resumed.history):
        assert got["epoch"] == expected["epoch"]
        assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-4)
        assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-4)
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-4, atol=1e-5)


def test_early_stopping_on_stalled_miou(scenes, tmp_path):
    train, val = scenes
    # No gain can exceed min_delta = 1.0 mIoU, so every epoch after the first is stale.
    config = _config(epochs=6, patience=2, min_delta=1.0)
    outcome = train_segmentation(_model(), train, val, NAMES, IMAGENET_NORMALIZATION, config,
                                 checkpoint_path=tmp_path / "c.pth")
    assert outcome.stopped_early
    assert len(outcome.history) == 3
    assert outcome.best_epoch == 1
    # resuming a run that already stopped does not train further
    again = train_segmentation(_model(), train, val, NAMES, IMAGENET_NORMALIZATION, config,
                               checkpoint_path=tmp_path / "c.pth", resume=True)
    assert len(again.history) == 3 and again.stopped_early


def test_frozen_encoder_keeps_encoder_weights(scenes):
    train, val = scenes
    model = _model()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.decode_head.conv_seg.weight.clone()
    train_segmentation(model, train, val, NAMES, IMAGENET_NORMALIZATION, _config(epochs=1, freeze_encoder=True))
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert not torch.equal(model.decode_head.conv_seg.weight, head_before)


def test_validation_metrics_are_reported_per_epoch(scenes):
    train, val = scenes
    outcome = train_segmentation(_model(), train, val, NAMES, IMAGENET_NORMALIZATION, _config(epochs=1))
    record = outcome.history[0]
    assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
    scores = outcome.best_scores
    assert np.array(scores["confusion_matrix"]).shape == (7, 7)
    assert np.array(scores["confusion_matrix"]).sum() == (val[0].labels >= 0).sum()
    assert 0.0 <= scores["miou"] <= 1.0 and len(scores["iou"]) == 7


def test_resume_refuses_a_checkpoint_for_other_classes(scenes, tmp_path):
    from backend.errors import InputError

    train, val = scenes
    train_segmentation(_model(), train, val, NAMES, IMAGENET_NORMALIZATION, _config(epochs=1),
                       checkpoint_path=tmp_path / "c.pth")
    renamed = ["bare soil"] + NAMES[1:]
    with pytest.raises(InputError, match="trained for classes"):
        train_segmentation(_model(), train, val, renamed, IMAGENET_NORMALIZATION, _config(epochs=2),
                           checkpoint_path=tmp_path / "c.pth", resume=True)


def _batch_norm_buffers(model):
    return {name: buffer.clone() for name, buffer in model.named_buffers()
            if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def test_frozen_batch_norm_keeps_the_running_statistics(scenes):
    train, val = scenes
    model = _model()
    before = _batch_norm_buffers(model)
    assert before, "the decode head has BatchNorm layers"
    train_segmentation(model, train, val, NAMES, IMAGENET_NORMALIZATION, _config(epochs=1, freeze_bn=True))
    after = _batch_norm_buffers(model)
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, msg=name)
    # without freeze_bn the same run re-estimates them (so the check above is not vacuous)
    free = _model()
    train_segmentation(free, train, val, NAMES, IMAGENET_NORMALIZATION, _config(epochs=1))
    moved = _batch_norm_buffers(free)
    assert any(not torch.equal(moved[name], value) for name, value in before.items())


def test_learning_rate_groups_scale_decoder_and_encoder():
    from backend.trainers.segmentation import _build_optimizer

    model = _model()
    optimizer = _build_optimizer(model, _config(lr=1e-3, decoder_lr_scale=0.1, encoder_lr_scale=0.01))
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"classifier", "decoder", "encoder"}
    assert groups["classifier"]["lr"] == pytest.approx(1e-3)
    assert groups["decoder"]["lr"] == pytest.approx(1e-4)
    assert groups["encoder"]["lr"] == pytest.approx(1e-5)
    ids = lambda params: {id(p) for p in params}
    assert ids(groups["classifier"]["params"]) == ids(model.decode_head.conv_seg.parameters())
    assert ids(groups["encoder"]["params"]) == ids(model.backbone.parameters())
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))

    # decoder_lr_scale 1 (training from scratch): one head group in model order, encoder at lr * encoder_lr_scale
    optimizer = _build_optimizer(model, _config(lr=3e-4))
    head, encoder = optimizer.param_groups
    assert head["lr"] == pytest.approx(3e-4) and encoder["lr"] == pytest.approx(3e-5)
    assert [id(p) for p in head["params"]] == [id(p) for p in model.decode_head.parameters()]

    # frozen encoder: no encoder group, its parameters do not learn
    optimizer = _build_optimizer(model, _config(freeze_encoder=True, decoder_lr_scale=0.1))
    assert [g["name"] for g in optimizer.param_groups] == ["classifier", "decoder"]
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_starting_weights_are_kept_when_no_epoch_beats_them(scenes, tmp_path):
    train, val = scenes
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # No gain can exceed min_delta = 1.0 mIoU: the starting weights (epoch 0) stay the best.
    outcome = train_segmentation(model, train, val, NAMES, IMAGENET_NORMALIZATION,
                                 _config(epochs=2, eval_initial=True, min_delta=1.0),
                                 checkpoint_path=tmp_path / "c.pth")
    assert outcome.best_epoch == 0 and [h["epoch"] for h in outcome.history] == [1, 2]
    assert 0.0 <= outcome.best_scores["miou"] <= 1.0
    for key, value in outcome.model.state_dict().items():
        torch.testing.assert_close(value, start[key], msg=key)
    # an epoch that beats the starting weights replaces them
    better = train_segmentation(_model(), train, val, NAMES, IMAGENET_NORMALIZATION,
                                _config(epochs=1, eval_initial=True, min_delta=-1.0))
    assert better.best_epoch == 1
