"""Counterfactual token credit: how much each sampled token moved the policy's own chance of success.

For a response o = (o_0 .. o_{n-1}) to prompt p, sampled by the policy pi, let s_t = (p, o_<t), t = 0..n::

    V(s_t)   = E[reward | s_t] under pi              (P(success | prefix) for 0/1 rewards; s_n: the reward)
    delta_t  = V(s_{t+1}) - V(s_t)                   the credit of token o_t (its advantage A^pi(s_t, o_t))
    I_t      = sum_a pi(a|s_t) KL( Bern(V(s_t, a)) || Bern(V(s_t)) )    = I(a_t; R | s_t) <= H_t

I_t is the information the choice at t carries about success; it is bounded by the token's entropy H_t (the
CMI bound of arXiv 2604.11056). Rewards must lie in [0, 1] (I_t reads V as a success probability).

Estimates (VinePPO, arXiv 2410.01679, does the same at step boundaries with k = 9):
- V^(s) = mean reward of ``k`` continuations of s sampled by the same policy (temperature, top-p) within the
  response's own budget (``max_new_tokens - t`` tokens from s_t), through :func:`grpo.rollout.sample` with the
  caller's seeded generator, so a probe is reproducible. se(V^) = sqrt(S^2 / k), S^2 the unbiased sample
  variance of the k rewards (k/(k-1) p^(1-p^) for 0/1 rewards; 0 when all k agree). V(s_n) = the reward, exact.
- delta^_t = V^(s_{t+1}) - V^(s_t), se = sqrt(se_{t+1}^2 + se_t^2) (independent continuations).
- Certain tokens. Since V(s_t) = sum_a pi(a|s_t) V(s_t, a) and V(s_{t+1}) = V(s_t, o_t),
  delta_t = (1 - pi(o_t|s_t)) (V(s_t, o_t) - V_other) with V_other in [0, 1], so |delta_t| <= 1 - pi(o_t|s_t)
  exactly. A token sampled with 1 - pi(o_t|s_t) < ``skip_tol`` gets delta^_t = 0 with no continuation (error
  < skip_tol); V is estimated only at the states on either side of the other (uncertain) tokens, and at s_0.
  ``skip_tol = 0`` estimates every state. The default 0.01 is quadrl's choice (not from a paper): on the arith
  base model 64% of the sampled tokens have 1 - pi < 0.01, and estimating them adds only noise (mean |delta^|
  0.09 at k = 8 there, against a true |delta| < 0.01) at half the probe's cost.
- I^_t at the positions ``info_positions`` picks (``all`` uncertain tokens, or the ``info_per_response``
  highest-entropy uncertain tokens of each response: ``top_entropy``), over the candidates
  C_t = {a : pi(a|s_t) >= candidate_floor} (pi = softmax(logits / T), the distribution H_t is the entropy of):
  V^(s_t, a) from ``info_k`` continuations of s_t + a (exact when a ends the response: a stop token, or the
  budget). The mass m_o = 1 - sum_{C_t} pi(a) left out is one pseudo-action valued V^(s_t), and V(s_t) inside
  the KL is the law of total probability over the same actions,
      V_mix = sum_{a in C_t} pi(a) V^(s_t, a) + m_o V^(s_t),
  so that I^_t is the mutual information of a real joint distribution: 0 <= I^_t <= H(coarsened a_t) <= H_t,
  and I^_t -> the plug-in I_t as the floor goes to 0. The pseudo-action is quadrl's choice (documented, not a
  paper's). Plug-in I^ is biased upwards for small k (noise in V^(s_t, a) looks like information).

Cost. ``probe.max_continuations`` bounds every probe: the plan (continuations per prompt group, known once the
responses are sampled) keeps the first groups that fit and drops the rest (reported); a single group over the
budget is an error. The caller sees the plan (``announce``) before any continuation is sampled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from grpo.advantages import group_advantages
from grpo.checks import ConfigError
from grpo.config import AlgoConfig, ProbeConfig, SamplingConfig
from grpo.credit import TokenFacts
from grpo.entropy_split import EntropySplit
from grpo.quadrants import split_quadrants
from grpo.rollout import Rollout, backbone_and_head, positions, sample
from grpo.task import Task
from runrecord import QUADRANTS

if TYPE_CHECKING:
    from grpo.batch import Batch
    from grpo.model import Policy


def bernoulli_kl(p: float, q: float) -> float:
    """KL(Bern(p) || Bern(q)) in nats, with 0 log 0 = 0 (inf when q puts 0 mass where p does not)."""

    def term(a: float, b: float) -> float:
        if a <= 0.0:
            return 0.0
        return math.inf if b <= 0.0 else a * math.log(a / b)

    return term(p, q) + term(1.0 - p, 1.0 - q)


@dataclass(frozen=True)
class ProbePlan:
    """Where continuations will be sampled, decided from the responses alone (no continuation yet)."""

    batch: Batch
    """The batch probed (the first groups that fit ``max_continuations``)."""
    uncertain: Tensor
    """[B, T] bool: response tokens with 1 - pi(o_t|s_t) >= skip_tol (their delta is estimated)."""
    states: Tensor
    """[B, T + 1] bool: the non-terminal states s_t whose V is estimated."""
    info: list[tuple[int, int, list[tuple[int, float]]]]
    """(row, t, [(candidate token, pi(a|s_t))...]) at each position where I_t is estimated."""
    continuations: int
    """Continuations the probe will sample."""
    max_tokens: int
    """Upper bound on the tokens they hold (each continuation's remaining budget)."""
    groups_kept: int
    groups_sampled: int

    def describe(self) -> str:
        b = self.batch
        dropped = self.groups_sampled - self.groups_kept
        return (
            f"probe: {len(b.rewards)} responses ({self.groups_kept} prompts x G)"
            + (f", {dropped} prompt group(s) dropped to fit probe.max_continuations" if dropped else "")
            + f"; V at {int(self.states.sum())} states, I at {len(self.info)} positions"
            f" ({sum(len(c) for _, _, c in self.info)} candidates): {self.continuations:,} continuations,"
            f" <= {self.max_tokens:,} tokens"
        )


@dataclass(frozen=True)
class CreditProbe:
    """The measured credit of one batch (module docstring). Per-token tensors are [B, T], per-state [B, T + 1]."""

    facts: TokenFacts
    """The batch's facts, exactly as the trainer builds them (GRPO advantages, entropies, log-probs)."""
    value: Tensor
    """V^(s_t), float64; NaN at states not estimated and past the end of the response."""
    value_se: Tensor
    """Standard error of ``value`` (0 at the terminal state)."""
    delta: Tensor
    """delta^_t, float64 (0 on certain tokens and padding)."""
    delta_se: Tensor
    """Standard error of ``delta`` (0 on certain tokens and padding)."""
    certain: Tensor
    """bool: response tokens given delta = 0 by the skip rule (|delta_t| < skip_tol)."""
    info: Tensor
    """I^_t, float64; NaN where not estimated."""
    info_covered: Tensor
    """Probability mass of the candidates at each probed position (NaN elsewhere)."""
    continuations: int
    tokens: int
    """Continuation tokens sampled."""
    seconds: float
    plan: ProbePlan


@torch.no_grad()
def _probs_at(
    model: torch.nn.Module, rollout: Rollout, rows: Tensor, cols: Tensor, temperature: float
) -> Tensor:
    """[n, V] float32 softmax(logits / T) of the next token at response positions (rows, cols)."""
    input_ids = torch.cat([rollout.prompt_ids, rollout.response_ids], dim=1)
    mask = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=1)
    at = rollout.prompt_ids.shape[1] - 1 + cols  # the state before response token t
    kw = dict(input_ids=input_ids, attention_mask=mask.long(), position_ids=positions(mask))
    split = backbone_and_head(model)
    if split is None:
        logits = model(**kw).logits[rows, at]
    else:
        decoder, head = split
        logits = head(decoder(**kw).last_hidden_state[rows, at])
    return torch.softmax(logits.float() / temperature, dim=-1)


def _top_entropy(entropy: Tensor, allowed: Tensor, per_row: int) -> Tensor:
    """[B, T] bool: the ``per_row`` highest-entropy allowed tokens of each row (fewer if fewer are allowed)."""
    scores = entropy.double().masked_fill(~allowed, -math.inf)
    top = scores.topk(min(per_row, scores.shape[1]), dim=1).indices
    chosen = torch.zeros_like(allowed).scatter(1, top, True)
    return chosen & allowed


def plan_probe(
    policy: Policy, batch: Batch, cfg: ProbeConfig, *, temperature: float, max_new_tokens: int
) -> ProbePlan:
    """Decide the states and positions to probe, count the continuations, keep the groups that fit."""
    r = batch.rollout
    mask = r.response_mask.bool()
    lengths = mask.sum(-1)
    uncertain = mask & ((1.0 - r.logprobs.double().exp()) >= cfg.skip_tol)
    if cfg.info_positions == "all":
        info_mask = uncertain
    elif cfg.info_positions == "top_entropy":
        info_mask = _top_entropy(r.entropy, uncertain, cfg.info_per_response)
    else:
        info_mask = torch.zeros_like(uncertain)
    states = torch.zeros((mask.shape[0], mask.shape[1] + 1), dtype=torch.bool, device=mask.device)
    states[:, 0] = True
    states[:, :-1] |= uncertain | info_mask
    states[:, 1:] |= uncertain
    past_end = torch.arange(states.shape[1], device=mask.device)[None, :] >= lengths[:, None]
    states &= ~past_end  # s_n (and beyond) is terminal: its value is the reward

    rows, cols = info_mask.nonzero(as_tuple=True)
    info: list[tuple[int, int, list[tuple[int, float]]]] = []
    if len(rows):
        probs = _probs_at(policy.model, r, rows, cols, temperature).cpu()
        for row, col, p in zip(rows.tolist(), cols.tolist(), probs, strict=True):
            ids = (p >= cfg.candidate_floor).nonzero().squeeze(-1).tolist()
            info.append((row, col, [(int(a), float(p[a])) for a in ids]))

    stops = set(policy.stop_ids)
    budget_left = (max_new_tokens - torch.arange(states.shape[1])).clamp_min(0)
    row_cost = (states.cpu().long() * cfg.k).sum(-1)
    row_tokens = (states.cpu().long() * budget_left * cfg.k).sum(-1)
    for row, col, cands in info:
        live = [a for a, _ in cands if a not in stops and col + 1 < max_new_tokens]
        row_cost[row] += len(live) * cfg.candidate_k
        row_tokens[row] += len(live) * cfg.candidate_k * (max_new_tokens - col - 1)
    groups = batch.group_ids.cpu()
    n_groups = int(groups.max()) + 1
    if bool((groups.diff() < 0).any()):
        raise ValueError("probe: a batch's responses must be ordered by prompt group (G rows per prompt)")
    group_cost = torch.zeros(n_groups, dtype=torch.long).index_add_(0, groups, row_cost)
    kept = int((group_cost.cumsum(0) <= cfg.max_continuations).sum())
    if kept == 0:
        raise ConfigError(
            f"probe: one prompt group needs {int(group_cost[0]):,} continuations > probe.max_continuations="
            f"{cfg.max_continuations:,}; lower probe.k, probe.group_size or probe.info_per_response, or raise "
            "probe.max_continuations"
        )
    keep_rows = (groups < kept).nonzero().squeeze(-1)
    if kept < n_groups:
        batch = batch.select(keep_rows)
        n_rows = len(keep_rows)
        uncertain, states = uncertain[:n_rows], states[:n_rows]
        info = [entry for entry in info if entry[0] < n_rows]
    return ProbePlan(
        batch=batch,
        uncertain=uncertain,
        states=states,
        info=info,
        continuations=int(row_cost[keep_rows].sum()),
        max_tokens=int(row_tokens[keep_rows].sum()),
        groups_kept=kept,
        groups_sampled=n_groups,
    )


def state_prefix(response: Sequence[int], t: int) -> tuple[int, ...]:
    """The response tokens of state s_t: o_<t. (One place, so that a test can plant an off-by-one here.)"""
    return tuple(response[:t])


@dataclass(frozen=True)
class _Job:
    row: int
    """The response (and prompt) the continuation extends."""
    prefix: tuple[int, ...]
    """Response tokens forced before sampling."""


class _Continuations:
    """Samples k continuations of each job, batched, and scores them with the task's verifier."""

    def __init__(
        self,
        policy: Policy,
        task: Task,
        batch: Batch,
        sampling: SamplingConfig,
        max_new_tokens: int,
        generator: torch.Generator,
        batch_size: int,
        progress: Callable[[int], None] | None,
    ):
        r = batch.rollout
        self.prompts = [r.prompt_ids[i][r.prompt_mask[i]].tolist() for i in range(len(batch.rewards))]
        self.policy, self.task, self.examples = policy, task, batch.examples
        self.sampling, self.budget, self.generator = sampling, max_new_tokens, generator
        self.batch_size, self.progress = batch_size, progress
        self.tokens = 0

    def reward(self, row: int, ids: Sequence[int]) -> float:
        return float(self.task.reward(self.examples[row], self.policy.decode(list(ids))))

    def run(self, jobs: list[_Job], k: int) -> tuple[Tensor, Tensor]:
        """[J] mean reward and [J] its standard error over each job's k continuations."""
        total = torch.zeros(len(jobs), dtype=torch.float64)
        total_sq = torch.zeros(len(jobs), dtype=torch.float64)
        # longest remaining budget first, so that a chunk's rows need similar numbers of steps
        order = sorted((j for j in range(len(jobs)) for _ in range(k)), key=lambda j: len(jobs[j].prefix))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            remaining = [self.budget - len(jobs[j].prefix) for j in chunk]
            roll = sample(
                self.policy.model,
                [self.prompts[jobs[j].row] + list(jobs[j].prefix) for j in chunk],
                max_new_tokens=max(remaining),
                eos_id=self.policy.stop_ids,
                pad_id=self.policy.pad_id,
                temperature=self.sampling.temperature,
                top_p=self.sampling.top_p,
                generator=self.generator,
            )
            for i, j in enumerate(chunk):
                # a continuation longer than its own budget is cut where the original sampler would have stopped
                cont = roll.response_ids[i][roll.response_mask[i]].tolist()[: remaining[i]]
                self.tokens += len(cont)
                reward = self.reward(jobs[j].row, jobs[j].prefix + tuple(cont))
                total[j] += reward
                total_sq[j] += reward * reward
            if self.progress is not None:
                self.progress(len(chunk))
        mean = total / k
        var = ((total_sq - k * mean * mean) / (k - 1)).clamp_min(0.0)
        return mean, (var / k).sqrt()


@torch.no_grad()
def probe_credit(
    policy: Policy,
    task: Task,
    batch: Batch,
    cfg: ProbeConfig,
    sampling: SamplingConfig,
    algo: AlgoConfig,
    generator: torch.Generator,
    *,
    step: int = 0,
    announce: Callable[[ProbePlan], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> CreditProbe:
    """Measure V, delta and I on ``batch`` (G responses per prompt, e.g. ``grpo.batch.sample_groups``).

    ``sampling.max_new_tokens`` must be resolved (the task's budget). ``announce(plan)`` is called before any
    continuation is sampled; ``progress(n)`` after every n continuations.
    """
    started = time.perf_counter()
    budget = int(sampling.max_new_tokens)
    was_training = policy.model.training
    policy.model.eval()
    try:
        plan = plan_probe(policy, batch, cfg, temperature=sampling.temperature, max_new_tokens=budget)
        if announce is not None:
            announce(plan)
        batch = plan.batch
        r = batch.rollout
        facts = TokenFacts.from_rollout(
            r,
            batch.rewards,
            batch.group_ids,
            group_advantages(batch.rewards, batch.group_ids, algo.scale_adv_by_std, algo.adv_eps),
            step,
        )
        runner = _Continuations(policy, task, batch, sampling, budget, generator, cfg.batch_size, progress)
        responses = [r.response_ids[i][r.response_mask[i]].tolist() for i in range(len(batch.rewards))]
        lengths = [len(o) for o in responses]

        value = torch.full(plan.states.shape, math.nan, dtype=torch.float64)
        value_se = torch.full(plan.states.shape, math.nan, dtype=torch.float64)
        for i, n in enumerate(lengths):
            value[i, n], value_se[i, n] = float(batch.rewards[i]), 0.0
        rows, cols = plan.states.cpu().nonzero(as_tuple=True)
        jobs = [
            _Job(i, state_prefix(responses[i], t)) for i, t in zip(rows.tolist(), cols.tolist(), strict=True)
        ]
        mean, se = runner.run(jobs, cfg.k)
        value[rows, cols], value_se[rows, cols] = mean, se

        uncertain = plan.uncertain.cpu()
        delta = torch.where(uncertain, value[:, 1:] - value[:, :-1], 0.0)
        delta_se = torch.where(uncertain, (value_se[:, 1:] ** 2 + value_se[:, :-1] ** 2).sqrt(), 0.0)

        info = torch.full(uncertain.shape, math.nan, dtype=torch.float64)
        covered = torch.full(uncertain.shape, math.nan, dtype=torch.float64)
        cand_jobs: list[_Job] = []
        exact: dict[tuple[int, int, int], float] = {}
        stops = set(policy.stop_ids)
        for i, t, cands in plan.info:
            for a, _ in cands:
                prefix = state_prefix(responses[i], t) + (a,)
                if a in stops or t + 1 >= budget:  # the response ends with a: its reward, exactly
                    exact[(i, t, a)] = runner.reward(i, prefix)
                else:
                    cand_jobs.append(_Job(i, prefix))
        cand_mean, _ = runner.run(cand_jobs, cfg.candidate_k)
        cand_value = iter(cand_mean.tolist())
        for i, t, cands in plan.info:
            values = [exact[(i, t, a)] if (i, t, a) in exact else next(cand_value) for a, _ in cands]
            mass = sum(p for _, p in cands)
            other_mass, other_value = max(0.0, 1.0 - mass), float(value[i, t])
            mixture = sum(p * v for (_, p), v in zip(cands, values, strict=True)) + other_mass * other_value
            info[i, t] = sum(p * bernoulli_kl(v, mixture) for (_, p), v in zip(cands, values, strict=True))
            info[i, t] += other_mass * bernoulli_kl(other_value, mixture)
            covered[i, t] = mass
    finally:
        policy.model.train(was_training)
    return CreditProbe(
        facts=facts,
        value=value,
        value_se=value_se,
        delta=delta,
        delta_se=delta_se,
        certain=r.response_mask.cpu().bool() & ~uncertain,
        info=info,
        info_covered=covered,
        continuations=plan.continuations,
        tokens=runner.tokens,
        seconds=time.perf_counter() - started,
        plan=plan,
    )


def _share(part: Tensor, whole: Tensor) -> float:
    total = float(whole.sum())
    return float(part.sum()) / total if total != 0 else math.nan


def credit_summary(probe: CreditProbe, split: EntropySplit) -> dict[str, float]:
    """Where the measured credit sits, by quadrant (``probe/<q>/...``, q in the quadrants and ``zero_adv``):

    - ``token_share``: the quadrant's share of response tokens; ``entropy_share``: of sum H_t;
    - ``delta_share``: of sum |delta^_t|; ``delta_sq_share``: of the noise-corrected sum (delta^_t^2 - se_t^2),
      an unbiased estimate of the share of sum delta_t^2 (it can leave [0, 1] when credit is below the noise);
    - ``info_share``: of sum I^_t over the probed positions; ``info_over_entropy``: sum I^_t / sum H_t over the
      quadrant's probed positions (how tight I_t <= H_t is); ``probed``: how many positions that is;
    and ``probe/entropy_delta_spearman`` (+ ``_pvalue``): the rank correlation of H_t and |delta^_t| over the
    response tokens; ``probe/value_start_mean``, ``probe/reward_mean``; the cost (continuations, tokens, s).
    """
    facts = probe.facts
    mask = facts.response_mask.cpu().bool()
    masks = split_quadrants(facts, split)
    entropy = facts.entropy.cpu().double()
    abs_delta = probe.delta.abs()
    delta_sq = probe.delta**2 - probe.delta_se**2
    probed = ~probe.info.isnan()
    info = probe.info.nan_to_num(0.0)
    out: dict[str, float] = {}
    for name, q in [*masks.items(), ("zero_adv", masks.zero_adv)]:
        q = q.cpu()
        qp = q & probed
        out[f"probe/{name}/token_share"] = _share(q[mask].double(), mask.double())
        out[f"probe/{name}/entropy_share"] = _share(entropy[q], entropy[mask])
        out[f"probe/{name}/delta_share"] = _share(abs_delta[q], abs_delta[mask])
        out[f"probe/{name}/delta_sq_share"] = _share(delta_sq[q], delta_sq[mask])
        out[f"probe/{name}/info_share"] = _share(info[qp], info[probed])
        out[f"probe/{name}/info_over_entropy"] = _share(info[qp], entropy[qp])
        out[f"probe/{name}/probed"] = float(qp.sum())
    out["probe/info_over_entropy"] = _share(info[probed], entropy[probed])
    rho, pvalue = spearman(entropy[mask], abs_delta[mask])
    out["probe/entropy_delta_spearman"], out["probe/entropy_delta_spearman_pvalue"] = rho, pvalue
    out["probe/value_start_mean"] = float(probe.value[:, 0].mean())
    out["probe/reward_mean"] = float(facts.rewards.double().mean())
    out["probe/delta_abs_mean"] = float(abs_delta[mask].mean())
    out["probe/certain_share"] = _share(probe.certain[mask].double(), mask.double())
    out["probe/responses"] = float(mask.shape[0])
    out["probe/continuations"] = float(probe.continuations)
    out["probe/tokens"] = float(probe.tokens)
    out["probe/seconds"] = probe.seconds
    return out


def share_intervals(
    probe: CreditProbe, split: EntropySplit, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of ``credit_summary``'s ``delta_share``, ``delta_sq_share`` and
    ``info_share`` (keys ``probe/<q>/<share>``), resampling prompt groups with replacement (responses of one
    prompt share it, so they are resampled together). The quadrant of every token is kept as the whole batch
    decided it. With few groups the intervals are wide: that is the point."""
    facts = probe.facts
    mask = facts.response_mask.cpu().bool()
    masks = split_quadrants(facts, split)
    groups = [*masks.items(), ("zero_adv", masks.zero_adv)]
    quantities = {
        "delta_share": probe.delta.abs(),
        "delta_sq_share": probe.delta**2 - probe.delta_se**2,
        "info_share": probe.info.nan_to_num(0.0),
    }
    group_ids = facts.group_ids.cpu().long()
    n_groups = int(group_ids.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(n_groups, (n_boot, n_groups), generator=gen)
    counts = torch.zeros(n_boot, n_groups, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(n_boot, n_groups, dtype=torch.float64)
    )
    alpha = (1 - confidence) / 2
    out: dict[str, tuple[float, float]] = {}
    for key, values in quantities.items():
        per_group = torch.zeros(n_groups, len(groups), dtype=torch.float64)
        for j, (_, q) in enumerate(groups):
            per_row = (values * (q.cpu() & mask)).sum(-1)
            per_group[:, j].index_add_(0, group_ids, per_row)
        total = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_ids, (values * mask).sum(-1))
        boot = (counts @ per_group) / (counts @ total)[:, None]
        lo, hi = boot.nanquantile(alpha, dim=0), boot.nanquantile(1 - alpha, dim=0)
        for j, (name, _) in enumerate(groups):
            out[f"probe/{name}/{key}"] = (float(lo[j]), float(hi[j]))
    return out


def spearman(x: Tensor, y: Tensor) -> tuple[float, float]:
    """Spearman's rank correlation (ties averaged) and its two-sided p-value; NaN when either is constant."""
    if x.numel() < 3 or bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return math.nan, math.nan
    from scipy import stats  # here, not at the top: only the probe app's report needs it

    result = stats.spearmanr(x.cpu().numpy(), y.cpu().numpy())
    return float(result.statistic), float(result.pvalue)


QUADRANT_NAMES: tuple[str, ...] = (*QUADRANTS, "zero_adv")
"""The groups ``credit_summary`` reports: the four quadrants and the tokens with A = 0."""
