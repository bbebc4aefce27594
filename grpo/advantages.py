"""Group-relative advantages.

For the G responses i of one prompt with rewards r_1..r_G::

    A_i = (r_i - mean_j r_j) / (std_j r_j + eps)     (GRPO, DAPO; std with Bessel's correction, as TRL)
    A_i =  r_i - mean_j r_j                          (Dr. GRPO: scale_by_std = False)

A group whose rewards are all equal gets A_i = 0 for every response (no learning signal); DAPO's dynamic
sampling drops such groups before the update (:func:`informative_groups`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(
    rewards: Tensor, group_ids: Tensor, scale_by_std: bool = True, eps: float = 1e-4
) -> Tensor:
    """[B] rewards, [B] group ids (0..n-1) -> [B] advantages."""
    n_groups = int(group_ids.max().item()) + 1
    ones = torch.ones_like(rewards)
    count = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group_ids, ones)
    total = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group_ids, rewards)
    mean = total / count
    centred = rewards - mean[group_ids]
    if not scale_by_std:
        return centred
    sq = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group_ids, centred**2)
    std = (sq / (count - 1).clamp_min(1)).sqrt()[group_ids]
    # an all-equal group has centred == 0: keep it exactly 0 even when eps = 0
    return torch.where(centred == 0, torch.zeros_like(centred), centred / (std + eps))


def informative_groups(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """[B] bool: true for responses whose group has non-zero reward variance (DAPO dynamic sampling)."""
    n_groups = int(group_ids.max().item()) + 1
    high = torch.full((n_groups,), -torch.inf, dtype=rewards.dtype).scatter_reduce(
        0, group_ids, rewards, "amax"
    )
    low = torch.full((n_groups,), torch.inf, dtype=rewards.dtype).scatter_reduce(
        0, group_ids, rewards, "amin"
    )
    return (high > low)[group_ids]
