"""One rollout batch and how it is sampled: G responses to each prompt, scored by the task's verifier.

The training loop (grpo/trainer.py), the credit probe (grpo/probe.py) and its app sample through
:func:`sample_groups`; a batch holds this process's rows (whole groups).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from grpo.config import SamplingConfig
from grpo.engine import engine_of
from grpo.model import Policy
from grpo.rollout import Rollout
from grpo.task import Example, Task, score_completions


@dataclass
class Batch:
    """One rollout batch: G responses for each of its prompts, with rewards and texts."""

    rollout: Rollout
    examples: list[Example]
    """One per response (prompt repeated G times)."""
    texts: list[str]
    rewards: Tensor
    group_ids: Tensor
    reward_stats: dict[str, float] = field(default_factory=dict)
    """What scoring cost: ``perf/reward_time_s``, ``train/reward_timeouts``, ``train/reward_errors``."""

    def select(self, rows: Tensor) -> Batch:
        r = self.rollout
        keep = rows.tolist()
        _, group_ids = torch.unique_consecutive(self.group_ids[rows], return_inverse=True)
        return Batch(
            Rollout(
                r.prompt_ids[rows],
                r.prompt_mask[rows],
                r.response_ids[rows],
                r.response_mask[rows],
                r.logprobs[rows],
                r.entropy[rows],
                None if r.rollout_logprobs is None else r.rollout_logprobs[rows],
            ),
            [self.examples[i] for i in keep],
            [self.texts[i] for i in keep],
            self.rewards[rows],
            group_ids,
        )


def concat_batches(batches: list[Batch], pad_id: int) -> Batch:
    """Stack batches whose prompts and responses have different widths (left/right padding kept)."""
    if len(batches) == 1:
        return batches[0]
    p_width = max(b.rollout.prompt_ids.shape[1] for b in batches)
    t_width = max(b.rollout.response_ids.shape[1] for b in batches)

    def pad(x: Tensor, width: int, left: bool, value: float | int | bool) -> Tensor:
        extra = width - x.shape[1]
        filler = torch.full((x.shape[0], extra), value, dtype=x.dtype, device=x.device)
        return torch.cat([filler, x] if left else [x, filler], dim=1)

    r = [b.rollout for b in batches]
    rollout = Rollout(
        torch.cat([pad(x.prompt_ids, p_width, True, pad_id) for x in r]),
        torch.cat([pad(x.prompt_mask, p_width, True, False) for x in r]),
        torch.cat([pad(x.response_ids, t_width, False, pad_id) for x in r]),
        torch.cat([pad(x.response_mask, t_width, False, False) for x in r]),
        torch.cat([pad(x.logprobs, t_width, False, 0.0) for x in r]),
        torch.cat([pad(x.entropy, t_width, False, 0.0) for x in r]),
        None
        if any(x.rollout_logprobs is None for x in r)
        else torch.cat([pad(x.rollout_logprobs, t_width, False, 0.0) for x in r]),  # type: ignore[arg-type]
    )
    offsets, group_ids = 0, []
    for b in batches:
        group_ids.append(b.group_ids + offsets)
        offsets += int(b.group_ids.max()) + 1 if len(b.group_ids) else 0
    return Batch(
        rollout,
        [e for b in batches for e in b.examples],
        [t for b in batches for t in b.texts],
        torch.cat([b.rewards for b in batches]),
        torch.cat(group_ids),
    )


def sample_groups(
    policy: Policy,
    task: Task,
    examples: list[Example],
    group_size: int,
    sampling: SamplingConfig,
    generator: torch.Generator,
) -> Batch:
    """``group_size`` responses to each prompt, scored by the task's verifier (rows ordered by prompt)."""
    flat = [ex for ex in examples for _ in range(group_size)]
    policy.model.eval()
    roll = engine_of(policy).generate(
        policy.model,
        [ids for ex in examples for ids in [policy.encode_prompt(ex.prompt, ex.messages)] * group_size],
        max_new_tokens=sampling.max_new_tokens,
        eos_id=policy.stop_ids,
        pad_id=policy.pad_id,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        generator=generator,
    )
    policy.model.train()  # the update that follows trains in train mode (LoRA dropout)
    texts = [policy.decode(roll.response_ids[i][roll.response_mask[i]].tolist()) for i in range(len(flat))]
    started = time.perf_counter()
    scored = score_completions(task, flat, texts)
    stats = {
        "perf/reward_time_s": time.perf_counter() - started,
        "train/reward_timeouts": float(scored.timeouts),
        "train/reward_errors": float(sum(scored.errors.values())),
    }
    for name, (total, n, none) in scored.parts.items():  # summed over sampling rounds; mean taken in step()
        stats.update({f"train/reward/{name}": total, f"train/reward/{name}/n": n})
        stats[f"train/reward/{name}/none"] = none
    rewards = torch.tensor(scored.rewards, dtype=torch.float32)
    group_ids = torch.arange(len(examples)).repeat_interleave(group_size)
    return Batch(roll, flat, texts, rewards, group_ids, stats)
