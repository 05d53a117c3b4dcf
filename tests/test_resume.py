"""Reliability end to end, in real subprocesses: SIGKILL + resume, SIGINT, concurrent runs, --set on resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONFIGS, finish, tiny_config, write_config

pytestmark = pytest.mark.slow  # every test here runs cnnctl in subprocesses, most of them killed and resumed

CONFIG = tiny_config(
    name="long", seed=5, input_shape=(16, 16, 1), filters=16, dropout=0.3, classes=4,
    data={"synthetic": {"train_examples": 12000, "test_examples": 200}},
    train={"optimizer": {"name": "adam", "learning_rate": 0.0003,
                         "schedule": {"type": "inverse_time", "decay_rate": 0.001}},
           "epochs": 3, "validation": "split", "callbacks": {"early_stopping": {"monitor": "val_loss", "patience": 5}}},
    runtime={"deterministic": True, "precision": "float32"})
TIMING = {"epoch_seconds"}


def cnnctl(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CNNCTL_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "cnnctl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def resume_to_the_end_of(run: Path, uninterrupted: Path) -> None:
    """`train --resume` the run to its 3 epochs: each epoch once, and the uninterrupted run's weights at the end
    (the checkpoint held the exact training state)."""
    code, _, err = finish(cnnctl("train", "--resume", str(run), "--quiet"))
    assert code == 0, err
    assert [r["epoch"] for r in rows(run)] == ["1", "2", "3"]
    assert rows(run)[-1]["val_loss"] == rows(uninterrupted)[2]["val_loss"]  # epoch 3 (a later test adds a 4th)


def wait_for_step_checkpoint(run: Path, timeout: float = 120) -> None:
    """Until resume.json names a checkpoint inside an epoch (train.checkpoint_every_steps)."""
    state_file = run / "checkpoints" / "resume.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state_file.exists() and json.loads(state_file.read_text())["step"] > 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"{run} wrote no step checkpoint")


def wait_for_epochs(run: Path, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "metrics.csv").exists() and len(rows(run)) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{run} did not reach {count} epochs")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_config(root / "long.yaml", CONFIG)
    return root


@pytest.fixture(scope="module")
def uninterrupted(workdir):
    code, out, err = finish(cnnctl("train", str(workdir / "long.yaml"), "--runs-dir", str(workdir / "runs"),
                                   "--run-name", "whole", "--quiet"))
    assert code == 0, err
    return workdir / "runs" / "whole"


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(workdir, uninterrupted):
    run = workdir / "runs" / "killed"
    proc = cnnctl("train", str(workdir / "long.yaml"), "--runs-dir", str(workdir / "runs"),
                  "--run-name", "killed", "--quiet")
    wait_for_epochs(run, 1)
    # At once, not after a pause: epoch 2 has 750 steps and no step checkpoints, so the kill lands far from any
    # checkpoint write on any machine (a pause of 0.6 s once reached the end of epoch 2 on a fast host).
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(rows(run)) == 1
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"  # killed: nobody updated it
    state = json.loads((run / "checkpoints" / "resume.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 0)

    code, out, err = finish(cnnctl("train", "--resume", str(run), "--quiet"))
    assert code == 0, err
    resumed = rows(run)
    assert [r["epoch"] for r in resumed] == ["1", "2", "3"]  # each epoch exactly once
    assert resumed == rows(uninterrupted)  # deterministic: identical metrics
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["epochs_run"] == 3
    assert manifest["resumes"][0]["from_epoch"] == 1
    final = json.loads((run / "eval.json").read_text())
    assert final["loss"] == json.loads((uninterrupted / "eval.json").read_text())["loss"]


def test_sigint_stops_with_a_resume_checkpoint_and_the_resume_command(workdir, uninterrupted):
    run = workdir / "runs" / "stopped"
    proc = cnnctl("train", str(workdir / "long.yaml"), "--runs-dir", str(workdir / "runs"),
                  "--run-name", "stopped", "--quiet")
    wait_for_epochs(run, 1)
    proc.send_signal(signal.SIGINT)  # at once: the stop comes after the next step, early in epoch 2's 750
    code, out, err = finish(proc)
    assert code == 130, err
    assert f"cnnctl train --resume {run}" in err
    assert "Traceback" not in err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    epoch, step = manifest["interrupted_at"]["epoch"], manifest["interrupted_at"]["step"]
    state = json.loads((run / "checkpoints" / "resume.json").read_text())
    assert (state["epoch"] + 1, state["step"]) == (epoch, step) and step > 0  # mid-epoch checkpoint
    assert len(rows(run)) == 1  # the partial epoch is not logged as an epoch

    resume_to_the_end_of(run, uninterrupted)


def test_sigterm_exits_143(workdir):
    run = workdir / "runs" / "termed"
    proc = cnnctl("train", str(workdir / "long.yaml"), "--runs-dir", str(workdir / "runs"),
                  "--run-name", "termed", "--quiet", "--set", "train.epochs=1", "--set", "train.checkpoint_every_steps=50")
    wait_for_step_checkpoint(run)  # the signal lands inside the one epoch, however fast the machine
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 143, err
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"


def test_resume_allows_safe_changes_and_refuses_model_changes(workdir, uninterrupted):
    code, _, err = finish(cnnctl("train", "--resume", str(uninterrupted), "--set", "model.layers[0].Conv2D.filters=8"))
    assert code == 2 and "--resume cannot change model.layers" in err
    code, _, err = finish(cnnctl("train", "--resume", str(uninterrupted)))
    assert code == 2 and "already completed 3 of 3 epochs" in err
    code, _, err = finish(cnnctl("train", "--resume", str(uninterrupted), "--quiet", "--set", "train.epochs=4"))
    assert code == 0, err
    assert [r["epoch"] for r in rows(uninterrupted)] == ["1", "2", "3", "4"]
    manifest = json.loads((uninterrupted / "manifest.json").read_text())
    assert manifest["resumes"][-1]["changed"] == {"train.epochs": 4}


def test_four_runs_started_at_once_get_four_directories(tmp_path):
    config = CONFIGS / "mnist.yaml"
    procs = [cnnctl("train", str(config), "--smoke", "--quiet", "--runs-dir", str(tmp_path)) for _ in range(4)]
    results = [finish(p) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0, 0], [err for _, _, err in results]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["mnist", "mnist-2", "mnist-3", "mnist-4"]
    for name in names:
        assert json.loads((tmp_path / name / "manifest.json").read_text())["name"] == name


def test_sigkill_after_a_step_checkpoint_resumes_inside_the_epoch(workdir, uninterrupted):
    run = workdir / "runs" / "steps"
    proc = cnnctl("train", str(workdir / "long.yaml"), "--runs-dir", str(workdir / "runs"), "--run-name", "steps",
                  "--quiet", "--set", "train.checkpoint_every_steps=100")
    wait_for_step_checkpoint(run)
    proc.send_signal(signal.SIGKILL)  # it may land while the next step checkpoint is being written
    proc.wait()
    state = json.loads((run / "checkpoints" / "resume.json").read_text())
    assert state["step"] > 0 and state["step"] % 100 == 0
    assert (run / "checkpoints" / state["checkpoint"]).is_file()  # resume.json only ever names a complete file

    resume_to_the_end_of(run, uninterrupted)
    assert not list((run / "checkpoints").glob(".*tmp*"))  # a write cut short is removed, never trusted


def test_a_second_sigint_exits_at_once_leaving_the_last_checkpoint(workdir):
    run = workdir / "runs" / "twice"
    proc = cnnctl("train", str(workdir / "long.yaml"), "--runs-dir", str(workdir / "runs"), "--run-name", "twice",
                  "--quiet")
    wait_for_epochs(run, 1)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc, timeout=60)
    assert code == 130
    state = json.loads((run / "checkpoints" / "resume.json").read_text())
    assert (run / "checkpoints" / state["checkpoint"]).is_file()  # a checkpoint write cut short is not named


def test_resume_may_change_the_evaluation_but_not_the_loss(tmp_path):
    from cnnctl.config import load_config
    from cnnctl.errors import RunError
    from cnnctl.resume import check_changes

    path = write_config(tmp_path / "c.yaml", tiny_config())
    old = load_config(path).model_dump(mode="json")
    tta = load_config(path, ["evaluate={tta: [flip]}"]).model_dump(mode="json")
    assert check_changes(old, tta) == ["evaluate"]
    smoothed = load_config(path, ["train.loss={name: sparse_categorical_crossentropy, label_smoothing: 0.1}"])
    with pytest.raises(RunError, match="--resume cannot change train.loss"):
        check_changes(old, smoothed.model_dump(mode="json"))


# ---------------------------------------------------------------- with data.augment (issue 18)

# The recipe's parts together: augmentation, a whitening and an identity-initialised conv, BatchNorm and
# GELU (cnnctl.fastops in training), parameter groups, lookahead weight averaging, a piecewise-linear schedule.
AUGMENTED = tiny_config(
    name="augmented", seed=6, input_shape=(12, 12, 1), classes=4,
    layers=[{"Conv2D": {"filters": 4, "kernel_size": 2, "kernel_initializer": "whitening", "trainable": False}},
            {"Activation": {"activation": "gelu"}},
            {"Conv2D": {"filters": 8, "kernel_size": 3, "padding": "same", "use_bias": False,
                        "kernel_initializer": "dirac"}},
            {"MaxPooling2D": {"pool_size": 2}},
            {"BatchNormalization": {"scale": False, "momentum": 0.6}},
            {"Activation": {"activation": "gelu"}},
            {"Dropout": {"rate": 0.2}}, {"Flatten": {}}, {"Dense": {"units": 4}}],
    data={"synthetic": {"train_examples": 4000, "test_examples": 100},
          "augment": [{"AlternatingFlip": {"mode": "horizontal"}},
                      {"RandomTranslation": {"height_factor": 0.2, "width_factor": 0.2}},
                      {"RandomContrast": {"factor": 0.3}}, {"MixUp": {"alpha": 0.4}}]},
    train={"optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.85, "nesterov": True,
                         "weight_decay": 0.0005,
                         "schedule": {"type": "piecewise_linear", "points": [[0, 0.2], [0.25, 1], [1, 0.1]]},
                         "groups": [{"match": "batch_normalization.*/beta", "lr_multiplier": 8},
                                    {"match": "conv2d_1/kernel", "optimizer": {
                                        "name": "muon", "learning_rate": 0.02, "momentum": 0.6, "ns_steps": 3,
                                        "rms_rate": 0, "normalize_weights": True, "weight_decay": 0.0}}],
                         "ema": {"momentum": 0.9, "overwrite_every": 5, "ramp": 0.6}},
           "loss": {"name": "categorical_crossentropy", "from_logits": True, "label_smoothing": 0.2},
           "epochs": 2, "validation": "split"},
    runtime={"deterministic": True, "precision": "float32"})


@pytest.fixture(scope="module")
def augmented(tmp_path_factory):
    """(config path, the uninterrupted augmented run)."""
    root = tmp_path_factory.mktemp("augmented")
    config = write_config(root / "augmented.yaml", AUGMENTED)
    code, _, err = finish(cnnctl("train", str(config), "--runs-dir", str(root / "runs"), "--run-name", "whole",
                                 "--quiet"))
    assert code == 0, err
    return config, root / "runs" / "whole"


def kill_and_resume(config: Path, run: Path, *extra: str, after) -> None:
    proc = cnnctl("train", str(config), "--runs-dir", str(run.parent), "--run-name", run.name, "--quiet", *extra)
    after(run)
    proc.send_signal(signal.SIGKILL)  # at once: 200 steps an epoch, the kill lands far from the end of the run
    proc.wait()
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"
    code, _, err = finish(cnnctl("train", "--resume", str(run), "--quiet"))
    assert code == 0, err
    assert [r["epoch"] for r in rows(run)] == ["1", "2"]  # each epoch once


def test_sigkill_of_an_augmented_run_then_resume_equals_an_uninterrupted_run(augmented):
    """Every augmented batch is drawn from (seed, epoch, step, part) alone: the resumed run sees the
    augmentations the uninterrupted one saw, so metrics.csv and the evaluation are the same to the last digit."""
    config, whole = augmented
    run = whole.parent / "killed"
    kill_and_resume(config, run, after=lambda r: wait_for_epochs(r, 1))
    assert json.loads((run / "manifest.json").read_text())["resumes"][0]["from_epoch"] == 1
    assert rows(run) == rows(whole)
    assert json.loads((run / "eval.json").read_text())["loss"] == json.loads((whole / "eval.json").read_text())["loss"]


def test_sigkill_of_an_augmented_run_inside_an_epoch_resumes_at_its_step(augmented):
    config, whole = augmented
    run = whole.parent / "steps"
    kill_and_resume(config, run, "--set", "train.checkpoint_every_steps=100", after=wait_for_step_checkpoint)
    first, second = rows(run)
    # Epoch 1's training columns average only the steps run after the resume; its validation, and epoch 2, are
    # the uninterrupted run's: the weights after the epoch are, so the skipped batches were augmented alike.
    assert {k: v for k, v in first.items() if k.startswith(("val_", "epoch"))} == {
        k: v for k, v in rows(whole)[0].items() if k.startswith(("val_", "epoch"))}
    assert second == rows(whole)[1]
    assert json.loads((run / "eval.json").read_text())["loss"] == json.loads((whole / "eval.json").read_text())["loss"]
