"""Starts, finds and stops the local backend process (`python -m backend.server`).

QGIS's own `sys.executable` is the QGIS binary, so the backend interpreter is always
an explicit path: SKYSENSE_BACKEND_PYTHON, then the plugin setting, then
<repo>/.venv/backend/bin/python when the plugin lives inside the repository.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from .backend_client import BackendClient, BackendError, BackendUnavailable

PLUGIN_DIR = Path(__file__).resolve().parent


def default_backend_root() -> Optional[Path]:
    """The repository folder holding backend/ when the plugin is run from (or linked to) it."""
    candidate = PLUGIN_DIR.parent
    return candidate if (candidate / "backend" / "__init__.py").is_file() else None


def default_interpreter(backend_root: Optional[Path] = None) -> str:
    env = os.environ.get("SKYSENSE_BACKEND_PYTHON")
    if env:
        return env
    root = backend_root or default_backend_root()
    if root is not None:
        for rel in (".venv/backend/bin/python", ".venv/backend/Scripts/python.exe"):
            if (root / rel).exists():
                return str(root / rel)
    return ""


class BackendProcessError(BackendError):
    """The backend process could not be started or stopped unexpectedly."""


class BackendManager:
    """Owns one backend process and the client talking to it."""

    def __init__(self, interpreter: str = "", backend_root: Optional[str] = None,
                 state_dir: Optional[str] = None):
        self.backend_root = Path(backend_root) if backend_root else default_backend_root()
        self.interpreter = interpreter or default_interpreter(self.backend_root)
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="skysense_backend_"))
        self.process: Optional[subprocess.Popen] = None
        self._client: Optional[BackendClient] = None
        self._log_handle = None

    # -- paths -----------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.state_dir / "backend_state.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "backend.log"

    # -- lifecycle -------------------------------------------------------
    def start(self) -> None:
        """Spawns the server; returns at once (call wait_ready or poll is_ready)."""
        if self.process is not None and self.process.poll() is None:
            return
        self._check_can_start()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.state_file.exists():
            self.state_file.unlink()
        self._client = None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.backend_root), env.get("PYTHONPATH", "")) if p)
        # QGIS's Python settings must not leak into the backend interpreter.
        for key in ("PYTHONHOME", "QGIS_PREFIX_PATH"):
            env.pop(key, None)
        self._close_log()
        self._log_handle = open(self.log_file, "ab")
        # --parent-pid: the server stops on its own if QGIS goes away without stopping it.
        cmd = [self.interpreter, "-m", "backend.server", "--port", "0", "--state-file", str(self.state_file),
               "--parent-pid", str(os.getpid())]
        try:
            self.process = subprocess.Popen(cmd, cwd=str(self.backend_root), env=env,
                                            stdin=subprocess.DEVNULL, stdout=self._log_handle,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise BackendProcessError(f"Could not start the backend with {self.interpreter}: {exc}") from exc

    def _check_can_start(self) -> None:
        if not self.interpreter:
            raise BackendProcessError(
                "No backend Python interpreter is set: choose one in the Backend section "
                "(a Python with PyTorch and the SkySense backend requirements).")
        if not Path(self.interpreter).exists():
            raise BackendProcessError(f"The backend interpreter {self.interpreter} does not exist.")
        if self.backend_root is None or not (self.backend_root / "backend").is_dir():
            raise BackendProcessError(
                "The SkySense backend folder was not found: set the folder that contains backend/ "
                "in the Backend section.")

    def attach(self, client: BackendClient) -> None:
        """Use a backend started elsewhere (e.g. by hand, or over an SSH tunnel to a GPU machine)."""
        self.stop()
        self._client = client

    def is_ready(self) -> bool:
        """True once the server wrote its state file; raises if the process already died."""
        if self._client is not None:
            return True
        if self.process is not None and self.process.poll() is not None:
            raise BackendProcessError(self.exit_message())
        if not self.state_file.exists():
            return False
        try:
            state = json.loads(self.state_file.read_text())
            token_file = Path(state.get("token_file") or self.state_file.with_name("token"))
            if not token_file.is_absolute():
                token_file = self.state_file.parent / token_file
            token = token_file.read_text().strip()
            port = int(state["port"])
        except (ValueError, KeyError, OSError):
            return False  # state being written; try again on the next poll
        self._client = BackendClient.for_port(port, token)
        return True

    def wait_ready(self, timeout: float = 120.0, poll: float = 0.2) -> BackendClient:
        """Blocks until the server listens (use from worker threads or scripts)."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise BackendProcessError(
                    f"The backend did not start within {timeout:.0f} s; see the log {self.log_file}.")
            time.sleep(poll)
        return self._client

    def ensure_running(self, timeout: float = 120.0) -> BackendClient:
        if not self.is_running():
            self.start()
        return self.wait_ready(timeout)

    def is_running(self) -> bool:
        if self.process is None:
            return self._client is not None  # attached to an external backend
        return self.process.poll() is None

    def has_exited(self) -> bool:
        """True when a process was started here and is gone (crash, kill, stop)."""
        return self.process is not None and self.process.poll() is not None

    def exit_message(self) -> str:
        code = self.process.poll() if self.process is not None else None
        tail = self.log_tail()
        text = f"The SkySense backend process stopped (exit code {code})."
        return text + (f" Last log line: {tail}" if tail else "")

    def log_tail(self) -> str:
        try:
            lines = [ln for ln in self.log_file.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1][-300:] if lines else ""

    def client(self) -> BackendClient:
        if not self.is_ready():
            raise BackendUnavailable("The SkySense backend is not running: start it in the Backend section.")
        return self._client

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process, self._client = self.process, None, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


_shared: Optional[BackendManager] = None


def shared_manager() -> BackendManager:
    """The one manager the dock and the Processing algorithms share."""
    global _shared
    if _shared is None:
        from .settings import PluginSettings
        settings = PluginSettings()
        _shared = BackendManager(settings.interpreter(), settings.backend_root() or None)
    return _shared


def set_shared_manager(manager: Optional[BackendManager]) -> None:
    global _shared
    _shared = manager
