"""End-to-end test of analysis.report on synthetic runs in a real MLflow store (sqlite in tmp)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from analysis import report
from analysis.synthetic import SyntheticCondition, log_synthetic_sweep

CTRL = "intervention=none"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Control (4 seeds, one of them without eval/accuracy), an effect (4 seeds + 1 FAILED), a single-seed
    condition, and a null condition without grad_norm_share (so that figure is skipped)."""
    tmp = tmp_path_factory.mktemp("mlflow_report")
    uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    art = (tmp / "artifacts").as_uri()
    parent = log_synthetic_sweep(
        uri,
        "report",
        [
            SyntheticCondition("none", 0.70, seeds=(0, 1, 2, 3), no_accuracy_seeds=(3,)),
            SyntheticCondition("only_pos_high", 0.85, seeds=(0, 1, 2, 3), failed_seeds=(4,)),
            SyntheticCondition("only_pos_low", 0.60, seeds=(0,)),
        ],
        steps=30,
        seed=1,
        quadrant_stats=("share", "entropy_mean", "logprob_change"),
        artifact_location=art,
    )
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("report").experiment_id])
    by_name = {r.info.run_name: r.info.run_id for r in runs}
    return uri, parent, by_name


def test_report_end_to_end(sweep, tmp_path, capsys):
    uri, parent, by_name = sweep
    out = tmp_path / "rep"
    path = report.build_report(
        report.ReportOptions(out_dir=out, tracking_uri=uri, parent_run_id=parent, control=CTRL, target=0.75)
    )
    assert path == out / "report.md" and path.exists()
    text = path.read_text()

    # summary table with every condition, the control marked
    for cond in (CTRL + " [control]", "intervention=only_pos_high", "intervention=only_pos_low"):
        assert f"| {cond} |" in text
    assert "steps to >= 0.75" in text and "p Welch Holm" in text and "eval/pass_at_8" in text
    # warnings: failed run by id and condition, run missing the metric, single-seed condition, skipped figure
    warnings = text.split("## Warnings", 1)[1].split("## Figures", 1)[0]
    assert f"run {by_name['only_pos_high-s4']} (intervention=only_pos_high, seed 4) is FAILED" in warnings
    assert f"run {by_name['none-s3']} (intervention=none, seed 3) has no 'eval/accuracy'" in warnings
    assert "intervention=only_pos_low: 1 usable seed(s)" in warnings
    assert "quadrant grad_norm_share" in warnings
    # figures exist as PNG and SVG and are embedded with relative paths
    for stem in ("curve_eval_accuracy", "quadrant_share", "quadrant_entropy_mean", "final_metrics"):
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000
        assert f"](figures/{stem}.png)" in text
    assert not (out / "figures" / "quadrant_grad_norm_share.png").exists()
    # the report folder is an artifact of the parent run
    client = MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(parent, "report")} >= {"report/report.md", "report/figures"}
    assert "report/figures/final_metrics.svg" in {
        a.path for a in client.list_artifacts(parent, "report/figures")
    }
    # terminal output: aligned summary table and where the report is
    printed = capsys.readouterr().out
    lines = [ln for ln in printed.splitlines() if ln.startswith("intervention=")]
    assert len(lines) == 3 and lines[0].startswith(CTRL + " [control]")
    assert f"Report: {path.resolve()}" in printed


def test_cli_by_experiment_guesses_control(sweep, tmp_path, capsys):
    uri, parent, _ = sweep
    out = tmp_path / "cli"
    rc = report.main(
        [
            "--tracking-uri",
            uri,
            "--experiment",
            "report",
            "--out",
            str(out),
            "--min-seeds",
            "2",
        ]
    )
    assert rc == 0
    text = (out / "report.md").read_text()
    assert f"Control: `{CTRL}` (guessed from intervention.name=none)" in text
    assert "p Welch" in text and "Failed runs" in text
    printed = capsys.readouterr().out
    assert f"Logged as artifact 'report/' of parent run {parent}" in printed  # runs share the parent
    header = next(ln for ln in printed.splitlines() if ln.startswith("condition"))
    row = next(ln for ln in printed.splitlines() if ln.startswith("intervention=only_pos_high"))
    assert header.index("seeds finished/failed") + len("seeds finished/failed") == row.index("4/1") + 3


def test_cli_missing_database_is_a_clean_error(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/absent.db"
    assert report.main(["--tracking-uri", uri, "--experiment", "x", "--out", str(tmp_path / "o")]) == 2
    assert "no MLflow database" in capsys.readouterr().err
    assert not (tmp_path / "absent.db").exists()  # not created as a side effect


def test_credit_probe_over_training_gets_its_figures_only_when_logged(tmp_path):
    """Runs with ``probe.every`` log probe/<q>/<share> at a few steps: the report draws them per quadrant;
    reports of runs without them (test_report_end_to_end) draw nothing and warn about nothing."""
    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = log_synthetic_sweep(
        uri,
        "probed",
        [SyntheticCondition("none", 0.7, seeds=(0, 1)), SyntheticCondition("hapo", 0.8, seeds=(0, 1))],
        steps=20,
        quadrant_stats=("share",),
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )
    client = MlflowClient(uri)
    for run in client.search_runs([client.get_experiment_by_name("probed").experiment_id]):
        if run.info.run_id == parent:
            continue
        metrics = [
            Metric(f"probe/{q}/{stat}", 0.1 + 0.01 * step, 0, step)
            for q in ("pos_high", "pos_low", "neg_high", "neg_low")
            for stat in ("delta_share", "delta_sq_share", "info_share")
            for step in (0, 10, 20)
        ]
        client.log_batch(run.info.run_id, metrics=metrics)
    out = tmp_path / "rep"
    text = report.build_report(
        report.ReportOptions(out_dir=out, tracking_uri=uri, parent_run_id=parent, control=CTRL, min_seeds=2)
    ).read_text()
    for stat in ("delta_share", "delta_sq_share", "info_share"):
        assert (out / "figures" / f"probe_{stat}.png").stat().st_size > 1000
        assert f"](figures/probe_{stat}.png)" in text
    assert "Credit probe per quadrant: share of measured credit sum |delta|" in text


def test_reports_without_probe_metrics_have_no_probe_figures(sweep, tmp_path):
    uri, parent, _ = sweep
    out = tmp_path / "rep"
    text = report.build_report(
        report.ReportOptions(out_dir=out, tracking_uri=uri, parent_run_id=parent, control=CTRL)
    ).read_text()
    assert "probe" not in text and not list((out / "figures").glob("probe_*"))
