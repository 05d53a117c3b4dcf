"""The `cnnctl` command line: parses arguments, calls the library, prints, exits.

Nothing else in cnnctl prints or exits. TensorFlow and pydantic are imported inside the commands
that need them, so `cnnctl --help` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from cnnctl import __version__
from cnnctl.errors import CnnctlError

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


def _quiet_tensorflow() -> None:
    """Import TensorFlow without the C++ start-up chatter it writes to fd 2 before logging is set up."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" in sys.modules or _state["debug"]:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _errors():
    """Render cnnctl errors as short messages (exit 2 for bad input, 1 for failed runs)."""
    try:
        yield
    except CnnctlError as exc:
        if _state["debug"]:
            raise
        for line in exc.message.splitlines():
            err.print(f"[bold red]error:[/bold red] {escape(line)}", highlight=False, markup=True)
        if exc.hint:
            err.print(f"hint: {exc.hint}", highlight=False, markup=False)
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


def _load(config: Path, overrides: list[str] | None):
    from cnnctl.config import load_config

    return load_config(config, overrides or [])


@app.command()
def config(config: ConfigArg, set_: SetOpt = None) -> None:
    """Print the resolved config (after --set overrides and defaults) as YAML."""
    with _errors():
        from cnnctl.config import to_yaml

        out.print(to_yaml(_load(config, set_)), end="", highlight=False, markup=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the config format (for editor validation)."""
    from cnnctl.schema import json_schema

    out.print(json.dumps(json_schema(), indent=2), highlight=False, markup=False)


@app.command()
def summary(config: ConfigArg, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Keras-style model summary with MACs, memory and the published parameter count."""
    with _errors():
        cfg = _load(config, set_)
        from cnnctl.shapes import infer

        infer(cfg.model)  # shape errors before TensorFlow is imported
        _quiet_tensorflow()
        from cnnctl import runtime
        from cnnctl.model import build_model
        from cnnctl.summary import render, summarize

        plan = runtime.plan(cfg.runtime, runtime.probe_hardware())
        data = summarize(cfg, build_model(cfg.model, name=cfg.name), plan.precision)
        data["precision_reason"] = plan.precision_reason
        if json_:
            out.print(json.dumps(data, indent=2), highlight=False, markup=False)
        else:
            render(data, out)


@app.command()
def devices(json_: JsonOpt = False) -> None:
    """Devices TensorFlow sees, the CPU features that matter, and what `auto` would choose."""
    with _errors():
        _quiet_tensorflow()
        from cnnctl import runtime
        from cnnctl.schema import RuntimeConfig

        hw = runtime.probe_hardware()
        plan = runtime.plan(RuntimeConfig(), hw)
        info = {
            "cpu": {"model": hw.cpu_model, "logical_cpus": hw.logical_cpus,
                    "avx512_bf16": "avx512_bf16" in hw.cpu_flags, "amx_bf16": "amx_bf16" in hw.cpu_flags,
                    "amx_tile": "amx_tile" in hw.cpu_flags, "avx512f": "avx512f" in hw.cpu_flags},
            "gpus": [{"index": g.index, "name": g.name,
                      "compute_capability": ".".join(map(str, g.compute_capability or ())) or None}
                     for g in hw.gpus],
            "versions": runtime.versions(),
            "auto": {"device": plan.device, "device_reason": plan.device_reason,
                     "precision": plan.precision, "precision_reason": plan.precision_reason,
                     "jit_compile": plan.jit_compile, "jit_reason": plan.jit_reason},
        }
        if json_:
            out.print(json.dumps(info, indent=2), highlight=False, markup=False)
            return
        from rich.table import Table

        table = Table(title="Devices", title_justify="left")
        table.add_column("device")
        table.add_column("details")
        cpu = info["cpu"]
        features = ", ".join(k.upper() for k in ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if cpu[k]) or "none"
        table.add_row("CPU:0", f'{cpu["model"]} ({cpu["logical_cpus"]} logical CPUs); features: {features}')
        for gpu in info["gpus"]:
            table.add_row(f'GPU:{gpu["index"]}', f'{gpu["name"]}, compute capability {gpu["compute_capability"]}')
        if not info["gpus"]:
            table.add_row("GPU", "none found")
        out.print(table)
        v = info["versions"]
        out.print(f'TensorFlow {v["tensorflow"]}, Keras {v["keras"]}, CUDA {v["cuda"] or "-"}, '
                  f'cuDNN {v["cudnn"] or "-"}', highlight=False)
        a = info["auto"]
        out.print(f'auto device:    {a["device"]} ({a["device_reason"]})', highlight=False)
        out.print(f'auto precision: {a["precision"]} ({a["precision_reason"]})', highlight=False)
        out.print(f'auto XLA:       {a["jit_compile"]} ({a["jit_reason"]})', highlight=False)


DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Look for dataset files here first.")]


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
        if resume is not None:
            if run_name or smoke:
                raise CnnctlError("--run-name and --smoke do not apply to --resume (the run keeps its own)")
            from cnnctl import rundir

            cfg = _load(rundir.resolve(resume) / rundir.CONFIG, set_)
        else:
            cfg = _load(config, set_)
            from cnnctl import rundir
            from cnnctl.data import check_available

            rundir.check_name(run_name if run_name is not None else cfg.name)
            if not smoke:
                check_available(cfg.data, data_dir)  # missing data: say so before TensorFlow starts
        _quiet_tensorflow()
        from cnnctl import progress
        from cnnctl import train as training
        from cnnctl.callbacks import Stop

        stop = Stop()
        if json_:
            shown = [progress.JsonProgress(out, stop)]
        elif quiet or not out.is_terminal:
            shown = [progress.PlainProgress(out, stop)]
        else:
            shown = [progress.RichProgress(out, stop)]
        log = (lambda m: err.print(m, highlight=False, markup=False)) if json_ else \
            (lambda m: out.print(m, highlight=False, markup=False))
        _install_stop_handlers(stop)
        try:
            result = training.run(cfg, runs_dir=runs_dir, run_name=run_name, data_dir=data_dir, smoke=smoke,
                                  callbacks=shown, log=log, resume_from=resume, stop=stop)
        except CnnctlError as exc:
            run_dir = getattr(exc, "run_dir", None)
            if run_dir is not None:
                exc.hint = f"resume with: cnnctl train --resume {run_dir}"
            raise
        _print_result(result, json_)
        if result.status != "completed":
            raise typer.Exit(1)


def _install_stop_handlers(stop) -> None:
    """First SIGINT/SIGTERM: stop after the current step with a checkpoint. Second: exit at once."""
    import signal

    def handle(signum, frame):
        if stop.reason:
            err.print("second interrupt: exiting now; the last complete checkpoint is kept", highlight=False)
            os._exit(128 + signum)
        stop.request("interrupt", signum)
        err.print("stopping after the current step (Ctrl-C again to quit at once) ...", highlight=False)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def _print_result(result, json_: bool) -> None:
    evaluation = result.evaluation or {}
    if json_:
        out.print(json.dumps({"event": "result", "run_dir": str(result.run_dir), "status": result.status,
                              "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                              "wall_seconds": result.wall_seconds, "images_per_second": result.images_per_second,
                              "test_loss": evaluation.get("loss"), "test_accuracy": evaluation.get("accuracy"),
                              "expect": result.expect, "message": result.message}),
                  highlight=False, markup=False)
        return
    lines = [f"run        {result.run_dir}  ({result.status})"]
    if result.message:
        lines.append(f"problem    {result.message}")
    if evaluation:
        lines.append(f"test       accuracy {evaluation['accuracy']:.4f}  loss {evaluation['loss']:.4f}  "
                     f"(best epoch {result.best_epoch} of {result.epochs_run})")
    speed = f"{result.images_per_second:,.0f} training images/s" if result.images_per_second else "-"
    lines.append(f"time       {result.wall_seconds:.1f} s wall, {speed}")
    for check in result.expect:
        verdict = "met" if check["met"] else "NOT met"
        published, measured = check["published"], check["measured"]
        if check["what"] == "params":
            lines.append(f"published  params {published:,}: built {measured:,} -> {verdict}")
        else:
            lines.append(f"published  {check['what']} {published}: measured {measured} -> {verdict}")
    for line in lines:
        out.print(line, highlight=False, markup=False)


@app.command()
def evaluate(
    target: Annotated[Path, typer.Argument(help="A run directory, or a .keras model file (with --config).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="Config for a bare model file.")] = None,
    data_dir: DataDirOpt = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the report here instead.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Evaluate a run's best checkpoint on the test set: metrics, per-class report, confusion matrix."""
    with _errors():
        _quiet_tensorflow()
        from cnnctl import rundir
        from cnnctl.evaluation import evaluate as run_evaluation

        report, default_out = run_evaluation(target, config_path=config, data_dir=data_dir)
        destination = out_file or default_out
        try:
            rundir.write_json(destination, report)
        except OSError as exc:
            raise CnnctlError(f"{destination}: cannot write the report: {exc.strerror}") from None
        plotted = None
        if out_file is None and target.is_dir():  # the run's own eval.json: its plots follow it
            from cnnctl.plots import try_write_run_plots

            problems = try_write_run_plots(default_out.parent, report=report, data_dir=data_dir, config_path=config)
            for problem in problems:
                err.print(f"warning: {problem}", highlight=False, markup=False)
            plotted = None if problems else default_out.parent / rundir.PLOTS
        if json_:
            out.print(json.dumps(report), highlight=False, markup=False)
            return
        _print_report(report)
        out.print(f"report written to {destination}", highlight=False, markup=False)
        if plotted:
            out.print(f"plots written to {plotted}", highlight=False, markup=False)


def _print_report(report: dict) -> None:
    from rich.table import Table

    k = report["top_k"]
    out.print(f"test examples {report['examples']:,}  loss {report['loss']:.4f}  accuracy {report['accuracy']:.4f}  "
              f"top-{k} accuracy {report[f'top_{k}_accuracy']:.4f}  macro F1 {report['macro_f1']:.4f}",
              highlight=False, markup=False)
    table = Table(title="Per class", title_justify="left")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in report["per_class"]:
        table.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      f"{row['support']:,}")
    out.print(table)
    names = report["class_names"]
    matrix = Table(title="Confusion matrix (rows: true, columns: predicted)", title_justify="left")
    matrix.add_column("")
    for name in names:
        matrix.add_column(name[:9], justify="right")
    for name, row in zip(names, report["confusion_matrix"], strict=True):
        matrix.add_row(name, *[str(v) for v in row])
    out.print(matrix)


# ---------------------------------------------------------------- results: runs, compare, predict, export

RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="The folder that holds the run directories.")]
RunArg = Annotated[Path, typer.Argument(help="A run directory.", show_default=False)]


def _plain(text: str, console: Console | None = None) -> None:
    (console or out).print(text, highlight=False, markup=False)


def _print_table(table) -> None:
    """A table at its natural width: a narrow or non-terminal console would squeeze names to nothing."""
    from rich.measure import Measurement

    natural = Measurement.get(out, out.options.update(max_width=10_000), table).maximum
    if natural <= out.width:
        out.print(table)
        return
    wide = Console(file=out.file, width=natural, color_system=out.color_system, force_terminal=out.is_terminal)
    wide.print(table)


def _number(value, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m {seconds:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def _started(value) -> str:
    from datetime import datetime

    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return "-"


@app.command("runs")
def runs_command(runs_dir: RunsDirOpt = Path("runs"), json_: JsonOpt = False) -> None:
    """List the runs of a runs directory, newest first: status, epochs, accuracy, time."""
    with _errors():
        from cnnctl.runs import list_runs

        rows = list_runs(runs_dir)
        if json_:
            _plain(json.dumps(rows, indent=2))
            return
        if not rows:
            _plain(f"no runs in {runs_dir}")
            return
        from rich.table import Table

        table = Table(title=f"Runs in {runs_dir}", title_justify="left")
        for column in ("run", "config", "status", "epochs", "best val acc", "test acc", "wall", "started"):
            table.add_column(column, justify="right" if column in ("epochs", "best val acc", "test acc", "wall")
                             else "left")
        for row in rows:
            epochs = "-" if row["epochs_run"] is None else \
                f'{row["epochs_run"]}/{row["epochs"]}' if row["epochs"] else str(row["epochs_run"])
            status = row["status"] + (" (smoke)" if row["smoke"] else "")
            table.add_row(row["name"], row["config"] or "-", status, epochs, _number(row["best_val_accuracy"]),
                          _number(row["test_accuracy"]), _duration(row["wall_seconds"]), _started(row["start_time"]))
        _print_table(table)


@app.command("compare")
def compare_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories.", show_default=False)],
    out_file: Annotated[Optional[Path], typer.Option(
        "--out", help="Where to write the overlaid learning curves (.png, .svg or .pdf; default: "
                      "compare-<names>.png beside the first run).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Runs side by side: final and best metrics, test accuracy, size, time, config differences, one plot."""
    with _errors():
        from cnnctl.errors import RunError
        from cnnctl.runs import compare, default_plot_path

        if len(run_dirs) < 2:
            raise RunError("compare needs at least two run directories")
        destination = out_file or default_plot_path(run_dirs)
        if destination.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise RunError(f"{destination}: the plot file must end in .png, .svg or .pdf")
        result = compare(run_dirs)
        from cnnctl.plots import compare_curves

        try:
            compare_curves(result["runs"], destination)
        except OSError as exc:
            raise RunError(f"{destination}: cannot write the plot: {exc.strerror}") from None
        result["plot"] = str(destination)
        if json_:
            _plain(json.dumps(result, indent=2))
            return
        _print_comparison(result)
        _plain(f"plot written to {destination}")


def _print_comparison(result: dict) -> None:
    from rich.table import Table

    runs = result["runs"]
    table = Table(title="Metrics (final / best)", title_justify="left")
    table.add_column("")
    for run in runs:
        table.add_column(run["name"], justify="right", overflow="fold")
    metrics: list[str] = []
    for run in runs:
        metrics += [m for m in run["metrics"] if m not in metrics]
    for metric in metrics:
        cells = [f'{_number(run["metrics"][metric]["final"])} / {_number(run["metrics"][metric]["best"])}'
                 if metric in run["metrics"] else "-" for run in runs]
        table.add_row(metric, *cells)
    table.add_row("test accuracy", *[_number(run["test_accuracy"]) for run in runs])
    table.add_row("test loss", *[_number(run["test_loss"]) for run in runs])
    table.add_row("params", *[_number(run["params"], ",") for run in runs])
    table.add_row("epochs", *["-" if run["epochs_run"] is None else str(run["epochs_run"]) for run in runs])
    table.add_row("wall time", *[_duration(run["wall_seconds"]) for run in runs])
    table.add_row("status", *[run["status"] for run in runs])
    _print_table(table)
    differences = result["config_differences"]
    if not differences:
        _plain("configs: identical")
        return
    diff = Table(title="Config differences", title_justify="left")
    diff.add_column("key", overflow="fold")
    for run in runs:
        diff.add_column(run["name"], overflow="fold")
    for key, values in differences.items():
        diff.add_row(key, *[v if isinstance(v, str) else json.dumps(v) for v in values])
    _print_table(diff)


@app.command("predict")
def predict_command(
    target: Annotated[Path, typer.Argument(help="A run directory, or a .keras model file.", show_default=False)],
    images: Annotated[Path, typer.Argument(help="An image file (PNG, JPEG, ...) or a folder of them.",
                                           show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many classes to show per image.")] = 3,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Config naming the classes of a bare model file (else class indices).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Classify images: the top-k classes and their probabilities, per image."""
    with _errors():
        _quiet_tensorflow()
        from cnnctl.predict import predict

        results = predict(target, images, top_k=top_k, config_path=config)
        if json_:
            _plain(json.dumps(results, indent=2))
            return
        width = max(len(r["image"]) for r in results)
        for result in results:
            tops = "   ".join(f'{t["class"]} {t["probability"]:.3f}' for t in result["top"])
            _plain(f'{result["image"]:<{width}}   {tops}')


class ExportFormat(str, Enum):  # the formats of cnnctl.export.FORMATS (a test keeps them in step)
    keras = "keras"
    saved_model = "saved_model"
    tflite = "tflite"
    onnx = "onnx"


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

        result = export(run, format_.value, out_path, data_dir=data_dir)
        _plain(f"exported   {result.path}  ({result.format}, {result.bytes:,} bytes"
               + (f"; float32 copy of a {result.precision} model)" if result.trained_difference is not None
                  else ")"))
        _plain(f"checked    {result.images} {result.images_from}: largest difference {result.difference:.3g} "
               f"(tolerance {result.tolerance:g})")
        if result.trained_difference is not None:
            _plain(f"           against the model as trained in {result.precision}: {result.trained_difference:.3g} "
                   f"(tolerance {result.trained_tolerance:g})")



def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
