#!/usr/bin/env bash
# Installs Debian's QGIS, Xvfb and venv support when they are missing.
set -euo pipefail
need=()
/usr/bin/python3 -c "import qgis.core" 2>/dev/null || need+=(qgis python3-qgis)
command -v xvfb-run >/dev/null || need+=(xvfb xauth)
/usr/bin/python3 -c "import ensurepip" 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -eq 0 ]; then echo "system packages present"; exit 0; fi
echo "installing system packages: ${need[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
