"""16 jobs at once against one MLflow store: a fresh SQLite file, and a tracking server started with
``python -m experiments.server``. Every run must land in the named experiment, under the sweep's parent, with
every value it logged (each metric at each step, every param, its tags and its config artifact).

Sixteen real training jobs cost ~170 CPU-seconds per store here (torch + transformers start-up dominates: ~85 s
of wall time on 2 cores, twice), too much for the suite. So each job is :func:`tracking_job`: a Hydra multirun
through the project's own sweep callback (store, experiment and parent run created once, before the fan-out),
its ``local`` launcher (``max_parallel=16``: all at once) and :class:`experiments.tracking.Tracker` (the class
``experiments.train`` logs with), doing what a training run does with MLflow, without the model: create the
run with override tags under the parent, log params (in batches of 100), the config artifact, one
``log_batch`` per step, then finish. The values are a function of (seed, step, key), so every one can be
checked. Real training jobs under the same callback and launcher are covered by tests/experiments/test_grid_slurm.py.

Run as a Hydra app by the tests: ``python -m tests.experiments.test_mlflow_concurrency -m seed=0,1,... tracking.uri=...``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.experiments.test_grid_launchers import all_runs, free_port, metric_history, output_of, run_cli

N_JOBS = 16
STEPS = 25
N_METRICS = 24
N_PARAMS = 150  # > Tracker.MAX_PARAMS_PER_BATCH: the params go in two batches


def expected_metrics(seed: int, step: int) -> dict[str, float]:
    return {f"train/m{k:02d}": seed * 1000.0 + step + k / 128 for k in range(N_METRICS)}


def tracking_job(cfg) -> int:
    """One job: what experiments.train.run does with MLflow, minus the model."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from experiments.sweep import parent_run_id
    from experiments.tracking import Tracker, flatten

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.enabled)
    tags = {"quadrl.overrides": json.dumps(overrides), "mlflow.parentRunId": parent_run_id(hc.sweep.dir)}
    for override in overrides:
        key, _, value = override.partition("=")
        tags[f"override.{key}"] = value
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker.start(None, f"job-s{cfg.seed}", flatten(resolved), tags)
    tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    for step in range(STEPS):
        tracker.log_metrics(expected_metrics(int(cfg.seed), step), step)
    tracker.finish("FINISHED")
    return int(cfg.seed)


def _app() -> None:
    import hydra
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(
        name="concurrency_job",
        node={
            "seed": 0,
            "params": {f"p{i:03d}": i for i in range(N_PARAMS)},
            "tracking": {"enabled": True, "uri": "sqlite:///mlflow.db", "experiment": "concurrency"},
            "hydra": {"callbacks": {"sweep_tracking": {"_target_": "experiments.sweep.SweepTracking"}}},
        },
    )
    hydra.main(version_base=None, config_name="concurrency_job")(tracking_job)()


def run_grid(tmp_path: Path, uri: str) -> None:
    seeds = ",".join(str(s) for s in range(N_JOBS))
    cmd = [
        sys.executable,
        "-m",
        "tests.experiments.test_mlflow_concurrency",
        "-m",
        f"seed={seeds}",
        f"hydra.searchpath=[file://{REPO / 'conf'}]",  # conf/hydra/launcher/local.yaml
        "hydra/launcher=local",
        f"hydra.launcher.max_parallel={N_JOBS}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"tracking.uri={uri}",
    ]
    proc = run_cli(cmd, tmp_path, timeout=300, env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, output_of(proc)
    assert f"sweep: {N_JOBS} jobs, {N_JOBS} finished, 0 failed" in proc.stdout, output_of(proc)
    assert "sweep efficiency " in proc.stdout, output_of(proc)
    # the launcher had all 16 out at once (with max_parallel=2 it would report "2 running")
    assert f"[sweep] 0/{N_JOBS} jobs done, {N_JOBS} running" in proc.stdout, output_of(proc)


def check_runs(uri: str, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("concurrency")
    assert experiment is not None
    runs = all_runs(client)
    parents = [r for r in runs if r.data.tags.get("quadrl.role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert len(runs) == N_JOBS + 1, "a run outside the sweep, or a duplicate"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["override.seed"]) for r in children) == list(range(N_JOBS))
    for run in children:
        seed = int(run.data.tags["override.seed"])
        assert run.info.experiment_id == experiment.experiment_id
        assert run.info.status == "FINISHED"
        assert json.loads(run.data.tags["quadrl.overrides"])[0] == f"seed={seed}"
        want_params = {f"params.p{i:03d}": str(i) for i in range(N_PARAMS)}
        want_params.update({"seed": str(seed), "tracking.uri": uri, "tracking.experiment": "concurrency"})
        assert {k: v for k, v in run.data.params.items() if k != "tracking.enabled"} == want_params
        assert sorted(run.data.metrics) == sorted(expected_metrics(seed, 0))
        histories = {key: metric_history(client, run.info.run_id, key) for key in run.data.metrics}
        for step in range(STEPS):
            want = expected_metrics(seed, step)
            got = {key: histories[key].get(step) for key in want}
            assert got == want, (seed, step)
        for key, history in histories.items():
            assert sorted(history) == list(range(STEPS)), key
            assert len(client.get_metric_history(run.info.run_id, key)) == STEPS, "a value logged twice"
        config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "dl" / str(seed)))
        assert f"seed: {seed}" in Path(config).read_text()
    parent = client.get_run(parent.info.run_id)
    assert parent.data.metrics["sweep/finished"] == N_JOBS
    # all jobs ran at once: the launcher's ideal (sum of job walls / slots) is at most the wall time
    assert 0 < parent.data.metrics["sweep/efficiency"] <= 1.0
    assert parent.data.metrics["sweep/ideal_s"] <= parent.data.metrics["sweep/wall_s"]
    assert parent.info.status == "FINISHED"
    assert not client.search_runs(["0"]), "runs misfiled into the Default experiment"


@pytest.mark.slow
def test_16_concurrent_jobs_fresh_sqlite(tmp_path):
    db = tmp_path / "fresh.db"
    assert not db.exists()
    uri = f"sqlite:///{db}"
    run_grid(tmp_path, uri)
    check_runs(uri, tmp_path)


def _listening(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":
                found.add(address)
    return found


@pytest.mark.slow
def test_16_concurrent_jobs_tracking_server(tmp_path):
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
    pid = None
    try:
        pid = int((tmp_path / "mlflow-server.pid").read_text())
        assert f"mlflow server: {uri} (pid {pid}," in started.stdout
        assert _listening(port) == {"0100007F"}, "not bound to 127.0.0.1 only"
        again = run_cli(server, tmp_path, timeout=60)  # idempotent: finds the running one
        assert again.returncode == 0 and f"already running: {uri} (pid {pid}" in again.stdout, output_of(
            again
        )

        run_grid(tmp_path, uri)
        check_runs(uri, tmp_path)
        stored = list((tmp_path / "artifacts").rglob("config.yaml"))
        assert len(stored) == N_JOBS, "artifacts did not go through the server to --artifacts-destination"
    finally:
        stopped = run_cli([*server, "--stop"], tmp_path, timeout=120)
    assert stopped.returncode == 0, output_of(stopped)
    assert f"stopped (pid {pid})" in stopped.stdout
    assert not (tmp_path / "mlflow-server.pid").exists()
    assert not _listening(port)


if __name__ == "__main__":
    _app()
