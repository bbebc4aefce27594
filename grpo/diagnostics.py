"""Per-quadrant diagnostics (not a method): gradient decomposition, log-prob change, answer diversity.

Measured by the instruments of grpo/instruments/ (the training loop calls their hooks, never this module).

Gradient decomposition. The caller (``GradientDiagnostics``, from the step's ``StepView``) passes
``loss_for_multiplier(m, logp)``: the scalar policy loss of the current log-probs ``logp`` ([B, T]) with every
token's weight multiplied by the [B, T] float tensor m (m = ones gives the loss it optimises). The loss is affine in m -- L(m) = sum_t m_t a_t + c, where c collects whatever
the closure does not multiply by m (e.g. the KL term if only the policy-gradient weights are scaled) -- so with
g(m) = dL(m)/dtheta::

    g_base = g(0)                            the part not multiplied by m (0 if the closure scales every term)
    g_q    = g(1_q) - g_base                 the gradient of quadrant q's tokens, q in QUADRANTS and zero_adv
    g_full = g(1) = g_base + sum_q g_q       (the quadrants and the A = 0 tokens partition the response tokens;
                                              padding contributes nothing because its weight is 0)

How it is computed (the numbers are those of the definitions above, up to float rounding): theta reaches the
loss only through ``logp``, so g(m) = J^T v(m) with J = dlogp/dtheta and v(m) = dL(m)/dlogp, a [B, T] tensor
that costs one backward through the loss alone (no model). The model is differentiated only where v is not 0:
u_q = v(1_q) - v(0) is 0 outside the rows that hold q's tokens, so each part's J^T u_q comes from a forward and
backward over its own rows (``logp_for_rows(rows)``: the current log-probs of those rows, with grad); parts whose
rows overlap (pos_high and pos_low: the positive responses) share one forward; a part whose u is 0 everywhere
(zero_adv under plain GRPO: A = 0 gives no policy-gradient term) costs nothing; g_base is computed only when v(0)
is not 0 (a KL term), and g_full is the sum. The loss terms are per token (their normalisers count tokens, not
values), so a row's v depends on that row's log-probs only: v is evaluated at the group's own forward.

Returned, for q in QUADRANTS (and ``zero_adv``):
- ``quadrant/<q>/grad_norm``        ||g_q||_2 over all ``params``;
- ``quadrant/<q>/grad_norm_share``  ||g_q|| / sum over the four quadrants of ||g_q'||  (shares of *norm mass*;
  the four sum to 1 when any is non-zero. Norms of non-orthogonal vectors do not add, so this is not the share
  of ||g_full||; use grad_cos for the alignment. zero_adv's share uses the same denominator);
- ``quadrant/<q>/grad_cos``         cos(g_q, g_full), in [-1, 1]; 0 when q is empty or either norm is 0;
and ``quadrant/full/grad_norm``, ``quadrant/base/grad_norm`` (g_base) and ``quadrant/grad_sum_residual`` =
||v(1) - v(0) - sum_q u_q|| / ||v(1)||, evaluated at ``logp_values`` (a check of the closure's linearity in m;
~1e-7 expected).
Cost: a forward and a backward over the positive responses' rows with one more backward, the same over the
negative ones, plus a full forward and backward when there is a KL term; the instrument adds a no-grad forward for
the log-prob change. Before this, it was one full forward and up to 7 full backward passes.
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


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)))


def _direction(loss_for_multiplier: Callable[[Tensor, Tensor], Tensor], m: Tensor, at: Tensor) -> Tensor:
    """v(m) = dL(m)/dlogp at logp = ``at`` (a backward through the loss alone)."""
    logp = at.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_for_multiplier(m, logp)
    if not loss.requires_grad:
        return torch.zeros_like(logp)
    (v,) = torch.autograd.grad(loss, logp, allow_unused=True)
    return torch.zeros_like(logp) if v is None else v.detach()


def _rows_of(v: Tensor) -> Tensor:
    return torch.nonzero(v.ne(0).any(-1)).squeeze(-1)


def _groups(supports: dict[str, Tensor]) -> list[tuple[Tensor, list[str]]]:
    """Parts whose row sets overlap, merged: (union of their rows, their names)."""
    groups: list[tuple[set[int], list[str]]] = []
    for name, rows in supports.items():
        rows_set, names = set(rows.tolist()), [name]
        for other in [g for g in groups if g[0] & rows_set]:
            groups.remove(other)
            rows_set, names = rows_set | other[0], other[1] + names
        groups.append((rows_set, names))
    return [(torch.tensor(sorted(rows)), names) for rows, names in groups]


def quadrant_gradient_diagnostics(
    params: list[Tensor],
    loss_for_multiplier: Callable[[Tensor, Tensor], Tensor],
    masks: QuadrantMasks,
    logp_for_rows: Callable[[Tensor], Tensor],
    logp_values: Tensor,
) -> dict[str, float]:
    """Per-quadrant gradient norms, norm shares and cosines with the full gradient (module docstring).

    ``logp_values`` [B, T]: the current log-probs' values (e.g. pi_old's, before the update), where the closure
    is evaluated to find which parts have a gradient at all and for the residual check.
    """
    params = [p for p in params if p.requires_grad]
    shape, device = masks.high.shape, masks.high.device
    logp_values = logp_values.to(device)
    ones = torch.ones(shape, dtype=torch.float32, device=device)
    zeros = torch.zeros(shape, dtype=torch.float32, device=device)
    part_masks = {name: mask.to(torch.float32) for name, mask in _part_masks(masks).items()}
    v_full, v_base = (
        _direction(loss_for_multiplier, ones, logp_values),
        _direction(loss_for_multiplier, zeros, logp_values),
    )
    u = {name: _direction(loss_for_multiplier, m, logp_values) - v_base for name, m in part_masks.items()}
    residual = v_full - v_base - sum(u.values())

    grads: dict[str, list[Tensor]] = {}

    def gradients(rows: Tensor, names: list[str], multipliers: list[Tensor | None]) -> None:
        """J^T u for each named part, from one forward over ``rows``; u evaluated at that forward's log-probs."""
        with torch.enable_grad():
            logp = logp_for_rows(rows.to(device))
        at = logp_values.clone()
        at[rows] = logp.detach()
        base = _direction(loss_for_multiplier, zeros, at)
        for i, (name, m) in enumerate(zip(names, multipliers, strict=True)):
            v = base if m is None else _direction(loss_for_multiplier, m, at) - base
            out = torch.autograd.grad(
                logp, params, grad_outputs=v[rows], retain_graph=i < len(names) - 1, allow_unused=True
            )
            grads[name] = [torch.zeros_like(p) if g is None else g for p, g in zip(params, out, strict=True)]

    supports = {name: _rows_of(u[name]) for name in _PARTS}
    for rows, names in _groups({n: r for n, r in supports.items() if len(r)}):
        gradients(rows, names, [part_masks[n] for n in names])
    base_rows = _rows_of(v_base)
    if len(base_rows):
        gradients(base_rows, ["base"], [None])
    zero = [torch.zeros_like(p) for p in params]
    g_base = grads.get("base", zero)
    g_full = [sum(parts) for parts in zip(g_base, *(grads.get(n, zero) for n in _PARTS), strict=True)]
    full_norm = math.sqrt(_dot(g_full, g_full))
    out: dict[str, float] = {
        "quadrant/full/grad_norm": full_norm,
        "quadrant/base/grad_norm": math.sqrt(_dot(g_base, g_base)),
    }
    norms: dict[str, float] = {}
    for name in _PARTS:
        g = grads.get(name, zero)
        norms[name] = math.sqrt(_dot(g, g))
        denom = norms[name] * full_norm
        cos = _dot(g, g_full) / denom if denom > 0 else 0.0
        out[f"quadrant/{name}/grad_cos"] = max(-1.0, min(1.0, cos))
    total = sum(norms[q] for q in QUADRANTS)
    for name in _PARTS:
        out[f"quadrant/{name}/grad_norm"] = norms[name]
        out[f"quadrant/{name}/grad_norm_share"] = norms[name] / total if total > 0 else 0.0
    scale = float(v_full.norm())
    out["quadrant/grad_sum_residual"] = float(residual.norm()) / scale if scale > 0 else 0.0
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
