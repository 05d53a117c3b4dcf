"""Class weights on an imbalanced CIFAR-10 (a demonstration, not part of `make test`).

    .venv/bin/python bench/imbalance.py            # 20 epochs per run: about 6 minutes on a quiet 2-core CPU
    .venv/bin/python bench/imbalance.py --quick    # a tiny subset, 1 epoch: checks the script

Builds an imbalanced CIFAR-10 from the JPEG tarball ../shared/datasets/cifar10-jpg.tar.gz (decoded with
Pillow): of the training images, all of classes 5-9 (dog, frog, horse, ship, truck) and 10% of classes
0-4 (airplane, automobile, bird, cat, deer), a seeded sample; the whole test set. Writes it as an .npz
and trains configs/cifar10.yaml on it twice, each in its own process, with the same seed: without
class weights and with `train.class_weight: auto`. Validation is off, so each run's last epoch is the
one evaluated (no choice of checkpoint by test accuracy). Writes per-class recall and accuracy from
each run's eval.json to bench/results/imbalance.md (and .json), and prints the markdown.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from measure import machine, portable, run_child

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
PY = sys.executable
CNNCTL = [str(Path(PY).parent / "cnnctl")] if (Path(PY).parent / "cnnctl").exists() else [PY, "-m", "cnnctl"]
CONFIG = "configs/cifar10.yaml"
VARIANTS = {"unweighted": [], "auto": ["--set", "train.class_weight=auto"]}
QUICK = {"epochs": 1, "train_per_class": 100, "test_per_class": 20}


def say(message: str) -> None:
    print(f"imbalance: {message}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"check the script: {QUICK}, results in the work folder")
    p.add_argument("--epochs", type=int, default=20, help="epochs of each run (default 20)")
    p.add_argument("--minority", default="0,1,2,3,4", help="classes (indices) kept in part (default 0,1,2,3,4)")
    p.add_argument("--fraction", type=float, default=0.1, help="share of a minority class's training images kept")
    p.add_argument("--train-per-class", type=int, help="training images per class before the cut (default all)")
    p.add_argument("--test-per-class", type=int, help="test images per class (default all)")
    p.add_argument("--seed", type=int, default=0, help="of the sample and of both runs")
    p.add_argument("--tar", type=Path, default=SHARED / "cifar10-jpg.tar.gz", help="the CIFAR-10 JPEG tarball")
    p.add_argument("--work", type=Path, help="folder for the .npz, run directories and logs (default: a temporary "
                                             "one, deleted afterwards)")
    p.add_argument("--out", type=Path, help="markdown report (default bench/results/imbalance.md; .json beside it)")
    p.add_argument("--timeout", type=float, default=7200, help="seconds before a run is killed")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.minority = sorted({int(c) for c in args.minority.split(",") if c.strip()})
    if not 0 < args.fraction <= 1:
        p.error(f"--fraction must be in (0, 1], got {args.fraction}")
    return args


def read_tarball(tarball: Path) -> dict[tuple[str, str], dict[str, bytes]]:
    """(split, class) -> {file name: JPEG bytes} of <root>/<split>/<class>/<file> (about 19 MB in all)."""
    found: dict[tuple[str, str], dict[str, bytes]] = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 4 and parts[1] in ("train", "test"):
                found.setdefault((parts[1], parts[2]), {})[parts[3]] = archive.extractfile(member).read()
    if not found:
        raise SystemExit(f"{tarball}: no <root>/train|test/<class>/<image> files")
    return found


def decode(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if pixels.shape != (32, 32, 3):
        raise SystemExit(f"{where}: {pixels.shape[1]}x{pixels.shape[0]} pixels, not CIFAR-10's 32x32")
    return pixels


def build_npz(args: argparse.Namespace, out: Path) -> dict:
    """The imbalanced training set and the test set as an .npz of uint8 arrays; class names and counts."""
    files = read_tarball(args.tar)
    classes = sorted({name for _, name in files})
    rng = np.random.default_rng(args.seed)
    arrays, counts = {}, {}
    for split, limit in (("train", args.train_per_class), ("test", args.test_per_class)):
        images, labels = [], []
        for index, name in enumerate(classes):
            names = sorted(files.get((split, name), {}))[:limit]
            if split == "train" and index in args.minority:
                keep = max(1, round(len(names) * args.fraction))
                names = sorted(rng.choice(names, keep, replace=False).tolist())
            images += [decode(files[split, name][file], f"{args.tar}:{split}/{name}/{file}") for file in names]
            labels += [index] * len(names)
        arrays[f"x_{split}"] = np.stack(images)
        arrays[f"y_{split}"] = np.array(labels, dtype=np.uint8)
        counts[split] = np.bincount(arrays[f"y_{split}"], minlength=len(classes)).tolist()
    np.savez(out, **arrays)
    return {"classes": classes, "counts": counts}


def train(variant: str, npz: Path, classes: list[str], args: argparse.Namespace, work: Path) -> dict:
    name = f"imbalance-{variant}"
    argv = [*CNNCTL, "train", CONFIG, "--runs-dir", str(work / "runs"), "--run-name", name, "--quiet",
            "--set", "data.dataset=npz", "--set", f"data.root={npz}", "--set", f"data.class_names=[{','.join(classes)}]",
            "--set", f"train.epochs={args.epochs}", "--set", "train.validation=none", "--set", f"seed={args.seed}",
            *VARIANTS[variant]]
    say(f"training {variant}: {' '.join(portable(argv, ROOT))}")
    child = run_child(argv, log=work / f"{name}.log", cwd=ROOT, timeout=args.timeout)
    run = work / "runs" / name
    if not (run / "eval.json").is_file():
        raise SystemExit(f"{variant} run failed (no eval.json): {child.error()}")
    manifest = json.loads((run / "manifest.json").read_text())
    return {"command": " ".join(portable(argv, ROOT)), "eval": json.loads((run / "eval.json").read_text()),
            "class_weight": manifest.get("class_weight"), "wall_seconds": child.wall_seconds,
            "images_per_second": manifest.get("images_per_second"), "status": manifest.get("status")}


def markdown(results: dict) -> str:
    classes, counts, minority = results["classes"], results["counts"], results["minority"]
    plain, auto = (results["runs"][v] for v in VARIANTS)
    recall = {v: {c["class"]: c["recall"] for c in run["eval"]["per_class"]} for v, run in results["runs"].items()}
    weights = auto["class_weight"] or {}
    cpu = results["machine"]["cpu"]["model"]
    lines = [
        "# Class weights on an imbalanced CIFAR-10",
        "",
        f"`bench/imbalance.py` on {results['machine']['date'][:10]}: {cpu}, {results['machine']['usable_cpus']} usable "
        f"CPUs, TensorFlow {results['machine']['tensorflow']}, Keras {results['machine']['keras']}. "
        f"`{CONFIG}` for {results['epochs']} epoch{'s' * (results['epochs'] != 1)}, seed {results['seed']}, validation off (the last epoch is "
        f"evaluated). Training set: {sum(counts['train']):,} images, {results['fraction']:.0%} of classes "
        f"{', '.join(classes[i] for i in minority)}; test set: {sum(counts['test']):,} images.",
        "",
        "| class | train images | weight (auto) | recall, unweighted | recall, class_weight: auto | change |",
        "|---|---|---|---|---|---|",
    ]
    for index, name in enumerate(classes):
        a, b = recall["unweighted"][name], recall["auto"][name]
        label = f"{name} (minority)" if index in minority else name
        lines.append(f"| {label} | {counts['train'][index]:,} | {weights.get(name, float('nan')):.3g} | {a:.4f} | "
                     f"{b:.4f} | {b - a:+.4f} |")

    def mean_recall(variant, chosen):
        return float(np.mean([recall[variant][classes[i]] for i in chosen]))

    majority = [i for i in range(len(classes)) if i not in minority]
    for label, chosen in (("mean recall, minority classes", minority), ("mean recall, other classes", majority),
                          ("mean recall, all (balanced accuracy)", range(len(classes)))):
        a, b = mean_recall("unweighted", chosen), mean_recall("auto", chosen)
        lines.append(f"| **{label}** | | | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    a, b = plain["eval"]["accuracy"], auto["eval"]["accuracy"]
    lines.append(f"| **test accuracy** | | | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    lines.append(f"| wall time, s | | | {plain['wall_seconds']:.0f} | {auto['wall_seconds']:.0f} | |")
    lines += ["", "Commands (`$TMP`: the temporary folder):", ""]
    lines += [f"    {run['command']}" for run in results["runs"].values()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="cnnctl-imbalance-"))
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or (work / "imbalance.md" if args.quick else BENCH / "results" / "imbalance.md")
    try:
        say(f"building the imbalanced dataset from {portable(str(args.tar), ROOT)}")
        npz = work / "cifar10-imbalanced.npz"
        data = build_npz(args, npz)
        say(f"train images per class {data['counts']['train']}, test {data['counts']['test']}")
        results = {"machine": machine(ROOT), "epochs": args.epochs, "seed": args.seed, "fraction": args.fraction,
                   "minority": args.minority, **data,
                   "runs": {variant: train(variant, npz, data["classes"], args, work) for variant in VARIANTS}}
        text = markdown(results)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(portable(results, ROOT), indent=1) + "\n")
        print(text)
        say(f"wrote {portable(str(out), ROOT)} and its .json")
    finally:
        if args.work is None and not args.quick:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
