"""The prefix trie of each group's responses: which tokens several responses of one group share.

Part of the core: the cancellation instrument (grpo/cancellation.py, where the algebra is), ``min_replace`` and
``adv_orthogonal`` build on it. A node n = (prompt, y_<t, y_t) of a group's trie is *shared* when two or more of
the group's responses begin with the same t + 1 tokens.

Representation (exact, no hashing, no loop over tokens or positions). Two responses i, k of one group share
the node at position t iff they agree on tokens 0..t, both real there: t < lcp(i, k), the length of their
longest common prefix (responses are right-padded; lcp(i, i) = |o_i|). :func:`shared_prefixes` compares every
row with each member of its group (G passes over [B, T]) and gives every token a node id (the node's lowest
member row and t) and its node's size; a node aggregate (sum, min, max over its members) is then one segment
reduction over the B * T tokens, returned at every member token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from grpo.credit import TokenFacts


@dataclass(frozen=True)
class SharedPrefixes:
    """The nodes of every group's prefix trie (module docstring). Build with :func:`shared_prefixes`."""

    node: Tensor
    """[B, T] long: the node of each response token, ``r * T + t`` with r the first row (lowest index) of the
    node's members; -1 on padding. Two tokens share a node iff they have the same id."""
    size: Tensor
    """[B, T] long: members of each token's node (1 = unshared; 0 on padding)."""

    @property
    def shared(self) -> Tensor:
        """[B, T] bool: tokens at a node that two or more responses share."""
        return self.size >= 2

    def _reduce(self, values: Tensor, how: str, empty: float) -> Tensor:
        real = self.node >= 0
        ids = self.node[real]
        out = torch.full((self.node.numel(),), empty, dtype=values.dtype, device=values.device)
        if how == "sum":
            out.index_add_(0, ids, values[real])
        else:
            out.scatter_reduce_(0, ids, values[real], how, include_self=True)
        return torch.where(real, out[self.node.clamp_min(0)], torch.full_like(values, empty))

    def node_sum(self, values: Tensor) -> Tensor:
        """[B, T]: at each token, the sum of ``values`` over its node's members (0 on padding)."""
        return self._reduce(values, "sum", 0.0)

    def node_min(self, values: Tensor) -> Tensor:
        """[B, T]: at each token, the minimum of ``values`` over its node's members (+inf on padding)."""
        return self._reduce(values, "amin", math.inf)

    def node_max(self, values: Tensor) -> Tensor:
        """[B, T]: at each token, the maximum of ``values`` over its node's members (-inf on padding)."""
        return self._reduce(values, "amax", -math.inf)


def group_members(group_ids: Tensor) -> Tensor:
    """[B, G] long: for each row, the rows with its group id in row order, padded with -1 to the largest group."""
    _, group, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    order = torch.argsort(group, stable=True)  # rows grouped, each group in row order
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=group_ids.device) - starts[group[order]]
    table = torch.full((len(counts), int(counts.max()) if len(counts) else 0), -1, dtype=torch.long)
    table = table.to(group_ids.device)
    table[group[order], rank] = order
    return table[group]


def shared_prefixes(response_ids: Tensor, response_mask: Tensor, group_ids: Tensor) -> SharedPrefixes:
    """The nodes of each group's prefix trie (module docstring).

    For the k-th member of every row's group at once (a loop over the group size G, each pass [B, T]): the
    first position where the row and that member disagree is their common prefix length lcp; the member is in
    the row's node at position t iff t < lcp. The node's id is its lowest member row; its size counts members.
    Time O(G * B * T), memory O(B * T)."""
    mask = response_mask.bool()
    batch, width = response_ids.shape
    members = group_members(group_ids.to(response_ids.device))
    positions = torch.arange(width, device=response_ids.device)
    first = torch.full((batch, width), batch, dtype=torch.long, device=response_ids.device)
    size = torch.zeros((batch, width), dtype=torch.long, device=response_ids.device)
    for k in range(members.shape[1]):
        other = members[:, k]
        safe = other.clamp_min(0)
        disagree = (response_ids != response_ids[safe]) | ~mask | ~mask[safe] | (other < 0)[:, None]
        lcp = torch.where(
            disagree.any(-1), disagree.to(torch.uint8).argmax(-1), torch.full_like(other, width)
        )
        member = positions < lcp[:, None]
        size += member
        first = torch.where(member, torch.minimum(first, safe[:, None]), first)
    node = torch.where(size > 0, first * width + positions, torch.full_like(first, -1))
    return SharedPrefixes(node=node, size=size)


def batch_prefixes(facts: TokenFacts) -> SharedPrefixes:
    """The shared nodes of a batch's groups (the trainer always sets ``facts.response_ids``)."""
    if facts.response_ids is None:
        raise ValueError("shared prefixes need facts.response_ids (the sampled tokens); none were given")
    return shared_prefixes(facts.response_ids, facts.response_mask, facts.group_ids)
