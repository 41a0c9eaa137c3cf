"""Fine-tuning on LoveDA-derived polygons end to end (tiny chips, one or two epochs)."""
import json

import numpy as np
import pytest
import rasterio
import torch

from backend.errors import InputError
from backend.pipelines.finetune import run
from backend.progress import Progress


@pytest.fixture(scope="module")
def finetune_result(loveda_tifs, loveda_label_layer, small_base_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune")
    messages = []
    params = {"raster": str(loveda_tifs["1"][0]), "labels": str(loveda_label_layer), "class_field": "class",
              "base_model": str(small_base_model), "epochs": 2, "freeze_encoder": False, "output_dir": str(out),
              "name": "my model", "resume": False, "chip_size": 64, "chips_per_epoch": 4, "batch_size": 2,
              "device": "cpu", "rf_trees": 10}
    result = run(params, Progress(lambda fraction, message: messages.append((fraction, message))))
    return result, params, messages


def test_result_lists_model_metrics_curve_and_random_forest(finetune_result):
    result, _, messages = finetune_result
    json.dumps(result)   # goes over HTTP as is
    assert result["model"].endswith("my_model.pth")
    assert result["outputs"][0]["kind"] == "model"
    assert [p["epoch"] for p in result["loss_curve"]] == [1, 2]
    assert all(np.isfinite(p["train_loss"]) for p in result["loss_curve"])
    metrics = result["metrics"]
    k = len(result["classes"])
    assert np.array(metrics["confusion_matrix"]).shape == (k, k)
    assert 0 <= metrics["miou"] <= 1 and 0 <= metrics["overall_accuracy"] <= 1
    rf = metrics["random_forest"]
    assert np.array(rf["confusion_matrix"]).sum() == np.array(metrics["confusion_matrix"]).sum()
    assert 0.0 <= rf["overall_accuracy"] <= 1.0 and len(rf["confusion_matrix"]) == len(result["classes"])
    assert [row["name"] for row in result["per_class"]] == [c["name"] for c in result["classes"]]
    # colours come from the base model's LoveDA palette when the names match
    from backend.datasets.loveda import loveda_palette
    palette = {c["name"]: c["color"] for c in loveda_palette()["classes"]}
    for cls in result["classes"]:
        assert cls["color"] == palette[cls["name"]]
    assert len(result["classes"]) < 7 and metrics["head_replaced"]   # fewer user classes than LoveDA's 7
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_saved_model_loads_and_maps_with_the_landcover_pipeline(finetune_result, loveda_tifs, tmp_path):
    from rasterio.windows import Window
    from models.checkpoint import load_model_file
    from backend.pipelines.landcover import run_landcover

    # a 256 px crop of the held-out tile keeps the mapping quick
    with rasterio.open(loveda_tifs["2"][0]) as src:
        window = Window(256, 256, 256, 256)
        profile = {**src.profile, "width": 256, "height": 256, "transform": src.window_transform(window)}
        crop = tmp_path / "crop.tif"
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(window=window))

    result, _, _ = finetune_result
    model, meta = load_model_file(result["model"])
    assert meta["classes"] == result["classes"]
    assert meta["bands"] == {"hr": [1, 2, 3]}
    assert meta["metrics"]["validation"]["miou"] == pytest.approx(result["metrics"]["miou"])
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, len(result["classes"]), 64, 64)
    mapped = run_landcover({"hr": [{"path": str(crop)}], "model": result["model"],
                            "output_dir": str(tmp_path / "out"), "name": "lc", "tile_size": 256, "overlap": 0,
                            "vectorize": False, "device": "cpu"})
    raster = next(o["path"] for o in mapped["outputs"] if o["role"] == "classes")
    with rasterio.open(raster) as src:
        values = set(np.unique(src.read(1)).tolist())
    assert values <= {c["value"] for c in result["classes"]} | {0}


def test_resume_continues_after_the_last_epoch(finetune_result):
    result, params, _ = finetune_result
    resumed = run({**params, "epochs": 3, "resume": True, "compare_random_forest": False})
    assert resumed["metrics"]["resumed_from_epoch"] == 2
    assert [p["epoch"] for p in resumed["loss_curve"]] == [1, 2, 3]
    assert resumed["loss_curve"][:2] == result["loss_curve"]
    assert resumed["metrics"]["random_forest"] is None


def test_head_is_kept_when_classes_match(small_base_model):
    from models.checkpoint import load_model_file
    from backend.trainers.finetune import adapt_head

    base, meta = load_model_file(small_base_model)
    same, replaced = adapt_head(base, meta, meta["classes"])
    assert same is base and not replaced
    two = [{"value": 1, "name": "a", "color": "#000000"}, {"value": 2, "name": "b", "color": "#ffffff"}]
    new, replaced = adapt_head(base, meta, two)
    assert replaced and new.decode_head.conv_seg.out_channels == 2
    torch.testing.assert_close(new.backbone.state_dict(), base.backbone.state_dict())


def test_new_head_starts_from_the_base_rows_of_known_classes(small_base_model):
    from models.checkpoint import load_model_file
    from backend.trainers.finetune import adapt_head, base_class_rows

    base, meta = load_model_file(small_base_model)
    names = [c["name"] for c in meta["classes"]]
    classes = [{"value": 1, "name": "Forest", "color": "#000000"}, {"value": 2, "name": "water", "color": "#111111"},
               {"value": 3, "name": "crop", "color": "#222222"}]
    assert base_class_rows(meta, classes) == [names.index("forest"), names.index("water"), None]
    new, replaced = adapt_head(base, meta, classes)
    assert replaced
    old_head, new_head = base.decode_head.conv_seg, new.decode_head.conv_seg
    for index, row in enumerate([names.index("forest"), names.index("water")]):
        torch.testing.assert_close(new_head.weight[index], old_head.weight[row])
        torch.testing.assert_close(new_head.bias[index], old_head.bias[row])
    assert not any(torch.equal(new_head.weight[2], w) for w in old_head.weight)   # a new class starts random
    # before any training the copy scores the known classes exactly as the base model does
    base.eval(), new.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(new(x)[:, :2], base(x)[:, [names.index("forest"), names.index("water")]])


def test_finetune_keeps_batch_norm_statistics_and_learns_slowly_in_the_encoder(finetune_result, small_base_model):
    from models.checkpoint import load_model_file
    from backend.trainers.finetune import PRETRAINED_LR
    from backend.trainers.segmentation import load_checkpoint

    result, _, _ = finetune_result
    assert result["metrics"]["freeze_bn"] and result["metrics"]["new_classes"] == []
    base, _ = load_model_file(small_base_model)
    tuned, _ = load_model_file(result["model"])
    # the checkpoint holds the last epoch's weights even when an earlier epoch (or the base) was best
    last = load_checkpoint(result["checkpoint"])
    base_buffers = dict(base.named_buffers())
    for name, buffer in tuned.named_buffers():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(buffer, base_buffers[name], msg=name)
            torch.testing.assert_close(last["model"][name], base_buffers[name], msg=name)
    groups = {g["name"]: g["initial_lr"] for g in last["optimizer"]["param_groups"]}
    # every class is known to the base model: classifier and decoder at PRETRAINED_LR, encoder at a tenth
    assert groups == {"head": pytest.approx(PRETRAINED_LR), "encoder": pytest.approx(PRETRAINED_LR / 10)}
    assert any(not torch.equal(last["model"][k], v) for k, v in base.state_dict().items()
               if k.startswith("backbone."))   # the encoder did learn (freeze_encoder is false)


@pytest.mark.parametrize("bad, message", [
    ({"labels": None}, "missing: labels"),
    ({"epochs": "five"}, "epochs must be an integer"),
    ({"epochs": 0}, "epochs must be an integer"),
    ({"freeze_encoder": "yes"}, "freeze_encoder must be true or false"),
    ({"chip_size": 100}, "multiple of 32"),
    ({"raster": "/nonexistent/x.tif"}, "does not exist"),
    ({"device": "tpu"}, "device must be"),
])
def test_bad_parameters(finetune_result, bad, message):
    _, params, _ = finetune_result
    with pytest.raises(InputError, match=message):
        run({**params, **bad})


def test_base_model_of_another_task_is_refused(finetune_result, tmp_path):
    from models.registry import create_model
    from models.checkpoint import save_model_file

    _, params, _ = finetune_result
    change = create_model("skysense_change_tiny")
    path = save_model_file(tmp_path / "change.pth", change,
                           {"task": "change", "classes": [{"value": 1, "name": "change", "color": "#ff0000"}]})
    with pytest.raises(InputError, match="'change' model"):
        run({**params, "base_model": str(path)})
