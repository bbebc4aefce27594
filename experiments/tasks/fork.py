"""``fork``: a task whose token credit is known exactly -- success is decided at a few positions, by construction.

Prompt: a pattern of ``length`` characters followed by ``"="``; ``decisive`` of its positions hold the branch
the response must take there (``l`` or ``r``), the others hold ``"."`` (free)::

    "..l.r....l="   ->  e.g. "rllrrlrlll"   (positions 2, 4, 9 must be l, r, l; the rest is any l/r)

Reward: 1.0 iff the completion is exactly ``length`` characters, each ``l`` or ``r``, with the pattern's branch
at every decisive position; else 0.0 (another character, a wrong branch, an early or late end). The SFT target
draws ``l`` / ``r`` uniformly at every free position and copies the branch at the decisive ones, so a base model
is maximally uncertain (ln 2 nats) where nothing depends on the choice and fairly sure where everything does:
entropy and credit disagree by construction.

Exact values (:func:`exact_values`). For a given policy, V(s) = P(reward 1 | prefix s) is a finite sum over the
binary tree of valid prefixes: a token other than ``l`` / ``r`` / a stop token, a wrong branch, a stop before
``length`` tokens or a letter after them leads to reward 0 with no expansion, so the tree from the prompt has at
most 2^(length - decisive) leaves and needs one batched forward per depth. Tokens that decode to nothing
(``<pad>``, ``<bos>``, ``<unk>``: the trainer decodes with ``skip_special_tokens``) are the one way a path can
leave the tree and still be rewarded; the probability of ever emitting one is returned as ``leak``, a bound on
the error of every exact value (a well-trained base model gives it ~1e-6).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from experiments.tasks.common import LazyExamples, build_test_split, check_bounded_text, check_split_params
from experiments.tasks.registry import register_task
from grpo.probe import CreditProbe, bernoulli_kl
from grpo.rollout import left_pad, positions
from grpo.task import Example

if TYPE_CHECKING:
    from grpo.model import Policy

BRANCHES = ("l", "r")
FREE = "."
END_OF_PATTERN = "="


@register_task("fork")
class ForkTask:
    """Binary choices of which only ``decisive`` of ``length`` matter (module docstring)."""

    name = "fork"
    pretrain_hints = {"eval_every": 10, "dense_eval_every": 5, "target_accuracy": (0.9, 1.0)}
    """Defaults for experiments.base_model.pretrain. Greedy decoding picks a branch at every free position, so
    greedy accuracy only says whether the decisive branches are the argmax: it passes 0.2-0.6 early in SFT, while
    the sampled policy still spreads mass over other characters (sampled success ~0.2). The base model is taken
    at greedy accuracy >= 0.9 instead, where free positions are near ln 2 and sampled success is partial."""

    def __init__(
        self,
        *,
        length: int = 10,
        decisive: int = 3,
        n_test: int = 100,
        n_train: int = 1_000_000,
        seed: int = 0,
        test_seed: int = 0,
        test_pool_fraction: float = 0.2,
    ):
        if not 1 <= decisive <= length <= 16:
            raise ValueError(
                f"fork: need 1 <= decisive <= length <= 16, got decisive={decisive}, length={length}"
            )
        check_split_params(self.name, n_test, test_pool_fraction)
        self.length, self.decisive = length, decisive
        self.n_test, self.n_train, self.seed, self.test_seed = n_test, n_train, seed, test_seed
        self.test_pool_fraction = test_pool_fraction
        self.max_new_tokens = length + 1
        """The letters and a stop token: a response that has not stopped after ``length`` letters is wrong."""
        n_patterns = math.comb(length, decisive) * 2**decisive
        self._test = build_test_split(
            self.name,
            self._draw,
            n_test=n_test,
            test_seed=test_seed,
            test_pool_fraction=test_pool_fraction,
            max_draws=max(200 * n_test, 50 * n_patterns),
        )
        self._train = LazyExamples(
            self.name, self._draw, length=n_train, seed=seed, test_pool_fraction=test_pool_fraction
        )

    def _draw(self, rng: random.Random) -> tuple[str, Example]:
        where = sorted(rng.sample(range(self.length), self.decisive))
        branch = {i: rng.choice(BRANCHES) for i in where}
        pattern = "".join(branch.get(i, FREE) for i in range(self.length))
        target = "".join(branch.get(i) or rng.choice(BRANCHES) for i in range(self.length))
        example = Example(
            prompt=pattern + END_OF_PATTERN, answer=pattern, target=target, meta={"pattern": pattern}
        )
        return pattern, example

    def train(self) -> Sequence[Example]:
        return self._train

    def test(self) -> Sequence[Example]:
        return self._test

    def extract_answer(self, completion: str) -> str | None:
        text = check_bounded_text(completion, 10_000)
        return text if text else None

    def exact_values(
        self,
        policy: Policy,
        examples: Sequence[Example],
        responses: Sequence[Sequence[int]],
        *,
        temperature: float,
        max_new_tokens: int,
    ) -> list[ExactCredit]:
        """:func:`exact_values` for this task (``quadrl-probe`` looks for this method on a task)."""
        return exact_values(
            policy, self, examples, responses, temperature=temperature, max_new_tokens=max_new_tokens
        )

    def reward(self, example: Example, completion: str) -> float:
        try:
            text = check_bounded_text(completion, 10_000)
            return 1.0 if text is not None and matches(example.meta["pattern"], text) else 0.0
        except Exception:  # a verifier never raises: anything unexpected is a wrong answer
            return 0.0


def matches(pattern: str, text: str) -> bool:
    """``text`` has the pattern's length, only l/r, and the pattern's branch at every decisive position."""
    return len(text) == len(pattern) and all(
        c in BRANCHES and (p == FREE or p == c) for p, c in zip(pattern, text, strict=True)
    )


def on_tree(pattern: str, prefix: str) -> bool:
    """Whether ``prefix`` can still be completed into a rewarded response."""
    return len(prefix) <= len(pattern) and all(
        c in BRANCHES and (p == FREE or p == c) for p, c in zip(pattern, prefix, strict=False)
    )


@dataclass(frozen=True)
class ExactCredit:
    """Exact quantities along one response of n tokens (``value``/``leak`` have n + 1 entries, ``info`` n)."""

    value: list[float]
    """V(s_t) for t = 0..n (s_n is the whole response: its reward). NaN after a token that decodes to nothing."""
    info: list[float]
    """I_t = sum_a pi(a|s_t) KL(Bern(V(s_t, a)) || Bern(V(s_t))) over the whole vocabulary; NaN where unknown."""
    leak: list[float]
    """Probability, from s_t, of ever emitting a token that decodes to nothing: bounds |exact - true| at s_t."""

    @property
    def delta(self) -> list[float]:
        """delta_t = V(s_{t+1}) - V(s_t), t = 0..n-1."""
        return [b - a for a, b in itertools.pairwise(self.value)]


@torch.no_grad()
def _next_token_probs(policy: Policy, sequences: list[list[int]], temperature: float) -> torch.Tensor:
    """[N, V] float64 softmax(logits / T) after each sequence (left-padded into one batch)."""
    device = next(policy.model.parameters()).device
    ids, mask = left_pad(sequences, policy.pad_id, device)
    logits = policy.model(input_ids=ids, attention_mask=mask.long(), position_ids=positions(mask)).logits
    return torch.softmax(logits[:, -1].double() / temperature, dim=-1).cpu()


def _value_tree(
    policy: Policy, example: Example, temperature: float, max_new_tokens: int
) -> dict[str, tuple[float, float, float]]:
    """{valid prefix (a string of l/r): (V, I, leak)} for every prefix on the tree of ``example``."""
    pattern = example.meta["pattern"]
    vocab = policy.tokenizer.get_vocab()
    letter_ids = {c: vocab[c] for c in BRANCHES}
    stops = list(policy.stop_ids)
    silent = [i for i in policy.tokenizer.all_special_ids if i not in stops]  # decode to "": off the tree
    prompt = policy.encode_prompt(example.prompt)
    # depth d holds the valid prefixes of d letters; the tree stops at the pattern's length or the budget
    depths: list[list[str]] = [[""]]
    while len(depths) <= min(len(pattern), max_new_tokens):
        d = len(depths) - 1
        depths.append([s + c for s in depths[d] for c in BRANCHES if pattern[d] in (FREE, c)])
    probs: dict[str, torch.Tensor] = {}
    for d, nodes in enumerate(depths):
        if d < max_new_tokens:  # a node at the budget is terminal: no next-token distribution needed
            out = _next_token_probs(policy, [prompt + [vocab[c] for c in s] for s in nodes], temperature)
            probs.update(zip(nodes, out, strict=True))
    table: dict[str, tuple[float, float, float]] = {}
    for d in range(len(depths) - 1, -1, -1):
        for s in depths[d]:
            if d >= max_new_tokens:  # budget spent without a stop token: the text is s itself
                table[s] = (float(matches(pattern, s)), 0.0, 0.0)
                continue
            p = probs[s]
            # the actions that keep reward possible, with their values; every other token leads to 0
            actions = [(float(p[letter_ids[c]]), table[s + c]) for c in BRANCHES if s + c in table]
            if d == len(pattern):
                actions.append((float(p[stops].sum()), (1.0, 0.0, 0.0)))
            value = sum(pa * v for pa, (v, _, _) in actions)
            leak = float(p[silent].sum()) + sum(pa * lk for pa, (_, _, lk) in actions)
            rest = max(0.0, 1.0 - sum(pa for pa, _ in actions))
            info = sum(pa * bernoulli_kl(v, value) for pa, (v, _, _) in actions) + rest * bernoulli_kl(
                0.0, value
            )
            table[s] = (value, info, leak)
    return table


def exact_values(
    policy: Policy,
    task: ForkTask,
    examples: Sequence[Example],
    responses: Sequence[Sequence[int]],
    *,
    temperature: float,
    max_new_tokens: int,
) -> list[ExactCredit]:
    """The exact V(s_t), I_t and error bound along each response (``responses[i]`` answers ``examples[i]``,
    stop token included when it was produced), for the policy sampling at ``temperature`` within
    ``max_new_tokens`` tokens. One value tree per distinct prompt."""
    trees: dict[str, dict[str, tuple[float, float, float]]] = {}
    id_to_char = {i: c for c, i in policy.tokenizer.get_vocab().items()}
    stops, silent = set(policy.stop_ids), set(policy.tokenizer.all_special_ids) - set(policy.stop_ids)
    out = []
    for example, ids in zip(examples, responses, strict=True):
        if example.prompt not in trees:
            trees[example.prompt] = _value_tree(policy, example, temperature, max_new_tokens)
        tree = trees[example.prompt]
        value, info, leak = [], [], []
        text, lost = "", False
        for t in range(len(ids) + 1):
            if t == len(ids):  # the whole response: its reward, exactly
                reward = task.reward(example, text) if not lost else math.nan
                value.append(reward)
                leak.append(0.0)
                break
            entry = tree.get(text)
            if lost:
                entry = (math.nan, math.nan, math.nan)
            elif entry is None:  # off the tree: reward 0 whatever follows, unless a silent token is emitted
                entry = (0.0, 0.0, 0.0)
            value.append(entry[0])
            info.append(entry[1])
            leak.append(entry[2])
            token = int(ids[t])
            if token in silent:
                lost = True
            elif token not in stops:
                text += id_to_char.get(token, "?")
        out.append(ExactCredit(value, info, leak))
    return out


def as_probe(estimated: CreditProbe, exact: Sequence[ExactCredit], no_credit_below: float) -> CreditProbe:
    """The exact credit in the probe's shape, on the same batch: V, delta and I (over the whole vocabulary, at
    every position) with standard error 0; tokens with |delta_t| < ``no_credit_below`` count as "certain" (no
    credit), as the probe's skip rule counts them."""
    shape = estimated.value.shape
    value = torch.full(shape, math.nan, dtype=torch.float64)
    info = torch.full(estimated.info.shape, math.nan, dtype=torch.float64)
    for i, e in enumerate(exact):
        value[i, : len(e.value)] = torch.tensor(e.value, dtype=torch.float64)
        info[i, : len(e.info)] = torch.tensor(e.info, dtype=torch.float64)
    mask = estimated.facts.response_mask.cpu().bool()
    delta = torch.where(mask, value[:, 1:] - value[:, :-1], 0.0).nan_to_num(0.0)
    zeros = torch.zeros_like(delta)
    return replace(
        estimated,
        value=value,
        value_se=torch.where(value.isnan(), math.nan, 0.0),
        delta=delta,
        delta_se=zeros,
        certain=mask & (delta.abs() < no_credit_below),
        info=info,
        info_covered=torch.where(info.isnan(), math.nan, 1.0),
    )


@dataclass(frozen=True)
class Agreement:
    """How well the probe's V^ agree with the exact V (:func:`agreement`)."""

    z: float
    """(X^2 - E X^2) / sd(X^2) under H0: each estimate is Binomial(k, V_exact) / k. ~ N(0, 1) under H0."""
    states: int
    """States in X^2: exact V in [0.05, 0.95] with an error bound (leak) < 0.01."""
    nonzero_off_tree: int
    """States off the tree (V = 0 exactly, no way back) where the probe estimated V^ != 0: must be 0."""


def agreement(estimated: CreditProbe, exact: Sequence[ExactCredit], k: int) -> Agreement:
    """X^2 = sum over estimated states of (c - k V)^2 / (k V (1 - V)), c = k V^ the successes of k continuations.

    Under H0 (every c ~ Binomial(k, V), independent across states given the responses) each term has mean 1 and
    variance (1 + 3 (k - 2) V (1 - V)) / (k V (1 - V)) - 1 (from the binomial's 4th central moment), so over m
    states Z = (X^2 - m) / sqrt(sum of the variances) is approximately N(0, 1) (CLT over independent terms).
    States with V near 0 or 1 are left out (their terms are heavy-tailed); so are states a silent token may
    have changed by more than 0.01. Only valid for 0/1 rewards and V estimated from exactly k continuations."""
    x2 = var = 0.0
    states = nonzero = 0
    for i, e in enumerate(exact):
        for t, (v, leak) in enumerate(zip(e.value[:-1], e.leak[:-1], strict=True)):
            estimate = float(estimated.value[i, t])
            if math.isnan(estimate) or math.isnan(v):
                continue
            if v == 0.0 and leak == 0.0:
                nonzero += estimate != 0.0
            elif 0.05 <= v <= 0.95 and leak < 0.01:
                pq = v * (1 - v)
                x2 += (k * estimate - k * v) ** 2 / (k * pq)
                var += (1 + 3 * (k - 2) * pq) / (k * pq) - 1
                states += 1
    z = (x2 - states) / math.sqrt(var) if states else math.nan
    return Agreement(z, states, nonzero)
