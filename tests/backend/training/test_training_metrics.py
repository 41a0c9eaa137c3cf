import numpy as np
import pytest

from backend.trainers.metrics import ConfusionAccumulator, confusion_matrix, scores_from_confusion


def test_scores_on_known_matrix():
    # rows = truth, cols = prediction
    matrix = np.array([[50, 10, 0],
                       [5, 30, 5],
                       [0, 0, 0]])
    scores = scores_from_confusion(matrix, ["a", "b", "c"])
    assert scores["overall_accuracy"] == pytest.approx(80 / 100)
    assert scores["iou"][0] == pytest.approx(50 / (60 + 55 - 50))
    assert scores["iou"][1] == pytest.approx(30 / (40 + 40 - 30))
    # class c: never true, but predicted 5 times -> IoU 0, counted in the mean
    assert scores["iou"][2] == 0.0
    assert scores["miou"] == pytest.approx((50 / 65 + 30 / 50 + 0) / 3)
    assert scores["producers_accuracy"][1] == pytest.approx(30 / 40)
    assert scores["users_accuracy"][0] == pytest.approx(50 / 55)
    assert scores["producers_accuracy"][2] is None
    expected = (60 * 55 + 40 * 40 + 0 * 5) / 100 ** 2
    assert scores["kappa"] == pytest.approx((0.8 - expected) / (1 - expected))
    assert scores["support"] == [60, 40, 0]


def test_absent_class_is_left_out_of_miou():
    scores = scores_from_confusion(np.array([[10, 0, 0], [0, 10, 0], [0, 0, 0]]))
    assert scores["iou"][2] is None
    assert scores["miou"] == 1.0


def test_confusion_matrix_ignores_ignore_index():
    target = np.array([0, 1, 1, -1, 2, -1])
    prediction = np.array([0, 1, 0, 2, 2, 1])
    matrix = confusion_matrix(target, prediction, 3, ignore_index=-1)
    assert matrix.sum() == 4
    assert matrix.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_accumulator_sums_batches():
    accumulator = ConfusionAccumulator(2)
    accumulator.update(np.array([0, 1]), np.array([0, 0]))
    accumulator.update(np.array([1, 1]), np.array([1, 1]))
    assert accumulator.matrix.tolist() == [[1, 0], [1, 2]]
    assert accumulator.scores()["overall_accuracy"] == pytest.approx(0.75)


def test_validation_grid_scores_every_labelled_pixel_once():
    from backend.datasets.chips import ChipSampler, stack_chips
    from backend.datasets.scene import LabelledScene

    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 3, size=(150, 170)).astype(np.int16)
    scene = LabelledScene(np.zeros((3, 150, 170), np.uint8), labels)
    sampler = ChipSampler([scene], 64, 3)
    chips = sampler.grid_chips()
    _, chip_labels = stack_chips(chips, [scene.image.astype(np.float32)], [scene], 64)
    assert (chip_labels >= 0).sum() == (labels >= 0).sum()
    for c in range(3):
        assert (chip_labels == c).sum() == (labels == c).sum()
