"""What the plain tutorial scripts add to the tutorials' code: per-epoch times and a result file.

EpochTimes measures exactly what cnnctl's EpochExtras writes to metrics.csv as `epoch_seconds`:
perf_counter from on_epoch_begin to on_epoch_end (so validation, when there is some, is included
in both). It has no batch hooks, so Keras keeps dispatching batch callbacks asynchronously, as in
the plain tutorial script.
"""

from __future__ import annotations

import json
import time

import keras


class EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._start, 3))


def write_result(path: str, *, epoch_seconds: list[float], test_loss: float, test_accuracy: float,
                 train_images: int, test_images: int, history: dict) -> None:
    result = {"epoch_seconds": epoch_seconds, "test_loss": float(test_loss), "test_accuracy": float(test_accuracy),
              "train_images": train_images, "test_images": test_images, "precision": "float32",
              "history": {k: [float(v) for v in values] for k, values in history.items()}}
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)
