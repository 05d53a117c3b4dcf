"""tf.distribute on a CPU-only machine: mirrored over logical CPUs, multi-worker over local ports,
and determinism. Each run is a subprocess, because device layout is fixed once TensorFlow starts."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

pytestmark = pytest.mark.slow  # every test here runs cnnctl in one or more subprocesses

CONFIG = tiny_config(name="dist", seed=2, dropout=0.2,
                     data={"synthetic": {"train_examples": 256, "test_examples": 64}},
                     train={"optimizer": {"learning_rate": 0.05}, "batch_size": 32, "epochs": 2, "validation": "test"},
                     runtime={"precision": "float32"})


def run_cnnctl(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CNNCTL_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "cnnctl", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout)


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(handle)]


@pytest.fixture()
def config(write_yaml) -> Path:
    return write_yaml(CONFIG, "dist.yaml")


def test_mirrored_over_two_logical_cpus_records_two_replicas(config, tmp_path):
    proc = run_cnnctl("train", str(config), "--runs-dir", str(tmp_path / "runs"), "--quiet",
                      "--set", "runtime.distribute=mirrored", "--set", "runtime.devices=[cpu:0, cpu:1]")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "runs" / "dist" / "manifest.json").read_text())
    assert manifest["strategy"] == "MirroredStrategy"
    assert manifest["replicas"] == 2
    assert manifest["status"] == "completed"
    assert len(metrics(tmp_path / "runs" / "dist")) == 2


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def two_workers(args, timeout: float = 300) -> list[tuple[int, str, str]]:
    """Run `args(index)` as workers 0 and 1 of a local cluster (TF_CONFIG); their return codes, stdouts, stderrs."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CNNCTL_OFFLINE="1",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, *args(index)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    outcomes = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outcomes, strict=True)]


def test_multi_worker_with_two_local_workers_only_the_chief_writes(config, tmp_path):
    outcomes = two_workers(lambda index: ["-m", "cnnctl", "train", str(config), "--runs-dir", str(tmp_path / f"runs-{index}"),
                                          "--quiet", "--set", "runtime.distribute=multi_worker"])
    assert [code for code, _, _ in outcomes] == [0, 0], [err for _, _, err in outcomes]
    chief_run = tmp_path / "runs-0" / "dist"
    manifest = json.loads((chief_run / "manifest.json").read_text())
    assert manifest["strategy"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")  # the class behind the name
    assert manifest["replicas"] == 2
    assert manifest["status"] == "completed"
    assert (chief_run / "checkpoints" / "best.keras").is_file() and (chief_run / "eval.json").is_file()
    assert not (tmp_path / "runs-1").exists() or not any((tmp_path / "runs-1").iterdir())
    # Sane numbers: each worker trains on its half of every batch, which together learn what one process learns
    # (the same batches; only dropout's random masks differ).
    single = run_cnnctl("train", str(config), "--runs-dir", str(tmp_path / "single"), "--quiet")
    assert single.returncode == 0, single.stderr
    together, alone = metrics(chief_run), metrics(tmp_path / "single" / "dist")
    assert len(together) == 2 and float(together[1]["loss"]) < float(together[0]["loss"])
    for mine, theirs in zip(together, alone, strict=True):
        assert abs(float(mine["loss"]) - float(theirs["loss"])) < 0.05, (together, alone)
        assert abs(float(mine["accuracy"]) - float(theirs["accuracy"])) < 0.1, (together, alone)
    assert json.loads((chief_run / "eval.json").read_text())["accuracy"] > 0.6  # 3 classes: chance is 1/3


WORKER = """
import json, sys
import numpy as np
from cnnctl import runtime
from cnnctl.schema import RuntimeConfig

plan = runtime.plan(RuntimeConfig(distribute="multi_worker", precision="float32"), runtime.probe_hardware())
strategy = runtime.apply(plan, 0)
import tensorflow as tf
from cnnctl.data import make_epoch_dataset, pipeline

read = []  # every index this worker gathers an image of
images_of = pipeline._images
def recording(x):
    gather = images_of(x)
    def note(indices):
        read.extend(indices.tolist())
        return indices
    return lambda indices: gather(tf.numpy_function(note, [indices], tf.int64, stateful=True))
pipeline._images = recording

count, batch_size = int(sys.argv[2]), int(sys.argv[3])
x = np.arange(count, dtype=np.uint8).reshape(count, 1, 1, 1)  # image i is all i: a batch shows its indices
y = (np.arange(count) % 3).astype(np.uint8)
def epochs_from(start_epoch, skip_steps=0, epochs=None, shard=None):  # as train._fit builds it
    return make_epoch_dataset(x, y, batch_size=batch_size, num_classes=3, one_hot=False, shuffle=True, seed=5,
                              start_epoch=start_epoch, skip_steps=skip_steps, epochs=epochs, shard=shard)
train_data = runtime.worker_input(strategy, "multi_worker", epochs_from)

def steps(dataset):
    seen = []
    for images, labels in dataset:
        (images,), (labels,) = strategy.experimental_local_results(images), strategy.experimental_local_results(labels)
        index = np.rint(images.numpy()[:, 0, 0, 0] * 255).astype(int)
        assert (labels.numpy() == index % 3).all()
        seen.append(index.tolist())
    return seen

result = {"steps": steps(train_data(0, epochs=2)), "read": sorted(read), "resumed": steps(train_data(1, 2, epochs=1)),
          "global": [np.rint(b[0][:, 0, 0, 0] * 255).astype(int).tolist() for b in epochs_from(0, epochs=2).as_numpy_iterator()]}
with open(sys.argv[1], "w") as handle:
    json.dump(result, handle)
"""


def test_multi_worker_input_each_worker_reads_its_share_and_each_example_is_used_once_per_epoch(tmp_path):
    """Two workers with a real MultiWorkerMirroredStrategy iterate the training input train.py gives fit."""
    count, batch_size, steps_per_epoch = 45, 8, 6  # the last batch of an epoch has 5: split 3 + 2
    (tmp_path / "worker.py").write_text(WORKER)
    outcomes = two_workers(lambda index: [str(tmp_path / "worker.py"), str(tmp_path / f"worker-{index}.json"),
                                          str(count), str(batch_size)], timeout=240)
    assert [code for code, _, _ in outcomes] == [0, 0], [err for _, _, err in outcomes]
    workers = [json.loads((tmp_path / f"worker-{index}.json").read_text()) for index in range(2)]
    first, second = (w["steps"] for w in workers)
    assert len(first) == len(second) == 2 * steps_per_epoch  # the same number of steps on both workers
    for epoch in range(2):
        mine = slice(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        seen = [sum(w["steps"][mine], []) for w in workers]
        assert not set(seen[0]) & set(seen[1])  # disjoint
        assert sorted(seen[0] + seen[1]) == list(range(count))  # every example exactly once per epoch
    # Worker 0 takes the first half of every global batch, worker 1 the rest (array_split: 3 + 2 for the last).
    assert [a + b for a, b in zip(first, second, strict=True)] == workers[0]["global"] == workers[1]["global"]
    assert [len(s) for s in first[:steps_per_epoch]] == [4] * 5 + [3]
    assert [len(s) for s in second[:steps_per_epoch]] == [4] * 5 + [2]
    epoch_orders = [sum(workers[0]["global"][i * steps_per_epoch:(i + 1) * steps_per_epoch], []) for i in range(2)]
    assert epoch_orders[0] != epoch_orders[1]  # each epoch has its own permutation
    for w in workers:  # each worker gathers only its own share, never the other worker's images
        assert w["read"] == sorted(sum(w["steps"], []))
        assert w["resumed"] == w["steps"][steps_per_epoch + 2:]  # a resume's skip_steps counts global steps


def test_multi_worker_refuses_a_last_batch_too_small_for_every_worker(config, tmp_path):
    outcomes = two_workers(lambda index: ["-m", "cnnctl", "train", str(config), "--runs-dir", str(tmp_path / f"runs-{index}"),
                                          "--set", "runtime.distribute=multi_worker",
                                          "--set", "data.synthetic.train_examples=257"], timeout=120)
    for code, _, err in outcomes:  # both workers, before any step: 257 = 8 x 32 + 1, and one example cannot be split
        assert code == 2, err
        assert "train.batch_size: 32 leaves a last batch of 1 of the 257 training examples" in err
        assert "Traceback" not in err
    assert not (tmp_path / "runs-0").exists()


def test_deterministic_runs_give_identical_metrics(config, tmp_path):
    for name in ("a", "b"):
        proc = run_cnnctl("train", str(config), "--runs-dir", str(tmp_path / "runs"), "--run-name", name, "--quiet",
                          "--set", "runtime.deterministic=true")
        assert proc.returncode == 0, proc.stderr
    assert metrics(tmp_path / "runs" / "a") == metrics(tmp_path / "runs" / "b")
    first = json.loads((tmp_path / "runs" / "a" / "eval.json").read_text())
    second = json.loads((tmp_path / "runs" / "b" / "eval.json").read_text())
    assert first["loss"] == second["loss"] and first["confusion_matrix"] == second["confusion_matrix"]


def test_steps_run_in_groups_give_the_same_metrics_as_one_step_per_call(config, tmp_path):
    runs = tmp_path / "runs"
    for name, steps in (("one", "1"), ("grouped", "auto")):
        proc = run_cnnctl("train", str(config), "--runs-dir", str(runs), "--run-name", name, "--quiet",
                          "--set", "runtime.deterministic=true", "--set", f"runtime.steps_per_execution={steps}")
        assert proc.returncode == 0, proc.stderr
    grouped = json.loads((runs / "grouped" / "manifest.json").read_text())
    assert grouped["steps_per_execution"] > 1 and "auto" in grouped["steps_per_execution_reason"]
    assert json.loads((runs / "one" / "manifest.json").read_text())["steps_per_execution"] == 1
    assert metrics(runs / "one") == metrics(runs / "grouped")
    evaluations = [json.loads((runs / name / "eval.json").read_text()) for name in ("one", "grouped")]
    assert evaluations[0]["loss"] == evaluations[1]["loss"]


def test_missing_gpu_is_an_error_listing_the_devices(config, tmp_path):
    proc = run_cnnctl("train", str(config), "--runs-dir", str(tmp_path / "runs"), "--set", "runtime.device=gpu:1")
    assert proc.returncode == 2
    assert "runtime.device: gpu:1 asked for, but TensorFlow sees only: CPU:0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
