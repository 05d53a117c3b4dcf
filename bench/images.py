"""Memory and speed of training from a folder of one's own images, memory-mapped (not part of `make test`).

    .venv/bin/python bench/images.py                 # 100,000 against 10,000 generated 128x128 JPEGs
    .venv/bin/python bench/images.py --quick         # 2,000 against 500: checks the harness

Generates a folder of `--images` 128x128 JPEGs in 10 class folders (kept for later runs, never
committed) and a folder holding the first `--baseline` of them (hard links). Then, each in its own
subprocess measured with os.wait4 (peak RSS of exactly that process):

1. `decode`: the first decode of the large folder into cnnctl's cache (parallel, timed);
2. `mapped-small` / `mapped-large`: `cnnctl train` on each folder, read through the memory map;
3. `in-memory-large`: the same decoded images as an .npz, which cnnctl holds in memory;
4. `limited-large`: (2) again inside a memory cgroup whose limit is below the decoded size, where
   the machine lets us make one (cgroup v1 or v2, as root); skipped with the reason otherwise.

Reports peak RSS large/small (target <= 1.3) and steady training images/s mapped / in memory
(target >= 0.9; the epochs after the first) with the CPU model, in bench/results/<date>-images.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from measure import machine, portable, run_child

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
CNNCTL = [str(Path(PY).parent / "cnnctl")] if (Path(PY).parent / "cnnctl").exists() else [PY, "-m", "cnnctl"]
SIZE = 128
CLASSES = 10
CONFIG = {
    "name": "images", "seed": 0,
    "data": {"dataset": "directory", "split": {"val": 0.0, "test": 0.05}},
    "model": {"input_shape": [SIZE, SIZE, 3], "layers": [
        {"Conv2D": {"filters": 16, "kernel_size": 3, "strides": 2, "activation": "relu"}},
        {"Conv2D": {"filters": 32, "kernel_size": 3, "strides": 2, "activation": "relu"}},
        {"MaxPooling2D": {"pool_size": 2}},
        {"Conv2D": {"filters": 64, "kernel_size": 3, "activation": "relu"}},
        {"GlobalAveragePooling2D": {}},
        {"Dense": {"units": CLASSES, "activation": "softmax"}}]},
    "train": {"optimizer": {"name": "adam", "learning_rate": 0.001}, "batch_size": 128, "epochs": 2},
}


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _write_images(job: tuple[str, int, int]) -> int:
    """Images start..stop-1 of class folders under root: smooth colour fields with noise, as photos compress."""
    from PIL import Image

    root, start, stop = job
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        label = i % CLASSES
        coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        coarse[..., label % 3] = 40 + 20 * label  # a class-dependent channel, so the model has something to learn
        image = Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, size=(SIZE, SIZE, 3), dtype=np.int16)
        path = Path(root, f"class{label}", f"{i:06d}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return stop - start


def generate(root: Path, count: int) -> float:
    """The folder of `count` images (made once; a marker file says it is complete); its size in GB."""
    marker = root / ".complete"
    if not (marker.is_file() and marker.read_text().strip() == str(count)):
        shutil.rmtree(root, ignore_errors=True)
        for label in range(CLASSES):
            (root / f"class{label}").mkdir(parents=True)
        say(f"generating {count:,} {SIZE}x{SIZE} JPEGs in {root}")
        jobs = [(str(root), start, min(start + 2000, count)) for start in range(0, count, 2000)]
        with ProcessPoolExecutor() as pool:
            list(pool.map(_write_images, jobs))
        marker.write_text(str(count))
    return sum(p.stat().st_size for p in root.rglob("*.jpg")) / 1e9


def subset(source: Path, root: Path, count: int) -> None:
    """The first `count` images of `source` (by number), hard-linked into `root`."""
    marker = root / ".complete"
    if marker.is_file() and marker.read_text().strip() == str(count):
        return
    shutil.rmtree(root, ignore_errors=True)
    for label in range(CLASSES):
        (root / f"class{label}").mkdir(parents=True)
    for i in range(count):
        name = Path(f"class{i % CLASSES}", f"{i:06d}.jpg")
        os.link(source / name, root / name)
    marker.write_text(str(count))


def memory_cgroup(limit_bytes: int) -> tuple[list[str] | None, str]:
    """(argv prefix running a command inside a new memory cgroup limited to limit_bytes, or None; why not)."""
    v1 = Path("/sys/fs/cgroup/memory")
    v2 = Path("/sys/fs/cgroup")
    try:
        if (v1 / "memory.limit_in_bytes").exists():
            group = v1 / f"cnnctl-bench-{os.getpid()}"
            group.mkdir(exist_ok=True)
            (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        elif (v2 / "cgroup.controllers").exists():
            group = v2 / f"cnnctl-bench-{os.getpid()}"
            group.mkdir(exist_ok=True)
            (group / "memory.max").write_text(str(limit_bytes))
        else:
            return None, "no cgroup memory controller on this machine"
    except OSError as error:
        return None, f"cannot make a memory cgroup here ({error.strerror}; needs root and a writable cgroup tree)"
    return ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"], str(group)


def train(name: str, data: dict, work: Path, env: dict, prefix: list[str] | None = None, timeout=3600) -> dict:
    config = dict(CONFIG, data=dict(CONFIG["data"], **data))
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(config))
    argv = [*(prefix or []), *CNNCTL, "train", str(path), "--runs-dir", str(work / "runs"), "--run-name", name,
            "--quiet"]
    say(f"{name}: {' '.join(argv[-8:])}")
    child = run_child(argv, log=work / f"{name}.log", env=env, timeout=timeout)
    result = {"child": child.to_dict(), "peak_rss_mb": child.peak_rss_mb, "wall_seconds": child.wall_seconds}
    if not child.ok:
        say(f"{name} failed: {child.error()}")
        return result | {"failed": child.error()}
    run = work / "runs" / name
    import csv

    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    manifest = json.loads((run / "manifest.json").read_text())
    images = manifest["dataset"]["train_examples"]
    later = [float(r["epoch_seconds"]) for r in rows[1:]] or [float(rows[0]["epoch_seconds"])]
    return result | {"train_images": images, "epoch_seconds": [float(r["epoch_seconds"]) for r in rows],
                     "steady_images_per_second": round(images / (sum(later) / len(later)), 1)}


def decode(name: str, root: Path, work: Path, env: dict) -> dict:
    """The first decode alone (cnnctl's own loader in a child process), timed, with its peak RSS."""
    code = ("import sys, time; from cnnctl.config import load_config; from cnnctl import rundata; "
            "c = load_config(sys.argv[1]); t = time.perf_counter(); s = rundata.load(c); "
            "print(len(s.x_train) + len(s.x_test), time.perf_counter() - t)")
    config = dict(CONFIG, data=dict(CONFIG["data"], root=str(root)))
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(config))
    child = run_child([PY, "-c", code, str(path)], log=work / f"{name}.log", env=env)
    if not child.ok:
        return {"failed": child.error()}
    count, seconds = Path(child.log).read_text().split()[-2:]
    return {"images": int(count), "seconds": round(float(seconds), 1),
            "images_per_second": round(int(count) / float(seconds)), "peak_rss_mb": child.peak_rss_mb}


def in_memory_npz(root: Path, work: Path, env: dict) -> Path:
    """The decoded images of `root` (from cnnctl's cache) as an .npz, which cnnctl loads into memory."""
    path = work / "in-memory.npz"
    code = ("import sys, numpy as np; from cnnctl.config import load_config; from cnnctl import rundata; "
            "s = rundata.load(load_config(sys.argv[1])); "
            "np.savez(sys.argv[2], x_train=np.asarray(s.x_train), y_train=s.y_train, x_test=np.asarray(s.x_test), "
            "y_test=s.y_test)")
    config = work / "large-decode.yaml"
    child = run_child([PY, "-c", code, str(config), str(path)], log=work / "npz.log", env=env)
    if not child.ok:
        raise SystemExit(child.error())
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--baseline", type=int, default=10_000)
    p.add_argument("--quick", action="store_true", help="2,000 against 500 images")
    p.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "cnnctl-bench-images",
                   help="where the generated folders and the cache go (kept for later runs)")
    p.add_argument("--limit-gb", type=float,
                   help="memory cgroup limit for the limited run (default: 60%% of the decoded size, at least 2 GB)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.baseline = 2000, 500
    stamp = f"{datetime.date.today().isoformat()}-images{'-quick' if args.quick else ''}"
    out = args.out or BENCH / "results" / f"{stamp}.json"
    folder = args.folder
    large, small = folder / f"jpeg-{args.images}", folder / f"jpeg-{args.baseline}"
    work = folder / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, CNNCTL_CACHE=str(folder / "cache"), CNNCTL_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2")
    shutil.rmtree(folder / "cache", ignore_errors=True)  # the first decode is measured
    results = {"machine": machine(ROOT), "settings": {"images": args.images, "baseline": args.baseline,
                                                      "size": SIZE, "config": CONFIG}}
    results["jpeg_gb"] = round(generate(large, args.images), 2)
    subset(large, small, args.baseline)
    decoded_gb = args.images * SIZE * SIZE * 3 / 1e9
    results["decoded_gb"] = round(decoded_gb, 2)
    results["decode"] = decode("large-decode", large, work, env)
    say(f"decode: {results['decode']}")
    results["decode_small"] = decode("small-decode", small, work, env)  # so both trainings read a ready cache
    runs = results["runs"] = {}
    runs["mapped-small"] = train("mapped-small", {"root": str(small)}, work, env)
    runs["mapped-large"] = train("mapped-large", {"root": str(large)}, work, env)
    npz = in_memory_npz(large, work, env)
    runs["in-memory-large"] = train("in-memory-large", {"dataset": "npz", "root": str(npz), "split": None}, work, env)
    npz.unlink()
    limit = int((args.limit_gb or max(0.6 * decoded_gb, 2.0)) * 1e9)  # TensorFlow alone needs about 1 GB
    prefix, where = memory_cgroup(limit)
    results["limited"] = {"limit_gb": round(limit / 1e9, 2), "cgroup": where}
    if prefix is not None:
        runs["limited-large"] = train("limited-large", {"root": str(large)}, work, env, prefix=prefix)
        try:
            Path(where).rmdir()
        except OSError:
            pass
    results["ratios"] = ratios(runs)
    write(scrub(results, str(work), where if prefix is not None else None), out)
    return 0


def ratios(runs: dict) -> dict:
    def get(name, key):
        return runs.get(name, {}).get(key)

    rss = (get("mapped-large", "peak_rss_mb"), get("mapped-small", "peak_rss_mb"))
    speed = (get("mapped-large", "steady_images_per_second"), get("in-memory-large", "steady_images_per_second"))
    out = {}
    if all(rss):
        out["peak_rss_large_over_small"] = round(rss[0] / rss[1], 3)
        out["peak_rss_target_met"] = out["peak_rss_large_over_small"] <= 1.3
    if all(speed):
        out["mapped_over_in_memory_images_per_second"] = round(speed[0] / speed[1], 3)
        out["speed_target_met"] = out["mapped_over_in_memory_images_per_second"] >= 0.9
    return out


def scrub(value, work: str, cgroup: str | None):
    """value with the scratch folder written as $WORK and the cgroup's path as its kind: results are committed."""
    if isinstance(value, str):
        value = value.replace(work, "$WORK")
        return value.replace(cgroup, "a memory cgroup") if cgroup else value
    if isinstance(value, dict):
        return {key: scrub(item, work, cgroup) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item, work, cgroup) for item in value]
    return value


def write(results: dict, out: Path) -> None:
    results = portable(results, ROOT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    m, s = results["machine"], results["settings"]
    lines = [f"# Images from a folder, memory-mapped: {s['images']:,} against {s['baseline']:,} "
             f"{s['size']}x{s['size']} JPEGs", "",
             f"CPU: {m['cpu']['model']} ({m['usable_cpus']} usable cores); {m['date']}; TensorFlow {m['tensorflow']}", "",
             f"JPEG folder {results['jpeg_gb']} GB; decoded {results['decoded_gb']} GB of uint8 pixels.", "",
             f"First decode: {results['decode'].get('images', 0):,} images in {results['decode'].get('seconds')} s "
             f"({results['decode'].get('images_per_second', 0):,} images/s), peak RSS "
             f"{results['decode'].get('peak_rss_mb')} MB.", "",
             "| run | train images | peak RSS MB | steady images/s | wall s |", "|---|---|---|---|---|"]
    for name, run in results["runs"].items():
        images = f"{run['train_images']:,}" if "train_images" in run else "-"
        lines.append(f"| {name} | {images} | {run['peak_rss_mb']:,} | "
                     f"{run.get('steady_images_per_second', 'failed')} | {run['wall_seconds']} |")
    r = results["ratios"]
    lines += ["", f"- peak RSS large / small: **{r.get('peak_rss_large_over_small')}** (target <= 1.3: "
                  f"{'met' if r.get('peak_rss_target_met') else 'missed'})",
              f"- steady images/s mapped / in memory: **{r.get('mapped_over_in_memory_images_per_second')}** "
              f"(target >= 0.9: {'met' if r.get('speed_target_met') else 'missed'})",
              f"- memory-limited run: limit {results['limited']['limit_gb']} GB ({results['limited']['cgroup']}): "
              + (("completed" if "failed" not in results["runs"]["limited-large"] else "FAILED")
                 if "limited-large" in results["runs"] else "not run")]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
