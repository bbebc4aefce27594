"""Group-relative advantages.

For the G responses i of one prompt with rewards r_1..r_G::

    A_i = (r_i - mean_j r_j) / (std_j r_j + eps)     (GRPO, DAPO; std with Bessel's correction, as TRL)
    A_i =  r_i - mean_j r_j                          (Dr. GRPO: scale_by_std = False)

A group whose rewards are all equal gets A_i = 0 for every response (no learning signal); DAPO's dynamic
sampling drops such groups before the update (:func:`informative_groups`).

DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13) is added to r_i before the advantages, for a response
of |y| tokens, L_max = max_new_tokens and a buffer of L_cache tokens (:func:`overlong_penalty`)::

    R_len(y) = 0                                    |y| <= L_max - L_cache
    R_len(y) = ((L_max - L_cache) - |y|) / L_cache  L_max - L_cache < |y| <= L_max   (down to -1 at L_max)
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(
    rewards: Tensor, group_ids: Tensor, scale_by_std: bool = True, eps: float = 1e-4
) -> Tensor:
    """[B] rewards, [B] group ids (0..n-1) -> [B] advantages (on the rewards' device)."""
    n_groups = int(group_ids.max().item()) + 1
    group_ids = group_ids.to(rewards.device)
    # accumulators on the rewards' device: index_add_ refuses to mix a CPU buffer with CUDA rewards
    zeros = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device)
    count = zeros.clone().index_add_(0, group_ids, torch.ones_like(rewards))
    total = zeros.clone().index_add_(0, group_ids, rewards)
    mean = total / count
    # an all-equal group must get exactly 0: sum/count rounds (seven rewards of 0.1 give a mean 1 ulp off),
    # and dividing that residue by an equally tiny std would turn "no signal" into A = +-0.93
    flat = ~informative_groups(rewards, group_ids)
    centred = torch.where(flat, torch.zeros_like(rewards), rewards - mean[group_ids])
    if not scale_by_std:
        return centred
    sq = zeros.clone().index_add_(0, group_ids, centred**2)
    std = (sq / (count - 1).clamp_min(1)).sqrt()[group_ids]
    return torch.where(flat, torch.zeros_like(centred), centred / (std + eps))


def informative_groups(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """[B] bool: true for responses whose group has non-zero reward variance (DAPO dynamic sampling)."""
    n_groups = int(group_ids.max().item()) + 1
    group_ids = group_ids.to(rewards.device)
    like = {"dtype": rewards.dtype, "device": rewards.device}
    high = torch.full((n_groups,), -torch.inf, **like).scatter_reduce(0, group_ids, rewards, "amax")
    low = torch.full((n_groups,), torch.inf, **like).scatter_reduce(0, group_ids, rewards, "amin")
    return (high > low)[group_ids]


def overlong_penalty(lengths: Tensor, max_new_tokens: int, buffer: int, factor: float = 1.0) -> Tensor:
    """[B] response lengths -> [B] DAPO soft overlong penalty (<= 0) times ``factor``; 0 everywhere when
    ``buffer`` is 0. Responses never exceed ``max_new_tokens`` here (the sampler stops there)."""
    if buffer <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32, device=lengths.device)
    over = (lengths.float() - (max_new_tokens - buffer)).clamp_min(0.0)
    return -factor * over / buffer
