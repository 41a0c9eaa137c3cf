#!/usr/bin/env bash
# Install the SkySense plugin into a QGIS profile (symlink, so `git pull` updates it), or build a zip.
#   scripts/install_plugin.sh                      # ~/.local/share/QGIS/QGIS3/profiles/default
#   scripts/install_plugin.sh --profile DIR        # DIR = a profile folder (…/profiles/<name>)
#   scripts/install_plugin.sh --zip OUT.zip        # a zip for "Plugins > Install from ZIP"
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROFILE="${HOME}/.local/share/QGIS/QGIS3/profiles/default"
ZIP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE="$2"; shift 2 ;;
        --zip) ZIP="$2"; shift 2 ;;
        -h|--help) sed -n 2,5p "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

if [ -n "$ZIP" ]; then
    # Links (metadata.txt, icons/) are resolved so the zip stands alone.
    python3 - "$ROOT" "$ZIP" <<'PY'
import os, sys, zipfile
root, out = sys.argv[1], os.path.abspath(sys.argv[2])
src = os.path.join(root, "skysense_qgis")
tmp = out + ".part"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
    for folder, dirs, files in os.walk(src, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".pyc"):
                continue
            path = os.path.join(folder, name)
            zf.write(path, os.path.join("skysense_qgis", os.path.relpath(path, src)))
os.replace(tmp, out)
print("wrote", out)
PY
    exit 0
fi

PLUGINS="$PROFILE/python/plugins"
mkdir -p "$PLUGINS" "$PROFILE/QGIS"
if [ -e "$PLUGINS/skysense_qgis" ] && [ ! -L "$PLUGINS/skysense_qgis" ]; then
    echo "$PLUGINS/skysense_qgis exists and is not a link; remove it first" >&2
    exit 1
fi
ln -sfn "$ROOT/skysense_qgis" "$PLUGINS/skysense_qgis"
INI="$PROFILE/QGIS/QGIS3.ini"
python3 - "$INI" <<'PY'
import configparser, sys
ini = sys.argv[1]
cfg = configparser.RawConfigParser()
cfg.optionxform = str  # QGIS keys are case-sensitive
cfg.read(ini)
if not cfg.has_section("PythonPlugins"):
    cfg.add_section("PythonPlugins")
cfg.set("PythonPlugins", "skysense_qgis", "true")
with open(ini, "w") as fh:
    cfg.write(fh, space_around_delimiters=False)
PY
echo "SkySense linked into $PLUGINS and enabled; backend interpreter: ${SKYSENSE_BACKEND_PYTHON:-$ROOT/.venv/backend/bin/python}"
