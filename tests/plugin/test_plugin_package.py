"""Plugin packaging: metadata, icons, palette copy, and no torch/rasterio in QGIS's Python."""
import configparser
import json
import subprocess
import sys
from pathlib import Path

from qgis.PyQt.QtSvg import QSvgRenderer
from ..conftest import repo_env

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "skysense_qgis"


def test_metadata_has_required_fields_and_licence_note():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "metadata.txt", encoding="utf-8")
    general = cfg["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                "repository", "tracker", "icon"):
        assert general.get(key, "").strip(), f"metadata.txt lacks {key}"
    assert general["name"] == "SkySense"
    assert general["qgisMinimumVersion"] == "3.22"
    assert "non-commercial" in general["about"]
    assert (PLUGIN / general["icon"]).is_file()


def test_plugin_metadata_is_the_top_level_file():
    assert (PLUGIN / "metadata.txt").read_bytes() == (ROOT / "metadata.txt").read_bytes()


def test_icons_are_valid_svg():
    icons = sorted((ROOT / "resources" / "icons").glob("*.svg"))
    assert {p.stem for p in icons} >= {"skysense", "landcover", "change", "damage", "finetune", "export"}
    for path in icons:
        assert QSvgRenderer(str(path)).isValid(), path


def test_damage_palette_copy_matches_resources():
    from skysense_qgis.styles import DAMAGE_CLASSES
    shared = json.loads((ROOT / "resources" / "palettes" / "damage.json").read_text())["classes"]
    assert DAMAGE_CLASSES == shared


def test_importing_the_whole_plugin_never_imports_torch_or_rasterio():
    code = (
        "import sys, pkgutil, importlib\n"
        "from qgis.core import QgsApplication\n"
        "app = QgsApplication([], False); app.initQgis()\n"
        "import skysense_qgis\n"
        "names = [m.name for m in pkgutil.walk_packages(skysense_qgis.__path__, 'skysense_qgis.')]\n"
        "for n in names: importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'rasterio', 'fiona', 'onnxruntime'))\n"
        "print(len(names), bad)\n"
        "app.exitQgis()\n"
        "sys.exit(1 if bad or len(names) < 20 else 0)\n")
    env = repo_env(QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
