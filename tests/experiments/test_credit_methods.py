"""On-policy distillation and the credit_methods study, end to end through ``experiments.train.run`` with a real
MLflow store; the study's grid helpers (control, teachers to build first)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from experiments.base_model import teacher_recipe
from experiments.study import study_config, study_report, sweep_grid, teachers
from experiments.train import run
from tests.conftest import CONF, compose_config, make_trainer, math_task

CONDITIONS = str(
    OmegaConf.load(Path(CONF, "experiment", "credit_methods.yaml")).hydra.sweeper.params.condition
).split(",")


def small(tmp_path: Path, jsonl: Path, experiment: str) -> tuple[str, list[str]]:
    """(tracking URI, overrides): the JSONL sums, 2 steps of 4 prompts x 4 samples, a fresh MLflow store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, [
        *math_task(jsonl),
        f"run_dir={tmp_path / 'run'}",
        f"tracking.uri={uri}",
        f"tracking.experiment={experiment}",
        "algo.prompts_per_step=4",
        "algo.group_size=4",
        "sampling.max_new_tokens=4",
        "train.steps=2",
        "eval.every=0",
        "eval.n_prompts=8",
        "eval.n_samples=2",
        "eval.pass_k=[1]",
        "train.progress=false",
        "train.log_samples_every=0",
    ]


def finished_run(uri: str, experiment: str):
    client = MlflowClient(uri)
    (rec,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert rec.info.status == "FINISHED"
    return client, rec


def test_opd_with_iw_opd_runs_end_to_end_and_logs_rewards(
    tmp_path, tiny_model_dir, sft_model_dir, math_jsonl
):
    uri, overrides = small(tmp_path, math_jsonl, "opd")
    cfg = compose_config(
        "algo=opd",
        "intervention=iw_opd",
        "model=local",
        f"model.path={tiny_model_dir}",
        "algo.teacher.source=local",
        f"algo.teacher.path={sft_model_dir}",
        *overrides,
    )
    run(cfg)
    client, rec = finished_run(uri, "opd")
    metrics = rec.data.metrics
    assert rec.data.tags["quadrl.teacher"] == f"local:{sft_model_dir}"
    for key in ("train/reward_mean", "train/teacher_kl", "eval/accuracy", "eval/pass_at_1", "iw_opd"):
        assert any(k.startswith(key) or k.startswith(f"intervention/{key}") for k in metrics), key
    assert metrics["intervention/iw_opd/weight_first_token"] > 1.0
    assert {m.step for m in client.get_metric_history(rec.info.run_id, "eval/accuracy")} == {0, 2}
    assert metrics["train/teacher_kl"] > 0  # an untrained student is far from an SFT teacher


def test_distillation_moves_the_student_toward_the_teacher(
    tmp_path, tiny_model_dir, sft_model_dir, math_jsonl
):
    trainer = make_trainer(
        tmp_path, tiny_model_dir, math_jsonl, "algo=opd", "algo.teacher.source=local",
        f"algo.teacher.path={sft_model_dir}", "optim.lr=1e-2", "algo.prompts_per_step=8",
        teacher=sft_model_dir,
    )  # fmt: skip
    kl = [trainer.step(step)["train/teacher_kl"] for step in range(16)]
    # KL(student || teacher) on the student's own samples falls (measured here: ~3.8 -> ~2.5)
    assert sum(kl[-4:]) / 4 < 0.8 * sum(kl[:4]) / 4, kl


@pytest.mark.slow
@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_credit_methods_condition_trains_end_to_end(tmp_path, sft_model_dir, math_jsonl, condition):
    uri, overrides = small(tmp_path, math_jsonl, condition)
    cfg = compose_config(
        "experiment=credit_methods",
        f"condition={condition}",
        "model.source=local",
        f"model.path={sft_model_dir}",
        "algo.teacher.source=local",
        f"algo.teacher.path={sft_model_dir}",
        *overrides,
    )
    run(cfg)
    _, rec = finished_run(uri, condition)
    assert "eval/accuracy" in rec.data.metrics


def test_the_built_in_teacher_is_the_shipped_one(monkeypatch):
    import experiments.base_model as bm
    from experiments.train import teacher_model

    monkeypatch.setattr(bm, "ensure_base_model", lambda *a, **k: pytest.fail("built the shipped teacher"))
    cfg = OmegaConf.to_object(compose_config("algo=opd"))
    teacher = teacher_model(cfg, {"name": "arith"})
    assert teacher.path == bm.SHIPPED_DIR / "arith_teacher" and teacher.tag.startswith("shipped:")


def test_the_study_compares_with_the_baseline_and_builds_teachers_first():
    grid = sweep_grid(study_config("credit_methods", []), [])
    assert grid["seed"] == ["0", "1", "2", "3", "4"]
    assert {"baseline", "hapo", "top_entropy", "arca", "attention_entropy", "opd", "iw_opd"} <= set(
        grid["condition"]
    )
    report = study_report("credit_methods")
    assert f"condition={grid['condition'][0]}" == report.control
    # each paper's own comparison is a pair of conditions the grid runs
    for pair in report.pairs:
        assert {c.removeprefix("condition=") for c in pair} <= set(grid["condition"]), pair
    (teacher,) = teachers("credit_methods", [], grid)
    assert teacher_recipe(teacher.model.base_seed, teacher.algo.teacher.min_accuracy) == teacher_recipe(
        0, 0.9
    )
    narrowed = sweep_grid(study_config("credit_methods", []), ["condition=baseline,hapo"])
    assert narrowed["condition"] == ["baseline", "hapo"]
    assert teachers("credit_methods", ["condition=baseline,hapo"], narrowed) == []
