"""runtime.plan on mocked hardware: device, precision, XLA and distribution decisions (no TensorFlow)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from cnnctl import runtime
from cnnctl.errors import RuntimeConfigError
from cnnctl.runtime import Gpu, Hardware, plan
from cnnctl.schema import RuntimeConfig

PLAIN_CPU = Hardware("Plain CPU", frozenset({"sse4_2", "avx2", "avx512f"}), (), 2)
BF16_CPU = Hardware("Cooper Lake", frozenset({"avx512f", "avx512_bf16"}), (), 8)
AMX_CPU = Hardware("Sapphire Rapids", frozenset({"avx512f", "amx_tile", "amx_bf16"}), (), 8)
A100 = Hardware("Plain CPU", frozenset({"avx2"}), (Gpu(0, "NVIDIA A100", (8, 0)),), 16)
GTX1080 = Hardware("Plain CPU", frozenset({"avx2"}), (Gpu(0, "NVIDIA GeForce GTX 1080", (6, 1)),), 16)
TWO_GPUS = Hardware("Plain CPU", frozenset(), (Gpu(0, "NVIDIA T4", (7, 5)), Gpu(1, "NVIDIA T4", (7, 5))), 16)


def test_ampere_gpu_gets_mixed_float16_and_xla():
    decided = plan(RuntimeConfig(), A100)
    assert decided.device == "/GPU:0"
    assert decided.precision == "mixed_float16"
    assert decided.jit_compile is True
    assert "NVIDIA A100" in decided.device_reason and "8.0" in decided.precision_reason


def test_pascal_gpu_stays_float32():
    decided = plan(RuntimeConfig(), GTX1080)
    assert (decided.device, decided.precision, decided.jit_compile) == ("/GPU:0", "float32", True)
    assert "(6, 1)" in decided.precision_reason


def test_gpu_of_unknown_capability_stays_float32():
    hardware = Hardware("cpu", frozenset(), (Gpu(0, "mystery", None),))
    assert plan(RuntimeConfig(), hardware).precision == "float32"


@pytest.mark.parametrize(("hardware", "flag"), [(BF16_CPU, "AVX512_BF16"), (AMX_CPU, "AMX_BF16")])
def test_bf16_cpus_get_mixed_bfloat16(hardware, flag):
    decided = plan(RuntimeConfig(), hardware)
    assert (decided.device, decided.precision) == ("/CPU:0", "mixed_bfloat16")
    assert flag in decided.precision_reason
    assert hardware.bf16_cpu


def test_plain_cpu_stays_float32_without_xla():
    decided = plan(RuntimeConfig(), PLAIN_CPU)
    assert (decided.device, decided.precision, decided.jit_compile) == ("/CPU:0", "float32", False)
    assert not PLAIN_CPU.bf16_cpu
    assert decided.jit_reason.startswith("auto: no XLA on the CPU")


def test_jit_auto_is_off_on_a_cpu_even_with_a_gpu_present():
    decided = plan(RuntimeConfig(device="cpu"), A100)
    assert (decided.device, decided.jit_compile) == ("/CPU:0", False)
    assert decided.precision == "float32"  # the A100 is not used, and this CPU has no bf16


@pytest.mark.parametrize("device", ["gpu", "gpu:0", "gpu:1"])
def test_absent_gpu_is_an_error_listing_the_devices(device):
    with pytest.raises(RuntimeConfigError) as info:
        plan(RuntimeConfig(device=device), PLAIN_CPU)
    assert info.value.message == f"runtime.device: {device} asked for, but TensorFlow sees only: CPU:0"
    assert "CUDA_VISIBLE_DEVICES" in info.value.hint
    assert info.value.exit_code == 2


def test_absent_second_gpu_lists_the_ones_found():
    with pytest.raises(RuntimeConfigError, match=r"gpu:1 asked for, but TensorFlow sees only: "
                                                 r"CPU:0, GPU:0 \(NVIDIA A100\)$"):
        plan(RuntimeConfig(device="gpu:1"), A100)


def test_second_gpu_when_present():
    decided = plan(RuntimeConfig(device="gpu:1"), TWO_GPUS)
    assert (decided.device, decided.precision) == ("/GPU:1", "mixed_float16")


@pytest.mark.parametrize("precision", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("hardware", [PLAIN_CPU, BF16_CPU, A100, GTX1080])
def test_explicit_precision_is_honoured(hardware, precision):
    decided = plan(RuntimeConfig(precision=precision), hardware)
    assert decided.precision == precision
    assert decided.precision_reason == f"asked for {precision}"


def test_mixed_float16_on_a_cpu_gets_a_note():
    assert plan(RuntimeConfig(precision="mixed_float16"), PLAIN_CPU).notes == [
        "mixed_float16 on a CPU is usually slower than float32"]
    assert plan(RuntimeConfig(precision="mixed_float16"), A100).notes == []


@pytest.mark.parametrize(("jit", "hardware", "expected"), [(True, PLAIN_CPU, True), (False, A100, False)])
def test_explicit_jit_is_honoured(jit, hardware, expected):
    decided = plan(RuntimeConfig(jit_compile=jit), hardware)
    assert decided.jit_compile is expected and decided.jit_reason == f"asked for {jit}"


def test_mirrored_spans_every_gpu_or_the_cpu():
    assert plan(RuntimeConfig(distribute="mirrored"), TWO_GPUS).devices == ("GPU:0", "GPU:1")
    assert plan(RuntimeConfig(distribute="mirrored"), PLAIN_CPU).devices == ("CPU:0",)
    assert plan(RuntimeConfig(), TWO_GPUS).devices == ()


def test_mirrored_devices_must_exist():
    decided = plan(RuntimeConfig(distribute="mirrored", devices=["cpu:0", "cpu:1"]), PLAIN_CPU)
    assert decided.devices == ("CPU:0", "CPU:1")
    with pytest.raises(RuntimeConfigError, match="runtime.devices: GPU:2 not found; TensorFlow sees 2 GPU"):
        plan(RuntimeConfig(distribute="mirrored", devices=["gpu:0", "gpu:2"]), TWO_GPUS)


def test_plan_is_plain_data():
    decided = plan(RuntimeConfig(deterministic=True), A100)
    data = decided.to_dict()
    assert json.loads(json.dumps(data)) == {**data, "devices": []}
    assert data["deterministic"] is True and data["distribute"] == "none"


def test_read_cpu_info(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                    "flags\t\t: fpu sse avx512f amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    model, flags = runtime.read_cpu_info(str(path))
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"amx_bf16", "amx_tile", "avx512f"} <= flags
    assert runtime.read_cpu_info(str(tmp_path / "missing")) == ("unknown", frozenset())


@pytest.mark.parametrize(("tf_config", "chief"), [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True),
])
def test_is_chief(monkeypatch, tf_config, chief):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert runtime.is_chief() is chief


@pytest.mark.parametrize("text", ["not json", "{}", '{"cluster": {}}', "[1]"])
def test_bad_tf_config_is_a_runtime_error(monkeypatch, text):
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(RuntimeConfigError, match="TF_CONFIG is not valid JSON"):
        runtime.tf_config()


def test_multi_worker_batches_must_split_across_the_replicas(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"index": 0}}))
    two = SimpleNamespace(num_replicas_in_sync=2)  # all epoch_steps asks of a strategy
    assert runtime.epoch_steps(261, 32, two, "multi_worker") == 9  # the last batch of 5 is split 3 + 2
    assert runtime.epoch_steps(256, 32, two, "multi_worker") == 8
    assert runtime.epoch_steps(257, 33, two, "mirrored") == 8  # only multi_worker splits the batches itself
    with pytest.raises(RuntimeConfigError, match=r"train.batch_size: 33 does not split evenly across the 2 "
                                                 r"replicas of runtime.distribute multi_worker \(2 worker") as caught:
        runtime.epoch_steps(256, 33, two, "multi_worker")
    assert caught.value.hint == "use e.g. 32"
    with pytest.raises(RuntimeConfigError, match="leaves a last batch of 1 of the 257 training examples") as caught:
        runtime.epoch_steps(257, 32, two, "multi_worker")
    assert caught.value.hint.startswith("use e.g. 30")


# ---------------------------------------------------------------- steps_per_execution


@pytest.mark.parametrize(("steps", "every", "resume_step", "expected"), [
    (600, None, 0, 15), (196, None, 0, 14), (8, None, 0, 8), (3, None, 0, 3), (197, None, 0, 1),
    (600, 50, 0, 10), (600, None, 36, 12), (600, 50, 36, 2),
])
def test_auto_steps_per_execution_divides_the_epoch_and_the_checkpoints(steps, every, resume_step, expected):
    n, reason = runtime.steps_per_execution("auto", steps, every, resume_step)
    assert n == expected and "auto" in reason


def test_a_steps_per_execution_that_would_cross_an_epoch_is_refused():
    assert runtime.steps_per_execution(4, 600) == (4, "as configured")
    with pytest.raises(RuntimeConfigError, match=r"runtime.steps_per_execution: 16 does not divide the steps of an "
                                                 r"epoch \(600\)") as caught:
        runtime.steps_per_execution(16, 600)
    assert caught.value.hint.startswith("use auto or one of 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 24, ...")
    with pytest.raises(RuntimeConfigError, match=r"train.checkpoint_every_steps \(25\)"):
        runtime.steps_per_execution(10, 600, every_steps=25)


def test_steps_per_execution_is_one_under_tf_distribute():
    assert runtime.steps_per_execution("auto", 600, distribute="mirrored")[0] == 1
    with pytest.raises(RuntimeConfigError, match="4 with runtime.distribute multi_worker"):
        runtime.steps_per_execution(4, 600, distribute="multi_worker")
