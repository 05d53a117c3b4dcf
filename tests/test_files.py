"""Atomic writes: the old content or the new, never half; nothing left behind on failure."""

from __future__ import annotations

import json

import pytest

from cnnctl import files


def test_write_text_and_json_replace_the_whole_file(tmp_path):
    path = tmp_path / "a.json"
    files.write_text(path, "old")
    files.write_json(path, {"b": 1, "when": tmp_path})
    assert json.loads(path.read_text()) == {"b": 1, "when": str(tmp_path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("precious")
    with pytest.raises(RuntimeError), files.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_temporary_names_keep_a_writer_suffix_and_are_recognisable(tmp_path):
    with files.atomic_path(tmp_path / "best.keras", suffix=".keras") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".best.keras.") and tmp.name.endswith(".tmp.keras")
        assert files.is_temporary(tmp)
        tmp.write_bytes(b"model")
    assert (tmp_path / "best.keras").read_bytes() == b"model"
    assert not files.is_temporary(tmp_path / "best.keras")


def test_an_unwritable_folder_is_an_oserror(tmp_path):
    with pytest.raises(OSError):
        files.write_text(tmp_path / "missing" / "x.txt", "x")
