"""The training loop's plumbing: lr schedule, epochs and minibatches with a frozen pi_old, dynamic sampling,
the overlong penalty, a CUDA step."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import pytest
import torch

from grpo.advantages import group_advantages
from grpo.task import Example
from grpo.trainer import Trainer, lr_lambda
from tests.conftest import make_trainer as shared_make_trainer


def make_trainer(tmp_path: Path, model_dir: Path, jsonl: Path, *overrides: str) -> Trainer:
    return shared_make_trainer(
        tmp_path, model_dir, jsonl, "sampling.max_new_tokens=6", *overrides, reward=fake_reward
    )


def fake_reward(example: Example, completion: str) -> float:
    """Deterministic 0/1 reward with variance inside most groups of an untrained model's gibberish."""
    return float(hashlib.blake2b(f"{example.prompt}|{completion}".encode()).digest()[0] % 2)


def test_lr_schedule_hand_values():
    # warm-up 2 of 6 optimizer steps: (s+1)/2 during warm-up, then decay over the 4 steps left
    linear = lr_lambda("linear", 2, 6)
    assert [linear(s) for s in range(6)] == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    cosine = lr_lambda("cosine", 2, 6)
    # 0.5 * (1 + cos(pi * p)) at p = 0, .25, .5, .75
    assert [cosine(s) for s in range(2, 6)] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])
    assert [lr_lambda("constant", 3, 10)(s) for s in (0, 1, 2, 3, 9)] == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 1.0, 1.0]
    )
    assert lr_lambda("linear", 0, 4)(0) == 1.0


def test_epochs_and_minibatches_keep_pi_old_frozen(tmp_path, tiny_model_dir, math_jsonl, monkeypatch):
    trainer = make_trainer(
        tmp_path,
        tiny_model_dir,
        math_jsonl,
        "algo.epochs=2",
        "algo.minibatches=2",
        "optim.lr=0.05",
        "optim.warmup_steps=0",
        "optim.schedule=linear",
        "train.steps=3",
    )
    before = {k: v.clone() for k, v in trainer.policy.trainable_state().items()}
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    import grpo.trainer as trainer_module

    real = trainer_module.policy_loss

    def spy(logprobs, old_logprobs, *args, **kwargs):
        calls.append((logprobs.detach().clone(), old_logprobs.clone()))
        return real(logprobs, old_logprobs, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "policy_loss", spy)
    seen_batches = []
    real_facts = trainer.facts

    def facts(batch, step):
        out = real_facts(batch, step)
        seen_batches.append((batch, out))
        return out

    monkeypatch.setattr(trainer, "facts", facts)
    metrics = trainer.step(0)

    batch, facts_ = seen_batches[0]
    assert batch.rewards.min() < batch.rewards.max()
    assert len(calls) == 4 and trainer.scheduler.last_epoch == 4  # 2 epochs x 2 minibatches
    # pi_old is the policy before the first update, recomputed once: it equals the current log-probs on the
    # first minibatch (rho = 1) and is the same tensor, not refreshed, for every later minibatch
    rows = trainer.minibatches(batch)
    assert torch.allclose(calls[0][0], calls[0][1], atol=1e-5)
    for i, (_, old) in enumerate(calls):
        assert torch.equal(old, facts_.old_logprobs[rows[i % 2]])
    assert not torch.allclose(calls[2][0], calls[2][1], atol=1e-4)  # epoch 2 is off-policy: rho != 1
    after = trainer.policy.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # linear decay over 3 steps x 4 optimizer steps = 12: after 4 steps the factor is 1 - 4/12
    assert metrics["train/lr"] == pytest.approx(0.05 * (1 - 4 / 12))
    assert math.isfinite(metrics["train/loss"])


def test_minibatches_never_empty_when_fewer_groups_than_minibatches(tmp_path, tiny_model_dir, math_jsonl):
    trainer = make_trainer(tmp_path, tiny_model_dir, math_jsonl, "algo.minibatches=4")
    batch, _ = trainer.rollout()
    two_groups = batch.select(torch.nonzero(batch.group_ids < 2).squeeze(-1))
    sets = trainer.minibatches(two_groups)
    assert len(sets) == 2 and all(len(s) == 4 for s in sets)
    assert sorted(torch.cat(sets).tolist()) == list(range(8))


def test_dynamic_sampling_reports_the_unfiltered_reward(tmp_path, tiny_model_dir, math_jsonl, monkeypatch):
    trainer = make_trainer(tmp_path, tiny_model_dir, math_jsonl, "algo=dapo")
    sampled: list[torch.Tensor] = []  # every round's rewards, recorded around the real sampler
    sample = trainer.sample_groups
    monkeypatch.setattr(trainer, "sample_groups", lambda ex: sampled.append((b := sample(ex)).rewards) or b)
    batch, stats = trainer.rollout()
    everything = float(torch.cat(sampled).mean())
    assert everything != float(batch.rewards.mean()), "filtering changed nothing: the test could not tell"
    assert stats["train/reward_mean_sampled"] == pytest.approx(everything)
    for g in batch.group_ids.unique():
        rewards = batch.rewards[batch.group_ids == g]
        assert rewards.min() < rewards.max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_training_step_on_cuda(tmp_path, tiny_model_dir, math_jsonl):
    trainer = make_trainer(tmp_path, tiny_model_dir, math_jsonl, "model.device=cuda", "algo.beta=0.1")
    metrics = trainer.step(0)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["train/kl"])
    assert group_advantages(torch.ones(4, device="cuda"), torch.tensor([0, 0, 1, 1])).device.type == "cuda"


def test_overlong_penalty_shapes_advantages_not_rewards(tmp_path, tiny_model_dir, math_jsonl):
    trainer = make_trainer(
        tmp_path,
        tiny_model_dir,
        math_jsonl,
        "algo.overlong_buffer=5",
        "algo.group_size=8",
        "sampling.temperature=2",
    )
    batch, _ = trainer.rollout()
    facts = trainer.facts(batch, step=0)
    lengths = batch.rollout.response_mask.sum(-1).float()
    penalty = -(lengths - 1).clamp_min(0) / 5  # max_new_tokens 6, buffer 5: free up to 1 token
    shaped = group_advantages(batch.rewards + penalty, batch.group_ids)
    plain = group_advantages(batch.rewards, batch.group_ids)
    assert torch.equal(facts.rewards, batch.rewards)  # interventions and logs see the task's reward
    assert torch.allclose(facts.sequence_advantages, shaped, atol=1e-6)
    assert not torch.allclose(shaped, plain, atol=1e-3), lengths  # the lengths differ within some group
    metrics = trainer.step(1)
    assert metrics["train/overlong_penalty_mean"] < 0


def test_eval_time_and_its_share_of_the_run_are_logged(tmp_path, tiny_model_dir, math_jsonl):
    from grpo.metrics import NullSink

    class Recorder(NullSink):
        def __init__(self):
            self.logged: dict[int, dict[str, float]] = {}

        def log_metrics(self, metrics, step):
            self.logged.setdefault(step, {}).update(metrics)

    trainer = make_trainer(
        tmp_path, tiny_model_dir, math_jsonl, "train.steps=2", "eval.every=1", "eval.n_samples=2",
        "eval.pass_k=[1,2]", "eval.n_prompts=4", "train.progress=false",
    )  # fmt: skip
    trainer.tracker = sink = Recorder()
    started = time.perf_counter()
    trainer.run()
    total = time.perf_counter() - started
    evals = [sink.logged[s] for s in (0, 1, 2)]
    assert all(m["perf/eval_time_s"] > 0 for m in evals)
    assert evals[0]["perf/eval_share"] > 0.99  # nothing but the first evaluation has happened yet
    # the last share is every evaluation's time over the run's wall time so far
    last = evals[-1]["perf/eval_share"]
    spent = sum(m["perf/eval_time_s"] for m in evals)
    assert spent / total <= last <= 1.0 and spent / last <= total
    assert last < evals[0]["perf/eval_share"]  # two training steps happened in between


def test_an_injected_instrument_sees_every_hook_in_order(tmp_path, tiny_model_dir, math_jsonl):
    """grpo/instrument.py: the hooks fire around the update in order, their metrics join the step's, and the loop
    itself measures nothing of the study (no quadrant, cancellation or update-norm metric without instruments)."""
    from grpo.instrument import Instrument, StepView

    calls: list[str] = []

    class Spy(Instrument):
        def before_update(self, view: StepView) -> dict[str, float]:
            calls.append("before_update")
            assert (
                view.credit.weights.shape
                == view.facts.response_mask.shape
                == view.batch.rollout.logprobs.shape
            )
            return {"spy/before": 1.0}

        def before_optimizer_step(self, params) -> None:
            calls.append("before_optimizer_step")

        def after_optimizer_step(self, params) -> None:
            calls.append("after_optimizer_step")

        def after_update(self, view: StepView) -> dict[str, float]:
            calls.append("after_update")
            return {"spy/after": 2.0}

        def between_steps(self, steps_done: int) -> dict[str, float]:
            calls.append(f"between_steps {steps_done}")
            return {}

    trainer = make_trainer(tmp_path, tiny_model_dir, math_jsonl, "algo.minibatches=2")
    trainer.instruments = [Spy()]
    metrics = trainer.step(0)
    one_update = ["before_optimizer_step", "after_optimizer_step"]
    assert calls == ["before_update", *one_update, *one_update, "after_update"]
    assert metrics["spy/before"] == 1.0 and metrics["spy/after"] == 2.0
    assert "train/loss" in metrics and "train/grad_norm" in metrics
    measured = ("quadrant/", "cancel/", "train/update_norm", "train/answer_diversity", "probe/")
    assert [k for k in metrics if k.startswith(measured)] == []


def test_another_engines_mismatch_is_logged_and_corrected(tmp_path, tiny_model_dir, math_jsonl):
    """Trainer.correct_mismatch (grpo/mismatch.py): an engine whose own log-probs sit 0.1 below the trainer's logs
    rollout_corr/* and, with rollout.tis=token, weights every token by exp(0.1) (under the cap of 2)."""
    from dataclasses import replace

    from grpo.engine import NativeEngine

    class Shifted(NativeEngine):
        name = "shifted"

        def generate(self, model, prompts, **kwargs):
            roll = super().generate(model, prompts, **kwargs)
            return replace(roll, rollout_logprobs=roll.logprobs - 0.1)

    for tis, weight in (("off", 1.0), ("token", math.exp(0.1))):
        trainer = make_trainer(tmp_path / tis, tiny_model_dir, math_jsonl, f"rollout.tis={tis}")
        trainer.policy.engine = Shifted()
        metrics = trainer.step(0)
        assert any(k.startswith("rollout_corr/") for k in metrics), sorted(metrics)
        means = [metrics[f"quadrant/{q}/weight_mean"] for q in ("pos_high", "pos_low", "neg_high", "neg_low")]
        assert [m for m in means if not math.isnan(m)] != []
        assert all(m == pytest.approx(weight, rel=1e-5) for m in means if not math.isnan(m)), (tis, means)
