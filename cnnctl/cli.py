"""The `cnnctl` command line: parses arguments, calls the library, prints, exits.

Nothing else in cnnctl prints or exits. TensorFlow and pydantic are imported inside the commands
that need them, so `cnnctl --help` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from cnnctl import __version__, render
from cnnctl.errors import CnnctlError, Interrupted

app = typer.Typer(
    name="cnnctl",
    help="Train convolutional neural networks from YAML experiment files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}

ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file, e.g. configs/mnist.yaml.", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional here
    typer.Option("--set", "-s", help="Override a config value: key.path=value (YAML value). Repeatable.",
                 metavar="KEY=VALUE"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Look for dataset files here first.")]
RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="The folder that holds the run directories.")]
RunArg = Annotated[Path, typer.Argument(help="A run directory.", show_default=False)]


def _quiet_tensorflow() -> None:
    from cnnctl.runtime import import_quietly

    import_quietly(show=_state["debug"])


@contextlib.contextmanager
def _errors():
    """Render cnnctl errors as short messages (render.error), exit 2 for bad input and 1 for failed runs."""
    try:
        yield
    except CnnctlError as exc:
        if _state["debug"]:
            raise
        render.error(exc, err)
        raise typer.Exit(exc.exit_code) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"cnnctl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Train convolutional neural networks from YAML experiment files."""
    _state["debug"] = debug


@app.command()
def config(config: ConfigArg, set_: SetOpt = None) -> None:
    """Print the resolved config (after --set overrides and defaults) as YAML."""
    with _errors():
        from cnnctl.config import load_config, to_yaml

        out.print(to_yaml(load_config(config, set_)), end="", highlight=False, markup=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the config format (for editor validation)."""
    from cnnctl.schema import json_schema
    render.print_json(json_schema(), out)


@app.command()
def summary(config: ConfigArg, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Keras-style model summary with MACs, memory and the published parameter count."""
    with _errors():
        from cnnctl.config import load_config

        cfg = load_config(config, set_)  # shape errors are found here, before TensorFlow is imported
        _quiet_tensorflow()
        from cnnctl.summary import for_config

        render.summary(for_config(cfg), out, as_json=json_)


@app.command()
def devices(json_: JsonOpt = False) -> None:
    """Devices TensorFlow sees, the CPU features that matter, and what `auto` would choose."""
    with _errors():
        _quiet_tensorflow()
        from cnnctl.runtime import device_report

        render.devices(render.device_info(*device_report()), out, as_json=json_)


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="Experiment YAML file (not with --resume).",
                                                     show_default=False)] = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    run_name: Annotated[Optional[str], typer.Option("--run-name", help="Run directory name (default: config name).")] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run directories are created.")] = Path("runs"),
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this run directory from its last checkpoint.")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="A few steps on synthetic data: checks the config runs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of a live display.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per epoch, then the result, on stdout.")] = False,
    mlflow: Annotated[Optional[str], typer.Option("--mlflow", flag_value="", help="Log to MLflow at URI.")] = None,
) -> None:
    """Train a config into a new run directory, then evaluate it on the test set.

    Ctrl-C (or SIGTERM) stops after the current step and writes a resume checkpoint; a second Ctrl-C
    exits at once. Continue with `cnnctl train --resume RUN_DIR`.
    """
    with _errors():
        if quiet and json_:
            raise CnnctlError("--quiet and --json cannot be combined")
        if (config is None) == (resume is None):
            raise CnnctlError("give a CONFIG to start a run, or --resume RUN_DIR to continue one (not both)")
        if resume is not None and (run_name or smoke):
            raise CnnctlError("--run-name and --smoke do not apply to --resume (the run keeps its own)")
        from cnnctl import rundir
        from cnnctl.config import load_config
        from cnnctl.data import check_available

        cfg = load_config(rundir.resolve(resume) / rundir.CONFIG if resume is not None else config, set_)
        if resume is None:
            rundir.check_name(run_name if run_name is not None else cfg.name)
            if not smoke:
                check_available(cfg.data, data_dir)  # missing data: say so before TensorFlow starts
        _quiet_tensorflow()
        from cnnctl import train as training

        stop = _install_stop_handlers()
        shown = [render.progress_display(out, stop, as_json=json_, quiet=quiet)]
        log = functools.partial(render.plain, console=err if json_ else out)  # JSON keeps stdout for itself
        result = training.run(cfg, runs_dir=runs_dir, run_name=run_name, data_dir=data_dir, smoke=smoke, log=log,
                              callbacks=shown, resume_from=resume, stop=stop, mlflow=mlflow,
                              progress=render.Decoding(err, bar=not (quiet or json_)))
        render.train_result(result, out, as_json=json_)
        if result.status != "completed":
            raise typer.Exit(1)


def _install_stop_handlers():
    """A Stop that the first SIGINT/SIGTERM requests (training stops after the current step with a
    checkpoint); the second exits at once."""
    import signal

    from cnnctl.callbacks import Stop

    stop = Stop()

    def handle(signum, frame):
        if stop.reason:
            err.print("second interrupt: exiting now; the last complete checkpoint is kept", highlight=False)
            os._exit(128 + signum)
        stop.request("interrupt", signum)
        err.print("stopping after the current step (Ctrl-C again to quit at once) ...", highlight=False)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


@app.command()
def tune(
    config: Annotated[Optional[Path], typer.Argument(help="Experiment YAML with a tune section.", show_default=False)] = None,
    set_: SetOpt = None,
    trials: Annotated[Optional[int], typer.Option("--trials", min=1, help="Finished trials to reach.")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=0, help="Start no trial after MIN minutes.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes here.")] = 1,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Study database, e.g. postgresql://h/db")] = None,
    runs_dir: RunsDirOpt = Path("runs"),
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this study directory.")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="2 tiny trials on synthetic data.")] = False,
    worker: Annotated[bool, typer.Option("--worker", hidden=True)] = False,
    json_: JsonOpt = False,
) -> None:
    """Search hyperparameters with Optuna: one ordinary run per trial, resumable, on one machine or many."""
    with _errors():
        if (config is None) == (resume is None):
            raise CnnctlError("give a CONFIG to start or continue its study, or --resume STUDY_DIR (not both)")
        from cnnctl import tune as tuning

        study = tuning.start(config, resume_dir=resume, overrides=set_ or [], trials=trials, runs_dir=runs_dir,
                             storage=storage, smoke=smoke)
        _quiet_tensorflow()
        log = functools.partial(render.plain, console=err if json_ else out)  # JSON keeps stdout for itself
        stop = _install_stop_handlers()
        shown = None if json_ else functools.partial(render.trial_line, metric=study.tune.metric, console=out)
        try:
            code = tuning.run(study, 1 if worker else workers, timeout, log=log, stop=stop, on_trial=shown)
        finally:
            if not worker and sys.exc_info()[0] in (None, Interrupted):  # what is done, also after Ctrl-C
                render.study(tuning.summarize(study), out, as_json=json_)
        raise typer.Exit(code)


@app.command()
def sync(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories, or a runs directory.", show_default=False)],
    mlflow: Annotated[Optional[str], typer.Option("--mlflow", help="URI (default: the run's, or mlflow.db).")] = None,
    json_: JsonOpt = False) -> None:
    """Log runs to MLflow afterwards, or what a run could not log (exit 1 if still not all); twice changes nothing."""
    with _errors():
        from cnnctl.tracking import sync_all

        rows = sync_all(run_dirs, mlflow)
        render.synced(rows, out, as_json=json_)
        raise typer.Exit(int(any(row["problems"] for row in rows)))  # 1: not all logged, try again later


@app.command()
def evaluate(
    target: Annotated[Path, typer.Argument(help="A run directory, or a .keras model file (with --config).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="Config for a bare model file.")] = None,
    data_dir: DataDirOpt = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the report here instead.")] = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Evaluate a run's best checkpoint on the test set: metrics, per-class report, confusion matrix."""
    with _errors():
        _quiet_tensorflow()
        from cnnctl import results

        outcome = results.evaluate(target, config_path=config, data_dir=data_dir, out=out_file, force=force)
        plotted = results.write_report(outcome, lambda message: err.print(message, highlight=False, markup=False))
        render.evaluation(outcome, plotted, out, as_json=json_)


@app.command("runs")
def runs_command(runs_dir: RunsDirOpt = Path("runs"), json_: JsonOpt = False) -> None:
    """List the runs of a runs directory, newest first: status, epochs, accuracy, time."""
    with _errors():
        from cnnctl.runs import list_runs

        render.runs(list_runs(runs_dir), runs_dir, out, as_json=json_)


@app.command("compare")
def compare_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories.", show_default=False)],
    out_file: Annotated[Optional[Path], typer.Option(
        "--out", help="Where to write the overlaid learning curves (.png, .svg or .pdf; default: "
                      "compare-<names>.png beside the first run).")] = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Runs side by side: final and best metrics, test accuracy, size, time, config differences, one plot."""
    with _errors():
        from cnnctl.runs import compare_with_plot

        render.comparison(compare_with_plot(run_dirs, out_file, force), out, as_json=json_)


@app.command("predict")
def predict_command(
    target: Annotated[Path, typer.Argument(help="A run directory, or a .keras model file.", show_default=False)],
    images: Annotated[Path, typer.Argument(help="An image file (PNG, JPEG, ...) or a folder of them.",
                                           show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many classes to show per image.")] = 3,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Config naming the classes of a bare model file (else class indices).")] = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Also write the predictions here (JSON).")] = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Classify images: the top-k classes and their probabilities, per image."""
    with _errors():
        _quiet_tensorflow()
        from cnnctl.predict import predict

        found = predict(target, images, top_k=top_k, config_path=config, out=out_file, force=force)
        render.predictions(found, out, as_json=json_)


ExportFormat = Enum("ExportFormat", {f: f for f in ("keras", "saved_model", "tflite", "onnx")}, type=str)  # export.FORMATS


@app.command("data")
def data_command(config: ConfigArg, set_: SetOpt = None, data_dir: DataDirOpt = None, json_: JsonOpt = False,
                 quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False) -> None:
    """Inspect a dataset without training: classes, images per split, sizes, modes, bad files, duplicates, cache."""
    with _errors():
        from cnnctl.config import load_config
        from cnnctl.data.inspection import inspect_dataset
        from cnnctl.shapes import output_units

        cfg = load_config(config, set_)
        report = inspect_dataset(cfg, data_dir, num_classes=output_units(cfg.model),
                                 progress=render.Decoding(err, bar=not (quiet or json_)))
        render.dataset_report(report, out, as_json=json_)


@app.command("export")
def export_command(
    run: RunArg,
    format_: Annotated[ExportFormat, typer.Option("--format", "-f", help="The format to write.",
                                                  show_default=False)],
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", help="Where to write it (default: RUN/export/model.<ext>, saved_model: a folder); "
                      "never overwritten.")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Export the run's best model, then check it gives the Keras model's outputs on test images."""
    with _errors():
        _quiet_tensorflow()
        from cnnctl.export import export

        render.export_result(export(run, format_.value, out_path, data_dir=data_dir), out)


def main() -> None:
    args = sys.argv[1:]  # `--mlflow` with no URI after it (last, or before another option): the default store
    args = ["--mlflow=" if a == "--mlflow" and (i + 1 == len(args) or args[i + 1].startswith("-")) else a
            for i, a in enumerate(args)]
    try:
        app(args)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
