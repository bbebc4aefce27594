"""The smoke preset (conf/debug/default.yaml): ``python -m experiments.train debug=default`` runs 2 steps through
every stage (sampling, loss and update, evaluation, diagnostics, tracking) in seconds."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from experiments.train import run
from tests.conftest import compose_config


def test_debug_preset_runs_every_stage_in_two_steps(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config("debug=default", f"run_dir={tmp_path / 'run'}", f"tracking.uri={uri}")
    assert (cfg.train.steps, cfg.algo.prompts_per_step, cfg.eval.n_prompts) == (2, 2, 8)
    run(cfg)

    client = MlflowClient(uri)
    (record,) = client.search_runs([client.get_experiment_by_name("debug").experiment_id])
    assert record.info.status == "FINISHED"
    metrics = record.data.metrics
    for key in (
        "train/loss",
        "train/reward_mean",
        "eval/accuracy",
        "eval/pass_at_2",
        "quadrant/pos_high/grad_norm",
    ):
        assert key in metrics, key
    assert {m.step for m in client.get_metric_history(record.info.run_id, "eval/accuracy")} == {0, 1, 2}
    assert {m.step for m in client.get_metric_history(record.info.run_id, "train/loss")} == {0, 1}
