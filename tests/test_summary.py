"""summary.summarize / render: the Keras-style table with MACs, memory and the published count."""

from __future__ import annotations

import io
import json
import math

import pytest
from conftest import CONFIGS, TUTORIALS
from rich.console import Console

from cnnctl.config import load_config
from cnnctl.model import build_model
from cnnctl.schema import Config
from cnnctl.summary import _human_bytes, _human_count, render, summarize


def rendered(data: dict) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    render(data, console)
    return console.file.getvalue()


@pytest.fixture(scope="module")
def mnist_summary(tutorial_models):
    config, model = tutorial_models["mnist"]
    return summarize(config, model, "float32")


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_summaries_match_the_published_counts(tutorial_models, name):
    config, model = tutorial_models[name]
    data = summarize(config, model, "float32")
    assert data["total_params"] == data["expected_params"] == TUTORIALS[name]
    assert data["params_match"] is True
    assert data["trainable_params"] == TUTORIALS[name] and data["non_trainable_params"] == 0
    assert [layer["output_shape"] for layer in data["layers"]] == [
        [None, *layer.output.shape[1:]] for layer in model.layers]
    assert [layer["params"] for layer in data["layers"]] == [layer.count_params() for layer in model.layers]
    text = rendered(data)
    assert f"Total params: {TUTORIALS[name]:,}" in text
    assert f"Published parameter count {TUTORIALS[name]:,}: matches" in text


def test_mnist_summary_rows(mnist_summary):
    assert mnist_summary["layers"][2] == {"name": "conv2d_1", "type": "Conv2D", "output_shape": [None, 8, 8, 64],
                                          "params": 51_264, "macs": 3_276_800}
    assert mnist_summary["input_shape"] == [None, 28, 28, 1]
    assert mnist_summary["total_macs"] == 3_747_840
    text = rendered(mnist_summary)
    assert 'Model: "mnist"' in text
    assert "conv2d_1 (Conv2D)" in text and "(None, 8, 8, 64)" in text and "3,276,800" in text
    assert "MACs per image: 3,747,840 (3.75 MMACs, forward pass)" in text


def test_memory_by_hand(tutorial_models, mnist_summary):
    # Activations of one image: the input plus every layer's output.
    elements = 28 * 28 * 1 + 24 * 24 * 32 + 12 * 12 * 32 + 8 * 8 * 64 + 4 * 4 * 64 + 1024 + 10
    assert mnist_summary["param_bytes"] == 62_346 * 4
    assert mnist_summary["activation_bytes_per_batch"] == elements * 100 * 4  # batch_size 100, float32
    config, model = tutorial_models["mnist"]
    half = summarize(config, model, "mixed_bfloat16")
    assert half["activation_bytes_per_batch"] == elements * 100 * 2
    assert half["param_bytes"] == 62_346 * 4  # variables stay float32
    assert "Precision: mixed_bfloat16 (parameters 243.54 KB in float32; activations of one batch of 100: 5.72 MB)" \
        in rendered(half)


def test_a_differing_count_is_reported(tutorial_models):
    config, model = tutorial_models["mnist"]
    wrong = config.model_copy(update={"expect": config.expect.model_copy(update={"params": 62_000})})
    data = summarize(wrong, model, "float32")
    assert data["params_match"] is False
    assert "Published parameter count 62,000: differs (built 62,346)" in rendered(data)


def test_without_expectations_there_is_no_verdict(tutorial_models):
    config, model = tutorial_models["mnist"]
    data = summarize(config.model_copy(update={"expect": None}), model, "float32")
    assert "params_match" not in data and "expected_params" not in data
    assert "Published" not in rendered(data)


def test_non_trainable_parameters(keras_module, minimal_config):
    minimal_config["model"]["layers"][1:1] = [{"BatchNormalization": {}}, {"Conv2D": {
        "filters": 2, "kernel_size": 1, "trainable": False}}]
    config = Config.model_validate(minimal_config)
    data = summarize(config, build_model(config.model, name=config.name), "float32")
    # BatchNormalization on 4 channels: gamma and beta train, the moving mean and variance do not;
    # the frozen 1x1 conv (4 -> 2 channels) adds 4*2 + 2 more that do not.
    frozen = 2 * 4 + (4 * 2 + 2)
    assert data["non_trainable_params"] == frozen
    assert data["trainable_params"] == data["total_params"] - frozen
    assert f"Non-trainable params: {frozen:,}" in rendered(data)
    assert data["total_params"] == sum(layer["params"] for layer in data["layers"])


def test_summary_is_json_friendly(mnist_summary):
    assert json.loads(json.dumps(mnist_summary)) == mnist_summary


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.00 KB"), (5 * 2**20, "5.00 MB"),
                                         (3 * 2**30, "3.00 GB"), (2**50, f"{2**20:,.2f} GB")])
def test_human_bytes(n, text):
    assert _human_bytes(n) == text


@pytest.mark.parametrize(("n", "text"), [(999, "999"), (1_000, "1.00 K"), (3_747_840, "3.75 M"),
                                         (2 * 10**9, "2.00 G")])
def test_human_count(n, text):
    assert _human_count(n) == text


def test_macs_total_is_the_sum_of_rows(mnist_summary):
    assert mnist_summary["total_macs"] == sum(layer["macs"] for layer in mnist_summary["layers"])
    assert math.prod(mnist_summary["layers"][-1]["output_shape"][1:]) == 10


def test_numbers_survive_a_narrow_console(keras_module):
    config = load_config(CONFIGS / "mnist.yaml", ["model.layers[2].Conv2D.name=a_rather_long_name_" + "x" * 40])
    data = summarize(config, build_model(config.model, name=config.name), "float32")
    console = Console(file=io.StringIO(), width=80, color_system=None)
    render(data, console)
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "51,264" in text and "3,276,800" in text and "…" not in text


# ---------------------------------------------------------------- data.augment: one line, no parameters

AUGMENT = ("data.augment=[{RandomFlip: {mode: horizontal}}, {RandomTranslation: {height_factor: 0.1, "
           "width_factor: [-0.1, 0.2]}}, MixUp]")
AUGMENT_LINE = (" Augmentation (training batches only, in the input pipeline; not in the model): "
                "RandomFlip(mode=horizontal) -> RandomTranslation(height_factor=0.1, width_factor=[-0.1, 0.2]) -> MixUp()")


@pytest.mark.parametrize("name", TUTORIALS)
def test_augmentation_adds_one_line_and_no_parameters(tutorial_models, name):
    config, model = tutorial_models[name]
    assert config.data.augment == []  # the tutorials train on their images as they are
    plain = summarize(config, model, "float32")
    assert "augment" not in plain and "Augmentation" not in rendered(plain)
    augmented = load_config(CONFIGS / f"{name}.yaml", [AUGMENT])
    data = summarize(augmented, build_model(augmented.model, name=augmented.name), "float32")
    assert data.pop("augment") == ["RandomFlip(mode=horizontal)",
                                   "RandomTranslation(height_factor=0.1, width_factor=[-0.1, 0.2])", "MixUp()"]
    assert data == plain  # the same layers, parameters, MACs and memory: augmentation is not in the model
    text = rendered(summarize(augmented, model, "float32"))
    assert [line for line in text.splitlines() if line not in rendered(plain).splitlines()] == [AUGMENT_LINE]
    assert text.replace(AUGMENT_LINE + "\n", "") == rendered(plain)


def test_the_summary_command_shows_the_augmentation(cli):
    plain = cli("summary", CONFIGS / "mnist.yaml")
    result = cli("summary", CONFIGS / "mnist.yaml", "--set", AUGMENT)
    assert plain.exit_code == result.exit_code == 0, result.output
    assert "Augmentation" not in plain.stdout
    text = " ".join(result.stdout.split())
    assert " ".join(AUGMENT_LINE.split()) in text and "Total params: 62,346" in text
    assert "Published parameter count 62,346: matches" in text
    data = json.loads(cli("summary", CONFIGS / "mnist.yaml", "--set", AUGMENT, "--json").stdout)
    assert data["augment"][0] == "RandomFlip(mode=horizontal)" and data["total_params"] == 62_346
