"""``quadrl-probe`` end to end (experiments/probe.py): report folder, MLflow run, reproducibility, refusals."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from experiments.probe import register_probe_configs, run
from grpo.checks import ConfigError
from tests.conftest import FORK_PARAMS
from tests.conftest import compose_config as compose_train_config


def compose_config(*overrides: str):
    """The root config as quadrl-probe composes it (its schema adds the app's probe.* keys)."""
    return compose_train_config(*overrides, register=register_probe_configs)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def fork_overrides(model_dir: Path, tmp_path: Path, out: str = "report") -> list[str]:
    return [
        "model=local",
        f"model.path={model_dir}",
        "task=fork",
        *[f"task.{k}={v}" for k, v in FORK_PARAMS.items()],
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"probe.out={tmp_path / out}",
        "probe.n_prompts=3",
        "probe.group_size=3",
        "probe.k=4",
        "probe.info_per_response=1",
        "probe.progress=false",
    ]


@pytest.mark.slow
@pytest.mark.ci
def test_probe_app_writes_report_and_mlflow_run_reproducibly(tmp_path, fork_model_dir):
    metrics = run(compose_config(*fork_overrides(fork_model_dir, tmp_path)))
    out = tmp_path / "report"
    report = (out / "report.md").read_text()
    for quadrant in ("pos_high", "pos_low", "neg_high", "neg_low", "zero_adv"):
        assert f"| {quadrant} |" in report
    assert "### Scoreboard" in report and "| only_pos_high |" in report and "| compose |" in report
    # fork knows its exact values: a second section, and how well the estimate agrees with them
    assert "## Exact credit" in report and (out / "tokens_exact.csv").is_file()
    assert "Estimate vs exact V: Z = " in report and abs(metrics["probe/agreement_z"]) < 4
    assert metrics["probe_exact/info_over_entropy"] <= 1.0
    for figure in ("credit_vs_entropy", "quadrant_credit_shares"):
        assert (out / "figures" / f"{figure}.png").is_file() and (out / "figures" / f"{figure}.svg").is_file()
    rows = list(csv.DictReader((out / "tokens.csv").open()))
    for i in range(9):  # every response, every token position from 0, once
        ts = [int(r["t"]) for r in rows if r["row"] == str(i)]
        assert ts == list(range(len(ts))) and ts
    assert metrics["probe/responses"] == 9 and metrics["probe/continuations"] > 0
    assert sum(
        metrics[f"probe/{q}/token_share"] for q in ("pos_high", "pos_low", "neg_high", "neg_low", "zero_adv")
    ) == pytest.approx(1.0)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("quadrl-probe").experiment_id])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.tags["quadrl.kind"] == "probe"
    assert mlflow_run.data.metrics["probe/continuations"] == metrics["probe/continuations"]
    assert "scoreboard/hapo/rho_batch" in mlflow_run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "probe_report")}
    assert "probe_report/report.md" in artifacts and "probe_report/tokens.csv" in artifacts

    run(compose_config(*fork_overrides(fork_model_dir, tmp_path, out="again")))
    assert (tmp_path / "again" / "tokens.csv").read_text() == (out / "tokens.csv").read_text()


@pytest.mark.slow
@pytest.mark.ci
def test_probe_app_loads_a_training_checkpoint(tmp_path, fork_model_dir):
    """A run directory's checkpoint replaces the weights: zeroing one matrix changes what is probed."""
    from grpo.checkpoint import save
    from grpo.config import ModelConfig
    from grpo.model import load_policy

    policy = load_policy(ModelConfig(device="cpu"), fork_model_dir, need_reference=False, seed=0)
    state = policy.trainable_state()
    name = next(k for k in state if "mlp" in k)
    state[name] = state[name] * 0
    save(tmp_path / "run", {"model": state})
    run(compose_config(*fork_overrides(fork_model_dir, tmp_path, out="base")))
    run(
        compose_config(
            *fork_overrides(fork_model_dir, tmp_path, out="trained"), f"probe.checkpoint={tmp_path / 'run'}"
        )
    )
    assert (tmp_path / "trained" / "tokens.csv").read_text() != (tmp_path / "base" / "tokens.csv").read_text()
    assert "checkpoint" in (tmp_path / "trained" / "report.md").read_text().splitlines()[0]


def test_probe_app_refuses_a_checkpoint_dir_without_a_checkpoint(tmp_path, fork_model_dir):
    with pytest.raises(ConfigError, match="probe.checkpoint=.*no checkpoint/state.pt"):
        run(compose_config(*fork_overrides(fork_model_dir, tmp_path), f"probe.checkpoint={tmp_path}"))
    assert not (tmp_path / "report").exists()


def test_the_probe_apps_own_keys_are_refused_by_quadrl_train(tmp_path):
    """probe.out, probe.checkpoint, ... are quadrl-probe's (experiments/probe.py: ProbeAppConfig), not the run's."""
    assert compose_config(f"probe.out={tmp_path}", "probe.scoreboard=false").probe.out == str(tmp_path)
    with pytest.raises(Exception, match="probe.out"):
        compose_train_config(f"probe.out={tmp_path}")
