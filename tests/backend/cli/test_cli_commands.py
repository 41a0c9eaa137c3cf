"""python -m backend.cli: help, real small runs, bad input exits 2 with a message, Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from backend import cli
from ...conftest import repo_env

ROOT = Path(__file__).resolve().parents[3]


def _run(*args, timeout=300):
    env = repo_env(OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "backend.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, repo_root):
    import torch

    from models.checkpoint import save_model_file
    from models.registry import create_model

    torch.manual_seed(0)
    classes = json.loads((repo_root / "resources" / "palettes" / "loveda.json").read_text())["classes"]
    path = tmp_path_factory.mktemp("cli_models") / "tiny.pth"
    save_model_file(path, create_model("skysense_seg_tiny", num_classes=7),
                    {"task": "segmentation", "classes": classes, "bands": {"hr": [1, 2, 3]},
                     "normalization": {"hr": {"mean": [120.0] * 3, "std": [60.0] * 3}}, "tile_size": 64})
    return path


@pytest.fixture
def scene(tmp_path):
    path = tmp_path / "scene.tif"
    rng = np.random.default_rng(5)
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:32615", transform=from_origin(360000, 4105000, 0.5, 0.5)) as ds:
        ds.write(rng.integers(0, 255, (3, 64, 64), dtype=np.uint8))
    return path


def test_cli_help_lists_every_command():
    result = _run("--help", timeout=120)
    assert result.returncode == 0
    for command in ("landcover", "change", "damage", "finetune", "export", "serve", "models"):
        assert command in result.stdout


@pytest.mark.parametrize("kind, flags", [
    ("landcover", ["--hr", "--tile-size", "--output-dir", "--no-vectorize", "--aoi", "--s2"]),
    ("change", ["--pre", "--post", "--threshold", "--landcover-model"]),
    ("damage", ["--buildings", "--ring-m"]),
    ("finetune", ["--raster", "--labels", "--class-field", "--epochs", "--freeze-encoder", "--resume", "--json"]),
    ("export", ["--source", "--dest", "--format", "--layer"]),
    ("landcover", ["--confidence", "--allow-pixel-grid"]),
])
def test_cli_subcommand_flags_follow_the_schemas(kind, flags, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([kind, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text, flag


def test_cli_landcover_small_real_run(tmp_path, scene, tiny_model, run_cli):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("landcover", "--hr", scene, "--model", tiny_model, "--output-dir", out,
                                 "--tile-size", 64, "--overlap", 16, "--device", "cpu", "--name", "cli_map")
    assert code == 0, stderr
    answer = json.loads(stdout)
    paths = {o["role"]: o["path"] for o in answer["outputs"]}
    assert Path(paths["classes"]).name == "cli_map.tif"
    with rasterio.open(paths["classes"]) as ds:
        assert ds.crs.to_epsg() == 32615 and ds.shape == (64, 64)
    assert "100%" in stderr  # the progress bar reached the end


def test_cli_relative_paths_are_made_absolute(tmp_path, scene, tiny_model, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli("landcover", "--hr", scene.name, "--model", tiny_model, "--output-dir",
                            "rel_out", "--tile-size", 64, "--overlap", 16, "--no-vectorize", "--quiet")
    assert code == 0, stderr
    assert (tmp_path / "rel_out" / "landcover.tif").is_file()
    assert not (tmp_path / "rel_out" / "landcover.gpkg").exists()


@pytest.mark.parametrize("args, words", [
    (["landcover", "--hr", "/nonexistent/scene.tif", "--output-dir", "/tmp/x"], "does not exist"),
    (["landcover", "--hr", "SCENE", "--output-dir", "OUT", "--tile-size", "100"], "multiple of 32"),
    (["landcover", "--output-dir", "OUT"], "at least one input raster"),
    (["landcover", "--hr", "SCENE"], "--output-dir"),
    (["landcover", "--hr", "SCENE", "--output-dir", "OUT", "--name", "../up"], "--name"),
    (["landcover", "--hr", "SCENE", "--output-dir", "OUT", "--device", "tpu"], "invalid choice"),
    (["landcover", "--hr", "SCENE", "--output-dir", "OUT", "--hr-bands", "red"], "comma-separated"),
    (["export", "--source", "SCENE", "--dest", "OUT/x.txt"], "use a .gpkg or .shp name"),
    (["bogus"], "invalid choice"),
])
def test_cli_bad_input_exits_2_with_message(tmp_path, scene, args, words, run_cli):
    args = [str(scene) if a == "SCENE" else a.replace("OUT", str(tmp_path / "out")) for a in args]
    code, _, stderr = run_cli(*args)
    assert code == 2, stderr
    assert "error:" in stderr and words in stderr


def _two_class_scene(tmp_path):
    """A 128 px scene (dark left half, bright right half) and four labelled squares, two per class."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 80, (3, 128, 128), dtype=np.uint8)
    image[:, :, 64:] += 120
    x0, y0, px = 360000.0, 4105000.0, 0.5
    raster = tmp_path / "ft_scene.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=128, height=128, count=3, dtype="uint8",
                       crs="EPSG:32615", transform=from_origin(x0, y0, px, px)) as ds:
        ds.write(image)

    def square(col, row):
        xa, ya, xb, yb = x0 + col * px, y0 - row * px, x0 + (col + 60) * px, y0 - (row + 60) * px
        return {"type": "Polygon", "coordinates": [[(xa, ya), (xb, ya), (xb, yb), (xa, yb), (xa, ya)]]}

    labels = tmp_path / "ft_labels.gpkg"
    with fiona.open(labels, "w", driver="GPKG", crs="EPSG:32615",
                    schema={"geometry": "Polygon", "properties": {"cls": "str"}}) as dst:
        for col, row, name in ((2, 2, "water"), (2, 66, "water"), (66, 2, "forest"), (66, 66, "forest")):
            dst.write(fiona.Feature(geometry=fiona.Geometry.from_dict(square(col, row)),
                                    properties=fiona.Properties.from_dict({"cls": name})))
    return raster, labels


def test_cli_finetune_prints_the_summary_table_and_resumes(tmp_path, tiny_model, run_cli):
    raster, labels = _two_class_scene(tmp_path)
    common = ["finetune", "--raster", raster, "--labels", labels, "--class-field", "cls", "--base-model", tiny_model,
              "--output-dir", tmp_path / "ft", "--name", "cli_ft", "--freeze-encoder", "--chip-size", 64,
              "--chips-per-epoch", 2, "--batch-size", 2, "--rf-trees", 5, "--device", "cpu", "--quiet"]
    code, stdout, stderr = run_cli(*common, "--epochs", 1, "--json")
    assert code == 0, stderr
    first = json.loads(stdout)  # --json: the whole result, as before
    assert first["metrics"]["epochs_run"] == 1 and Path(first["checkpoint"]).name == "cli_ft_checkpoint.pth"

    code, stdout, stderr = run_cli(*common, "--epochs", 2, "--resume")
    assert code == 0, stderr
    # the same table as python -m backend.trainers.finetune (a note line when the base model's weights were kept)
    lines = [line for line in stdout.splitlines() if not line.startswith("no epoch beat the base model")]
    assert lines[0] == f"model: {tmp_path / 'ft' / 'cli_ft.pth'}"
    assert lines[1] == f"resumed after epoch 1 from {first['checkpoint']}"
    assert lines[2].split() == ["epoch", "train_loss", "val_loss", "val_mIoU"]
    assert [line.split()[0] for line in lines[3:5]] == ["1", "2"]
    assert float(lines[3].split()[1]) == pytest.approx(first["loss_curve"][0]["train_loss"], abs=1e-4)
    assert lines[5].split() == ["fine-tuned", "random", "forest", "base", "model"]
    assert lines[6].startswith("OA") and lines[7].startswith("mIoU")
    assert sorted(line.split()[1] for line in lines[8:]) == ["forest", "water"]  # IoU per class
    assert not stdout.lstrip().startswith("{")

    # Resuming with the other encoder setting is refused in plain words (the optimizer state would not fit).
    no_freeze = [a for a in common if a != "--freeze-encoder"]
    code, _, stderr = run_cli(*no_freeze, "--epochs", 2, "--resume")
    assert code == 2 and "was trained with the encoder frozen" in stderr and "start without resume" in stderr
    assert (tmp_path / "ft" / "cli_ft_checkpoint.pth").is_file()  # still there to resume properly


def test_cli_bad_input_process_exit_code(tmp_path):
    result = _run("landcover", "--hr", tmp_path / "missing.tif", "--output-dir", tmp_path, timeout=120)
    assert result.returncode == 2
    assert "error: hr[0].path:" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_non_raster_input_exits_2(tmp_path, tiny_model, run_cli):
    fake = tmp_path / "fake.tif"
    fake.write_text("hello")
    code, _, stderr = run_cli("landcover", "--hr", fake, "--model", tiny_model, "--output-dir",
                            tmp_path / "o", "--quiet")
    assert code == 2
    assert stderr.startswith("error: ") and "fake.tif" in stderr
    assert not (tmp_path / "o").exists() or os.listdir(tmp_path / "o") == []


def test_cli_export_real_run(tmp_path, run_cli):
    src = tmp_path / "a.gpkg"
    with fiona.open(src, "w", driver="GPKG", crs="EPSG:3857", layer="pts",
                    schema={"geometry": "Point", "properties": {"a_long_attribute_name": "str"}}) as dst:
        dst.write(fiona.Feature(geometry=fiona.Geometry(type="Point", coordinates=(1.0, 2.0)),
                                properties=fiona.Properties.from_dict({"a_long_attribute_name": "v"})))
    code, _, stderr = run_cli("export", "--source", src, "--dest", tmp_path / "b.shp", "--quiet")
    assert code == 0, stderr
    with fiona.open(tmp_path / "b.shp") as out:
        assert out.crs.to_epsg() == 3857 and [dict(f.properties) for f in out] == [{"a_long_att": "v"}]


def test_cli_params_json_with_flag_override(tmp_path, scene, tiny_model, run_cli):
    params = {"hr": [{"path": str(scene)}], "model": str(tiny_model), "output_dir": str(tmp_path / "pj"),
              "tile_size": 64, "overlap": 16, "vectorize": False, "name": "from_json"}
    (tmp_path / "p.json").write_text(json.dumps(params))
    code, _, stderr = run_cli("landcover", "--params-json", tmp_path / "p.json", "--name", "overridden",
                            "--quiet")
    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "pj").iterdir() if p.suffix == ".tif") == ["overridden.tif"]


def test_cli_models_lists_json(tmp_path, tiny_model, run_cli):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "mine.pth").write_bytes(tiny_model.read_bytes())
    code, stdout, stderr = run_cli("models", "--models-dir", tmp_path / "m")
    assert code == 0, stderr
    mine = [m for m in json.loads(stdout) if m["source"] == "user"]
    assert [(m["name"], m["task"]) for m in mine] == [("mine", "segmentation")]


def test_cli_serve_refuses_public_host(tmp_path, run_cli):
    code, _, stderr = run_cli("serve", "--host", "0.0.0.0", "--state-file", tmp_path / "s.json")
    assert code == 2 and "127.0.0.1" in stderr


def test_cli_ctrl_c_cancels_and_removes_partial_outputs(tmp_path, tiny_model):
    """SIGINT during a run: exit 130, message, and no output files left behind."""
    big = tmp_path / "big.tif"
    rng = np.random.default_rng(1)
    with rasterio.open(big, "w", driver="GTiff", width=1024, height=1024, count=3, dtype="uint8",
                       crs="EPSG:32615", transform=from_origin(360000, 4105000, 0.5, 0.5),
                       tiled=True, blockxsize=256, blockysize=256) as ds:
        ds.write(rng.integers(0, 255, (3, 1024, 1024), dtype=np.uint8))
    out = tmp_path / "out"
    env = repo_env(OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "landcover", "--hr", str(big), "--model",
                             str(tiny_model), "--output-dir", str(out), "--tile-size", "64", "--overlap", "16",
                             "--batch-size", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # Wait until the job really runs: its hidden temporary folder appears in the output folder.
    end = time.monotonic() + 240
    while not (out.is_dir() and any(p.name.startswith(".") for p in out.iterdir())):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the run never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr[-2000:]
    assert "cancelled" in stderr
    assert not out.exists()  # the run created it; partial files and the empty folder are gone
