"""Benchmark cnnctl against the plain tf.keras tutorial scripts it reproduces (not part of `make test`).

    .venv/bin/python bench/run.py            # the full benchmark: run it on a quiet machine
    .venv/bin/python bench/run.py --quick    # tiny sizes, 1 epoch, 1 repetition: checks the harness

Per model (Torres' MNIST CNN, the TDS CIFAR-10 CNN), on the same images, alternating repetitions of:
the plain script (bench/plain_*.py), `cnnctl train` in float32, `cnnctl train` at precision auto
(and for CIFAR-10 the same from the decoded arrays as npz), each in its own subprocess. CIFAR-10 runs
one repetition per seed (--seeds), every variant with that seed, and reports each variant's test
accuracy as mean +- sd over the seeds with a verdict on mixed precision against float32. Plus the
start-up times of `cnnctl --help` and `cnnctl summary` against `import tensorflow`. Writes
bench/results/<date>.json and .md and prints the markdown summary; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import datasets
import report
from measure import machine, median_or_none, portable, run_child

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SHARED = ROOT.parent / "shared" / "datasets"
PY = sys.executable
CNNCTL = [str(Path(PY).parent / "cnnctl")] if (Path(PY).parent / "cnnctl").exists() else [PY, "-m", "cnnctl"]
QUICK = {"epochs": 1, "train_images": 300, "test_images": 200, "repeats": 1, "seeds": "0,1", "startup_repeats": 2}
FULL = {"epochs": 5, "train_images": None, "test_images": None, "repeats": 3, "seeds": "0,1,2", "startup_repeats": 5}


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"tiny sizes to check the harness: {QUICK}")
    p.add_argument("--epochs", type=int, help="epochs per training run (full: 5; the first one is excluded from images/s)")
    p.add_argument("--train-images", type=int, help="training images per model (full: all)")
    p.add_argument("--test-images", type=int, help="test images per model (full: all)")
    p.add_argument("--repeats", type=int, help="alternating repetitions of each MNIST variant (full: 3)")
    p.add_argument("--seeds", help="comma-separated seeds; CIFAR-10 runs one alternating repetition per seed "
                                   "(full: 0,1,2)")
    p.add_argument("--startup-repeats", type=int, help="runs of each start-up command (full: 5)")
    p.add_argument("--parts", default="mnist,cifar10,startup", help="comma-separated subset of mnist,cifar10,startup")
    p.add_argument("--out", type=Path, help="result JSON (default bench/results/<date>.json; .md written next to it)")
    p.add_argument("--mnist", type=Path, default=SHARED / "mnist.npz")
    p.add_argument("--cifar-root", type=Path, default=Path(tempfile.gettempdir()) / "cifar10-jpg",
                   help="CIFAR-10 JPEG folders")
    p.add_argument("--cifar-tar", type=Path, default=SHARED / "cifar10-jpg.tar.gz", help="unpacked if --cifar-root is absent")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a child process is killed")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.epochs < 1 or args.repeats < 1 or args.startup_repeats < 1:
        p.error("--epochs, --repeats and --startup-repeats must be at least 1")
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        p.error(f"--seeds: integers separated by commas, got {args.seeds!r}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds: at least one seed, each once")
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if unknown := set(args.parts) - {"mnist", "cifar10", "startup"}:
        p.error(f"--parts: unknown {', '.join(sorted(unknown))}")
    if args.out is None:
        args.out = BENCH / "results" / f"{datetime.date.today().isoformat()}{'-quick' if args.quick else ''}.json"
    return args


class Bench:
    def __init__(self, args, tmp: Path):
        self.args, self.tmp = args, tmp
        self.env = dict(os.environ, CNNCTL_CACHE=str(tmp / "cache"), CNNCTL_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2")
        self.failures: list[str] = []
        self.partial: dict[str, dict] = {}  # runs so far, per model: kept when the benchmark is interrupted
        self.count = 0

    def child(self, argv, name: str):
        self.count += 1
        result = run_child(argv, log=self.tmp / "logs" / f"{self.count:03d}-{name}.log", env=self.env, cwd=ROOT,
                           timeout=self.args.timeout)
        if not result.ok:
            self.failures.append(f"{name}: {result.error()}")
            say(f"FAILED {name}: {result.error()}")
        return result

    # ---------------------------------------------------------------- one training run

    def train(self, model: str, key: str, rep: int, seed: int | None, argv_for, val_is_test: bool) -> dict:
        work = self.tmp / "trials" / f"{model}-{key}-{rep}"
        work.mkdir(parents=True)
        result = self.child(argv_for(work, seed), f"{model}-{key}-{rep}")
        record = {"rep": rep, "seed": seed, **result.to_dict(), "ok": result.ok}
        if result.ok:
            try:
                record.update(read_plain(work) if key == "plain" else read_cnnctl(work / "bench", val_is_test))
            except (OSError, ValueError, KeyError, IndexError) as exc:
                record.update(ok=False, error=f"unreadable results: {exc}")
                self.failures.append(f"{model}-{key}-{rep}: unreadable results: {exc}")
        shutil.rmtree(work, ignore_errors=True)  # checkpoints of a full run are large
        ips = record.get("images_per_second")
        say(f"{model} rep {rep + 1}{'' if seed is None else f' (seed {seed})'} {key}: "
            + (f"{ips:,.0f} img/s, {record['wall_seconds']:.1f} s, {record['peak_rss_mb']:,.0f} MB, "
               f"acc {record['test_accuracy']:.4f}" if record["ok"] else "failed"))
        return record

    def compare(self, model: str, variants: dict, val_is_test: bool, seeds: list[int] | None = None) -> dict:
        """--repeats repetitions at the config's seed (the plain script unseeded), or one per seed in `seeds`."""
        runs = self.partial.setdefault(model, {key: [] for key in variants})
        for rep, seed in enumerate(seeds or [None] * self.args.repeats):
            for key, argv_for in variants.items():  # a, b, a, b, ...: drifts in machine load hit all alike
                runs[key].append(self.train(model, key, rep, seed, argv_for, val_is_test))
        return {"runs": runs, "medians": {key: report.medians(r) for key, r in runs.items()}}

    def cnnctl_argv(self, config: str, sets: list[str], precision: str | None):
        extra = [*sets, f"train.epochs={self.args.epochs}"] + ([f"runtime.precision={precision}"] if precision else [])
        return lambda work, seed: [*CNNCTL, "train", config, "--quiet", "--runs-dir", str(work), "--run-name", "bench",
                                   *(arg for s in extra + ([] if seed is None else [f"seed={seed}"])
                                     for arg in ("--set", s))]

    def plain_argv(self, script: str, data: Path):
        return lambda work, seed: [PY, str(BENCH / script), str(data), str(self.args.epochs), str(work / "result.json"),
                                   *([] if seed is None else [str(seed)])]

    # ---------------------------------------------------------------- the models

    def mnist(self) -> dict:
        npz = self.tmp / "mnist.npz"
        n_train, n_test = datasets.mnist_slice(self.args.mnist, npz, self.args.train_images, self.args.test_images)
        sets = ["data.dataset=npz", f"data.root={json.dumps(str(npz))}", "data.num_classes=10"]
        variants = {"plain": self.plain_argv("plain_mnist.py", npz),
                    "cnnctl_f32": self.cnnctl_argv("configs/mnist.yaml", sets, "float32"),
                    "cnnctl_auto": self.cnnctl_argv("configs/mnist.yaml", sets, None)}
        return {"train_images": n_train, "test_images": n_test, "data": "mnist.npz slice (npz)",
                **self.compare("mnist", variants, val_is_test=False)}

    def cifar10(self) -> dict:
        root = datasets.cifar_folders(self.args.cifar_root, self.args.cifar_tar, self.tmp / "unpacked")
        folder, n_train, n_test = datasets.cifar_subset(root, self.tmp / "cifar-subset", self.args.train_images,
                                                        self.args.test_images)
        npz = self.tmp / "cifar10.npz"
        say(f"decoding {n_train + n_test:,} CIFAR-10 JPEGs once (fills the decode cache, writes the npz) ...")
        decode = self.child([PY, str(BENCH / "cifar10_arrays.py"), str(folder), str(npz)], "cifar10-decode")
        if not decode.ok:
            return {"train_images": n_train, "test_images": n_test, "error": "decoding failed"}
        folder_sets = ["data.dataset=directory", f"data.root={json.dumps(str(folder))}"]
        npz_sets = ["data.dataset=npz", f"data.root={json.dumps(str(npz))}", "data.num_classes=10"]
        variants = {"plain": self.plain_argv("plain_cifar10.py", folder),
                    "cnnctl_f32": self.cnnctl_argv("configs/cifar10.yaml", folder_sets, "float32"),
                    "cnnctl_auto": self.cnnctl_argv("configs/cifar10.yaml", folder_sets, None),
                    "cnnctl_auto_npz": self.cnnctl_argv("configs/cifar10.yaml", npz_sets, None)}
        return {"train_images": n_train, "test_images": n_test, "data": f"JPEG folders {root}", "seeds": self.args.seeds,
                "first_decode": decode.to_dict(),
                **self.compare("cifar10", variants, val_is_test=True, seeds=self.args.seeds)}

    def startup(self) -> dict:
        commands = {"import_tensorflow": [PY, "-c", "import tensorflow"], "cnnctl_help": [*CNNCTL, "--help"],
                    "cnnctl_summary": [*CNNCTL, "summary", "configs/cifar10.yaml"]}
        for name, argv in commands.items():  # warm the page cache and .pyc files; not measured
            self.child(argv, f"warmup-{name}")
        times, rss = {name: [] for name in commands}, {name: [] for name in commands}
        for _ in range(self.args.startup_repeats):
            for name, argv in commands.items():
                result = self.child(argv, name)
                if result.ok:
                    times[name].append(result.wall_seconds)
                    rss[name].append(result.peak_rss_mb)
        say("start-up medians: " + ", ".join(f"{k} {median_or_none(v) or float('nan'):.2f} s" for k, v in times.items()))
        return {name: {"seconds": times[name], "median": median_or_none(times[name]),
                       "peak_rss_mb": median_or_none(rss[name])} for name in commands}


def steady(epoch_seconds: list[float]) -> tuple[float, bool]:
    """Median epoch time excluding the first epoch (tracing, warm-up); the first one if it is all there is."""
    if len(epoch_seconds) > 1:
        return statistics.median(epoch_seconds[1:]), True
    return epoch_seconds[0], False


def _speed(epoch_seconds: list[float], train_images: int) -> dict:
    seconds, is_steady = steady(epoch_seconds)
    return {"epoch_seconds": epoch_seconds, "steady_epoch_seconds": seconds, "steady": is_steady,
            "images_per_second": round(train_images / seconds, 1), "train_images": train_images}


def read_plain(work: Path) -> dict:
    result = json.loads((work / "result.json").read_text())
    return {**_speed(result["epoch_seconds"], result["train_images"]), "test_accuracy": result["test_accuracy"],
            "accuracy_source": "model.evaluate(x_test, y_test) after the last epoch", "precision": "float32"}


def read_cnnctl(run_dir: Path, val_is_test: bool) -> dict:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    evaluation = json.loads((run_dir / "eval.json").read_text())
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if manifest.get("status") != "completed":
        raise ValueError(f"run status {manifest.get('status')}")
    accuracy, source = evaluation["accuracy"], "eval.json"
    if evaluation.get("best_epoch") != len(rows) and val_is_test and rows[-1].get("val_accuracy"):
        # eval.json evaluates the best epoch by val_accuracy, which this config measures on the test set;
        # the last epoch's val_accuracy is the final model's test accuracy, as the plain script reports.
        accuracy = float(rows[-1]["val_accuracy"])
        source = f"metrics.csv val_accuracy of the last epoch (eval.json: best epoch {evaluation.get('best_epoch')})"
    return {**_speed([float(r["epoch_seconds"]) for r in rows], manifest["dataset"]["train_examples"]),
            "test_accuracy": accuracy, "accuracy_source": source, "eval_json_accuracy": evaluation["accuracy"],
            "best_epoch": evaluation.get("best_epoch"), "precision": manifest.get("precision"),
            "run_wall_seconds": manifest.get("wall_seconds")}


def notes(args, results: dict) -> list[str]:
    out = ["**Interrupted: incomplete results.**"] if results.get("interrupted") else []
    out += ["Ratios are cnnctl / reference, medians over repetitions; peak RSS is ru_maxrss of each child from "
           "os.wait4; wall time is the whole process (start-up, data loading, training, evaluation, files)."]
    if args.epochs < 2:
        out.append("Only 1 epoch: images/s and epoch seconds include the first epoch (graph tracing), so they are "
                   "not steady-state; use --epochs >= 2 (the full benchmark uses 5).")
    if args.quick:
        out.append("--quick: tiny sizes on a possibly loaded machine; this checks the harness, the numbers mean little.")
    baseline = results["startup"].get("import_tensorflow", {}).get("peak_rss_mb")
    if baseline:
        out.append(f"Peak RSS of `python -c \"import tensorflow\"` alone: {baseline:,.0f} MB, a floor both sides share.")
    if "cifar10" in results["models"]:
        out.append("CIFAR-10 validates on the test set every epoch (the tutorial's validation_data=(x_test, y_test)), "
                   "in both the plain script and cnnctl; its final test accuracy is the last epoch's for both.")
        out.append(f"CIFAR-10 runs one repetition per seed ({', '.join(map(str, args.seeds))}), each variant with that "
                   "seed: the plain script through keras.utils.set_random_seed, cnnctl through `--set seed=N`; "
                   "its medians are over those seeds.")
    return out


def write(results: dict, out: Path) -> str:
    text = report.markdown(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, content in ((out, json.dumps(results, indent=1)), (out.with_suffix(".md"), text)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, path)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # unwind: children killed, temp dirs removed
    results = {"machine": machine(ROOT), "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
               "models": {}, "startup": {}, "rows": [], "notes": [], "failures": []}
    results["settings"] = json.loads(json.dumps(results["settings"], default=str))
    status = 0
    with tempfile.TemporaryDirectory(prefix="cnnctl-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            for part in ("mnist", "cifar10", "startup"):
                if part not in args.parts:
                    continue
                try:
                    value = getattr(bench, part)()
                except Exception as exc:  # one broken part must not lose the others
                    bench.failures.append(f"{part}: {type(exc).__name__}: {exc}")
                    say(f"FAILED {part}: {type(exc).__name__}: {exc}")
                    continue
                (results if part == "startup" else results["models"])[part] = value
        except (KeyboardInterrupt, SystemExit) as exc:
            say("interrupted: writing the results so far")
            results["interrupted"] = True
            status = 130 if isinstance(exc, KeyboardInterrupt) else 143
        results["failures"] = bench.failures
    for model, runs in bench.partial.items():  # an interrupted model: what it had measured
        results["models"].setdefault(model, {"runs": runs, "incomplete": True,
                                             "medians": {k: report.medians(r) for k, r in runs.items() if r}})
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    for model, data in results["models"].items():
        results["rows"] += report.model_rows(model, data.get("medians", {}))
        if seeded := report.over_seeds(data.get("runs", {})):
            data["accuracy_over_seeds"], data["precision_verdict"] = seeded, report.precision_verdict(seeded)
    results["rows"] += report.startup_rows(results["startup"], results["models"].get("cifar10", {}).get("medians"))
    results["notes"] = notes(args, results)
    print(write(portable(results, ROOT), args.out), end="")  # no path of this machine in the committed results
    say(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return status or (1 if results["failures"] else 0)


if __name__ == "__main__":
    sys.exit(main())
