"""`cnnctl export`: every format verified against the Keras model; damage caught; nothing overwritten."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config, write_config

from cnnctl import export
from cnnctl.cli import ExportFormat

TINY = tiny_config(
    seed=7, input_shape=(12, 12, 3),
    layers=[{"Conv2D": {"filters": 4, "kernel_size": 3, "activation": "relu"}}, {"BatchNormalization": {}},
            {"MaxPooling2D": {"pool_size": 2}}, {"Flatten": {}}, {"Dropout": {"rate": 0.2}},
            {"Dense": {"units": 5, "activation": "softmax"}}],
    train={"optimizer": {"name": "adam", "learning_rate": 0.05}})
EXTENSIONS = {"keras": "model.keras", "saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two smoke runs of one model: trained in mixed_bfloat16 and in float32."""
    import keras

    from cnnctl.config import load_config
    from cnnctl.train import run

    root = tmp_path_factory.mktemp("export")
    config = write_config(root / "tiny.yaml", TINY)
    made = {}
    try:
        for precision in ("mixed_bfloat16", "float32"):
            result = run(load_config(config, [f"runtime.precision={precision}"]), runs_dir=root / "runs",
                         run_name=precision, smoke=True)
            assert result.status == "completed", result.message
            made[precision] = result.run_dir
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return made


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_the_cli_offers_the_library_formats():
    assert tuple(f.value for f in ExportFormat) == export.FORMATS


@pytest.mark.parametrize("format", export.FORMATS)
def test_every_format_round_trips_through_the_check(cli, runs, format):
    run = runs["mixed_bfloat16"]
    result = cli("export", run, "--format", format)
    assert result.exit_code == 0, result.output
    path = run / "export" / EXTENSIONS[format]
    assert path.is_dir() if format == "saved_model" else path.is_file()
    assert f"exported   {path}" in result.output
    tolerance = export.TOLERANCES[format]
    assert "checked    16 test images: largest difference" in result.output  # a smoke run's test split
    assert f"(tolerance {tolerance:g})" in result.output
    if format == "keras":
        assert "trained in" not in result.output  # the .keras file keeps the model's own precision
    else:
        assert "float32 copy of a mixed_bfloat16 model" in result.output
        assert "against the model as trained in mixed_bfloat16" in result.output
        assert "(tolerance 0.05)" in result.output
    assert [name for name in leftovers(run / "export") if name.startswith(".")] == []  # no temporary files


def test_a_float32_model_is_checked_once_and_the_export_runs_standalone(cli, runs, tmp_path):
    out = tmp_path / "plain.onnx"
    result = cli("export", runs["float32"], "--format", "onnx", "--out", out)
    assert result.exit_code == 0, result.output
    assert "float32 copy" not in result.output and "trained in" not in result.output
    import onnxruntime

    from cnnctl.model import load_model

    x = np.random.default_rng(1).random((3, 12, 12, 3), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    expected = load_model(runs["float32"] / "checkpoints" / "best.keras").predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-3)


@pytest.mark.parametrize("format", export.FORMATS)
def test_a_model_trained_on_logits_is_exported_with_its_softmax(logits_run, tmp_path, format):
    """The export outputs probabilities, checked against the Keras model's softmax, whatever the format."""
    from cnnctl.model import load_model

    run, _, _ = logits_run
    out = tmp_path / f"logits{export.SUFFIXES[format]}" if format != "saved_model" else tmp_path / "saved"
    result = export.export(run, format, out)
    assert result.difference <= result.tolerance and result.precision == "mixed_bfloat16"
    x = np.random.default_rng(2).random((6, 12, 12, 3), dtype=np.float32)
    outputs = np.asarray(export._run(format, out, x), dtype=np.float64)
    logits = np.asarray(load_model(run / "checkpoints" / "best.keras").predict(x, verbose=0), dtype=np.float64)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, atol=1e-5)
    tolerance = 1e-5 if format == "keras" else export.MIXED_TOLERANCES["mixed_bfloat16"]  # others: a float32 copy
    np.testing.assert_allclose(outputs, softmax, atol=tolerance)


# ---------------------------------------------------------------- damage between writing and checking


def shifted(bias: np.ndarray) -> np.ndarray:
    """A different bias per class (a shift of all of them alike would not change a softmax)."""
    return (bias + 2.0 * np.arange(len(bias))).astype(np.float32)


def _shift_bias_bytes(path, bias: np.ndarray) -> int:
    """Replace the stored bytes of the last layer's bias (float32) in every file under path."""
    files = [p for p in (path.rglob("*") if path.is_dir() else [path]) if p.is_file()]
    replaced = 0
    for file in files:
        blob = file.read_bytes()
        if bias.tobytes() in blob:
            file.write_bytes(blob.replace(bias.tobytes(), shifted(bias).tobytes()))
            replaced += 1
    return replaced


def damage(run_dir):
    """A before_verify hook that changes the written export's weights, per format."""

    def hook(path, format):
        import keras

        if format == "keras":
            model = keras.saving.load_model(path, compile=False)
            kernel, bias = model.layers[-1].get_weights()
            model.layers[-1].set_weights([kernel, shifted(bias)])
            model.save(path)
        elif format == "onnx":
            import onnx
            from onnx import numpy_helper

            graph = onnx.load(str(path))
            for initializer in graph.graph.initializer:
                weights = numpy_helper.to_array(initializer)
                if weights.dtype == np.float32 and weights.size > 8:
                    initializer.CopyFrom(numpy_helper.from_array(weights * -2.0, initializer.name))
            onnx.save(graph, str(path))
        else:  # tflite, saved_model: flip the bias's bytes in the written files
            model = keras.saving.load_model(run_dir / "checkpoints" / "best.keras", compile=False)
            bias = model.layers[-1].get_weights()[1].astype(np.float32)
            assert _shift_bias_bytes(path, bias) >= 1, f"the bias bytes are not in the {format} export"

    return hook


@pytest.mark.parametrize("format", export.FORMATS)
def test_a_damaged_export_is_caught_and_nothing_is_left(cli, runs, tmp_path, monkeypatch, format):
    run = runs["float32"]
    monkeypatch.setattr(export, "before_verify", damage(run))
    monkeypatch.chdir(tmp_path)  # cnnctl creates a missing folder only inside the current directory
    out = tmp_path / "out" / EXTENSIONS[format]
    result = cli("export", run, "--format", format, "--out", out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "largest difference" in result.output or "cannot be loaded and run" in result.output
    assert f"nothing was written to {out}" in result.output
    assert not out.exists() and not (tmp_path / "out").exists()  # the folder it made is gone too


def test_the_difference_is_stated_when_it_is_too_large(cli, runs, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "before_verify", damage(runs["float32"]))
    result = cli("export", runs["float32"], "--format", "keras", "--out", tmp_path / "m.keras")
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "disagrees with the Keras model on 16 test images: largest difference" in message
    assert "> tolerance 0.0001" in message
    assert leftovers(tmp_path) == []


def test_an_existing_out_is_never_overwritten(cli, runs, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_text("precious")
    result = cli("export", runs["float32"], "--format", "onnx", "--out", out)
    assert result.exit_code == 2 and "already exists" in result.output and "never overwrites" in result.output
    assert out.read_text() == "precious" and leftovers(tmp_path) == ["model.onnx"]
    folder = tmp_path / "sm"
    folder.mkdir()
    result = cli("export", runs["float32"], "--format", "saved_model", "--out", folder)
    assert result.exit_code == 2 and leftovers(folder) == []


def test_bad_requests_exit_2(cli, runs, tmp_path):
    no_suffix = cli("export", runs["float32"], "--format", "keras", "--out", tmp_path / "model.h5")
    assert no_suffix.exit_code == 2 and "must end in .keras" in no_suffix.output
    not_a_run = cli("export", tmp_path, "--format", "onnx")
    assert not_a_run.exit_code == 2 and "not a cnnctl run directory" in not_a_run.output
    unknown = cli("export", runs["float32"], "--format", "pickle")
    assert unknown.exit_code == 2
    assert leftovers(tmp_path) == []


def test_a_missing_runtime_is_reported_with_what_to_install(cli, runs, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    out = tmp_path / "m.onnx"
    result = cli("export", runs["float32"], "--format", "onnx", "--out", out)
    assert result.exit_code == 1 and "needs packages that are not installed" in result.output
    assert "pip install tf2onnx onnx onnxruntime" in result.output
    assert leftovers(tmp_path) == []


def test_smoke_runs_are_checked_on_their_synthetic_test_images(runs):
    from cnnctl import rundata

    manifest = json.loads((runs["float32"] / "manifest.json").read_text())
    assert manifest["smoke"] is True
    config, splits = rundata.test_split(runs["float32"])
    assert config.data.dataset == "synthetic" and len(splits.x_test) == 16 < export.CHECK_IMAGES
