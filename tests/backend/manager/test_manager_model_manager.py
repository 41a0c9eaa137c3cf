"""Model manager: install by path or URL, always verified by sha256, never half-written."""
import hashlib
import http.server
import threading
from functools import partial

import pytest

from backend import model_manager
from backend.errors import InputError


@pytest.fixture()
def weights(tmp_path):
    path = tmp_path / "src" / "weights.pth"
    path.parent.mkdir()
    path.write_bytes(b"\x80\x02fake-but-real-bytes" * 1000)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def loopback_server(tmp_path, weights):
    """A file server on 127.0.0.1 only (tests never leave this machine)."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(weights[0].parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_install_from_url_verifies_and_places_file(tmp_path, weights, loopback_server):
    path, digest = weights
    seen = []
    dest = model_manager.install_from_url(f"{loopback_server}/weights.pth", digest,
                                          dest_dir=tmp_path / "models",
                                          progress=lambda done, total: seen.append((done, total)))
    assert dest == tmp_path / "models" / "weights.pth"
    assert dest.read_bytes() == path.read_bytes()
    assert seen and seen[-1][0] == path.stat().st_size
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["weights.pth"]


def test_install_from_url_sha_mismatch_keeps_old_file(tmp_path, weights, loopback_server):
    models = tmp_path / "models"
    models.mkdir()
    (models / "weights.pth").write_bytes(b"previous good model")
    with pytest.raises(InputError, match="sha256 mismatch"):
        model_manager.install_from_url(f"{loopback_server}/weights.pth", "0" * 64, dest_dir=models)
    assert (models / "weights.pth").read_bytes() == b"previous good model"
    assert [p.name for p in models.iterdir()] == ["weights.pth"], "no .part file may remain"


def test_install_from_url_missing_file_names_url(tmp_path, weights, loopback_server):
    with pytest.raises(InputError, match="could not download .*missing.pth"):
        model_manager.install_from_url(f"{loopback_server}/missing.pth", weights[1],
                                       dest_dir=tmp_path / "models")


def test_install_from_file_url(tmp_path, weights):
    path, digest = weights
    dest = model_manager.install_from_url(path.as_uri(), digest, name="official_hr.pth",
                                          dest_dir=tmp_path / "m")
    assert dest.name == "official_hr.pth" and dest.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("sha", ["abc", "g" * 64, ""])
def test_bad_sha_text_refused(tmp_path, weights, sha):
    with pytest.raises(InputError, match="sha256 must be 64 hexadecimal"):
        model_manager.install_from_url(weights[0].as_uri(), sha, dest_dir=tmp_path)


@pytest.mark.parametrize("name", ["../evil.pth", "sub/dir.pth", "model.txt"])
def test_bad_names_refused(tmp_path, weights, name):
    with pytest.raises(InputError):
        model_manager.install_from_path(weights[0], name=name, dest_dir=tmp_path / "m")


def test_unsupported_scheme_refused(tmp_path, weights):
    with pytest.raises(InputError, match="unsupported URL scheme"):
        model_manager.install_from_url("ftp://127.0.0.1/x.pth", weights[1], dest_dir=tmp_path)


def test_install_from_path_and_listing(tmp_path, weights):
    path, digest = weights
    dest = model_manager.install_from_path(path, sha256=digest, dest_dir=tmp_path / "m")
    entries = model_manager.list_model_files([tmp_path / "m"])
    assert [e.path for e in entries] == [dest] and entries[0].source == "user"
    with pytest.raises(InputError, match="sha256 mismatch"):
        model_manager.install_from_path(path, name="other.pth", sha256="1" * 64, dest_dir=tmp_path / "m")
    assert not (tmp_path / "m" / "other.pth").exists()


def test_bundled_models_are_listed_first():
    entries = model_manager.list_model_files()
    bundled = [e for e in entries if e.source == "bundled"]
    assert entries[: len(bundled)] == bundled


def test_install_removes_parts_left_by_a_dead_download(tmp_path, weights, loopback_server):
    """A download killed half-way leaves .NAME.HOST~PID.*.part (can be gigabytes); the next install of that name
    removes it when its process is gone, and keeps parts of live processes and of other machines."""
    import os
    import socket
    import subprocess
    import sys

    path, digest = weights
    dest_dir = tmp_path / "m"
    dest_dir.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host = socket.gethostname()
    dead = dest_dir / f".weights.pth.{host}~{child.pid}.abc123.part"
    live = dest_dir / f".weights.pth.{host}~{os.getpid()}.def456.part"
    foreign = dest_dir / f".weights.pth.other-host~{child.pid}.ghi789.part"
    other_name = dest_dir / f".other.pth.{host}~{child.pid}.jkl012.part"
    for part in (dead, live, foreign, other_name):
        part.write_bytes(b"half a checkpoint")
    dest = model_manager.install_from_url(f"{loopback_server}/weights.pth", sha256=digest, dest_dir=dest_dir)
    assert dest.read_bytes() == path.read_bytes()
    assert not dead.exists()
    assert live.exists() and foreign.exists() and other_name.exists()
    assert sorted(p.name for p in dest_dir.iterdir() if p.name.startswith(".weights.pth.")) == sorted(
        [live.name, foreign.name])  # the finished download left no part of its own
