"""Every console script works through its installed entry point from a directory outside the repository, where
its outputs land; a refused value is one line ``<prog>: error: <message>`` and a non-zero exit, without a
traceback (which ``HYDRA_FULL_ERROR=1`` brings back); Hydra's own errors stay as Hydra prints them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from mlflow import MlflowClient

from tests.conftest import FORK_PARAMS, REPO

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
    """The refusal's message, after checking it is a single ``prog: error:`` line and exit 2 (a usage error)."""
    assert proc.returncode == 2, output(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), output(proc)
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def test_every_console_script_has_a_run_and_a_refusal_from_an_empty_folder():
    """The scripts are read from pyproject.toml, so a new one without a run from an empty folder and a checked
    one-line refusal in this module fails here."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    tests = {name for name in globals() if name.startswith("test_quadrl_") and "empty_folder" in name}
    no_run = sorted(
        n for n in scripts if not any(t.startswith(f"test_{n.replace('-', '_')}_") for t in tests)
    )
    assert not no_run, f"console scripts without a run from an empty folder: {no_run}"
    refused = set(re.findall(r'one_line_refusal\(\w+, "([\w-]+)"\)', Path(__file__).read_text()))
    assert not set(scripts) - refused, f"console scripts without a one-line refusal: {set(scripts) - refused}"


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


def test_quadrl_train_refuses_a_renamed_group_naming_the_new_one(monkeypatch, capsys):
    """In process (the check runs before Hydra): ``quadrl-train +credit_method=arca`` exits 2 in one line."""
    from experiments import train

    monkeypatch.setattr("sys.argv", ["quadrl-train", "+credit_method=arca"])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert line.startswith("quadrl-train: error: +credit_method=arca: conf/credit_method/ was renamed")
    assert line.endswith("write condition=arca")


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
    common = ["--tracking-uri", "sqlite:///mlflow.db", "--out", "rep"]
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


def test_quadrl_study_refuses_any_swept_value_before_building_anything(tmp_path):
    # the bad value is the second of the sweep, and a preset condition replaced on the command line
    proc = entry_point("quadrl-study", "algo.group_size=8,-4", cwd=tmp_path)
    line = one_line_refusal(proc, "quadrl-study")
    assert line.startswith("quadrl-study: error: condition algo.group_size=-4: algo.group_size must be >= 2")
    proc = entry_point("quadrl-study", "condition=baseline,no_such_condition", cwd=tmp_path)
    assert "condition condition=no_such_condition: " in one_line_refusal(proc, "quadrl-study")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "something was built before the refusal"


def test_a_study_checks_every_condition_of_the_preset():
    from experiments.study import conditions, study_config

    checked = {c[-1] for c in conditions(study_config("quadrant_mechanisms", []), [])}
    mechanisms = study_config("quadrant_mechanisms", []).hydra.sweeper.params["condition"].split(",")
    assert checked == {f"condition={m}" for m in mechanisms} | {f"seed={s}" for s in range(5)}
    swept = {c[-1] for c in conditions(study_config("quadrant_study", []), ["seed=7", "algo.group_size=4,8"])}
    assert {"seed=7", "algo.group_size=4", "algo.group_size=8", "condition=hapo"} <= swept
    assert not any(c.startswith("seed=") and c != "seed=7" for c in swept)


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


@pytest.mark.slow
@pytest.mark.ci
def test_quadrl_probe_from_an_empty_folder(tmp_path, fork_model_dir):
    proc = entry_point(
        "quadrl-probe",
        "model=local",
        f"model.path={fork_model_dir}",
        "task=fork",
        *[f"task.{k}={v}" for k, v in FORK_PARAMS.items()],
        "probe.n_prompts=2",
        "probe.group_size=2",
        "probe.k=2",
        "probe.info_per_response=1",
        "probe.progress=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, output(proc)
    # the outputs land in the working directory
    (report,) = (tmp_path / "runs").glob("*/*/probe_report/report.md")
    assert "| pos_high |" in report.read_text() and (tmp_path / "mlflow.db").is_file()


def test_quadrl_probe_refuses_a_value_in_one_line(tmp_path):
    proc = entry_point("quadrl-probe", "tracking=off", "probe.k=0", cwd=tmp_path)
    assert "probe.k" in one_line_refusal(proc, "quadrl-probe")
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["runs"]), (
        "a model or report before the refusal"
    )


def test_quadrl_eval_from_an_empty_folder(tmp_path):
    """The shipped arith base on a one-benchmark suite (arith's own test split): one MLflow run in the folder."""
    proc = entry_point(
        "quadrl-eval",
        "task=arith",
        "train.threads=1",
        "+eval.suite=[{name: arith_test, task: arith, n_prompts: 4, k: 2, greedy: true}]",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, output(proc)
    assert "eval/arith_test/avg_at_2" in proc.stdout and (tmp_path / "mlflow.db").is_file(), output(proc)


def test_quadrl_eval_refuses_an_empty_suite_in_one_line(tmp_path):
    proc = entry_point("quadrl-eval", "task=arith", "tracking=off", cwd=tmp_path)
    assert "eval.suite is empty" in one_line_refusal(proc, "quadrl-eval")
    # Hydra makes its job folder (runs/) before the app runs; nothing else may be there
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["runs"]), "a model or a run before the refusal"
