"""Test accuracy against wall time for every config in configs/, from the table bench/results/configs.json.

    .venv/bin/python bench/configs_plot.py                 # draws bench/results/configs-accuracy-time.png
    .venv/bin/python bench/configs_plot.py add --config configs/mnist_fast.yaml --run-dir runs/mnist-fast
                                                           # appends that run's row (then draw again)

The table is a list of rows {config, seed, test_accuracy, wall_seconds, cpu, date, command} (and an optional
note); test_accuracy is null where the source gave no figure. `add` reads the run's manifest.json (seed,
wall_seconds, start date, command) and eval.json (accuracy: the test accuracy, with test-time augmentation
if the config has it) and the CPU from lscpu. The plot has one marker per config: the mean over its rows
with both an accuracy and a wall time, with the sample sd as error bars where there are several.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from measure import portable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TABLE = BENCH / "results" / "configs.json"
PNG = BENCH / "results" / "configs-accuracy-time.png"


def read_table(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def write_table(path: Path, rows: list[dict]) -> None:
    """One row per line, so that an added run is a one-line diff."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("[\n" + ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n]\n")
    tmp.replace(path)


def lscpu_cpu() -> str:
    """'2-core Intel(R) Xeon(R) Processor with AVX512_BF16 and AMX', as the README names CPUs."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    info = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in out.splitlines())}
    try:
        cores = int(info["Core(s) per socket"]) * int(info["Socket(s)"])
    except (KeyError, ValueError):
        cores = info.get("CPU(s)", "?")
    flags = set(info.get("Flags", "").split())
    extras = [name for flag, name in (("avx512_bf16", "AVX512_BF16"), ("amx_bf16", "AMX")) if flag in flags]
    return f"{cores}-core {info.get('Model name', 'unknown CPU')}" + (f" with {' and '.join(extras)}" if extras else "")


def run_row(config: str, run_dir: Path) -> dict:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    evaluation = json.loads((run_dir / "eval.json").read_text())
    if manifest.get("status") != "completed":
        raise SystemExit(f"error: {run_dir}: run status {manifest.get('status')!r}, not completed")
    argv = [str(arg) for arg in manifest.get("command") or []]
    if overrides := [b for a, b in zip(argv, argv[1:], strict=False) if a == "--set" and not b.startswith("seed=")]:
        print(f"warning: {run_dir} was trained with --set {', '.join(overrides)}: its row counts as {config}",
              file=sys.stderr)
    if argv and Path(argv[0]).name in ("cnnctl", "__main__.py"):
        argv[0] = "cnnctl"
    config_path = Path(config).resolve()
    return {"config": str(config_path.relative_to(ROOT)) if config_path.is_relative_to(ROOT) else config,
            "seed": manifest["seed"], "test_accuracy": round(float(evaluation["accuracy"]), 4),
            "wall_seconds": manifest["wall_seconds"], "cpu": lscpu_cpu(), "date": manifest["start_time"][:10],
            "command": " ".join(portable(argv, ROOT))}


def label_sides(points: list[tuple[float, float]]) -> list[bool]:
    """For each (wall seconds, accuracy) point, whether its label goes above it: above unless that box (from the
    point to 5x its time on the log axis, an eighth of the accuracy span high) meets a label placed before,
    points taken from the most accurate down."""
    ys = [y for _, y in points]
    height = max(max(ys) - min(ys), 0.05) / 8
    placed: list[tuple[float, float, float, float]] = []
    sides = [True] * len(points)
    for i in sorted(range(len(points)), key=lambda k: -points[k][1]):
        x, y = points[i]
        for above in (True, False):
            box = (x, x * 5, y, y + height) if above else (x, x * 5, y - height, y)
            if not any(b[0] < box[1] and box[0] < b[1] and b[2] < box[3] and box[2] < b[3] for b in placed):
                break
        sides[i] = above
        placed.append(box)
    return sides


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("test_accuracy") is not None and row.get("wall_seconds"):
            groups.setdefault(row["config"], []).append(row)
    if not groups:
        raise SystemExit("error: no row has both a test accuracy and a wall time")
    fig, ax = plt.subplots(figsize=(9, 6))
    points = sorted(groups.items(), key=lambda item: statistics.mean(r["wall_seconds"] for r in item[1]))
    sides = label_sides([(statistics.mean(r["wall_seconds"] for r in g), statistics.mean(r["test_accuracy"] for r in g))
                         for _, g in points])
    for number, (config, group) in enumerate(points):
        wall, accuracy = [r["wall_seconds"] for r in group], [r["test_accuracy"] for r in group]
        several = len(group) > 1
        x, y = statistics.mean(wall), statistics.mean(accuracy)
        ax.errorbar(x, y, xerr=statistics.stdev(wall) if several else None,
                    yerr=statistics.stdev(accuracy) if several else None, fmt="o", capsize=4, markersize=7)
        seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in group}))
        detail = f"mean ± sd of {len(group)} runs, seeds {seeds}" if several else f"seed {seeds}"
        dates = "/".join(sorted({r["date"] for r in group}))
        above = sides[number]
        ax.annotate(f"{Path(config).stem}\n{y:.4f}, {x:,.{0 if x >= 100 else 1}f} s\n{detail}; {dates}", (x, y),
                    textcoords="offset points", xytext=(7, 5 if above else -5), fontsize=8,
                    va="bottom" if above else "top")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlim(right=ax.get_xlim()[1] * 2.5)  # room for the labels of the slowest configs
    ax.margins(y=0.15)
    ax.set_xlabel("wall time of `cnnctl train`, s (log scale)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, which="both", alpha=0.3)
    cpus = "; ".join(sorted({r["cpu"] for group in groups.values() for r in group}))
    ax.set_title(f"Test accuracy against wall time, configs/\nCPU: {cpus}", fontsize=10)
    missing = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if f"configs/{p.name}" not in groups)
    left_out = len(rows) - sum(map(len, groups.values()))
    notes = [f"no test accuracy and wall time in the table yet: {', '.join(missing)}" if missing else "",
             f"{left_out} row(s) without a test accuracy not plotted" if left_out else ""]
    fig.text(0.01, 0.01, "; ".join(n for n in notes if n), fontsize=8, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("plot", "add", "-h", "--help"):
        argv.insert(0, "plot")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    draw = sub.add_parser("plot", help="draw the plot (the default)")
    draw.add_argument("--table", type=Path, default=TABLE)
    draw.add_argument("--out", type=Path, default=PNG)
    add = sub.add_parser("add", help="append a finished run's row to the table")
    add.add_argument("--table", type=Path, default=TABLE)
    add.add_argument("--config", required=True, help="the config the run trained, e.g. configs/mnist_fast.yaml")
    add.add_argument("--run-dir", type=Path, required=True, help="its run directory, e.g. runs/mnist-fast")
    args = p.parse_args(argv)
    rows = read_table(args.table)
    if args.command == "add":
        row = run_row(args.config, args.run_dir)
        if row in rows:
            raise SystemExit(f"error: {args.table} already has this row: {json.dumps(row)}")
        write_table(args.table, [*rows, row])
        print(f"added to {args.table}: {json.dumps(row)}")
    else:
        plot(rows, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
