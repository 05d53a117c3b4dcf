"""`cnnctl tune` (cnnctl/tune.py and the tune command) end to end: the study directory and its reports, trials as
ordinary runs, best.yaml reproducing the best trial, continuing and resuming a study, a changed space refused, seeded
samplers, pruning, --smoke; and in real processes (slow): SIGKILL mid-trial, --workers on SQLite, two "machines" on a
real PostgreSQL server, SIGINT. Each trial trains a tiny model on 64 synthetic images for a second or two."""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONFIGS, finish, stderr_of, tiny_config, working_directory, write_config

from cnnctl import space, tune
from cnnctl import study as studies
from cnnctl.config import load_config

SPACE = {
    "train.optimizer.learning_rate": {"log_uniform": [0.001, 0.1]},
    "model.layers[0].Conv2D.kernel_size": {"choice": [[3, 3], [5, 5]]},
    "model.layers[2].Dropout.rate": {"uniform": [0.0, 0.5]},
}
PNG = b"\x89PNG\r\n\x1a\n"
TIMING = ("epoch_seconds",)


def experiment(name: str = "searched", *, trials: int = 2, sampler: str = "random", pruner: str = "none",
               seed: int = 7, examples: int = 64, epochs: int = 2, search: dict | None = None) -> dict:
    """A tiny deterministic experiment (Conv2D -> MaxPooling2D -> Dropout -> Flatten -> Dense) with a tune section."""
    return tiny_config(name=name, dropout=0.1, data={"synthetic": {"train_examples": examples, "test_examples": 32}},
                       train={"epochs": epochs, "validation": "split"}, runtime={"deterministic": True},
                       tune={"trials": trials, "seed": seed, "sampler": sampler, "pruner": pruner,
                             "space": copy.deepcopy(search or SPACE)})


def optuna_trials(study_dir: Path) -> list:
    """The study's Optuna trials, as stored (skipped places included)."""
    import optuna

    saved = json.loads((study_dir / studies.STUDY).read_text())
    hidden = study_dir / ".storage"  # only for a --storage given; the default follows the directory
    url = hidden.read_text().strip() if hidden.is_file() else f"sqlite:///{(study_dir / studies.DATABASE).resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=saved["study_name"], storage=url).get_trials(deepcopy=False)


def counted(trials) -> list:
    """The trials that count toward tune.trials: complete or pruned, by number."""
    return sorted((t for t in trials if t.state.name in ("COMPLETE", "PRUNED")), key=lambda t: t.number)


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


# ---------------------------------------------------------------- one study of 2 trials, read by the tests below


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """(home, summary): `cnnctl tune cfg.yaml --trials 2 --json` run in `home`, and the JSON it printed."""
    from typer.testing import CliRunner

    from cnnctl.cli import app

    home = tmp_path_factory.mktemp("tune")
    write_config(home / "cfg.yaml", experiment(trials=5))  # --trials overrides tune.trials
    with working_directory(home):
        result = CliRunner().invoke(app, ["tune", "cfg.yaml", "--trials", "2", "--json"])
    assert result.exit_code == 0, result.output
    return home, json.loads(result.stdout)


def test_a_study_directory_holds_the_experiment_database_trials_and_reports(searched):
    home, _ = searched
    study = home / "runs" / "searched-tune"
    assert sorted(p.name for p in (home / "runs").iterdir()) == ["searched-tune"]
    assert sorted(p.name for p in study.iterdir()) == ["best.yaml", "experiment.yaml", "plots",
                                                       "study.db", "study.json", "trials", "trials.csv"]
    assert sorted(p.name for p in (study / "trials").iterdir()) == ["trial-0000", "trial-0001"]
    assert sorted(p.name for p in (study / "plots").iterdir()) == ["optimization_history.png",
                                                                   "param_importances.png", "slice.png"]
    for plot in (study / "plots").iterdir():
        assert plot.read_bytes().startswith(PNG) and plot.stat().st_size > 1000
    saved = json.loads((study / "study.json").read_text())
    assert saved["space"] == SPACE and saved["seed"] == 7 and saved["sampler"] == "random"
    assert saved["metric"] == "val_accuracy" and saved["direction"] == "maximize" and saved["cnnctl"]
    assert saved["storage"] == f"sqlite:///{(study / 'study.db').resolve()}"
    assert not (study / ".storage").exists()  # written only for a --storage URL (kept 0600: it may hold a password)
    assert load_config(study / "experiment.yaml").tune.trials == 2  # the experiment as it was run, --trials applied


def test_json_prints_the_summary_with_the_best_trial(searched):
    home, summary = searched
    assert summary["finished"] == summary["target"] == 2
    assert [(t["number"], t["state"], t["epochs"]) for t in summary["trials"]] == [(0, "complete", 2),
                                                                                   (1, "complete", 2)]
    for row in summary["trials"]:
        assert set(row["params"]) == set(SPACE) and row["params"]["model.layers[0].Conv2D.kernel_size"] in ([3, 3],
                                                                                                           [5, 5])
        assert Path(row["run_dir"]) == (home / "runs" / "searched-tune" / "trials" / f"trial-{row['number']:04d}")
    top = max(t["value"] for t in summary["trials"])
    [best] = [t for t in summary["trials"] if t["number"] == summary["best"]["number"]]
    assert best["value"] == summary["best"]["value"] == top and summary["best"]["params"] == best["params"]
    assert summary["best"]["config"] == "runs/searched-tune/best.yaml"


def test_trials_csv_has_a_header_and_one_row_per_trial(searched):
    home, summary = searched
    with open(home / "runs" / "searched-tune" / "trials.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["number", "state", "val_accuracy", *SPACE, "epochs", "seconds", "run_dir"]
    assert [row[:2] for row in rows[1:]] == [["0", "complete"], ["1", "complete"]]
    for row, trial in zip(rows[1:], summary["trials"], strict=True):
        assert float(row[2]) == pytest.approx(trial["value"], abs=1e-6)
        assert json.loads(row[4]) == trial["params"]["model.layers[0].Conv2D.kernel_size"]  # a list, as JSON
        assert float(row[3]) == trial["params"]["train.optimizer.learning_rate"]
        assert row[-1] == trial["run_dir"]


def test_each_trial_is_an_ordinary_run_that_runs_lists_and_evaluate_reads(searched, cli, monkeypatch):
    home, summary = searched
    monkeypatch.chdir(home)
    trials_dir = Path("runs/searched-tune/trials")
    result = cli("runs", "--runs-dir", trials_dir, "--json")
    assert result.exit_code == 0, result.output
    listed = {run["name"]: run for run in json.loads(result.stdout)}
    assert sorted(listed) == ["trial-0000", "trial-0001"]
    assert {run["status"] for run in listed.values()} == {"completed"}
    for trial in summary["trials"]:
        run = trials_dir / f"trial-{trial['number']:04d}"
        assert listed[run.name]["best_val_accuracy"] == trial["value"]
        assert manifest(run)["tune"] == {"study": "runs/searched-tune", "trial": trial["number"], "state": "complete"}
        config = load_config(run / "config.yaml")
        assert config.tune is None and config.train.optimizer.learning_rate == \
            trial["params"]["train.optimizer.learning_rate"]
    result = cli("evaluate", trials_dir / "trial-0000", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["examples"] == 32


def test_best_yaml_trains_to_the_best_trials_metrics_exactly(searched, cli, tmp_path, monkeypatch):
    home, summary = searched
    best_yaml = home / "runs" / "searched-tune" / "best.yaml"
    config = load_config(best_yaml)
    assert config.tune is None and config.runtime.deterministic
    params = summary["best"]["params"]
    assert config.train.optimizer.learning_rate == params["train.optimizer.learning_rate"]
    assert config.model.layers[2].Dropout.rate == params["model.layers[2].Dropout.rate"]
    assert list(config.model.layers[0].Conv2D.kernel_size) == params["model.layers[0].Conv2D.kernel_size"]
    monkeypatch.chdir(tmp_path)
    result = cli("train", best_yaml, "--runs-dir", "again", "--quiet")
    assert result.exit_code == 0, result.output
    [again] = (tmp_path / "again").iterdir()
    history = json.loads((again / "history.json").read_text())
    assert max(history["val_accuracy"]) == summary["best"]["value"]
    assert metrics_rows(again) == metrics_rows(Path(summary["best"]["run_dir"]))  # every epoch's metrics, exactly


@pytest.mark.parametrize("edit, changed", [
    (lambda c: c["tune"]["space"]["model.layers[2].Dropout.rate"].update(uniform=[0.0, 0.6]), "space"),
    (lambda c: c["tune"]["space"].pop("train.optimizer.learning_rate"), "space"),
    (lambda c: c["tune"].update(seed=8), "seed"),
    (lambda c: c["tune"].update(metric="val_loss"), "metric"),
], ids=["a range", "a key less", "seed", "metric"])
def test_a_study_refuses_to_continue_with_another_space_seed_or_metric(searched, cli, monkeypatch, edit, changed):
    home, _ = searched
    monkeypatch.chdir(home)
    config = experiment(trials=5)
    edit(config)
    write_config(home / "changed.yaml", config)  # the same name: the same study directory
    before = sorted(p.name for p in (home / "runs" / "searched-tune" / "trials").iterdir())
    result = cli("tune", "changed.yaml", "--trials", "3")
    assert result.exit_code == 2, result.output
    message = stderr_of(result)
    assert f"was created with another {changed}" in message and "Traceback" not in result.output
    if changed == "space":
        assert "0.6" in message or "learning_rate" in message  # what changed, quoted
    assert "hint: start a new study" in message
    assert sorted(p.name for p in (home / "runs" / "searched-tune" / "trials").iterdir()) == before


def test_the_table_of_a_finished_study_is_printed_again_without_a_trial(searched, cli, monkeypatch):
    home, summary = searched
    monkeypatch.chdir(home)
    result = cli("tune", "cfg.yaml", "--trials", "2")
    assert result.exit_code == 0, result.output
    assert "Study runs/searched-tune: 2 of 2 trials finished (maximize val_accuracy)" in result.stdout
    assert f"best       trial {summary['best']['number']}: val_accuracy {summary['best']['value']:.4f}" in result.stdout
    assert "best.yaml  runs/searched-tune/best.yaml  (cnnctl train runs/searched-tune/best.yaml)" in result.stdout
    assert len(optuna_trials(home / "runs" / "searched-tune")) == 2


# ---------------------------------------------------------------- continuing a study


def test_the_same_command_again_continues_the_study_and_resume_does_too(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path / "cfg.yaml", experiment("more", epochs=1))
    study = tmp_path / "runs" / "more-tune"
    assert cli("tune", "cfg.yaml", "--trials", "1").exit_code == 0
    first = {t.number: t.params for t in optuna_trials(study)}

    result = cli("tune", "cfg.yaml", "--trials", "2", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["finished"], summary["target"]) == (2, 2)
    trials = optuna_trials(study)
    assert [t.number for t in counted(trials)] == [0, 1] and len(trials) == 2
    assert {t.number: t.params for t in trials if t.number < 1} == first  # nothing done before is lost or redone
    assert sorted(p.name for p in (study / "trials").iterdir()) == ["trial-0000", "trial-0001"]

    result = cli("tune", "--resume", study, "--trials", "3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["finished"] == 3
    assert [t.number for t in counted(optuna_trials(study))] == [0, 1, 2]
    assert sorted(p.name for p in (study / "trials").iterdir()) == ["trial-0000", "trial-0001", "trial-0002"]
    with open(study / "trials.csv", newline="") as handle:
        assert [row["number"] for row in csv.DictReader(handle)] == ["0", "1", "2"]


def test_tune_refuses_a_directory_that_is_not_a_study_and_config_with_resume(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path / "cfg.yaml", experiment("taken"))
    (tmp_path / "runs" / "taken-tune").mkdir(parents=True)
    (tmp_path / "runs" / "taken-tune" / "notes.txt").write_text("mine\n")
    result = cli("tune", "cfg.yaml")
    assert result.exit_code == 2 and "exists and is not a study directory" in stderr_of(result)
    assert sorted(p.name for p in (tmp_path / "runs" / "taken-tune").iterdir()) == ["notes.txt"]  # never overwritten
    result = cli("tune", "--resume", tmp_path / "runs" / "taken-tune")
    assert result.exit_code == 2 and "not a study directory (no study.json)" in stderr_of(result)
    result = cli("tune", "cfg.yaml", "--resume", tmp_path / "runs" / "taken-tune")
    assert result.exit_code == 2 and "not both" in stderr_of(result)
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- seeded samplers (no training: a stand-in objective)


@pytest.fixture
def quick_trials(monkeypatch):
    """Trials that draw their values and score them at once: the sampler is what is tested. (Optuna collects garbage
    after each trial, which with TensorFlow loaded takes longer than such a trial: not here.)"""
    import gc

    def run_trial(study, optuna_study, trial, log, stop):
        params = space.suggest(trial, study.tune.space)
        space.trial_config(study.raw, params, f"trial {trial.number}")  # a valid config, as a real trial makes
        kernel = params.get("model.layers[0].Conv2D.kernel_size", [3, 3])[0]
        rate = params["model.layers[2].Dropout.rate"]
        return -abs(params["train.optimizer.learning_rate"] - 0.01) - abs(rate - 0.2) - 0.01 * kernel

    monkeypatch.setattr(tune, "_run_trial", run_trial)
    monkeypatch.setattr(gc, "collect", lambda generation=2: 0)


def proposed(tmp_path: Path, name: str, sampler: str, trials: int = 3, seed: int = 11) -> list[dict]:
    path = write_config(tmp_path / f"{name}.yaml", experiment(name, trials=trials, sampler=sampler, seed=seed))
    study = tune.start(path, runs_dir=tmp_path / f"runs-{name}")
    tune.run(study)
    return [t.params for t in sorted(optuna_trials(study.directory), key=lambda t: t.number)]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_the_same_seed_proposes_the_same_trials(quick_trials, tmp_path, sampler):
    """tpe: trials 0 and 1 are its random start-up trials (tune.trials // 3, at least 2), trial 2 is its own."""
    first = proposed(tmp_path, "one", sampler)
    assert len(first) == 3 and len({json.dumps(p, sort_keys=True) for p in first}) == 3
    assert proposed(tmp_path, "two", sampler) == first
    assert proposed(tmp_path, "three", sampler, seed=12) != first


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_continued_study_does_not_propose_its_first_trials_again(quick_trials, tmp_path, sampler):
    path = write_config(tmp_path / "cfg.yaml", experiment("again", trials=2, sampler=sampler))
    tune.run(tune.start(path, runs_dir=tmp_path / "runs"))
    tune.run(tune.start(path, runs_dir=tmp_path / "runs", trials=9))  # the same command again, --trials 9
    trials = sorted(optuna_trials(tmp_path / "runs" / "again-tune"), key=lambda t: t.number)
    assert len(trials) == 9
    assert trials[2].params not in (trials[0].params, trials[1].params)


def test_a_study_refuses_to_continue_with_another_experiment(quick_trials, tmp_path):
    path = write_config(tmp_path / "cfg.yaml", experiment("edited", trials=1))
    tune.run(tune.start(path, runs_dir=tmp_path / "runs"))
    write_config(path, experiment("edited", trials=1, epochs=3))
    with pytest.raises(studies.TuneError, match="train"):
        tune.run(tune.start(path, runs_dir=tmp_path / "runs", trials=2))


def test_a_moved_study_directory_continues_in_its_own_database(quick_trials, tmp_path):
    path = write_config(tmp_path / "cfg.yaml", experiment("moved", trials=1))
    tune.run(tune.start(path, runs_dir=tmp_path / "old"))
    shutil.move(tmp_path / "old", tmp_path / "new")
    study = tune.start(None, resume_dir=tmp_path / "new" / "moved-tune", trials=2)
    tune.run(study)
    assert len(optuna_trials(tmp_path / "new" / "moved-tune")) == 2
    assert not (tmp_path / "old").exists()


def test_the_retry_of_a_dead_workers_trial_runs_before_the_study_ends(quick_trials, tmp_path, monkeypatch):
    """The state a kill -9 leaves (a RUNNING trial whose heartbeat will go stale), made in-process with a short
    grace period; then the same command again, at once."""
    monkeypatch.setattr(tune, "GRACE_SECONDS", 2)
    monkeypatch.setattr(tune, "HEARTBEAT_SECONDS", 1)
    path = write_config(tmp_path / "cfg.yaml", experiment("dead", trials=1))
    study = tune.start(path, runs_dir=tmp_path / "runs")
    tune.run(study)
    optuna_study = tune.open_study(study)
    dead = optuna_study.ask()  # trial 1 of a worker that dies: its values drawn, its heartbeat fresh
    killed_params = space.suggest(dead, study.tune.space)
    optuna_study._storage.record_heartbeat(dead._trial_id)

    tune.run(tune.start(path, runs_dir=tmp_path / "runs", trials=2))
    trials = sorted(optuna_trials(study.directory), key=lambda t: t.number)
    assert trials[1].state.name == "FAIL"
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert retry.state.name == "COMPLETE" and tune.trial_row(retry)["params"] == killed_params
    assert [t.state.name for t in trials if t.state.name in ("WAITING", "RUNNING")] == []


def test_a_trial_stopped_by_ctrl_c_is_tried_again_with_the_same_values(tmp_path, monkeypatch):
    from cnnctl import train
    from cnnctl.errors import Interrupted

    def stopped(config, **kwargs):
        raise Interrupted("stopped by signal 2", run_dir=kwargs["runs_dir"], signal_number=2)

    monkeypatch.setattr(train, "run", stopped)
    path = write_config(tmp_path / "cfg.yaml", experiment("ctrlc", trials=2))
    study = tune.start(path, runs_dir=tmp_path / "runs")
    with pytest.raises(Interrupted):
        tune.run(study)
    first, waiting = sorted(optuna_trials(study.directory), key=lambda t: t.number)
    assert (first.state.name, waiting.state.name) == ("FAIL", "WAITING")
    retry = tune.open_study(study).ask()  # what the next `cnnctl tune` draws first
    assert retry.user_attrs.get("retry_of") == 0
    assert space.suggest(retry, study.tune.space) == tune.trial_row(first)["params"]


# ---------------------------------------------------------------- pruning


class PruneFromEpochOne:
    """An Optuna pruner that stops every trial at its first reported epoch."""

    def __new__(cls):
        import optuna

        class Pruner(optuna.pruners.BasePruner):
            def prune(self, study, trial) -> bool:
                return trial.last_step is not None and trial.last_step >= 1

        return Pruner()


def test_a_pruned_trial_keeps_its_run_counts_toward_the_trials_and_is_marked(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tune, "_pruner", lambda study: PruneFromEpochOne())
    write_config(tmp_path / "cfg.yaml", experiment("pruned", epochs=3))
    result = cli("tune", "cfg.yaml", "--trials", "1", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [(t["number"], t["state"], t["epochs"]) for t in summary["trials"]] == [(0, "pruned", 1)]
    assert (summary["finished"], summary["target"], summary["best"]) == (1, 1, None)  # counted; no complete trial
    study = tmp_path / "runs" / "pruned-tune"
    assert [t.state.name for t in optuna_trials(study)] == ["PRUNED"]  # and no further trial was started
    run = study / "trials" / "trial-0000"
    assert [row["epoch"] for row in metrics_rows(run)] == ["1"]  # stopped after the epoch it was pruned at
    assert manifest(run)["tune"]["state"] == "pruned" and manifest(run)["tune"]["trial"] == 0
    assert manifest(run)["epochs_run"] == 1 and (run / "checkpoints" / "best.keras").is_file()
    assert not (study / "best.yaml").exists()
    with open(study / "trials.csv", newline="") as handle:
        assert [(row["state"], row["epochs"]) for row in csv.DictReader(handle)] == [("pruned", "1")]


def test_a_trial_whose_run_fails_is_recorded_and_the_study_goes_on(cli, tmp_path, monkeypatch):
    from cnnctl import train
    from cnnctl.results import TrainResult

    monkeypatch.chdir(tmp_path)
    real, calls = train.run, []

    def run(config, **kwargs):
        calls.append(kwargs["run_name"])
        if len(calls) > 1:
            return real(config, **kwargs)
        run_dir = Path(kwargs["runs_dir"]) / kwargs["run_name"]  # the first trial's loss became NaN
        run_dir.mkdir(parents=True)
        return TrainResult(run_dir=run_dir, status="failed", epochs_run=1, best_epoch=None, wall_seconds=0.1,
                           images_per_second=None, evaluation=None, history={}, message="loss became NaN at epoch 1")

    monkeypatch.setattr(train, "run", run)
    write_config(tmp_path / "cfg.yaml", experiment("fails", epochs=1))
    result = cli("tune", "cfg.yaml", "--trials", "1", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [(t["number"], t["state"]) for t in summary["trials"]] == [(0, "fail"), (1, "complete")]
    assert summary["finished"] == 1 and summary["best"]["number"] == 1


# ---------------------------------------------------------------- --smoke


def test_smoke_runs_two_trials_of_the_mnist_search_without_data(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNCTL_OFFLINE", "1")
    result = cli("tune", CONFIGS / "mnist_tune.yaml", "--smoke", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["study"] == "runs/mnist-search-smoke-tune" and summary["finished"] == summary["target"] == 2
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"]
    assert (tmp_path / "runs" / "mnist-search-smoke-tune" / "best.yaml").is_file()
    assert all(manifest(Path(t["run_dir"]))["smoke"] for t in summary["trials"])


# ---------------------------------------------------------------- real processes: kill -9, workers, PostgreSQL, SIGINT

LONG = {"examples": 2000, "epochs": 3}  # a trial of a few seconds: a kill or a Ctrl-C lands inside one


def cnnctl(*args, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CNNCTL_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "cnnctl", *map(str, args)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until `path` exists (a named point in a trial), while `proc` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"cnnctl ended ({proc.returncode}) before {path} existed: "
                                 f"{proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear in {timeout} s")


def assert_study_of(trials: list, target: int) -> None:
    """`target` complete-or-pruned trials, no trial number twice, none left running."""
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert len(counted(trials)) == target, [(t.number, t.state.name) for t in trials]
    assert not [t.number for t in trials if t.state.name == "RUNNING"]


@pytest.mark.slow
def test_a_study_killed_mid_trial_finishes_with_the_killed_trial_failed_and_retried(tmp_path):
    write_config(tmp_path / "cfg.yaml", experiment("killed", trials=3, **LONG))
    study = tmp_path / "runs" / "killed-tune"
    proc = cnnctl("tune", "cfg.yaml", "--trials", "3", cwd=tmp_path)
    wait_for(study / "trials" / "trial-0001" / "metrics.csv", proc)  # trial 1 has done 1 of its 3 epochs
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [t.state.name for t in sorted(optuna_trials(study), key=lambda t: t.number)] == ["COMPLETE", "RUNNING"]

    # The same command again, at once: trial 1 is failed once its heartbeat is GRACE_SECONDS old.
    code, out, err = finish(cnnctl("tune", "cfg.yaml", "--trials", "3", "--json", cwd=tmp_path),
                            timeout=240 + tune.GRACE_SECONDS)
    assert code == 0, err
    trials = sorted(optuna_trials(study), key=lambda t: t.number)
    assert_study_of(trials, 3)
    assert trials[0].state.name == "COMPLETE" and trials[1].state.name == "FAIL"
    later = [tune.trial_row(t)["params"] for t in counted(trials) if t.number > 1]
    assert tune.trial_row(trials[1])["params"] in later  # the killed trial's values were tried again
    summary = json.loads(out)
    shown = [t.number for t in trials if not t.user_attrs.get("skipped")]  # a place given up to the retry: not shown
    assert summary["finished"] == 3 and [r["number"] for r in summary["trials"]] == shown
    assert manifest(study / "trials" / "trial-0001")["status"] == "running"  # killed: its run says so, untouched


def sqlite_study_names(database: Path) -> list[str] | None:
    """The study names in an SQLite study database, read without creating it; None when there is none yet."""
    import sqlite3

    if not database.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        try:
            return [name for (name,) in connection.execute("SELECT study_name FROM studies")]
        except sqlite3.OperationalError:  # no tables yet
            return None


def test_a_study_opened_while_another_process_creates_its_tables_opens(tmp_path, monkeypatch):
    from optuna.storages._rdb import models

    metadata = models.BaseModel.metadata
    real, lost = metadata.create_all, []

    def create_all(bind, *args, **kwargs):
        if lost:
            return real(bind, *args, **kwargs)
        lost.append(True)  # the first time: another process creates the tables after this one looked for them
        real(bind)
        return real(bind, checkfirst=False)

    monkeypatch.setattr(metadata, "create_all", create_all)
    path = write_config(tmp_path / "cfg.yaml", experiment("race", trials=2))
    study = tune.start(path, runs_dir=tmp_path / "runs")
    tune.open_study(study)
    assert lost and sqlite_study_names(study.directory / "study.db") == ["race"]


def test_workers_are_started_on_a_study_that_already_exists(tmp_path, monkeypatch):
    """The processes are stand-ins that note what the database holds when each is started."""
    path = write_config(tmp_path / "cfg.yaml", experiment("race", trials=2))
    study = tune.start(path, runs_dir=tmp_path / "runs")
    seen = []

    class Worker:
        pid, returncode = 4242, 0

        def __init__(self, command, **kwargs):
            seen.append(sqlite_study_names(study.directory / "study.db"))

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Worker)
    assert tune.run_workers(study, 2, timeout_minutes=None, log=lambda message: None) == 0
    assert seen == [["race"], ["race"]]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """(study directory, exit code, stdout, stderr) of `cnnctl tune cfg.yaml --workers 2 --json` on a study that exists
    (a first `cnnctl tune` made it; a fresh one is the xfail test above)."""
    home = tmp_path_factory.mktemp("workers")
    path = write_config(home / "cfg.yaml", experiment("pair", trials=4, examples=400))
    tune.open_study(tune.start(path, runs_dir=home / "runs"))
    code, out, err = finish(cnnctl("tune", "cfg.yaml", "--workers", "2", "--json", cwd=home))
    return home / "runs" / "pair-tune", code, out, err


@pytest.mark.slow
def test_two_workers_on_sqlite_share_one_study(two_workers):
    study, code, _, err = two_workers
    assert code == 0, err
    trials = optuna_trials(study)
    assert_study_of(trials, 4)
    pids = {manifest(Path(t.user_attrs["run_dir"]))["pid"] for t in counted(trials)}
    assert len(pids) == 2  # both workers did trials
    assert sorted(p.name for p in (study / "trials").iterdir()) == [f"trial-{t.number:04d}" for t in counted(trials)]
    with open(study / "trials.csv", newline="") as handle:
        assert sorted(int(row["number"]) for row in csv.DictReader(handle)) == [t.number for t in counted(trials)]
    assert (study / "best.yaml").is_file()


@pytest.mark.slow
def test_two_workers_with_json_print_only_the_summary_on_stdout(two_workers):
    _, code, out, _ = two_workers
    assert code == 0
    assert json.loads(out)["finished"] == 4


# ---------------------------------------------------------------- a real PostgreSQL server, started here


def _postgres_binaries() -> Path | None:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name)
                      if p.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_postgres_user(root: Path) -> list[str] | None:
    """The prefix that runs a command as a user PostgreSQL accepts: [] when not root; as root, runuser to the
    postgres user (or nobody), inside a private mount namespace with its own /dev/null where the machine's cannot be
    written by that user (initdb needs it); None when there is no such user or way."""
    if os.geteuid() != 0:
        return []
    user = next((name for name in ("postgres", "nobody") if _has_user(name)), None)
    runuser = shutil.which("runuser")
    if user is None or runuser is None:
        return None
    prefix = [runuser, "-u", user, "--"]
    if _can_write_dev_null(prefix):
        return prefix
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    null = root / "null"
    try:
        os.mknod(null, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, as /dev/null is
        null.chmod(0o666)
    except OSError:
        return None
    prefix = [unshare, "-m", "sh", "-c", 'mount --bind "$0" /dev/null && exec "$@"', str(null), *prefix]
    return prefix if _can_write_dev_null(prefix) else None


def _can_write_dev_null(prefix: list[str]) -> bool:
    done = subprocess.run([*prefix, "sh", "-c", ": > /dev/null"], capture_output=True, timeout=30)
    return done.returncode == 0


@pytest.fixture(scope="module")
def postgres():
    """postgresql+psycopg2://postgres@127.0.0.1:PORT/tune on a server in a temporary directory, stopped at the end.
    PostgreSQL refuses to run as root: as root, its programs run as the postgres user (or nobody)."""
    import tempfile

    binaries = _postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; "
                    "Debian: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="cnnctl-pg-"))  # not under pytest's root-only temporary directory
    try:
        yield from _server(binaries, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _server(binaries: Path, root: Path):
    import pwd

    as_user = _as_postgres_user(root)
    if as_user is None:
        pytest.skip("running as root, and no postgres/nobody user (with runuser) that can run PostgreSQL's programs "
                    "(they need a writable /dev/null)")
    if as_user:
        entry = pwd.getpwnam(as_user[as_user.index("-u") + 1])
        os.chown(root, entry.pw_uid, entry.pw_gid)
    root.chmod(0o755)
    port = _free_port()

    def run(*command):
        done = subprocess.run([*as_user, *map(str, command)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command[0]}: {done.stdout}{done.stderr}"

    run(binaries / "initdb", "-D", root / "data", "-U", "postgres", "-A", "trust", "--no-sync")
    try:
        run(binaries / "pg_ctl", "-D", root / "data", "-l", root / "data" / "server.log", "-w", "-t", "60",
            "-o", f"-k {root / 'data'} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE tune")
        connection.close()
        # psycopg2, the driver the postgres extra installs, named: see the xfail test of a plain postgresql:// URL
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/tune"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_a_plain_postgresql_url_uses_the_installed_driver(cli, tmp_path, monkeypatch):
    pytest.importorskip("psycopg2")
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path / "cfg.yaml", experiment("remote"))
    port = _free_port()  # nothing listens there: the driver is loaded, then the connection is refused
    result = cli("tune", "cfg.yaml", "--storage", f"postgresql://postgres@127.0.0.1:{port}/tune")
    assert result.exit_code == 2
    message = stderr_of(result)
    assert "cannot open the study" in message and "ImportError" not in message, message
    assert "refused" in message, message


@pytest.fixture(scope="module")
def two_machines(postgres, tmp_path_factory):
    """Two `cnnctl tune --storage postgresql://...` processes running at once, each with its own runs directory (two
    machines sharing one study); (home, storage URL, [(exit code, stdout, stderr)] of each)."""
    home = tmp_path_factory.mktemp("machines")
    write_config(home / "cfg.yaml", experiment("shared", trials=4, examples=1000))
    first = cnnctl("tune", "cfg.yaml", "--storage", postgres, "--runs-dir", "machine-1", "--json", cwd=home)
    # The second joins once the first has made the study and started a trial: started at the very same moment, one
    # of them can lose the race to create the tables (the xfail test above).
    wait_for(home / "machine-1" / "shared-tune" / "trials" / "trial-0000", first)
    second = cnnctl("tune", "cfg.yaml", "--storage", postgres, "--runs-dir", "machine-2", "--json", cwd=home)
    return home, postgres, [finish(first), finish(second)]


@pytest.mark.slow
def test_two_machines_share_one_study_on_postgresql(two_machines):
    import optuna

    home, url, outcomes = two_machines
    assert [code for code, _, _ in outcomes] == [0, 0], [err[-2000:] for _, _, err in outcomes]
    trials = optuna.load_study(study_name="shared", storage=url).get_trials(deepcopy=False)
    assert_study_of(trials, 4)
    machines = {Path(t.user_attrs["run_dir"]).parent.parent.parent.name for t in counted(trials)}
    assert machines == {"machine-1", "machine-2"}  # both did trials
    for n in (1, 2):
        study = home / f"machine-{n}" / "shared-tune"
        saved = json.loads((study / "study.json").read_text())
        assert saved["storage"] == url and not (study / "study.db").exists()
        assert json.loads(outcomes[n - 1][1])["finished"] == 4  # each machine's summary: the whole study
        mine = [t.number for t in counted(trials) if f"machine-{n}" in t.user_attrs["run_dir"]]
        assert sorted(p.name for p in (study / "trials").iterdir()) == [f"trial-{number:04d}" for number in mine]


@pytest.mark.slow
def test_a_machine_without_the_best_trials_run_still_writes_its_reports(two_machines, tmp_path):
    import optuna

    home, url, _ = two_machines
    best = optuna.load_study(study_name="shared", storage=url).best_trial
    best_run = Path(best.user_attrs["run_dir"])
    machine = best_run.parent.parent.parent
    other = home / ("machine-2" if machine.name == "machine-1" else "machine-1")
    hidden = tmp_path / "elsewhere"
    shutil.move(machine, hidden)  # the best trial's run is on the other machine
    try:
        code, out, err = finish(cnnctl("tune", "--resume", other / "shared-tune", "--json", cwd=home))
    finally:
        shutil.move(hidden, machine)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert json.loads(out)["best"]["number"] == best.number


# ---------------------------------------------------------------- Ctrl-C


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A `cnnctl tune` stopped by SIGINT inside trial 1, then run again: (study directory, the trials when it stopped,
    (exit code, stdout, stderr) of the stopped run and of the run again)."""
    home = tmp_path_factory.mktemp("sigint")
    floats = {key: value for key, value in SPACE.items() if "choice" not in value}  # a choice: the xfail test above
    write_config(home / "cfg.yaml", experiment("stopped", trials=3, search=floats, **LONG))
    study = home / "runs" / "stopped-tune"
    proc = cnnctl("tune", "cfg.yaml", cwd=home)
    wait_for(study / "trials" / "trial-0001" / "metrics.csv", proc)  # inside trial 1
    proc.send_signal(signal.SIGINT)
    stopped = finish(proc, timeout=120)
    when_stopped = sorted(optuna_trials(study), key=lambda t: t.number)
    again = finish(cnnctl("tune", "cfg.yaml", "--json", cwd=home))
    return study, when_stopped, stopped, again


@pytest.mark.slow
def test_sigint_stops_with_the_table_and_the_resume_hint_and_the_study_finishes_later(interrupted):
    study, when_stopped, (code, out, err), (code_again, out_again, err_again) = interrupted
    assert code == 130, err
    assert "Study runs/stopped-tune: 1 of 3 trials finished (maximize val_accuracy)" in out
    assert "hint: continue with: cnnctl tune --resume runs/stopped-tune" in err
    assert [t.state.name for t in when_stopped[:2]] == ["COMPLETE", "FAIL"]

    assert code_again == 0, err_again
    trials = sorted(optuna_trials(study), key=lambda t: t.number)
    assert_study_of(trials, 3)
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert retry.state.name == "COMPLETE" and retry.params == when_stopped[1].params  # the same values, tried again
    assert json.loads(out_again)["finished"] == 3


@pytest.mark.slow
def test_sigint_prints_no_traceback(interrupted):
    _, _, (code, _, err), _ = interrupted
    assert code == 130
    assert "Traceback" not in err, err
