"""The engine run once at the server's start: it works, and leaves nothing behind."""
import tempfile

from backend.inference.engine_warmup import warm_up_engine


def test_the_start_s_engine_run_completes_and_removes_its_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seconds = warm_up_engine()
    assert seconds > 0
    assert list(tmp_path.iterdir()) == []  # its raster and outputs went with its temporary folder
