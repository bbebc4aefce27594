"""The optimiser and what one optimiser step did: the gradient it was given and the parameter change it made.

Why both: AdamW divides each coordinate by the running RMS of its gradient, so a loss that leaves only a small
gradient (a quadrant mask) still takes steps of about ``lr`` per coordinate; SGD's step is ``lr * g``. The
ratio ||delta theta|| / ||g|| tells the two apart: for SGD without momentum or weight decay it is exactly lr,
for AdamW it grows as the gradient shrinks. Per optimiser step::

    grad_norm        ||g||  before clipping (what ``clip_grad_norm_`` returns; logged as train/grad_norm)
    clipped_norm     ||g'|| after clipping: the gradient the optimiser was given
    update_norm      ||theta_after - theta_before||  over the trainable parameters
    update_to_grad   update_norm / clipped_norm      (NaN when the gradient is 0)

Measuring the update keeps one copy of the trainable parameters during ``optimizer.step()``
(``diagnostics.update_norm: false`` skips it, e.g. for a large model trained in full).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

OptimizerName = Literal["adamw", "sgd"]


def build_optimizer(
    params: list[Tensor],
    name: str,
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    momentum: float,
) -> torch.optim.Optimizer:
    """``adamw``: decoupled weight decay, ``betas``; ``sgd``: optional (heavy-ball) ``momentum``, L2 weight decay
    added to the gradient (torch's SGD), ``betas`` unused."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimiser '{name}' (adamw or sgd)")


@dataclass(frozen=True)
class StepNorms:
    """What one optimiser step did (module docstring)."""

    grad_norm: float
    clipped_norm: float
    update_norm: float
    """NaN when the update was not measured."""

    @property
    def update_to_grad(self) -> float:
        return self.update_norm / self.clipped_norm if self.clipped_norm > 0 else math.nan


def _norm(tensors: list[Tensor]) -> float:
    """The global 2-norm of a list of tensors (one device sync)."""
    return float(torch.nn.utils.get_total_norm(tensors, 2.0)) if tensors else 0.0


class UpdateMeter:
    """Measures optimiser steps (module docstring): call :meth:`before` just before ``optimizer.step()`` (the
    gradients clipped) and :meth:`after` just after it."""

    def __init__(self) -> None:
        self.clipped, self.copy = 0.0, []

    def before(self, params: list[Tensor]) -> None:
        self.clipped = _norm([p.grad for p in params if p.grad is not None])
        self.copy = [p.detach().clone() for p in params]

    def after(self, params: list[Tensor], grad_norm: float = math.nan) -> StepNorms:
        for p, b in zip(params, self.copy, strict=True):
            b.sub_(p.detach())  # in place: the copy becomes -(theta_after - theta_before), no second copy
        norms = StepNorms(grad_norm, self.clipped, _norm(self.copy))
        self.copy = []
        return norms


def clip_and_step(
    optimizer: torch.optim.Optimizer,
    params: list[Tensor],
    grad_clip: float,
    before: Callable[[], None] = lambda: None,
    after: Callable[[], None] = lambda: None,
) -> float:
    """Clip the gradients of ``params`` to ``grad_clip`` (<= 0: no clipping), call ``before``, step, call
    ``after``; returns the gradient's norm before clipping (``train/grad_norm``)."""
    limit = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
    before()
    optimizer.step()
    after()
    return grad_norm


def optimizer_step(
    optimizer: torch.optim.Optimizer, params: list[Tensor], grad_clip: float, measure_update: bool = True
) -> StepNorms:
    """:func:`clip_and_step` with the norms of that step (the update's NaN unless ``measure_update``)."""
    meter = UpdateMeter()
    if not measure_update:
        clipped: list[float] = []
        grads = lambda: clipped.append(_norm([p.grad for p in params if p.grad is not None]))  # noqa: E731
        grad_norm = clip_and_step(optimizer, params, grad_clip, before=grads)
        return StepNorms(grad_norm, clipped[0], math.nan)
    measured: list[StepNorms] = []
    grad_norm = clip_and_step(
        optimizer,
        params,
        grad_clip,
        before=lambda: meter.before(params),
        after=lambda: measured.append(meter.after(params)),
    )
    return replace(measured[0], grad_norm=grad_norm)
