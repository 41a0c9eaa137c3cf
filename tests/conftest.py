"""Shared fixtures: the real sample data folder (never copied into the repo)."""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKYSENSE_DATA", ROOT.parent / "shared" / "data")).resolve()
# Backends started by tests (and their children) prepare no OpenVINO in the background: that would write
# into the user's cache and take CPU from the tests. The tests of that preparation turn it on themselves.
os.environ["SKYSENSE_OPENVINO_WARMUP"] = "0"
# Nor do tests read or write the user's cache (~/.cache/skysense-qgis): what an earlier run left there (an
# OpenVINO IR, say) would change which runtime a test's job picks. One empty cache per test session.
_TEST_CACHE = tempfile.mkdtemp(prefix="skysense-test-cache-")
os.environ["SKYSENSE_CACHE"] = _TEST_CACHE
atexit.register(shutil.rmtree, _TEST_CACHE, True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data; tests that need real data fail loudly if it is missing."""
    assert DATA.is_dir(), f"real sample data not found at {DATA} (set SKYSENSE_DATA)"
    return DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def repo_env(**extra) -> dict:
    """os.environ for a child Python process: the repo first on PYTHONPATH, whatever was there kept
    (an environment that brings its packages through PYTHONPATH still finds them), plus `extra`."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
