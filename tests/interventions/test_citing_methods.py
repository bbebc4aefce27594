"""The citing methods' formulas against hand-computed values on small tensors: ARCA, attention-entropy
reweighting, IW-OPD, DASD; and their configs refused by name."""

from __future__ import annotations

import math

import pytest
import torch

import interventions  # noqa: F401  (registers every method)
from grpo.credit import ConfigError, TokenCredit, TokenFacts, build_intervention
from interventions.arca import gini_and_effective_ratio
from interventions.iw_opd import position_weights


def make_facts(advantages, mask, *, entropy=None, old=None, extra=None, step=0) -> TokenFacts:
    adv = torch.tensor(advantages, dtype=torch.float32)
    m = torch.tensor(mask, dtype=torch.bool)
    zeros = torch.zeros_like(adv)
    return TokenFacts(
        advantages=adv,
        entropy=zeros if entropy is None else torch.tensor(entropy, dtype=torch.float32),
        behaviour_logprobs=zeros if old is None else torch.tensor(old, dtype=torch.float32),
        old_logprobs=zeros if old is None else torch.tensor(old, dtype=torch.float32),
        response_mask=m,
        group_ids=torch.zeros(adv.shape[0], dtype=torch.long),
        rewards=torch.zeros(adv.shape[0]),
        step=step,
        extra=extra or {},
    )


def apply(config: dict, facts: TokenFacts) -> TokenCredit:
    method = build_intervention(config)
    return method.credit(facts, TokenCredit.grpo_default(facts), torch.Generator())


# ------------------------------------------------------------------------------------------------- ARCA


def arca_facts(step=0):
    # salience at the last layer: row 0 [1, 3, pad], row 1 all zero (adapter still at its zero start)
    last = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    salience = torch.stack([torch.zeros_like(last), last * 10, last], dim=-1)  # [B, T, L+1 = 3]
    return make_facts(
        [[2.0, 2.0, 0.0], [-1.0, -1.0, -1.0]],
        [[1, 1, 0], [1, 1, 1]],
        extra={"adapter_residual": salience},
        step=step,
    )


def test_arca_mean_normalised_salience_scales_the_advantage():
    credit = apply({"name": "arca"}, arca_facts())
    # row 0: mean salience 2 -> s^ = [0.5, 1.5]; row 1 degenerate -> weight 1
    assert torch.allclose(credit.advantages, torch.tensor([[1.0, 3.0, 0.0], [-1.0, -1.0, -1.0]]))
    assert torch.equal(credit.weights, torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))
    assert credit.advantages[0, :2].sum() == pytest.approx(4.0)  # the response's total credit is kept
    info = credit.info
    # Gini of [0.5, 1.5]: (|0.5-1.5| * 2) / (2 * 2 * 2) = 0.25; ETR: 2^2 / (2 * (0.25 + 2.25)) = 0.8
    assert info["arca/gini"] == pytest.approx(0.25)
    assert info["arca/effective_token_ratio"] == pytest.approx(0.8)
    assert info["arca/degenerate_share"] == pytest.approx(0.5)
    assert info["arca/salience_mean"] == pytest.approx(4.0 / 5)
    assert info["arca/weight_max"] == pytest.approx(1.5)


def test_arca_options_strength_layer_normalisation_and_target():
    half = apply({"name": "arca", "strength": 0.5}, arca_facts())
    assert torch.allclose(half.advantages[0, :2], torch.tensor([2 * 0.75, 2 * 1.25]))
    raw = apply({"name": "arca", "normalisation": "none", "layer": 1}, arca_facts())
    assert torch.allclose(raw.advantages[0, :2], torch.tensor([2 * 10.0, 2 * 30.0]))  # g = s at layer 1
    weight = apply({"name": "arca", "target": "weight"}, arca_facts())
    assert torch.allclose(weight.weights[0, :2], torch.tensor([0.5, 1.5]))
    assert torch.equal(weight.advantages, arca_facts().advantages)
    off = apply({"name": "arca", "strength": 0.0}, arca_facts())
    assert torch.equal(off.advantages, arca_facts().advantages)


def test_gini_and_effective_ratio_hand_values_and_brute_force():
    gini, ratio = gini_and_effective_ratio(torch.tensor([[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]), torch.ones(2, 3))
    # [0, 0, 3]: sum |xi - xj| = 4 * 3 = 12, / (2 * 3 * 3) = 2/3; ETR = 9 / (3 * 9) = 1/3. Uniform: 0 and 1.
    assert torch.allclose(gini, torch.tensor([2 / 3, 0.0], dtype=torch.float64))
    assert torch.allclose(ratio, torch.tensor([1 / 3, 1.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 7, generator=g) > 0.3
    mask[:, 0] = True
    gini, ratio = gini_and_effective_ratio(x, mask)
    for row in range(5):
        v = x[row][mask[row]]
        n = len(v)
        want = (v[:, None] - v[None, :]).abs().sum() / (2 * n * v.sum())
        assert float(gini[row]) == pytest.approx(float(want))
        assert float(ratio[row]) == pytest.approx(float(v.sum() ** 2 / (n * (v * v).sum())))


# ------------------------------------------------------------------------------------- attention entropy


def attention_facts(step=0):
    # [B=1, T=4, L=2, H=2]; layer 1 holds the signal, layer 0 is constant 1
    layer1 = torch.tensor([[0.2, 0.4], [2.0, 2.2], [0.6, 0.8], [1.0, 1.2]])  # head means 0.3 2.1 0.7 1.1
    per_head = torch.stack([torch.ones(4, 2), layer1], dim=1)[None]
    return make_facts(
        [[1.0, 1.0, -1.0, -1.0]],
        [[1, 1, 1, 1]],
        entropy=[[0.1, 0.2, 0.3, 0.4]],
        extra={"attention_entropy": per_head},
        step=step,
    )


def test_attention_entropy_splits_at_the_median_and_reweights():
    credit = apply({"name": "attention_entropy", "schedule": "constant"}, attention_facts())
    # mean over layers and heads: [0.65, 1.55, 0.85, 1.05] -> explorers (top half): tokens 1 and 3
    assert torch.allclose(credit.weights, torch.tensor([[1.0, 0.5, 1.0, 0.5]]))
    info = credit.info
    assert info["attention_entropy/threshold"] == pytest.approx(0.85)
    assert info["attention_entropy/explorers/share"] == 0.5
    assert info["attention_entropy/anchors/attention_entropy_mean"] == pytest.approx((0.65 + 0.85) / 2)
    assert info["attention_entropy/explorers/entropy_mean"] == pytest.approx((0.2 + 0.4) / 2)
    assert info["attention_entropy/explorers/adv_mean"] == pytest.approx(0.0)
    assert info["attention_entropy/explorers/weight"] == 0.5


def test_attention_entropy_layer_and_head_selection():
    credit = apply(
        {"name": "attention_entropy", "schedule": "constant", "layers": [1], "heads": [0], "explorer_fraction": 0.25},
        attention_facts(),
    )  # fmt: skip
    # layer 1, head 0: [0.2, 2.0, 0.6, 1.0] -> the top quarter is token 1
    assert torch.allclose(credit.weights, torch.tensor([[1.0, 0.5, 1.0, 1.0]]))


@pytest.mark.parametrize("step,explorer", [(0, 0.5), (20, 1.0), (40, 1.5), (100, 1.5)])
def test_attention_entropy_linear_schedule(step, explorer):
    credit = apply({"name": "attention_entropy"}, attention_facts(step=step))
    assert torch.allclose(credit.weights, torch.tensor([[1.0, explorer, 1.0, explorer]]))


def test_one_sided_presets_freeze_the_other_side():
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    for preset, want in [
        ("attention_anchors_only", [1.0, 0, 1, 0]),
        ("attention_explorers_only", [0, 1.0, 0, 1]),
    ]:
        config = OmegaConf.to_container(compose_config(f"condition={preset}").intervention)
        credit = apply(config, attention_facts(step=30))
        assert torch.allclose(credit.weights, torch.tensor([want]))


# ------------------------------------------------------------------------------------------------ IW-OPD


def test_iw_opd_position_weights_hand_values():
    facts = make_facts([[1.0, -1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]], [[1, 1, 1, 0], [1, 1, 0, 0]])
    credit = apply({"name": "iw_opd"}, facts)
    # d = [1, 1, 2], sum 4: F_{t-1} = [0, 1/4, 2/4] -> g = 1 + 0.5 (1 - F) = [1.5, 1.375, 1.25]
    assert torch.allclose(credit.advantages[0], torch.tensor([1.5, -1.375, 2.5, 0.0]))
    # no discrepancy at all: F = 0 everywhere, g = w_max, and 0 stays 0
    assert torch.equal(credit.advantages[1], torch.zeros(4))
    g = position_weights(facts.advantages, facts.response_mask, 1.5)
    assert torch.allclose(g[1], torch.tensor([1.5, 1.5, 1.0, 1.0], dtype=torch.float64))
    assert credit.info["iw_opd/weight_first_token"] == pytest.approx(1.5)


def test_iw_opd_matches_the_published_formula_on_random_advantages():
    gen = torch.Generator().manual_seed(3)
    adv = torch.randn(4, 9, generator=gen)
    mask = torch.arange(9)[None, :] < torch.tensor([[9], [5], [1], [7]])
    w_max = 2.0
    g = position_weights(adv, mask, w_max)
    for b in range(4):
        d = [abs(float(adv[b, t])) if mask[b, t] else 0.0 for t in range(9)]
        total = sum(d)
        for t in range(9):
            if not mask[b, t]:
                assert float(g[b, t]) == 1.0
                continue
            f_prev = sum(d[:t]) / (total + 1e-8)
            assert float(g[b, t]) == pytest.approx(1 + (w_max - 1) * min(max(1 - f_prev, 0.0), 1.0))


# -------------------------------------------------------------------------------------------------- DASD


def dasd_facts(template="{solution};{prompt}"):
    # token 0: low entropy (pulled toward the teacher), token 1: high entropy (pushed away)
    teacher = torch.tensor([[-0.5, -1.0]])
    return make_facts(
        [[1.0, 1.0]],
        [[1, 1]],
        entropy=[[0.1, 0.9]],
        old=[[-1.0, -0.5]],
        extra={f"privileged_logprobs:{template}": teacher},
    )


SPLIT = {"mode": "absolute", "threshold": 0.5}


def test_dasd_reverse_kl_pulls_low_and_pushes_high_entropy_tokens():
    credit = apply({"name": "dasd", "split": SPLIT}, dasd_facts())
    # delta = log pi_T - log pi_old = [0.5, -0.5]; d = [+1, -1] -> A' = [1 + 0.5, 1 + 0.5]
    assert torch.allclose(credit.advantages, torch.tensor([[1.5, 1.5]]))
    assert credit.info["dasd/pull_share"] == 0.5 and credit.info["dasd/push_share"] == 0.5


def test_dasd_forward_kl_coef_and_clip():
    credit = apply({"name": "dasd", "split": SPLIT, "divergence": "forward_kl", "coef": 2.0}, dasd_facts())
    # delta = pi_T / pi_old - 1 = [e^0.5 - 1, e^-0.5 - 1]
    want = [1 + 2 * (math.exp(0.5) - 1), 1 - 2 * (math.exp(-0.5) - 1)]
    assert torch.allclose(credit.advantages, torch.tensor([want]))
    clipped = apply({"name": "dasd", "split": SPLIT, "clip": 0.3}, dasd_facts())
    assert torch.allclose(clipped.advantages, torch.tensor([[1.3, 1.3]]))


def test_dasd_asks_for_its_own_template():
    method = build_intervention({"name": "dasd", "template": "{answer}:{prompt}"})
    assert method.facts_needed() == ("privileged_logprobs:{answer}:{prompt}",)
    assert method.facts_needed(step=0) == method.facts_needed()
    assert build_intervention({"name": "dasd", "start_step": 3}).facts_needed(step=0) == ()
    credit = apply(
        {"name": "dasd", "template": "{answer}:{prompt}", "split": SPLIT}, dasd_facts("{answer}:{prompt}")
    )
    assert torch.allclose(credit.advantages, torch.tensor([[1.5, 1.5]]))


# ------------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "config,needle",
    [
        ({"name": "arca", "strength": 1.5}, "strength must be in"),
        ({"name": "arca", "normalisation": "softmax"}, "normalisation must be one of"),
        ({"name": "arca", "layer": 1.5}, "layer must be an integer"),
        ({"name": "arca", "target": "kl"}, "target must be one of"),
        ({"name": "attention_entropy", "explorer_fraction": 1.0}, "explorer_fraction must be in"),
        ({"name": "attention_entropy", "layers": []}, "layers must be a non-empty list"),
        ({"name": "attention_entropy", "schedule": "cosine"}, "schedule must be one of"),
        ({"name": "attention_entropy", "schedule_steps": 0}, "schedule_steps must be >= 1"),
        ({"name": "attention_entropy", "explorer_weight": -1}, "explorer_weight must be in"),
        ({"name": "iw_opd", "w_max": 0.5}, "w_max must be in"),
        ({"name": "dasd", "template": "{solution}"}, "must contain {prompt}"),
        ({"name": "dasd", "template": "{prompt}{hint}"}, r"unknown: \['hint'\]"),
        ({"name": "dasd", "template": "{prompt"}, "not a format string"),
        ({"name": "dasd", "divergence": "js"}, "divergence must be one of"),
        ({"name": "dasd", "clip": 0}, "clip must be in"),
    ],
)
def test_bad_config_is_refused_by_name(config, needle):
    with pytest.raises(ConfigError, match=needle):
        build_intervention(config)
