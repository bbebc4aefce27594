"""Per-quadrant diagnostics the trainer calls (not a method): gradient decomposition, log-prob change, diversity.

Gradient decomposition. The trainer passes ``loss_for_multiplier(m)``: the scalar policy loss with every
token's weight multiplied by the [B, T] float tensor m (m = ones gives the loss it optimises). The loss is affine
in m -- L(m) = sum_t m_t a_t + c, where c collects whatever the closure does not multiply by m (e.g. the KL term
if only the policy-gradient weights are scaled) -- so with g(m) = dL(m)/dtheta::

    g_base = g(0)                            the part not multiplied by m (0 if the closure scales every term)
    g_q    = g(1_q) - g_base                 the gradient of quadrant q's tokens, q in QUADRANTS and zero_adv
    g_full = g(1) = g_base + sum_q g_q       (the quadrants and the A = 0 tokens partition the response tokens;
                                              padding contributes nothing because its weight is 0)

Returned, for q in QUADRANTS (and ``zero_adv``):
- ``quadrant/<q>/grad_norm``        ||g_q||_2 over all ``params``;
- ``quadrant/<q>/grad_norm_share``  ||g_q|| / sum over the four quadrants of ||g_q'||  (shares of *norm mass*;
  the four sum to 1 when any is non-zero. Norms of non-orthogonal vectors do not add, so this is not the share
  of ||g_full||; use grad_cos for the alignment. zero_adv's share uses the same denominator);
- ``quadrant/<q>/grad_cos``         cos(g_q, g_full), in [-1, 1]; 0 when q is empty or either norm is 0;
and ``quadrant/full/grad_norm``, ``quadrant/base/grad_norm`` (g_base) and ``quadrant/grad_sum_residual`` =
||g_full - g_base - sum_q g_q|| / ||g_full|| (a check of the closure's linearity; ~1e-7 expected).
Cost: up to 7 backward passes (1, 0, four quadrants, zero_adv; empty quadrants are skipped).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from grpo.quadrants import QUADRANTS, QuadrantMasks

_PARTS = (*QUADRANTS, "zero_adv")


def _part_masks(masks: QuadrantMasks) -> dict[str, Tensor]:
    return {**dict(masks.items()), "zero_adv": masks.zero_adv}


def _grads(params: Sequence[Tensor], loss: Tensor) -> list[Tensor]:
    if not loss.requires_grad:
        return [torch.zeros_like(p) for p in params]
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads, strict=True)]


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)))


def quadrant_gradient_diagnostics(
    params: list[Tensor], loss_for_multiplier: Callable[[Tensor], Tensor], masks: QuadrantMasks
) -> dict[str, float]:
    """Per-quadrant gradient norms, norm shares and cosines with the full gradient (module docstring)."""
    params = [p for p in params if p.requires_grad]
    shape, device = masks.high.shape, masks.high.device
    g_full = _grads(params, loss_for_multiplier(torch.ones(shape, dtype=torch.float32, device=device)))
    g_base = _grads(params, loss_for_multiplier(torch.zeros(shape, dtype=torch.float32, device=device)))
    full_norm = math.sqrt(_dot(g_full, g_full))
    residual = [f - b for f, b in zip(g_full, g_base, strict=True)]

    out: dict[str, float] = {
        "quadrant/full/grad_norm": full_norm,
        "quadrant/base/grad_norm": math.sqrt(_dot(g_base, g_base)),
    }
    norms: dict[str, float] = {}
    for name, mask in _part_masks(masks).items():
        if not bool(mask.any()):
            norms[name], out[f"quadrant/{name}/grad_cos"] = 0.0, 0.0
            continue
        g = _grads(params, loss_for_multiplier(mask.to(torch.float32)))
        g = [x - b for x, b in zip(g, g_base, strict=True)]
        residual = [r - x for r, x in zip(residual, g, strict=True)]
        norms[name] = math.sqrt(_dot(g, g))
        denom = norms[name] * full_norm
        cos = _dot(g, g_full) / denom if denom > 0 else 0.0
        out[f"quadrant/{name}/grad_cos"] = max(-1.0, min(1.0, cos))
    total = sum(norms[q] for q in QUADRANTS)
    for name in _PARTS:
        out[f"quadrant/{name}/grad_norm"] = norms[name]
        out[f"quadrant/{name}/grad_norm_share"] = norms[name] / total if total > 0 else 0.0
    out["quadrant/grad_sum_residual"] = (
        math.sqrt(_dot(residual, residual)) / full_norm if full_norm > 0 else 0.0
    )
    return out


@torch.no_grad()
def logprob_change(before: Tensor, after: Tensor, masks: QuadrantMasks) -> dict[str, float]:
    """``quadrant/<q>/logprob_change``: mean over q's tokens of log pi_after - log pi_before of the sampled tokens.

    ``before``/``after`` are [B, T] log-probs of the same sampled tokens (e.g. before and after the update).
    q ranges over QUADRANTS and ``zero_adv``; NaN for an empty quadrant.
    """
    delta = (after.double() - before.double()).to(masks.high.device)
    out: dict[str, float] = {}
    for name, mask in _part_masks(masks).items():
        n = int(mask.sum())
        out[f"quadrant/{name}/logprob_change"] = float(delta[mask].sum() / n) if n else math.nan
    return out


def answer_diversity(answers: Sequence[str | None], group_ids: Sequence[int]) -> float:
    """Mean over prompt groups of (number of distinct non-None final answers) / (group size).

    1.0: every response of every group reached a different answer; 1/G: each group agrees on one answer;
    None answers (unparsable) count in the group size but not as answers. NaN for an empty batch.
    """
    if len(answers) != len(group_ids):
        raise ValueError(f"answers ({len(answers)}) and group_ids ({len(group_ids)}) differ in length")
    groups: dict[int, list[str | None]] = {}
    for answer, gid in zip(answers, group_ids, strict=True):
        groups.setdefault(int(gid), []).append(answer)
    if not groups:
        return math.nan
    return sum(len({a for a in g if a is not None}) / len(g) for g in groups.values()) / len(groups)
