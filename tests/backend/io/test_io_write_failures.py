"""Write failures GDAL does not raise: a GeoTIFF whose last blocks or directory could not be written when the
file was closed (disk full, a file size limit) must never be published as a finished output.

The real failure is produced with RLIMIT_FSIZE in a child process (the OS refuses writes past the limit,
as a full disk refuses them), so these run where that limit exists (Linux, macOS)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from backend.errors import OutputError
from backend.io import readback
from backend.io.atomic import AtomicOutputs, describe_os_error
from backend.io.readback import raster_read_back_problem

from ...conftest import repo_env

REPO = Path(__file__).resolve().parents[3]
posix_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_FSIZE")

# Child: write a 1536² class raster with StripWriter (no overviews) under a file size limit.
WRITER = """
import json, resource, sys
import numpy as np
from rasterio.transform import from_origin
from backend.io.raster import Grid
from backend.io.writer import StripWriter
limit, path = int(sys.argv[1]), sys.argv[2]
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
rng = np.random.default_rng(0)
writer = StripWriter(path, Grid("EPSG:32633", from_origin(500000, 4000000, 1, 1), 1536, 1536), overviews=False)
try:
    for row in range(0, 1536, 256):
        writer.write(rng.integers(1, 8, (256, 1536), dtype=np.uint8))
    writer.close()
    print(json.dumps({"ok": True}))
except Exception as exc:
    writer.discard()
    print(json.dumps({"ok": False, "type": type(exc).__name__, "message": str(exc)}))
"""


def _write_in_child(limit: int, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", WRITER, str(limit), str(path)], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env=repo_env())
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@posix_only
def test_write_failures_strip_writer_never_closes_a_cut_file_silently(tmp_path):
    full = tmp_path / "full.tif"
    assert _write_in_child(0, full) == {"ok": True}
    size = full.stat().st_size
    # One byte short, a few blocks short, and half: wherever the OS stops the file, close must not pass.
    for limit in (size - 1, size - 4096, size // 2):
        cut = tmp_path / f"cut_{limit}.tif"
        result = _write_in_child(limit, cut)
        assert result["ok"] is False, f"limit {limit} of {size} bytes: a cut file was closed as finished"
        assert result["type"] == "OutputError"
        assert f"could not write {cut}" in result["message"]
        assert "file size limit" in result["message"] or "file too large" in result["message"]


def _good_tif(path: Path) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=1024, height=1024, count=1, dtype="uint8", tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", crs="EPSG:32633",
                       transform=from_origin(500000, 4000000, 1, 1)) as dst:
        dst.write(np.random.default_rng(1).integers(0, 8, (1, 1024, 1024), dtype=np.uint8))
    return path


def test_write_failures_read_back_finds_missing_blocks(tmp_path):
    good = _good_tif(tmp_path / "good.tif")
    assert raster_read_back_problem(good) is None
    cut = tmp_path / "cut.tif"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # directory intact at the start, later tiles gone
    problem = raster_read_back_problem(cut)
    assert problem and "see previous exception" not in problem.lower()


def test_write_failures_commit_refuses_a_cut_raster_and_keeps_the_old_one(tmp_path):
    (tmp_path / "classes.tif").write_bytes(b"the previous good result")
    with pytest.raises(OutputError) as err:
        with AtomicOutputs(tmp_path) as outs:
            tmp = _good_tif(outs.path_for(tmp_path / "classes.tif"))
            outs.path_for(tmp_path / "classes.qml").write_text("<qgis/>")
            data = tmp.read_bytes()
            tmp.write_bytes(data[: len(data) // 2])
    assert f"could not write {tmp_path / 'classes.tif'}: the finished file does not read back" in str(err.value)
    assert (tmp_path / "classes.tif").read_bytes() == b"the previous good result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif"]  # nothing half-published


def test_write_failures_verified_file_is_not_decoded_twice(tmp_path, monkeypatch):
    good = _good_tif(tmp_path / "good.tif")
    assert raster_read_back_problem(good) is None
    calls = []
    monkeypatch.setattr(readback, "_decode_all", lambda *a, **k: calls.append(a))
    assert raster_read_back_problem(good) is None and calls == []
    _good_tif(good)  # rewritten: checked again
    raster_read_back_problem(good)
    assert calls


def test_write_failures_gdal_wrapped_errors_are_described_in_plain_words(tmp_path):
    import errno

    def wrapped(inner):
        try:
            try:
                raise inner
            except Exception as exc:
                raise RuntimeError("Write failed. See previous exception for details.") from exc
        except RuntimeError as outer:
            return outer

    assert describe_os_error(wrapped(OSError(errno.ENOSPC, "No space left on device"))) == "disk full"
    assert describe_os_error(wrapped(RuntimeError("_tiffWriteProc: No space left on device"))) == "disk full"
    assert describe_os_error(wrapped(RuntimeError("_tiffWriteProc: File too large."))).startswith("file too large")
    text = describe_os_error(wrapped(RuntimeError("TIFFAppendToStrip:Write error at scanline 512")))
    assert text.startswith("TIFFAppendToStrip:Write error") and "disk may be full" in text
    gpkg = describe_os_error(RuntimeError("b'sqlite3_exec(CREATE TRIGGER ...) failed: no such table: main.lc'"))
    assert gpkg == ("the GeoPackage could not be written completely: the disk may be full or failing, or a file "
                    "size limit was reached (SQLite: sqlite3_exec(CREATE TRIGGER ...) failed: no such table: main.lc)")
    assert describe_os_error(RuntimeError("database or disk is full")).startswith("the GeoPackage could not be")
    assert describe_os_error(RuntimeError("some other problem"), tmp_path) == "some other problem"


def _limited_cli_job(tmp_path, repo_root):
    """run(limit, out, *extra args): a land-cover CLI job on a 1024² raster in a child process whose files
    may not grow past `limit` bytes (0: no limit)."""
    import torch

    from models.checkpoint import save_model_file
    from models.registry import create_model

    torch.manual_seed(0)
    classes = json.loads((repo_root / "resources" / "palettes" / "loveda.json").read_text())["classes"]
    model = tmp_path / "tiny.pth"
    save_model_file(model, create_model("skysense_seg_tiny", num_classes=7),
                    {"task": "segmentation", "classes": classes, "bands": {"hr": [1, 2, 3]},
                     "normalization": {"hr": {"mean": [120.0] * 3, "std": [60.0] * 3}}, "tile_size": 256})
    image = tmp_path / "image.tif"
    rng = np.random.default_rng(3)
    with rasterio.open(image, "w", driver="GTiff", width=1024, height=1024, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4000000, 0.5, 0.5)) as dst:
        dst.write(rng.integers(0, 255, (3, 1024, 1024), dtype=np.uint8))

    def run(limit: int, out: Path, *extra):
        code = ("import resource, sys\n"
                f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})) if {limit} else None\n"
                "from backend import cli\n"
                "sys.exit(cli.main(sys.argv[1:]))\n")
        return subprocess.run([sys.executable, "-c", code, "landcover", "--hr", str(image), "--model", str(model),
                               "--output-dir", str(out), "--name", "lc", "--device", "cpu", *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=300,
                              env=repo_env(OMP_NUM_THREADS="1"))
    return run


@posix_only
def test_write_failures_landcover_job_under_a_file_size_limit_fails_clearly(tmp_path, repo_root):
    """The whole CLI job: wherever the limit cuts the class raster, the job fails naming the file and the
    likely cause, and the output folder is left as it was (here: not created)."""
    run = _limited_cli_job(tmp_path, repo_root)
    done = run(0, tmp_path / "unlimited", "--no-vectorize")
    assert done.returncode == 0, done.stderr[-2000:]
    size = (tmp_path / "unlimited" / "lc.tif").stat().st_size
    for limit in (size - 1, size // 2):
        out = tmp_path / f"limit_{limit}"
        failed = run(limit, out, "--no-vectorize")
        assert failed.returncode != 0, f"limit {limit} of {size}: the job reported success"
        assert f"could not write {out / 'lc.tif'}" in failed.stderr, failed.stderr[-2000:]
        assert "unexpectedly" not in failed.stderr
        assert not out.exists() or not any(out.iterdir())


@posix_only
def test_write_failures_a_cut_geopackage_fails_the_job_in_plain_words(tmp_path, repo_root):
    """The limit lets the class raster through and cuts the polygons' GeoPackage (SQLite then reports a failed
    statement, e.g. 'disk I/O error' or 'no such table'): the message leads with the cause, nothing is published."""
    run = _limited_cli_job(tmp_path, repo_root)
    done = run(0, tmp_path / "unlimited")
    assert done.returncode == 0, done.stderr[-2000:]
    tif, gpkg = ((tmp_path / "unlimited" / name).stat().st_size for name in ("lc.tif", "lc.gpkg"))
    assert gpkg > 2 * tif  # so a limit between them cuts the GeoPackage only
    for limit in ((tif + gpkg) // 2, gpkg - 1):
        out = tmp_path / f"limit_{limit}"
        failed = run(limit, out)
        assert failed.returncode != 0, f"limit {limit} of {gpkg}: the job reported success"
        assert (f"could not write {out / 'lc.gpkg'}: the GeoPackage could not be written completely: the disk may "
                "be full or failing, or a file size limit was reached (SQLite: ") in failed.stderr, failed.stderr[-2000:]
        assert not out.exists() or not any(out.iterdir())
