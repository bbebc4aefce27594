"""``python -m experiments.eval [overrides]`` (console script ``quadrl-eval``): a model on an evaluation suite.

    quadrl-eval model=local model.path=/models/Qwen2.5-Math-7B task=math_file task.path=train.jsonl \\
        +eval=paper_math eval.suite.0.path=/data/aime24.jsonl ...          # the paper's table, no training
    quadrl-eval task=arith eval.checkpoint=runs/2026-12-04/12-00-00 '+eval.suite=[{name: a, path: a.jsonl, k: 4}]'

Evaluates the model (``model=``; with ``eval.checkpoint``, the policy a training run's checkpoint saved) on every
benchmark of ``eval.suite`` (grpo/suite.py) and logs one MLflow run (tag ``quadrl.kind=eval``) with the same
``eval/<benchmark>/<metric>`` keys and ``eval/suite/mean`` a training run logs, at the checkpoint's step. The task
(``task=``) is what scores the benchmark files (its verifier) and, for ``task:``-less file benchmarks of a
``math_file`` task, how their rows are read. Everything is checked before the model is loaded; a refused value is
one line, ``quadrl-eval: error: ...``, exit status 2.

:func:`build_suite` is also what ``quadrl-train`` uses to build ``eval.suite``.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from experiments import CONF_DIR
from experiments.app import base_model, job_overrides, refuse
from experiments.datasets import RowFormat, load_examples
from experiments.tasks import Task, make_task
from experiments.tracking import Tracker, flatten, git_commit, provenance
from grpo import checkpoint
from grpo.benchmark import BenchmarkConfig
from grpo.checks import ConfigError
from grpo.config import QuadrlConfig, register_configs, validate
from grpo.model import Policy, load_policy
from grpo.suite import Benchmark, evaluate_suite
from runrecord import BASE_MODEL_TAG, OVERRIDES_TAG

register_configs()

FILE_FORMAT = RowFormat(prompt_template="{prompt}", source="eval.suite")
"""How a benchmark file is read when the run's task is not a file task: a ``problem`` and an ``answer`` column,
the prompt as it is (``read:`` overrides any of it)."""


def _examples(b: BenchmarkConfig, run_task: Task, key: str) -> list[Any]:
    base = getattr(run_task, "row_format", None) or FILE_FORMAT  # a math_file run reads its benchmarks alike
    known = {f.name for f in fields(RowFormat)}
    fmt = replace(base, **{k: v for k, v in b.read.items() if k in known}, source=key)
    return load_examples(Path(str(b.path)).expanduser(), fmt)


def build_suite(
    suite: list[BenchmarkConfig], run_task: Task, run_task_params: dict[str, Any]
) -> list[Benchmark]:
    """The benchmarks of ``eval.suite``, their files read and checked (ConfigError naming the benchmark)."""
    out: list[Benchmark] = []
    for i, b in enumerate(suite):
        key = f"eval.suite[{i}] ({b.name})"
        try:
            if b.path is not None:
                out.append(Benchmark(b, run_task, _examples(b, run_task, key)))
                continue
            if b.task is None or b.task == run_task_params["name"]:
                task = run_task
            else:
                task = make_task(b.task)
            out.append(Benchmark(b, task, list(task.test())))
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"{key}: {exc}" if key not in str(exc) else str(exc)) from exc
    return out


def to_config(raw: DictConfig) -> QuadrlConfig:
    """The typed config; a ``???`` left unset (e.g. a preset's benchmark path) is refused by key."""
    try:
        return OmegaConf.to_object(raw)  # type: ignore[return-value]
    except (MissingMandatoryValue, InterpolationToMissingValueError) as exc:
        key = str(exc).partition("Missing mandatory value: ")[2].splitlines()[0].strip() or exc.full_key
        raise ConfigError(f"{key} is not set (it is ??? in the config: give it a value)") from exc


def checkpoint_state(key: str, run_dir: str | None) -> dict[str, Any] | None:
    """The state of the training checkpoint in ``run_dir`` (None when not given), refused naming ``key`` when
    there is none."""
    if not run_dir:
        return None
    state = checkpoint.load(Path(run_dir).expanduser())
    if state is None:
        raise ConfigError(
            f"{key}={run_dir!r}: no {checkpoint.CHECKPOINT_DIR}/{checkpoint.STATE_FILE} there (give the run "
            "directory of a training run)"
        )
    return state


def load_run_policy(
    cfg: QuadrlConfig, task_params: dict[str, Any], state: dict[str, Any] | None, tracker: Tracker
) -> Policy:
    """The run's model (a local directory or the built-in base, tagged on the tracker's run), with a training
    checkpoint's trainable weights when ``state`` is given."""
    base = base_model(cfg, task_params)
    tracker.set_tags({BASE_MODEL_TAG: base.tag})
    policy = load_policy(cfg.model, base.path, need_reference=False, seed=cfg.seed)
    if state is not None:
        policy.load_trainable_state(state["model"])
    return policy


def run(raw: DictConfig) -> dict[str, float]:
    """Check, load, evaluate, log. Returns the suite's metrics."""
    cfg = to_config(raw)
    validate(cfg)
    if not cfg.eval.suite:
        raise ConfigError(
            "eval.suite is empty: give benchmarks (e.g. +eval=paper_math, or '+eval.suite=[...]')"
        )
    task_params: dict[str, Any] = OmegaConf.to_container(raw.task, resolve=True)  # type: ignore[assignment]
    try:
        task = make_task(**task_params)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from exc
    suite = build_suite(cfg.eval.suite, task, task_params)
    state = checkpoint_state("eval.checkpoint", cfg.eval.checkpoint)
    max_new_tokens = cfg.sampling.max_new_tokens or int(task.max_new_tokens)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)

    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.enabled)
    tags = {
        "quadrl.kind": "eval",
        "quadrl.git_commit": git_commit(),
        "quadrl.task": task_params["name"],
        "quadrl.model": cfg.model.source if cfg.model.source == "builtin" else str(cfg.model.path),
        "quadrl.checkpoint": str(cfg.eval.checkpoint or ""),
        "quadrl.suite": ",".join(b.name for b in cfg.eval.suite),
        OVERRIDES_TAG: json.dumps(job_overrides()),
        **provenance(),
    }
    name = cfg.tracking.run_name or f"eval-{task_params['name']}-s{cfg.seed}"
    tracker.start(None, name, flatten(OmegaConf.to_container(raw, resolve=True)), tags)
    status = "FAILED"
    try:
        policy = load_run_policy(cfg, task_params, state, tracker)
        step = 0 if state is None else int(state["next_step"])
        metrics, completions = evaluate_suite(
            policy,
            suite,
            max_new_tokens=max_new_tokens,
            batch_size=cfg.eval.batch_size,
            seed=cfg.seed,
            step=step,
        )
        tracker.log_metrics(metrics, step)
        for bench, done in completions.items():
            rows = [{"prompt": c.example.prompt, "completion": c.text, "reward": c.reward} for c in done[:64]]
            tracker.log_table(rows, f"eval_samples/{bench}/step_{step:06d}.json")
        for key in sorted(metrics):
            print(f"{key}\t{metrics[key]:.4f}")
        status = "FINISHED"
        return metrics
    finally:
        tracker.finish(status)


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(raw: DictConfig) -> None:
    try:
        run(raw)
    except ConfigError as exc:
        refuse("quadrl-eval", exc)


if __name__ == "__main__":
    main()
