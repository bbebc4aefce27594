"""The "Your model, your data" walkthrough (a page of the documentation site, moved there from the README), run as
written: its ```bash blocks, in order, from the repository root in a fresh WORK folder; then what they should have left behind is checked in the MLflow store."""

from __future__ import annotations

import os
import re
import subprocess

from mlflow.tracking import MlflowClient

from tests.conftest import REPO

PAGE = REPO / "docs" / "guides" / "your-model-your-data.md"


def walkthrough_commands() -> list[str]:
    # the page is the walkthrough: every bash block on it, in order
    return re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_readme_walkthrough_runs_as_written(tmp_path):
    blocks = walkthrough_commands()
    assert len(blocks) == 3 and "quadrl-train" in blocks[1] and "quadrl-eval" in blocks[2]
    env = {**os.environ, "WORK": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(blocks)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("quadrl").experiment_id])
    by_kind = {r.data.tags.get("quadrl.kind", "train"): r for r in runs}
    assert set(by_kind) == {"train", "eval"} and all(r.info.status == "FINISHED" for r in runs)
    train, evaluation = by_kind["train"], by_kind["eval"]
    keys = {
        "eval/bench_a/accuracy",
        "eval/bench_a/avg_at_4",
        "eval/bench_a/pass_at_1",
        "eval/bench_a/pass_at_4",
        "eval/bench_b/avg_at_2",
        "eval/bench_b/pass_at_2",
        "eval/suite/mean",
    }
    assert keys <= set(train.data.metrics) and keys <= set(evaluation.data.metrics)
    for key in ("eval/bench_a/avg_at_4", "eval/suite/mean"):  # the start and the end of training
        assert [m.step for m in client.get_metric_history(train.info.run_id, key)] == [0, 2]
    # the checkpoint evaluated is the trained one, at its step
    assert [m.step for m in client.get_metric_history(evaluation.info.run_id, "eval/suite/mean")] == [2]
    assert evaluation.data.tags["quadrl.checkpoint"] == f"{tmp_path}/run"
    # the shipped arith model solves some of these problems through the verl/math-verify path, not all
    assert 0 < train.data.metrics["eval/bench_a/avg_at_4"] < 1
    assert "eval/suite/mean\t" in done.stdout
