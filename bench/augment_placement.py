"""Where should augmentation run: in the tf.data input pipeline, or as layers inside the model?
(A measurement, not part of `make test`.)

    .venv/bin/python bench/augment_placement.py [--config configs/mnist_fast.yaml] [--steps 300]

Builds the config's model and trains it for a fixed number of steps on its real data (MNIST by
default, through cnnctl's own loading), three ways, alternating, each measured after a warm-up:
no augmentation; `data.augment` in the input pipeline (cnnctl's way, `inputs.training`); the same
Keras layers placed first in the model (Keras' tutorial way). Prints training images/s per way and
the ratios, with the CPU model; writes bench/results/<date>-augment-placement.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

from measure import cpu_info

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SHARED = ROOT.parent / "shared" / "datasets"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "mnist_fast.yaml"))
    p.add_argument("--steps", type=int, default=300, help="timed training steps per measurement")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import keras

    from cnnctl import augment, inputs, rundata, runtime
    from cnnctl.compile import labels_one_hot, make_loss
    from cnnctl.config import load_config
    from cnnctl.model import build_model

    config = load_config(args.config)
    plan = runtime.plan(config.runtime, runtime.probe_hardware())
    strategy = runtime.apply(plan, config.seed)
    splits = rundata.load(config, data_dir=SHARED)
    one_hot = labels_one_hot(config.train, augment.mixes(config.data.augment))
    plain = config.model_copy(update={"data": config.data.model_copy(update={"augment": []})})

    def model(with_layers: bool):
        base = build_model(config.model, name="m", float32_output=plan.precision != "float32")
        if with_layers:
            base = keras.Sequential([keras.Input(tuple(config.model.input_shape)), *augment.build(config.data.augment),
                                     *base.layers])
        base.compile(optimizer="adam", loss=make_loss(config.train, one_hot), steps_per_execution=10)
        return base

    def measure(way: str) -> float:
        source = config if way == "pipeline" else plain
        batches, _ = inputs.training(source, splits, one_hot=one_hot, class_weight=None, strategy=strategy,
                                     distribute="none")
        m = model(way == "in the model")
        m.fit(batches(0), steps_per_epoch=20, epochs=1, verbose=0)  # warm-up: tracing, oneDNN kernels
        start = time.perf_counter()
        m.fit(batches(1), steps_per_epoch=args.steps, epochs=1, verbose=0)
        return args.steps * config.train.batch_size / (time.perf_counter() - start)

    ways = ["none", "pipeline", "in the model"]
    rates = {way: [] for way in ways}
    for _ in range(args.repeats):
        for way in ways:
            rates[way].append(measure(way))
            print(f"{way}: {rates[way][-1]:,.0f} images/s", file=sys.stderr, flush=True)
    median = {way: statistics.median(values) for way, values in rates.items()}
    lines = [f"# Augmentation in the pipeline or in the model: {Path(args.config).name}", "",
             f"CPU: {cpu_info()['model']}; {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
             f"precision {plan.precision}; {args.steps} steps of {config.train.batch_size}, median of {args.repeats}",
             "", f"augmentation: {' -> '.join(augment.names(config.data.augment))}", "",
             "| where | training images/s | vs none |", "|---|---|---|"]
    lines += [f"| {way} | {median[way]:,.0f} | {median[way] / median['none']:.3f} |" for way in ways]
    text = "\n".join(lines) + "\n"
    print(text)
    out = BENCH / "results" / f"{datetime.date.today().isoformat()}-augment-placement.md"
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
