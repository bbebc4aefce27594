"""``python -m experiments.train [overrides]`` (console script ``quadrl-train``): config -> task + model -> GRPO.

Order matters: every config value, the task's data and the intervention are validated before any model is
loaded, so a typo costs seconds, not a base-model build. A run directory that already holds a checkpoint is
resumed, into the same MLflow run. An exception marks the run FAILED and leaves the last checkpoint in place.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import interventions
from experiments import CONF_DIR
from experiments.app import base_model, builtin_base, job_overrides, refuse
from experiments.base_model import (
    METADATA_FILE,
    ResolvedBase,
    load_metadata,
    teacher_name,
    teacher_recipe,
)
from experiments.distributed_env import from_slurm
from experiments.eval import build_suite, to_config
from experiments.renamed import refuse_renamed
from experiments.sweep import parent_run_id, read_swept_keys, sweep_condition
from experiments.tasks import Task, make_task
from experiments.tracking import Tracker, flatten, git_commit, provenance
from grpo import checkpoint, distributed
from grpo.checks import ConfigError
from grpo.config import QuadrlConfig, register_configs, validate
from grpo.credit import Intervention, build_intervention
from grpo.decode import fast_path_blocker
from grpo.facts import check_config as check_fact_requirements
from grpo.instruments import standard_instruments
from grpo.model import load_policy, load_teacher, resolve_device
from grpo.suite import Benchmark
from grpo.trainer import Trainer
from runrecord import (
    BASE_MODEL_TAG,
    CONDITION_TAG,
    OVERRIDE_TAG_PREFIX,
    OVERRIDES_TAG,
    PARENT_TAG,
    SWEEP_CONDITION_TAG,
    condition_of,
    override_key,
    unescape,
)

register_configs()

RUN_ID_FILE = "mlflow_run_id"


def sweep_dir() -> str | None:
    """This job's sweep directory when it runs in a multirun, else None."""
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    return str(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


def sweep_parent() -> str | None:
    """The parent run of this job's sweep (written by experiments.sweep.SweepTracking), if any."""
    directory = sweep_dir()
    return parent_run_id(directory) if directory else None


def intervention_label(params: dict[str, Any]) -> str:
    """The condition chosen, by its file name (``condition=quadrant/only_pos_high``: ``only_pos_high``), else the
    conf/intervention method chosen, else the method's name (``quadrant``)."""
    try:
        choices = HydraConfig.get().runtime.choices
    except ValueError:
        return str(params.get("name", "none"))
    condition = choices.get("condition")
    if condition:
        return str(condition).rsplit("/", 1)[-1]
    return str(choices.get("intervention") or params.get("name", "none"))


def resolve_run_dir(cfg: QuadrlConfig) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir).expanduser().resolve()
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def teacher_model(cfg: QuadrlConfig, task_params: dict[str, Any]) -> ResolvedBase:
    """The distillation teacher: ``algo.teacher.path``, or the built-in teacher (the base model's SFT run
    continued to ``algo.teacher.min_accuracy``): shipped as ``models/<task>_teacher`` (verified) when it was built
    from exactly this recipe, else built once and cached, like the base model (``model.base`` applies to both)."""
    t = cfg.algo.teacher
    if t.source == "local":
        path = Path(str(t.path)).expanduser()
        return ResolvedBase(path, f"local:{path}")
    recipe = teacher_recipe(cfg.model.base_seed, t.min_accuracy)
    return builtin_base(cfg, task_params, recipe, teacher_name(task_params["name"]))


def _built_accuracy(tag: str, path: Path) -> dict[str, str]:
    """{tag: greedy test accuracy} of a built-in model directory; {} for any other model."""
    if not (path / METADATA_FILE).is_file():
        return {}
    return {tag: str(load_metadata(path).get("test_accuracy"))}


@dataclass
class Checked:
    """A config that passed every check that needs no model: the values, the intervention and the task."""

    cfg: QuadrlConfig
    task_params: dict[str, Any]
    intervention_params: dict[str, Any]
    intervention: Intervention
    task: Task
    suite: list[Benchmark] = field(default_factory=list)
    """eval.suite's benchmarks, their files read and checked."""


def check(raw: DictConfig) -> Checked:
    """Every value, the intervention and the task's data, checked before any model exists; ConfigError if
    one is refused."""
    cfg = to_config(raw)
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
    try:
        task = make_task(**task_params)
    except (ValueError, FileNotFoundError) as exc:  # an unknown parameter, a missing file, a malformed row
        raise ConfigError(str(exc)) from exc
    suite = build_suite(cfg.eval.suite, task, task_params)
    if cfg.rollout.engine == "vllm":  # vllm missing, several processes, an architecture it cannot load
        from experiments.vllm_engine import check_config as check_vllm

        # a multi-task SLURM job sets WORLD_SIZE only later (from_slurm): its task count says the same now
        check_vllm(cfg, int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or "1"))
    return Checked(cfg, task_params, intervention_params, intervention, task, suite)


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc, 10 ms resolution; None elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks
    except (OSError, ValueError, IndexError):
        return None


def run(raw: DictConfig) -> dict[str, float]:
    """Validate, build, train. Returns the final eval metrics."""
    startup, entered = process_age(), time.perf_counter()  # what a sweep's jobs spend before training
    checked = check(raw)
    cfg, task, intervention = checked.cfg, checked.task, checked.intervention
    task_params, intervention_params = checked.task_params, checked.intervention_params
    # several processes (torchrun, or a multi-task SLURM job): join them; one process: a no-op
    from_slurm()
    world = distributed.env_world()
    distributed.check_config(cfg, world)
    world = distributed.init(resolve_device(cfg.model.device), cfg.train.collective_timeout_s)
    if world.active and "TORCHELASTIC_RUN_ID" in os.environ:
        # torchrun stops the other ranks with SIGTERM when one fails: raise, so that the run is marked FAILED
        signal.signal(signal.SIGTERM, _peer_failed)
    # null budget = the task's own; written back to the raw config so the params and config.yaml show it
    if cfg.sampling.max_new_tokens is None:
        cfg.sampling.max_new_tokens = raw.sampling.max_new_tokens = int(task.max_new_tokens)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs
        torch.use_deterministic_algorithms(True)

    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = checkpoint.load(run_dir)
    run_id = (state or {}).get("mlflow_run_id") or None
    if run_id is None and (run_dir / RUN_ID_FILE).is_file():  # crashed before its first checkpoint
        run_id = (run_dir / RUN_ID_FILE).read_text().strip() or None

    # one MLflow run, rank 0's; the others log nothing but can still mark it FAILED (below)
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.enabled and world.is_main)
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
        "quadrl.threads": str(torch.get_num_threads()),
        "quadrl.deterministic": str(cfg.train.deterministic),
        "quadrl.device": str(resolve_device(cfg.model.device)),
        **provenance(),
    }
    for override in overrides:
        tags[OVERRIDE_TAG_PREFIX + override_key(override)] = unescape(override.partition("=")[2])
    if parent:
        tags[PARENT_TAG] = parent
    name = f"{task_params['name']}-{intervention_label(intervention_params)}-s{cfg.seed}"
    directory = sweep_dir()
    swept = read_swept_keys(directory) if directory else None
    if swept is not None:  # a sweep job: named and grouped in MLflow's UI by what the sweep varies
        tags[SWEEP_CONDITION_TAG] = sweep_condition(overrides, swept)
        name = f"{tags[SWEEP_CONDITION_TAG]} seed={cfg.seed}"
    name = cfg.tracking.run_name or name
    resolved = OmegaConf.to_container(raw, resolve=True)
    run_id = tracker.start(run_id, name, flatten(resolved), tags)
    if world.active:
        run_id = distributed.broadcast_object(run_id)
    if run_id and world.is_main:
        (run_dir / RUN_ID_FILE).write_text(run_id)
        if state is None:
            tracker.log_text(OmegaConf.to_yaml(raw, resolve=True), "config.yaml")
    try:
        base = base_model(cfg, task_params)
        path = base.path
        tracker.set_tags({BASE_MODEL_TAG: base.tag})
        if (path / METADATA_FILE).is_file():
            tracker.set_tags(
                {
                    "quadrl.base_model_version": str(load_metadata(path).get("version")),
                    **_built_accuracy("quadrl.base_model_accuracy", path),
                }
            )
        if cfg.rollout.engine == "vllm":
            from experiments.vllm_engine import build_engine, check_model_dir

            check_model_dir(path)  # before the policy loads
        policy = load_policy(cfg.model, path, need_reference=cfg.algo.beta > 0, seed=cfg.seed)
        if cfg.rollout.engine == "vllm":
            policy.engine = build_engine(cfg, policy, seed=cfg.seed)
            tracker.set_tags({"quadrl.rollout": f"vllm (started in {policy.engine.start_s:.1f} s)"})
        blocker = fast_path_blocker(policy.model)  # which decoder the sampler takes (grpo/decode.py)
        tracker.set_tags({"quadrl.sampler": "fast" if blocker is None else f"generic: {blocker}"})
        teacher = None
        if cfg.algo.advantage == "teacher":
            built = teacher_model(cfg, task_params)
            tracker.set_tags(
                {"quadrl.teacher": built.tag, **_built_accuracy("quadrl.teacher_accuracy", built.path)}
            )
            teacher = load_teacher(cfg.model, built.path, policy.tokenizer)
        trainer = Trainer(
            cfg,
            policy,
            task,
            intervention,
            tracker,
            run_dir,
            teacher=teacher,
            suite=checked.suite,
            world=world,
            instruments=standard_instruments(cfg, intervention, policy, task),
        )
        if state is not None:
            trainer.load_checkpoint(state)
        setup = {"perf/setup_s": time.perf_counter() - entered}  # MLflow run, base model, policy load
        tracker.log_metrics(
            setup if startup is None else {**setup, "perf/startup_s": startup}, trainer.next_step
        )
        final = trainer.run()
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or submitit exiting after it requeued a preempted job
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        if not world.is_main:  # rank 0 may be the one that died: any rank that fails marks the run
            mark_failed(cfg, run_id)
        raise
    tracker.finish("FINISHED")
    if world.active:
        distributed.shutdown()
    return final


class PeerFailed(RuntimeError):
    """torchrun stopped this rank because another rank of the run failed."""


def _peer_failed(signum: int, frame: object) -> None:
    raise PeerFailed("stopped by torchrun (SIGTERM): another rank of this run failed")


def mark_failed(cfg: QuadrlConfig, run_id: str | None) -> None:
    """Mark rank 0's MLflow run FAILED from another rank (best effort: the store may be what failed)."""
    if not (cfg.tracking.enabled and run_id):
        return
    try:
        from experiments.tracking import tracking_client

        tracking_client(cfg.tracking.uri).set_terminated(run_id, status="FAILED")
    except Exception as error:  # the original error is the one to report
        print(f"could not mark run {run_id} FAILED: {error}", file=sys.stderr, flush=True)


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def _main(raw: DictConfig) -> float | None:
    try:
        final = run(raw)
    except ConfigError as exc:
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:  # a sweep job: the launcher records the failure
            raise
        refuse("quadrl-train", exc)
    return final.get("eval/accuracy")


def main() -> float | None:
    """``quadrl-train``: refuse an override that names a moved config (experiments/renamed.py) in one line, then
    run the Hydra app."""
    refuse_renamed("quadrl-train", sys.argv[1:])
    return _main()


if __name__ == "__main__":
    main()
