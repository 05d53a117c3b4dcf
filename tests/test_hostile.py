"""Hostile input: code-running YAML tags, bombs, absurd sizes, bad run names, fake model and data
files, unwritable directories, a full disk, a NaN loss. Each gives a clear message and its exit
code (2 for bad input, 1 for a failed run), never a traceback, and leaves nothing half-made.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    CONFIGS,
    MINIMAL_YAML,
    REPO,
    SHARED_DATASETS,
    disk_full_on_save,
    leftovers,
    stderr_of,
    tiny_config,
    tiny_model,
    weights_of,
)

from cnnctl import resume, rundir
from cnnctl.config import load_config
from cnnctl.errors import RunError, TrainingFailed

MNIST_NPZ = SHARED_DATASETS / "mnist.npz"
FAST_SECONDS = 5.0


# ---------------------------------------------------------------- helpers


def assert_refused(result, *needles: str, code: int = 2) -> str:
    """Exit `code`, no traceback, every stderr line an `error:` (or hint), and each needle in stderr."""
    err = stderr_of(result)
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "Traceback" not in err
    assert err.startswith("error: "), err
    assert all(line.startswith(("error: ", "hint: ")) for line in err.splitlines()), err
    assert "\x1b" not in err, "user input reached the terminal unescaped"
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# `python -m cnnctl ARGS` that reports, at exit, which heavy modules it imported. (-X importtime cannot
# see TensorFlow: cli._quiet_tensorflow sends fd 2 to /dev/null while importing it.)
PROBE = """\
import atexit, json, sys
atexit.register(lambda: print(json.dumps({m: m in sys.modules for m in ("cnnctl.config", "tensorflow", "keras")}),
                              file=sys.__stdout__, flush=True))
sys.argv = ["cnnctl", *sys.argv[1:]]
import runpy
runpy.run_module("cnnctl", run_name="__main__")
"""


def run_cnnctl(*args) -> tuple[subprocess.CompletedProcess, dict, float]:
    """(process, {module: imported?}, seconds) of `cnnctl ARGS` in a fresh interpreter."""
    start = time.perf_counter()
    process = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    seconds = time.perf_counter() - start
    imported = json.loads(process.stdout.strip().splitlines()[-1])
    assert imported["cnnctl.config"], "the probe sees cnnctl's own imports"
    return process, imported, seconds


def timed(cli, *args):
    start = time.perf_counter()
    result = cli(*args)
    return result, time.perf_counter() - start


@pytest.fixture(autouse=True)
def _process_state():
    """`cnnctl train` installs signal handlers and sets Keras' global precision policy: put both back."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    policy = sys.modules["keras"].mixed_precision.global_policy().name if "keras" in sys.modules else None
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy(policy or "float32")


@pytest.fixture
def marker(tmp_path):
    """A file that hostile input would create if it ran code; the test asserts it never appears."""
    return tmp_path / "pwned"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No real dataset caches, no downloads."""
    for name in ("HOME", "KERAS_HOME", "CNNCTL_DATA", "CNNCTL_CACHE"):
        place = tmp_path / f"env-{name.lower()}"
        place.mkdir()
        monkeypatch.setenv(name, str(place))
    monkeypatch.setenv("CNNCTL_OFFLINE", "1")


# ---------------------------------------------------------------- YAML that would run code

TAGGED = [
    'name: !!python/object/apply:os.system ["touch {marker}"]',
    'name: !!python/object/new:os.system ["touch {marker}"]',
    "name: !!python/name:os.system",
    "name: !!python/module:os",
    "name: !!python/object/apply:subprocess.call [[touch, '{marker}']]",
    'name: tiny\ndescription: [1, {{deep: !!python/object/apply:os.system ["touch {marker}"]}}]',
]


@pytest.mark.parametrize("command", ["config", "summary"])
@pytest.mark.parametrize("line", TAGGED)
def test_python_tags_are_refused_and_never_run(cli, write_yaml, marker, command, line):
    path = write_yaml(MINIMAL_YAML.replace("name: tiny", line.format(marker=marker)))
    err = assert_refused(cli(command, path), f"error: {path}:", "tags are not allowed")
    assert len(err.splitlines()) == 1
    assert not marker.exists()


def test_python_tags_in_an_override_are_refused_and_never_run(cli, minimal_path, marker):
    result = cli("config", minimal_path, "--set", f'name=!!python/object/apply:os.system ["touch {marker}"]')
    assert_refused(result, "error: --set name=!!python/object/apply:os.system", "tags are not allowed")
    assert not marker.exists()


# ---------------------------------------------------------------- bombs


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, levels + 1):
        lines.append(f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


BOMBS = {
    "over_1_MiB": ("name: big\ndescription: '" + "x" * (1 << 20) + "'\n", "too large"),
    "10000_nested_lists": ("name: deep\ndata: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested"),
    "10000_nested_mappings": ("name: deep\ndata: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n", "nested"),
    "500_nested_blocks": ("".join("  " * i + "a:\n" for i in range(500)) + "  " * 500 + "b: 1\n", "nested"),
    "billion_laughs": (billion_laughs(), "too large"),
    "self_reference": ("name: &a [*a]\n", "nested"),
}


@pytest.mark.parametrize("bomb", BOMBS, ids=list(BOMBS))
def test_bombs_are_refused_quickly(cli, write_yaml, bomb):
    text, needle = BOMBS[bomb]
    path = write_yaml(text)
    result, seconds = timed(cli, "config", path)
    assert_refused(result, f"error: {path}", needle)
    assert seconds < FAST_SECONDS


@pytest.mark.parametrize("value", ["[" * 10_000 + "]" * 10_000, billion_laughs().replace("\n", ", ").join("{}")])
def test_bombs_in_an_override_are_refused_quickly(cli, minimal_path, value):
    result, seconds = timed(cli, "config", minimal_path, "--set", f"description={value}")
    assert_refused(result, "error: --set description=")
    assert seconds < FAST_SECONDS


# ---------------------------------------------------------------- wrong types

WRONG_TYPES = [
    ("name: tiny", "name: [tiny]", "1:7", "name: input should be a valid string"),
    ("  dataset: synthetic", "  dataset: {kind: synthetic}", "3:12", "data.dataset: input should be "),
    ("input_shape: [8, 8, 1]", "input_shape: '8x8x1'", "5:16", "model.input_shape: input should be a valid list"),
    ("filters: 4", "filters: [4]", "7:25", "model.layers[0].Conv2D.filters: input should be a valid integer"),
    ("Flatten: {}", "Flatten: [1, 2]", "9:16", "model.layers[2].Flatten: input should be a valid dictionary"),
    ("optimizer: {name: sgd, learning_rate: 0.01}", "optimizer: sgd", "12:14",
     "train.optimizer: input should be a valid dictionary"),
    ("batch_size: 8", "batch_size: 8.5", "13:15", "train.batch_size: input should be a valid integer"),
    ("epochs: 1", "epochs: {n: 1}", "14:11", "train.epochs: input should be a valid integer"),
]


@pytest.mark.parametrize("old, new, where, problem", WRONG_TYPES, ids=[case[3].split(":")[0] for case in WRONG_TYPES])
def test_a_wrong_type_anywhere_is_located(cli, write_yaml, old, new, where, problem):
    assert old in MINIMAL_YAML
    path = write_yaml(MINIMAL_YAML.replace(old, new, 1))
    err = assert_refused(cli("config", path), f"error: {path}:{where}: {problem}")
    assert len(err.splitlines()) == 1, err


def test_layers_given_as_a_mapping_are_located_at_the_override(cli, minimal_path):
    result = cli("config", minimal_path, "--set", "model.layers={Conv2D: {filters: 1, kernel_size: 1}}")
    assert_refused(result, "error: --set model.layers={Conv2D: {filters: 1, kernel_size: 1}}: model.layers: "
                           "input should be a valid list")


# ---------------------------------------------------------------- absurd sizes


@pytest.fixture
def absurd_path(write_yaml) -> Path:
    text = (CONFIGS / "mnist.yaml").read_text()
    assert text.count("filters: 32,") == 1
    return write_yaml(text.replace("filters: 32,", f"filters: {10**9},"), "absurd.yaml")


ABSURD = "model.layers[0] (Conv2D): the model would have 26,000,000,000 parameters"


def test_summary_refuses_a_billion_filters_from_the_parameter_estimate(cli, absurd_path):
    result, seconds = timed(cli, "summary", absurd_path)
    assert_refused(result, f"error: {absurd_path}:11:7: {ABSURD}", "GiB in float32", "the limit is 2,000,000,000")
    assert seconds < FAST_SECONDS


@pytest.mark.parametrize("command", ["config", "summary"])
def test_a_billion_filters_are_refused_fast_without_tensorflow(absurd_path, command):
    result, imported, seconds = run_cnnctl(command, absurd_path)
    assert not imported["tensorflow"] and not imported["keras"]
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [f"error: {absurd_path}:11:7: {ABSURD} (96.9 GiB in float32 before "
                                          "optimizer state); the limit is 2,000,000,000"]
    assert seconds < FAST_SECONDS


@pytest.mark.parametrize("override", ["model.layers[5].Dense.units=2147483647",
                                      "model.layers=[{Flatten: {}}, {Dense: {units: 100000}}, {Dense: {units: 100000}}]"])
def test_other_absurd_sizes_are_refused(cli, override):
    assert_refused(cli("summary", CONFIGS / "mnist.yaml", "--set", override), "parameters", "the limit is")


# ---------------------------------------------------------------- run names


@pytest.fixture
def no_tensorflow_work(monkeypatch):
    """Fail loudly if `train` gets as far as probing devices, loading data or making a run directory."""
    import cnnctl.data
    import cnnctl.runtime

    def reached(*args, **kwargs):
        raise AssertionError("train got past the run-name check into TensorFlow work")

    monkeypatch.setattr(cnnctl.runtime, "probe_hardware", reached)
    monkeypatch.setattr(cnnctl.data, "load_splits", reached)
    monkeypatch.setattr(rundir, "create", reached)


BAD_NAMES = [
    "a/b", "/abs", "../escape", "..", "a..b", ".hidden", "x\x1b[31m", "\x1b[31mred", "a\nb", "trailing\n", "tab\tname",
    "n" * 200, "é", "name with space",
    "",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:24])
def test_bad_run_names_are_refused_before_any_work(cli, tmp_path, no_tensorflow_work, name):
    runs = tmp_path / "runs"
    result = cli("train", CONFIGS / "mnist.yaml", "--smoke", "--run-name", name, "--runs-dir", runs)
    assert_refused(result, f"error: run name {name!r} is not allowed")  # control characters shown escaped
    assert not runs.exists()


def test_a_bad_run_name_is_refused_without_importing_tensorflow(tmp_path):
    runs = tmp_path / "runs"
    result, imported, _ = run_cnnctl("train", CONFIGS / "mnist.yaml", "--smoke", "--run-name", "../escape",
                                     "--runs-dir", runs)
    assert result.returncode == 2 and "is not allowed" in result.stderr and not runs.exists()
    assert not imported["tensorflow"]


# ---------------------------------------------------------------- model files that are not (safe) Keras models


@pytest.fixture(scope="module")
def real_model_bytes(tmp_path_factory, keras_module) -> bytes:
    path = tmp_path_factory.mktemp("model") / "real.keras"
    tiny_model(keras_module).save(path)
    return path.read_bytes()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def _members(blob: bytes) -> dict[str, bytes]:
    import io

    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def fake_model(kind: str, tmp_path: Path, real: bytes, marker: Path) -> Path:
    path = tmp_path / "x.keras"
    if kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zip_without_keras_content":
        _zip(path, {"hello.txt": b"hi"})
    elif kind == "truncated":
        path.write_bytes(real[: len(real) // 2])
    elif kind == "truncated_weights":
        members = _members(real)
        members["model.weights.h5"] = members["model.weights.h5"][:1000]
        _zip(path, members)
    elif kind == "config_not_json":
        _zip(path, dict(_members(real), **{"config.json": b"{not json"}))
    elif kind == "config_names_os_system":  # a crafted config.json that asks Keras to call os.system
        members = _members(real)
        config = json.loads(members["config.json"])
        config["config"]["layers"][-1] = {"module": "os", "class_name": "system", "registered_name": None,
                                          "config": {"command": f"touch {marker}"}}
        _zip(path, dict(members, **{"config.json": json.dumps(config).encode()}))
    elif kind == "directory":
        path.mkdir()
    elif kind == "h5_suffix":
        path = tmp_path / "x.h5"
        path.write_bytes(real)
    return path


FAKE_MODELS = ["text", "empty", "zip_without_keras_content", "truncated", "truncated_weights", "config_not_json",
               "config_names_os_system", "directory", "h5_suffix"]


@pytest.mark.parametrize("kind", FAKE_MODELS)
def test_evaluate_refuses_a_file_that_is_not_a_keras_model(cli, tmp_path, real_model_bytes, marker, offline, kind):
    path = fake_model(kind, tmp_path, real_model_bytes, marker)
    result = cli("evaluate", path, "--config", CONFIGS / "mnist.yaml")
    err = assert_refused(result, f"error: {path}")
    assert len(err.splitlines()) == 1, err
    assert not marker.exists()
    assert not path.with_suffix(".eval.json").exists()


@pytest.fixture
def lambda_model(tmp_path, keras_module, marker) -> Path:
    """A .keras file with a Lambda layer whose code would create `marker` if it ever ran."""
    keras = keras_module
    code = keras.layers.Lambda(lambda x, p=str(marker): (open(p, "w").close(), x * 2)[1])
    model = keras.Sequential([keras.Input((28, 28, 1)), code, keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    path = tmp_path / "lambda.keras"
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once, here in the test
    return path


def test_load_model_refuses_a_lambda_layer(lambda_model, marker):
    from cnnctl.model import load_model

    with pytest.raises(RunError) as info:
        load_model(lambda_model)
    message = str(info.value)
    assert message.startswith(f"{lambda_model}: refused")
    assert "safe_mode" in message and "code" in message
    assert not marker.exists()


def test_evaluate_refuses_a_lambda_layer(cli, lambda_model, marker, offline):
    result = cli("evaluate", lambda_model, "--config", CONFIGS / "mnist.yaml")
    assert_refused(result, f"error: {lambda_model}: refused", "safe_mode")
    assert not marker.exists()


# ---------------------------------------------------------------- dataset files


def _pickled_object_array(marker: Path) -> np.ndarray:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    array = np.empty(1, dtype=object)
    array[0] = Payload()
    return array


def bad_npz(kind: str, folder: Path, marker: Path) -> Path:
    path = folder / "mnist.npz"
    if kind == "truncated":
        with open(MNIST_NPZ, "rb") as source:
            path.write_bytes(source.read(100 * 1024))
    elif kind == "missing_arrays":
        np.savez(path, x_train=np.zeros((2, 28, 28), np.uint8))
    elif kind == "pickled_objects":
        images = np.zeros((2, 28, 28), np.uint8)
        labels = np.zeros(2, np.uint8)
        np.savez(path, x_train=_pickled_object_array(marker), y_train=labels, x_test=images, y_test=labels)
    elif kind == "float_images":
        images, labels = np.zeros((2, 28, 28), np.float32), np.zeros(2, np.uint8)
        np.savez(path, x_train=images, y_train=labels, x_test=images, y_test=labels)
    return path


@pytest.mark.parametrize("kind", [
    pytest.param("truncated", marks=[  # the start of the real file
        pytest.mark.slow, pytest.mark.skipif(not MNIST_NPZ.is_file(), reason=f"{MNIST_NPZ} is not on this machine")]),
    "missing_arrays", "pickled_objects", "float_images"])
def test_a_bad_dataset_file_fails_before_the_run_directory_is_made(cli, tmp_path, offline, marker, kind):
    data_dir, runs = tmp_path / "data", tmp_path / "runs"
    data_dir.mkdir()
    path = bad_npz(kind, data_dir, marker)
    result = cli("train", CONFIGS / "mnist.yaml", "--data-dir", data_dir, "--runs-dir", runs, "--quiet")
    err = assert_refused(result, f"error: {path}: ")
    assert len(err.splitlines()) == 1, err
    assert not runs.exists() or not any(runs.iterdir()), "a run directory was left behind"
    assert not marker.exists()


# ---------------------------------------------------------------- unwritable runs directory


def test_train_into_an_unwritable_runs_dir_exits_2(cli, minimal_path, unwritable_runs_dir):
    result = cli("train", minimal_path, "--smoke", "--quiet", "--runs-dir", unwritable_runs_dir,
                 "--set", "runtime.precision=float32", "--set", "runtime.device=cpu")
    err = assert_refused(result, f"error: {unwritable_runs_dir}: ")
    assert "runs directory" in err


# ---------------------------------------------------------------- a full disk while checkpointing


def test_resume_save_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, compiled_model, keras_module,
                                                                   monkeypatch):
    checkpoints = tmp_path / rundir.CHECKPOINTS
    checkpoints.mkdir()
    resume.save(compiled_model, tmp_path, resume.ResumeState(epoch=1))
    saved = weights_of(compiled_model)
    compiled_model.set_weights([w + 1 for w in saved])

    disk_full_on_save(compiled_model, monkeypatch)
    with pytest.raises(TrainingFailed, match="the disk is full") as info:
        resume.save(compiled_model, tmp_path, resume.ResumeState(epoch=2))
    assert "resume-00001-0000000.keras is kept" in str(info.value)
    assert info.value.exit_code == 1

    state = resume.load_state(tmp_path)
    assert state.epoch == 1 and state.checkpoint == "resume-00001-0000000.keras"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["resume-00001-0000000.keras", "resume.json"]
    restored = keras_module.saving.load_model(checkpoints / state.checkpoint)
    for got, want in zip(weights_of(restored), saved, strict=True):
        np.testing.assert_array_equal(got, want)


def test_resume_save_when_the_state_file_cannot_be_written(tmp_path, compiled_model, monkeypatch):
    checkpoints = tmp_path / rundir.CHECKPOINTS
    checkpoints.mkdir()
    resume.save(compiled_model, tmp_path, resume.ResumeState(epoch=1))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "fsync", full)  # resume.json's atomic write fails after the .keras is in place
    with pytest.raises(TrainingFailed, match="the disk is full"):
        resume.save(compiled_model, tmp_path, resume.ResumeState(epoch=2))
    monkeypatch.undo()
    assert resume.load_state(tmp_path).checkpoint == "resume-00001-0000000.keras"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["resume-00001-0000000.keras", "resume.json"]


# ---------------------------------------------------------------- a NaN loss

NAN_CONFIG = tiny_config(
    name="nan", input_shape=(4, 4, 1),
    layers=[{"Flatten": {}}, {"Dense": {"units": 3, "activation": "softmax"}}],
    data={"synthetic": {"train_examples": 256, "test_examples": 32}},
    train={"optimizer": {"learning_rate": 0.1}, "batch_size": 32, "epochs": 2},
    runtime={"device": "cpu", "precision": "float32", "steps_per_execution": 1})  # 1: the NaN's exact step
POISON_AT = (1, 2)  # 0-based epoch and batch: the message says "epoch 2, step 3"


def poisoner(base):
    """A callback class (on top of `base`) that records the weights at the end of epoch 1, then turns
    every weight into NaN just before step 3 of epoch 2: the loss of that step is NaN, every time."""

    class Poison(base):
        good_weights: list = []

        def on_epoch_begin(self, epoch, logs=None):
            super().on_epoch_begin(epoch, logs)
            self.epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if epoch == POISON_AT[0] - 1:
                Poison.good_weights = weights_of(self.model)

        def on_train_batch_begin(self, batch, logs=None):
            super().on_train_batch_begin(batch, logs)
            if (self.epoch, batch) == POISON_AT:
                for weight in self.model.trainable_weights:
                    weight.assign(np.full(weight.shape, np.nan, dtype="float32"))

    return Poison


def assert_failed_at_the_nan(run_dir: Path, keras, good_weights) -> None:
    manifest = json.loads((run_dir / rundir.MANIFEST).read_text())
    assert manifest["status"] == "failed"
    assert "epoch 2, step 3" in manifest["error"]
    last = keras.saving.load_model(run_dir / rundir.LAST)
    assert all(np.isfinite(w).all() for w in weights_of(last))
    for got, want in zip(weights_of(last), good_weights, strict=True):
        np.testing.assert_array_equal(got, want)
    assert resume.load_state(run_dir).epoch == 1
    assert not (run_dir / rundir.EVAL).exists()
    assert (run_dir / rundir.METRICS).read_text().count("\n") == 2  # header and epoch 1 only


def test_a_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path, keras_module, write_yaml):
    from cnnctl.train import run

    config = load_config(write_yaml(NAN_CONFIG))
    poison = poisoner(keras_module.callbacks.Callback)()
    result = run(config, runs_dir=tmp_path / "runs", callbacks=[poison])
    assert result.status == "failed"
    assert result.message.startswith("loss became NaN at epoch 2, step 3")
    assert result.epochs_run == 1 and result.evaluation is None
    assert_failed_at_the_nan(result.run_dir, keras_module, poison.good_weights)


def test_a_nan_loss_exits_1_through_the_cli(cli, tmp_path, keras_module, write_yaml, monkeypatch):
    import cnnctl.callbacks

    poison = poisoner(cnnctl.callbacks.EpochExtras)
    monkeypatch.setattr(cnnctl.callbacks, "EpochExtras", poison)
    runs = tmp_path / "runs"
    result = cli("train", write_yaml(NAN_CONFIG), "--runs-dir", runs, "--quiet")
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "loss became NaN at epoch 2, step 3" in result.stdout
    (run_dir,) = runs.iterdir()
    assert_failed_at_the_nan(run_dir, keras_module, poison.good_weights)
    history = json.loads((run_dir / rundir.HISTORY).read_text())
    assert history["epoch"] == [1] and math.isfinite(history["loss"][0])


def test_a_full_disk_during_training_fails_the_run_with_a_message(cli, tmp_path, keras_module, write_yaml,
                                                                  monkeypatch):
    real_save = keras_module.Model.save

    def save(model, filepath, *args, **kwargs):  # the disk fills up during epoch 2 (8 steps per epoch)
        if int(model.optimizer.iterations) > 8:
            Path(filepath).write_bytes(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(model, filepath, *args, **kwargs)

    monkeypatch.setattr(keras_module.Model, "save", save)
    runs = tmp_path / "runs"
    result = cli("train", write_yaml(dict(NAN_CONFIG, name="full")), "--runs-dir", runs, "--quiet")
    assert_refused(result, "error: cannot write checkpoints/last.keras (the disk is full); the previous last.keras "
                           "is kept", code=1)
    (run_dir,) = runs.iterdir()
    manifest = json.loads((run_dir / rundir.MANIFEST).read_text())
    assert manifest["status"] == "failed" and "the disk is full" in manifest["error"]
    assert leftovers(run_dir / rundir.CHECKPOINTS) == []
    assert resume.load_state(run_dir).epoch == 1
    monkeypatch.undo()
    last = keras_module.saving.load_model(run_dir / rundir.LAST)
    assert all(np.isfinite(w).all() for w in weights_of(last))


@pytest.mark.parametrize("kind", ["fifo", "directory", "/dev/zero"])
def test_a_config_that_is_not_a_regular_file_is_refused_without_reading_it(cli, tmp_path, kind):
    path = tmp_path / "config.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # opening it would block forever
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path(kind)
    result, seconds = timed(cli, "config", path)
    assert_refused(result, f"error: {path}: not a file")
    assert seconds < FAST_SECONDS
