"""Fixtures for the plugin tests (real QGIS, headless): sample rasters, a fake backend for UI unit
tests, and the real backend started by the plugin's own BackendManager."""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from osgeo import gdal
from ..conftest import repo_env

ROOT = Path(__file__).resolve().parents[2]
LOVEDA_CLASSES = json.loads((ROOT / "resources" / "palettes" / "loveda.json").read_text())["classes"]
gdal.UseExceptions()


# -- sample rasters ---------------------------------------------------------------------------
def write_georef_crop(src: Path, dest: Path, size: int = 256, epsg: int = 32650,
                      origin=(500000.0, 3400000.0), gsd: float = 0.3) -> Path:
    """A crop of a real (un-georeferenced) image placed on a UTM grid, as a GeoTIFF."""
    ulx, uly = origin
    gdal.Translate(str(dest), str(src), srcWin=[0, 0, size, size], outputSRS=f"EPSG:{epsg}",
                   outputBounds=[ulx, uly, ulx + size * gsd, uly - size * gsd], format="GTiff")
    return dest


@pytest.fixture
def loveda_crop(data_dir, tmp_path) -> Path:
    return write_georef_crop(data_dir / "loveda" / "img_dir" / "0.png", tmp_path / "loveda_20230514.tif")


@pytest.fixture
def joplin_crop(data_dir, tmp_path) -> Path:
    """A 256 px window of a georeferenced Joplin tile (EPSG:26915)."""
    src = sorted((data_dir / "joplin" / "pre").glob("*.tif"))[0]
    dest = tmp_path / "joplin_pre_20110520.tif"
    gdal.Translate(str(dest), str(src), srcWin=[256, 256, 256, 256], format="GTiff")
    return dest


def write_class_raster(like: Path, dest: Path) -> Path:
    """Class raster on the grid of `like` with values 1..7 in horizontal bands."""
    src = gdal.Open(str(like))
    drv = gdal.GetDriverByName("GTiff")
    out = drv.Create(str(dest), src.RasterXSize, src.RasterYSize, 1, gdal.GDT_Byte)
    out.SetGeoTransform(src.GetGeoTransform())
    out.SetProjection(src.GetProjection())
    band = out.GetRasterBand(1)
    rows = bytearray()
    for y in range(src.RasterYSize):
        rows += bytes([1 + (y * 7) // src.RasterYSize]) * src.RasterXSize
    band.WriteRaster(0, 0, src.RasterXSize, src.RasterYSize, bytes(rows))
    band.SetNoDataValue(0)
    out.FlushCache()
    out = None
    return dest


# -- fake backend (UI unit tests only) --------------------------------------------------------
class FakeBackend:
    """Speaks the documented HTTP API; jobs write a real class raster next to the request."""

    def __init__(self, job_seconds: float = 0.6):
        self.token = uuid.uuid4().hex
        self.job_seconds = job_seconds
        self.jobs = {}
        self.requests = []
        self.fail_with = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _run(self, job):
        if job["kind"] == "finetune":
            return self._run_finetune(job)
        start = time.monotonic()
        while time.monotonic() - start < self.job_seconds:
            if job["cancel"]:
                job.update(state="cancelled", message="cancelled")
                return
            job.update(state="running", progress=min(0.95, (time.monotonic() - start) / self.job_seconds),
                       message="tile 1/4 loss 0.5 epoch 1")
            time.sleep(0.05)
        if self.fail_with:
            job.update(state="failed", error=self.fail_with)
            return
        params = job["params"]
        out = Path(params["output_dir"]) / f"{params['name']}.tif"
        write_class_raster(Path(params["hr"][0]["path"]), out)
        job.update(state="done", progress=1.0, message="done",
                   result={"outputs": [{"path": str(out), "kind": "raster", "role": "classes"},
                                       {"path": str(out.with_suffix(".png")), "kind": "image", "role": "preview"}],
                           "classes": LOVEDA_CLASSES, "device": "cpu",
                           "metrics": {"megapixels": 0.0655, "seconds": 0.5, "precision": "bf16, OpenVINO"}})

    def _run_finetune(self, job):
        """Like the real trainer: `<name>_checkpoint.pth` appears once an epoch is done; then `<name>.pth`."""
        params = job["params"]
        out = Path(params["output_dir"])
        resumed = 1 if params.get("resume") and (out / f"{params['name']}_checkpoint.pth").exists() else 0
        job.update(state="running", progress=0.1, message="epoch 1/2: loss 0.9")
        (out / f"{params['name']}_checkpoint.pth").write_bytes(b"fake checkpoint")
        deadline = time.monotonic() + self.job_seconds
        while time.monotonic() < deadline:
            if job["cancel"]:
                job.update(state="cancelled", message="cancelled")
                return
            time.sleep(0.05)
        model = out / f"{params['name']}.pth"
        model.write_bytes(b"fake model")
        job.update(state="done", progress=1.0, message="done",
                   result={"outputs": [{"path": str(model), "kind": "model", "role": "model"}],
                           "model": str(model), "device": "cpu",
                           "loss_curve": [{"epoch": 1, "train_loss": 0.9, "val_loss": 1.0},
                                          {"epoch": 2, "train_loss": 0.6, "val_loss": 0.8}],
                           "metrics": {"overall_accuracy": 0.7, "miou": 0.5, "resumed_from_epoch": resumed}})

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self):
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    self._send(401, {"detail": "missing or wrong token"})
                    return False
                return True

            def do_GET(self):  # noqa: N802
                if not self._authorised():
                    return
                if self.path == "/health":
                    return self._send(200, {"status": "ok", "version": "fake", "device": "cpu",
                                            "gpu_name": None, "torch": "none"})
                if self.path == "/models":
                    return self._send(200, [{"path": "/models/a.pth", "name": "loveda", "task": "segmentation",
                                             "classes": LOVEDA_CLASSES, "bands": {}}])
                if self.path.startswith("/jobs/"):
                    job = fake.jobs.get(self.path.split("/")[2])
                    if job is None:
                        return self._send(404, {"detail": "unknown job"})
                    return self._send(200, {k: job[k] for k in ("id", "kind", "state", "progress", "message",
                                                                "result", "error")})
                self._send(404, {"detail": "not found"})

            def do_POST(self):  # noqa: N802
                if not self._authorised():
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append((self.path, body))
                if self.path == "/jobs":
                    if body.get("kind") not in ("landcover", "change", "damage", "finetune", "export"):
                        return self._send(422, {"detail": [{"loc": ["body", "kind"], "msg": "unknown kind"}]})
                    job = {"id": uuid.uuid4().hex, "kind": body["kind"], "state": "queued", "progress": 0.0,
                           "message": "", "result": None, "error": None, "params": body["params"],
                           "cancel": False}
                    fake.jobs[job["id"]] = job
                    threading.Thread(target=fake._run, args=(job,), daemon=True).start()
                    return self._send(200, {"id": job["id"], "state": "queued"})
                if self.path.endswith("/cancel"):
                    job = fake.jobs[self.path.split("/")[2]]
                    job["cancel"] = True
                    return self._send(200, {"id": job["id"], "state": job["state"]})
                self._send(404, {"detail": "not found"})

        return Handler


@pytest.fixture
def fake_backend():
    backend = FakeBackend()
    yield backend
    backend.close()


# -- helpers ---------------------------------------------------------------------------------
def wait_until(condition, timeout: float = 60.0, what: str = "condition"):
    """Spins the Qt event loop (tasks report back through it) until condition() is true."""
    from qgis.core import QgsApplication
    deadline = time.monotonic() + timeout
    while not condition():
        QgsApplication.processEvents()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def backend_python() -> str:
    """The backend interpreter `make test-plugin` passes in (the plugin never guesses sys.executable)."""
    path = os.environ.get("SKYSENSE_BACKEND_PYTHON") or str(ROOT / ".venv" / "backend" / "bin" / "python")
    assert Path(path).exists(), f"backend interpreter {path} not found (set SKYSENSE_BACKEND_PYTHON)"
    return path


@pytest.fixture(scope="session")
def plugin_helpers():
    """Helper functions for the plugin tests (conftest cannot be imported under --import-mode=importlib)."""
    from types import SimpleNamespace
    return SimpleNamespace(LOVEDA_CLASSES=LOVEDA_CLASSES, write_class_raster=write_class_raster,
                           write_georef_crop=write_georef_crop, wait_until=wait_until, FakeBackend=FakeBackend)


DEFAULT_LANDCOVER_MODEL = ROOT / "resources" / "models" / "landcover_loveda_tiny.pth"

_MAKE_MODEL = """
import json, sys
from models.registry import create_model
from models.checkpoint import save_model_file
classes = json.load(open('resources/palettes/loveda.json'))['classes']
model = create_model('skysense_seg_tiny', num_classes=len(classes))
save_model_file(sys.argv[1], model, {'task': 'segmentation', 'classes': classes, 'bands': {'hr': [1, 2, 3]},
    'normalization': {'hr': {'mean': [123.675, 116.28, 103.53], 'std': [58.395, 57.12, 57.375]}},
    'tile_size': 256, 'gsd': 0.3, 'trained_on': 'untrained (plugin plumbing test)'})
"""


@pytest.fixture(scope="session")
def landcover_model(tmp_path_factory, backend_python_session) -> Path:
    """The bundled default land-cover model; before it is trained, an untrained model of the same
    architecture made by the backend's own API (these tests check plumbing and styling, not accuracy)."""
    if DEFAULT_LANDCOVER_MODEL.is_file():
        return DEFAULT_LANDCOVER_MODEL
    import subprocess
    path = tmp_path_factory.mktemp("models") / "landcover_untrained.pth"
    env = repo_env(OMP_NUM_THREADS="1")
    proc = subprocess.run([backend_python_session, "-c", _MAKE_MODEL, str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="session")
def backend_python_session() -> str:
    path = os.environ.get("SKYSENSE_BACKEND_PYTHON") or str(ROOT / ".venv" / "backend" / "bin" / "python")
    assert Path(path).exists(), f"backend interpreter {path} not found (set SKYSENSE_BACKEND_PYTHON)"
    return path


@pytest.fixture
def joplin_pair(data_dir, tmp_path):
    """(pre crop in EPSG:26915, whole post tile in EPSG:4326): real imagery in two different CRSs."""
    pre = tmp_path / "joplin_pre_20110520.tif"
    gdal.Translate(str(pre), str(data_dir / "joplin" / "pre" / "tile_1361-10160.tif"), srcWin=[0, 0, 256, 256])
    return pre, data_dir / "joplin" / "post" / "tile_32524-5137.tif"
