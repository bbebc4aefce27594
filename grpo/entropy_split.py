"""How response tokens are called high- or low-entropy: :class:`EntropySplit` and :func:`entropy_high_mask`.

A core primitive with no study type in it: the intervention contract (``Intervention.quadrant_split``), the
quadrant split (grpo/quadrants.py) and the methods that act on high-entropy tokens (``dasd``,
``attention_entropy``) all use it. Entropy is ``facts.entropy``, the entropy of the sampling distribution
pi_old(.|s_t) after temperature.

High vs low entropy (the one rule, for both quantile modes)
------------------------------------------------------------
Let the *pool* be the response tokens the threshold is computed over (the whole batch for ``batch_quantile``,
one sequence for ``sequence_quantile``), n its size and f = ``high_fraction``::

    k   = ceil(f * n)                                       (top 20% "rounded up")
    tau = the (k+1)-th largest entropy in the pool          (sorted descending, 0-based index k),
          or the pool's smallest entropy when k >= n
    high  <=>  H_t > tau                                    (strictly above)

Consequences, all tested:
- distinct entropies: exactly k tokens are high (k = f*n when f*n is an integer);
- ties at the boundary all count as *low*, so at most k tokens are high (k = f*n rounded *up*: with f*n not an
  integer, e.g. n = 6 and f = 0.2, k = 2 is a little more than the fraction asked);
- all entropies equal: no token is high (there is no "high" in a constant distribution);
- the pool's minimum is never high.
The threshold is found by rank in integers (f*n rounded to 6 decimals before the ceil), so floating-point
error cannot move the boundary. It is *not* ``torch.quantile(H, 1 - f, interpolation="lower")`` with ``>``,
which keeps ceil(f * (n - 1)) distinct tokens (1 of 6 at f = 0.2, where this rule keeps 2); the two differ by
at most one token.

``absolute``: high <=> H_t >= ``threshold`` (nats) -- "at or above", as grpo/config.py documents it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from grpo import checks as check
from grpo.checks import ConfigError

SplitMode = Literal["batch_quantile", "sequence_quantile", "absolute"]
SPLIT_MODES: tuple[str, ...] = get_args(SplitMode)


@dataclass
class EntropySplit:
    """How response tokens are called high- or low-entropy (see the module docstring for the exact rule)."""

    mode: str = "batch_quantile"
    """``batch_quantile``: the top ``high_fraction`` of the batch's response tokens by entropy are high;
    ``sequence_quantile``: the same rule within each response; ``absolute``: entropy >= ``threshold``."""
    high_fraction: float = 0.2
    """Fraction of the pool called high in the quantile modes, in (0, 1); k = ceil(high_fraction * n)."""
    threshold: float | None = None
    """Entropy in nats for ``mode: absolute`` (high <=> H >= threshold); required there, ignored otherwise."""

    def validate(self, where: str = "entropy split") -> None:
        check.choice(where, "split.mode", self.mode, SPLIT_MODES)
        check.number(
            where, "split.high_fraction", self.high_fraction, low=0.0, high=1.0, low_open=True, high_open=True
        )
        if self.mode == "absolute":
            if self.threshold is None:
                raise ConfigError(f"{where}: split.threshold is required when split.mode is 'absolute'")
            check.number(where, "split.threshold", self.threshold, low=0.0)


def _rank_threshold(sorted_desc: Tensor, n: Tensor, fraction: float) -> Tensor:
    """tau per row: sorted_desc [R, M] (descending, padded with -inf), n [R] pool sizes (>= 1)."""
    # k = ceil(f * n), with f * n rounded to 6 decimals first so that e.g. 0.2 * 15 = 3.0000000000000004 -> 3
    k = torch.ceil(torch.round(fraction * n.double() * 1e6) / 1e6).long()
    index = torch.minimum(k, n - 1).clamp_min(0)
    return sorted_desc.gather(1, index[:, None]).squeeze(1)


def entropy_high_mask(entropy: Tensor, response_mask: Tensor, split: EntropySplit) -> tuple[Tensor, float]:
    """[B, T] bool high-entropy response tokens and the threshold used (module docstring)."""
    mask = response_mask.bool()
    if split.mode == "absolute":
        assert split.threshold is not None
        return (entropy >= split.threshold) & mask, float(split.threshold)
    if split.mode == "batch_quantile":
        pool = entropy[mask]
        if pool.numel() == 0:
            return torch.zeros_like(mask), math.nan
        n = torch.tensor([pool.numel()], device=entropy.device)
        tau = _rank_threshold(pool.sort(descending=True).values[None, :], n, split.high_fraction)[0]
        return (entropy > tau) & mask, float(tau)
    if split.mode == "sequence_quantile":
        filled = entropy.masked_fill(~mask, -math.inf)
        n = mask.sum(-1)
        tau = _rank_threshold(
            filled.sort(dim=-1, descending=True).values, n.clamp_min(1), split.high_fraction
        )
        nonempty = n > 0
        tau = torch.where(nonempty, tau, torch.full_like(tau, math.inf))
        high = (entropy > tau[:, None]) & mask
        threshold = float(tau[nonempty].double().mean()) if bool(nonempty.any()) else math.nan
        return high, threshold
    raise ValueError(f"unknown entropy split mode '{split.mode}'")
