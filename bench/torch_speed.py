"""cnnctl against PyTorch: steady training images/s of one config's network on this machine (not part of `make test`).

    .venv/bin/python bench/torch_speed.py            # the full comparison: run it on a quiet machine
    .venv/bin/python bench/torch_speed.py --quick    # tiny sizes, a few steps: checks the harness (< 90 s)

The network, batch size, precision, optimizer, loss and augmentation of `--config` (default
configs/cifar10_fast.yaml; `--set key=value` overrides go to both sides) are trained on the same
generated data (random uint8 images of the model's input shape, 10 classes):

1. cnnctl: `cnnctl train` in a subprocess on the images as an npz (`--epochs` epochs); its steady
   images/s is the run's own (manifest.json `images_per_second`: training images / median epoch
   seconds excluding the first epoch), checked against metrics.csv.
2. PyTorch: bench/torch_net.py in a subprocess of its own venv, bench/.venv-torch (PyTorch is never a
   dependency of cnnctl; the venv is made on first use: PyTorch's CPU wheel from its own index), which
   translates the config's layer stack into torch.nn and times whole training steps after a warm-up,
   for `--seconds` at least, in three variants: autocast NCHW eager, autocast channels_last eager,
   channels_last + torch.compile (its compilation is in the warm-up). A variant that fails is recorded
   with its error and the others go on. PyTorch's figure is the best variant's.

Reports cnnctl's images/s over the best PyTorch variant's (target >= 1.0x) with the CPU model (and
whether it has AMX / AVX512_BF16), the TensorFlow and PyTorch versions, in
bench/results/<date>-torch-speed.{json,md} (`-quick` for --quick, not committed); progress on stderr.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from measure import cpu_info, machine, median_or_none, portable, run_child

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
CNNCTL = [str(Path(PY).parent / "cnnctl")] if (Path(PY).parent / "cnnctl").exists() else [PY, "-m", "cnnctl"]
TORCH_VENV = BENCH / ".venv-torch"
TORCH_VERSION = "2.13.0"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # the CPU-only wheel; numpy from PyPI
TORCH_INSTALL = [f"torch=={TORCH_VERSION}", "numpy", "--index-url", TORCH_INDEX,
                 "--extra-index-url", "https://pypi.org/simple"]
CLASSES = 10
VARIANTS = {"nchw": "autocast, NCHW, eager", "channels_last": "autocast, channels_last, eager",
            "compile": "autocast, channels_last, torch.compile"}
# --quick also sets the batch size (unless a --set does): the full config's 1024 would take minutes.
QUICK = {"epochs": 2, "train_batches": 3, "test_images": 128, "seconds": 2.0, "warmup_steps": 1, "min_steps": 2,
         "repeats": 1, "batch_size": 64, "timeout": 300.0}
FULL = {"epochs": 3, "train_batches": 30, "test_images": 1024, "seconds": 20.0, "warmup_steps": 5, "min_steps": 3,
        "repeats": 1, "batch_size": None, "timeout": 3600.0}
STEADY_SECONDS = 20.0  # the shortest steady epoch / timed window the full comparison should measure


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"tiny sizes, a few steps: checks the harness: {QUICK}")
    p.add_argument("--config", type=Path, default=Path("configs/cifar10_fast.yaml"), help="relative to the checkout")
    p.add_argument("-s", "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both sides (repeatable), as `cnnctl train --set`")
    p.add_argument("--epochs", type=int, help="cnnctl epochs (full: 3; the first is excluded from images/s)")
    p.add_argument("--train-batches", type=int,
                   help="training images = this many batches (full: 30, i.e. 30,720 images at batch 1024)")
    p.add_argument("--test-images", type=int, help="test images cnnctl evaluates on after training (not timed)")
    p.add_argument("--seconds", type=float, help="PyTorch's timed window per variant, at least (full: 20)")
    p.add_argument("--warmup-steps", type=int, help="PyTorch steps before timing (full: 5; compile: at least 2)")
    p.add_argument("--min-steps", type=int, help="PyTorch timed steps, at least")
    p.add_argument("--repeats", type=int, help="alternating repetitions of every side (medians; full: 1)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"PyTorch variants, comma-separated: {','.join(VARIANTS)}")
    p.add_argument("--torch-python", type=Path,
                   help="a Python with PyTorch to use instead of bench/.venv-torch (made on first use otherwise)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: the usable cores)")
    p.add_argument("--timeout", type=float, help="seconds before a child process is killed")
    p.add_argument("--out", type=Path, help="result JSON (default bench/results/<date>-torch-speed.json; .md beside it)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if min(args.epochs, args.train_batches, args.test_images, args.repeats, args.min_steps) < 1 or args.warmup_steps < 0:
        p.error("--epochs, --train-batches, --test-images, --repeats and --min-steps must be at least 1")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := set(args.variants) - set(VARIANTS):
        p.error(f"--variants: unknown {', '.join(sorted(unknown))} (known: {', '.join(VARIANTS)})")
    args.threads = args.threads or len(os.sched_getaffinity(0))
    if args.out is None:
        args.out = BENCH / "results" / f"{datetime.date.today().isoformat()}-torch-speed{'-quick' if args.quick else ''}.json"
    return args


# ---------------------------------------------------------------- the config, resolved as cnnctl resolves it


def apply_set(doc: dict, assignment: str) -> None:
    """key.path[i].name=value (a YAML value) into doc: only when cnnctl itself cannot resolve the config."""
    path, _, text = assignment.partition("=")
    keys = [int(index) if index else name for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]
    node = doc
    for key in keys[:-1]:
        node = node[key] if isinstance(key, int) else node.setdefault(key, {})
    node[keys[-1]] = yaml.safe_load(text)


def resolve(config: Path, sets: list[str], env: dict) -> tuple[dict, str | None]:
    """(the config as `cnnctl config` resolves it, None) or, when cnnctl refuses it, (the file as written with
    the --set values applied here, cnnctl's error)."""
    argv = [*CNNCTL, "config", str(config), *(arg for s in sets for arg in ("--set", s))]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        return yaml.safe_load(done.stdout), None
    doc = yaml.safe_load((ROOT / config).read_text())
    for assignment in sets:
        try:
            apply_set(doc, assignment)
        except (LookupError, TypeError, ValueError, yaml.YAMLError):
            say(f"--set {assignment}: not applied to the PyTorch side's copy of the config")
    return doc, (done.stderr or done.stdout).strip()[-2000:]


def torch_spec(config: dict) -> tuple[dict, list[str]]:
    """What bench/torch_net.py needs of a resolved config, and notes on what it leaves out."""
    train, notes = config["train"], []
    loss = train.get("loss") or {}
    loss = {"name": loss} if isinstance(loss, str) else loss
    if "crossentropy" not in loss.get("name", ""):
        notes.append(f"loss {loss.get('name')}: PyTorch uses cross-entropy")
    flip, pixels = False, 0
    h, w = config["model"]["input_shape"][:2]
    for entry in config.get("data", {}).get("augment") or []:
        (kind, options), = entry.items()
        options = options or {}
        if kind == "RandomFlip":
            flip = True  # PyTorch flips horizontally
            if options.get("mode", "horizontal_and_vertical") != "horizontal":
                notes.append(f"cnnctl's RandomFlip flips {options.get('mode', 'horizontal_and_vertical')}; "
                             "PyTorch horizontally only")
        elif kind == "RandomTranslation":
            factors = [options.get("height_factor", 0), options.get("width_factor", 0)]
            factors = [max(abs(x) for x in f) if isinstance(f, list) else abs(f) for f in factors]
            pixels = max(pixels, round(factors[0] * h), round(factors[1] * w))
            if options.get("interpolation", "bilinear") != "nearest":
                notes.append(f"cnnctl's RandomTranslation interpolates ({options.get('interpolation', 'bilinear')}); "
                             "PyTorch shifts by whole pixels")
            if options.get("fill_mode", "reflect") != "reflect":
                notes.append(f"cnnctl's RandomTranslation fills by {options['fill_mode']}; PyTorch reflects")
        else:
            notes.append(f"augmentation {kind}: not done on the PyTorch side")
    optimizer = train["optimizer"]
    for key, what in (("schedule", "a learning-rate schedule (PyTorch: a constant rate)"),
                      ("groups", "parameter groups (PyTorch: one group)"),
                      ("ema", "weight averaging, an update of every weight each step (PyTorch: none)")):
        if optimizer.get(key):
            notes.append(f"cnnctl's optimizer {key}: {what}")
    own = sorted({g["optimizer"]["name"] for g in optimizer.get("groups") or [] if g.get("optimizer")})
    if own:
        notes.append(f"cnnctl's groups with their own optimizer ({', '.join(own)}; muon orthogonalises each kernel's "
                     f"update every step): PyTorch runs the main optimizer for every parameter")
    return {"input_shape": config["model"]["input_shape"], "layers": config["model"]["layers"],
            "optimizer": {k: v for k, v in optimizer.items() if k not in ("schedule", "groups", "ema")},
            "label_smoothing": float(loss.get("label_smoothing") or 0.0), "batch_size": int(train.get("batch_size", 32)),
            "flip": flip, "translate_pixels": int(pixels)}, notes


def torch_precision(precision: str | None, cpu: dict) -> str:
    """PyTorch's autocast dtype for cnnctl's precision (auto: cnnctl's rule on a CPU)."""
    if precision in (None, "auto"):
        return "bf16" if cpu.get("avx512_bf16") or cpu.get("amx_bf16") else "fp32"
    return {"mixed_bfloat16": "bf16", "mixed_float16": "fp16"}.get(precision, "fp32")


# ---------------------------------------------------------------- the machine and the venv


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env=dict(os.environ, LC_ALL="C")).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if found:
            return found.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return cpu_info()["model"]


def torch_version(python: Path) -> str | None:
    try:
        done = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                              text=True, timeout=120, cwd=tempfile.gettempdir())
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def torch_python(args) -> tuple[Path, str]:
    """(a Python with PyTorch, its torch version): --torch-python, else bench/.venv-torch, made on first use."""
    if args.torch_python:
        version = torch_version(args.torch_python)
        if not version:
            raise RuntimeError(f"--torch-python {args.torch_python}: cannot import torch")
        return args.torch_python, version
    python = TORCH_VENV / "bin" / "python"
    version = torch_version(python) if python.exists() else None
    if version and version.split("+")[0] == TORCH_VERSION:
        return python, version
    say(f"making {TORCH_VENV.relative_to(ROOT)} with PyTorch {TORCH_VERSION} (CPU wheel), once ...")
    for argv in ([PY, "-m", "venv", "--clear", str(TORCH_VENV)],
                 [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *TORCH_INSTALL]):
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:5])} ... failed:\n{(done.stderr or done.stdout)[-1500:]}")
    version = torch_version(python)
    if not version:
        raise RuntimeError(f"{TORCH_VENV.relative_to(ROOT)}: torch installed but not importable")
    return python, version


# ---------------------------------------------------------------- the two sides


def make_data(path: Path, shape: list[int], train_images: int, test_images: int) -> None:
    """Random uint8 images of `shape` and labels spread evenly over CLASSES, as cnnctl's npz format."""
    rng = np.random.default_rng(0)

    def split(n):
        return (rng.integers(0, 256, size=(n, *shape), dtype=np.uint8),
                rng.permutation(np.arange(n) % CLASSES).astype(np.int64))

    x_train, y_train = split(train_images)
    x_test, y_test = split(test_images)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def run_cnnctl(args, tmp: Path, config: Path, sets: list[str], env: dict, rep: int) -> dict:
    work = tmp / f"cnnctl-{rep}"
    argv = [*CNNCTL, "train", str(config), "--quiet", "--runs-dir", str(work), "--run-name", "bench",
            *(arg for s in sets for arg in ("--set", s))]
    child = run_child(argv, log=tmp / "logs" / f"cnnctl-{rep}.log", env=env, cwd=ROOT, timeout=args.timeout)
    record = {"rep": rep, **child.to_dict(), "ok": child.ok}
    if not child.ok:
        return record | {"error": child.error()}
    run = work / "bench"
    try:
        manifest = json.loads((run / "manifest.json").read_text())
        with open(run / "metrics.csv", newline="") as handle:
            epochs = [float(row["epoch_seconds"]) for row in csv.DictReader(handle)]
        examples = manifest["dataset"]["train_examples"]
        steady = statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]
        record.update(status=manifest.get("status"), precision=manifest.get("precision"), train_images=examples,
                      epoch_seconds=epochs, steady_epoch_seconds=round(steady, 3), steady=len(epochs) > 1,
                      images_per_second=manifest.get("images_per_second") or round(examples / steady, 1),
                      images_per_second_metrics_csv=round(examples / steady, 1),
                      steps_per_execution=manifest.get("steps_per_execution"), run_wall_seconds=manifest.get("wall_seconds"))
        if manifest.get("status") != "completed":
            record.update(ok=False, error=f"run status {manifest.get('status')}: {manifest.get('error')}")
    except (OSError, ValueError, KeyError, IndexError) as exc:
        record.update(ok=False, error=f"unreadable results: {exc}")
    return record


def run_torch(args, tmp: Path, python: Path, spec_path: Path, variant: str, precision: str, train_images: int,
              rep: int) -> dict:
    out = tmp / f"torch-{variant}-{rep}.json"
    warmup = max(args.warmup_steps, 2) if variant == "compile" else args.warmup_steps
    argv = [str(python), str(BENCH / "torch_net.py"), str(spec_path), "--variant", variant, "--precision", precision,
            "--train-images", str(train_images), "--warmup-steps", str(warmup), "--seconds", str(args.seconds),
            "--min-steps", str(args.min_steps), "--threads", str(args.threads), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    child = run_child(argv, log=tmp / "logs" / f"torch-{variant}-{rep}.log", env=env, cwd=ROOT, timeout=args.timeout)
    record = {"rep": rep, **child.to_dict(), "ok": child.ok}
    try:
        record.update(json.loads(out.read_text()))
    except (OSError, ValueError):
        pass
    if not child.ok:
        record.setdefault("error", child.error())
    return record


def summary(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("ok")]
    errors = [r["error"] for r in runs if r.get("error")]
    return {"images_per_second": median_or_none(r.get("images_per_second") for r in ok),
            "ok_runs": len(ok), "all_runs": len(runs), **({"error": errors[0]} if errors else {})}


# ---------------------------------------------------------------- the report


def _num(value, fmt=",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _first_line(text: str, limit: int = 160) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    # a child's error: its last meaningful line says most (the exception), the first says which command
    exception = re.compile(r"^(error:|[A-Za-z_][\w.]*(Error|Exception|Failed|Interrupt|Exit)\w*(:|$))")
    line = next((x for x in reversed(lines) if exception.match(x)), lines[0] if lines else "")
    line = line.replace("|", "/")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def markdown(r: dict) -> str:
    m, s, cpu = r["machine"], r["settings"], r["machine"]["cpu"]
    load = " / ".join(f"{x:.2f}" for x in (m["load_average_at_start"][0], (m.get("load_average_at_end") or [0])[0]))
    flags = (f"AMX {'yes' if cpu.get('amx_bf16') and cpu.get('amx_tile') else 'no'}, "
             f"AVX512_BF16 {'yes' if cpu.get('avx512_bf16') else 'no'}")
    sets = "".join(f" `--set {x}`" for x in s["sets"])
    lines = [
        f"## cnnctl vs PyTorch: training images/s of `{s['config']}`, {m['date']}{' (--quick)' if s['quick'] else ''}",
        "",
        f"Machine: {m['cpu_model']} ({flags}), {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable); "
        f"TensorFlow {m['tensorflow']}, Keras {m['keras']}, PyTorch {m.get('torch') or 'not available'}"
        f"{' (CPU capability ' + str(m['torch_cpu_capability']) + ')' if m.get('torch_cpu_capability') else ''}, "
        f"Python {m['python']}; cnnctl {m['cnnctl']['commit']}{' (uncommitted changes)' if m['cnnctl']['dirty'] else ''}. "
        f"Load average (1 min) at start / end: {load}.",
        "",
        f"Settings: `{s['config']}`{sets}; batch {s['batch_size']}, {s['train_images']:,} training images "
        f"(random uint8 {'x'.join(map(str, s['input_shape']))}, {CLASSES} classes), the same on both sides. cnnctl: "
        f"`cnnctl train`, {s['epochs']} epochs, images/s = training images / median epoch seconds after the first "
        f"(the run's manifest.json). PyTorch {s.get('torch_python_version') or ''}: {s['warmup_steps']} warm-up step(s) "
        f"(compile: at least 2) not timed, then whole steps for at least {s['seconds']:g} s, "
        f"torch.set_num_threads({s['threads']}). {s['repeats']} repetition(s), alternating (medians).",
        "",
        "| side | variant | precision | training images/s | measured over | wall s |",
        "|---|---|---|---|---|---|",
    ]
    c = r["cnnctl"]
    last = next((x for x in reversed(c["runs"]) if x.get("ok")), c["runs"][-1] if c["runs"] else {})
    epochs = len(last.get("epoch_seconds") or [])
    over = ("-" if not epochs else f"epoch 1 only (not steady), {last['steady_epoch_seconds']:.1f} s" if epochs == 1
            else f"epoch 2, {last['steady_epoch_seconds']:.1f} s" if epochs == 2
            else f"epochs 2-{epochs}, median {last['steady_epoch_seconds']:.1f} s")
    lines.append(f"| cnnctl | `cnnctl train` (Keras {m['keras']}, TensorFlow {m['tensorflow']}) | {last.get('precision') or '-'} | "
                 + (f"**{_num(c['images_per_second'])}**" if c.get("images_per_second") else f"failed: {_first_line(c.get('error', ''))}")
                 + f" | {over} | {_num(last.get('wall_seconds'), '.1f')} |")
    for variant, data in r["torch"].items():
        last = next((x for x in reversed(data["runs"]) if x.get("ok")), data["runs"][-1] if data["runs"] else {})
        value = (f"{'**' if variant == r.get('best_torch_variant') else ''}{_num(data['images_per_second'])}"
                 f"{'**' if variant == r.get('best_torch_variant') else ''}" if data.get("images_per_second")
                 else f"failed: {_first_line(data.get('error', ''))}")
        over = (f"{last['timed_steps']} steps, {last['timed_seconds']:.1f} s (warm-up {last['warmup_seconds']:.1f} s)"
                if last.get("timed_steps") else "-")
        lines.append(f"| PyTorch | {s['torch_precision']} {VARIANTS[variant]} | {s['torch_precision']} | {value} | {over} | "
                     f"{_num(last.get('wall_seconds'), '.1f')} |")
    lines.append("")
    if r.get("ratio") is not None:
        lines += [f"- Best PyTorch variant: {s['torch_precision']} {VARIANTS[r['best_torch_variant']]}, "
                  f"{_num(r['best_torch_images_per_second'])} images/s.",
                  f"- cnnctl / best PyTorch: **{r['ratio']:.2f}x** (target >= 1.0x): cnnctl "
                  f"**{'reached' if r['reached'] else 'did NOT reach'}** PyTorch's speed."]
    else:
        lines.append("- cnnctl / best PyTorch: not measured (a side failed; see the failures below).")
    lines += [f"- {note}" for note in r["notes"]]
    if r["failures"]:
        lines += ["", f"**{len(r['failures'])} failure(s):**", ""]
        for failure in r["failures"]:  # "<which>: <error>": the error's telling line
            which, _, error = failure.partition(": ")
            lines.append(f"- {which}: {_first_line(error, 400)}")
    return "\n".join(lines).rstrip() + "\n"


def notes(args, r: dict, spec_notes: list[str], config_error: str | None) -> list[str]:
    out = ["**Interrupted: incomplete results.**"] if r.get("interrupted") else []
    if args.quick:
        out.append("--quick: tiny sizes and batch, a few steps, on a possibly loaded machine: this checks the "
                   "harness, the numbers mean nothing.")
    if config_error:
        out.append(f"cnnctl refused the config (`cnnctl config`), so the PyTorch side read the file as written "
                   f"(with the --set values): {_first_line(config_error, 300)}")
    steady = [x.get("steady_epoch_seconds") for x in r["cnnctl"]["runs"] if x.get("ok")]
    if not args.quick and steady and min(steady) < STEADY_SECONDS:
        out.append(f"cnnctl's steady epoch took {min(steady):.1f} s, under the {STEADY_SECONDS:g} s wanted: "
                   "raise --train-batches.")
    precisions = {x.get("precision") for x in r["cnnctl"]["runs"] if x.get("precision")}
    expected = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16", "fp32": "float32"}[r["settings"]["torch_precision"]]
    if precisions and precisions != {expected}:
        out.append(f"cnnctl trained in {'/'.join(sorted(precisions))}, PyTorch in {r['settings']['torch_precision']}.")
    out.append("Both sides run the same layers, batch, loss (cross-entropy with the config's label smoothing) and "
               "optimizer update. Augmentation: cnnctl runs the config's Keras layers in its tf.data pipeline, "
               "overlapped with the step; PyTorch flips and shifts by whole pixels (reflect pad + crop) on the batch "
               "tensor inside the timed step, as airbench does.")
    out += spec_notes
    ignored = next((x["ignored"] for runs in r["torch"].values() for x in runs["runs"] if x.get("ignored")), {})
    if ignored:
        out.append("Not translated to PyTorch (no effect on a step's work): " + "; ".join(
            f"{key} (layers {', '.join(map(str, layers))})" for key, layers in ignored.items()) + ".")
    return out


def write(results: dict, out: Path) -> str:
    text = markdown(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, content in ((out, json.dumps(results, indent=1) + "\n"), (out.with_suffix(".md"), text)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, path)
    return text


def scrub(value, home: str):
    """No path of this machine in the results: the checkout, the temp folder (measure.portable), the home folder."""
    if isinstance(value, str):
        return re.sub(re.escape(home) + r"(?=/|\b)", "~", value) if home not in ("", "/") else value
    if isinstance(value, dict):
        return {key: scrub(item, home) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item, home) for item in value]
    return value


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # unwind: children killed, temp dirs removed
    env = dict(os.environ, CNNCTL_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2")
    sets = list(args.sets)
    if args.batch_size and not any(s.split("=")[0].strip() == "train.batch_size" for s in sets):
        sets.append(f"train.batch_size={args.batch_size}")
    config, config_error = resolve(args.config, sets, env)
    if config_error:
        say(f"cnnctl refuses {args.config}: {_first_line(config_error)}")
    spec, spec_notes = torch_spec(config)
    cpu = cpu_info()
    train_images = args.train_batches * spec["batch_size"]
    machine_info = machine(ROOT) | {"cpu_model": cpu_model()}
    results = {"machine": machine_info,
               "settings": {"quick": args.quick, "config": str(args.config), "sets": sets, "epochs": args.epochs,
                            "train_batches": args.train_batches, "train_images": train_images,
                            "test_images": args.test_images, "batch_size": spec["batch_size"],
                            "input_shape": spec["input_shape"], "seconds": args.seconds,
                            "warmup_steps": args.warmup_steps, "min_steps": args.min_steps, "repeats": args.repeats,
                            "threads": args.threads, "variants": args.variants,
                            "torch_precision": torch_precision((config.get("runtime") or {}).get("precision"), cpu),
                            "timeout": args.timeout},
               "config_error": config_error, "torch_spec": spec,
               "cnnctl": {"runs": []}, "torch": {v: {"runs": []} for v in args.variants}, "failures": []}
    failures = results["failures"]
    status = 0
    with tempfile.TemporaryDirectory(prefix="cnnctl-torch-speed-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            python = None
            try:
                python, version = torch_python(args)
                machine_info["torch"] = version
                results["settings"]["torch_python"] = str(python)
                results["settings"]["torch_python_version"] = version
            except (RuntimeError, OSError) as exc:
                failures.append(f"PyTorch: {exc}")
                say(f"FAILED PyTorch venv: {exc}")
            npz = tmp / "data.npz"
            make_data(npz, spec["input_shape"], train_images, args.test_images)
            spec_path = tmp / "spec.json"
            spec_path.write_text(json.dumps(spec))
            cnnctl_sets = [*sets, "data.dataset=npz", f"data.root={json.dumps(str(npz))}",
                           f"data.num_classes={CLASSES}", f"train.epochs={args.epochs}"]
            say(f"{train_images:,} training images, batch {spec['batch_size']}, "
                f"{args.repeats} repetition(s); PyTorch variants {', '.join(args.variants)}")
            for rep in range(args.repeats):  # alternating: a drift in the machine's load hits every side alike
                record = run_cnnctl(args, tmp, args.config, cnnctl_sets, env, rep)
                results["cnnctl"]["runs"].append(record)
                if record.get("precision"):
                    results["settings"]["torch_precision"] = torch_precision(record["precision"], cpu)
                say(f"rep {rep + 1}/{args.repeats} cnnctl: " + (
                    f"{record['images_per_second']:,.0f} img/s (epochs {record['epoch_seconds']} s, {record['precision']})"
                    if record["ok"] else f"FAILED: {record['error']}"))
                if not record["ok"]:
                    failures.append(f"cnnctl rep {rep + 1}: {record['error']}")
                for variant in args.variants if python else []:
                    record = run_torch(args, tmp, python, spec_path, variant, results["settings"]["torch_precision"],
                                       train_images, rep)
                    results["torch"][variant]["runs"].append(record)
                    say(f"rep {rep + 1}/{args.repeats} PyTorch {variant}: " + (
                        f"{record['images_per_second']:,.0f} img/s ({record['timed_steps']} steps in "
                        f"{record['timed_seconds']:.1f} s; warm-up {record['warmup_seconds']:.1f} s)"
                        if record["ok"] else f"FAILED: {_first_line(record.get('error', ''))}"))
                    if not record["ok"]:
                        failures.append(f"PyTorch {variant} rep {rep + 1}: {record.get('error')}")
                    if record.get("cpu_capability"):
                        machine_info["torch_cpu_capability"] = record["cpu_capability"]
        except (KeyboardInterrupt, SystemExit) as exc:
            say("interrupted: writing the results so far")
            results["interrupted"] = True
            status = 130 if isinstance(exc, KeyboardInterrupt) else 143
    results["cnnctl"].update(summary(results["cnnctl"]["runs"]))
    for data in results["torch"].values():
        data.update(summary(data["runs"]))
    measured = {v: d["images_per_second"] for v, d in results["torch"].items() if d.get("images_per_second")}
    if measured:
        best = max(measured, key=measured.get)
        results.update(best_torch_variant=best, best_torch_images_per_second=measured[best])
    if measured and results["cnnctl"].get("images_per_second"):
        ratio = results["cnnctl"]["images_per_second"] / results["best_torch_images_per_second"]
        results.update(ratio=round(ratio, 3), reached=ratio >= 1.0)
    machine_info["load_average_at_end"] = list(os.getloadavg())
    results["notes"] = notes(args, results, spec_notes, config_error)
    results = scrub(portable(results, ROOT), str(Path.home()))  # the results are committed
    print(write(results, args.out), end="")
    say(f"wrote {portable(str(args.out), ROOT)} and .md")
    return status or (1 if failures else 0)


if __name__ == "__main__":
    sys.exit(main())
