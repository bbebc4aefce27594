"""HAPO properties over random inputs (hypothesis): sign kept, |A'| within |A| (1 -+ alpha/phi), A = 0 kept."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import interventions  # noqa: F401  (registers every method)
from grpo.credit import TokenCredit, TokenFacts, build_intervention


@st.composite
def batches(draw):
    b = draw(st.integers(1, 5))
    t = draw(st.integers(1, 6))
    adv = draw(
        st.lists(
            st.one_of(st.just(0.0), st.floats(1e-3, 10.0), st.floats(-10.0, -1e-3)), min_size=b, max_size=b
        )
    )
    ent = draw(st.lists(st.floats(0.0, 8.0), min_size=b * t, max_size=b * t))
    lengths = draw(st.lists(st.integers(0, t), min_size=b, max_size=b))
    groups = draw(st.lists(st.integers(0, 2), min_size=b, max_size=b))
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    entropy = torch.tensor(ent, dtype=torch.float32).reshape(b, t) * mask
    advantages = torch.tensor(adv, dtype=torch.float32)[:, None] * mask
    # group ids must be 0..n-1
    remap = {g: i for i, g in enumerate(sorted(set(groups)))}
    zeros = torch.zeros(b, t)
    return TokenFacts(
        advantages=advantages,
        entropy=entropy,
        behaviour_logprobs=zeros,
        old_logprobs=zeros,
        response_mask=mask,
        group_ids=torch.tensor([remap[g] for g in groups]),
        rewards=torch.zeros(b),
        step=0,
    )


@st.composite
def hapo_configs(draw):
    phi = draw(st.floats(0.05, 5.0))
    alpha = draw(st.floats(0.0, 0.999)) * phi
    scope = draw(st.sampled_from(["batch", "group", "sequence"]))
    return {"name": "hapo", "alpha": alpha, "phi": phi, "scope": scope}


@settings(max_examples=200, deadline=None)
@given(facts=batches(), config=hapo_configs())
def test_hapo_keeps_sign_and_bounds_magnitude(facts, config):
    out = build_intervention(config).credit(facts, TokenCredit.grpo_default(facts), torch.Generator())
    a = facts.advantages.double()
    new = out.advantages.double()
    assert torch.equal(torch.sign(new), torch.sign(a))  # zero stays zero, signs never flip
    r = config["alpha"] / config["phi"]
    tol = 1e-6 * a.abs() + 1e-12  # float32 storage of A'
    assert bool((new.abs() >= a.abs() * (1 - r) - tol).all())
    assert bool((new.abs() <= a.abs() * (1 + r) + tol).all())
    assert torch.equal(out.weights, facts.response_mask.float())
    # the formula itself, computed here independently (numpy, per pool): an identity HAPO fails this
    want = hand_hapo(facts, config)
    assert np.allclose(new.numpy(), want, rtol=1e-5, atol=1e-9), (new.numpy(), want)


def hand_hapo(facts: TokenFacts, config: dict) -> np.ndarray:
    """A' = A + alpha sign(A) clip(z, -|A|/phi, |A|/phi), z the entropy standardised (ddof 0) over the scope's
    response tokens (0 where the pool's std < 1e-8), written from docs/background.md, not from interventions/."""
    mask = facts.response_mask.numpy().astype(bool)
    ent = facts.entropy.numpy().astype(np.float64)
    adv = facts.advantages.numpy().astype(np.float64)
    rows = np.arange(mask.shape[0])
    pool = {"batch": np.zeros_like(rows), "group": facts.group_ids.numpy(), "sequence": rows}[config["scope"]]
    z = np.zeros_like(ent)
    for p in np.unique(pool):
        sel = mask & (pool == p)[:, None]
        if sel.any() and ent[sel].std() >= 1e-8:
            z[sel] = (ent[sel] - ent[sel].mean()) / ent[sel].std()
    bound = np.abs(adv) / config["phi"]
    new = adv + config["alpha"] * np.sign(adv) * np.clip(z, -bound, bound)
    return np.where(mask, new, adv)


def test_hapo_moves_credit_toward_high_entropy_tokens():
    """Two tokens, A = 1 and -1 each, entropies 0 and 2 (z = -1, +1): |A'| = 1 -+ alpha/phi = 0.9, 1.1."""
    mask = torch.ones(2, 2, dtype=torch.bool)
    zeros = torch.zeros(2, 2)
    facts = TokenFacts(
        advantages=torch.tensor([[1.0, 1.0], [-1.0, -1.0]]),
        entropy=torch.tensor([[0.0, 2.0], [0.0, 2.0]]),
        behaviour_logprobs=zeros,
        old_logprobs=zeros,
        response_mask=mask,
        group_ids=torch.tensor([0, 1]),
        rewards=torch.zeros(2),
        step=0,
    )
    out = build_intervention({"name": "hapo", "scope": "sequence"}).credit(
        facts, TokenCredit.grpo_default(facts), torch.Generator()
    )
    assert torch.allclose(out.advantages, torch.tensor([[0.9, 1.1], [-0.9, -1.1]]))


@settings(max_examples=100, deadline=None)
@given(facts=batches())
def test_hapo_defaults_stay_within_ten_percent(facts):
    out = build_intervention({"name": "hapo"}).credit(
        facts, TokenCredit.grpo_default(facts), torch.Generator()
    )
    ratio = out.advantages.double()[facts.advantages != 0] / facts.advantages.double()[facts.advantages != 0]
    assert bool((ratio >= 0.9 - 1e-6).all()) and bool((ratio <= 1.1 + 1e-6).all())
