"""Where and how a model runs: device, precision policy, XLA, tf.distribute strategy, determinism.

`probe_hardware()` is the only function that asks the machine (tests mock it); `plan()` turns a
`RuntimeConfig` and the hardware into decisions with their reasons, without side effects;
`apply()` carries a plan out (TensorFlow settings, precision policy, strategy).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnctl.errors import RuntimeConfigError
from cnnctl.schema import RuntimeConfig

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: tuple[int, int] | None


@dataclass(frozen=True)
class Hardware:
    cpu_model: str
    cpu_flags: frozenset[str]
    gpus: tuple[Gpu, ...]
    logical_cpus: int = 1

    @property
    def bf16_cpu(self) -> bool:
        return any(flag in self.cpu_flags for flag in BF16_CPU_FLAGS)


@dataclass(frozen=True)
class Plan:
    device: str  # "/CPU:0" or "/GPU:1"
    device_reason: str
    precision: str
    precision_reason: str
    jit_compile: bool
    jit_reason: str
    distribute: str
    devices: tuple[str, ...] = ()  # what a mirrored strategy spans
    deterministic: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def read_cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    try:
        text = Path(path).read_text()
    except OSError:
        return "unknown", frozenset()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return (model.group(1).strip() if model else "unknown",
            frozenset(flags.group(1).split()) if flags else frozenset())


def probe_hardware() -> Hardware:
    """Ask TensorFlow for GPUs and /proc/cpuinfo for CPU features. The one hardware query."""
    import tensorflow as tf

    cpu_model, flags = read_cpu_info()
    gpus = []
    for index, device in enumerate(tf.config.list_physical_devices("GPU")):
        details = tf.config.experimental.get_device_details(device)
        gpus.append(Gpu(index, details.get("device_name", device.name), details.get("compute_capability")))
    return Hardware(cpu_model, flags, tuple(gpus), os.cpu_count() or 1)


def _pick_device(config: RuntimeConfig, hw: Hardware) -> tuple[str, str, int | None]:
    found = ", ".join(["CPU:0"] + [f"GPU:{g.index} ({g.name})" for g in hw.gpus])
    if config.device == "cpu":
        return "/CPU:0", "asked for cpu", None
    if config.device == "auto":
        if hw.gpus:
            return "/GPU:0", f"auto: first GPU, {hw.gpus[0].name}", 0
        return "/CPU:0", "auto: no GPU found, using the CPU", None
    index = int(config.device.partition(":")[2] or 0)
    if index >= len(hw.gpus):
        raise RuntimeConfigError(f"runtime.device: {config.device} asked for, but TensorFlow sees only: {found}",
                                 hint="use runtime.device=auto or cpu, or check CUDA_VISIBLE_DEVICES and the driver")
    return f"/GPU:{index}", f"asked for {config.device}, {hw.gpus[index].name}", index


def _pick_precision(config: RuntimeConfig, hw: Hardware, gpu: int | None) -> tuple[str, str]:
    if config.precision != "auto":
        return config.precision, f"asked for {config.precision}"
    if gpu is not None:
        capability = hw.gpus[gpu].compute_capability
        if capability and tuple(capability) >= (7, 0):
            return "mixed_float16", f"auto: {hw.gpus[gpu].name} has compute capability {capability[0]}.{capability[1]} (>= 7.0: tensor cores)"
        return "float32", f"auto: GPU compute capability {capability} is below 7.0"
    present = [flag for flag in BF16_CPU_FLAGS if flag in hw.cpu_flags]
    if present:
        return "mixed_bfloat16", f"auto: the CPU has {' and '.join(f.upper() for f in present)}"
    return "float32", "auto: no GPU of capability >= 7.0 and no CPU with AVX512_BF16 or AMX"


def plan(config: RuntimeConfig, hw: Hardware) -> Plan:
    """Decide device, precision, XLA and distribution for `config` on `hw`; no side effects."""
    device, device_reason, gpu = _pick_device(config, hw)
    precision, precision_reason = _pick_precision(config, hw, gpu)
    if config.jit_compile == "auto":
        jit, jit_reason = gpu is not None, ("auto: XLA on GPU" if gpu is not None
                                            else "auto: no XLA on the CPU (about 10x slower here)")
    else:
        jit, jit_reason = bool(config.jit_compile), f"asked for {config.jit_compile}"
    notes = []
    if precision == "mixed_float16" and gpu is None:
        notes.append("mixed_float16 on a CPU is usually slower than float32")
    devices: tuple[str, ...] = ()
    if config.distribute == "mirrored":
        if config.devices:
            devices = tuple(d.upper() for d in config.devices)
            missing = [d for d in devices if d.startswith("GPU") and int(d[4:]) >= len(hw.gpus)]
            if missing:
                raise RuntimeConfigError(f"runtime.devices: {', '.join(missing)} not found; "
                                         f"TensorFlow sees {len(hw.gpus)} GPU(s)")
        else:
            devices = tuple(f"GPU:{g.index}" for g in hw.gpus) or ("CPU:0",)
    return Plan(device, device_reason, precision, precision_reason, jit, jit_reason, config.distribute,
                devices, config.deterministic, notes)


def tf_config() -> dict | None:
    """The parsed TF_CONFIG environment variable (multi-worker training), or None."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        value = json.loads(text)
        value["cluster"], value["task"]  # noqa: B018 - both are required
        return value
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeConfigError(f"TF_CONFIG is not valid JSON with 'cluster' and 'task': {exc}") from None


def is_chief() -> bool:
    """True unless TF_CONFIG names this process a non-chief worker (only the chief writes the run)."""
    config = tf_config()
    if not config:
        return True
    task = config["task"]
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in config["cluster"]


def configure_logical_cpus(count: int) -> None:
    """Split the CPU into `count` logical devices (a CPU-only stand-in for several GPUs)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) != count:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def patch_keras_for_multi_worker() -> None:
    """Work around Keras 3 reducing scalar logs with `axis=0` under MultiWorkerMirroredStrategy.

    keras-team/keras#20585: fit() fails with "Invalid reduction dimension 0 for input with 0
    dimensions" because Keras' TF trainer averages per-replica logs with strategy.reduce(axis=0),
    which is wrong for scalars. Averaging across replicas (axis=None) is what it means to do.
    Only applied when a run asks for multi_worker.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "_cnnctl_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._cnnctl_patch = True
    trainer.reduce_per_replica = reduce_per_replica


def describe(runtime_plan: Plan, strategy) -> dict:
    """What a run's manifest records of where and how it ran."""
    import os
    import platform
    import socket

    return dict(python=platform.python_version(), platform=platform.platform(), **versions(),
                pid=os.getpid(), host=socket.gethostname(),
                device=runtime_plan.device, device_reason=runtime_plan.device_reason,
                precision=runtime_plan.precision, precision_reason=runtime_plan.precision_reason,
                jit_compile=runtime_plan.jit_compile, distribute=runtime_plan.distribute,
                strategy=type(strategy).__name__, replicas=strategy.num_replicas_in_sync)


def device_report() -> tuple[Hardware, Plan, dict]:
    """What `cnnctl devices` shows: the hardware, what `auto` would choose on it, the versions."""
    from cnnctl.schema import RuntimeConfig

    hw = probe_hardware()
    return hw, plan(RuntimeConfig(), hw), versions()


def import_quietly(show: bool = False) -> None:
    """Import TensorFlow without the C++ start-up chatter it writes to fd 2 before logging is set up
    (`show`: let it through, for --debug)."""
    import os
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" in sys.modules or show:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def build_for_multi_worker(model, batch) -> None:
    """Build model, loss and metrics from one plain `batch` before fit under MultiWorkerMirroredStrategy.

    Keras 3's fit first "reduces" a distributed input batch just to learn its shapes, which
    MultiWorkerMirroredStrategy cannot do (keras-team/keras#20585: "Attempt to convert a value
    (PerReplica...) to a Tensor"). Building from one plain batch first, and skipping that step
    on this model, is all the workaround needs; training itself is Keras' own.
    """
    model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def epoch_steps(examples: int, batch_size: int, strategy, distribute: str) -> int:
    """The steps of an epoch of `examples`, once it is sure that each replica can take its part of every batch.

    Under multi_worker every replica of every worker reads its part of each global batch (see
    `data.pipeline`): the batch must split evenly, and an epoch's smaller last batch must leave
    no replica empty (Keras cannot train a replica on an empty batch: the step fails).
    """
    steps, replicas, last = math.ceil(examples / batch_size), strategy.num_replicas_in_sync, examples % batch_size

    def splits(batch: int) -> bool:
        return batch % replicas == 0 and (examples % batch == 0 or examples % batch >= replicas)

    if distribute != "multi_worker" or replicas == 1 or splits(batch_size):
        return steps
    cluster = (tf_config() or {}).get("cluster", {})
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", [])) or 1
    where = f"the {replicas} replicas of runtime.distribute multi_worker ({workers} worker(s))"
    fits = [batch for batch in range(replicas, 2 * batch_size + replicas, replicas) if splits(batch)]
    hint = f"use e.g. {min(fits, key=lambda batch: abs(batch - batch_size))}" if fits else f"use a multiple of {replicas}"
    if batch_size % replicas:
        raise RuntimeConfigError(f"train.batch_size: {batch_size} does not split evenly across {where}: each replica "
                                 "reads an equal part of every global batch", hint=hint)
    raise RuntimeConfigError(f"train.batch_size: {batch_size} leaves a last batch of {last} of the {examples} training "
                             f"examples in every epoch, too few for {where}: a replica would get an empty batch",
                             hint=hint + " (a batch size whose remainder is 0 or at least the number of replicas)")


def worker_input(strategy, distribute: str, make):
    """fit's training input: `make(...)` itself, or under multi_worker each worker's share of it.

    `make(*args, shard=None, **kwargs)` builds a tf.data pipeline of global batches, or with
    `shard=(worker, workers, replicas per worker)` that worker's part of each (see
    `data.pipeline`). Given a plain dataset, Keras 3 (TFEpochIterator) calls
    `strategy.experimental_distribute_dataset`, which under MultiWorkerMirroredStrategy
    auto-shards by DATA (our pipeline reads no files): every worker runs the whole pipeline,
    gathers every global batch and throws all but its slice away. Here each worker builds its
    own pipeline (`distribute_datasets_from_function`) and gathers only its share.
    """
    if distribute != "multi_worker":
        return make

    def distributed(*args, **kwargs):
        def dataset_fn(context):
            replicas = context.num_replicas_in_sync // context.num_input_pipelines
            return make(*args, shard=(context.input_pipeline_id, context.num_input_pipelines, replicas), **kwargs)

        return strategy.distribute_datasets_from_function(dataset_fn)

    return distributed


def apply(runtime_plan: Plan, seed: int):
    """Carry out the plan: seeds, determinism, GPU memory growth, precision policy; return the strategy.

    Must run before any model is built; TensorFlow device settings cannot change afterwards.
    """
    import keras
    import tensorflow as tf

    if runtime_plan.distribute == "multi_worker":
        # Collectives must be configured before anything else touches the TensorFlow runtime.
        tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        patch_keras_for_multi_worker()
    else:
        strategy = None
    try:
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
        cpus = [d for d in runtime_plan.devices if d.startswith("CPU")]
        if runtime_plan.distribute == "mirrored" and len(cpus) > 1:
            configure_logical_cpus(max(int(d[4:]) for d in cpus) + 1)
    except RuntimeError:
        pass  # already initialised in this process (tests, notebooks): keep what is there
    keras.utils.set_random_seed(seed)
    if runtime_plan.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(runtime_plan.precision)
    if strategy is None:
        if runtime_plan.distribute == "mirrored":
            strategy = tf.distribute.MirroredStrategy(devices=[f"/{d}" for d in runtime_plan.devices])
        elif runtime_plan.device == _default_device(tf):
            # TensorFlow places everything there anyway; the default strategy adds no per-step cost.
            strategy = tf.distribute.get_strategy()
        else:
            strategy = tf.distribute.OneDeviceStrategy(runtime_plan.device)
    return strategy


def _default_device(tf) -> str:
    return "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"


def versions() -> dict:
    """TensorFlow, Keras, CUDA and cuDNN versions (CUDA/cuDNN only in a GPU build)."""
    import keras
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    return {"tensorflow": tf.__version__, "keras": keras.__version__,
            "cuda": build.get("cuda_version"), "cudnn": build.get("cudnn_version"),
            "built_with_cuda": tf.test.is_built_with_cuda()}


AUTO_STEPS_PER_EXECUTION = 16  # bench/profile.py: MNIST +28 % at 16 over 1; beyond, a Ctrl-C waits longer


def steps_per_execution(requested: int | str, steps_per_epoch: int, every_steps: int | None = None,
                        resume_step: int = 0, distribute: str = "none") -> tuple[int, str]:
    """How many training steps one tf.function call runs, and why.

    Keras runs `steps_per_execution` steps per call however many an epoch has left; cnnctl's
    training data repeats across epochs, so a number that does not divide the epoch's steps
    would run into the next epoch's batches. The number must also divide the step checkpoints'
    interval and, when finishing an interrupted epoch, the step it stopped at (callbacks see
    only every n-th step). auto takes the largest such number up to 16. Under tf.distribute it is
    1: Keras 3.15's multi-step loop fails on distributed iterators ("You must feed a value for
    placeholder tensor ... while/cond/Placeholder_1", seen with MirroredStrategy on two CPUs).
    """
    if distribute != "none":
        if requested not in ("auto", 1):
            raise RuntimeConfigError(f"runtime.steps_per_execution: {requested} with runtime.distribute "
                                     f"{distribute}: Keras runs one step per call under tf.distribute",
                                     hint="use auto or 1")
        return 1, f"{requested}: one step per call under tf.distribute"
    constraints = {"the steps of an epoch": steps_per_epoch}
    if every_steps:
        constraints["train.checkpoint_every_steps"] = every_steps
    if resume_step:
        constraints["the step the resumed epoch stopped at"] = resume_step
    fits = [n for n in range(1, steps_per_epoch + 1) if all(v % n == 0 for v in constraints.values())]
    given = ", ".join(f"{name} ({value})" for name, value in constraints.items())
    if requested == "auto":
        best = max(n for n in fits if n <= AUTO_STEPS_PER_EXECUTION)
        return best, f"auto: the largest divisor up to {AUTO_STEPS_PER_EXECUTION} of {given}"
    if requested not in fits:
        options = ", ".join(map(str, fits[:12])) + (", ..." if len(fits) > 12 else "")
        raise RuntimeConfigError(f"runtime.steps_per_execution: {requested} does not divide {given}",
                                 hint=f"use auto or one of {options}")
    return int(requested), "as configured"
