"""Processes that start at the same moment on one MLflow store.

- A new SQLite file opened by several processes at once: MLflow creates and migrates its schema on first use, and
  without quadrl's file lock (experiments.tracking.store_lock) most of them crashed (measured here: 5 of 6 with
  ``duplicate column name: step``). Every one must now log its run.
- 16 real training jobs at once through ``hydra/launcher=local`` (``max_parallel=16``) on a fresh SQLite store
  and against ``experiments.server``: every run FINISHED under the one parent, in the named experiment, with
  every step's metrics, and nothing in the Default experiment (slow).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO
from tests.experiments.test_grid_launchers import free_port, output_of, run_cli, tiny_overrides, train_cli

N_PROCESSES = 6
JOB_SCRIPT = """
import sys, time
from pathlib import Path
from experiments.tracking import Tracker

uri, rendezvous, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
(rendezvous / f"ready-{me}").touch()
while not (rendezvous / "go").exists():  # every process imported and waiting: start together
    time.sleep(0.001)
tracker = Tracker(uri, "together")
tracker.start(None, f"process-{me}", {"me": me}, {"quadrl.process": me})
for step in range(3):
    tracker.log_metrics({"train/value": float(step) + int(me) / 10}, step)
tracker.finish("FINISHED")
"""


def test_a_new_sqlite_store_opened_by_several_processes_at_once(tmp_path):
    db = tmp_path / "new.db"
    uri = f"sqlite:///{db}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", JOB_SCRIPT, uri, str(tmp_path), str(i)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(N_PROCESSES)
    ]
    deadline = time.monotonic() + 180
    while len(list(tmp_path.glob("ready-*"))) < N_PROCESSES:
        assert time.monotonic() < deadline, "the processes did not get ready"
        assert all(p.poll() is None for p in processes), [p.communicate()[0] for p in processes]
        time.sleep(0.05)
    assert not db.exists()
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=180)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * N_PROCESSES, "\n".join(outputs)
    assert (tmp_path / "new.db.lock").is_file()
    client = MlflowClient(uri)
    experiments = client.search_experiments()
    assert sorted(e.name for e in experiments) == ["Default", "together"]
    (together,) = [e for e in experiments if e.name == "together"]
    runs = client.search_runs([together.experiment_id])
    assert sorted(r.data.tags["quadrl.process"] for r in runs) == [str(i) for i in range(N_PROCESSES)]
    for run in runs:
        me = int(run.data.tags["quadrl.process"])
        history = client.get_metric_history(run.info.run_id, "train/value")
        assert run.info.status == "FINISHED" and sorted((m.step, m.value) for m in history) == [
            (step, step + me / 10) for step in range(3)
        ]
    assert not client.search_runs(["0"]), "runs misfiled into the Default experiment"


STEPS = 3
N_JOBS = 16


def run_16_jobs(tmp_path: Path, model_dir: Path, uri: str) -> float:
    """16 training jobs at once under one sweep; returns the sweep's wall time in seconds."""
    cmd = train_cli(
        "-m",
        f"seed=range({N_JOBS})",
        *tiny_overrides(model_dir, steps=STEPS),
        "eval.every=1",
        "tracking.experiment=sixteen",
        f"tracking.uri={uri}",
        "hydra/launcher=local",
        f"hydra.launcher.max_parallel={N_JOBS}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    started = time.perf_counter()
    proc = run_cli(cmd, tmp_path, timeout=1200)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, output_of(proc)
    assert f"[sweep] 0/{N_JOBS} jobs done, {N_JOBS} running" in proc.stdout, output_of(proc)
    assert f"sweep: {N_JOBS} jobs, {N_JOBS} finished, 0 failed" in proc.stdout, output_of(proc)
    return wall


def check_16_runs(uri: str) -> None:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sixteen")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("quadrl.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == N_JOBS + 1 and len(children) == N_JOBS
    assert sorted(int(r.data.params["seed"]) for r in children) == list(range(N_JOBS))
    for run in children:
        assert run.info.status == "FINISHED", run.info.run_name
        for key, steps in (("train/reward_mean", range(STEPS)), ("eval/accuracy", range(STEPS + 1))):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(steps), (run.info.run_name, key)
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/finished"] == N_JOBS
    assert not client.search_runs(["0"]), "runs misfiled into the Default experiment"


@pytest.mark.slow
def test_16_training_jobs_at_once_on_a_fresh_sqlite_store(tmp_path, tiny_model_dir, capsys):
    db = tmp_path / "fresh.db"
    uri = f"sqlite:///{db}"
    wall = run_16_jobs(tmp_path, tiny_model_dir, uri)
    check_16_runs(uri)
    with capsys.disabled():
        print(f"\n[16 jobs, fresh SQLite] sweep wall time {wall:.0f} s")


@pytest.mark.slow
def test_16_training_jobs_at_once_against_the_tracking_server(tmp_path, tiny_model_dir, capsys):
    port = free_port()
    server = [
        sys.executable,
        "-m",
        "experiments.server",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
    ]
    started = run_cli(server, tmp_path, timeout=180)
    assert started.returncode == 0, output_of(started)
    uri = f"http://127.0.0.1:{port}"
    try:
        wall = run_16_jobs(tmp_path, tiny_model_dir, uri)
        check_16_runs(uri)
    finally:
        stopped = run_cli([*server, "--stop"], tmp_path, timeout=120)
    assert stopped.returncode == 0, output_of(stopped)
    with capsys.disabled():
        print(f"\n[16 jobs, tracking server] sweep wall time {wall:.0f} s")
