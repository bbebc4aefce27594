"""The credit probe as a training-run instrument: ``probe/*`` every ``probe.every`` steps (grpo/probe.py)."""

from __future__ import annotations

import torch

from grpo.batch import sample_groups
from grpo.config import QuadrlConfig
from grpo.entropy_split import EntropySplit
from grpo.instrument import Instrument
from grpo.model import Policy
from grpo.probe import credit_summary, probe_credit
from grpo.task import Task


class CreditProbeInstrument(Instrument):
    """Where the measured credit of the current policy sits, on the first ``probe.n_prompts`` prompts of its
    split, at step 0 and every ``probe.every`` steps, with a generator of its own: training's streams are
    untouched. The quadrants are those of ``split`` (the run's quadrant instruments')."""

    def __init__(self, cfg: QuadrlConfig, policy: Policy, task: Task, split: EntropySplit):
        self.cfg, self.policy, self.task, self.split = cfg, policy, task, split

    def between_steps(self, steps_done: int) -> dict[str, float]:
        p = self.cfg.probe
        if not (p.every > 0 and steps_done % p.every == 0):
            return {}
        examples = list((self.task.test() if p.split == "test" else self.task.train())[: p.n_prompts])
        gen = torch.Generator().manual_seed(self.cfg.seed * 15_485_863 + steps_done)
        batch = sample_groups(self.policy, self.task, examples, p.group_size, self.cfg.sampling, gen)
        result = probe_credit(
            self.policy, self.task, batch, p, self.cfg.sampling, self.cfg.algo, gen, step=steps_done
        )
        return credit_summary(result, self.split)
