"""Shared helpers: a small valid config, a tiny trainable one, a YAML writer, a CLI runner, the tutorial
configs, and where the shared datasets live; for the data tests an isolated environment, a loader, an image
writer and an MNIST file writer; a tiny Keras model, a full disk and an unwritable runs directory.

Keras is imported only by the fixtures that build models, so the config tests stay TensorFlow-free.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

# Quiet TensorFlow's C++ start-up logging for the tests that import it (this sets nothing for cnnctl).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# Real datasets (mnist.npz, cifar10-jpg.tar.gz) beside the checkout; tests that read them skip without them.
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

# Line numbers matter: the error tests assert FILE:LINE:COL positions in this text.
MINIMAL_YAML = """\
name: tiny
data:
  dataset: synthetic
model:
  input_shape: [8, 8, 1]
  layers:
    - Conv2D: {filters: 4, kernel_size: 3, activation: relu}
    - MaxPooling2D: {pool_size: 2}
    - Flatten: {}
    - Dense: {units: 3, activation: softmax}
train:
  optimizer: {name: sgd, learning_rate: 0.01}
  batch_size: 8
  epochs: 1
"""
# conv 3*3*1*4 + 4 = 40; 8x8 -> 6x6x4 -> 3x3x4 = 36 -> dense 36*3 + 3 = 111
MINIMAL_PARAMS = 151

# The four tutorial configs and their published parameter counts.
TUTORIALS = {
    "mnist": 62_346,
    "fashion_mnist": 693_722,
    "cifar10": 276_138,
    "cifar10_bpu": 776_394,
}

# One broken config per row: (id, edit of MINIMAL_YAML, "LINE:COL", "key.path: message" the one located
# problem starts with, and what it ends with).
BAD_CONFIGS = [
    ("typo_key", ("  dataset: synthetic", "  datset: synthetic"),
     "3:3", "data.datset: unknown key; did you mean 'dataset'?", ""),
    ("wrong_type", ("filters: 4", "filters: four"),
     "7:25", "model.layers[0].Conv2D.filters: input should be a valid integer", "got 'four'"),
    ("negative_filters", ("filters: 4", "filters: -3"),
     "7:25", "model.layers[0].Conv2D.filters: input should be greater than 0, got -3", ""),
    ("yaml_syntax", ("kernel_size: 3, activation: relu}", "kernel_size: 3, activation: relu]"),
     "7:60", "YAML syntax error: expected ',' or '}', but got ']'", ""),
    ("kernel_too_big", ("kernel_size: 3", "kernel_size: 9"),
     "7:7", "model.layers[0] (Conv2D): a 9x9 kernel (dilation (1, 1)) does not fit its 8x8 input (8, 8, 1)",
     "with padding 'valid'"),
    ("pool_leaves_nothing", ("pool_size: 2", "pool_size: 7"),
     "8:7", "model.layers[1] (MaxPooling2D): a 7x7 pooling window leaves nothing of its 6x6 input (6, 6, 4)",
     ""),
    ("unknown_layer", ("Flatten: {}", "Flaten: {}"),
     "9:7", "model.layers[2]: unknown layer type 'Flaten'; did you mean 'Flatten'? (allowed: Conv2D,",
     "LayerNormalization, Rescaling)"),
    ("lambda", ("Flatten: {}", "Lambda: {function: 'lambda x: x'}"),
     "9:7", "model.layers[2]: layer type 'Lambda' is not allowed: it runs Python code from the config", ""),
    ("python_tag", ("name: tiny", "name: !!python/object/apply:os.system [echo owned]"),
     "1:7", "YAML syntax error: '!!python/object/apply:os.system' tags are not allowed", "(configs are plain YAML)"),
    ("duplicate_key", ("train:\n", "name: again\ntrain:\n"),
     "11:1", "name: duplicate key", ""),
    ("unknown_optimizer", ("name: sgd", "name: adamm"),
     "12:21", "train.optimizer.name: input should be 'sgd', 'rmsprop',", "got 'adamm'; did you mean 'adam'?"),
    ("wrong_activation", ("activation: softmax", "activation: softmx"),
     "10:37", "model.layers[3].Dense.activation: input should be 'relu',", "got 'softmx'; did you mean 'softmax'?"),
    ("groups_do_not_divide", ("kernel_size: 3,", "kernel_size: 3, groups: 3,"),
     "7:7", "model.layers[0] (Conv2D): groups=3 must divide both the 1 input channels and the 4 filters", ""),
]


def tiny_config(*, input_shape=(12, 12, 1), filters: int = 4, pool: bool = True, dropout: float | None = None,
                classes: int = 3, layers: list | None = None, **changes) -> dict:
    """A fresh config of a model small enough to train in seconds on synthetic data.

    The model is Conv2D(filters, 3x3) -> MaxPooling2D(2) (unless pool=False) -> Dropout(dropout) if given
    -> Flatten -> Dense(classes, softmax); `layers` replaces that stack. `changes` are top-level keys
    (name=, seed=, data=, train=, runtime=, expect=...) merged into the defaults mapping by mapping,
    e.g. train={"epochs": 2} keeps the optimizer. Defaults: sgd 0.01, batch 16, the schema's epochs.
    """
    if layers is None:
        layers = [{"Conv2D": {"filters": filters, "kernel_size": 3, "activation": "relu"}},
                  *([{"MaxPooling2D": {"pool_size": 2}}] if pool else []),
                  *([{"Dropout": {"rate": dropout}}] if dropout is not None else []),
                  {"Flatten": {}},
                  {"Dense": {"units": classes, "activation": "softmax"}}]
    config = {
        "name": "tiny",
        "data": {"dataset": "synthetic"},
        "model": {"input_shape": list(input_shape), "layers": layers},
        "train": {"optimizer": {"name": "sgd", "learning_rate": 0.01}, "batch_size": 16},
    }
    return _merged(config, copy.deepcopy(changes))


def _merged(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merged(base[key], value)
        else:
            base[key] = value
    return base


def write_config(path: Path, content: str | dict | list) -> Path:
    """Write YAML text, or a mapping as YAML, to path; returns path."""
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def write_yaml(tmp_path):
    """write_yaml(text_or_mapping, name="config.yaml") -> Path of the file written in tmp_path."""

    def write(content: str | dict | list, name: str = "config.yaml") -> Path:
        return write_config(tmp_path / name, content)

    return write


@pytest.fixture
def minimal_config() -> dict:
    """A fresh, valid config mapping (MINIMAL_YAML parsed), safe to modify."""
    return copy.deepcopy(yaml.safe_load(MINIMAL_YAML))


@pytest.fixture
def minimal_path(write_yaml) -> Path:
    return write_yaml(MINIMAL_YAML)


@pytest.fixture(params=BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
def bad_config(request, write_yaml):
    """(path, "FILE:LINE:COL: key.path: message" start, end) of one broken config."""
    _, (old, new), where, start, end = request.param
    assert old in MINIMAL_YAML, old
    path = write_yaml(MINIMAL_YAML.replace(old, new, 1))
    return path, f"{path}:{where}: {start}", end


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def cli(runner):
    """cli(*args) -> click Result of `cnnctl ARGS` run in-process."""
    from cnnctl.cli import app

    def invoke(*args: str | Path):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture(scope="session")
def keras_module():
    import keras

    return keras


@pytest.fixture(scope="session")
def tutorial_models(keras_module):
    """name -> (Config, built keras model) for the four tutorial configs, built once per session."""
    from cnnctl.config import load_config
    from cnnctl.model import build_model

    built = {}
    for name in TUTORIALS:
        config = load_config(CONFIGS / f"{name}.yaml")
        built[name] = (config, build_model(config.model, name=config.name))
    return built


# ---------------------------------------------------------------- data: the dataset sources' tests


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real ~/.keras, $CNNCTL_DATA, Debian folder or network: only what a test puts in place."""
    from cnnctl.data import builtin

    monkeypatch.setenv("CNNCTL_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("CNNCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNCTL_DATA", raising=False)
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


def load(dataset="synthetic", *, input_shape=(8, 8, 3), num_classes=None, validation="none", split=0.25,
         seed=0, data_dir=None, smoke=False, **config):
    """data.load_splits of a DataConfig(dataset, **config), with the model's side given as keywords."""
    from cnnctl import data
    from cnnctl.schema import DataConfig

    config = DataConfig(dataset=dataset, **config)
    return data.load_splits(config, input_shape=list(input_shape), num_classes=num_classes, validation=validation,
                            validation_split=split, seed=seed, data_dir=data_dir, synthetic=smoke)


def write_image(path: Path, mode: str = "RGB", size=(8, 8), value=100, fmt=None) -> Path:
    """An image file made with Pillow: `size` (width, height) of one `value` in every channel, or
    `value` an array (H, W[, C]) that is the image itself; `fmt` when the suffix should not say it."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, np.ndarray):
        image = Image.fromarray(value)
    else:
        image = Image.new(mode, size, value if mode in ("L", "P", "1") else (value,) * len(mode))
    image.save(path, fmt)
    return path


def write_mnist(path: Path, n=5, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.full((n, 28, 28), value, np.uint8)
    y = np.arange(n, dtype=np.uint8) % 10
    np.savez(path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    return path


# ---------------------------------------------------------------- tiny models, checkpoints, run directories


def tiny_model(keras, input_shape=(28, 28, 1), compiled=False):
    model = keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    if compiled:
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def weights_of(model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


@pytest.fixture
def compiled_model(keras_module):
    model = tiny_model(keras_module, (4,), compiled=True)
    model.optimizer.build(model.trainable_variables)
    return model


def disk_full_on_save(model, monkeypatch) -> None:
    """model.save writes part of its file, then the disk is full."""

    def save(filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save", save)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


@pytest.fixture
def unwritable_runs_dir(tmp_path):
    """A runs directory that cannot be written: mode 0555, or (as root, where modes do not stop writes)
    a path under a regular file."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        (locked / "probe").mkdir()
    except OSError:
        yield locked
    else:
        (tmp_path / "afile").write_text("a file, not a directory\n")
        yield tmp_path / "afile" / "runs"
    finally:
        locked.chmod(0o755)


def stderr_of(result) -> str:
    """A CliRunner result's stderr (its whole output for a runner that mixes the streams)."""
    try:
        return result.stderr
    except ValueError:
        return result.output


@contextlib.contextmanager
def working_directory(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(before)


def finish(proc, timeout: float = 300) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a subprocess.Popen; one that is not done in `timeout` s is killed."""
    import subprocess

    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the process did not finish in {timeout} s: {err[-2000:]}") from None
    return proc.returncode, out, err


# ---------------------------------------------------------------- a run trained on logits, with test-time augmentation

# A linear last layer trained with from_logits and label smoothing (integer labels made one-hot per batch), in
# mixed_bfloat16 (so export checks a float32 copy too), evaluated with both test-time augmentation views.
LOGITS_CONFIG = tiny_config(
    name="logits", seed=3, input_shape=(12, 12, 3), data={"synthetic": {"train_examples": 64, "test_examples": 32}},
    layers=[{"Conv2D": {"filters": 4, "kernel_size": 3, "activation": "relu"}}, {"MaxPooling2D": {"pool_size": 2}},
            {"Flatten": {}}, {"Dense": {"units": 3}}],
    train={"optimizer": {"name": "adam", "learning_rate": 0.01}, "epochs": 2, "metrics": ["accuracy", "top_k_accuracy"],
           "top_k": 2, "loss": {"name": "sparse_categorical_crossentropy", "from_logits": True, "label_smoothing": 0.1}},
    runtime={"precision": "mixed_bfloat16"}, evaluate={"tta": ["flip", "translate"], "translate_pixels": 2})


@pytest.fixture(scope="session")
def logits_run(tmp_path_factory):
    """(run directory, config path, the train command's output) of LOGITS_CONFIG trained through the CLI."""
    from typer.testing import CliRunner

    from cnnctl.cli import app

    root = tmp_path_factory.mktemp("logits")
    config = write_config(root / "logits.yaml", LOGITS_CONFIG)
    result = CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(root / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    return root / "runs" / "logits", config, result.output
