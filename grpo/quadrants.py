"""The polarity x entropy split of response tokens into four quadrants (arXiv 2604.11056), and its statistics.

Part of the core: the ``quadrant`` intervention and the per-quadrant instruments (grpo/instruments/) both split
with it.

Polarity is the sign of the GRPO sequence advantage *before* any reshaping (``facts.advantages``); tokens with
A = 0 (groups whose rewards are all equal) and padding are in no quadrant. Entropy is ``facts.entropy``, the
entropy of the sampling distribution pi_old(.|s_t) after temperature.

High vs low entropy: the rule of grpo/entropy_split.py (:class:`EntropySplit`, shared with the interventions
that split by entropy without quadrants).

The threshold that was used is reported as ``masks.threshold`` (for ``sequence_quantile`` the mean over the
non-empty sequences of their tau) and logged as ``quadrant/entropy_threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from grpo.credit import TokenCredit, TokenFacts
from grpo.entropy_split import EntropySplit, entropy_high_mask
from runrecord import QUADRANTS


@dataclass(frozen=True)
class QuadrantMasks:
    """[B, T] bool masks of the four quadrants (disjoint; none contains padding or A = 0 tokens)."""

    pos_high: Tensor
    """A > 0 and high entropy (PHR)."""
    pos_low: Tensor
    """A > 0 and low entropy (PLR)."""
    neg_high: Tensor
    """A < 0 and high entropy (NHR)."""
    neg_low: Tensor
    """A < 0 and low entropy (NLR)."""
    high: Tensor
    """[B, T] bool: high-entropy response tokens, any polarity (A = 0 tokens included)."""
    zero_adv: Tensor
    """[B, T] bool: response tokens with A = 0 (in no quadrant)."""
    threshold: float
    """The entropy threshold used (quantile modes: tokens strictly above it are high; absolute: at or above)."""
    mode: str
    """The split mode used."""

    def __getitem__(self, name: str) -> Tensor:
        if name not in QUADRANTS:
            raise KeyError(f"unknown quadrant '{name}'; quadrants are {list(QUADRANTS)}")
        return getattr(self, name)

    def items(self) -> Iterator[tuple[str, Tensor]]:
        for name in QUADRANTS:
            yield name, getattr(self, name)

    def per_token(self, values: dict[str, float], default: float = 1.0) -> Tensor:
        """[B, T] float: ``values[q]`` on quadrant q's tokens, ``default`` elsewhere (A = 0 tokens, padding)."""
        out = torch.full(self.high.shape, float(default), dtype=torch.float32, device=self.high.device)
        for name, mask in self.items():
            if name in values:
                out = torch.where(mask, torch.as_tensor(float(values[name]), device=out.device), out)
        return out


def split_quadrants(facts: TokenFacts, split: EntropySplit) -> QuadrantMasks:
    """Assign every response token with A != 0 to one quadrant (sign of ``facts.advantages`` x entropy)."""
    mask = facts.response_mask.bool()
    high, threshold = entropy_high_mask(facts.entropy, mask, split)
    pos = (facts.advantages > 0) & mask
    neg = (facts.advantages < 0) & mask
    return QuadrantMasks(
        pos_high=pos & high,
        pos_low=pos & ~high,
        neg_high=neg & high,
        neg_low=neg & ~high,
        high=high,
        zero_adv=mask & ~pos & ~neg,
        threshold=threshold,
        mode=split.mode,
    )


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    n = int(mask.sum())
    return float(values[mask].double().sum() / n) if n else math.nan


@torch.no_grad()
def quadrant_stats(facts: TokenFacts, credit: TokenCredit, masks: QuadrantMasks) -> dict[str, float]:
    """Per-step statistics of the split (no gradients). For q in QUADRANTS and for ``zero_adv``:

    - ``quadrant/<q>/share``: tokens of q / response tokens (0 when the batch has no response token);
    - ``quadrant/<q>/entropy_mean``: mean entropy over q's tokens;
    - ``quadrant/<q>/adv_mean``: mean of the *final* advantage (``credit.advantages``) over q's tokens;
    - ``quadrant/<q>/weight_mean``: mean of ``credit.weights`` over q's tokens;
    - ``quadrant/entropy_threshold``: the threshold used (``masks.threshold``).
    Means over an empty quadrant are NaN (undefined, not 0), so that averaging over steps can skip them.
    """
    n_resp = int(facts.response_mask.sum())
    out: dict[str, float] = {"quadrant/entropy_threshold": float(masks.threshold)}
    groups = [*masks.items(), ("zero_adv", masks.zero_adv)]
    for name, mask in groups:
        out[f"quadrant/{name}/share"] = float(mask.sum()) / n_resp if n_resp else 0.0
        out[f"quadrant/{name}/entropy_mean"] = _masked_mean(facts.entropy, mask)
        out[f"quadrant/{name}/adv_mean"] = _masked_mean(credit.advantages, mask)
        out[f"quadrant/{name}/weight_mean"] = _masked_mean(credit.weights, mask)
    return out
