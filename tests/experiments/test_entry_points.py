"""Every console script works through its installed entry point from a directory outside the repository, where
its outputs land; a refused value is one line ``<prog>: error: <message>`` and a non-zero exit, without a
traceback (which ``HYDRA_FULL_ERROR=1`` brings back); Hydra's own errors stay as Hydra prints them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO

BIN = Path(sys.executable).parent
TINY_MATH = [
    "task=math_file",
    "task.prompt_template='{prompt}'",
    "task.solution_field=solution",
    "task.test_fraction=0.2",
    "eval.n_prompts=4",
    "algo.prompts_per_step=2",
    "algo.group_size=2",
    "sampling.max_new_tokens=4",
    "train.threads=1",
    "train.progress=false",
]


def entry_point(
    name: str, *args: str, cwd: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """Run the installed console script ``name`` in ``cwd``, with no path to the repository on PYTHONPATH."""
    path = BIN / name
    assert path.is_file(), f"{name} is not installed in {BIN}: run `bash scripts/setup.sh`"
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    full_env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **env)
    assert not cwd.resolve().is_relative_to(REPO.resolve())
    return subprocess.run(
        [str(path), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def one_line_refusal(proc: subprocess.CompletedProcess, prog: str) -> str:
    """The refusal's message, after checking it is a single ``prog: error:`` line and a non-zero exit."""
    assert proc.returncode != 0, output(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), output(proc)
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def test_quadrl_train_one_step_from_an_empty_folder(tmp_path, tiny_model_dir, math_jsonl):
    proc = entry_point(
        "quadrl-train",
        "model=local",
        f"model.path={tiny_model_dir}",
        f"task.path={math_jsonl}",
        *TINY_MATH,
        "train.steps=1",
        "eval.every=1",
        "eval.n_samples=0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, output(proc)
    (run_dir,) = (tmp_path / "runs").glob("*/*")  # the outputs land in the working directory
    assert (run_dir / "mlflow_run_id").is_file() and (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quadrl")
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    history = {m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")}
    assert history == {0, 1}
    assert run.data.metrics["train/reward_timeouts"] == 0 and run.data.metrics["perf/reward_time_s"] > 0


def test_quadrl_train_refuses_a_value_in_one_line(tmp_path):
    proc = entry_point("quadrl-train", "tracking=off", "algo.group_size=-4", cwd=tmp_path)
    line = one_line_refusal(proc, "quadrl-train")
    assert (
        line == "quadrl-train: error: algo.group_size must be >= 2 (group advantages need 2 samples), got -4"
    )
    assert proc.returncode == 2
    full = entry_point(
        "quadrl-train", "tracking=off", "algo.group_size=-4", cwd=tmp_path, HYDRA_FULL_ERROR="1"
    )
    assert full.returncode != 0 and "Traceback" in full.stderr and "ConfigError" in full.stderr, output(full)


def test_quadrl_train_refuses_bad_data_in_one_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(
        json.dumps({"problem": "1+1", "answer": "2"}) + "\n" + json.dumps({"problem": "2+2"}) + "\n"
    )
    proc = entry_point("quadrl-train", "tracking=off", "task=math_file", f"task.path={data}", cwd=tmp_path)
    line = one_line_refusal(proc, "quadrl-train")
    assert f"{data}: row 2: missing field 'answer'" in line


def test_hydra_errors_stay_as_hydra_prints_them(tmp_path):
    proc = entry_point("quadrl-train", "tracking=off", "algo.grop_size=8", cwd=tmp_path)
    assert proc.returncode == 1, output(proc)
    assert "Could not override 'algo.grop_size'" in proc.stderr
    assert "Set the environment variable HYDRA_FULL_ERROR=1" in proc.stderr
    assert "quadrl-train: error" not in proc.stderr


@pytest.mark.slow
@pytest.mark.ci
def test_quadrl_pretrain_from_an_empty_folder(tmp_path, math_jsonl):
    proc = entry_point(
        "quadrl-pretrain",
        "--task",
        "math_file",
        "--out",
        "base",
        "--max-steps",
        "2",
        "--eval-every",
        "1",
        "--allow-out-of-band",
        "--tracking-uri",
        "none",
        "--threads",
        "1",
        "-q",
        f"path={math_jsonl}",
        "prompt_template='{prompt}'",
        "solution_field=solution",
        "test_fraction=0.2",
        "max_new_tokens=4",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, output(proc)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["out"] == "base"
    assert (tmp_path / "base" / "quadrl_base.json").is_file()
    refused = entry_point("quadrl-pretrain", "--task", "nope", "--out", "x", cwd=tmp_path)
    assert "unknown task 'nope'" in one_line_refusal(refused, "quadrl-pretrain")


@pytest.mark.slow
@pytest.mark.ci
def test_quadrl_report_from_an_empty_folder(tmp_path):
    from analysis.synthetic import SyntheticCondition, log_synthetic_sweep

    parent = log_synthetic_sweep(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "synthetic",
        [SyntheticCondition("none", 0.6, seeds=(0, 1, 2)), SyntheticCondition("hapo", 0.7, seeds=(0, 1, 2))],
        steps=20,
    )
    common = ["--tracking-uri", "sqlite:///mlflow.db", "--out", "rep", "--resamples", "200"]
    proc = entry_point(
        "quadrl-report", *common, "--parent-run", parent, "--control", "intervention=none", cwd=tmp_path
    )
    assert proc.returncode == 0, output(proc)
    assert (tmp_path / "rep" / "report.md").is_file()
    assert f"Logged as artifact 'report/' of parent run {parent}" in proc.stdout
    refused = entry_point("quadrl-report", *common, "--parent-run", "no-such-run", cwd=tmp_path)
    assert "no-such-run" in one_line_refusal(refused, "quadrl-report")


def test_quadrl_study_refuses_before_building_anything(tmp_path):
    proc = entry_point("quadrl-study", "algo.group_size=-4", cwd=tmp_path)
    assert "algo.group_size must be >= 2" in one_line_refusal(proc, "quadrl-study")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "something was built before the refusal"


@pytest.mark.slow
def test_quadrl_study_from_an_empty_folder(tmp_path, sft_model_dir, math_jsonl):
    proc = entry_point(
        "quadrl-study",
        "--preset",
        "demo_grid",
        "--out",
        "sweep",
        "model=local",
        f"model.path={sft_model_dir}",
        f"task.path={math_jsonl}",
        *TINY_MATH,
        "seed=0",
        "train.steps=2",
        "eval.every=1",
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, output(proc)
    assert "sweep: 2 jobs, 2 finished, 0 failed" in proc.stdout, output(proc)
    last = proc.stdout.strip().splitlines()[-2:]
    assert last[0].startswith(
        "[study] MLflow UI, the conditions' eval/accuracy side by side: http://127.0.0.1:5000/#/"
    )
    assert "viewStateShareKey=quadrl-sweep-" in last[0] and "workflowType=machine_learning" in last[0]
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve() / 'mlflow.db'}" in last[1]
    assert (tmp_path / "sweep" / "report" / "report.md").is_file() and (tmp_path / "mlflow.db").is_file()
