"""The last CPU job's model and tile, noted on disk for the next backend's start."""
import json
import logging

import pytest

from backend.inference import last_job


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    monkeypatch.setattr(last_job, "_WRITTEN", {})


def test_the_note_round_trips_and_is_rewritten_only_when_it_changes(tmp_path, monkeypatch):
    folder, model = tmp_path / "cache" / "openvino", tmp_path / "lc.pth"
    model.write_bytes(b"a model file")
    assert last_job.read_last_job(folder) is None  # nothing noted yet
    last_job.record_last_job(folder, model, 576, True)
    assert last_job.read_last_job(folder) == (model.resolve(), 576, True)
    assert [p.name for p in folder.iterdir()] == [last_job.FILE_NAME]  # no temporary file left
    writes = []
    real_replace = last_job.os.replace
    monkeypatch.setattr(last_job.os, "replace", lambda *a: writes.append(a) or real_replace(*a))
    last_job.record_last_job(folder, model, 576, True)  # the same job again: no write
    assert writes == []
    last_job.record_last_job(folder, model, 608, False)
    assert len(writes) == 1 and last_job.read_last_job(folder) == (model.resolve(), 608, False)
    model.unlink()
    assert last_job.read_last_job(folder) is None  # the model file is gone: nothing to prepare


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", json.dumps({"model": "x"}),
                                  json.dumps({"model": "m", "tile_size": "big", "amp": True})])
def test_a_malformed_note_is_ignored_with_a_warning(tmp_path, caplog, text):
    (tmp_path / last_job.FILE_NAME).write_text(text)
    with caplog.at_level(logging.WARNING):
        assert last_job.read_last_job(tmp_path) is None
    assert "ignoring the last job's note" in caplog.text


def test_a_note_that_cannot_be_written_costs_only_the_head_start(tmp_path, caplog):
    blocked = tmp_path / "openvino"
    blocked.write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING):
        last_job.record_last_job(blocked, tmp_path / "lc.pth", 576, True)  # no exception: the job goes on
    assert "could not note the last job's model for the next start" in caplog.text
    assert blocked.read_text() == "a file where the folder should be"
