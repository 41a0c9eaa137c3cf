"""Temporary output folders left by a killed job are removed by the next job writing to the same folder;
folders of live jobs, of other machines and young unowned ones are not."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.io import atomic
from backend.io.atomic import AtomicOutputs, remove_stale_temporaries
from ...conftest import repo_env

REPO = Path(__file__).resolve().parents[3]


def _temp_folder(directory: Path, name: str, owner: str | None, age_s: float = 0.0) -> Path:
    folder = directory / f".skysense-{name}.tmp"
    folder.mkdir()
    (folder / "classes.tif").write_bytes(b"half written")
    if owner is not None:
        (folder / ".owner").write_text(owner)
    if age_s:
        stamp = time.time() - age_s
        os.utime(folder, (stamp, stamp))
    return folder


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_outputs_dead_owner_removed_live_and_foreign_kept(tmp_path):
    host = socket.gethostname()
    dead = _temp_folder(tmp_path, "dead", f"{host} {_dead_pid()}")
    mine = _temp_folder(tmp_path, "mine", f"{host} {os.getpid()}")
    foreign = _temp_folder(tmp_path, "foreign", f"another-host.example {_dead_pid()}")
    garbled = _temp_folder(tmp_path, "garbled", "not a pid line")
    other = tmp_path / "result.tif"
    other.write_bytes(b"a finished output")

    assert remove_stale_temporaries(tmp_path) == [dead.name]
    assert not dead.exists()
    for kept in (mine, foreign, garbled, other):
        assert kept.exists()


def test_stale_outputs_unowned_folders_only_after_the_grace_period(tmp_path):
    young = _temp_folder(tmp_path, "young", None, age_s=60)
    old = _temp_folder(tmp_path, "old", None, age_s=atomic.UNOWNED_GRACE_S + 60)
    assert remove_stale_temporaries(tmp_path) == [old.name]
    assert young.exists() and not old.exists()


def test_stale_outputs_each_job_names_its_owner_and_sweeps_on_start(tmp_path):
    dead = _temp_folder(tmp_path, "dead", f"{socket.gethostname()} {_dead_pid()}")
    with AtomicOutputs(tmp_path) as outs:
        assert outs.removed_stale == [dead.name]
        owner = (outs._tmp / ".owner").read_text().split()
        assert owner == [socket.gethostname(), str(os.getpid())]
        outs.path_for(tmp_path / "out.txt").write_text("done")
    assert (tmp_path / "out.txt").read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no owner file or folder left behind


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_stale_outputs_killed_writer_is_cleaned_by_the_next_job(tmp_path):
    """A real process killed while writing (as the OOM killer does) leaves its folder; the next job removes it."""
    script = ("import sys, time\n"
              "from backend.io.atomic import AtomicOutputs\n"
              "outs = AtomicOutputs(sys.argv[1])\n"
              "outs.path_for(sys.argv[1] + '/classes.tif').write_bytes(b'x' * 4096)\n"
              "print('writing', flush=True)\n"
              "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                             env=repo_env(), text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        left = [p.name for p in tmp_path.iterdir()]
        assert len(left) == 1 and left[0].startswith(".skysense-")
        assert remove_stale_temporaries(tmp_path) == []  # still running: kept
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert [p.name for p in tmp_path.iterdir()] == left  # the kill left it behind
    with AtomicOutputs(tmp_path) as outs:
        assert outs.removed_stale == left
        outs.path_for(tmp_path / "classes.txt").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.txt"]
