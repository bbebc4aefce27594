"""``quadrl-study``'s presets: the countdown study is the quadrant study on countdown (composed through Hydra), its
report metric exists in what its jobs log, and a few of its steps run from the shipped countdown base."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import experiments.base_model as bm
from experiments.study import STUDY_REPORTS, study_config, sweep_grid
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
    }
    assert countdown.task.name == "countdown" and countdown.train.steps == 100
    # the report's metric is one the jobs log: avg@k with k = the samples per prompt
    assert STUDY_REPORTS[COUNTDOWN].metric == f"eval/avg_at_{countdown.eval.n_samples}"
    assert STUDY_REPORTS["quadrant_study"].metric == "eval/accuracy"


def test_the_countdown_preset_runs_from_the_shipped_countdown_base(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(
        f"experiment={COUNTDOWN}",
        "intervention=only_pos_high",
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
    steps = {m.step for m in client.get_metric_history(rec.info.run_id, STUDY_REPORTS[COUNTDOWN].metric)}
    assert steps == {0, 2}
