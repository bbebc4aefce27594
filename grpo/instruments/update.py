"""What an update did to the weights (``train/update_norm``, ``train/update_to_grad_ratio``: grpo/optimizer.py
says why both) and to the answers (``train/answer_diversity``)."""

from __future__ import annotations

from torch import Tensor

from grpo import distributed as dist_
from grpo.diagnostics import answer_diversity
from grpo.instrument import Instrument, StepView
from grpo.optimizer import StepNorms, UpdateMeter
from grpo.task import Task


class UpdateNorm(Instrument):
    """||theta_after - theta_before|| per optimiser step and its ratio to the clipped gradient's norm, averaged
    over the step's optimiser steps like ``train/grad_norm``. Keeps one copy of the trainable parameters during
    each ``optimizer.step()``."""

    def __init__(self) -> None:
        self.meter = UpdateMeter()
        self.norms: list[StepNorms] = []

    def before_update(self, view: StepView) -> dict[str, float]:
        self.norms = []
        return {}

    def before_optimizer_step(self, params: list[Tensor]) -> None:
        self.meter.before(params)

    def after_optimizer_step(self, params: list[Tensor]) -> None:
        self.norms.append(self.meter.after(params))

    def after_update(self, view: StepView) -> dict[str, float]:
        n = len(self.norms)
        return {
            "train/update_norm": sum(x.update_norm for x in self.norms) / n,
            "train/update_to_grad_ratio": sum(x.update_to_grad for x in self.norms) / n,
        }


class AnswerDiversity(Instrument):
    """``train/answer_diversity``: distinct final answers per group (grpo/diagnostics.py), over the global batch."""

    def __init__(self, task: Task):
        self.task = task

    def after_update(self, view: StepView) -> dict[str, float]:
        texts = view.batch.texts
        if view.world.active:
            texts = [t for part in dist_.gather_objects(view.batch.texts) for t in part]
        answers = [self.task.extract_answer(t) for t in texts]
        return {"train/answer_diversity": answer_diversity(answers, view.facts.group_ids.tolist())}
