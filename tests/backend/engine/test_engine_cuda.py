"""The CUDA path on a real GPU: the same jobs as on the CPU, compared with the CPU's results.

Skipped where torch sees no CUDA GPU (CI); `make gpu-check` runs them wherever one is present. Real
data: LoveDA tiles with the committed land-cover model, a LEVIR pair with the committed change model,
a Joplin pair with its building footprints.
"""
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from backend.datasets.loveda import georeference_loveda
from backend.inference.engine import EngineInput, run_inference
from backend.inference.predictors import TorchPredictor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LANDCOVER_MODEL = "resources/models/landcover_loveda_tiny.pth"
CLASSES = list(range(1, 8))


@pytest.fixture(scope="module")
def loveda(data_dir, tmp_path_factory):
    return georeference_loveda(data_dir, tmp_path_factory.mktemp("loveda_cuda"))


@pytest.fixture(scope="module")
def landcover_model(repo_root):
    from models.checkpoint import load_model_file
    return load_model_file(repo_root / LANDCOVER_MODEL)


def _labels(path):
    with rasterio.open(path) as src:
        return src.read(1)


def _engine_labels(model, meta, image, out, batch_size=8, **predictor_options):
    norm = meta["normalization"]["hr"]
    predictor = TorchPredictor(model, as_tensor=True, **predictor_options)
    run_inference([EngineInput(image, mean=norm["mean"], std=norm["std"])], predictor, out, CLASSES,
                  tile_size=256, overlap=32, batch_size=batch_size)
    return _labels(out), predictor


def test_cuda_fp32_fp16_and_bf16_agree_with_the_cpu(loveda, landcover_model, tmp_path):
    import copy
    model, meta = landcover_model
    image = loveda[0][0]
    cpu, _ = _engine_labels(copy.deepcopy(model), meta, image, tmp_path / "cpu.tif", device="cpu")
    for name, options in {"fp32": dict(amp=False), "fp16": dict(amp=True),
                          "bf16": dict(amp=True, cuda_dtype="bf16")}.items():
        labels, predictor = _engine_labels(copy.deepcopy(model), meta, image, tmp_path / f"{name}.tif",
                                           device="cuda", **options)
        assert predictor.device == "cuda"
        agree = float((labels == cpu).mean())
        # fp32 differs from the CPU only by cuDNN's TF32 convolutions and summation order
        assert agree > (0.995 if name == "fp32" else 0.98), f"{name}: {agree:.4f} of labels equal the CPU's"
        probe = predictor([np.random.default_rng(0).normal(size=(2, 3, 256, 256)).astype(np.float32)])
        assert probe.is_cuda and bool(torch.isfinite(probe).all())
        assert torch.allclose(probe.sum(1), torch.ones(2, 256, 256, device="cuda"), atol=1e-3)


def test_landcover_job_on_auto_runs_on_the_gpu_as_accurately_as_on_the_cpu(loveda, repo_root, tmp_path):
    from backend.pipelines import landcover
    image, mask = loveda[1]
    truth = _labels(mask)
    accuracy = {}
    for device in ("cpu", "auto"):
        out = tmp_path / device
        result = landcover.run({"hr": [{"path": str(image), "bands": [1, 2, 3]}], "s2": [], "s1": [],
                                "model": str(repo_root / LANDCOVER_MODEL), "output_dir": str(out),
                                "name": "lc", "device": device, "runtime": "auto", "vectorize": False})
        assert result["device"] == ("cpu" if device == "cpu" else "cuda")
        if device == "auto":
            assert result["metrics"]["precision"].startswith("fp16 mixed")  # + a note if batches were split
        labels = _labels(out / "lc.tif")
        valid = truth > 0
        accuracy[device] = float((labels[valid] == truth[valid]).mean())
    assert abs(accuracy["auto"] - accuracy["cpu"]) < 0.01, accuracy


def test_change_job_on_the_gpu_finds_the_levir_change(data_dir, tmp_path):
    from backend.pipelines.change import run_change
    name = "val_27_0000_0256"
    levir = data_dir / "levir_cd"
    result = run_change({"pre": str(levir / "A" / f"{name}.png"), "post": str(levir / "B" / f"{name}.png"),
                         "output_dir": str(tmp_path), "name": "levir", "device": "cuda"})
    assert result["metrics"]["precision"].startswith("fp16 mixed")
    path = next(o["path"] for o in result["outputs"] if o["role"] == "change")
    pred = _labels(path) == 1
    truth = np.asarray(Image.open(levir / "label" / f"{name}.png").convert("L")) > 127
    f1 = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert f1 > 0.6, f"held-out pair F1 on the GPU {f1:.3f}"


def test_finetune_on_the_gpu_writes_a_model_that_loads_and_maps_on_the_cpu(loveda, tmp_path):
    from backend.datasets.loveda import loveda_palette, loveda_polygons
    from backend.pipelines.finetune import run as run_finetune
    from backend.trainers.model_file import save_segmentation_model, segmentation_meta
    from backend.trainers.train_defaults import IMAGENET_NORMALIZATION
    from models.checkpoint import load_model_file
    from models.registry import create_model
    from rasterio.windows import Window

    image, mask = loveda[1]
    labels = loveda_polygons(mask, tmp_path / "labels.gpkg", window=Window(0, 0, 384, 384), min_pixels=150,
                             crs="EPSG:4326")
    torch.manual_seed(0)
    classes = loveda_palette()["classes"]
    base = create_model("skysense_seg_tiny", num_classes=len(classes), in_chans=3)
    base_path = save_segmentation_model(tmp_path / "base.pth", base, segmentation_meta(
        base, classes, IMAGENET_NORMALIZATION, bands=[1, 2, 3], tile_size=256, gsd=0.3))
    result = run_finetune({"raster": str(image), "labels": str(labels), "class_field": "class",
                           "base_model": str(base_path), "epochs": 2, "freeze_encoder": False,
                           "output_dir": str(tmp_path / "out"), "name": "gpu model", "resume": False, "chip_size": 64,
                           "chips_per_epoch": 8, "batch_size": 4, "device": "cuda", "rf_trees": 5})
    assert all(np.isfinite(p["train_loss"]) for p in result["loss_curve"])
    model, meta = load_model_file(result["model"])  # map_location cpu: a CPU-only machine can use it
    assert all(p.device.type == "cpu" for p in model.parameters())
    norm = meta["normalization"]["hr"]
    predictor = TorchPredictor(model, device="cpu", as_tensor=False)
    probs = predictor([((np.full((1, 3, 64, 64), 120.0) - np.array(norm["mean"])[:, None, None])
                        / np.array(norm["std"])[:, None, None]).astype(np.float32)])
    assert probs.shape == (1, len(result["classes"]), 64, 64) and np.isfinite(probs).all()


def test_damage_job_on_the_gpu_classes_the_joplin_buildings_as_the_cpu_does(data_dir, tmp_path):
    import fiona

    from backend.pipelines.damage import run_damage
    from ..change.test_change_pipeline import JOPLIN_AOI

    joplin = data_dir / "joplin"
    params = {"pre": str(joplin / "pre" / "tile_337-9136.tif"), "post": str(joplin / "post" / "tile_31500-5137.tif"),
              "buildings": str(joplin / "buildings.geojson"), "aoi": JOPLIN_AOI, "name": "damage"}
    classes = {}
    for device in ("cpu", "cuda"):
        result = run_damage({**params, "device": device, "output_dir": str(tmp_path / device)})
        if device == "cuda":
            assert result["metrics"]["precision"].startswith("fp16 mixed")
        with fiona.open(next(o for o in result["outputs"] if o["role"] == "buildings")["path"]) as layer:
            classes[device] = {f.properties["source_id"]: f.properties["damage"] for f in layer}
    assert classes["cpu"].keys() == classes["cuda"].keys() and len(classes["cpu"]) >= 10
    same = float(np.mean([classes["cpu"][k] == classes["cuda"][k] for k in classes["cpu"]]))
    assert same >= 0.9, f"only {same:.2f} of the buildings get the same damage class on the GPU"


def _peak_reserved(run):
    """(run(), the most GPU memory the allocator held during it), from an emptied cache."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = run()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_reserved()


def test_running_out_of_gpu_memory_splits_the_batches_and_keeps_the_labels(loveda, landcover_model, tmp_path):
    """A real CUDA out-of-memory: the process is capped between what the job holds at one tile per
    model call and at eight, so batches of eight fail in the allocator; the job must finish in smaller
    slices with the uncapped labels."""
    import copy
    model, meta = landcover_model
    image = loveda[0][0]

    def job(name, batch_size):
        labels, predictor = _engine_labels(copy.deepcopy(model), meta, image, tmp_path / f"{name}.tif",
                                           device="cuda", amp=False, batch_size=batch_size)
        return labels, predictor.split_batch, predictor.precision

    (reference, _, _), peak_eight = _peak_reserved(lambda: job("eight", 8))
    (one_by_one, _, _), peak_one = _peak_reserved(lambda: job("one", 1))
    assert peak_eight > peak_one + 64 * 2**20, (peak_one, peak_eight)  # else the cap proves nothing
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((peak_one + peak_eight) / 2 / total)
    try:
        labels, split, precision = job("capped", 8)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert 0 < split < 8, split
    assert precision == f"fp32, {split} tiles per model call (GPU memory)"
    # other batch sizes may pick other cuDNN kernels: labels equal up to summation order
    assert float((labels == reference).mean()) > 0.999
    assert float((one_by_one == reference).mean()) > 0.999


def test_compiled_model_on_the_gpu_gives_the_eager_labels(loveda, landcover_model, tmp_path, monkeypatch):
    import copy
    import time
    monkeypatch.setenv("SKYSENSE_CACHE", str(tmp_path / "cache"))  # an empty kernel cache: a full compile
    model, meta = landcover_model
    image = loveda[2][0]
    eager, _ = _engine_labels(copy.deepcopy(model), meta, image, tmp_path / "eager.tif", device="cuda")
    start = time.perf_counter()
    compiled, predictor = _engine_labels(copy.deepcopy(model), meta, image, tmp_path / "compiled.tif",
                                         device="cuda", compile=True)
    print(f"first compiled job on the GPU: {time.perf_counter() - start:.1f} s")
    assert predictor.compiled, "torch.compile fell back to eager on the GPU (see the warning)"
    assert predictor.precision == "fp16 mixed, compiled"
    assert any((tmp_path / "cache" / "inductor").rglob("*"))
    # both fp16: fused kernels round differently, so a few borderline pixels may change class
    assert float((compiled == eager).mean()) > 0.99
