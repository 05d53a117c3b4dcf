"""What the commands print: tables and lines drawn on a `rich` console passed in by the caller.

Each renderer takes the plain data a library function returned (a dict, a dataclass) and a
`Console`, so a test can render into a string; `as_json=True` prints the same data as JSON instead.
Nothing here imports TensorFlow at import time, and nothing exits.
"""

from __future__ import annotations

import json
from datetime import datetime

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from cnnctl.errors import CnnctlError, Interrupted

# ---------------------------------------------------------------- helpers


def plain(text: str, console: Console) -> None:
    """One line as it is: no markup, no highlighting of numbers or paths, not wrapped (a JSON line stays one)."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def print_json(data, console: Console, *, indent: int | None = 2) -> None:
    plain(json.dumps(data, indent=indent), console)


def error(exc: CnnctlError, console: Console) -> None:
    """A cnnctl error: `error: ` before each line of its message, then its hint (an interrupted run's: how to resume)."""
    for line in exc.message.splitlines():
        console.print(f"[bold red]error:[/bold red] {escape(line)}", highlight=False, markup=True)
    hint = exc.hint or (f"resume with: cnnctl train --resume {exc.run_dir}" if isinstance(exc, Interrupted) else None)
    if hint:
        console.print(f"hint: {hint}", highlight=False, markup=False)


def table(rich_table: Table, console: Console) -> None:
    """A table at its natural width: a narrow or non-terminal console would squeeze names to nothing."""
    natural = Measurement.get(console, console.options.update(max_width=10_000), rich_table).maximum
    if natural <= console.width:
        console.print(rich_table)
        return
    wide = Console(file=console.file, width=natural, color_system=console.color_system,
                   force_terminal=console.is_terminal)
    wide.print(rich_table)


def number(value, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m {seconds:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def started(value) -> str:
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return "-"


# ---------------------------------------------------------------- devices

CPU_FEATURES = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def device_info(hw, plan, versions: dict) -> dict:
    """What `cnnctl devices` shows, from runtime.probe_hardware(), runtime.plan() and runtime.versions()."""
    return {
        "cpu": {"model": hw.cpu_model, "logical_cpus": hw.logical_cpus,
                "avx512_bf16": "avx512_bf16" in hw.cpu_flags, "amx_bf16": "amx_bf16" in hw.cpu_flags,
                "amx_tile": "amx_tile" in hw.cpu_flags, "avx512f": "avx512f" in hw.cpu_flags},
        "gpus": [{"index": g.index, "name": g.name,
                  "compute_capability": ".".join(map(str, g.compute_capability or ())) or None}
                 for g in hw.gpus],
        "versions": versions,
        "auto": {"device": plan.device, "device_reason": plan.device_reason,
                 "precision": plan.precision, "precision_reason": plan.precision_reason,
                 "jit_compile": plan.jit_compile, "jit_reason": plan.jit_reason},
    }


def devices(info: dict, console: Console, *, as_json: bool = False) -> None:
    """The device table, the versions, and what `auto` would choose."""
    if as_json:
        print_json(info, console)
        return
    devices_table = Table(title="Devices", title_justify="left")
    devices_table.add_column("device")
    devices_table.add_column("details")
    cpu = info["cpu"]
    features = ", ".join(k.upper() for k in CPU_FEATURES if cpu[k]) or "none"
    devices_table.add_row("CPU:0", f'{cpu["model"]} ({cpu["logical_cpus"]} logical CPUs); features: {features}')
    for gpu in info["gpus"]:
        devices_table.add_row(f'GPU:{gpu["index"]}', f'{gpu["name"]}, compute capability {gpu["compute_capability"]}')
    if not info["gpus"]:
        devices_table.add_row("GPU", "none found")
    console.print(devices_table)
    v = info["versions"]
    console.print(f'TensorFlow {v["tensorflow"]}, Keras {v["keras"]}, CUDA {v["cuda"] or "-"}, '
                  f'cuDNN {v["cudnn"] or "-"}', highlight=False)
    a = info["auto"]
    console.print(f'auto device:    {a["device"]} ({a["device_reason"]})', highlight=False)
    console.print(f'auto precision: {a["precision"]} ({a["precision_reason"]})', highlight=False)
    console.print(f'auto XLA:       {a["jit_compile"]} ({a["jit_reason"]})', highlight=False)


# ---------------------------------------------------------------- summary, train, evaluate


def summary(data: dict, console: Console, *, as_json: bool = False) -> None:
    """summary.summarize()'s result: the Keras-style table (drawn by cnnctl.summary), or JSON."""
    if as_json:
        print_json(data, console)
        return
    from cnnctl.summary import render

    render(data, console)


def progress_display(console: Console, stop, *, as_json: bool = False, quiet: bool = False):
    """The Keras callback that shows training: JSON lines, plain lines (also when not on a terminal), or a live bar."""
    from cnnctl import progress  # imports keras

    if as_json:
        return progress.JsonProgress(console, stop)
    if quiet or not console.is_terminal:
        return progress.PlainProgress(console, stop)
    return progress.RichProgress(console, stop)


class Decoding:
    """progress(done, total) of a first decode of image files: a live bar with images/s on a terminal,
    else one line when it is over."""

    def __init__(self, console: Console, *, bar: bool = True):
        import time

        self.console, self.bar, self.clock = console, bar and console.is_terminal, time.perf_counter
        self.progress = self.task = self.started = None

    def __call__(self, done: int, total: int) -> None:
        if self.started is None:
            self.started = self.clock()
            if self.bar:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self.progress = Progress(TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                         console=self.console, transient=True)
                self.task = self.progress.add_task("decode", total=total, rate="")
                self.progress.start()
        seconds = max(self.clock() - self.started, 1e-9)
        if self.progress is not None:
            self.progress.update(self.task, completed=done, rate=f"{done / seconds:,.0f} images/s")
        if done >= total:
            if self.progress is not None:
                self.progress.stop()
            plain(f"decoded {total:,} images in {seconds:.1f} s ({total / seconds:,.0f} images/s)", self.console)


def train_result(result, console: Console, *, as_json: bool = False) -> None:
    """The end of `cnnctl train` for a results.TrainResult: a block of lines, or one JSON line."""
    evaluation = result.evaluation or {}
    if as_json:
        print_json({"event": "result", "run_dir": str(result.run_dir), "status": result.status,
                 "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                 "wall_seconds": result.wall_seconds, "images_per_second": result.images_per_second,
                 "test_loss": evaluation.get("loss"), "test_accuracy": evaluation.get("accuracy"),
                 **({"tta": evaluation["tta"]} if "tta" in evaluation else {}),
                 "expect": result.expect, "message": result.message}, console, indent=None)
        return
    lines = [f"run        {result.run_dir}  ({result.status})"]
    if result.message:
        lines.append(f"problem    {result.message}")
    if evaluation:
        lines.append(f"test       accuracy {evaluation['accuracy']:.4f}  loss {evaluation['loss']:.4f}  "
                     f"(best epoch {result.best_epoch} of {result.epochs_run}"
                     f"{'; test-time augmentation' if 'tta' in evaluation else ''})")
        if "tta" in evaluation:
            lines.append(f"tta        {tta_line(evaluation['tta'])}")
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
        plain(line, console)


def tta_line(tta: dict) -> str:
    """An eval.json's `tta` entry: `flip, translate 1 px: accuracy 0.9712 (0.9650 without), loss ...`."""
    pixels = f" {tta['translate_pixels']} px" if "translate_pixels" in tta else ""
    return (f"{', '.join(tta['views'])}{pixels}: accuracy {tta['accuracy_with']:.4f} ({tta['accuracy_without']:.4f} "
            f"without), loss {tta['loss_with']:.4f} ({tta['loss_without']:.4f} without)")


def report(data: dict, console: Console) -> None:
    """An evaluation report (eval.json): the headline numbers, the per-class table, the confusion matrix."""
    k = data["top_k"]
    plain(f"test examples {data['examples']:,}  loss {data['loss']:.4f}  accuracy {data['accuracy']:.4f}  "
          f"top-{k} accuracy {data[f'top_{k}_accuracy']:.4f}  macro F1 {data['macro_f1']:.4f}", console)
    if "tta" in data:
        plain(f"test-time augmentation (the figures above and below): {tta_line(data['tta'])}", console)
    per_class = Table(title="Per class", title_justify="left")
    for column in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for row in data["per_class"]:
        per_class.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                          f"{row['support']:,}")
    console.print(per_class)
    names = data["class_names"]
    matrix = Table(title="Confusion matrix (rows: true, columns: predicted)", title_justify="left")
    matrix.add_column("")
    for name in names:
        matrix.add_column(name[:9], justify="right")
    for name, row in zip(names, data["confusion_matrix"], strict=True):
        matrix.add_row(name, *[str(v) for v in row])
    console.print(matrix)


def evaluation(outcome, plotted, console: Console, *, as_json: bool = False) -> None:
    """`cnnctl evaluate`'s result (a results.Evaluation): the report and where it was written, or the report as
    one JSON line."""
    if as_json:
        print_json(outcome.report, console, indent=None)
        return
    report(outcome.report, console)
    plain(f"report written to {outcome.destination}", console)
    if plotted:
        plain(f"plots written to {plotted}", console)


# ---------------------------------------------------------------- runs, compare, predict, export

RUN_COLUMNS = ("run", "config", "status", "epochs", "best val acc", "test acc", "wall", "started")
RIGHT_ALIGNED = ("epochs", "best val acc", "test acc", "wall")


def runs(rows: list[dict], runs_dir, console: Console, *, as_json: bool = False) -> None:
    """The rows of runs.list_runs() as a table (or a line saying there are none)."""
    if as_json:
        print_json(rows, console)
        return
    if not rows:
        plain(f"no runs in {runs_dir}", console)
        return
    listing = Table(title=f"Runs in {runs_dir}", title_justify="left")
    for column in RUN_COLUMNS:
        listing.add_column(column, justify="right" if column in RIGHT_ALIGNED else "left")
    for row in rows:
        epochs = "-" if row["epochs_run"] is None else \
            f'{row["epochs_run"]}/{row["epochs"]}' if row["epochs"] else str(row["epochs_run"])
        status = row["status"] + (" (smoke)" if row["smoke"] else "")
        listing.add_row(row["name"], row["config"] or "-", status, epochs, number(row["best_val_accuracy"]),
                        number(row["test_accuracy"]), duration(row["wall_seconds"]), started(row["start_time"]))
    table(listing, console)


def comparison(result: dict, console: Console, *, as_json: bool = False) -> None:
    """runs.compare()'s result: metrics side by side, the config keys whose values differ, where the plot is."""
    if as_json:
        print_json(result, console)
        return
    compared = result["runs"]
    metrics_table = Table(title="Metrics (final / best)", title_justify="left")
    metrics_table.add_column("")
    for run in compared:
        metrics_table.add_column(run["name"], justify="right", overflow="fold")
    metrics: list[str] = []
    for run in compared:
        metrics += [m for m in run["metrics"] if m not in metrics]
    for metric in metrics:
        cells = [f'{number(run["metrics"][metric]["final"])} / {number(run["metrics"][metric]["best"])}'
                 if metric in run["metrics"] else "-" for run in compared]
        metrics_table.add_row(metric, *cells)
    metrics_table.add_row("test accuracy", *[number(run["test_accuracy"]) for run in compared])
    metrics_table.add_row("test loss", *[number(run["test_loss"]) for run in compared])
    metrics_table.add_row("params", *[number(run["params"], ",") for run in compared])
    metrics_table.add_row("epochs", *["-" if run["epochs_run"] is None else str(run["epochs_run"])
                                      for run in compared])
    metrics_table.add_row("wall time", *[duration(run["wall_seconds"]) for run in compared])
    metrics_table.add_row("status", *[run["status"] for run in compared])
    table(metrics_table, console)
    differences = result["config_differences"]
    if not differences:
        plain("configs: identical", console)
    else:
        diff = Table(title="Config differences", title_justify="left")
        diff.add_column("key", overflow="fold")
        for run in compared:
            diff.add_column(run["name"], overflow="fold")
        for key, values in differences.items():
            diff.add_row(key, *[v if isinstance(v, str) else json.dumps(v) for v in values])
        table(diff, console)
    if result.get("plot"):
        plain(f"plot written to {result['plot']}", console)


def predictions(results: list[dict], console: Console, *, as_json: bool = False) -> None:
    """One line per image: its name, then each top class with its probability."""
    if as_json:
        print_json(results, console)
        return
    width = max(len(r["image"]) for r in results)
    for result in results:
        tops = "   ".join(f'{t["class"]} {t["probability"]:.3f}' for t in result["top"])
        plain(f'{result["image"]:<{width}}   {tops}', console)


def export_result(result, console: Console) -> None:
    """What export.export() wrote and how closely it matched the Keras model."""
    float32_copy = result.trained_difference is not None
    plain(f"exported   {result.path}  ({result.format}, {result.bytes:,} bytes"
          + (f"; float32 copy of a {result.precision} model)" if float32_copy else ")"), console)
    plain(f"checked    {result.images} {result.images_from}: largest difference {result.difference:.3g} "
          f"(tolerance {result.tolerance:g})", console)
    if float32_copy:
        plain(f"           against the model as trained in {result.precision}: {result.trained_difference:.3g} "
              f"(tolerance {result.trained_tolerance:g})", console)


# ---------------------------------------------------------------- tune


def _params(params: dict) -> str:
    return "  ".join(f"{key.rsplit('.', 1)[-1]}={number(v, '.3g') if isinstance(v, float) else json.dumps(v)}"
                     for key, v in params.items())


def trial_line(trial: dict, metric: str, console: Console) -> None:
    """One finished trial, as a study runs: `trial 3  complete  val_accuracy 0.9812  lr=0.0031 ...  45.2 s`."""
    value = "-" if trial["value"] is None else f"{trial['value']:.4f}"
    plain(f"trial {trial['number']:<4} {trial['state']:<9} {metric} {value}  {_params(trial['params'])}  "
          f"{duration(trial['seconds'])}", console)


def study(summary: dict, console: Console, *, as_json: bool = False) -> None:
    """The trials of a study, best first among the complete ones, and where its reports are."""
    if as_json:
        print_json(summary, console)
        return
    rank = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "fail": 4}
    reverse = summary["direction"] == "maximize"
    rows = sorted(summary["trials"], key=lambda r: (rank.get(r["state"], 5),
                                                    -(r["value"] or 0) if reverse else (r["value"] or 0), r["number"]))
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    grid = Table(title=f"Study {summary['study']}: {summary['finished']} of {summary['target']} trials finished "
                       f"({summary['direction']} {summary['metric']})", title_justify="left")
    for column in ("trial", "state", summary["metric"], *keys, "epochs", "time"):
        grid.add_column(column, justify="left" if column == "state" else "right", overflow="fold")
    for r in rows:
        grid.add_row(str(r["number"]), r["state"], number(r["value"]),
                     *[number(r["params"][k], ".3g") if isinstance(r["params"].get(k), float)
                       else json.dumps(r["params"].get(k, "-")) for k in keys],
                     "-" if r["epochs"] is None else str(r["epochs"]), duration(r["seconds"]))
    table(grid, console)
    best = summary["best"]
    if best:
        plain(f"best       trial {best['number']}: {summary['metric']} {best['value']:.4f}  {_params(best['params'])}",
              console)
        plain(f"           {best['run_dir']}", console)
        plain(f"best.yaml  {best['config']}  (cnnctl train {best['config']})", console)
    plain(f"reports    {summary['study']}/trials.csv, {summary['study']}/plots/", console)
    for warning in summary["warnings"]:
        plain(f"warning: {warning}", console)


def synced(rows: list[dict], console: Console, *, as_json: bool = False) -> None:
    """`cnnctl sync`: one line per run."""
    if as_json:
        print_json(rows, console)
        return
    for row in rows:
        problems = f"  NOT all logged: {'; '.join(row['problems'])}" if row["problems"] else ""
        plain(f"{row['run']}  ->  MLflow run {row['run_id']} at {row['uri']}  ({row['epochs']} epochs){problems}",
              console)


# ---------------------------------------------------------------- data

DUPLICATES_SHOWN = 10  # groups of identical images listed; --json lists them all


def size_in_bytes(n: float) -> str:
    """`812 bytes`, `1.4 MB`, `3.2 GB` (powers of 1000)."""
    unit = "bytes"
    for larger in ("KB", "MB", "GB"):
        if n < 1000:
            break
        n, unit = n / 1000, larger
    return f"{int(n):,} bytes" if unit == "bytes" else f"{n:.1f} {unit}"


def dataset_report(report: dict, console: Console, *, as_json: bool = False) -> None:
    """`cnnctl data`: where the data is, images per class and split, sizes and modes, the files training
    would refuse, identical images in different splits, the decode cache."""
    if as_json:
        print_json(report, console)
        return
    size = f", {size_in_bytes(report['bytes'])}" if report["bytes"] else ""
    plain(f"dataset    {report['dataset']}: {report['source'] or 'generated'} ({report['layout']}{size})", console)
    if report["split"]:
        s = report["split"]
        plain(f"split      per class: val {s['val']:g}, test {s['test']:g} (data.split, seed {s['seed']})", console)
    parts = list(report["totals"])
    counts = Table(title=f"{len(report['classes'])} classes, {report['images']:,} images", title_justify="left")
    for column in ("class", *parts, "total"):
        counts.add_column(column, justify="left" if column == "class" else "right")
    for i, (name, row) in enumerate(report["counts"].items()):
        counts.add_row(name, *[f"{row[p]:,}" for p in parts], f"{sum(row.values()):,}",
                       end_section=i == len(report["counts"]) - 1)
    counts.add_row("total", *[f"{report['totals'][p]:,}" for p in parts], f"{report['images']:,}")
    table(counts, console)
    other = report["other_sizes"]
    more = f", and {other['sizes']:,} other sizes ({other['images']:,} images)" if other["sizes"] else ""
    plain("sizes      " + (", ".join(f"{s['width']}x{s['height']} {s['images']:,}" for s in report["sizes"]) or "-")
          + more, console)
    modes = ", ".join(f"{kind} {n:,}" for kind, n in report["modes"].items()) or "-"
    plain(f"modes      {modes}  (Pillow: {', '.join(f'{m} {n:,}' for m, n in report['pillow_modes'].items())})"
          if set(report["pillow_modes"]) - set(report["modes"]) else f"modes      {modes}", console)
    _unreadable(report["unreadable"], console)
    _duplicates(report["duplicates"], console)
    _cache(report["cache"], console)
    for note in report["notes"]:
        plain(f"note       {note}", console)


def _unreadable(files: list[dict], console: Console) -> None:
    if not files:
        plain("unreadable none", console)
        return
    plain(f"unreadable {len(files):,} file{'s' * (len(files) > 1)} training would refuse "
          "(data.skip_bad_files: true skips them):", console)
    for entry in files:
        plain(f"           {entry['split']:<5}  {entry['path']}: {entry['reason']}", console)


def _member(member: dict) -> str:
    return f"{member['split']} {member['path'] if 'path' in member else '#' + str(member['index'])}"


def _duplicates(found: dict, console: Console) -> None:
    groups = found["across_splits"]
    if not groups:
        plain("duplicates none across splits", console)
    else:
        n = found["groups_across_splits"]
        plain(f"duplicates {n:,} group{'s' * (n != 1)} of identical images in different splits "
              f"({found['images_across_splits']:,} images):", console)
        for group in groups[:DUPLICATES_SHOWN]:
            differ = "  (classes differ)" if group["classes_differ"] else ""
            plain(f"           {group['sha256'][:12]}  {', '.join(_member(m) for m in group['files'])}{differ}",
                  console)
        if len(groups) > DUPLICATES_SHOWN:
            plain(f"           and {len(groups) - DUPLICATES_SHOWN:,} more groups (--json lists them all)", console)
    within = ", ".join(f"{part} {n:,}" for part, n in found["within_split"].items())
    plain(f"           extra copies within a split: {within}", console)


def _cache(cache: dict | None, console: Console) -> None:
    if cache is None:
        return
    if not cache["enabled"]:
        plain(f"cache      off (data.cache: false): every run decodes the images; folder {cache['folder']}", console)
        return
    plain(f"cache      {cache['folder']}  ({cache['folder_files']:,} files, {size_in_bytes(cache['folder_bytes'])} "
          "in all)", console)
    for part, entry in cache["splits"].items():
        state = f"cached, {size_in_bytes(entry['bytes'])}" if entry["cached"] else "not cached (the next run decodes it)"
        plain(f"           {part:<5}  {entry['file']}  {state}", console)
