"""``python -m experiments.train [overrides]`` (console script ``quadrl-train``): config -> task + model -> GRPO.

Order matters: every config value, the task's data and the intervention are validated before any model is
loaded, so a typo costs seconds, not a base-model build. A run directory that already holds a checkpoint is
resumed, into the same MLflow run. An exception marks the run FAILED and leaves the last checkpoint in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import interventions
from experiments.base_model import METADATA_FILE, SFTRecipe, load_metadata, teacher_recipe
from experiments.tasks import make_task
from experiments.tracking import Tracker, flatten, git_commit
from grpo import checkpoint
from grpo.checks import ConfigError
from grpo.config import QuadrlConfig, register_configs, validate
from grpo.credit import build_intervention
from grpo.facts import check_config as check_fact_requirements
from grpo.model import load_policy, load_teacher
from grpo.trainer import Trainer
from runrecord import (
    CONDITION_TAG,
    OVERRIDE_TAG_PREFIX,
    OVERRIDES_TAG,
    PARENT_TAG,
    condition_of,
    override_key,
    unescape,
)

register_configs()

RUN_ID_FILE = "mlflow_run_id"


def job_overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # called outside a Hydra app (tests)
        return []


def sweep_parent() -> str | None:
    """The parent run of this job's sweep (written by experiments.sweep.SweepTracking), if any."""
    from hydra.types import RunMode

    from experiments.sweep import parent_run_id

    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    return parent_run_id(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


def intervention_label(params: dict[str, Any]) -> str:
    """The conf/intervention preset chosen (``only_pos_high``), else the method's name (``quadrant``)."""
    try:
        return str(HydraConfig.get().runtime.choices.get("intervention") or params.get("name", "none"))
    except ValueError:
        return str(params.get("name", "none"))


def resolve_run_dir(cfg: QuadrlConfig) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir).expanduser().resolve()
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def _builtin(cfg: QuadrlConfig, task_params: dict[str, Any], recipe: SFTRecipe) -> Path:
    from experiments.base_model import ensure_base_model

    params = {k: v for k, v in task_params.items() if k != "name"}
    return ensure_base_model(
        task_params["name"],
        params,
        recipe,
        tracking_uri=cfg.tracking.uri if cfg.tracking.enabled else None,
        max_seconds=cfg.model.base_max_seconds,
    )


def model_path(cfg: QuadrlConfig, task_params: dict[str, Any]) -> Path:
    if cfg.model.source == "local":
        return Path(str(cfg.model.path)).expanduser()
    return _builtin(cfg, task_params, SFTRecipe(seed=cfg.model.base_seed))


def teacher_path(cfg: QuadrlConfig, task_params: dict[str, Any]) -> Path:
    """The distillation teacher's directory: ``algo.teacher.path``, or the built-in teacher (built once, cached)."""
    t = cfg.algo.teacher
    if t.source == "local":
        return Path(str(t.path)).expanduser()
    return _builtin(cfg, task_params, teacher_recipe(cfg.model.base_seed, t.min_accuracy))


def _built_accuracy(tag: str, path: Path) -> dict[str, str]:
    """{tag: greedy test accuracy} of a built-in model directory; {} for any other model."""
    if not (path / METADATA_FILE).is_file():
        return {}
    return {tag: str(load_metadata(path).get("test_accuracy"))}


def run(raw: DictConfig) -> dict[str, float]:
    """Validate, build, train. Returns the final eval metrics."""
    cfg: QuadrlConfig = OmegaConf.to_object(raw)  # type: ignore[assignment]
    validate(cfg)
    task_params: dict[str, Any] = OmegaConf.to_container(raw.task, resolve=True)  # type: ignore[assignment]
    intervention_params: dict[str, Any] = OmegaConf.to_container(raw.intervention, resolve=True)  # type: ignore[assignment]
    # explicit, not only at import: a sweep job pickles this function by value when the app runs as __main__
    # (python -m experiments.train), and a by-value function brings along only the modules it references
    interventions.load_all()
    intervention = build_intervention(intervention_params)
    check_fact_requirements(cfg, intervention)  # e.g. ARCA without LoRA: refused before any model is loaded
    first = intervention.first_active_step()
    if first >= cfg.train.steps > 0:  # a typo'd window would silently give a plain GRPO run
        raise ConfigError(
            f"intervention '{intervention_params.get('name')}' first acts at step {first} (start_step), "
            f"but train.steps={cfg.train.steps}: it would never act"
        )
    task = make_task(**task_params)
    # null budget = the task's own; written back to the raw config so the params and config.yaml show it
    if cfg.sampling.max_new_tokens is None:
        cfg.sampling.max_new_tokens = raw.sampling.max_new_tokens = int(task.max_new_tokens)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)

    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = checkpoint.load(run_dir)
    run_id = (state or {}).get("mlflow_run_id") or None
    if run_id is None and (run_dir / RUN_ID_FILE).is_file():  # crashed before its first checkpoint
        run_id = (run_dir / RUN_ID_FILE).read_text().strip() or None

    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.enabled)
    overrides = job_overrides()
    parent = cfg.tracking.parent_run_id or os.environ.get("QUADRL_PARENT_RUN_ID") or sweep_parent()
    tags = {
        "quadrl.git_commit": git_commit(),
        "quadrl.task": task_params["name"],
        "quadrl.model": cfg.model.source if cfg.model.source == "builtin" else str(cfg.model.path),
        "quadrl.intervention": intervention_params.get("name", "none"),
        "quadrl.algo": cfg.algo.name,
        OVERRIDES_TAG: json.dumps(overrides),
        CONDITION_TAG: condition_of(overrides),
        "quadrl.run_dir": str(run_dir),
    }
    for override in overrides:
        tags[OVERRIDE_TAG_PREFIX + override_key(override)] = unescape(override.partition("=")[2])
    if parent:
        tags[PARENT_TAG] = parent
    name = (
        cfg.tracking.run_name
        or f"{task_params['name']}-{intervention_label(intervention_params)}-s{cfg.seed}"
    )
    resolved = OmegaConf.to_container(raw, resolve=True)
    run_id = tracker.start(run_id, name, flatten(resolved), tags)
    if run_id:
        (run_dir / RUN_ID_FILE).write_text(run_id)
        if state is None:
            tracker.log_text(OmegaConf.to_yaml(raw, resolve=True), "config.yaml")
    try:
        path = model_path(cfg, task_params)
        if (path / METADATA_FILE).is_file():
            tracker.set_tags(
                {
                    "quadrl.base_model_version": str(load_metadata(path).get("version")),
                    **_built_accuracy("quadrl.base_model_accuracy", path),
                }
            )
        policy = load_policy(cfg.model, path, need_reference=cfg.algo.beta > 0, seed=cfg.seed)
        teacher = None
        if cfg.algo.advantage == "teacher":
            where = teacher_path(cfg, task_params)
            tracker.set_tags(
                {"quadrl.teacher": str(where), **_built_accuracy("quadrl.teacher_accuracy", where)}
            )
            teacher = load_teacher(cfg.model, where, policy.tokenizer)
        trainer = Trainer(cfg, policy, task, intervention, tracker, run_dir, teacher=teacher)
        if state is not None:
            trainer.load_checkpoint(state)
        final = trainer.run()
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or submitit exiting after it requeued a preempted job
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return final


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(raw: DictConfig) -> float | None:
    final = run(raw)
    return final.get("eval/accuracy")


if __name__ == "__main__":
    main()
