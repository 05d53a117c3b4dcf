"""`cnnctl ...` with one pipeline or callback setting changed, for bench/profile.py.

usage: profile_child.py PATCH CNNCTL_ARGS...

PATCH is `none` or one of PATCHES below; each changes one thing cnnctl does by default, so that
bench/profile.py can measure what that thing buys. Everything else is `cnnctl` unchanged.
"""

from __future__ import annotations

import sys


def sequential_map():
    """tf.data map without num_parallel_calls: batches are gathered and scaled on one thread."""
    import tensorflow as tf

    original = tf.data.Dataset.map
    tf.data.Dataset.map = lambda self, fn, num_parallel_calls=None, **kw: original(self, fn, **kw)


def no_prefetch():
    """No tf.data prefetch: the next batch is made only when the model asks for it."""
    import tensorflow as tf

    tf.data.Dataset.prefetch = lambda self, *args, **kwargs: self


def async_callbacks():
    """cnnctl's per-batch callbacks marked async_safe, so Keras dispatches batch ends asynchronously.

    Measures what the per-batch NaN check and resume-checkpoint hook cost; not safe for real runs
    (a checkpoint taken on another thread may hold a later step's weights).
    """
    from cnnctl import callbacks

    for cls in (callbacks.NaNGuard, callbacks.ResumeCheckpoint, callbacks.TensorBoard):
        cls.async_safe = True


PATCHES = {"sequential_map": sequential_map, "no_prefetch": no_prefetch, "async_callbacks": async_callbacks}

if __name__ == "__main__":
    patch, args = sys.argv[1], sys.argv[2:]
    if patch != "none":
        PATCHES[patch]()
    from cnnctl.cli import main

    sys.argv = ["cnnctl", *args]
    main()
