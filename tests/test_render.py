"""cnnctl.render: what the commands print, rendered into a string from hand-made results."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from cnnctl import render
from cnnctl.export import ExportResult
from cnnctl.results import TrainResult
from cnnctl.runs import MISSING
from cnnctl.runtime import Gpu, Hardware, Plan

REPO = Path(__file__).resolve().parents[1]


def rendered(draw, width: int = 200) -> str:
    """The text draw(console) prints on a plain console `width` columns wide."""
    console = Console(file=io.StringIO(), width=width, color_system=None)
    draw(console)
    return console.file.getvalue()


def lines_of(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def row_of(text: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is `first_cell`."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("│ \n").split("│")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{text}")


def test_render_imports_neither_tensorflow_nor_pydantic():
    result = subprocess.run([sys.executable, "-c", "import cnnctl.render, sys; "
                             "print(sorted({'tensorflow', 'keras', 'pydantic'} & set(sys.modules)))"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize(("value", "fmt", "expected"), [
    (None, ".4f", "-"),
    (0.123456, ".4f", "0.1235"),
    (0, ".4f", "0.0000"),
    (1_234_567, ",", "1,234,567"),
    (None, ",", "-"),
])
def test_number(value, fmt, expected):
    assert render.number(value, fmt) == expected


@pytest.mark.parametrize(("seconds", "expected"), [
    (None, "-"),
    (0, "0.0 s"),
    (4.84, "4.8 s"),
    ("13.46", "13.5 s"),  # manifests may hold strings
    (59.9, "59.9 s"),
    (61, "1m 01s"),
    (3599.4, "59m 59s"),
    (3599.6, "1h 00m"),  # rounded to 3600 s before splitting
    (7325, "2h 02m"),
])
def test_duration(seconds, expected):
    assert render.duration(seconds) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-11-23T13:34:56.789+00:00", "2026-11-23 13:34"),
    ("2026-11-23T09:05:00", "2026-11-23 09:05"),
    (None, "-"),
    ("yesterday", "-"),
    (12345, "-"),
])
def test_started(value, expected):
    assert render.started(value) == expected


def test_plain_prints_markup_and_numbers_as_they_are():
    text = rendered(lambda c: render.plain("[bold]x[/bold] 1.5 /tmp/a", c))
    assert text == "[bold]x[/bold] 1.5 /tmp/a\n"


def test_print_json_indents_unless_told_not_to():
    data = {"a": [1, None], "b": "x"}
    assert rendered(lambda c: render.print_json(data, c)) == json.dumps(data, indent=2) + "\n"
    assert rendered(lambda c: render.print_json(data, c, indent=None)) == '{"a": [1, null], "b": "x"}\n'


def test_a_table_wider_than_the_console_keeps_its_natural_width():
    from rich.table import Table

    table = Table()
    table.add_column("name")
    table.add_column("value")
    table.add_row("a-rather-long-run-name-that-would-be-squeezed", "0.1234")
    text = rendered(lambda c: render.table(table, c), width=20)
    assert "a-rather-long-run-name-that-would-be-squeezed" in text
    assert row_of(text, "a-rather-long-run-name-that-would-be-squeezed") == [
        "a-rather-long-run-name-that-would-be-squeezed", "0.1234"]


# ---------------------------------------------------------------- devices

NO_GPU = Hardware(cpu_model="Test CPU", cpu_flags=frozenset({"avx512f", "amx_tile", "sse4_2"}), gpus=(),
                  logical_cpus=2)
ONE_GPU = Hardware(cpu_model="Test CPU", cpu_flags=frozenset(), gpus=(Gpu(0, "Test GPU", (8, 6)),
                                                                      Gpu(1, "Old GPU", None)))
PLAN = Plan(device="/CPU:0", device_reason="no GPU found", precision="float32",
            precision_reason="no bf16 support", jit_compile=False, jit_reason="CPU", distribute="none")
VERSIONS = {"tensorflow": "2.99.0", "keras": "3.99.0", "cuda": None, "cudnn": "9", "built_with_cuda": False}


def test_device_info():
    info = render.device_info(ONE_GPU, PLAN, VERSIONS)
    assert info["gpus"] == [{"index": 0, "name": "Test GPU", "compute_capability": "8.6"},
                            {"index": 1, "name": "Old GPU", "compute_capability": None}]
    assert info["cpu"] == {"model": "Test CPU", "logical_cpus": 1, "avx512_bf16": False, "amx_bf16": False,
                           "amx_tile": False, "avx512f": False}
    assert info["versions"] is VERSIONS
    assert info["auto"] == {"device": "/CPU:0", "device_reason": "no GPU found", "precision": "float32",
                            "precision_reason": "no bf16 support", "jit_compile": False, "jit_reason": "CPU"}


def test_devices_text():
    text = rendered(lambda c: render.devices(render.device_info(NO_GPU, PLAN, VERSIONS), c))
    assert row_of(text, "CPU:0") == ["CPU:0", "Test CPU (2 logical CPUs); features: AVX512F, AMX_TILE"]
    assert row_of(text, "GPU") == ["GPU", "none found"]
    lines = lines_of(text)
    assert lines[0] == "Devices"
    assert lines[-4:] == ["TensorFlow 2.99.0, Keras 3.99.0, CUDA -, cuDNN 9",
                          "auto device:    /CPU:0 (no GPU found)",
                          "auto precision: float32 (no bf16 support)",
                          "auto XLA:       False (CPU)"]


def test_devices_text_with_gpus_and_no_cpu_features():
    text = rendered(lambda c: render.devices(render.device_info(ONE_GPU, PLAN, VERSIONS), c))
    assert row_of(text, "CPU:0")[1].endswith("features: none")
    assert row_of(text, "GPU:0") == ["GPU:0", "Test GPU, compute capability 8.6"]
    assert row_of(text, "GPU:1") == ["GPU:1", "Old GPU, compute capability None"]
    assert "none found" not in text


def test_devices_json():
    info = render.device_info(NO_GPU, PLAN, VERSIONS)
    assert json.loads(rendered(lambda c: render.devices(info, c, as_json=True))) == info


# ---------------------------------------------------------------- train, evaluate


def train_result(**changes) -> TrainResult:
    values = {"run_dir": Path("runs/tiny"), "status": "completed", "epochs_run": 3, "best_epoch": 2,
              "wall_seconds": 12.345, "images_per_second": 12_345.6,
              "evaluation": {"loss": 0.31234, "accuracy": 0.91239}, "history": {}}
    return TrainResult(**{**values, **changes})


def test_train_result_text():
    result = train_result(expect=[
        {"what": "params", "published": 62_346, "measured": 62_346, "met": True},
        {"what": "test_accuracy", "published": 0.99, "measured": 0.9124, "met": False},
    ])
    assert rendered(lambda c: render.train_result(result, c)).splitlines() == [
        "run        runs/tiny  (completed)",
        "test       accuracy 0.9124  loss 0.3123  (best epoch 2 of 3)",
        "time       12.3 s wall, 12,346 training images/s",
        "published  params 62,346: built 62,346 -> met",
        "published  test_accuracy 0.99: measured 0.9124 -> NOT met",
    ]


def test_train_result_of_a_failed_run():
    result = train_result(status="failed", message="loss is NaN in epoch 2", evaluation=None,
                          images_per_second=None, best_epoch=None)
    assert rendered(lambda c: render.train_result(result, c)).splitlines() == [
        "run        runs/tiny  (failed)",
        "problem    loss is NaN in epoch 2",
        "time       12.3 s wall, -",
    ]


def test_train_result_json_is_one_line():
    text = rendered(lambda c: render.train_result(train_result(), c, as_json=True), width=40)
    assert text.count("\n") == 1  # one JSON object per line, even on a narrow console
    assert json.loads(text) == {
        "event": "result", "run_dir": "runs/tiny", "status": "completed", "epochs_run": 3, "best_epoch": 2,
        "wall_seconds": 12.345, "images_per_second": 12_345.6, "test_loss": 0.31234, "test_accuracy": 0.91239,
        "expect": [], "message": None,
    }


def test_train_result_json_without_an_evaluation():
    data = json.loads(rendered(lambda c: render.train_result(train_result(evaluation=None), c, as_json=True)))
    assert data["test_loss"] is None and data["test_accuracy"] is None


REPORT = {
    "examples": 12_000, "loss": 0.25, "accuracy": 0.875, "top_k": 3, "top_3_accuracy": 0.99, "macro_f1": 0.8712,
    "class_names": ["cat", "a-very-long-class-name"],
    "per_class": [
        {"class": "cat", "precision": 0.9, "recall": 0.85, "f1": 0.87429, "support": 6_000},
        {"class": "a-very-long-class-name", "precision": 0.8571, "recall": 0.9, "f1": 0.878, "support": 6_000},
    ],
    "confusion_matrix": [[5_100, 900], [600, 5_400]],
}


def test_report():
    text = rendered(lambda c: render.report(REPORT, c))
    assert text.splitlines()[0] == ("test examples 12,000  loss 0.2500  accuracy 0.8750  top-3 accuracy 0.9900  "
                                    "macro F1 0.8712")
    assert lines_of(text)[1] == "Per class"
    assert "Confusion matrix (rows: true, columns:" in text  # the title wraps to the table's width
    assert row_of(text, "cat")[:5] == ["cat", "0.900", "0.850", "0.874", "6,000"]
    assert "a-very-l…" not in text and "a-very-lo " in text  # column headers are the first 9 characters
    matrix = text[text.index("Confusion matrix"):]
    assert row_of(matrix, "a-very-long-class-name") == ["a-very-long-class-name", "600", "5400"]


TTA = {"views": ["flip", "translate"], "translate_pixels": 2, "accuracy_with": 0.93, "accuracy_without": 0.9124,
       "loss_with": 0.25, "loss_without": 0.31234}


def test_test_time_augmentation_is_shown_with_and_without():
    result = train_result(evaluation={"loss": 0.25, "accuracy": 0.93, "tta": TTA})
    assert rendered(lambda c: render.train_result(result, c)).splitlines()[1:3] == [
        "test       accuracy 0.9300  loss 0.2500  (best epoch 2 of 3; test-time augmentation)",
        "tta        flip, translate 2 px: accuracy 0.9300 (0.9124 without), loss 0.2500 (0.3123 without)",
    ]
    assert json.loads(rendered(lambda c: render.train_result(result, c, as_json=True)))["tta"] == TTA
    flip = {key: value for key, value in TTA.items() if key != "translate_pixels"} | {"views": ["flip"]}
    text = rendered(lambda c: render.report({**REPORT, "tta": flip}, c))
    assert text.splitlines()[1] == ("test-time augmentation (the figures above and below): flip: accuracy 0.9300 "
                                    "(0.9124 without), loss 0.2500 (0.3123 without)")
    assert "test-time" not in rendered(lambda c: render.report(REPORT, c))


# ---------------------------------------------------------------- runs, compare, predict, export


def run_row(name: str, **changes) -> dict:
    row = {"name": name, "path": f"runs/{name}", "config": "mnist", "status": "completed", "epochs_run": 2,
           "epochs": 2, "best_val_accuracy": 0.96423, "test_accuracy": 0.953, "wall_seconds": 10.84,
           "start_time": "2026-11-23T13:34:10+00:00", "smoke": False}
    return {**row, **changes}


def test_runs_table():
    rows = [
        run_row("mnist-6k-adam"),
        run_row("mnist", status="completed", epochs_run=1, epochs=1, best_val_accuracy=None, test_accuracy=0.12,
                wall_seconds=4.8, smoke=True),
        run_row("no-plan", epochs=None, wall_seconds=75),
        run_row("broken", config=None, status="unreadable", epochs_run=None, epochs=None, best_val_accuracy=None,
                test_accuracy=None, wall_seconds=None, start_time=None),
    ]
    text = rendered(lambda c: render.runs(rows, "runs", c))
    assert lines_of(text)[0] == "Runs in runs"
    header = lines_of(text)[2]
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == [
        "run", "config", "status", "epochs", "best val acc", "test acc", "wall", "started"]
    assert row_of(text, "mnist-6k-adam") == ["mnist-6k-adam", "mnist", "completed", "2/2", "0.9642", "0.9530",
                                             "10.8 s", "2026-11-23 13:34"]
    assert row_of(text, "mnist")[2:6] == ["completed (smoke)", "1/1", "-", "0.1200"]
    assert row_of(text, "no-plan")[3] == "2" and row_of(text, "no-plan")[6] == "1m 15s"
    assert row_of(text, "broken") == ["broken", "-", "unreadable", "-", "-", "-", "-", "-"]


def test_runs_table_keeps_names_whole_on_a_narrow_console():
    rows = [run_row("a-run-with-a-name-far-longer-than-the-console")]
    text = rendered(lambda c: render.runs(rows, "runs", c), width=30)
    assert row_of(text, "a-run-with-a-name-far-longer-than-the-console")[4] == "0.9642"


def test_no_runs_and_runs_json():
    assert rendered(lambda c: render.runs([], "somewhere", c)) == "no runs in somewhere\n"
    rows = [run_row("a")]
    assert json.loads(rendered(lambda c: render.runs(rows, "runs", c, as_json=True))) == rows


def compared(name: str, metrics: dict, **changes) -> dict:
    return {**run_row(name), "metrics": metrics, "test_loss": 0.15, "params": 62_346, "history": {}, **changes}


COMPARISON = {
    "runs": [
        compared("sgd", {"loss": {"final": 0.5, "best": 0.45}, "val_accuracy": {"final": 0.9, "best": 0.91}}),
        compared("adam", {"loss": {"final": 0.2, "best": 0.2}, "top_3_accuracy": {"final": 0.99, "best": 0.995}},
                 test_accuracy=None, test_loss=None, params=None, epochs_run=None, wall_seconds=3_700,  # 61 min 40 s
                 status="interrupted"),
    ],
    "config_differences": {
        "train.optimizer.name": ["sgd", "adam"],
        "train.optimizer.learning_rate": [0.01, 0.001],
        "model.layers[2].Dropout": [MISSING, {"rate": 0.5}],
        "runtime.deterministic": [False, True],
    },
    "plot": "runs/compare-sgd-adam.png",
}


def test_comparison_metrics():
    text = rendered(lambda c: render.comparison(COMPARISON, c))
    assert lines_of(text)[0] == "Metrics (final / best)"
    assert row_of(text, "loss") == ["loss", "0.5000 / 0.4500", "0.2000 / 0.2000"]
    # metrics in the order first seen; a metric a run lacks is "-"
    assert row_of(text, "val_accuracy") == ["val_accuracy", "0.9000 / 0.9100", "-"]
    assert row_of(text, "top_3_accuracy") == ["top_3_accuracy", "-", "0.9900 / 0.9950"]
    assert text.index("val_accuracy") < text.index("top_3_accuracy")
    assert row_of(text, "test accuracy") == ["test accuracy", "0.9530", "-"]
    assert row_of(text, "test loss") == ["test loss", "0.1500", "-"]
    assert row_of(text, "params") == ["params", "62,346", "-"]
    assert row_of(text, "epochs") == ["epochs", "2", "-"]
    assert row_of(text, "wall time") == ["wall time", "10.8 s", "1h 01m"]
    assert row_of(text, "status") == ["status", "completed", "interrupted"]


def test_comparison_config_differences():
    text = rendered(lambda c: render.comparison(COMPARISON, c))
    assert "Config differences" in text and "configs: identical" not in text
    assert row_of(text, "train.optimizer.name") == ["train.optimizer.name", "sgd", "adam"]
    assert row_of(text, "train.optimizer.learning_rate") == ["train.optimizer.learning_rate", "0.01", "0.001"]
    # strings as they are, everything else as JSON
    assert row_of(text, "model.layers[2].Dropout") == ["model.layers[2].Dropout", MISSING, '{"rate": 0.5}']
    assert row_of(text, "runtime.deterministic") == ["runtime.deterministic", "false", "true"]
    assert lines_of(text)[-1] == "plot written to runs/compare-sgd-adam.png"


def test_comparison_of_identical_configs():
    text = rendered(lambda c: render.comparison({**COMPARISON, "config_differences": {}}, c))
    assert "Config differences" not in text
    assert lines_of(text)[-2:] == ["configs: identical", "plot written to runs/compare-sgd-adam.png"]


def test_comparison_json():
    assert json.loads(rendered(lambda c: render.comparison(COMPARISON, c, as_json=True))) == COMPARISON


def test_predictions_are_aligned():
    results = [
        {"image": "jpegs/automobile-0003.jpg", "top": [{"class": "automobile", "probability": 0.7541},
                                                       {"class": "truck", "probability": 0.1139}]},
        {"image": "jpegs/cat.jpg", "top": [{"class": "cat", "probability": 0.4178},
                                           {"class": "frog", "probability": 0.2774}]},
    ]
    assert rendered(lambda c: render.predictions(results, c)).splitlines() == [
        "jpegs/automobile-0003.jpg   automobile 0.754   truck 0.114",
        "jpegs/cat.jpg               cat 0.418   frog 0.277",
    ]
    assert json.loads(rendered(lambda c: render.predictions(results, c, as_json=True))) == results


def test_export_result_of_a_float32_model():
    result = ExportResult(path=Path("runs/x/export/model.keras"), format="keras", bytes=69_695, images=64,
                          images_from="test images", difference=0.0, tolerance=1e-4, precision="float32")
    assert rendered(lambda c: render.export_result(result, c)).splitlines() == [
        "exported   runs/x/export/model.keras  (keras, 69,695 bytes)",
        "checked    64 test images: largest difference 0 (tolerance 0.0001)",
    ]


def test_export_result_of_a_mixed_precision_model():
    result = ExportResult(path=Path("runs/x/export/model.onnx"), format="onnx", bytes=69_695, images=64,
                          images_from="test images", difference=3.5762e-07, tolerance=1e-3,
                          precision="mixed_bfloat16", trained_difference=0.0079123, trained_tolerance=5e-2)
    assert rendered(lambda c: render.export_result(result, c)).splitlines() == [
        "exported   runs/x/export/model.onnx  (onnx, 69,695 bytes; float32 copy of a mixed_bfloat16 model)",
        "checked    64 test images: largest difference 3.58e-07 (tolerance 0.001)",
        "           against the model as trained in mixed_bfloat16: 0.00791 (tolerance 0.05)",
    ]
