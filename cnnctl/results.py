"""What a run reports: a model's evaluation on the test split, eval.json with its plots, and the
checks against the tutorial's published figures.

`train` and `cnnctl evaluate` both end in `write_evaluation`, so a run's eval.json and plots/ are
always made the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnctl import data, evaluation, files, rundata, rundir
from cnnctl.errors import RunError
from cnnctl.schema import Config, EvaluateConfig


@dataclass
class TrainResult:
    run_dir: Path
    status: str
    epochs_run: int
    best_epoch: int | None
    wall_seconds: float
    images_per_second: float | None
    evaluation: dict | None
    history: dict
    expect: list[dict] = field(default_factory=list)
    message: str | None = None
    warnings: list[str] = field(default_factory=list)  # problems that did not fail the run (plots)


@dataclass
class Evaluation:
    report: dict
    destination: Path  # where the report belongs: the run's eval.json, or beside a bare model file
    test_images: np.ndarray
    run_dir: Path | None  # the run evaluated, None for a bare model file


def evaluation_settings(config: Config) -> dict:
    """`evaluate_model`'s keyword arguments as a config sets them."""
    return {"batch_size": config.train.batch_size, "top_k": config.train.top_k,
            "from_logits": config.train.loss.from_logits, "tta": config.evaluate}


def evaluate_model(model, x_test: np.ndarray, y_test: np.ndarray, class_names: list[str], *, batch_size: int,
                   top_k: int, from_logits: bool = False, tta: EvaluateConfig | None = None) -> dict:
    """The evaluation report of `model`'s predicted probabilities on the test split (the softmax of its
    outputs if it was trained on logits, `from_logits`).

    With test-time augmentation (`tta.tta` lists views) the report is that of the views' averaged
    probabilities, the headline accuracy and loss included, and its `tta` entry records the views and
    the accuracy and loss with and without them. `model` gets cnnctl.fastops' GELU (in place: the same
    function, faster; a CPU spent more time in Keras' GELU than in the convolutions).
    """
    from cnnctl import fastops
    from cnnctl import tta as test_time
    from cnnctl.model import probability_model

    fastops.speed_up(model)
    model = probability_model(model, from_logits)
    dataset = data.make_dataset(x_test, y_test, batch_size=batch_size, num_classes=len(class_names), one_hot=False)
    views = list(tta.tta) if tta is not None else []
    if not views:
        return evaluation.report(model.predict(dataset, verbose=0), y_test, class_names, top_k)
    plain, averaged = test_time.predict(model, dataset, views, tta.translate_pixels)
    without = evaluation.report(plain, y_test, class_names, top_k, misclassified=0)
    report = evaluation.report(averaged, y_test, class_names, top_k)
    report["tta"] = {"views": views, **({"translate_pixels": tta.translate_pixels} if "translate" in views else {}),
                     "accuracy_with": report["accuracy"], "accuracy_without": without["accuracy"],
                     "loss_with": report["loss"], "loss_without": without["loss"]}
    return report


def write_evaluation(run_dir: Path, report: dict | None, test_images: np.ndarray,
                     log: Callable[[str], None] = lambda message: None) -> list[str]:
    """eval.json (when there is a report), then plots/; a plot that cannot be drawn is a warning
    (returned and logged), never an error."""
    from cnnctl.plots import try_write_run_plots

    if report is not None:
        files.write_json(Path(run_dir) / rundir.EVAL, report)
    problems = try_write_run_plots(run_dir, report=report, test_images=test_images)
    for problem in problems:
        log(f"warning: {problem}")
    return problems


def evaluate(target: str | Path, *, config_path: str | Path | None = None, data_dir: str | Path | None = None,
             out: str | Path | None = None, force: bool = False) -> Evaluation:
    """Evaluate a run's best checkpoint on the data it was trained on, or a .keras file with a config.

    Without `out` a run's report replaces its own eval.json, so it must be the run's own config and
    data; with `out` (checked by `rundir.check_output`) any config and data may be used.
    """
    from cnnctl.config import load_config
    from cnnctl.model import load_model

    target = Path(target)
    destination = rundir.check_output(out, force=force) if out is not None else None
    if target.is_dir():
        run_dir = rundir.resolve(target)
        if out is None and config_path is not None and \
                load_config(config_path).model_dump() != load_config(run_dir / rundir.CONFIG).model_dump():
            raise RunError(f"{config_path} is not the config of {run_dir}: its results would replace the run's "
                           f"eval.json", hint="give --out FILE to write the report elsewhere")
        model = load_model(run_dir / rundir.BEST)
        config, splits = rundata.test_split(run_dir, data_dir=data_dir, config_path=config_path, check=out is None)
        manifest = run_dir / rundir.MANIFEST
        class_names = (rundir.read_json(manifest).get("class_names") if manifest.is_file() else None) \
            or splits.class_names
        model_path, destination = run_dir / rundir.BEST, destination or run_dir / rundir.EVAL
    else:
        if config_path is None:
            raise RunError(f"{target}: a model file needs --config CONFIG (its data and class names)")
        run_dir, model, config = None, load_model(target), load_config(config_path)
        splits = rundata.load(config, data_dir=data_dir)
        class_names, model_path = splits.class_names, target
        destination = destination or rundir.check_output(target.with_suffix(".eval.json"), force=force)
    got, expected = tuple(int(d) for d in model.input_shape[1:]), tuple(config.model.input_shape)
    if got != expected or int(model.output_shape[-1]) != len(class_names):
        raise RunError(f"{model_path}: the model maps {got} to {int(model.output_shape[-1])} classes; the config's "
                       f"data has shape {expected} and {len(class_names)} classes")
    report = evaluate_model(model, splits.x_test, splits.y_test, class_names, **evaluation_settings(config))
    report.update(checkpoint=str(model_path), dataset=splits.identity)
    return Evaluation(report, destination, splits.x_test, run_dir if out is None else None)


def write_report(outcome: Evaluation, log: Callable[[str], None]) -> Path | None:
    """Write an evaluation where it belongs: into its run (eval.json and plots/, under the run's lock), or
    to its own file. Returns the plots folder when plots were drawn."""
    try:
        if outcome.run_dir is None:
            files.write_json(outcome.destination, outcome.report)
            return None
        with rundir.lock(outcome.run_dir, "evaluate"):
            problems = write_evaluation(outcome.run_dir, outcome.report, outcome.test_images, log)
    except OSError as exc:
        raise RunError(f"{outcome.destination}: cannot write the report: {exc.strerror}"
                       f"{files.free_space(outcome.destination)}") from None
    return None if problems else outcome.run_dir / rundir.PLOTS


def check_expectations(config: Config, report: dict | None, history: dict, params: int,
                       smoke: bool = False) -> list[dict]:
    """Compare with the tutorial's published figures: accuracy is met within half a point of it."""
    expect = config.expect
    if expect is None:
        return []
    checks = []
    if expect.params is not None:
        checks.append({"what": "params", "published": expect.params, "measured": params,
                       "met": params == expect.params})
    measured = {"test_accuracy": (report or {}).get("accuracy"),
                "val_accuracy": (history.get("val_accuracy") or [None])[-1]}
    for key in ("test_accuracy", "val_accuracy"):
        published = getattr(expect, key)
        if published is not None and not smoke and measured[key] is not None:
            checks.append({"what": key, "published": published, "measured": round(float(measured[key]), 4),
                           "met": float(measured[key]) >= published - 0.005})
    return checks
