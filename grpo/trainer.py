"""The GRPO training loop: rollout -> reward -> advantages -> intervention -> loss -> update -> metrics.

One step, read top to bottom in :meth:`Trainer.step`. The loop knows nothing of any particular intervention:
it builds the batch's :class:`TokenFacts`, asks the configured intervention for a :class:`TokenCredit`, and
optimises ``grpo.loss.policy_loss`` with it. Nor does it measure anything of the study: the quadrant statistics,
gradient diagnostics, cancellation, update norms and the probe are instruments (grpo/instrument.py) that the app
passes in, as it passes the metrics sink; the loop calls their hooks around the update.

Step numbering: metrics logged at step s describe the policy after s updates (``eval/*`` at step 0 is the
base model). Every random draw comes from a named ``torch.Generator`` that the checkpoint saves, so a resumed
run reproduces an uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from grpo import checkpoint
from grpo import distributed as dist_
from grpo.advantages import (
    distillation_advantages,
    group_advantages,
    informative_groups,
    overlong_penalty,
)
from grpo.batch import Batch, concat_batches, sample_groups
from grpo.config import QuadrlConfig
from grpo.credit import Intervention, TokenCredit, TokenFacts
from grpo.engine import engine_of
from grpo.evaluate import evaluate
from grpo.facts import TEACHER, FactSource, check_model, facts_for
from grpo.instrument import Instrument, StepView
from grpo.loss import policy_loss
from grpo.metrics import MetricsSink
from grpo.mismatch import mismatch_metrics, tis_weights
from grpo.model import Policy
from grpo.optimizer import build_optimizer, clip_and_step
from grpo.rollout import response_logprobs
from grpo.suite import Benchmark, evaluate_suite
from grpo.task import Example, Task


def lr_lambda(schedule: str, warmup: int, total: int):
    """The LR multiplier of optimizer step s (0-based), W = ``warmup``, N = ``total`` optimizer steps::

    f(s) = (s + 1) / W                          s < W   (linear warm-up, never 0)
    f(s) = 1                                    constant
    f(s) = 1 - p                                linear,  p = min(1, (s - W) / max(1, N - W))
    f(s) = (1 + cos(pi * p)) / 2                cosine
    """

    def factor(opt_step: int) -> float:
        if warmup and opt_step < warmup:
            return (opt_step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (opt_step - warmup) / max(1, total - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class Trainer:
    def __init__(
        self,
        cfg: QuadrlConfig,
        policy: Policy,
        task: Task,
        intervention: Intervention,
        tracker: MetricsSink,
        run_dir: Path,
        teacher: torch.nn.Module | None = None,
        suite: Sequence[Benchmark] = (),
        world: dist_.World = dist_.SINGLE,
        instruments: Sequence[Instrument] = (),
    ):
        self.cfg, self.policy, self.task, self.intervention = cfg, policy, task, intervention
        self.instruments = list(instruments)  # what the run measures (grpo/instrument.py), built by the app
        self.suite = list(suite)  # eval.suite's benchmarks, built by the app (they read files)
        self.tracker, self.run_dir, self.teacher = tracker, run_dir, teacher
        check_model(cfg, intervention, policy, teacher)  # refuse missing requirements before any rollout
        # several processes (grpo/distributed.py): generation runs on a plain copy, training on the FSDP2 shards
        # and every no-grad pass (facts, pi_old, the reference): the copy holds the current weights all step
        self.world, self.row_offset, self.n_local = world, 0, 0
        self.sampler_policy, self.train_model = policy, policy.model
        if world.active:
            self.sampler = dist_.SamplerCopy(policy.model)
            self.sampler_policy = replace(policy, model=self.sampler.model)
            dist_.shard(policy.model, next(policy.model.parameters()).device)
            self.train_model = dist_.RootForward(policy.model)
            policy.model.train()  # the update trains in train mode (LoRA dropout); sampling toggles the copy
        self.train_examples = task.train()  # a lazy Sequence: built-in splits hold 10^6 generated items
        self._order: tuple[int, list[int]] | None = None
        self.params = [p for p in policy.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = build_optimizer(
            self.params,
            o.name,
            lr=o.lr,
            betas=tuple(o.betas),
            weight_decay=o.weight_decay,
            momentum=o.momentum,
        )
        total_opt_steps = cfg.train.steps * cfg.algo.epochs * cfg.algo.minibatches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(o.schedule, o.warmup_steps, total_opt_steps)
        )
        seed = cfg.seed
        self.generators = {
            "sampling": torch.Generator().manual_seed(seed),
            "intervention": torch.Generator().manual_seed(seed + 1),
        }
        self.next_step = 0
        self.data_epoch, self.data_index = 0, 0
        self.run_started: float | None = (
            None  # perf_counter() when run() began; eval time is shared against it
        )
        self.eval_seconds = 0.0
        # what scoring the step's rollouts cost (all rounds of dynamic sampling); reset by every step
        self.reward_log = dict.fromkeys(
            ("perf/reward_time_s", "train/reward_timeouts", "train/reward_errors"), 0.0
        )

    # ---------------------------------------------------------------- data
    def _epoch_order(self, epoch: int) -> list[int]:
        if (
            self._order is None or self._order[0] != epoch
        ):  # a pure function of (seed, epoch): cache, never save
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.train_examples), generator=gen).tolist())
        return self._order[1]

    def next_prompts(self, n: int) -> list[Example]:
        """The next n training prompts: a fresh seeded permutation per pass over the train split."""
        out: list[Example] = []
        order = self._epoch_order(self.data_epoch)
        while len(out) < n:
            if self.data_index >= len(order):
                self.data_epoch, self.data_index = self.data_epoch + 1, 0
                order = self._epoch_order(self.data_epoch)
            out.append(self.train_examples[order[self.data_index]])
            self.data_index += 1
        return out

    # ---------------------------------------------------------------- rollout
    def sample_groups(self, examples: list[Example]) -> Batch:
        g, s = self.cfg.algo.group_size, self.cfg.sampling
        policy = self.policy
        if self.world.active:  # this rank's whole groups, on the refreshed unsharded copy
            self.sampler.refresh(self.policy.model)
            policy, examples = self.sampler_policy, dist_.my_share(examples, self.world)
        batch = sample_groups(policy, self.task, examples, g, s, self.generators["sampling"])
        for key, value in batch.reward_stats.items():
            self.reward_log[key] = self.reward_log.get(key, 0.0) + value
        return batch

    def rollout(self) -> tuple[Batch, dict[str, float]]:
        """Sample a batch; with DAPO dynamic sampling keep only groups with reward variance, refilling."""
        a = self.cfg.algo
        if self.world.active and a.dynamic_sampling:
            return self._dynamic_rollout_distributed()
        batch = self.sample_groups(self.next_prompts(a.prompts_per_step))
        stats = {
            "train/groups_informative": float(
                informative_groups(batch.rewards, batch.group_ids).float().mean()
            )
        }
        if not a.dynamic_sampling:
            return batch, stats
        kept = [batch.select(torch.nonzero(informative_groups(batch.rewards, batch.group_ids)).squeeze(-1))]
        n_groups = int(kept[0].group_ids.max()) + 1 if len(kept[0].group_ids) else 0
        sampled = [batch.rewards]
        for _ in range(a.dynamic_sampling_max_rounds):
            if n_groups >= a.prompts_per_step:
                break
            more = self.sample_groups(self.next_prompts(a.prompts_per_step))
            sampled.append(more.rewards)
            rows = torch.nonzero(informative_groups(more.rewards, more.group_ids)).squeeze(-1)
            if len(rows):
                kept.append(more.select(rows))
                n_groups += int(kept[-1].group_ids.max()) + 1
        # train/reward_mean then describes the filtered batch (pulled toward 0.5); this is the policy's own
        stats["train/reward_mean_sampled"] = float(torch.cat(sampled).mean())
        kept = [b for b in kept if len(b.group_ids)]
        if not kept:  # nothing informative: train on the original batch (all advantages are 0)
            return batch, stats
        merged = concat_batches(kept, self.policy.pad_id)
        limit = int(torch.nonzero(merged.group_ids < a.prompts_per_step).max()) + 1
        merged = merged.select(torch.arange(limit))
        stats["train/dynamic_sampling_groups"] = float(int(merged.group_ids.max()) + 1)
        return merged, stats

    def _dynamic_rollout_distributed(self) -> tuple[Batch, dict[str, float]]:
        """:meth:`rollout`'s dynamic sampling on several processes, refilled by the global count: every round each
        rank samples its share of the round's prompts; rounds continue while the ranks together hold fewer than
        ``prompts_per_step`` informative groups; the kept groups are then ordered as one process would hold them
        (round by round, each round's ranks in order), cut at ``prompts_per_step`` groups and dealt out again in
        equal contiguous shares. When the rounds run out with a count the world size does not divide, the last
        groups are dropped (``train/dynamic_sampling_dropped``): ranks must hold equal shares."""
        a, w = self.cfg.algo, self.world.size
        rounds = [self.sample_groups(self.next_prompts(a.prompts_per_step))]

        def n_informative(b: Batch) -> int:
            rows = informative_groups(b.rewards, b.group_ids)
            return int(dist_.all_sum([float(len(torch.unique(b.group_ids[rows])))])[0])

        n_groups = n_informative(rounds[0])
        stats = {"train/groups_informative": n_groups / a.prompts_per_step}
        for _ in range(a.dynamic_sampling_max_rounds):
            if n_groups >= a.prompts_per_step:
                break
            rounds.append(self.sample_groups(self.next_prompts(a.prompts_per_step)))
            n_groups += n_informative(rounds[-1])
        sampled = torch.cat([b.rewards for b in rounds])
        (stats["train/reward_mean_sampled"],) = dist_.weighted_mean([(float(sampled.mean()), len(sampled))])
        kept = [
            b.select(torch.nonzero(informative_groups(b.rewards, b.group_ids)).squeeze(-1)) for b in rounds
        ]
        everyone = dist_.gather_objects(kept)  # [rank][round]: small CPU tensors and texts
        ordered = [everyone[r][i] for i in range(len(rounds)) for r in range(w)]
        ordered = [b for b in ordered if len(b.group_ids)]
        if (
            not ordered
        ):  # nothing informative: train on the first round (all advantages are 0), as one process
            return rounds[0], stats
        merged = concat_batches(ordered, self.policy.pad_id)
        total = min(int(merged.group_ids.max()) + 1, a.prompts_per_step)
        usable = total - total % w
        stats["train/dynamic_sampling_groups"] = float(usable)
        if total > usable:
            stats["train/dynamic_sampling_dropped"] = float(total - usable)
        if usable == 0:
            return rounds[0], stats
        per_rank = usable // w
        first = self.world.rank * per_rank
        mine = torch.nonzero((merged.group_ids >= first) & (merged.group_ids < first + per_rank)).squeeze(-1)
        return merged.select(mine), stats

    # ---------------------------------------------------------------- update
    def logprobs(self, batch: Batch, rows: Tensor, model: torch.nn.Module | None = None) -> Tensor:
        r = batch.rollout
        logp, _ = response_logprobs(
            model if model is not None else self.train_model,
            r.prompt_ids[rows],
            r.prompt_mask[rows],
            r.response_ids[rows],
            r.response_mask[rows],
            temperature=self.cfg.sampling.temperature,
            chunk_size=self.cfg.train.logits_chunk,
            buckets=self.cfg.train.logprob_buckets,
        )
        return logp

    def overlong(self, batch: Batch) -> Tensor:
        """[B] DAPO soft overlong penalty of each response (0 unless algo.overlong_buffer > 0)."""
        a = self.cfg.algo
        lengths = batch.rollout.response_mask.sum(-1).to(batch.rewards.device)
        return overlong_penalty(
            lengths, self.cfg.sampling.max_new_tokens, a.overlong_buffer, a.overlong_penalty
        )

    def facts(self, batch: Batch, step: int) -> TokenFacts:
        a, r = self.cfg.algo, batch.rollout
        mask = r.response_mask
        # extra facts only when an active method (or distillation) asks; passes shared with the KL reference
        source = FactSource(
            self.sampler_policy,
            r,
            batch.examples,
            temperature=self.cfg.sampling.temperature,
            chunk_size=self.cfg.train.logits_chunk,
            keys=facts_for(self.cfg, self.intervention, step),
            teacher=self.teacher,
        )
        extra = source.compute()
        if a.advantage == "teacher":
            advantages = distillation_advantages(extra[TEACHER], source.policy_pass().logprobs, mask)
        else:
            # the overlong penalty shapes the advantages only: the facts keep the task's rewards
            shaped = batch.rewards + self.overlong(batch)
            advantages = group_advantages(shaped, batch.group_ids, a.scale_adv_by_std, a.adv_eps)
        everything = torch.arange(len(batch.rewards))
        old = r.logprobs
        if a.epochs * a.minibatches > 1:  # later passes are off-policy: freeze pi_old before the first update
            with torch.no_grad():
                old = self.logprobs(batch, everything, self.sampler_policy.model)
        ref = source.reference_pass().logprobs if a.beta > 0 else None
        return TokenFacts.from_rollout(
            r,
            batch.rewards,
            batch.group_ids,
            advantages,
            step,
            old_logprobs=old,
            ref_logprobs=ref,
            loss_aggregation=a.loss_aggregation,
            max_new_tokens=self.cfg.sampling.max_new_tokens,
            extra=extra,
        )

    def loss(
        self,
        facts: TokenFacts,
        credit: TokenCredit,
        batch: Batch,
        rows: Tensor,
        multiplier: Tensor | None = None,
        with_extra: bool = True,
        logp: Tensor | None = None,
    ):
        """The loss on ``rows``; ``logp`` (current log-probs with grad) is computed unless given."""
        a = self.cfg.algo
        if logp is None:
            # rows index the global batch; the rollout holds this rank's rows only (offset 0 in one process)
            logp = self.logprobs(batch, rows - self.row_offset)
        single_pass = a.epochs * a.minibatches == 1
        old = logp.detach() if single_pass else facts.old_logprobs[rows]  # on-policy: rho = 1 exactly
        extra = None
        if with_extra and self.intervention.active(facts.step):
            seen = facts
            # an extra term must see the same pi_old as the surrogate, not the sampler's numerics
            if single_pass:
                old_all = facts.old_logprobs.clone()
                old_all[rows] = old
                seen = replace(facts, old_logprobs=old_all)
            extra = self.intervention.extra_loss(seen, credit, logp, rows)
        weights = credit.weights[rows] if multiplier is None else credit.weights[rows] * multiplier
        return policy_loss(
            logp,
            old,
            credit.advantages[rows],
            weights,
            credit.loss_mask[rows],
            aggregation=a.loss_aggregation,
            eps_low=a.eps_low,
            eps_high=a.eps_high,
            max_new_tokens=self.cfg.sampling.max_new_tokens,
            clip=credit.clip,
            beta=a.beta,
            ref_logprobs=None if facts.ref_logprobs is None else facts.ref_logprobs[rows],
            kl_weights=credit.kl_weights[rows],
            kl_estimator=a.kl_estimator,
            extra=extra,
            response_mask=facts.response_mask[rows],
            # several processes: each token weighted by its coefficient in the global batch (grpo/distributed.py)
            coefficients=(
                facts.loss_coefficients(credit.loss_mask)[rows],
                facts.loss_coefficients(facts.response_mask)[rows],
            )
            if self.world.active
            else None,
        )

    def minibatches(self, batch: Batch) -> list[Tensor]:
        """Split the batch into ``algo.minibatches`` row sets of whole groups.

        Dynamic sampling can leave fewer groups than minibatches: the empty sets are dropped, since an update on
        no tokens would log a NaN loss and still move the weights (AdamW momentum and weight decay).
        """
        if self.world.active:  # one minibatch (checked): this rank's rows of the global batch
            return [self.minibatches_rows()]
        groups = torch.unique(batch.group_ids)
        return [
            torch.nonzero(torch.isin(batch.group_ids, chunk)).squeeze(-1)
            for chunk in torch.tensor_split(groups, self.cfg.algo.minibatches)
            if len(chunk)
        ]

    def step(self, step: int) -> dict[str, float]:
        """One GRPO step: sample and score, advantages (the facts), credit, loss, update. The instruments
        observe the step before and after the update (grpo/instrument.py); their metrics join the step's."""
        t0 = time.perf_counter()
        batch, metrics = self.sample_batch(step)
        t_rollout = time.perf_counter() - t0
        facts = self.facts(batch, step)
        if self.world.active:  # every rank now holds the global batch's facts: the credit is global
            facts = self.gather_facts(facts, metrics)
        credit = TokenCredit.grpo_default(facts)
        if self.intervention.active(step):
            credit = self.intervention.credit(facts, credit, self.generators["intervention"])
        credit = self.correct_mismatch(batch, credit, metrics)
        metrics.update(self.credit_metrics(batch, facts, credit))
        view = self.view(step, batch, facts, credit)
        self.observe("before_update", view, metrics)

        t1 = time.perf_counter()
        terms, grad_norms = self.update(batch, facts, credit)
        t_update = time.perf_counter() - t1
        # the next rollout samples from the updated weights (an engine other than native holds its own copy)
        metrics.update(engine_of(self.sampler_policy).push_weights(self.sampler_policy.model))
        self.observe("after_update", view, metrics)

        metrics.update(self.update_metrics(facts, credit, terms, grad_norms))
        n_tokens, step_time = int(facts.response_mask.sum()), time.perf_counter() - t0
        metrics.update(
            {
                "perf/step_time_s": step_time,
                "perf/rollout_time_s": t_rollout,
                "perf/update_time_s": t_update,
                "perf/tokens_per_s": n_tokens / step_time,
                "perf/gen_tokens_per_s": n_tokens / max(t_rollout, 1e-9),
            }
        )
        self.log_samples(step, batch, facts)
        return metrics

    def sample_batch(self, step: int) -> tuple[Batch, dict[str, float]]:
        """The step's rollout batch and its sampling metrics (``train/groups_informative``, what scoring cost, each
        reward function's mean); several processes: this rank's rows, padded to the global response width."""
        self.reward_log = dict.fromkeys(self.reward_log, 0.0)
        if self.world.active:  # a pure function of (seed, step, rank): nothing to save, resumable on any size
            self.generators["sampling"].manual_seed(dist_.sampling_seed(self.cfg.seed, step, self.world.rank))
        batch, metrics = self.rollout()
        if self.world.active:
            # every rank's rows padded to the global response width, as one process's batch would be
            width = dist_.max_int(batch.rollout.response_ids.shape[1])
            batch = replace(batch, rollout=dist_.pad_rollout(batch.rollout, width, self.policy.pad_id))
            self.n_local = len(batch.rewards)  # equal on every rank (whole groups, equal shares)
            self.row_offset = self.world.rank * self.n_local
            self.reward_log = dict(
                zip(self.reward_log, dist_.all_sum(list(self.reward_log.values())), strict=True)
            )
        metrics.update(self.reward_log)
        for key in [k for k in metrics if k.startswith("train/reward/") and k + "/n" in metrics]:
            metrics[key] /= max(metrics.pop(key + "/n"), 1.0)  # a reward function's mean over its samples
        return batch, metrics

    def gather_facts(self, facts: TokenFacts, metrics: dict[str, float]) -> TokenFacts:
        """Several processes: the global batch's facts on every rank (and its informative groups' share)."""
        facts = dist_.gather_facts(facts, self.world)
        if "train/groups_informative" in metrics and not self.cfg.algo.dynamic_sampling:  # all ranks' groups
            informative = informative_groups(facts.rewards, facts.group_ids)
            metrics["train/groups_informative"] = float(informative.float().mean())
        return facts

    def correct_mismatch(self, batch: Batch, credit: TokenCredit, metrics: dict[str, float]) -> TokenCredit:
        """Another engine sampled (grpo/mismatch.py): log the mismatch, and with ``rollout.tis`` weight the credit
        by the truncated importance ratios. Training, not an instrument: the correction reads the same ratios."""
        sampler_logp = batch.rollout.rollout_logprobs
        if sampler_logp is None or self.world.active:
            return credit
        ro, r = self.cfg.rollout, batch.rollout
        metrics.update(mismatch_metrics(r.logprobs, sampler_logp, r.response_mask, ro.tis, ro.tis_cap))
        if ro.tis == "off":
            return credit
        w = tis_weights(r.logprobs, sampler_logp, r.response_mask, ro.tis, ro.tis_cap)
        return replace(credit, weights=credit.weights * w)

    def credit_metrics(self, batch: Batch, facts: TokenFacts, credit: TokenCredit) -> dict[str, float]:
        """What the intervention reports (``intervention/*``), the overlong penalty and the teacher's KL."""
        a = self.cfg.algo
        out = {f"intervention/{k}": v for k, v in credit.info.items()}
        if a.overlong_buffer > 0:
            out["train/overlong_penalty_mean"] = float(self.overlong(batch).mean())
            if self.world.active:
                (out["train/overlong_penalty_mean"],) = dist_.weighted_mean(
                    [(out["train/overlong_penalty_mean"], float(self.n_local))]
                )
        if a.advantage == "teacher":  # -a_t: the sampled-token estimate of KL(pi_old || pi_T) per token
            n_resp = max(1, int(facts.response_mask.sum()))
            out["train/teacher_kl"] = -float(facts.advantages.sum()) / n_resp
        return out

    def view(self, step: int, batch: Batch, facts: TokenFacts, credit: TokenCredit) -> StepView:
        """What the instruments see of this step (grpo/instrument.py)."""
        everything = torch.arange(len(facts.rewards))

        def loss_for_multiplier(m: Tensor, logp: Tensor) -> Tensor:
            return self.loss(facts, credit, batch, everything, multiplier=m, with_extra=False, logp=logp).loss

        return StepView(
            step,
            batch,
            facts,
            credit,
            self.params,
            self.world,
            loss_for_multiplier,
            lambda rows: self.logprobs(batch, rows),
        )

    def observe(self, hook: str, view: StepView, metrics: dict[str, float]) -> None:
        """Call ``hook`` on every instrument that has it, in order; their metrics join ``metrics``."""
        for instrument in self.instruments:
            method = getattr(instrument, hook, None)
            if method is not None:
                metrics.update(method(view) or {})

    def _hooks(self, name: str) -> Callable[[], None]:
        methods = [getattr(i, name) for i in self.instruments if hasattr(i, name)]

        def call() -> None:
            for method in methods:
                method(self.params)

        return call

    def update(self, batch: Batch, facts: TokenFacts, credit: TokenCredit) -> tuple[list[Any], list[float]]:
        """``algo.epochs`` passes over the minibatches, one optimiser step each: their loss terms and the
        gradient norms before clipping."""
        terms_log: list[Any] = []
        grad_norms: list[float] = []
        before, after = self._hooks("before_optimizer_step"), self._hooks("after_optimizer_step")
        for _ in range(self.cfg.algo.epochs):
            for rows in self.minibatches(batch):
                terms = self.loss(facts, credit, batch, rows)
                self.optimizer.zero_grad(set_to_none=True)
                # FSDP2 averages gradients over ranks; times W makes it the sum: the one-process gradient
                (terms.loss * self.world.size if self.world.active else terms.loss).backward()
                grad_norms.append(
                    clip_and_step(self.optimizer, self.params, self.cfg.optim.grad_clip, before, after)
                )
                self.scheduler.step()
                terms_log.append(terms)
        return terms_log, grad_norms

    def update_metrics(
        self, facts: TokenFacts, credit: TokenCredit, terms_log: list[Any], grad_norms: list[float]
    ) -> dict[str, float]:
        """The step's rewards, loss terms (means over the optimiser steps; global over processes), entropy,
        response length, gradient norm and learning rate."""
        mask = facts.response_mask
        n_tokens, n = int(mask.sum()), len(terms_log)
        rewards = facts.rewards  # the global batch's (batch.rewards itself in one process)
        terms_mean = {
            "train/loss": sum(float(t.loss.detach()) for t in terms_log) / n,
            "train/pg_loss": sum(t.pg_loss for t in terms_log) / n,
            "train/kl": sum(t.kl for t in terms_log) / n,
            "train/clip_frac_low": sum(t.clip_frac_low for t in terms_log) / n,
            "train/clip_frac_high": sum(t.clip_frac_high for t in terms_log) / n,
            "train/ratio_mean": sum(t.ratio_mean for t in terms_log) / n,
        }
        if self.world.active:
            terms_mean.update(self._reduce_terms(terms_mean, facts, credit))
        return {
            "train/reward_mean": float(rewards.mean()),
            "train/reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "train/accuracy": float((rewards >= 1.0).float().mean()),
            **terms_mean,
            "train/entropy_mean": float((facts.entropy * mask).sum() / max(1, n_tokens)),
            "train/response_len": n_tokens / len(rewards),
            "train/grad_norm": sum(grad_norms) / len(grad_norms),
            "train/lr": float(self.scheduler.get_last_lr()[0]),
        }

    def log_samples(self, step: int, batch: Batch, facts: TokenFacts) -> None:
        """Every ``train.log_samples_every`` steps: up to 32 of this rank's completions as a table."""
        every = self.cfg.train.log_samples_every
        if every and step % every == 0:
            rows = [
                {"prompt": ex.prompt, "completion": t, "reward": float(r), "advantage": float(a)}
                for ex, t, r, a in zip(
                    batch.examples, batch.texts, batch.rewards, facts.sequence_advantages, strict=False
                )
            ][:32]
            self.tracker.log_table(rows, f"samples/step_{step:06d}.json")

    def _reduce_terms(
        self, local: dict[str, float], facts: TokenFacts, credit: TokenCredit
    ) -> dict[str, float]:
        """The loss terms of the global batch from every rank's: the losses (global coefficients) add up; the
        KL is a mean over response tokens and the clip fractions and ratio means over loss-mask tokens."""
        rows = self.minibatches_rows()
        n_resp = float(facts.response_mask[rows].sum())
        n_loss = float(credit.loss_mask[rows].sum())
        loss, pg = dist_.all_sum([local["train/loss"], local["train/pg_loss"]])
        keys = ("train/kl", "train/clip_frac_low", "train/clip_frac_high", "train/ratio_mean")
        weights = (n_resp, n_loss, n_loss, n_loss)
        means = dist_.weighted_mean([(local[k], w) for k, w in zip(keys, weights, strict=True)])
        return {"train/loss": loss, "train/pg_loss": pg, **dict(zip(keys, means, strict=True))}

    def minibatches_rows(self) -> Tensor:
        """This rank's rows of the global batch (several processes)."""
        return torch.arange(self.n_local) + self.row_offset

    # ---------------------------------------------------------------- eval, checkpoint, loop
    def evaluate(self, step: int) -> dict[str, float]:
        """``eval/*`` metrics, plus ``perf/eval_time_s`` and ``perf/eval_share``: the time spent evaluating so far
        in this process's :meth:`run` over that run's wall time so far (a resumed run counts from its restart)."""
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + step)  # independent of the training stream
        if self.world.active:
            metrics, greedy = self._evaluate_shard(gen)
        else:
            metrics, greedy = evaluate(
                self.policy, self.task, self.cfg.eval, self.cfg.sampling.max_new_tokens, gen
            )
        rows = [{"prompt": c.example.prompt, "completion": c.text, "reward": c.reward} for c in greedy[:32]]
        self.tracker.log_table(rows, f"eval_samples/step_{step:06d}.json")
        if (
            self.suite
        ):  # several processes: every rank runs the whole suite on its refreshed copy (same numbers)
            suite_metrics, _ = evaluate_suite(
                self.sampler_policy,
                self.suite,
                max_new_tokens=self.cfg.sampling.max_new_tokens,
                batch_size=self.cfg.eval.batch_size,
                seed=self.cfg.seed,
                step=step,
            )
            metrics.update(suite_metrics)
        now = time.perf_counter()
        self.eval_seconds += now - t0
        started = t0 if self.run_started is None else self.run_started
        metrics["perf/eval_time_s"] = now - t0
        metrics["perf/eval_share"] = self.eval_seconds / max(now - started, 1e-9)
        return metrics

    def _evaluate_shard(self, gen: torch.Generator) -> tuple[dict[str, float], list[Any]]:
        """Several processes: each rank evaluates a contiguous share of the prompts on its unsharded copy; every
        ``eval/*`` metric is a mean over prompts, so the global one is the prompt-weighted mean of the shares'.
        Greedy accuracy equals one process's; sampled metrics draw from the same seed on each share, so they
        depend on the world size (the streams are per share)."""
        self.sampler.refresh(self.policy.model)
        examples = list(self.task.test())[: self.cfg.eval.n_prompts]
        share = torch.tensor_split(torch.arange(len(examples)), self.world.size)[self.world.rank].tolist()
        mine = [examples[i] for i in share]
        local, greedy = evaluate(
            self.sampler_policy, self.task, self.cfg.eval, self.cfg.sampling.max_new_tokens, gen, mine
        )
        keys = sorted(local)
        means = dist_.weighted_mean([(local[k], float(len(mine))) for k in keys])
        return dict(zip(keys, means, strict=True)), greedy

    def between_steps(self, steps_done: int) -> None:
        """Every instrument's ``between_steps`` metrics (e.g. the credit probe's), logged at ``steps_done``."""
        metrics: dict[str, float] = {}
        for instrument in self.instruments:
            method = getattr(instrument, "between_steps", None)
            if method is not None:
                metrics.update(method(steps_done) or {})
        if metrics:
            self.tracker.log_metrics(metrics, steps_done)

    def state(self) -> dict[str, Any]:
        active = self.world.active  # sharded tensors: the gathered ones replace these (_save_distributed)
        return {
            "next_step": self.next_step,
            "model": {} if active else self.policy.trainable_state(),
            "optimizer": {} if active else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": checkpoint.rng_state(self.generators),
            "data": {"epoch": self.data_epoch, "index": self.data_index},
            "mlflow_run_id": self.tracker.run_id or "",
        }

    def save_checkpoint(self) -> None:
        if self.world.active:
            self._save_distributed()
            return
        checkpoint.save(self.run_dir, self.state(), export=lambda d: self.policy.model.save_pretrained(d))

    def _save_distributed(self) -> None:
        """Gathered, not sharded: one file of full tensors that any world size (one process too, for the
        weights) can load, written by rank 0; the state is small next to what a sharded format would save us
        at the sizes quadrl trains (DCP's sharded save is the step to take when gathering stops fitting)."""
        state = self.state()
        state["model"], state["optimizer"] = dist_.full_state(self.policy.model, self.optimizer)
        state["rng_ranks"] = dist_.gather_objects(state["rng"])  # each rank's global torch and python RNGs
        state["world_size"] = self.world.size
        self.sampler.refresh(self.policy.model)  # the exported model: the weights just trained
        if self.world.is_main:
            export = self.sampler.model.save_pretrained
            checkpoint.save(self.run_dir, state, export=lambda d: export(d))
        dist_.barrier()  # no rank runs ahead (and could die) before the checkpoint is in place

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        # a checkpoint of either kind resumes on any number of processes: "world_size" marks the gathered kind
        gathered = "world_size" in state
        if self.world.active:
            optim = state["optimizer"]
            if not gathered:
                optim = dist_.named_optimizer_state(self.policy.model, optim)
            dist_.load_full_state(self.policy.model, self.optimizer, state["model"], optim)
            ranks = state.get("rng_ranks") or []
            rng = ranks[self.world.rank] if len(ranks) == self.world.size else state["rng"]
            checkpoint.restore_rng(rng, self.generators)
        else:
            self.policy.load_trainable_state(state["model"])
            if gathered:
                dist_.load_named_optimizer_state(self.policy.model, self.optimizer, state["optimizer"])
            else:
                self.optimizer.load_state_dict(state["optimizer"])
            checkpoint.restore_rng(state["rng"], self.generators)
        self.scheduler.load_state_dict(state["scheduler"])
        self.data_epoch, self.data_index = state["data"]["epoch"], state["data"]["index"]
        self.next_step = state["next_step"]

    def eval_due(self, steps_done: int) -> bool:
        every = self.cfg.eval.every
        return (
            steps_done == 0 or steps_done == self.cfg.train.steps or (every > 0 and steps_done % every == 0)
        )

    def run(self) -> dict[str, float]:
        cfg = self.cfg
        final: dict[str, float] = {}
        self.run_started, self.eval_seconds = time.perf_counter(), 0.0
        if self.next_step == 0 and self.eval_due(0):
            final = self.evaluate(0)
            self.tracker.log_metrics(final, 0)
        if self.next_step == 0:
            self.between_steps(0)
        progress = None
        if cfg.train.progress and self.world.is_main:  # one bar per run, not per process
            from tqdm import tqdm

            progress = tqdm(total=cfg.train.steps, initial=self.next_step, desc="grpo", dynamic_ncols=True)
        for step in range(self.next_step, cfg.train.steps):
            metrics = self.step(step)
            self.tracker.log_metrics(metrics, step)
            self.next_step = step + 1
            if self.eval_due(self.next_step):
                final = self.evaluate(self.next_step)
                self.tracker.log_metrics(final, self.next_step)
            self.between_steps(self.next_step)
            if self.next_step % cfg.train.checkpoint_every == 0 or self.next_step == cfg.train.steps:
                self.save_checkpoint()
            if progress is not None:
                progress.update(1)
                progress.set_postfix(
                    reward=f"{metrics['train/reward_mean']:.3f}",
                    acc=f"{final.get('eval/accuracy', float('nan')):.3f}",
                    tok_s=f"{metrics['perf/tokens_per_s']:.0f}",
                )
        if progress is not None:
            progress.close()
        return final
