"""The report knows an evaluation suite's per-benchmark metrics (a summary table each, the aggregate first)."""

from __future__ import annotations

import time

from mlflow import MlflowClient
from mlflow.entities import Metric

from analysis import report
from analysis.stats import suite_metrics
from analysis.synthetic import SyntheticCondition, log_synthetic_sweep


def test_suite_metric_names_in_order():
    names = [
        "eval/accuracy",
        "eval/pass_at_8",
        "eval/math500/pass_at_4",
        "eval/aime24/pass_at_32",
        "eval/math500/avg_at_4",
        "eval/aime24/avg_at_32",
        "eval/aime24/pass_at_1",
        "eval/suite/mean",
        "eval/suite/n_benchmarks",
        "eval/aime24/accuracy",
        "train/reward/acc",
    ]
    assert suite_metrics(names) == [
        "eval/suite/mean",
        "eval/aime24/accuracy",
        "eval/aime24/avg_at_32",
        "eval/aime24/pass_at_1",
        "eval/aime24/pass_at_32",
        "eval/math500/avg_at_4",
        "eval/math500/pass_at_4",
    ]


def test_report_has_a_table_per_benchmark_metric(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = log_synthetic_sweep(
        uri,
        "suite",
        [
            SyntheticCondition("none", 0.7, seeds=(0, 1)),
            SyntheticCondition("only_pos_high", 0.8, seeds=(0, 1)),
        ],
        steps=10,
        seed=1,
        quadrant_stats=("share",),
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )
    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    for i, run in enumerate(client.search_runs([client.get_experiment_by_name("suite").experiment_id])):
        if run.info.run_id == parent:
            continue
        values = {
            "eval/aime24/avg_at_32": 0.3 + 0.01 * i,
            "eval/math500/avg_at_4": 0.6,
            "eval/suite/mean": 0.45,
        }
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 10) for k, v in values.items()])
    text = report.build_report(
        report.ReportOptions(
            out_dir=tmp_path / "rep",
            tracking_uri=uri,
            parent_run_id=parent,
            control="intervention=none",
        )
    ).read_text()
    sections = [line for line in text.splitlines() if line.startswith("### `eval/")]
    assert sections == [
        "### `eval/pass_at_8`",
        "### `eval/suite/mean`",
        "### `eval/aime24/avg_at_32`",
        "### `eval/math500/avg_at_4`",
    ]
