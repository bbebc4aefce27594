"""Every shipped intervention YAML trains end to end through ``experiments.train.run`` and logs its
per-quadrant diagnostics to MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from experiments.train import run
from grpo.quadrants import QUADRANTS
from tests.conftest import CONF, compose_config, math_task

PRESETS = sorted(p.stem for p in Path(CONF, "intervention").glob("*.yaml"))
NEEDS = {"arca": ["model=local_lora", "model.lora.r=4"]}
"""Overrides a preset needs to run at all (ARCA reads the LoRA adapter's residual)."""


def test_every_registered_method_has_a_yaml():
    import interventions  # noqa: F401  (registers every method)
    from grpo.credit import registered

    assert set(registered()) <= set(PRESETS)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module (creating a SQLite store costs seconds); one experiment per preset."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.mark.parametrize("preset", PRESETS)
def test_intervention_runs_end_to_end_with_diagnostics(tmp_path, store, sft_model_dir, math_jsonl, preset):
    uri = store
    cfg = compose_config(
        f"intervention={preset}",
        *NEEDS.get(preset, ["model=local"]),
        f"model.path={sft_model_dir}",
        *math_task(math_jsonl),
        f"run_dir={tmp_path / 'run'}",
        f"tracking.uri={uri}",
        f"tracking.experiment=e2e-{preset}",
        "algo.prompts_per_step=4",
        "algo.group_size=4",
        "sampling.max_new_tokens=4",
        "train.steps=2",
        "eval.every=0",
        "eval.n_prompts=8",
        "eval.n_samples=0",
        "diagnostics.every=1",
        "train.progress=false",
        "train.log_samples_every=0",
    )
    run(cfg)
    client = MlflowClient(uri)
    (rec,) = client.search_runs([client.get_experiment_by_name(f"e2e-{preset}").experiment_id])
    assert rec.info.status == "FINISHED"
    assert rec.data.tags["quadrl.intervention"] == cfg.intervention.name
    metrics = rec.data.metrics
    for q in QUADRANTS:
        for stat in ("share", "weight_mean", "grad_norm_share", "grad_cos", "logprob_change"):
            assert f"quadrant/{q}/{stat}" in metrics, (q, stat)
    for name in ("cancel/shared_token_share", "cancel/uncancelled_ratio_plain", "train/update_norm"):
        assert name in metrics, name
    shares = sum(metrics[f"quadrant/{q}/share"] for q in QUADRANTS)
    assert 0.0 <= shares <= 1.0 + 1e-6
    steps = {m.step for m in client.get_metric_history(rec.info.run_id, "quadrant/pos_high/grad_norm_share")}
    assert steps == {0, 1}
    # the intervention acted: a quadrant its preset freezes (scale 0) got weight 0 at every step it had tokens,
    # and intervention=none left every token at weight 1
    scale = cfg.intervention.scale if cfg.intervention.name == "quadrant" else {}
    expected = {q: 0.0 for q in QUADRANTS if scale.get(q) == 0.0}
    if preset == "none":
        expected = dict.fromkeys(QUADRANTS, 1.0)
    seen = 0
    for q, weight in expected.items():
        shares = {m.step: m.value for m in client.get_metric_history(rec.info.run_id, f"quadrant/{q}/share")}
        for m in client.get_metric_history(rec.info.run_id, f"quadrant/{q}/weight_mean"):
            if shares[m.step] > 0:
                assert m.value == weight, (q, m.step, m.value)
                seen += 1
    assert seen or not expected, f"no step had tokens in {sorted(expected)}: nothing checked"
