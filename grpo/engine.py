"""The rollout-engine contract: prompts in, token ids (and per-token behaviour numbers) out.

The trainer and the evaluator sample through a :class:`RolloutEngine`. The default, :class:`NativeEngine`, is
:func:`grpo.rollout.sample` unchanged (bit-identical to calling it directly). Other engines (the vLLM adapter in
``experiments/vllm_engine.py``) live in the application layer; the core never imports them. A policy carries
its engine (``Policy.engine``; None means native).

Whatever engine draws the tokens, the behaviour log-probs and entropies in the returned :class:`Rollout` are the
training model's (temperature-scaled full distribution, as :mod:`grpo.rollout` defines them): an engine that
samples with another implementation recomputes them with one no-grad pass of the training model and keeps its
own sampled-token log-probs in ``Rollout.rollout_logprobs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from grpo.rollout import Rollout, sample


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer and the evaluator need from a sampler."""

    name: str

    def generate(
        self,
        model: torch.nn.Module,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        eos_id: int | Sequence[int],
        pad_id: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool | Tensor = False,
        generator: torch.Generator | None = None,
        behaviour: bool = True,
    ) -> Rollout:
        """One response per prompt, arguments as :func:`grpo.rollout.sample`. ``behaviour``: the caller needs
        the training model's log-probs and entropies (training); False (evaluation) lets an engine skip them."""
        ...

    def push_weights(self, model: torch.nn.Module) -> dict[str, float]:
        """Make the engine sample from ``model``'s current weights (called after every optimizer step);
        returns metrics (e.g. ``perf/weight_push_s``)."""
        ...


class NativeEngine:
    """quadrl's own KV-cache sampler over the training model itself: nothing to push."""

    name = "native"

    def generate(
        self,
        model: torch.nn.Module,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        eos_id: int | Sequence[int],
        pad_id: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool | Tensor = False,
        generator: torch.Generator | None = None,
        behaviour: bool = True,
    ) -> Rollout:
        return sample(
            model,
            prompts,
            max_new_tokens=max_new_tokens,
            eos_id=eos_id,
            pad_id=pad_id,
            temperature=temperature,
            top_p=top_p,
            greedy=greedy,
            generator=generator,
        )

    def push_weights(self, model: torch.nn.Module) -> dict[str, float]:
        return {}


NATIVE = NativeEngine()


def engine_of(policy: object) -> RolloutEngine:
    """The engine a policy samples with (``policy.engine``; native when unset)."""
    engine = getattr(policy, "engine", None)
    return NATIVE if engine is None else engine
