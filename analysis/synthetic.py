"""Synthetic sweeps logged to a real MLflow store, with known effects (for tests and report demos).

Each run follows the metric contract of the training runs: ``eval/accuracy`` (and ``eval/pass_at_8``: MLflow rejects '@' in metric names) every
``eval_every`` steps, ``train/reward_mean`` and ``quadrant/<q>/<stat>`` every step, params ``seed``,
``intervention.name``, ``task.name``, tags ``quadrl.condition``, ``quadrl.overrides`` and
``mlflow.parentRunId`` under one parent run tagged ``quadrl.role=sweep``. Logged with ``log_batch``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from runrecord import CONDITION_TAG, OVERRIDES_TAG, PARENT_TAG, QUADRANTS, ROLE_TAG, SWEEP_ROLE

BATCH = 1000  # MLflow's limit of metrics per log_batch call


@dataclass
class SyntheticCondition:
    """One condition of a synthetic sweep.

    Attributes:
        intervention: value of the ``intervention=`` override (condition ``intervention=<name>``).
        final: expected final accuracy (each seed draws its own around it with sd ``noise``).
        seeds: seeds of the finished runs.
        failed_seeds: seeds whose runs stop half-way with status FAILED.
        no_accuracy_seeds: seeds whose (finished) runs log no ``eval/accuracy``.
        tag_condition: set tag ``quadrl.condition`` (else only ``quadrl.overrides``).
    """

    intervention: str
    final: float
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    failed_seeds: Sequence[int] = ()
    no_accuracy_seeds: Sequence[int] = ()
    tag_condition: bool = True

    @property
    def condition(self) -> str:
        """The condition name the loader derives."""
        return f"intervention={self.intervention}"


def accuracy_curve(steps: np.ndarray, final: float, *, start: float = 0.5, tau: float = 15.0) -> np.ndarray:
    """Saturating learning curve from ``start`` to ``final``: start + (final - start)(1 - exp(-step / tau))."""
    return start + (final - start) * (1.0 - np.exp(-steps / tau))


def _metrics(
    cond: SyntheticCondition,
    seed: int,
    rng: np.random.Generator,
    steps: int,
    eval_every: int,
    noise: float,
    failed: bool,
    with_accuracy: bool,
    quadrant_stats: Sequence[str],
) -> list[Metric]:
    now = int(time.time() * 1000)
    last = steps // 2 if failed else steps
    out: list[Metric] = []
    final = cond.final + rng.normal(0.0, noise)
    ev = np.arange(0, last + 1, eval_every)
    acc = accuracy_curve(ev.astype(float), final)
    if with_accuracy:
        out += [Metric("eval/accuracy", float(a), now, int(s)) for s, a in zip(ev, acc, strict=True)]
    out += [
        Metric("eval/pass_at_8", float(min(1.0, a + 0.1)), now, int(s)) for s, a in zip(ev, acc, strict=True)
    ]
    shares = rng.dirichlet(np.full(4, 20.0))
    for t in range(last + 1):
        out.append(
            Metric("train/reward_mean", float(final * (1 - np.exp(-t / 15)) + rng.normal(0, 0.02)), now, t)
        )
        for qi, q in enumerate(QUADRANTS):
            base = {
                "share": shares[qi],
                "entropy_mean": (1.2 if "high" in q else 0.2) * np.exp(-t / 40),
                "logprob_change": (0.02 if "pos" in q else -0.02),
                "grad_norm_share": shares[qi],
                "adv_mean": 0.5 if "pos" in q else -0.5,
            }
            for stat in quadrant_stats:
                out.append(Metric(f"quadrant/{q}/{stat}", float(base[stat] + rng.normal(0, 0.01)), now, t))
    return out


def log_synthetic_sweep(
    tracking_uri: str,
    experiment: str,
    conditions: Sequence[SyntheticCondition],
    *,
    steps: int = 60,
    eval_every: int = 10,
    noise: float = 0.03,
    seed: int = 0,
    quadrant_stats: Sequence[str] = ("share", "entropy_mean", "logprob_change", "grad_norm_share"),
    artifact_location: str | None = None,
) -> str:
    """Log a parent run and one child run per (condition, seed); return the parent run id.

    The experiment is created if absent (``artifact_location`` applies then).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location)
    parent = client.create_run(exp_id, tags={ROLE_TAG: SWEEP_ROLE}, run_name="sweep").info.run_id
    rng = np.random.default_rng(seed)
    for cond in conditions:
        for s in [*cond.seeds, *cond.failed_seeds]:
            failed = s in cond.failed_seeds and s not in cond.seeds
            overrides = [f"intervention={cond.intervention}", f"seed={s}"]
            tags = {PARENT_TAG: parent, OVERRIDES_TAG: json.dumps(overrides)}
            if cond.tag_condition:
                tags[CONDITION_TAG] = cond.condition
            run_id = client.create_run(exp_id, tags=tags, run_name=f"{cond.intervention}-s{s}").info.run_id
            params = [
                Param("seed", str(s)),
                Param("intervention.name", cond.intervention),
                Param("task.name", "synthetic"),
            ]
            metrics = _metrics(
                cond,
                s,
                rng,
                steps,
                eval_every,
                noise,
                failed,
                s not in cond.no_accuracy_seeds,
                quadrant_stats,
            )
            client.log_batch(run_id, metrics=metrics[:BATCH], params=params)
            for i in range(BATCH, len(metrics), BATCH):
                client.log_batch(run_id, metrics=metrics[i : i + BATCH])
            client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
    client.set_terminated(parent, status="FINISHED")
    return parent
