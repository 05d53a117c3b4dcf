"""Profile cnnctl's training speed one setting at a time, against its defaults (not part of `make test`).

    .venv/bin/python bench/profile.py                          # MNIST (Torres), all 60,000 images
    .venv/bin/python bench/profile.py --model cifar10 --train-images 10000

Every variant is `cnnctl train` in its own subprocess with exactly one change from the defaults:
a `--set` (precision, steps_per_execution), an environment variable TensorFlow reads (thread
pools, oneDNN) or a patch of the input pipeline or callbacks (bench/profile_child.py). Variants
alternate over the repetitions; each is reported as the ratio of its steady images/s (median
epoch time excluding the first epoch, from metrics.csv) to the default's, measured in the same
script, so a drift in machine load hits all alike. Writes bench/results/<date>-profile-<model>.md
and .json; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import datasets
from measure import machine, portable, run_child

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SHARED = ROOT.parent / "shared" / "datasets"
PY = sys.executable

# name: (what it changes, --set values, environment, patch in profile_child.py)
VARIANTS = {
    "default": ("cnnctl's defaults (precision auto: mixed_bfloat16 here)", [], {}, "none"),
    "float32": ("runtime.precision=float32", ["runtime.precision=float32"], {}, "none"),
    "spe1": ("runtime.steps_per_execution=1 (default auto: the largest divisor of an epoch's steps up to 16)",
             ["runtime.steps_per_execution=1"], {}, "none"),
    "async_callbacks": ("per-batch callbacks dispatched asynchronously (measurement only)", [], {}, "async_callbacks"),
    "sequential_map": ("tf.data map on one thread (no num_parallel_calls=AUTOTUNE)", [], {}, "sequential_map"),
    "no_prefetch": ("no tf.data prefetch", [], {}, "no_prefetch"),
    "intra1": ("TF_NUM_INTRAOP_THREADS=1 (default: one per core)", [], {"TF_NUM_INTRAOP_THREADS": "1"}, "none"),
    "inter1": ("TF_NUM_INTEROP_THREADS=1 (default: one per core)", [], {"TF_NUM_INTEROP_THREADS": "1"}, "none"),
    "onednn_off": ("TF_ENABLE_ONEDNN_OPTS=0 (oneDNN kernels off)", [], {"TF_ENABLE_ONEDNN_OPTS": "0"}, "none"),
    "xla": ("runtime.jit_compile=true (XLA)", ["runtime.jit_compile=true"], {}, "none"),
}
DEFAULT_VARIANTS = [name for name in VARIANTS if name != "xla"]  # XLA on CPU: minutes per epoch


def say(message: str) -> None:
    print(f"profile: {message}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("mnist", "cifar10"), default="mnist")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is excluded (default 3)")
    p.add_argument("--repeats", type=int, default=2, help="alternating repetitions (default 2)")
    p.add_argument("--train-images", type=int, help="training images (default: all)")
    p.add_argument("--mnist", type=Path, default=SHARED / "mnist.npz")
    p.add_argument("--cifar-root", type=Path, default=Path(tempfile.gettempdir()) / "cifar10-jpg")
    p.add_argument("--cifar-tar", type=Path, default=SHARED / "cifar10-jpg.tar.gz")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := set(args.variants) - set(VARIANTS):
        p.error(f"--variants: unknown {', '.join(sorted(unknown))}")
    if "default" not in args.variants:
        args.variants.insert(0, "default")
    if args.epochs < 2 or args.repeats < 1:
        p.error("--epochs must be at least 2 (the first epoch is excluded) and --repeats at least 1")
    if args.out is None:
        args.out = BENCH / "results" / f"{datetime.date.today().isoformat()}-profile-{args.model}.json"
    return args


def data_sets(args, tmp: Path) -> tuple[str, list[str], int]:
    """The config, the --set values that point it at the benchmark's data, and the training images."""
    if args.model == "mnist":
        npz = tmp / "mnist.npz"
        n_train, _ = datasets.mnist_slice(args.mnist, npz, args.train_images, None)
        return "configs/mnist.yaml", ["data.dataset=npz", f"data.root={json.dumps(str(npz))}", "data.num_classes=10"], n_train
    root = datasets.cifar_folders(args.cifar_root, args.cifar_tar, tmp / "unpacked")
    test = max(1000, (args.train_images or 50_000) // 5)  # validation runs every epoch: keep it in proportion
    folder, n_train, _ = datasets.cifar_subset(root, tmp / "subset", args.train_images, test)
    return "configs/cifar10.yaml", ["data.dataset=directory", f"data.root={json.dumps(str(folder))}"], n_train


def one_run(args, tmp: Path, name: str, rep: int, config: str, data: list[str], env: dict) -> dict:
    _, sets, extra_env, patch = VARIANTS[name]
    work = tmp / "trials" / f"{name}-{rep}"
    argv = [PY, str(BENCH / "profile_child.py"), patch, "train", config, "--quiet", "--runs-dir", str(work),
            "--run-name", "p", *(a for s in [*data, f"train.epochs={args.epochs}", *sets] for a in ("--set", s))]
    child = run_child(argv, log=tmp / "logs" / f"{name}-{rep}.log", env={**env, **extra_env}, cwd=ROOT, timeout=7200)
    record = {"variant": name, "rep": rep, "wall_seconds": child.wall_seconds, "peak_rss_mb": child.peak_rss_mb,
              "ok": child.ok}
    if child.ok:
        with open(work / "p" / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        seconds = [float(r["epoch_seconds"]) for r in rows]
        record.update(epoch_seconds=seconds, steady_epoch_seconds=statistics.median(seconds[1:]),
                      accuracy=float(rows[-1].get("val_accuracy") or rows[-1]["accuracy"]))
    else:
        record["error"] = child.error()
    shutil.rmtree(work, ignore_errors=True)
    return record


def summarise(args, runs: list[dict], n_train: int) -> list[dict]:
    def median(name, key):
        values = [r[key] for r in runs if r["variant"] == name and r["ok"]]
        return statistics.median(values) if values else None

    base = median("default", "steady_epoch_seconds")
    rows = []
    for name in args.variants:
        seconds = median(name, "steady_epoch_seconds")
        rows.append({"variant": name, "change": VARIANTS[name][0], "steady_epoch_seconds": seconds,
                     "images_per_second": round(n_train / seconds, 1) if seconds else None,
                     "speed_vs_default": round(base / seconds, 3) if seconds and base else None,
                     "peak_rss_mb": median(name, "peak_rss_mb"), "accuracy": median(name, "accuracy"),
                     "ok_runs": sum(r["ok"] for r in runs if r["variant"] == name),
                     "runs": sum(r["variant"] == name for r in runs)})
    return rows


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"## Profile: {results['model']}, one setting at a time, {m['date']}", "",
             f"Machine: {m['cpu']['model']}, {m['usable_cpus']} usable CPUs; TensorFlow {m['tensorflow']}, "
             f"Keras {m['keras']}; cnnctl {m['cnnctl']['commit']}{' (uncommitted changes)' if m['cnnctl']['dirty'] else ''}. "
             f"{results['train_images']:,} training images, {results['epochs']} epochs per run, "
             f"{results['repeats']} alternating repetition(s); speed = median steady epoch time of the default "
             "/ the variant's (> 1: faster than the default).", "",
             f"Command: `{results['command']}`", "",
             "| variant | what changes | images/s | speed vs default | peak RSS MB | final accuracy | ok runs |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        def fmt(value, spec):
            return "failed" if value is None else format(value, spec)
        lines.append(f"| {row['variant']} | {row['change']} | {fmt(row['images_per_second'], ',.0f')} | "
                     f"{fmt(row['speed_vs_default'], '.2f') + 'x' if row['speed_vs_default'] else 'failed'} | "
                     f"{fmt(row['peak_rss_mb'], ',.0f')} | "
                     f"{fmt(row['accuracy'], '.4f')} | {row['ok_runs']}/{row['runs']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    results = {"machine": machine(ROOT), "model": args.model, "epochs": args.epochs, "repeats": args.repeats,
               "variants": args.variants, "command": " ".join(["python", "bench/profile.py", *(argv or sys.argv[1:])])}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cnnctl-profile-") as tmp_name:
        tmp = Path(tmp_name)
        env = dict(os.environ, CNNCTL_CACHE=str(tmp / "cache"), CNNCTL_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2")
        config, data, n_train = data_sets(args, tmp)
        results["train_images"] = n_train
        if args.model == "cifar10":  # decode once so that no variant pays for it
            say("decoding the JPEGs once (fills the decode cache every variant reads) ...")
            folder = json.loads(data[1].split("=", 1)[1])
            decode = run_child([PY, str(BENCH / "cifar10_arrays.py"), folder, str(tmp / "decoded.npz")],
                               log=tmp / "logs" / "decode.log", env=env, cwd=ROOT)
            if not decode.ok:
                say(f"FAILED decoding: {decode.error()}")
                return 1
        try:
            for rep in range(args.repeats):
                for name in args.variants:
                    record = one_run(args, tmp, name, rep, config, data, env)
                    runs.append(record)
                    say(f"rep {rep + 1}/{args.repeats} {name}: " + (
                        f"{n_train / record['steady_epoch_seconds']:,.0f} img/s, {record['peak_rss_mb']:,.0f} MB, "
                        f"acc {record['accuracy']:.4f}" if record["ok"] else f"FAILED {record['error']}"))
        except KeyboardInterrupt:
            say("interrupted: writing what was measured")
    results.update(runs=runs, rows=summarise(args, runs, n_train))
    results = portable(results, ROOT)  # no path of this machine in the committed results
    text = markdown(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(text)
    print(text, end="")
    say(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
