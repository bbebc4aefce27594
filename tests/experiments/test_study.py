"""``quadrl-study``'s presets: the countdown study is the quadrant study on countdown (composed through Hydra), its
report metric exists in what its jobs log, and a few of its steps run from the shipped countdown base."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import experiments.base_model as bm
from experiments.study import study_config, study_report, sweep_grid
from experiments.train import run
from tests.conftest import compose_config

COUNTDOWN = "quadrant_study_countdown"


def differences(a, b, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two plain config trees."""
    out = set()
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out |= differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.add(f"{prefix}{key}")
    return out


def test_the_countdown_study_is_the_quadrant_study_on_countdown():
    arith, countdown = study_config("quadrant_study", []), study_config(COUNTDOWN, [])
    assert sweep_grid(countdown, []) == sweep_grid(arith, [])  # the same 10 conditions x 5 seeds
    changed = differences(
        OmegaConf.to_container(study_config("quadrant_study", [], with_hydra=False), resolve=True),
        OmegaConf.to_container(study_config(COUNTDOWN, [], with_hydra=False), resolve=True),
    )
    # the preset states only what differs (and the task's own fields follow from task=countdown)
    assert {k for k in changed if not k.startswith("task.")} == {
        "train.steps",
        "train.checkpoint_every",
        "train.log_samples_every",
        "algo.prompts_per_step",
        "optim.lr",
        "eval.every",
        "eval.n_samples",
        "eval.pass_k",
        "diagnostics.every",
        "tracking.experiment",
        "report.metric",
    }
    assert countdown.task.name == "countdown" and countdown.train.steps == 100
    # the report's metric is one the jobs log: avg@k with k = the samples per prompt
    assert study_report(COUNTDOWN).metric == f"eval/avg_at_{countdown.eval.n_samples}"
    assert study_report("quadrant_study").metric == "eval/accuracy"


def test_the_countdown_preset_runs_from_the_shipped_countdown_base(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(
        f"experiment={COUNTDOWN}",
        "condition=quadrant/only_pos_high",
        "seed=1",
        f"run_dir={tmp_path / 'run'}",
        f"tracking.uri={uri}",
        "train.steps=2",
        "eval.every=2",
        "eval.n_prompts=20",
        "diagnostics.every=2",
        "algo.prompts_per_step=4",
    )
    run(cfg)
    client = MlflowClient(uri)
    (rec,) = client.search_runs([client.get_experiment_by_name("quadrant-study-countdown").experiment_id])
    sha = bm.load_metadata(bm.SHIPPED_DIR / "countdown")["sha256"]["model.safetensors"]
    assert rec.info.status == "FINISHED" and rec.data.tags["quadrl.base_model"] == f"shipped:{sha[:16]}"
    steps = {m.step for m in client.get_metric_history(rec.info.run_id, study_report(COUNTDOWN).metric)}
    assert steps == {0, 2}


def test_a_report_block_is_checked_in_one_line():
    from experiments.study import StudyReport
    from grpo.checks import ConfigError

    assert StudyReport.from_config({}, "p") == StudyReport()  # no block: the documented defaults
    assert study_report("demo_grid") == StudyReport()
    cases = {
        "contol": (
            {"contol": "condition=baseline"},
            "conf/experiment/p.yaml: report has unknown key(s) contol",
        ),
        "pairs": ({"pairs": [["condition=a"]]}, "conf/experiment/p.yaml: report.pairs must be a list of"),
        "metric": ({"metric": 3}, "conf/experiment/p.yaml: report.metric must be a metric name"),
    }
    for node, message in cases.values():
        with pytest.raises(ConfigError) as info:
            StudyReport.from_config(node, "p")
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_old_condition_names_are_refused_naming_the_new_one():
    from experiments.renamed import renamed

    assert renamed(["+credit_method=arca", "seed=0"]).endswith("write condition=arca")
    assert renamed(["+mechanism=baseline,only_neg_low_sgd"]).endswith(
        "write condition=baseline,quadrant/only_neg_low_sgd"
    )
    assert renamed(["intervention=none,freeze_pos_low"]).endswith(
        "write condition=baseline,quadrant/freeze_pos_low"
    )
    assert renamed(["intervention=hapo", "condition=quadrant/only_pos_high", "model=tiny"]) is None
