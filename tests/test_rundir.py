"""cnnctl.rundir: run names, new run directories, the manifest and finding a run directory again."""

from __future__ import annotations

import errno
import json

import pytest
from conftest import leftovers

from cnnctl import files, rundir
from cnnctl.errors import RunError

# ---------------------------------------------------------------- run names


def test_run_names_are_one_safe_path_component():
    for name in ["run", "run-2", "a.b_c", "x" * 64]:
        assert rundir.check_name(name) == name
    for name in ["trailing\n", "x" * 65, "a/b", "..", ""]:
        with pytest.raises(RunError, match="is not allowed"):
            rundir.check_name(name)


@pytest.mark.parametrize("name", ["/abs", "a/b/c", "../escape", "a..b", ".hidden", "-flag", "bell\x07", "nul\x00",
                                  "red\x1b[31m", "tab\tname", "two\nlines", "name with space", "caf\u00e9"])
def test_a_refused_name_is_quoted_with_its_control_characters_escaped(name):
    with pytest.raises(RunError) as info:
        rundir.check_name(name)
    message = str(info.value)
    assert message.startswith(f"run name {name!r} is not allowed") and "\x1b" not in message and "\n" not in message


# ---------------------------------------------------------------- create


def test_create_makes_the_runs_directory_and_an_empty_run(tmp_path):
    run = rundir.create(tmp_path / "deep" / "runs", "tiny")
    assert run == tmp_path / "deep" / "runs" / "tiny"
    assert [p.name for p in run.iterdir()] == [rundir.CHECKPOINTS] and not any((run / rundir.CHECKPOINTS).iterdir())


def test_create_numbers_the_runs_of_a_name(tmp_path):
    made = [rundir.create(tmp_path, "tiny").name for _ in range(3)]
    (tmp_path / "tiny-4").write_text("a file in the way")
    made += [rundir.create(tmp_path, "tiny").name, rundir.create(tmp_path, "other").name]
    assert made == ["tiny", "tiny-2", "tiny-3", "tiny-5", "other"]


def test_create_refuses_a_bad_name_before_making_anything(tmp_path):
    with pytest.raises(RunError, match="is not allowed"):
        rundir.create(tmp_path / "runs", "../escape")
    assert not (tmp_path / "runs").exists()


def test_rundir_create_in_an_unwritable_place_is_a_run_error(unwritable_runs_dir):
    with pytest.raises(RunError, match=r"cannot create the runs directory|not writable") as info:
        rundir.create(unwritable_runs_dir, "run")
    assert str(info.value).startswith(str(unwritable_runs_dir))
    assert not (unwritable_runs_dir / "run").exists()


# ---------------------------------------------------------------- the manifest


def test_manifest_update_merges_and_rewrites_the_file(tmp_path):
    manifest = rundir.Manifest(tmp_path)
    manifest.update(status="running", epochs=3)
    manifest.update(status="completed", best_epoch=2)
    assert json.loads((tmp_path / rundir.MANIFEST).read_text()) == {"status": "completed", "epochs": 3,
                                                                    "best_epoch": 2}
    assert rundir.Manifest.load(tmp_path).data == manifest.data
    assert leftovers(tmp_path) == []


def test_a_manifest_update_that_fails_leaves_the_previous_file(tmp_path, monkeypatch):
    manifest = rundir.Manifest(tmp_path)
    manifest.update(status="running")
    before = (tmp_path / rundir.MANIFEST).read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)  # the new content is written, not yet in place
    with pytest.raises(OSError):
        manifest.update(status="completed")
    assert (tmp_path / rundir.MANIFEST).read_bytes() == before and leftovers(tmp_path) == []


def test_loading_a_missing_or_broken_manifest_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match=r"manifest\.json: not found"):
        rundir.Manifest.load(tmp_path)
    (tmp_path / rundir.MANIFEST).write_text("{not json")
    with pytest.raises(RunError, match=r"manifest\.json: unreadable"):
        rundir.Manifest.load(tmp_path)


# ---------------------------------------------------------------- resolve


def test_resolve_takes_a_run_directory_or_its_manifest(tmp_path):
    run = rundir.create(tmp_path, "tiny")
    (run / rundir.CONFIG).write_text("name: tiny\n")
    rundir.Manifest(run).update(status="completed")
    assert rundir.resolve(run) == run
    assert rundir.resolve(run / rundir.MANIFEST) == run
    assert rundir.resolve(str(run)) == run


def test_resolve_refuses_what_is_not_a_run_directory(tmp_path):
    with pytest.raises(RunError, match=f"^{tmp_path / 'missing'}: no such run directory$"):
        rundir.resolve(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(RunError, match="no such run directory"):
        rundir.resolve(tmp_path / "notes.txt")
    with pytest.raises(RunError, match=r"not a cnnctl run directory \(no config\.yaml\)"):
        rundir.resolve(tmp_path)


def test_a_runs_directory_that_is_a_file_is_called_a_file(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(RunError) as info:  # it said "cannot create the runs directory: File exists"
        rundir.create(tmp_path / "runs", "tiny")
    assert str(info.value) == f"{tmp_path / 'runs'}: is a file, not a folder; runs are kept in a folder"
    with pytest.raises(RunError) as info:
        rundir.create(tmp_path / "runs" / "deeper", "tiny")
    assert str(info.value) == (f"{tmp_path / 'runs' / 'deeper'}: cannot create the runs directory: "
                               f"{tmp_path / 'runs'} is a file, not a folder")
    assert (tmp_path / "runs").read_text() == "not a folder"
