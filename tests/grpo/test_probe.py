"""The credit probe's core (grpo/probe.py): the KL, the plan and its budget, the estimates on tasks whose values
are known by hand, the per-quadrant summary, and ``probe.every`` in a training run."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from grpo.batch import sample_groups
from grpo.checks import ConfigError
from grpo.config import AlgoConfig, ModelConfig, QuadrlConfig, SamplingConfig, validate
from grpo.entropy_split import EntropySplit
from grpo.model import load_policy
from grpo.probe import ProbeConfig, bernoulli_kl, credit_summary, plan_probe, probe_credit, share_intervals
from grpo.task import Example
from tests.conftest import compose_config, hand_probe, make_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def test_bernoulli_kl_hand_values():
    # KL(0.5 || 0.25) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75)
    assert bernoulli_kl(0.5, 0.25) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert bernoulli_kl(0.3, 0.3) == 0.0
    assert bernoulli_kl(0.0, 0.2) == pytest.approx(-math.log(0.8))
    assert bernoulli_kl(1.0, 0.2) == pytest.approx(-math.log(0.2))
    assert bernoulli_kl(0.0, 0.0) == 0.0 and bernoulli_kl(1.0, 1.0) == 0.0
    assert bernoulli_kl(0.5, 0.0) == math.inf


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("k", 1, "probe.k must be >= 2"),
        ("group_size", 1, "probe.group_size must be >= 2"),
        ("skip_tol", 1.0, "probe.skip_tol must be in"),
        ("candidate_floor", 0.0, "probe.candidate_floor must be in"),
        ("info_positions", "some", "probe.info_positions must be one of"),
        ("split", "dev", "probe.split must be one of"),
        ("info_k", 1, "probe.info_k must be >= 2"),
        ("max_continuations", 0, "probe.max_continuations must be >= 1"),
        ("every", -1, "probe.every must be >= 0"),
    ],
)
def test_config_values_out_of_range_are_refused_by_name(field, value, message):
    cfg = QuadrlConfig()
    setattr(cfg.probe, field, value)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_config_typo_is_refused_by_hydra():
    with pytest.raises(Exception, match="kk"):
        compose_config("probe.kk=3")


class FirstChar:
    """A task whose reward is decided by the first character alone: 1 iff the completion starts with ``char``.
    So V(s_t) for t >= 1 is the reward itself, and V(s_0) = pi(char | prompt)."""

    name = "first_char"

    def __init__(self, char: str = "7", max_new_tokens: int = 4):
        self.char, self.max_new_tokens = char, max_new_tokens
        self._examples = [Example(prompt=f"{i}+{i}=", answer="") for i in range(4)]

    def train(self) -> Sequence[Example]:
        return self._examples

    def test(self) -> Sequence[Example]:
        return self._examples

    def reward(self, example: Example, completion: str) -> float:
        return float(completion.startswith(self.char))

    def extract_answer(self, completion: str) -> str | None:
        return completion or None


class CoinFlip(FirstChar):
    """A reward that is a fixed pseudo-random function of the text: successes near 1/2 even for an untrained
    model, so that V^ varies from draw to draw."""

    def reward(self, example: Example, completion: str) -> float:
        return float(hashlib.blake2b(f"{example.prompt}|{completion}".encode()).digest()[0] % 2)


@pytest.fixture(scope="module")
def tiny_policy(tiny_model_dir: Path):
    return load_policy(ModelConfig(device="cpu"), tiny_model_dir, need_reference=False, seed=0)


def batch_of(policy, task, n_prompts: int = 2, group: int = 2, seed: int = 0):
    sampling = SamplingConfig(max_new_tokens=task.max_new_tokens)
    generator = torch.Generator().manual_seed(seed)
    return sample_groups(policy, task, list(task.test()[:n_prompts]), group, sampling, generator), sampling


def test_plan_counts_states_and_continuations_by_hand(tiny_policy):
    task = FirstChar(max_new_tokens=4)
    batch, _ = batch_of(tiny_policy, task, n_prompts=2, group=2)
    r = batch.rollout
    lengths = r.response_mask.sum(-1).tolist()
    every = plan_probe(
        tiny_policy,
        batch,
        ProbeConfig(k=3, skip_tol=0.0, info_positions="none"),
        temperature=1.0,
        max_new_tokens=4,
    )
    assert every.states.sum(-1).tolist() == lengths  # s_0 .. s_{n-1}; s_n is terminal
    assert every.continuations == 3 * sum(lengths)
    assert every.max_tokens == 3 * sum(4 - t for n in lengths for t in range(n))

    # skip rule: estimate only s_0 and the states on either side of the uncertain tokens
    doubt = 1 - r.logprobs.double().exp()  # 1 - pi(o_t|s_t)
    values = doubt[r.response_mask].sort().values
    middle = len(values) // 2
    tol = float(values[middle - 1] + values[middle]) / 2  # between two tokens: about half are "certain"
    plan = plan_probe(
        tiny_policy,
        batch,
        ProbeConfig(k=3, skip_tol=tol, info_positions="none"),
        temperature=1.0,
        max_new_tokens=4,
    )
    for i, n in enumerate(lengths):
        uncertain = {t for t in range(n) if float(doubt[i, t]) >= tol}
        expected = ({0} | uncertain | {u + 1 for u in uncertain}) - {n}
        assert set(plan.states[i].nonzero().squeeze(-1).tolist()) == expected


def test_plan_keeps_the_groups_that_fit_the_budget_and_refuses_when_none_does(tiny_policy):
    task = FirstChar(max_new_tokens=4)
    batch, _ = batch_of(tiny_policy, task, n_prompts=2, group=2)
    lengths = batch.rollout.response_mask.sum(-1).tolist()
    first_group = 3 * (lengths[0] + lengths[1])
    cfg = ProbeConfig(k=3, skip_tol=0.0, info_positions="none", max_continuations=first_group)
    plan = plan_probe(tiny_policy, batch, cfg, temperature=1.0, max_new_tokens=4)
    assert (plan.groups_kept, plan.groups_sampled, plan.continuations) == (1, 2, first_group)
    assert len(plan.batch.rewards) == 2 and "1 prompt group(s) dropped" in plan.describe()
    cfg.max_continuations = first_group - 1
    with pytest.raises(ConfigError, match="probe.max_continuations"):
        plan_probe(tiny_policy, batch, cfg, temperature=1.0, max_new_tokens=4)


def test_plan_picks_top_entropy_positions_and_candidates_above_the_floor(tiny_policy):
    task = FirstChar(max_new_tokens=4)
    batch, _ = batch_of(tiny_policy, task)
    r = batch.rollout
    cfg = ProbeConfig(
        k=2, skip_tol=0.0, info_positions="top_entropy", info_per_response=1, candidate_floor=0.02
    )
    plan = plan_probe(tiny_policy, batch, cfg, temperature=1.0, max_new_tokens=4)
    full = torch.cat([r.prompt_ids, r.response_ids], 1)
    mask = torch.cat([r.prompt_mask, r.response_mask], 1)
    with torch.no_grad():
        logits = tiny_policy.model(
            input_ids=full, attention_mask=mask.long(), position_ids=(mask.long().cumsum(-1) - 1).clamp_min(0)
        ).logits
    assert [row for row, _, _ in plan.info] == list(range(len(batch.rewards)))
    for row, t, cands in plan.info:
        n = int(r.response_mask[row].sum())
        assert t == int(r.entropy[row, :n].argmax())
        p = torch.softmax(logits[row, r.prompt_ids.shape[1] - 1 + t].double(), -1)
        assert {a for a, _ in cands} == set((p >= 0.02).nonzero().squeeze(-1).tolist())
        for a, pa in cands:
            assert pa == pytest.approx(float(p[a]), abs=1e-5)


def test_values_and_information_on_a_task_decided_by_the_first_token(tiny_policy):
    task = FirstChar(char="7", max_new_tokens=4)
    batch, sampling = batch_of(tiny_policy, task, n_prompts=2, group=2)
    cfg = ProbeConfig(k=4, skip_tol=0.0, info_positions="none")
    probe = probe_credit(
        tiny_policy, task, batch, cfg, sampling, AlgoConfig(), torch.Generator().manual_seed(1)
    )
    mask = probe.facts.response_mask
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        reward = float(batch.rewards[i])
        # after the first token the outcome is decided: every continuation agrees, exactly
        assert probe.value[i, 1 : n + 1].tolist() == [reward] * n
        assert probe.value_se[i, 1 : n + 1].tolist() == [0.0] * n
        assert probe.delta[i, 1:n].tolist() == [0.0] * (n - 1)
        assert float(probe.delta[i, 0]) == pytest.approx(reward - float(probe.value[i, 0]))
        assert bool(probe.value[i, n + 1 :].isnan().all())


def test_information_equals_the_binary_entropy_when_the_first_token_decides(tiny_policy):
    """One-token responses: every candidate ends the response, so V(s_0, a) = [a == "7"] exactly and, with every
    token a candidate, I_0 = sum_a pi(a) KL(V_a || pi_7) = h(pi_7), the binary entropy of pi("7" | prompt)."""
    task = FirstChar(char="7", max_new_tokens=1)
    batch, sampling = batch_of(tiny_policy, task, n_prompts=2, group=2)
    cfg = ProbeConfig(k=2, skip_tol=0.0, info_positions="all", candidate_floor=1e-12)
    probe = probe_credit(
        tiny_policy, task, batch, cfg, sampling, AlgoConfig(), torch.Generator().manual_seed(0)
    )
    seven = tiny_policy.tokenizer.convert_tokens_to_ids("7")
    r = batch.rollout
    with torch.no_grad():
        logits = tiny_policy.model(input_ids=r.prompt_ids, attention_mask=r.prompt_mask.long()).logits[:, -1]
    for i in range(len(batch.rewards)):
        p7 = float(torch.softmax(logits[i].double(), -1)[seven])
        assert float(probe.info[i, 0]) == pytest.approx(
            -p7 * math.log(p7) - (1 - p7) * math.log(1 - p7), rel=1e-4
        )
        assert float(probe.info_covered[i, 0]) == pytest.approx(1.0, abs=1e-5)
        assert float(probe.info[i, 0]) <= float(r.entropy[i, 0])
    assert probe.continuations == 2 * len(batch.rewards)  # V(s_0) only: the candidates are terminal


def test_probe_is_reproducible_and_respects_its_invariants(tiny_policy):
    task = CoinFlip(max_new_tokens=4)
    batch, sampling = batch_of(tiny_policy, task)
    cfg = ProbeConfig(k=3, skip_tol=0.9, info_positions="all", candidate_floor=0.02)

    def run(seed):
        return probe_credit(
            tiny_policy, task, batch, cfg, sampling, AlgoConfig(), torch.Generator().manual_seed(seed)
        )

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a.value.nan_to_num(-1), b.value.nan_to_num(-1)) and torch.equal(
        a.info.nan_to_num(-1), b.info.nan_to_num(-1)
    )
    assert not torch.equal(a.value.nan_to_num(-1), c.value.nan_to_num(-1))
    mask = a.facts.response_mask
    assert bool((a.delta[a.certain] == 0).all()) and bool((a.delta_se[a.certain] == 0).all())
    assert bool((a.delta[~mask] == 0).all())
    probed = ~a.info.isnan()
    assert bool(probed.any())
    assert bool((a.info[probed] >= 0).all()) and bool(
        (a.info[probed] <= a.facts.entropy.double()[probed] + 1e-6).all()
    )
    assert a.tokens > 0 and a.continuations == cfg.k * int(a.plan.states.sum()) + sum(
        cfg.k
        for i, t, cands in a.plan.info
        for tok, _ in cands
        if tok not in tiny_policy.stop_ids and t + 1 < 4
    )


def test_credit_summary_hand_values():
    probe = hand_probe()
    s = credit_summary(probe, EntropySplit(mode="absolute", threshold=0.5))
    assert s["probe/pos_high/token_share"] == pytest.approx(1 / 6)
    assert s["probe/neg_high/token_share"] == pytest.approx(2 / 6)
    assert s["probe/pos_high/entropy_share"] == pytest.approx(0.9 / 2.65)
    # |delta| = 0.5 + 0.15 + 0.3 + 0.1 = 1.05
    assert s["probe/pos_high/delta_share"] == pytest.approx(0.5 / 1.05)
    assert s["probe/pos_low/delta_share"] == pytest.approx(0.15 / 1.05)
    assert s["probe/neg_high/delta_share"] == pytest.approx(0.4 / 1.05)
    assert s["probe/neg_low/delta_share"] == 0.0
    # delta^2 - se^2: 0.24, 0, 0.0125, 0.08, 0, 0 -> 0.3325
    assert s["probe/pos_high/delta_sq_share"] == pytest.approx(0.24 / 0.3325)
    assert s["probe/pos_low/delta_sq_share"] == pytest.approx(0.0125 / 0.3325)
    assert s["probe/neg_high/delta_sq_share"] == pytest.approx(0.08 / 0.3325)
    assert s["probe/pos_high/info_share"] == pytest.approx(0.6)
    assert s["probe/neg_high/info_share"] == pytest.approx(0.4)
    assert s["probe/pos_high/info_over_entropy"] == pytest.approx(0.3 / 0.9)
    assert s["probe/neg_high/info_over_entropy"] == pytest.approx(0.2 / 0.8)
    assert math.isnan(s["probe/pos_low/info_over_entropy"]) and s["probe/pos_low/probed"] == 0
    assert s["probe/info_over_entropy"] == pytest.approx(0.5 / 1.7)
    assert s["probe/zero_adv/token_share"] == 0.0
    # H ranks [6, 2, 3, 5, 1, 4], |delta| ranks [6, 1.5, 4, 5, 1.5, 3]: rho = 16 / sqrt(17.5 * 17)
    assert s["probe/entropy_delta_spearman"] == pytest.approx(16 / math.sqrt(17.5 * 17))
    assert s["probe/value_start_mean"] == pytest.approx(0.6) and s["probe/certain_share"] == pytest.approx(
        2 / 6
    )


def test_share_intervals_resample_prompt_groups():
    """Two groups (one response each): a bootstrap sample holds group 0 twice (p = 1/4), both, or group 1 twice
    (p = 1/4), so pos_high's |delta| share is 0.5 / 0.65, 0.5 / 1.05 or 0: the 95% interval is [0, 0.5 / 0.65]."""
    probe = hand_probe()
    probe = replace(probe, facts=replace(probe.facts, group_ids=torch.tensor([0, 1])))
    intervals = share_intervals(probe, EntropySplit(mode="absolute", threshold=0.5), n_boot=2000)
    assert intervals["probe/pos_high/delta_share"] == pytest.approx((0.0, 0.5 / 0.65))
    assert intervals["probe/neg_high/delta_share"] == pytest.approx((0.0, 1.0))
    assert intervals["probe/zero_adv/delta_share"] == (0.0, 0.0)


class Recorder:
    run_id = None

    def __init__(self):
        self.metrics: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics, step):
        self.metrics.setdefault(step, {}).update(metrics)

    def log_table(self, rows, artifact_file):
        pass

    def log_text(self, text, artifact_file):
        pass

    def set_tags(self, tags):
        pass


def test_probe_every_logs_credit_and_leaves_training_untouched(tmp_path, sft_model_dir, math_jsonl):
    common = ("train.steps=2", "eval.every=0", "eval.n_samples=0", "eval.n_prompts=4", "train.progress=false")
    probe = (
        "probe.every=1",
        "probe.n_prompts=2",
        "probe.group_size=2",
        "probe.k=2",
        "probe.info_per_response=1",
    )
    logs = []
    for extra in ((), probe):
        trainer = make_trainer(tmp_path / str(len(logs)), sft_model_dir, math_jsonl, *common, *extra)
        trainer.tracker = Recorder()
        trainer.run()
        logs.append(trainer.tracker.metrics)
    plain, probed = logs
    assert sorted(k for k in probed if any(m.startswith("probe/") for m in probed[k])) == [0, 1, 2]
    assert not any(m.startswith("probe/") for step in plain.values() for m in step)
    assert probed[1]["probe/responses"] == 4 and probed[1]["probe/continuations"] > 0
    for step in (0, 1):  # the probe draws from its own generator: training is bit for bit the same
        for key, value in plain[step].items():
            if not key.startswith("perf/"):
                assert probed[step][key] == value or (math.isnan(value) and math.isnan(probed[step][key])), (
                    key
                )
