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

from grpo.groups import segment_stats


def group_advantages(
    rewards: Tensor, group_ids: Tensor, scale_by_std: bool = True, eps: float = 1e-4
) -> Tensor:
    """[B] rewards, [B] group ids (0..n-1) -> [B] advantages (on the rewards' device).

    A group whose rewards are all equal gets exactly 0 (:mod:`grpo.groups`: its mean may be 1 ulp off, and
    dividing that residue by an equally tiny std would turn "no signal" into A = +-0.93)."""
    stats = segment_stats(rewards, group_ids, ddof=1)
    flat = stats.per_row(stats.flat)
    centred = torch.where(flat, torch.zeros_like(rewards), rewards - stats.per_row(stats.mean))
    if not scale_by_std:
        return centred
    return torch.where(flat, torch.zeros_like(centred), centred / (stats.per_row(stats.std) + eps))


def informative_groups(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """[B] bool: true for responses whose group has non-zero reward variance (DAPO dynamic sampling)."""
    stats = segment_stats(rewards, group_ids)
    return ~stats.per_row(stats.flat)


def overlong_penalty(lengths: Tensor, max_new_tokens: int, buffer: int, factor: float = 1.0) -> Tensor:
    """[B] response lengths -> [B] DAPO soft overlong penalty (<= 0) times ``factor``; 0 everywhere when
    ``buffer`` is 0. Responses never exceed ``max_new_tokens`` here (the sampler stops there)."""
    if buffer <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32, device=lengths.device)
    over = (lengths.float() - (max_new_tokens - buffer)).clamp_min(0.0)
    return -factor * over / buffer


def distillation_advantages(
    teacher_logprobs: Tensor, student_logprobs: Tensor, response_mask: Tensor
) -> Tensor:
    """On-policy distillation (``algo.advantage=teacher``): the per-token advantage of response token y_t::

        a_t = log pi_T(y_t | y_<t) - log pi_old(y_t | y_<t)          (0 on padding)

    minus the sampled-token estimate of the reverse KL(pi_old || pi_T) at step t: tokens the teacher finds likelier
    than the student are pushed up, the others down, with no reward (arXiv 2606.22600, after the GKD / on-policy
    distillation line). Both log-probs are those of the same no-grad forward numerics (grpo.facts), so a teacher
    equal to the student gives exactly 0."""
    return (teacher_logprobs - student_logprobs) * response_mask.to(teacher_logprobs.dtype)
