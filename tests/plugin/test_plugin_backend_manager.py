"""BackendManager without a real server: interpreter choice and clear start-up errors."""
import json
import sys
from pathlib import Path

import pytest

from skysense_qgis import backend_manager
from skysense_qgis.backend_manager import BackendManager, BackendProcessError

ROOT = Path(__file__).resolve().parents[2]


def test_interpreter_comes_from_env_then_the_repository_venv(monkeypatch):
    monkeypatch.setenv("SKYSENSE_BACKEND_PYTHON", "/opt/py/bin/python")
    assert backend_manager.default_interpreter() == "/opt/py/bin/python"
    monkeypatch.delenv("SKYSENSE_BACKEND_PYTHON")
    assert backend_manager.default_backend_root() == ROOT
    expected = ROOT / ".venv" / "backend" / "bin" / "python"
    assert backend_manager.default_interpreter() == (str(expected) if expected.exists() else "")
    # Never QGIS's own executable, which is not a Python interpreter inside QGIS.
    assert backend_manager.default_interpreter() != sys.executable


def test_missing_interpreter_is_a_clear_error(tmp_path):
    manager = BackendManager(interpreter=str(tmp_path / "nope" / "python"), state_dir=str(tmp_path))
    with pytest.raises(BackendProcessError, match="does not exist"):
        manager.start()


def test_backend_folder_without_backend_is_a_clear_error(tmp_path):
    manager = BackendManager(interpreter=sys.executable, backend_root=str(tmp_path), state_dir=str(tmp_path / "s"))
    with pytest.raises(BackendProcessError, match="folder that contains backend/"):
        manager.start()


def test_a_process_that_dies_at_start_is_reported_with_its_exit_code(tmp_path):
    root = tmp_path / "repo"
    (root / "backend" / "server").mkdir(parents=True)
    (root / "backend" / "__init__.py").write_text("")
    (root / "backend" / "server" / "__init__.py").write_text("")
    (root / "backend" / "server" / "__main__.py").write_text(
        "import sys\nprint('torch is missing in this environment', file=sys.stderr)\nsys.exit(3)\n")
    manager = BackendManager(interpreter=sys.executable, backend_root=str(root), state_dir=str(tmp_path / "s"))
    manager.start()
    with pytest.raises(BackendProcessError, match=r"exit code 3\).*torch is missing"):
        manager.wait_ready(timeout=30)
    assert manager.has_exited()
    manager.stop()


def test_state_and_token_files_give_the_client(tmp_path):
    root = tmp_path / "repo"
    (root / "backend" / "server").mkdir(parents=True)
    (root / "backend" / "__init__.py").write_text("")
    (root / "backend" / "server" / "__init__.py").write_text("")
    # A stand-in server that only writes its state the way backend.server documents it, then waits.
    (root / "backend" / "server" / "__main__.py").write_text(
        "import json, os, sys, time\n"
        "state = sys.argv[sys.argv.index('--state-file') + 1]\n"
        "token = state[:-5] + '.token'\n"
        "open(token, 'w').write('s3cret\\n')\n"
        "json.dump({'port': 4321, 'pid': os.getpid(), 'token_file': token}, open(state + '.tmp', 'w'))\n"
        "os.replace(state + '.tmp', state)\n"
        "time.sleep(60)\n")
    manager = BackendManager(interpreter=sys.executable, backend_root=str(root), state_dir=str(tmp_path / "s"))
    try:
        client = manager.ensure_running(timeout=30)
        assert client.base_url == "http://127.0.0.1:4321"
        assert client._session.headers["Authorization"] == "Bearer s3cret"
        assert manager.is_running() and not manager.has_exited()
        assert "--parent-pid" in manager.process.args
    finally:
        manager.stop()
    assert manager.process is None
