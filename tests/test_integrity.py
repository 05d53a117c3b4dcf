"""No command destroys what the user has: a run directory is changed only by the run that owns it,
no command overwrites a file it did not create, and every failure leaves a true status (issue 12)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnctl import files, resume, rundir
from cnnctl.config import load_config
from cnnctl.errors import CnnctlError

CONFIG = tiny_config(name="base", seed=3, data={"synthetic": {"train_examples": 64, "test_examples": 32}},
                     train={"epochs": 2, "batch_size": 16}, runtime={"deterministic": True})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A completed 2-epoch run (two resume checkpoints), copied afresh by `run` for each test."""
    from cnnctl.train import run

    root = tmp_path_factory.mktemp("integrity")
    config = load_config(write_config(root / "base.yaml", CONFIG))
    result = run(config, runs_dir=root / "runs")
    assert result.status == "completed"
    return result.run_dir


@pytest.fixture
def run(trained, tmp_path, monkeypatch) -> Path:
    copy = tmp_path / "runs" / "base"
    shutil.copytree(trained, copy)
    monkeypatch.chdir(tmp_path)
    return copy


def state_of(run_dir: Path) -> dict:
    return json.loads((run_dir / resume.STATE).read_text())


def write_state(run_dir: Path, state: dict) -> None:
    (run_dir / resume.STATE).write_text(json.dumps(state))


def refused(result, *needles: str, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output and len(result.output) < 2048, result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    return result.output


def snapshot(folder: Path) -> dict:
    """Every file's bytes, but the lock file's note of who last held it."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != rundir.LOCK}


# ---------------------------------------------------------------- resume.json is read like a config


def test_two_generations_of_resume_checkpoints_are_kept(run):
    state = state_of(run)
    assert state["checkpoint"] == "resume-00002-0000000.keras"
    assert state["previous"]["checkpoint"] == "resume-00001-0000000.keras"
    names = sorted(p.name for p in (run / "checkpoints").glob("resume-*"))
    assert names == ["resume-00001-0000000.keras", "resume-00002-0000000.keras"]


@pytest.mark.parametrize("outside", ["../../other/checkpoints/best.keras", "ABSOLUTE"])
def test_a_checkpoint_named_outside_the_run_is_refused_and_left_alone(run, cli, tmp_path, outside):
    victim = tmp_path / "other" / "checkpoints" / "best.keras"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"someone else's model")
    state = state_of(run)
    state["checkpoint"] = str(victim) if outside == "ABSOLUTE" else outside
    write_state(run, state)
    refused(cli("train", "--resume", run, "--set", "train.epochs=3", "--quiet"),
            "resume.json: not a valid resume state", "checkpoint must be a file name")
    assert victim.read_bytes() == b"someone else's model"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("epoch", -5, "epoch: Input should be greater than or equal to 0"),
    ("epoch", "abc", "epoch: Input should be a valid integer"),
    ("step", 3, "is not the one of epoch 2, step 3"),
    ("best_epoch", 7, "best_epoch 7 is after the 2 epochs done"),
    ("callbacks", [1], "callbacks: Input should be a valid dictionary"),
])
def test_a_resume_state_out_of_range_is_refused_and_nothing_changes(run, cli, field, value, message):
    state = state_of(run)
    state[field] = value
    write_state(run, state)
    before = snapshot(run)
    refused(cli("train", "--resume", run, "--set", "train.epochs=3", "--quiet"), message)
    assert snapshot(run) == before


def test_metrics_csv_edited_against_the_state_is_refused(run, cli):
    metrics = run / "metrics.csv"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], lines[1], lines[1]]) + "\n")  # epochs 1, 1
    refused(cli("train", "--resume", run, "--set", "train.epochs=3", "--quiet"), "the epochs are 1, 1, not 1, 2")
    metrics.write_text(lines[0] + "\n")  # no epochs at all, but resume.json says 2 were done
    refused(cli("train", "--resume", run, "--set", "train.epochs=3", "--quiet"),
            "holds 0 epochs, but checkpoints/resume.json says 2 were done")


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(run, cli):
    current = run / "checkpoints" / "resume-00002-0000000.keras"
    current.write_bytes(current.read_bytes()[: current.stat().st_size // 2])  # truncated
    result = cli("train", "--resume", run, "--set", "train.epochs=3", "--quiet")
    assert result.exit_code == 0, result.output
    assert "checkpoints/resume-00002-0000000.keras is damaged" in result.output
    assert "resuming from the previous checkpoint resume-00001-0000000.keras" in result.output
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["resumes"][-1]["from_epoch"] == 1
    assert "is damaged" in manifest["resumes"][-1]["notes"][0]


def test_with_no_good_checkpoint_the_error_names_the_file_and_the_run_is_not_marked_failed(run, cli):
    for name in ("resume-00001-0000000.keras", "resume-00002-0000000.keras"):
        (run / "checkpoints" / name).write_bytes(b"PK\x03\x04 not a whole zip")
    refused(cli("train", "--resume", run, "--set", "train.epochs=3", "--quiet"),
            "checkpoints/resume-00002-0000000.keras is damaged", "no earlier good checkpoint")
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"


def test_a_write_cut_short_is_removed_on_resume_and_never_trusted(run, cli):
    leftover = run / "checkpoints" / ".resume-00003-0000000.keras.x1y2z3.tmp.keras"
    leftover.write_bytes(b"PK\x03\x04 half a model")
    assert files.is_temporary(leftover)
    result = cli("train", "--resume", run, "--set", "train.epochs=3", "--quiet")
    assert result.exit_code == 0, result.output
    assert f"removed {leftover.name}" in result.output and not leftover.exists()
    assert state_of(run)["checkpoint"] == "resume-00003-0000000.keras"


RESUME_FIELDS = {
    "epoch": st.one_of(st.integers(-10, 10**12), st.text(max_size=5), st.none(), st.floats()),
    "step": st.one_of(st.integers(-3, 10**9), st.booleans(), st.lists(st.integers(), max_size=2)),
    "checkpoint": st.one_of(st.sampled_from(["../x.keras", "/etc/passwd", "resume-00002-0000000.keras",
                                             "resume-00001-0000000.keras", "best.keras", "", "a/../../b"]),
                            st.text(max_size=300)),
    "best_value": st.one_of(st.none(), st.floats(allow_nan=True), st.text(max_size=3)),
    "best_epoch": st.one_of(st.none(), st.integers(-2, 5)),
    "callbacks": st.one_of(st.dictionaries(st.text(max_size=5), st.dictionaries(st.text(max_size=5),
                                                                                st.integers())), st.integers()),
    "last_logs": st.one_of(st.dictionaries(st.text(max_size=8), st.floats()), st.text(max_size=5)),
    "rng": st.one_of(st.lists(st.lists(st.integers(-5, 5), max_size=3), max_size=3), st.text(max_size=3)),
    "previous": st.one_of(st.none(), st.dictionaries(st.sampled_from(["epoch", "checkpoint"]), st.integers(-1, 3))),
    "extra": st.integers(),
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({}, optional=RESUME_FIELDS) | st.lists(st.integers(), max_size=3) | st.text(max_size=20))
def test_fuzzed_resume_states_are_refused_or_accepted_never_crash(trained, tmp_path_factory, state):
    """200 random resume.json contents: prepare either accepts the run or raises a short CnnctlError;
    nothing outside the run is touched and no file the state names is deleted."""
    root = tmp_path_factory.mktemp("fuzz")
    run_dir = root / "runs" / "base"
    shutil.copytree(trained, run_dir)
    outside = root / "precious.keras"
    outside.write_bytes(b"keep")
    (run_dir / resume.STATE).write_text(json.dumps(state, allow_nan=True))
    config = load_config(run_dir / rundir.CONFIG, ["train.epochs=3"])
    try:
        prepared = resume.prepare(config, run_dir)
        prepared.lock.release()
    except CnnctlError as exc:
        assert len(exc.message) < 2048 and "Traceback" not in exc.message
    assert outside.read_bytes() == b"keep"
    assert (run_dir / "checkpoints" / "resume-00001-0000000.keras").is_file()
    assert (run_dir / "checkpoints" / "resume-00002-0000000.keras").is_file()


# ---------------------------------------------------------------- one owner at a time


def test_a_second_resume_of_a_live_run_fails_at_once_naming_the_holder(run, cli):
    with rundir.lock(run, "train --resume"):
        refused(cli("train", "--resume", run, "--set", "train.epochs=3", "--quiet"),
                f"in use by pid {os.getpid()}", "train --resume")
        refused(cli("evaluate", run), f"in use by pid {os.getpid()}")  # its results are not rewritten meanwhile
    result = cli("train", "--resume", run, "--set", "train.epochs=3", "--quiet")
    assert result.exit_code == 0, result.output


def test_the_lock_of_a_killed_process_is_taken_over_and_runs_shows_it_killed(run, cli):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cnnctl import rundir; "
                               f"rundir.lock({str(run)!r}, 'train'); print('locked', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        held_then_killed(run, cli, holder)
    finally:
        holder.kill()
    with rundir.lock(run, "test"):
        pass


def held_then_killed(run: Path, cli, holder: subprocess.Popen) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(status="running", pid=holder.pid)
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert rundir.owner_alive(run) is True
    assert json.loads(cli("runs", "--runs-dir", run.parent, "--json").output)[0]["status"] == "running"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert rundir.owner_alive(run) is False
    assert json.loads(cli("runs", "--runs-dir", run.parent, "--json").output)[0]["status"] == "killed"


def test_a_run_without_a_lock_file_is_judged_by_its_pid(run, cli):
    (run / rundir.LOCK).unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    manifest.update(status="running", pid=dead.pid)
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert json.loads(cli("runs", "--runs-dir", run.parent, "--json").output)[0]["status"] == "killed"
    manifest.update(pid=os.getpid())
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert json.loads(cli("runs", "--runs-dir", run.parent, "--json").output)[0]["status"] == "running"


def test_a_run_killed_before_its_first_checkpoint_starts_again_from_scratch(run, cli):
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    for name in ("metrics.csv", "history.json", "eval.json"):
        (run / name).unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(status="running", pid=2**22 + 1)  # no such process
    (run / "manifest.json").write_text(json.dumps(manifest))
    result = cli("train", "--resume", run, "--quiet")
    assert result.exit_code == 0, result.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["epochs_run"] == 2 and len(manifest["restarts"]) == 1
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]


# ---------------------------------------------------------------- no command overwrites what it did not create


@pytest.mark.parametrize("target", ["checkpoints/best.keras", "config.yaml", "eval.json"])
def test_evaluate_out_never_writes_into_a_run(run, cli, target):
    before = snapshot(run)
    refused(cli("evaluate", run, "--out", run / target, "--force"), "inside the run directory")
    assert snapshot(run) == before


def test_out_files_are_replaced_only_with_force(run, cli, tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text("my notes")
    for command in (("evaluate", run), ("compare", run, run)):
        refused(cli(*command, "--out", mine), "already exists", "--force replaces it")
        assert mine.read_text() == "my notes"
    plot = tmp_path / "mine.png"
    plot.write_text("my picture")
    refused(cli("compare", run, run, "--out", plot), "already exists")
    assert cli("compare", run, run, "--out", plot, "--force").exit_code == 0
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert cli("evaluate", run, "--out", mine, "--force").exit_code == 0
    assert json.loads(mine.read_text())["examples"] == 32


def test_compare_default_plot_never_replaces_a_file(run, cli):
    first = json.loads(cli("compare", run, run, "--json").output)["plot"]
    second = json.loads(cli("compare", run, run, "--json").output)["plot"]
    assert first != second and Path(first).is_file() and Path(second).name.endswith("-2.png")


def test_missing_folders_are_created_only_under_the_current_directory(run, cli, tmp_path):
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere" / "deep" / "plot.png"
    refused(cli("compare", run, run, "--out", elsewhere), "no such folder")
    assert not elsewhere.parent.parent.exists()
    assert cli("compare", run, run, "--out", tmp_path / "plots" / "new" / "c.png").exit_code == 0


def test_predict_out_follows_the_same_rules(run, cli, tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "black.png")
    refused(cli("predict", run, tmp_path / "black.png", "--out", run / "manifest.json"), "inside the run directory")
    out = tmp_path / "predictions.json"
    assert cli("predict", run, tmp_path / "black.png", "--out", out).exit_code == 0
    assert json.loads(out.read_text())[0]["image"].endswith("black.png")
    refused(cli("predict", run, tmp_path / "black.png", "--out", out), "already exists")


def test_evaluate_with_another_config_does_not_replace_the_runs_results(run, cli, tmp_path):
    other = write_config(tmp_path / "other.yaml", dict(CONFIG, seed=4))
    before = snapshot(run)
    refused(cli("evaluate", run, "--config", other), "is not the config of", "--out")
    assert snapshot(run) == before
    result = cli("evaluate", run, "--config", other, "--out", tmp_path / "other.json")
    assert result.exit_code == 0, result.output
    assert snapshot(run) == before


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_while_setting_up_a_run_is_one_line_and_a_true_status(cli, tmp_path, monkeypatch):
    real = files.write_bytes

    def full(path, data):
        if Path(path).name == "config.yaml":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(files, "write_bytes", full)
    monkeypatch.chdir(tmp_path)
    result = cli("train", write_config(tmp_path / "c.yaml", CONFIG), "--quiet")
    refused(result, "config.yaml: cannot write (the disk is full, ", "MB free on", "while setting up the run",
            code=1)
    manifest = json.loads((tmp_path / "runs" / "base" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "the disk is full" in manifest["error"]


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs, where this machine lets us mount one (root); the test skips with the reason otherwise."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_during_training_fails_the_run_with_the_file_and_free_space(cli, small_disk, tmp_path,
                                                                                     monkeypatch):
    layers = [{"Flatten": {}}, {"Dense": {"units": 1500, "activation": "relu"}},
              {"Dense": {"units": 3, "activation": "softmax"}}]  # 1.5 MB of weights: two checkpoints fill the disk
    config = write_config(tmp_path / "big.yaml", tiny_config(
        name="big", input_shape=(16, 16, 1), layers=layers,
        data={"synthetic": {"train_examples": 64, "test_examples": 16}}, train={"epochs": 3}))
    monkeypatch.chdir(tmp_path)
    result = cli("train", config, "--runs-dir", small_disk / "runs", "--quiet")
    output = refused(result, code=1)
    assert "the disk is full" in output and "MB free on" in output
    (run_dir,) = (small_disk / "runs").iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "the disk is full" in manifest["error"]
    assert not [p for p in run_dir.rglob("*") if files.is_temporary(p)]
