"""`cnnctl runs` and `cnnctl compare` on two smoke runs (plus folders that are not runs)."""

from __future__ import annotations

import json
import os

import pytest
from conftest import tiny_config, write_config

from cnnctl import runs

TINY = tiny_config(seed=5, input_shape=(10, 10, 1), filters=3, pool=False, train={"validation": "test"})

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """runs/first (sgd 0.01), then runs/second (adam 0.005, batch 8), a stray file, a non-run and a corrupt run."""
    import keras

    from cnnctl.config import load_config
    from cnnctl.train import run

    root = tmp_path_factory.mktemp("runs")
    config = write_config(root / "tiny.yaml", TINY)
    try:
        first = run(load_config(config), runs_dir=root / "runs", run_name="first", smoke=True)
        second = run(load_config(config, ["train.optimizer.name=adam", "train.optimizer.learning_rate=0.005",
                                          "train.batch_size=8"]),
                     runs_dir=root / "runs", run_name="second", smoke=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert first.status == second.status == "completed"
    # Same-second start times must not decide the order: make "second" clearly newer.
    manifest = json.loads((second.run_dir / "manifest.json").read_text())
    manifest["start_time"] = "2099-01-01T00:00:00+00:00"
    (second.run_dir / "manifest.json").write_text(json.dumps(manifest))
    (root / "runs" / "notes.txt").write_text("not a run")
    (root / "runs" / "scratch").mkdir()
    (root / "runs" / "broken").mkdir()
    write_config(root / "runs" / "broken" / "config.yaml", TINY)
    (root / "runs" / "broken" / "manifest.json").write_text("{ this is not json")
    return root / "runs"


def test_runs_json_lists_runs_newest_first(cli, runs_dir):
    result = cli("runs", "--runs-dir", runs_dir, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"first", "second", "broken"}  # scratch/ and notes.txt are no runs
    assert rows[0]["name"] == "second"
    assert [r["name"] for r in rows if r["name"] != "broken"] == ["second", "first"]
    for name in ("first", "second"):
        row = by_name[name]
        assert row["status"] == "completed" and row["config"] == "tiny" and row["smoke"] is True
        assert row["epochs_run"] == 1 and row["epochs"] == 1
        assert 0.0 <= row["test_accuracy"] <= 1.0 and 0.0 <= row["best_val_accuracy"] <= 1.0
        assert row["wall_seconds"] > 0 and row["start_time"]
    assert by_name["broken"]["status"] == "unreadable"
    assert by_name["broken"]["test_accuracy"] is None


def test_runs_table(cli, runs_dir):
    result = cli("runs", "--runs-dir", runs_dir)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for header in ("run", "config", "status", "epochs", "best val acc", "test acc", "wall", "started"):
        assert header in lines[2], lines[:4]
    rows = {line.split()[1]: line for line in lines if line.startswith("│")}
    assert [name for name in rows if name != "broken"] == ["second", "first"] and "broken" in rows
    assert "completed (smoke)" in rows["first"] and "1/1" in rows["first"]
    test_accuracy = json.loads((runs_dir / "first" / "eval.json").read_text())["accuracy"]
    assert f"{test_accuracy:.4f}" in rows["first"]
    assert "unreadable" in rows["broken"]
    assert "scratch" not in result.output and "notes" not in result.output


def test_runs_of_an_empty_and_a_missing_folder(cli, tmp_path):
    empty = cli("runs", "--runs-dir", tmp_path)
    assert empty.exit_code == 0 and f"no runs in {tmp_path}" in empty.output
    missing = cli("runs", "--runs-dir", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "no such runs directory" in missing.output


def test_compare_json(cli, runs_dir):
    result = cli("compare", runs_dir / "first", runs_dir / "second", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [run["name"] for run in data["runs"]] == ["first", "second"]
    assert data["config_differences"] == {"train.batch_size": [16, 8],
                                          "train.optimizer.learning_rate": [0.01, 0.005],
                                          "train.optimizer.name": ["sgd", "adam"],
                                          "data.synthetic.test_examples": [16, 8],  # smoke: one batch each
                                          "data.synthetic.train_examples": [48, 24]}
    for run in data["runs"]:
        assert run["params"] == (8 * 8 * 3) * 3 + 3 + 3 * 3 * 3 + 3
        assert set(run["metrics"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
        history = json.loads((runs_dir / run["name"] / "history.json").read_text())
        assert run["metrics"]["loss"]["final"] == pytest.approx(history["loss"][-1])
        assert run["test_accuracy"] == json.loads((runs_dir / run["name"] / "eval.json").read_text())["accuracy"]
    plot = runs_dir / "compare-first-second.png"
    assert data["plot"] == str(plot)
    assert plot.read_bytes()[:8] == PNG_SIGNATURE and plot.stat().st_size > 10_000


def test_compare_table_and_out(cli, runs_dir, tmp_path):
    out = tmp_path / "both.png"
    result = cli("compare", runs_dir / "second", runs_dir / "first", "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert f"plot written to {out}" in result.output
    text = result.output
    assert "Metrics (final / best)" in text and "Config differences" in text
    for key in ("train.optimizer.name", "train.optimizer.learning_rate", "train.batch_size"):
        assert key in text
    assert "test accuracy" in text and "params" in text and "wall time" in text
    row = next(line for line in text.splitlines() if "train.optimizer.name" in line)
    assert row.index("adam") < row.index("sgd")  # columns follow the order given


def test_compare_needs_two_runs(cli, runs_dir, tmp_path):
    one = cli("compare", runs_dir / "first")
    assert one.exit_code == 2 and "at least two" in one.output
    not_a_run = cli("compare", runs_dir / "first", runs_dir / "scratch")
    assert not_a_run.exit_code == 2 and "not a cnnctl run directory" in not_a_run.output
    bad_suffix = cli("compare", runs_dir / "first", runs_dir / "second", "--out", tmp_path / "plot.txt")
    assert bad_suffix.exit_code == 2 and ".png, .svg or .pdf" in bad_suffix.output
    assert not (tmp_path / "plot.txt").exists()


def test_flatten_and_differences():
    config = {"a": {"b": 1, "c": [{"D": {"e": 2}}, {"F": {}}]}, "g": []}
    assert runs.flatten(config) == {"a.b": 1, "a.c[0].D.e": 2, "a.c[1].F": {}, "g": []}
    assert runs.config_differences([{"x": 1, "y": [1, 2]}, {"x": 1, "y": [1, 3], "z": True}]) == \
        {"y[1]": [2, 3], "z": [runs.MISSING, True]}


def test_default_plot_path_stays_short(tmp_path):
    names = [tmp_path / f"run-with-a-long-name-{i}" for i in range(10)]
    path = runs.default_plot_path(names)
    assert path.parent == tmp_path.resolve() and path.name == "compare-run-with-a-long-name-0-and-9-more.png"
    assert len(path.name) < os.pathconf(tmp_path, "PC_NAME_MAX")
