"""The server as a real subprocess: 127.0.0.1 only, 0600 token file, state file, shutdown."""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from ...conftest import repo_env

ROOT = Path(__file__).resolve().parents[3]


def _start(tmp_path, *extra):
    env = repo_env(OMP_NUM_THREADS="1")
    state = tmp_path / "run" / "state.json"
    proc = subprocess.Popen([sys.executable, "-m", "backend.server", "--port", "0", "--state-file", str(state),
                             "--log-file", str(tmp_path / "server.log"), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    end = time.monotonic() + 60
    while not state.exists():
        if proc.poll() is not None or time.monotonic() > end:
            out, err = proc.communicate(timeout=10) if proc.poll() is not None else (b"", b"")
            proc.kill()
            pytest.fail(f"server did not start: rc={proc.returncode} {err.decode()[-2000:]}")
        time.sleep(0.05)
    return proc, state


@pytest.fixture
def server(tmp_path):
    proc, state = _start(tmp_path, "--output-root", str(tmp_path / "outputs"))
    yield proc, state
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_server_process_state_token_and_loopback_only(server, tmp_path):
    proc, state_path = server
    state = json.loads(state_path.read_text())
    assert set(state) == {"port", "pid", "token_file", "version"}
    assert state["pid"] == proc.pid and 0 < state["port"] < 65536
    token_file = Path(state["token_file"])
    assert token_file.parent == state_path.parent
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    base = f"http://127.0.0.1:{state['port']}"
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.get("/health").status_code == 401
        health = http.get("/health", headers={"Authorization": f"Bearer {token}"})
        assert health.status_code == 200 and health.json()["pid"] == proc.pid
        assert http.get("/health", headers={"Authorization": f"Bearer {token}",
                                            "Origin": "http://x"}).status_code == 403
    # Bound to the loopback address only: the socket the process listens on says so.
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{state['port']}"], capture_output=True, text=True)
    if listening.returncode == 0 and listening.stdout.strip():
        local = [line.split()[3] for line in listening.stdout.strip().splitlines()]
        assert local == [f"127.0.0.1:{state['port']}"]
    # and a non-loopback address of this machine does not answer.
    other = _non_loopback_ip()
    if other:
        with pytest.raises(OSError):
            socket.create_connection((other, state["port"]), timeout=2).close()


def _non_loopback_ip():
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent for UDP connect
            ip = s.getsockname()[0]
        return None if ip.startswith("127.") else ip
    except OSError:
        return None


def test_server_process_shutdown_removes_state_and_token(server):
    proc, state_path = server
    state = json.loads(state_path.read_text())
    token = Path(state["token_file"]).read_text().strip()
    response = httpx.post(f"http://127.0.0.1:{state['port']}/shutdown",
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200
    assert proc.wait(timeout=30) == 0
    assert not state_path.exists() and not Path(state["token_file"]).exists()


def test_server_process_wrong_token_cannot_shut_it_down(server):
    proc, state_path = server
    state = json.loads(state_path.read_text())
    response = httpx.post(f"http://127.0.0.1:{state['port']}/shutdown",
                          headers={"Authorization": "Bearer guess"}, timeout=30)
    assert response.status_code == 401
    time.sleep(0.3)
    assert proc.poll() is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "localhost"])
def test_server_process_refuses_other_hosts(tmp_path, host):
    result = subprocess.run([sys.executable, "-m", "backend.server", "--host", host,
                             "--state-file", str(tmp_path / "s.json")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env=repo_env())
    assert result.returncode == 2
    assert "only binds 127.0.0.1" in result.stderr
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "s.token").exists()


def test_server_process_token_file_replaced_with_fresh_token(tmp_path):
    token_file = tmp_path / "run" / "state.token"
    token_file.parent.mkdir()
    token_file.write_text("old-token")
    os.chmod(token_file, 0o644)
    proc, state = _start(tmp_path)
    try:
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token_file.read_text().strip() != "old-token"
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    assert not state.exists()


def test_server_process_stops_when_its_parent_is_gone(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    proc, state = _start(tmp_path, "--parent-pid", str(parent.pid))
    try:
        assert proc.poll() is None
        parent.kill()
        parent.wait(timeout=30)
        assert proc.wait(timeout=60) == 0
        assert not state.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
