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


def test_multi_worker_with_two_local_workers_only_the_chief_writes(config, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CNNCTL_OFFLINE="1",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        runs = tmp_path / f"runs-{index}"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "cnnctl", "train", str(config), "--runs-dir", str(runs), "--quiet",
             "--set", "runtime.distribute=multi_worker"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outcomes = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outcomes]
    chief_run = tmp_path / "runs-0" / "dist"
    manifest = json.loads((chief_run / "manifest.json").read_text())
    assert manifest["strategy"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")  # the class behind the name
    assert manifest["replicas"] == 2
    assert manifest["status"] == "completed"
    assert (chief_run / "checkpoints" / "best.keras").is_file() and (chief_run / "eval.json").is_file()
    assert not (tmp_path / "runs-1").exists() or not any((tmp_path / "runs-1").iterdir())


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
