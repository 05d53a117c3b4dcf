"""`cnnctl predict` on real images: MNIST digits written as PNG/JPEG, CIFAR-10 JPEGs from the shared tarball."""

from __future__ import annotations

import collections
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, SHARED_DATASETS, tiny_config, write_config

pytestmark = pytest.mark.slow  # every test here uses a model trained on real MNIST digits or CIFAR-10 JPEGs

MNIST = SHARED_DATASETS / "mnist.npz"
CIFAR = SHARED_DATASETS / "cifar10-jpg.tar.gz"

TINY_CIFAR = tiny_config(
    name="tinycifar", seed=0, data={"dataset": "directory", "cache": False}, input_shape=(32, 32, 3),
    layers=[{"Conv2D": {"filters": 16, "kernel_size": 3, "activation": "relu"}}, {"MaxPooling2D": {"pool_size": 2}},
            {"Conv2D": {"filters": 32, "kernel_size": 3, "activation": "relu"}}, {"MaxPooling2D": {"pool_size": 2}},
            {"Flatten": {}}, {"Dense": {"units": 10, "activation": "softmax"}}],
    train={"optimizer": {"name": "adam", "learning_rate": 0.003}, "batch_size": 64, "epochs": 4})


def train(config_path, overrides, runs_dir, name):
    import keras

    from cnnctl.config import load_config
    from cnnctl.train import run

    try:
        result = run(load_config(config_path, overrides), runs_dir=runs_dir, run_name=name)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert result.status == "completed", result.message
    return result


def accuracy(results, truth) -> float:
    return float(np.mean([r["top"][0]["class"] == truth[Path(r["image"]).name] for r in results]))


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """A CNN trained briefly on 6,000 real MNIST digits; 30 unseen test digits as PNG, and 20 as 56x56 RGB JPEG."""
    if not MNIST.is_file():
        pytest.skip(f"{MNIST} is not here")
    from PIL import Image

    root = tmp_path_factory.mktemp("mnist")
    with np.load(MNIST) as npz:
        x_train, y_train, x_test, y_test = (npz[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    np.savez(root / "slice.npz", x_train=x_train[:6000], y_train=y_train[:6000], x_test=x_test[:500],
             y_test=y_test[:500])
    result = train(CONFIGS / "mnist.yaml", ["data.dataset=npz", f"data.root={root / 'slice.npz'}", "train.epochs=2",
                                            "train.optimizer.name=adam", "train.optimizer.learning_rate=0.002"],
                   root / "runs", "mnist-slice")
    pngs, jpegs = root / "png", root / "jpeg"
    pngs.mkdir()
    jpegs.mkdir()
    truth = {}
    for i in range(1000, 1030):  # never seen in training (test split), never evaluated by the fixture (first 500)
        name = f"digit-{i}.png"
        Image.fromarray(x_test[i]).save(pngs / name)
        truth[name] = str(y_test[i])
    for i in range(1030, 1050):
        name = f"digit-{i}.jpg"
        Image.fromarray(x_test[i]).convert("RGB").resize((56, 56), Image.BILINEAR).save(jpegs / name, quality=95)
        truth[name] = str(y_test[i])
    (pngs / "README.txt").write_text("not an image: predict skips it in a folder")
    return result.run_dir, pngs, jpegs, truth


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A small CNN trained briefly on 3,000 CIFAR-10 JPEGs; 100 test JPEGs (10 per class) to classify."""
    if not CIFAR.is_file():
        pytest.skip(f"{CIFAR} is not here")
    root = tmp_path_factory.mktemp("cifar")
    data, unseen = root / "data", root / "unseen"
    wanted = {"train": 300, "test": 10}
    counts: collections.Counter = collections.Counter()
    truth = {}
    with tarfile.open(CIFAR, "r:gz") as tar:
        for member in tar:  # cifar10-jpg/<split>/<class>/<NNNN>.jpg
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or not parts[3].endswith(".jpg"):
                continue
            split, label, file = parts[1:]
            if counts[split, label] >= wanted.get(split, 0):
                continue
            counts[split, label] += 1
            folder = data / split / label
            if split == "test":  # held out: the run's test split gets one image per class from elsewhere
                folder, file = unseen, f"{label}-{file}"
                truth[file] = label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / file).write_bytes(tar.extractfile(member).read())
    for label in {label for _, label in counts}:
        (data / "test" / label).mkdir(parents=True)
        shutil.copy(next((data / "train" / label).iterdir()), data / "test" / label / "0.jpg")
    config = write_config(root / "tinycifar.yaml", TINY_CIFAR)
    result = train(config, [f"data.root={data}"], root / "runs", "cifar-slice")
    return result.run_dir, unseen, truth


def test_predict_mnist_pngs(cli, mnist):
    run, pngs, _, truth = mnist
    result = cli("predict", run, pngs, "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert [Path(r["image"]).name for r in results] == sorted(p.name for p in pngs.glob("*.png"))
    assert accuracy(results, truth) >= 0.85, results
    for r in results:
        assert len(r["top"]) == 3
        probabilities = [t["probability"] for t in r["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
        assert all(t["class"] == str(t["index"]) for t in r["top"])


def test_predict_resizes_rgb_jpegs_for_a_grayscale_model(cli, mnist):
    run, _, jpegs, truth = mnist
    result = cli("predict", run, jpegs, "--json", "--top-k", "1")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert len(results) == 20 and all(len(r["top"]) == 1 for r in results)
    assert accuracy(results, truth) >= 0.75, results


def test_predict_prints_one_line_per_image(cli, mnist):
    run, pngs, _, truth = mnist
    image = pngs / "digit-1000.png"
    result = cli("predict", run, image, "--top-k", "2")
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    fields = line.split()
    assert fields[0] == str(image) and len(fields) == 5
    assert fields[1] == truth["digit-1000.png"] and 0.5 < float(fields[2]) <= 1.0


def test_a_bare_model_file_takes_names_from_config_or_uses_indices(cli, mnist, tmp_path):
    run, pngs, _, truth = mnist
    model = tmp_path / "digits.keras"
    shutil.copy(run / "checkpoints" / "best.keras", model)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    import yaml

    data = yaml.safe_load((run / "config.yaml").read_text())
    data["data"]["class_names"] = names
    config = tmp_path / "named.yaml"
    config.write_text(yaml.safe_dump(data))
    image = pngs / "digit-1001.png"
    named = json.loads(cli("predict", model, image, "--config", config, "--json").stdout)
    indexed = json.loads(cli("predict", model, image, "--json").stdout)
    assert named[0]["top"][0]["class"] == names[int(truth[image.name])]
    assert indexed[0]["top"][0]["class"] == truth[image.name]
    wrong = tmp_path / "wrong.yaml"
    data["data"]["class_names"] = names[:3]
    data["data"]["num_classes"] = 3
    data["model"]["layers"][-1]["Dense"]["units"] = 3
    wrong.write_text(yaml.safe_dump(data))
    mismatch = cli("predict", model, image, "--config", wrong)
    assert mismatch.exit_code == 2 and "names 3 classes but the model" in mismatch.output


def test_cifar_jpegs_are_classified_better_than_chance(cli, cifar):
    run, unseen, truth = cifar
    result = cli("predict", run, unseen, "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert len(results) == 100
    assert {t["class"] for r in results for t in r["top"]} <= set(truth.values())  # CIFAR names, not indices
    assert accuracy(results, truth) >= 0.25  # chance is 0.10; this model reaches ~0.45


def test_cifar_jpegs_into_the_mnist_model(cli, mnist, cifar):
    run, *_ = mnist
    _, unseen, _ = cifar  # 32x32 RGB JPEGs into a 28x28x1 model
    result = cli("predict", run, unseen, "--json", "--top-k", "3")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert len(results) == 100
    for r in results:
        probabilities = [t["probability"] for t in r["top"]]
        assert len(probabilities) == 3 and all(0.0 <= p <= 1.0 for p in probabilities)
        assert sum(probabilities) <= 1 + 1e-6


@pytest.mark.parametrize("case", ["not_an_image", "empty_folder", "missing", "not_a_run"])
def test_unreadable_inputs_exit_2_with_the_file_named(cli, mnist, tmp_path, case):
    run, pngs, _, _ = mnist
    target, images, message = run, None, None
    if case == "not_an_image":
        images = tmp_path / "notes.png"
        images.write_text("hello, I am text")
        message = f"{images}: cannot read image"
    elif case == "empty_folder":
        images = tmp_path / "empty"
        images.mkdir()
        message = f"{images}: no images"
    elif case == "missing":
        images = tmp_path / "nowhere.png"
        message = f"{images}: no such file or folder"
    else:
        target, images, message = tmp_path, pngs, f"{tmp_path}: not a cnnctl run directory"
    result = cli("predict", target, images)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
