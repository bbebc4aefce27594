"""``python -m experiments.probe [overrides]`` (console script ``quadrl-probe``): measure where token credit sits.

    quadrl-probe task=fork                                      # the fork base model: 16 prompts x 4, k = 8
    quadrl-probe task=arith probe.k=16 probe.info_positions=all
    quadrl-probe task=arith probe.checkpoint=runs/2026-12-01/10-00-00   # the policy a training run saved
    quadrl-probe model=local model.path=/models/Qwen2.5-Math-1.5B task=math_file task.path=... probe.k=4

Samples ``probe.group_size`` responses to each of the first ``probe.n_prompts`` prompts of the task's
``probe.split`` (seeded by ``seed``), measures V(s_t), delta_t and I_t on them (``grpo/probe.py``; the cost is
printed before any continuation is sampled), scores every intervention's credit against the measured credit
(``experiments/scoreboard.py``), and writes ``report.md``, ``tokens.csv``, ``scoreboard.csv`` and figures to the
report folder (``probe.out``), logged as one MLflow run of experiment ``probe.experiment``. The quadrants are those
of ``diagnostics.split`` (top 20% of the batch's entropies by default). Every config value, the task and the
scoreboard's methods are checked before the model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments import CONF_DIR
from experiments import scoreboard as board
from experiments.app import job_overrides, refuse
from experiments.eval import checkpoint_state as run_checkpoint
from experiments.eval import load_run_policy
from experiments.probe_report import Section, write_report
from experiments.tasks import make_task
from experiments.tasks.fork import agreement, as_probe
from experiments.tracking import Tracker, flatten, git_commit
from grpo import checks as check
from grpo.batch import sample_groups
from grpo.checks import ConfigError
from grpo.config import ProbeConfig, QuadrlConfig, validate
from grpo.probe import CreditProbe, ProbePlan, credit_summary, probe_credit, share_intervals
from runrecord import OVERRIDES_TAG


@dataclass
class ProbeAppConfig(ProbeConfig):
    """``probe.*`` as ``quadrl-probe`` reads it: the probe's own settings (``grpo.config.ProbeConfig``, which a
    training run's ``probe.every`` uses too) and the keys only this app reads. ``quadrl-train`` refuses these."""

    no_credit_z: float = 2.0
    """Scoreboard: a token has no measured credit when |delta^_t| <= no_credit_z * se (or it was skipped)."""
    scoreboard: bool = True
    """Score every intervention's per-token credit against the measured credit."""
    experiment: str = "quadrl-probe"
    """The MLflow experiment of probe runs (kept apart from training runs' reports)."""
    out: str | None = None
    """Report folder; null = ``probe_report`` in the Hydra output directory."""
    checkpoint: str | None = None
    """A training run directory whose checkpoint (``<dir>/checkpoint``) is loaded into the model given by
    ``model=`` (the same model config the run trained, LoRA included)."""
    progress: bool = True
    """Show a progress bar over the continuations."""
    exact: bool = True
    """On a task that computes V exactly (``task.exact_values``: fork), also report the exact credit of the same
    batch, the scoreboard against it, and how well the estimates agree (needs top_p = 1)."""

    def validate(self) -> None:
        super().validate()
        where = "probe config"
        check.number(where, "probe.no_credit_z", self.no_credit_z, low=0.0)
        check.boolean(where, "probe.scoreboard", self.scoreboard)
        check.boolean(where, "probe.progress", self.progress)
        check.boolean(where, "probe.exact", self.exact)


@dataclass
class ProbeRunConfig(QuadrlConfig):
    """The root config as ``quadrl-probe`` reads it: quadrl's, with the app's ``probe.*`` keys."""

    probe: ProbeAppConfig = field(default_factory=ProbeAppConfig)
    """The credit probe and this app's report, checkpoint and scoreboard settings."""


def register_probe_configs() -> None:
    """Store :class:`ProbeRunConfig` as the schema conf/config.yaml names (``quadrl_schema``); the app calls
    this before Hydra composes, so the app's keys are accepted here and refused by ``quadrl-train``."""
    ConfigStore.instance().store(name="quadrl_schema", node=ProbeRunConfig)


def report_dir(cfg: ProbeRunConfig) -> Path:
    if cfg.probe.out:
        return Path(cfg.probe.out).expanduser().resolve()
    try:
        return Path(HydraConfig.get().runtime.output_dir) / "probe_report"
    except ValueError:  # called outside a Hydra app (tests)
        return Path.cwd() / "probe_report"


def responses(probe: CreditProbe) -> list[list[int]]:
    """The probed responses' token ids (stop token included when produced)."""
    r = probe.plan.batch.rollout
    return [r.response_ids[i][r.response_mask[i]].tolist() for i in range(len(probe.plan.batch.rewards))]


def checkpoint_state(cfg: ProbeRunConfig) -> dict[str, Any] | None:
    """The training checkpoint ``probe.checkpoint`` names, refused by name when it holds none."""
    return run_checkpoint("probe.checkpoint", cfg.probe.checkpoint)


def run(raw: DictConfig) -> dict[str, float]:
    """Validate, probe, score, report. Returns the probe's metrics (``probe/*`` and ``scoreboard/*``)."""
    cfg: ProbeRunConfig = OmegaConf.to_object(raw)  # type: ignore[assignment]
    validate(cfg)
    p = cfg.probe
    task_params: dict[str, Any] = OmegaConf.to_container(raw.task, resolve=True)  # type: ignore[assignment]
    task = make_task(**task_params)
    if cfg.sampling.max_new_tokens is None:
        cfg.sampling.max_new_tokens = raw.sampling.max_new_tokens = int(task.max_new_tokens)
    methods = board.entries() if p.scoreboard else []
    state = checkpoint_state(cfg)
    examples = list((task.test() if p.split == "test" else task.train())[: p.n_prompts])
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    out_dir = report_dir(cfg)

    tracker = Tracker(cfg.tracking.uri, p.experiment, cfg.tracking.enabled)
    overrides = job_overrides()
    tags = {
        "quadrl.kind": "probe",
        "quadrl.git_commit": git_commit(),
        "quadrl.task": task_params["name"],
        "quadrl.model": cfg.model.source if cfg.model.source == "builtin" else str(cfg.model.path),
        "quadrl.checkpoint": str(p.checkpoint or ""),
        OVERRIDES_TAG: json.dumps(overrides),
    }
    name = cfg.tracking.run_name or f"probe-{task_params['name']}-s{cfg.seed}"
    tracker.start(None, name, flatten(OmegaConf.to_container(raw, resolve=True)), tags)
    status = "FAILED"
    try:
        policy = load_run_policy(cfg, task_params, state, tracker)
        generator = torch.Generator().manual_seed(cfg.seed)
        batch = sample_groups(policy, task, examples, p.group_size, cfg.sampling, generator)
        bar = None

        def announce(plan: ProbePlan) -> None:
            nonlocal bar
            print(plan.describe(), flush=True)
            if p.progress:
                from tqdm import tqdm

                bar = tqdm(total=plan.continuations, desc="continuations", unit="", dynamic_ncols=True)

        result = probe_credit(
            policy,
            task,
            batch,
            p,
            cfg.sampling,
            cfg.algo,
            generator,
            announce=announce,
            progress=lambda n: bar.update(n) if bar is not None else None,
        )
        if bar is not None:
            bar.close()
        quadrants = cfg.diagnostics.split
        summary = credit_summary(result, quadrants)
        scores = board.scoreboard(result, methods, p.no_credit_z, cfg.seed)
        metrics = {**summary, **{k: v for s in scores for k, v in s.metrics().items()}}
        sections = [
            Section("Monte Carlo estimate", "", result, summary, scores, share_intervals(result, quadrants))
        ]
        notes: list[str] = []
        exact_values = getattr(task, "exact_values", None)
        if p.exact and exact_values is not None and cfg.sampling.top_p == 1.0:
            exact = exact_values(
                policy,
                result.plan.batch.examples,
                responses(result),
                temperature=cfg.sampling.temperature,
                max_new_tokens=int(cfg.sampling.max_new_tokens),
            )
            truth = as_probe(result, exact, p.skip_tol)
            fit = agreement(result, exact, p.k)
            exact_summary = credit_summary(truth, quadrants)
            exact_scores = board.scoreboard(truth, methods, p.no_credit_z, cfg.seed)
            sections.append(
                Section(
                    "Exact credit (the task enumerates V)",
                    "_exact",
                    truth,
                    exact_summary,
                    exact_scores,
                    share_intervals(truth, quadrants),
                )
            )
            notes.append(
                f"Estimate vs exact V: Z = {fit.z:.2f} over {fit.states} states (~ N(0, 1) if the estimates are "
                f"Binomial(k, V) / k; experiments/tasks/fork.py, agreement), {fit.nonzero_off_tree} off-tree states "
                "estimated above 0 (must be 0)."
            )
            metrics.update({"probe/agreement_z": fit.z, "probe/agreement_states": float(fit.states)})
            metrics.update({"probe_exact/" + k.partition("/")[2]: v for k, v in exact_summary.items()})
            metrics.update(
                {
                    "scoreboard_exact/" + k.partition("/")[2]: v
                    for s in exact_scores
                    for k, v in s.metrics().items()
                }
            )
        report = write_report(out_dir, sections, policy, cfg, task_params["name"], notes)
        tracker.log_metrics(metrics, 0)
        if tracker.enabled:
            tracker.client.log_artifacts(tracker.run_id, str(out_dir), "probe_report")
        print(
            f"[probe] {result.continuations:,} continuations, {result.tokens:,} tokens, {result.seconds:.0f} s"
        )
        print(f"[probe] report: {report}")
        status = "FINISHED"
        return metrics
    finally:
        tracker.finish(status)


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def _main(raw: DictConfig) -> None:
    try:
        run(raw)
    except ConfigError as exc:  # a refused value: one line and exit 2, as quadrl-train does (app.refuse)
        refuse("quadrl-probe", exc)


def main() -> None:
    register_probe_configs()
    _main()


if __name__ == "__main__":
    main()
