"""python -m backend.cli export-onnx MODEL.pth OUT.onnx [--tile-size N]: a usable .onnx with the metadata."""
from __future__ import annotations

import json


def test_cli_export_onnx_writes_a_listed_model(exported_landcover, tmp_path, run_cli):
    folder = tmp_path / "models"
    code, stdout, stderr = run_cli("export-onnx", exported_landcover["pth"], folder / "lc32.onnx",
                                 "--tile-size", 32)
    assert code == 0, stderr
    answer = json.loads(stdout)
    assert answer == {"path": str(folder / "lc32.onnx"), "task": "segmentation", "tile_size": 32,
                      "inputs": ["image"], "classes": 7}
    code, stdout, stderr = run_cli("models", "--models-dir", folder)
    assert code == 0, stderr
    mine = [m for m in json.loads(stdout) if m["source"] == "user"]
    assert [(m["name"], m["task"], m["tile_size"], m["error"]) for m in mine] == [("lc32", "segmentation", 32, None)]


def test_cli_export_onnx_bad_input_exits_2(exported_landcover, tmp_path, run_cli):
    code, _, stderr = run_cli("export-onnx", exported_landcover["pth"], tmp_path / "out.pth")
    assert code == 2 and "must end in .onnx" in stderr
    code, _, stderr = run_cli("export-onnx", tmp_path / "missing.pth", tmp_path / "out.onnx")
    assert code == 2 and "model file not found" in stderr
    code, _, stderr = run_cli("export-onnx", exported_landcover["pth"], tmp_path / "out.onnx", "--tile-size", 50)
    assert code == 2 and "multiple of 32" in stderr
    code, _, stderr = run_cli("export-onnx", exported_landcover["onnx"], tmp_path / "out.onnx")
    assert code == 2 and "lc_tiny.onnx" in stderr
    assert not list(tmp_path.glob("out.*"))
