"""One training step of every given intervention on one fixed global batch, in 1 or W processes.

Run as ``python -m tests.grpo.distributed_worker OUT SPEC...`` (one process: today's code path) or under
``torchrun --nproc_per_node=W -m tests.grpo.distributed_worker OUT SPEC...``; a SPEC is a method name, optionally
with overrides after ``@`` separated by ``;`` (``none@algo=dapo;algo.dynamic_sampling=false``); the word ``ROUNDS``
among them replaces each sampling call instead of the whole rollout by a batch sampled beforehand (one per
call), so that dynamic sampling's refill runs for real. Every rank samples the same global
batch (same model, seed and thread count) on the unsharded model, keeps its own share of whole groups, and runs
the real ``Trainer.step``; rank 0 saves, per method, the full gradient of every trainable parameter (gathered from
the FSDP2 shards) and the step's logged metrics to OUT, for tests/grpo/test_distributed.py to compare.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

import interventions
from experiments.tasks import make_task
from grpo import distributed
from grpo.batch import Batch, sample_groups
from grpo.config import QuadrlConfig
from grpo.credit import build_intervention
from grpo.instruments import standard_instruments
from grpo.metrics import NullSink
from grpo.model import load_policy
from grpo.trainer import Trainer
from tests.conftest import REPO, compose_config

PROMPTS, GROUP = 4, 4
NEEDS = {"arca": ["model=tiny_lora", "model.lora.r=4"]}
"""What a method needs to run at all (ARCA reads the LoRA adapter's residual)."""


class FixedBatchTrainer(Trainer):
    """The real trainer, whose rollout returns this rank's share of a batch sampled beforehand."""

    fixed: Batch

    def rollout(self) -> tuple[Batch, dict[str, float]]:
        rows = torch.arange(len(self.fixed.rewards))
        mine = torch.tensor_split(rows, self.world.size)[self.world.rank]
        return self.fixed.select(mine), {}


ROUNDS = "ROUNDS"
N_ROUNDS = 8
"""Batches sampled beforehand for the ROUNDS mode (more than DAPO's refill takes here)."""


class FixedRoundsTrainer(Trainer):
    """The real trainer and rollout, each sampling call of which returns the next batch sampled beforehand (this
    rank's share of its whole groups)."""

    rounds: list[Batch]

    def sample_groups(self, examples: list) -> Batch:
        batch, self.rounds = self.rounds[0], self.rounds[1:]
        if not self.world.active:
            return batch
        groups = torch.tensor_split(torch.unique(batch.group_ids), self.world.size)[self.world.rank]
        return batch.select(torch.nonzero(torch.isin(batch.group_ids, groups)).squeeze(-1))


def one_step(spec: str, world: distributed.World, run_dir: Path) -> dict[str, Any]:
    method, _, extra = spec.partition("@")
    raw = compose_config(
        f"intervention={method}",
        *NEEDS.get(method, ["model=tiny"]),
        "tracking=off",
        f"run_dir={run_dir}",
        f"algo.prompts_per_step={PROMPTS}",
        f"algo.group_size={GROUP}",
        "train.steps=1",
        "train.threads=1",
        "train.progress=false",
        "train.log_samples_every=0",
        "diagnostics.every=0",
        "model.lora.dropout=0.0",  # dropout masks drawn per rank could not match one process's
        "model.device=cpu",
        *(o for o in extra.split(";") if o and o != ROUNDS),
    )
    cfg: QuadrlConfig = OmegaConf.to_object(raw)  # type: ignore[assignment]
    task = make_task(**OmegaConf.to_container(raw.task, resolve=True))  # type: ignore[arg-type]
    cfg.sampling.max_new_tokens = cfg.sampling.max_new_tokens or int(task.max_new_tokens)
    intervention = build_intervention(OmegaConf.to_container(raw.intervention, resolve=True))  # type: ignore[arg-type]
    policy = load_policy(cfg.model, REPO / "models" / "arith", need_reference=cfg.algo.beta > 0, seed=0)
    # before sharding: every rank draws the same global batches
    batches = [
        sample_groups(
            policy,
            task,
            [task.train()[k * PROMPTS + i] for i in range(PROMPTS)],
            GROUP,
            cfg.sampling,
            torch.Generator().manual_seed(1234 + k),
        )
        for k in range(N_ROUNDS if ROUNDS in extra else 1)
    ]
    measure = standard_instruments(cfg, intervention, policy, task)
    if ROUNDS in extra:
        trainer = FixedRoundsTrainer(
            cfg, policy, task, intervention, NullSink(), run_dir, world=world, instruments=measure
        )
        trainer.rounds = batches
    else:
        trainer = FixedBatchTrainer(
            cfg, policy, task, intervention, NullSink(), run_dir, world=world, instruments=measure
        )
        trainer.fixed = batches[0]
    metrics = trainer.step(0)
    grads = {}
    for name, p in policy.model.named_parameters():
        if p.requires_grad:
            g = p.grad
            grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
    return {"grads": grads, "metrics": {k: v for k, v in metrics.items() if not k.startswith("perf/")}}


def main() -> None:
    out, methods = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    interventions.load_all()
    world = distributed.init(torch.device("cpu"), timeout_s=120)
    results = {m: one_step(m, world, out.parent / f"run-{i}-{world.rank}") for i, m in enumerate(methods)}
    if world.is_main:
        torch.save(results, out)
    distributed.shutdown()


if __name__ == "__main__":
    main()
