#!/usr/bin/env bash
# `make screenshot`: real QGIS desktop under Xvfb, temporary profile with the SkySense plugin enabled,
# a real LoveDA tile (georeferenced copy in a temp folder), "Map land cover" clicked in the dock,
# and a PNG of the whole window (dock + styled result) written to docs/screenshot.png.
#
# Env: SKYSENSE_DATA (sample data), SKYSENSE_BACKEND_PYTHON (backend interpreter, default the repo's
# .venv/backend), SKYSENSE_SCREENSHOT_MODEL (model file; default: the backend's bundled model),
# SCREENSHOT_OUT (default docs/screenshot.png), SCREENSHOT_TIMEOUT (seconds, default 420).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${SKYSENSE_DATA:-$ROOT/../shared/data}"
OUT="${SCREENSHOT_OUT:-$ROOT/docs/screenshot.png}"
TIMEOUT="${SCREENSHOT_TIMEOUT:-420}"
export SKYSENSE_BACKEND_PYTHON="${SKYSENSE_BACKEND_PYTHON:-$ROOT/.venv/backend/bin/python}"
PPY="$ROOT/.venv/plugin/bin/python"
[ -x "$PPY" ] || PPY=/usr/bin/python3
command -v qgis >/dev/null || { echo "qgis is not installed (run make setup)" >&2; exit 1; }
command -v xvfb-run >/dev/null || { echo "xvfb-run is not installed (run make setup)" >&2; exit 1; }
[ -x "$SKYSENSE_BACKEND_PYTHON" ] || { echo "backend interpreter $SKYSENSE_BACKEND_PYTHON not found" >&2; exit 1; }
SRC="$DATA/loveda/img_dir/1.png"
[ -f "$SRC" ] || { echo "sample tile $SRC not found (set SKYSENSE_DATA)" >&2; exit 1; }

WORK="$(mktemp -d /tmp/skysense_screenshot.XXXXXX)"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
PROFILE="$WORK/profiles/default"
mkdir -p "$PROFILE/python/plugins" "$PROFILE/QGIS" "$WORK/results" "$WORK/runtime"
chmod 700 "$WORK/runtime"
ln -s "$ROOT/skysense_qgis" "$PROFILE/python/plugins/skysense_qgis"
cat > "$PROFILE/QGIS/QGIS3.ini" <<INI
[PythonPlugins]
skysense_qgis=true

[qgis]
checkVersion=false
showTips=false
allowVersionCheck=false
newProjectDefault=false

[core]
NewsFeed\\httpsfeedqgisorg\\disabled=true

[SkySense]
output_dir=$WORK/results
INI

# LoveDA tiles carry no CRS: place this one on a UTM grid at its ~0.3 m resolution (Nanjing area).
"$PPY" - "$SRC" "$WORK/loveda_nanjing_20230514.tif" <<'PY'
import sys
from osgeo import gdal
gdal.UseExceptions()
src, dst = sys.argv[1], sys.argv[2]
ds = gdal.Open(src)
w, h = ds.RasterXSize, ds.RasterYSize
x0, y0, gsd = 668000.0, 3550000.0, 0.3
gdal.Translate(dst, ds, outputSRS="EPSG:32650", outputBounds=[x0, y0, x0 + w * gsd, y0 - h * gsd],
               format="GTiff", creationOptions=["COMPRESS=DEFLATE", "TILED=YES"])
PY

cat > "$WORK/drive.py" <<'PY'
"""Runs inside the QGIS desktop (qgis --code): load the tile, click 'Map land cover', wait, grab."""
import os
import time

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import QApplication, QDialog, QDockWidget
from qgis.utils import iface, plugins

WORK = os.environ["SKYSENSE_SHOT_WORK"]
OUT = os.environ["SKYSENSE_SHOT_OUT"]
DEADLINE = time.monotonic() + float(os.environ["SKYSENSE_SHOT_TIMEOUT"]) - 30
state = {"phase": "start", "settle": 0}


def log(text):
    with open(os.path.join(WORK, "drive.log"), "a") as fh:
        fh.write(text + "\n")


def close_dialogs():
    for widget in QApplication.topLevelWidgets():
        if isinstance(widget, QDialog) and widget.isVisible():
            widget.reject()


def finish(ok):
    window = iface.mainWindow()
    image = window.grab()
    tmp = OUT + ".part.png"
    image.save(tmp, "PNG")
    os.replace(tmp, OUT)
    with open(os.path.join(WORK, "status"), "w") as fh:
        fh.write("ok" if ok else "failed: " + state.get("error", "timeout"))
    log(f"saved {OUT} ok={ok}")
    plugin = plugins.get("skysense_qgis")
    if plugin is not None and plugin.dock is not None:
        plugin.dock.manager.stop()
    QgsProject.instance().removeAllMapLayers()
    QTimer.singleShot(200, QgsApplication.exit)


def start():
    close_dialogs()
    window = iface.mainWindow()
    window.showNormal()
    window.resize(1600, 1000)
    window.move(0, 0)
    plugin = plugins["skysense_qgis"]
    layer = QgsRasterLayer(os.path.join(WORK, "loveda_nanjing_20230514.tif"), "LoveDA tile (Nanjing, 0.3 m)")
    QgsProject.instance().addMapLayer(layer)
    iface.setActiveLayer(layer)
    plugin.show_section(0)
    dock = plugin.dock
    for name in ("Browser", "Browser2"):
        panel = window.findChild(QDockWidget, name)
        if panel is not None:
            panel.hide()
    window.resizeDocks([dock], [470], Qt.Horizontal)
    page = dock.landcover
    page.hr_layer.setLayer(layer)
    page.overlap.setValue(64)
    page.device.setCurrentIndex(page.device.findData("auto"))
    model = os.environ.get("SKYSENSE_SCREENSHOT_MODEL")
    if model:
        page.model.set_model_path(model)
    dock.output_dir.setFilePath(os.path.join(WORK, "results"))
    iface.mapCanvas().setExtent(layer.extent())
    page.run_button.click()
    state["phase"] = "running"
    log("clicked Map land cover")


def poll():
    plugin = plugins.get("skysense_qgis")
    dock = plugin.dock if plugin else None
    if state["phase"] == "running" and dock is not None:
        if dock.last_result is not None:
            state["phase"] = "done"
            group = dock.last_group
            # Show the class raster over the image; polygons are in the group but hidden for a clean view.
            group.setExpanded(True)
            for node in group.findLayers():
                if node.layer().type() == node.layer().VectorLayer:
                    node.setItemVisibilityChecked(False)
                    node.setExpanded(False)
                else:
                    node.layer().renderer().setOpacity(0.7)
                    node.setExpanded(True)
            for node in QgsProject.instance().layerTreeRoot().children():
                node.setExpanded(node.name() == group.name())
            state["expand"] = group
            dock.landcover.aoi.clear()
            iface.mapCanvas().setExtent(dock.last_group.findLayers()[0].layer().extent())
            iface.mapCanvas().refresh()
            log("result loaded: " + ", ".join(n.layer().name() for n in group.findLayers()))
        elif dock.task is None and "failed" in dock.job_panel.status.text():
            state["error"] = dock.job_panel.status.text()
            state["phase"] = "failed"
    if state["phase"] == "done":
        state["settle"] += 1
        # The tree view syncs node state lazily: expand the result group (class legend) once it exists.
        view = iface.layerTreeView()
        group = state.get("expand")
        if group is not None and hasattr(view, "node2index"):
            view.setExpanded(view.node2index(group), True)
            for node in group.findLayers():
                view.setExpanded(view.node2index(node), node.layer().type() != node.layer().VectorLayer)
        if state["settle"] >= 12 and not iface.mapCanvas().isDrawing():
            timer.stop()
            finish(True)
            return
    if state["phase"] == "failed" or time.monotonic() > DEADLINE:
        timer.stop()
        log("failed: " + state.get("error", "timeout"))
        finish(False)


QTimer.singleShot(3000, start)
timer = QTimer()
timer.setInterval(500)
timer.timeout.connect(poll)
timer.start()
PY

export SKYSENSE_SHOT_WORK="$WORK" SKYSENSE_SHOT_OUT="$OUT" SKYSENSE_SHOT_TIMEOUT="$TIMEOUT"
export XDG_RUNTIME_DIR="$WORK/runtime" QT_QPA_PLATFORM=xcb OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$(dirname "$OUT")"
echo "starting QGIS under Xvfb (profile in $WORK)..."
set +e
timeout "$TIMEOUT" xvfb-run -a -s "-screen 0 1600x1000x24" \
    qgis --profiles-path "$WORK" --nologo --noversioncheck --code "$WORK/drive.py" \
    >"$WORK/qgis.log" 2>&1
rc=$?
set -e
cat "$WORK/drive.log" 2>/dev/null || true
status="$(cat "$WORK/status" 2>/dev/null || echo "QGIS exited (rc $rc) before the screenshot")"
if [ "$status" != "ok" ]; then
    echo "screenshot failed: $status" >&2
    tail -20 "$WORK/qgis.log" >&2 || true
    exit 1
fi
echo "wrote $OUT"
