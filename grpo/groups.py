"""Statistics over segments (prompt groups, token pools): the one helper behind GRPO's group advantages, HAPO's
standardised entropy and GTPO's per-polarity shares and z-scores.

``values`` are reduced over their leading dimension: row i belongs to segment ``segment_ids[i]``; rows where
``mask`` is false take no part (padding, tokens of another polarity). Per segment s with n_s member rows::

    count_s = n_s
    mean_s  = sum_i x_i / n_s                                    (0 for an empty segment)
    std_s   = sqrt( sum_i (x_i - mean_s)^2 / max(n_s - ddof, 1) )
    flat_s  = max_i x_i == min_i x_i  (exactly; also true for an empty segment)

``flat`` is exact on purpose: a sum divided by a count rounds (seven rewards of 0.1 give a mean 1 ulp off), so
a caller that must give "no signal" an exact 0 tests ``flat`` rather than a small std.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SegmentStats:
    """Per-segment statistics (each ``[S, *values.shape[1:]]``) and the segment of every row."""

    count: Tensor
    mean: Tensor
    std: Tensor
    flat: Tensor
    segment_ids: Tensor

    def per_row(self, stat: Tensor) -> Tensor:
        """A per-segment statistic broadcast back to the rows (``stat[segment_ids]``)."""
        return stat[self.segment_ids]


def segment_sum(values: Tensor, segment_ids: Tensor, n_segments: int) -> Tensor:
    """``out[s] = sum of values[i] over the rows i with segment_ids[i] == s`` (any trailing shape)."""
    out = torch.zeros((n_segments, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, segment_ids.to(values.device), values)


def segment_stats(
    values: Tensor,
    segment_ids: Tensor,
    n_segments: int | None = None,
    *,
    ddof: int = 0,
    mask: Tensor | None = None,
) -> SegmentStats:
    """Count, mean, std (with ``ddof``) and exact flatness of ``values`` per segment (module docstring)."""
    ids = segment_ids.to(values.device).long()
    if n_segments is None:
        n_segments = int(ids.max()) + 1 if ids.numel() else 0
    member = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.to(values.device).bool()
    x = torch.where(member, values, torch.zeros_like(values))
    count = segment_sum(member.to(values.dtype), ids, n_segments)
    mean = segment_sum(x, ids, n_segments) / count.clamp_min(1)
    centred = torch.where(member, values - mean[ids], torch.zeros_like(values))
    std = (segment_sum(centred**2, ids, n_segments) / (count - ddof).clamp_min(1)).sqrt()
    shape = (n_segments, *values.shape[1:])
    expanded = ids.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    high = torch.full(shape, -torch.inf, dtype=values.dtype, device=values.device)
    low = torch.full(shape, torch.inf, dtype=values.dtype, device=values.device)
    high = high.scatter_reduce(0, expanded, torch.where(member, values, -torch.inf), "amax")
    low = low.scatter_reduce(0, expanded, torch.where(member, values, torch.inf), "amin")
    return SegmentStats(count, mean, std, ~(high > low), ids)
