"""What a run reports: the evaluation of a model, eval.json with its plots, the published-figure checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config, write_config

from cnnctl import results
from cnnctl.config import load_config
from cnnctl.errors import RunError


@pytest.fixture(scope="module")
def model_and_data(keras_module):
    """A fixed 'model' that predicts class (pixel value % 3) with known probabilities, and its test data."""
    keras = keras_module
    x = (np.arange(12, dtype=np.uint8) * 3).reshape(12, 1, 1, 1)  # pixels 0, 3, 6, ... 33
    y = (np.arange(12) % 3).astype(np.uint8)
    y[0] = 1  # one mistake: image 0 is labelled 1 but predicted 0
    inputs = keras.Input((1, 1, 1))
    pixel = keras.layers.Flatten()(inputs) * 255.0
    third = keras.ops.floor(pixel / 3.0)
    label = third - 3.0 * keras.ops.floor(third / 3.0)
    logits = keras.ops.one_hot(keras.ops.cast(keras.ops.squeeze(label, -1), "int32"), 3) * 4.0
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    return model, x, y


def test_evaluate_model_reports_on_every_test_image(model_and_data):
    model, x, y = model_and_data
    report = results.evaluate_model(model, x, y, ["a", "b", "c"], batch_size=5, top_k=2)
    assert report["examples"] == 12 and report["accuracy"] == pytest.approx(11 / 12)
    assert report["confusion_matrix"][1] == [1, 4, 0] and report["class_names"] == ["a", "b", "c"]
    assert report["misclassified"][0]["index"] == 0 and report["top_k"] == 2


def test_a_model_trained_on_logits_is_evaluated_on_their_softmax(model_and_data, keras_module):
    model, x, y = model_and_data
    logits = keras_module.Model(model.inputs, model.layers[-1].input)  # the same model without its softmax
    report = results.evaluate_model(logits, x, y, ["a", "b", "c"], batch_size=5, top_k=2, from_logits=True)
    expected = results.evaluate_model(model, x, y, ["a", "b", "c"], batch_size=5, top_k=2)
    assert report["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    probability = np.exp(4.0) / (np.exp(4.0) + 2)  # of the predicted class; image 0's label got 1 / (e^4 + 2)
    by_hand = -(11 * np.log(probability) + np.log(1 / (np.exp(4.0) + 2))) / 12
    assert report["loss"] == pytest.approx(by_hand, abs=1e-5)  # cross-entropy of probabilities, not of logits
    assert {k: report[k] for k in ("accuracy", "top_2_accuracy", "confusion_matrix")} == \
        {k: expected[k] for k in ("accuracy", "top_2_accuracy", "confusion_matrix")}
    assert "tta" not in report


def test_test_time_augmentation_reports_with_and_without(model_and_data):
    from cnnctl.schema import EvaluateConfig

    model, x, y = model_and_data
    report = results.evaluate_model(model, x, y, ["a", "b", "c"], batch_size=5, top_k=2,
                                    tta=EvaluateConfig(tta=["flip"]))
    plain = results.evaluate_model(model, x, y, ["a", "b", "c"], batch_size=5, top_k=2)
    assert report["tta"] == {"views": ["flip"], "accuracy_with": plain["accuracy"],  # 1x1 images: mirrors of themselves
                             "accuracy_without": plain["accuracy"], "loss_with": plain["loss"],
                             "loss_without": plain["loss"]}
    assert (report["accuracy"], report["loss"]) == (plain["accuracy"], plain["loss"])
    none = results.evaluate_model(model, x, y, ["a", "b", "c"], batch_size=5, top_k=2, tta=EvaluateConfig())
    assert "tta" not in none


def test_the_settings_come_from_the_config(tmp_path):
    config = load_config(write_config(tmp_path / "c.yaml", tiny_config(
        layers=[{"Flatten": {}}, {"Dense": {"units": 3}}], evaluate={"tta": ["translate"], "translate_pixels": 2},
        train={"loss": {"name": "categorical_crossentropy", "from_logits": True}, "top_k": 2})))
    settings = results.evaluation_settings(config)
    assert settings == {"batch_size": 16, "top_k": 2, "from_logits": True, "tta": config.evaluate}


def test_write_evaluation_writes_eval_json_then_the_plots(model_and_data, tmp_path):
    model, x, y = model_and_data
    (tmp_path / "metrics.csv").write_text("epoch,loss,accuracy\n1,0.9,0.5\n2,0.5,0.8\n")
    report = results.evaluate_model(model, x, y, ["a", "b", "c"], batch_size=5, top_k=2)
    assert results.write_evaluation(tmp_path, report, x) == []
    assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == report["accuracy"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == \
        ["confusion_matrix.png", "learning_curves.png", "misclassified.png"]


def test_without_a_report_only_the_learning_curves_are_drawn(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,loss\n1,0.9\n")
    assert results.write_evaluation(tmp_path, None, np.zeros((0, 1, 1, 1), np.uint8)) == []
    assert not (tmp_path / "eval.json").exists()
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["learning_curves.png"]


def test_a_plot_problem_is_a_logged_warning(model_and_data, tmp_path):
    model, x, y = model_and_data
    report = results.evaluate_model(model, x, y, ["a", "b", "c"], batch_size=5, top_k=2)
    logged = []
    problems = results.write_evaluation(tmp_path, report, x[:3], logged.append)  # not the images it counts
    message = "plots not written: ValueError: the report counts 12 test images, 3 were given"
    assert problems == [message] and logged == [f"warning: {message}"] and (tmp_path / "eval.json").is_file()


def test_a_bare_model_file_needs_a_config(tmp_path):
    with pytest.raises(RunError, match="needs --config CONFIG"):
        results.evaluate(tmp_path / "model.keras")


def test_expectations_met_within_half_a_point(tmp_path):
    config = load_config(write_config(tmp_path / "c.yaml", tiny_config(
        expect={"params": 151, "test_accuracy": 0.9, "val_accuracy": 0.8})))
    checks = results.check_expectations(config, {"accuracy": 0.8951}, {"val_accuracy": [0.5, 0.79]}, 151)
    assert checks == [
        {"what": "params", "published": 151, "measured": 151, "met": True},
        {"what": "test_accuracy", "published": 0.9, "measured": 0.8951, "met": True},
        {"what": "val_accuracy", "published": 0.8, "measured": 0.79, "met": False},
    ]
    smoke = results.check_expectations(config, {"accuracy": 0.1}, {}, 150, smoke=True)
    assert smoke == [{"what": "params", "published": 151, "measured": 150, "met": False}]
    assert results.check_expectations(load_config(write_config(tmp_path / "d.yaml", tiny_config())), None, {}, 1) == []
