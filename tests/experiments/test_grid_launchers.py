"""The launcher presets and the tracking server script, without a cluster: every ``hydra/launcher=slurm`` key
reaches the generated sbatch file, ``local`` takes ``max_parallel``, ``experiments.server`` warns when it would
bind beyond loopback and refuses a port that something else answers on.

Also the helpers the SLURM and MLflow-concurrency tests share (a tiny training config, running the CLI,
reading MLflow runs back)."""

from __future__ import annotations

import http.server
import math
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import REPO, compose_config

# ------------------------------------------------------------------------------------------------ helpers


def tiny_overrides(model_dir: Path | str, steps: int = 6) -> list[str]:
    """A training job that takes seconds: the untrained tiny local model, 2 prompts x 4 samples of <= 16
    tokens, a 256-item train split (materialised at start-up), greedy eval on 8 prompts, one thread."""
    return [
        "model=local",
        f"model.path={model_dir}",
        "task.n_train=256",
        f"train.steps={steps}",
        "eval.n_prompts=8",
        "eval.n_samples=0",
        "algo.prompts_per_step=2",
        "algo.group_size=4",
        "sampling.max_new_tokens=16",
        "train.threads=1",
        "train.progress=false",
    ]


def train_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.train", *args]


def run_cli(
    cmd: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command (in ``cwd``, so relative MLflow paths stay in the test's directory), output captured."""
    full_env = dict(os.environ, HYDRA_FULL_ERROR="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def output_of(proc: subprocess.CompletedProcess) -> str:
    return f"--- exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def all_runs(client: MlflowClient) -> list:
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments], max_results=10000)


def metric_history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """step -> value; a step logged twice (re-run after a resume) keeps the value logged last."""
    out: dict[int, float] = {}
    for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
        out[m.step] = m.value
    return out


def all_histories(client: MlflowClient, run, skip_prefix: str = "perf/") -> dict[str, dict[int, float]]:
    return {
        key: metric_history(client, run.info.run_id, key)
        for key in run.data.metrics
        if not key.startswith(skip_prefix)
    }


def same_value(a: float, b: float) -> bool:
    """Bit-for-bit equality where NaN (an empty quadrant's mean) equals NaN."""
    return (math.isnan(a) and math.isnan(b)) or a == b


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ launcher presets


def _launcher(*overrides: str):
    from hydra.core.plugins import Plugins

    cfg = compose_config_with_hydra(*overrides)
    return cfg, Plugins.instance()._instantiate(cfg.hydra.launcher)


def compose_config_with_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir

    from grpo.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_slurm_preset_keys_reach_sbatch(tmp_path):
    """Every key of conf/hydra/launcher/slurm.yaml that maps to an sbatch option lands in the batch file."""
    cfg, launcher = _launcher(
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={tmp_path}",
        "hydra.launcher.name=quadrl-keys",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=240",
        "hydra.launcher.cpus_per_task=8",
        "hydra.launcher.mem_gb=32",
        "hydra.launcher.gpus_per_node=2",
        "hydra.launcher.signal_delay_s=120",
        "hydra.launcher.max_num_timeout=7",
        "hydra.launcher.array_parallelism=5",
        "hydra.launcher.qos=high",
        "hydra.launcher.account=proj42",
        "hydra.launcher.constraint=a100",
        "hydra.launcher.exclude=node9",
        "hydra.launcher.comment=ablation",
        "+hydra.launcher.additional_parameters.reservation=res1",
        "hydra.launcher.setup=[module load cuda,source .venv/bin/activate]",
    )
    assert type(launcher).__module__ == "hydra_plugins.quadrl_launcher"
    executor = launcher._executor()
    slurm = executor._executor
    assert slurm.max_num_timeout == 7
    slurm.parameters["map_count"] = 12  # what submitit sets when it submits a grid of 12 as one array
    text = slurm._make_submission_file_text("python -m submitit.core._submit X", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=240",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --qos=high",
        "#SBATCH --account=proj42",
        "#SBATCH --constraint=a100",
        "#SBATCH --exclude=node9",
        "#SBATCH --comment=ablation",
        "#SBATCH --reservation=res1",
        "#SBATCH --job-name=quadrl-keys",
        "#SBATCH --array=0-11%5",
        "module load cuda",
        "source .venv/bin/activate",
    ):
        assert line in text.splitlines(), f"{line!r} not in the sbatch file:\n{text}"
    assert str(slurm.folder).startswith(str(tmp_path / ".submitit"))


def test_slurm_preset_defaults_requeue():
    """Out of the box a preempted or timed-out job is requeued (max_num_timeout > 0, a signal before the
    limit), runs on the default partition, and takes what a training job needs."""
    cfg, launcher = _launcher("hydra/launcher=slurm", "hydra.sweep.dir=/tmp/x", "hydra.launcher.name=t")
    slurm = launcher._executor()._executor
    assert slurm.max_num_timeout >= 1
    text = slurm._make_submission_file_text("cmd", "uid")
    assert "#SBATCH --signal=USR2@30" in text
    assert not any(line.startswith("#SBATCH --partition") for line in text.splitlines())
    assert "#SBATCH --time=60" in text


def test_local_preset_max_parallel():
    cfg, launcher = _launcher(
        "hydra/launcher=local",
        "hydra.sweep.dir=/tmp/x",
        "hydra.launcher.max_parallel=5",
        "hydra.launcher.name=t",
    )
    assert launcher.max_parallel == 5
    assert type(launcher).__module__ == "hydra_plugins.quadrl_launcher"
    assert launcher._executor().cluster == "local"


# ------------------------------------------------------------------------------------------------ experiments.server


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


def test_server_warns_off_loopback_and_refuses_a_busy_port(tmp_path):
    """Binding beyond 127.0.0.1 prints a warning; a port where something already answers is refused (exit 1)
    without starting mlflow and without writing a pid file."""
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        proc = run_cli(
            [sys.executable, "-m", "experiments.server", "--host", "0.0.0.0", "--port", str(port)],
            tmp_path,
            60,
        )
    finally:
        httpd.shutdown()
    assert proc.returncode == 1, output_of(proc)
    assert "WARNING: binding the MLflow server to 0.0.0.0" in proc.stderr
    assert "already answers" in proc.stderr
    assert not (tmp_path / "mlflow-server.pid").exists()


def test_server_stop_without_server(tmp_path):
    (tmp_path / "stale.pid").write_text("999999999\n")
    proc = run_cli(
        [sys.executable, "-m", "experiments.server", "--stop", "--pid-file", "stale.pid"], tmp_path, 60
    )
    assert proc.returncode == 0, output_of(proc)
    assert "is not running" in proc.stdout
    assert not (tmp_path / "stale.pid").exists()


def test_allowed_hosts_off_loopback():
    from experiments.server import _allowed_hosts

    assert _allowed_hosts("127.0.0.1", 5000, None) is None
    assert _allowed_hosts("0.0.0.0", 5000, "a,b") == "a,b"
    allowed = _allowed_hosts("0.0.0.0", 5000, None).split(",")
    assert socket.gethostname() in allowed and f"{socket.gethostname()}:5000" in allowed
    assert "localhost" in allowed


def test_demo_grid_preset():
    """experiment=demo_grid is a 2 x 2 grid whose jobs compose and validate (the grid values applied)."""
    from omegaconf import OmegaConf

    from grpo.config import validate

    cfg = compose_config_with_hydra("experiment=demo_grid")
    assert dict(cfg.hydra.sweeper.params) == {"condition": "baseline,hapo", "seed": "0,1"}
    for condition, intervention in (("baseline", "none"), ("hapo", "hapo")):
        job = compose_config("experiment=demo_grid", f"condition={condition}", "seed=1")
        validate(OmegaConf.to_object(job))
        assert job.intervention.name == intervention and job.seed == 1
        assert job.tracking.experiment == "demo-grid"


def test_sweep_efficiency_hand_values():
    from types import SimpleNamespace

    from experiments.sweep import efficiency_line, sweep_efficiency

    def run(**metrics):
        return SimpleNamespace(data=SimpleNamespace(metrics=metrics))

    timing = {"slots": 2, "wall_s": 10.0, "job_wall_s": [4.0, 5.0, 6.0, 4.0]}
    children = [run(**{"perf/startup_s": 2.0, "perf/setup_s": 1.0}), run(**{"perf/startup_s": 3.0}), run()]
    e = sweep_efficiency(timing, children)
    assert e["ideal_s"] == 9.5 and e["efficiency"] == 0.95 and e["job_wall_mean_s"] == 4.75
    assert e["job_startup_mean_s"] == 2.5 and e["job_setup_mean_s"] == 1.0
    line = efficiency_line(e)
    assert "sweep efficiency 0.950" in line and "3.5 s (74%)" in line
