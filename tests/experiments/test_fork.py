"""The fork task (known credit): its verifier and splits, its exact values against brute force, and the credit
probe's Monte Carlo estimates against those exact values -- a statistical test that a planted bug fails."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import pytest
import torch

import grpo.probe
from experiments.tasks import make_task
from experiments.tasks.fork import Agreement, agreement, exact_values, matches
from grpo.batch import sample_groups
from grpo.config import AlgoConfig, ModelConfig, SamplingConfig
from grpo.model import load_policy
from grpo.probe import ProbeConfig, probe_credit
from grpo.rollout import response_logprobs
from tests.conftest import FORK_PARAMS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def fork():
    return make_task("fork")


def test_format_reward_and_sft_targets(fork):
    ex = fork.test()[0]
    pattern = ex.meta["pattern"]
    assert ex.prompt == pattern + "=" and len(pattern) == 10 and sum(c != "." for c in pattern) == 3
    assert fork.max_new_tokens == 11
    assert fork.reward(ex, ex.target) == 1.0
    decisive = [i for i, c in enumerate(pattern) if c != "."]
    wrong = list(ex.target)
    wrong[decisive[0]] = "l" if wrong[decisive[0]] == "r" else "r"
    for bad in [
        "".join(wrong),
        ex.target + "l",
        ex.target[:-1],
        ex.target[:-1] + "x",
        " " + ex.target,
        "",
        None,
    ]:
        assert fork.reward(ex, bad) == 0.0
    free = [i for i in range(10) if i not in decisive]
    flipped = list(ex.target)
    for i in free:
        flipped[i] = "l" if flipped[i] == "r" else "r"
    assert fork.reward(ex, "".join(flipped)) == 1.0  # free positions do not matter


def test_sft_targets_copy_decisive_branches_and_are_uniform_elsewhere(fork):
    free_l = free_n = 0
    for i in range(3000):
        ex = fork.train()[i]
        pattern = ex.meta["pattern"]
        assert matches(pattern, ex.target)
        for p, c in zip(pattern, ex.target, strict=True):
            if p == ".":
                free_n += 1
                free_l += c == "l"
    # 21000 fair coin flips: the share of "l" is 0.5 +- 0.0035 (1 sd); 0.02 is ~6 sd
    assert abs(free_l / free_n - 0.5) < 0.02


def test_splits_are_distinct_disjoint_and_refuse_impossible_sizes(fork):
    test_patterns = {ex.meta["pattern"] for ex in fork.test()}
    assert len(test_patterns) == 100
    assert not test_patterns & {fork.train()[i].meta["pattern"] for i in range(2000)}
    with pytest.raises(ValueError, match="distinct held-out problems"):
        make_task("fork", length=3, decisive=1, n_test=50)
    with pytest.raises(ValueError, match="1 <= decisive <= length"):
        make_task("fork", length=4, decisive=5)


@pytest.fixture(scope="module")
def small(fork_model_dir: Path):
    task = make_task("fork", **FORK_PARAMS)
    policy = load_policy(ModelConfig(device="cpu"), fork_model_dir, need_reference=False, seed=0)
    return task, policy


def test_exact_values_match_brute_force_sequence_probabilities(small):
    """V from the value tree against the sum, over every rewarded response, of its probability computed in one
    forward pass of the whole sequence (an independent code path: no tree, no recursion)."""
    task, policy = small
    vocab = policy.tokenizer.get_vocab()
    for ex in task.test()[:2]:
        pattern = ex.meta["pattern"]
        rewarded = ["".join(s) for s in product("lr", repeat=len(pattern)) if matches(pattern, "".join(s))]
        prompt = policy.encode_prompt(ex.prompt)
        responses = [[vocab[c] for c in s] + [policy.eos_id] for s in rewarded]
        n = len(responses)
        logp, _ = response_logprobs(
            policy.model,
            torch.tensor([prompt] * n),
            torch.ones(n, len(prompt), dtype=torch.bool),
            torch.tensor(responses),
            torch.ones(n, len(responses[0]), dtype=torch.bool),
        )
        with torch.no_grad():
            brute = logp.double().sum(-1).exp()
        exact = exact_values(
            policy, task, [ex], [responses[0]], temperature=1.0, max_new_tokens=task.max_new_tokens
        )[0]
        assert exact.value[0] == pytest.approx(float(brute.sum()), rel=1e-4)
        # after the first letter of responses[0], only the responses that share it count
        first = rewarded[0][0]
        assert exact.value[1] == pytest.approx(
            float(
                sum(p for p, s in zip(brute, rewarded, strict=True) if s[0] == first)
                / logp[0, 0].detach().exp()
            ),
            rel=1e-4,
        )
        assert exact.value[-1] == 1.0 and exact.delta[-1] == pytest.approx(1.0 - exact.value[-2])
        assert 0.0 <= max(exact.leak) < 0.05


def test_exact_values_off_the_tree_are_zero(small):
    task, policy = small
    ex = task.test()[0]
    vocab = policy.tokenizer.get_vocab()
    wrong = "".join(
        "r" if c == "l" else "l" if c == "r" else "l" for c in ex.meta["pattern"]
    )  # every branch wrong
    ids = [vocab[c] for c in wrong] + [policy.eos_id]
    exact = exact_values(policy, task, [ex], [ids], temperature=1.0, max_new_tokens=task.max_new_tokens)[0]
    first_decisive = next(i for i, c in enumerate(ex.meta["pattern"]) if c != ".")
    assert all(v == 0.0 for v in exact.value[first_decisive + 1 :])
    assert exact.value[first_decisive] > 0.0


# ------------------------------------------------------------------------------ probe vs exact: the test


def probe_fit(task, policy, seed: int, n_prompts: int, k: int = 16) -> Agreement:
    sampling = SamplingConfig(max_new_tokens=task.max_new_tokens)
    generator = torch.Generator().manual_seed(seed)
    examples = list(task.test()[:n_prompts])
    batch = sample_groups(policy, task, examples, 4, sampling, generator)
    cfg = ProbeConfig(k=k, skip_tol=0.0, info_positions="none", max_continuations=10**6)
    probe = probe_credit(policy, task, batch, cfg, sampling, AlgoConfig(), generator)
    r = batch.rollout
    responses = [r.response_ids[i][r.response_mask[i]].tolist() for i in range(len(batch.rewards))]
    exact = exact_values(
        policy, task, batch.examples, responses, temperature=1.0, max_new_tokens=task.max_new_tokens
    )
    return agreement(probe, exact, k)


def off_by_one(response, t):
    """The planted bug: V at s_t is estimated from s_{t-1}'s prefix."""
    return tuple(response[: max(t - 1, 0)])


def rejects(fit: Agreement, z_critical: float) -> bool:
    """The test of one draw: |Z| beyond the critical value, or any off-tree state estimated above 0. The second
    has probability 0 under H0 (no continuation of an off-tree prefix can be rewarded), so the level is Z's."""
    return abs(fit.z) >= z_critical or fit.nonzero_off_tree > 0


def test_probe_estimates_match_exact_values_and_a_planted_bug_fails(small, monkeypatch):
    """One draw at two-sided level 0.001 (|Z| < 3.29 under H0)."""
    task, policy = small
    fit = probe_fit(task, policy, seed=0, n_prompts=8)
    assert fit.states >= 40
    assert not rejects(fit, 3.29), fit
    monkeypatch.setattr(grpo.probe, "state_prefix", off_by_one)
    buggy = probe_fit(task, policy, seed=0, n_prompts=8)
    assert rejects(buggy, 3.29), buggy


@pytest.mark.slow
def test_probe_over_repeated_draws_on_the_default_fork(monkeypatch, tmp_path):
    """10 independent draws (responses and continuations, 8 prompts x 4) on the shipped fork base model, each
    tested at two-sided level 0.01 (|Z| < 2.576, no off-tree estimate above 0). Under H0 the number of rejections
    is Binomial(10, 0.01): P(>= 2) = 0.004, so at most 1 is allowed. With the off-by-one planted every draw must
    reject."""
    from experiments.base_model import SFTRecipe, resolve_base_model

    task = make_task("fork")
    base = resolve_base_model("fork", {}, SFTRecipe(seed=0), tracking_uri=None, max_seconds=600)
    assert base.tag.startswith("shipped:")
    policy = load_policy(ModelConfig(device="cpu"), base.path, need_reference=False, seed=0)
    fits = [probe_fit(task, policy, seed=s, n_prompts=8) for s in range(10)]
    assert sum(rejects(f, 2.576) for f in fits) <= 1, fits
    monkeypatch.setattr(grpo.probe, "state_prefix", off_by_one)
    buggy = [probe_fit(task, policy, seed=s, n_prompts=8) for s in range(10)]
    assert all(rejects(f, 2.576) for f in buggy), buggy
