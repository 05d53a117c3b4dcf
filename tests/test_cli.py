"""The command line, in-process with CliRunner (and in subprocesses where imports matter)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from conftest import CONFIGS, MINIMAL_YAML, REPO, TUTORIALS, stderr_of

from cnnctl import __version__, runtime
from cnnctl.cli import app
from cnnctl.config import config_from_yaml_text, load_config
from cnnctl.runtime import Gpu, Hardware

NO_GPU = Hardware("Test CPU", frozenset({"avx2"}), (), 2)
ONE_GPU = Hardware("Test CPU", frozenset({"avx2"}), (Gpu(0, "NVIDIA Test GPU", (8, 6)),), 2)
COMMANDS = sorted(typer.main.get_command(app).commands)


def error_lines(result) -> list[str]:
    return [line for line in stderr_of(result).splitlines() if line.startswith("error: ")]


def assert_clean_failure(result, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ---------------------------------------------------------------- help, version


def test_the_foundation_commands_are_registered():
    assert {"config", "schema", "summary", "devices"} <= set(COMMANDS)


def test_app_help(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: cnnctl {command}" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"cnnctl {__version__}"


# ---------------------------------------------------------------- config errors through the CLI


@pytest.mark.parametrize("command", ["config", "summary"])
def test_broken_configs_exit_2_with_one_located_message(cli, bad_config, command):
    path, start, end = bad_config
    result = cli(command, path)
    assert_clean_failure(result)
    (line,) = error_lines(result)
    assert line.startswith(f"error: {start}") and line.endswith(end), line
    assert result.stdout == ""


def test_all_problems_are_shown_together(cli, write_yaml):
    path = write_yaml(MINIMAL_YAML.replace("filters: 4", "filters: -1").replace("epochs: 1", "epochs: 0")
                      .replace("  dataset:", "  datset:"))
    result = cli("config", path)
    assert_clean_failure(result)
    assert error_lines(result) == [
        f"error: {path}:3:3: data.datset: unknown key; did you mean 'dataset'?",
        f"error: {path}:7:25: model.layers[0].Conv2D.filters: input should be greater than 0, got -1",
        f"error: {path}:14:11: train.epochs: input should be greater than 0, got 0",
    ]


def test_missing_file_exits_2(cli, tmp_path):
    result = cli("config", tmp_path / "nope.yaml")
    assert_clean_failure(result)
    assert error_lines(result) == [f"error: {tmp_path / 'nope.yaml'}: no such config file"]


@pytest.mark.parametrize(("text", "got"), [("", "an empty file"), ("- Conv2D\n- Dense\n", "list")])
def test_a_config_that_is_not_a_mapping_exits_2(cli, write_yaml, text, got):
    path = write_yaml(text)
    result = cli("summary", path)
    assert_clean_failure(result)
    assert error_lines(result) == [f"error: {path}:1:1: a config is a mapping with name, data, model and train; "
                                   f"got {got}"]


def test_debug_shows_the_exception(runner, minimal_path):
    result = runner.invoke(app, ["--debug", "config", str(minimal_path), "--set", "train.epochs=-1"])
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "ConfigError"


@pytest.mark.parametrize("override", ["a[/b]=1", "train.epochs=[bold]x"])
def test_error_text_is_printed_verbatim(cli, minimal_path, override):
    result = cli("config", minimal_path, "--set", override)
    assert_clean_failure(result)
    assert f"--set {override}" in stderr_of(result)


# ---------------------------------------------------------------- --set


def test_set_overrides_are_typed_and_nested(cli, minimal_path):
    result = cli("config", minimal_path, "--set", "model.input_shape=[32,32,3]", "-s", "train.shuffle=false",
                 "--set", "model.layers[0].Conv2D.filters=16", "--set", "model.layers.3.Dense.units=7",
                 "--set", "train.optimizer.learning_rate=0.5")
    assert result.exit_code == 0, result.output
    config = config_from_yaml_text(result.stdout, "printed")
    assert config.model.input_shape == [32, 32, 3]
    assert config.train.shuffle is False
    assert config.model.layers[0].args.filters == 16 and config.model.layers[3].args.units == 7
    assert config.train.optimizer.learning_rate == 0.5


def test_set_with_a_wrong_key_suggests(cli, minimal_path):
    result = cli("config", minimal_path, "--set", "train.optimzer.name=adam")
    assert_clean_failure(result)
    assert error_lines(result) == ["error: --set train.optimzer.name=adam: train.optimzer: unknown key; "
                                   "did you mean 'optimizer'?"]


def test_set_with_a_bad_value_is_located_at_the_override(cli, minimal_path):
    result = cli("summary", minimal_path, "--set", "model.layers[0].Conv2D.filters=-3")
    assert_clean_failure(result)
    assert error_lines(result) == ["error: --set model.layers[0].Conv2D.filters=-3: "
                                   "model.layers[0].Conv2D.filters: input should be greater than 0, got -3"]


def test_set_never_modifies_the_file(cli, minimal_path):
    before, mtime = minimal_path.read_bytes(), minimal_path.stat().st_mtime_ns
    assert cli("config", minimal_path, "--set", "train.epochs=9").exit_code == 0
    assert cli("config", minimal_path, "--set", "train.epochs=-9").exit_code == 2
    assert (minimal_path.read_bytes(), minimal_path.stat().st_mtime_ns) == (before, mtime)


# ---------------------------------------------------------------- config, schema


@pytest.mark.parametrize("name", TUTORIALS)
def test_config_prints_yaml_that_round_trips(cli, write_yaml, name):
    overrides = ["--set", "train.epochs=2", "--set", "runtime.precision=float32"]
    result = cli("config", CONFIGS / f"{name}.yaml", *overrides)
    assert result.exit_code == 0, result.output
    expected = load_config(CONFIGS / f"{name}.yaml", ["train.epochs=2", "runtime.precision=float32"])
    assert config_from_yaml_text(result.stdout, "printed") == expected
    # The printed file is a config in its own right, and prints the same again.
    again = cli("config", write_yaml(result.stdout, "resolved.yaml"))
    assert again.exit_code == 0 and again.stdout == result.stdout


@pytest.mark.parametrize("name", TUTORIALS)
def test_a_tutorials_loss_is_printed_as_written_and_there_is_no_test_time_augmentation(cli, name):
    import re

    written = re.search(r"^  loss: (\w+)", (CONFIGS / f"{name}.yaml").read_text(), re.M).group(1)
    result = cli("config", CONFIGS / f"{name}.yaml")
    assert result.exit_code == 0 and f"\n  loss: {written}\n" in result.stdout
    assert "evaluate" not in result.stdout and "from_logits" not in result.stdout


@pytest.fixture(scope="module")
def json_schema():
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_schema_is_json_with_the_sections(json_schema):
    assert json_schema["$schema"].startswith("https://json-schema.org/")
    assert {"name", "data", "model", "train", "runtime", "expect"} <= set(json_schema["properties"])
    assert set(json_schema["required"]) == {"name", "data", "model", "train"}


@pytest.mark.parametrize("name", TUTORIALS)
def test_configs_validate_against_the_schema(json_schema, name):
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    validator = jsonschema.Draft202012Validator(json_schema)
    validator.check_schema(json_schema)
    document = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert list(validator.iter_errors(document)) == []
    document["model"]["layers"][0]["Conv2D"]["filtres"] = 3
    assert list(validator.iter_errors(document))


# ---------------------------------------------------------------- summary


@pytest.mark.parametrize("name", TUTORIALS)
def test_summary_prints_the_published_total(cli, name):
    result = cli("summary", CONFIGS / f"{name}.yaml")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert f"Total params: {TUTORIALS[name]:,}" in text
    assert f"Published parameter count {TUTORIALS[name]:,}: matches" in text


@pytest.mark.parametrize("name", TUTORIALS)
def test_summary_json(cli, name):
    result = cli("summary", CONFIGS / f"{name}.yaml", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total_params"] == TUTORIALS[name] and data["params_match"] is True
    assert data["layers"] and all({"name", "type", "output_shape", "params", "macs"} <= set(layer)
                                  for layer in data["layers"])
    assert data["layers"][-1]["output_shape"] == [None, 10]
    assert sum(layer["params"] for layer in data["layers"]) == data["total_params"]
    assert data["total_macs"] == sum(layer["macs"] for layer in data["layers"]) > 0


def test_summary_with_an_override(cli):
    result = cli("summary", CONFIGS / "fashion_mnist.yaml", "--set", "model.layers[0].Conv2D.filters=32", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total_params"] == 2_770_634
    assert data["params_match"] is False and data["expected_params"] == 693_722


def test_summary_of_an_impossible_shape_names_the_layer(cli, minimal_path):
    result = cli("summary", minimal_path, "--set", "model.input_shape=[3,3,1]")
    assert_clean_failure(result)
    assert error_lines(result) == [f"error: {minimal_path}:8:7: model.layers[1] (MaxPooling2D): a 2x2 pooling "
                                   "window leaves nothing of its 1x1 input (1, 1, 4)"]


def test_summary_on_a_machine_without_the_gpu_asked_for(cli, monkeypatch):
    monkeypatch.setattr(runtime, "probe_hardware", lambda: NO_GPU)
    result = cli("summary", CONFIGS / "mnist.yaml", "--set", "runtime.device=gpu")
    assert_clean_failure(result)
    assert error_lines(result) == ["error: runtime.device: gpu asked for, but TensorFlow sees only: CPU:0"]
    assert "hint: use runtime.device=auto or cpu" in stderr_of(result)


def test_summary_reports_the_planned_precision(cli, monkeypatch):
    monkeypatch.setattr(runtime, "probe_hardware", lambda: ONE_GPU)
    result = cli("summary", CONFIGS / "mnist.yaml", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["precision"] == "mixed_float16" and "8.6" in data["precision_reason"]
    assert data["activation_bytes_per_batch"] * 2 == json.loads(cli(
        "summary", CONFIGS / "mnist.yaml", "--json", "--set", "runtime.precision=float32").stdout)[
        "activation_bytes_per_batch"]


# ---------------------------------------------------------------- devices


def test_devices_with_a_gpu(cli, monkeypatch):
    monkeypatch.setattr(runtime, "probe_hardware", lambda: ONE_GPU)
    result = cli("devices")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "NVIDIA Test GPU, compute capability 8.6" in text
    assert "auto device: /GPU:0" in text and "auto precision: mixed_float16" in text
    assert "auto XLA: True" in text


def test_devices_json_on_this_machine(cli):
    result = cli("devices", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"cpu", "gpus", "versions", "auto"}
    assert data["versions"]["tensorflow"].startswith("2.")
    assert data["auto"]["device"] in {"/CPU:0", "/GPU:0"}
    assert data["cpu"]["logical_cpus"] >= 1


# ---------------------------------------------------------------- TensorFlow stays out of config work


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cli_config_and_schema_modules_do_not_import_tensorflow():
    result = run_python("-c", "import cnnctl.cli, cnnctl.config, cnnctl.schema, sys; "
                              "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("config_text", [MINIMAL_YAML, MINIMAL_YAML.replace("kernel_size: 3", "kernel_size: 9")])
def test_cnnctl_config_runs_without_tensorflow(tmp_path, config_text):
    path = tmp_path / "config.yaml"
    path.write_text(config_text)
    result = run_python("-X", "importtime", "-m", "cnnctl", "config", str(path))
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "import time:" in line}
    assert "cnnctl.config" in imported  # the probe works
    assert not {name for name in imported if name.split(".")[0] in {"tensorflow", "keras"}}
    if "kernel_size: 9" in config_text:
        assert result.returncode == 2
        assert f"error: {path}:7:7: model.layers[0] (Conv2D): a 9x9 kernel" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
