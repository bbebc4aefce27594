"""Facts on demand (grpo/facts.py): hand-computed values, exact equalities, passes run only when asked and shared,
and requirements refused before any compute with a message naming the method."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import interventions  # noqa: F401  (registers every method)
from grpo.checks import ConfigError
from grpo.config import ModelConfig
from grpo.credit import build_intervention
from grpo.facts import (
    FactSource,
    adapter_residual,
    attention_entropy,
    check_config,
    check_model,
    eager_support,
    privileged_prompt,
)
from grpo.model import load_policy, load_teacher
from grpo.rollout import Rollout, response_logprobs
from grpo.task import Example
from tests.conftest import compose_config, make_trainer


def test_attention_entropy_of_a_hand_built_pattern():
    # one layer, two heads, 2 prompt + 2 response positions: the rows of queries 1 and 2 predict the response
    head0 = torch.tensor(
        [[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0], [0.25, 0.25, 0.25, 0.25]]
    )
    head1 = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0.25, 0.25, 0.5, 0], [0.1, 0.2, 0.3, 0.4]])
    attentions = [torch.stack([head0, head1])[None]]  # [B=1, H=2, S=4, S=4]
    got = attention_entropy(attentions, n_prompt=2)
    want = torch.tensor([[[[math.log(2), 0.0]], [[math.log(3), 1.5 * math.log(2)]]]])  # [B, T, L, H]
    assert got.shape == (1, 2, 1, 2)
    assert torch.allclose(got, want, atol=1e-6)


def test_adapter_residual_is_the_norm_of_the_difference_at_each_layer():
    on = [torch.zeros(1, 3, 2), torch.tensor([[[9.0, 9], [3, 4], [1, 0]]])]
    off = [torch.zeros(1, 3, 2), torch.tensor([[[0.0, 0], [0, 0], [0, 1]]])]
    got = adapter_residual(on, off, n_prompt=1)  # response states: positions 0 and 1 (predicting y_0, y_1)
    assert torch.equal(got, torch.tensor([[[0.0, math.sqrt(162)], [0.0, 5.0]]]))


def _lora_policy(model_dir, seed=0):
    cfg = ModelConfig(source="local", path=str(model_dir), device="cpu")
    cfg.lora.enabled, cfg.lora.r = True, 4
    cfg.lora.target_modules = ["q_proj", "v_proj", "o_proj", "gate_proj"]
    policy = load_policy(cfg, model_dir, need_reference=False, seed=seed)
    with torch.no_grad():  # move the adapter away from its zero start
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return policy


def _rollout() -> Rollout:
    prompt_ids = torch.tensor([[1, 5, 6, 7], [0, 1, 8, 9]])  # the second row is left-padded
    response_ids = torch.tensor([[10, 11, 12], [13, 2, 0]])
    response_mask = torch.tensor([[True, True, True], [True, True, False]])
    zeros = torch.zeros(response_ids.shape)
    return Rollout(prompt_ids, prompt_ids != 0, response_ids, response_mask, zeros, zeros)


def test_arca_adapter_off_pass_equals_the_base_model_exactly(tiny_model_dir):
    policy = _lora_policy(tiny_model_dir)
    roll = _rollout()
    source = FactSource(policy, roll, [], temperature=1.0, chunk_size=64, keys=("adapter_residual",))
    off = source.reference_pass().outputs["hidden_states"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.cat([roll.prompt_ids, roll.response_ids], 1)
    mask = torch.cat([roll.prompt_mask, roll.response_mask], 1)
    with torch.no_grad():
        want = base.get_decoder()(
            input_ids=ids,
            attention_mask=mask.long(),
            position_ids=(mask.long().cumsum(-1) - 1).clamp_min(0),
            output_hidden_states=True,
        ).hidden_states
    assert len(off) == len(want) == base.config.num_hidden_layers + 1
    assert all(torch.equal(a, b) for a, b in zip(off, want, strict=True))

    salience = source.compute()["adapter_residual"]
    assert salience.shape == (2, 3, len(want))
    assert torch.equal(salience[..., 0], torch.zeros(2, 3))  # LoRA leaves the embeddings alone
    real = roll.response_mask
    assert bool((salience[..., -1][real] > 1e-3).all())  # the adapter moved every later state
    assert bool((salience[~real] == 0).all())


def test_attention_entropy_fact_respects_padding_and_restores_the_attention_kernel(tiny_model_dir):
    policy = load_policy(
        ModelConfig(source="local", path=str(tiny_model_dir), device="cpu"),
        tiny_model_dir,
        need_reference=False,
        seed=0,
    )
    before = policy.model.config._attn_implementation
    roll = _rollout()
    source = FactSource(policy, roll, [], temperature=1.0, chunk_size=64, keys=("attention_entropy",))
    ent = source.compute()["attention_entropy"]
    layers, heads = policy.model.config.num_hidden_layers, policy.model.config.num_attention_heads
    assert ent.shape == (2, 3, layers, heads)
    assert policy.model.config._attn_implementation == before  # sampling keeps its fast kernel
    # the state predicting response token t sees (real prompt tokens + t) keys: entropy <= log of that
    real_prompt = roll.prompt_mask.sum(-1)
    for b in range(2):
        for t in range(3):
            if roll.response_mask[b, t]:
                bound = math.log(int(real_prompt[b]) + t)
                assert float(ent[b, t].max()) <= bound + 1e-5
                assert float(ent[b, t].min()) >= 0.0
            else:
                assert bool((ent[b, t] == 0).all())
    # first response token of the padded row: 3 real keys (a pad key counted would allow log 4), and an
    # untrained model attends almost uniformly
    assert float(ent[1, 0].max()) <= math.log(3) + 1e-5
    assert float(ent[1, 0].min()) > 0.9 * math.log(3)


def _forward_counter(policy):
    """Counts backbone forwards of the policy and of its reference copy (full fine-tuning with beta > 0)."""
    count = [0]
    models = [m for m in (policy.model, policy.reference) if m is not None]
    handles = [
        m.get_decoder().register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1)) for m in models
    ]
    return count, handles


@pytest.mark.parametrize(
    "overrides,lora,forwards",
    [
        ([], False, 0),  # plain GRPO: no extra pass at all
        (["algo.beta=0.1"], False, 1),  # the KL reference pass only
        (["intervention=arca"], True, 2),  # adapter on + adapter off
        (["intervention=arca", "algo.beta=0.1"], True, 2),  # the adapter-off pass is the reference pass
        (["intervention=attention_entropy"], False, 1),
        (["intervention=compose", "intervention.steps=[{name: arca}, {name: attention_entropy}]"], True, 2),
        (["intervention=arca", "intervention.start_step=5"], True, 0),  # not active yet: not computed
    ],
)
def test_facts_are_computed_only_when_asked_and_passes_are_shared(
    tmp_path, tiny_model_dir, math_jsonl, overrides, lora, forwards
):
    model = ["model=local_lora", "model.lora.dropout=0"] if lora else []
    trainer = make_trainer(tmp_path, tiny_model_dir, math_jsonl, *model, *overrides)
    batch, _ = trainer.rollout()
    count, handles = _forward_counter(trainer.policy)
    facts = trainer.facts(batch, step=0)
    for handle in handles:
        handle.remove()
    assert count[0] == forwards
    wanted = {"arca": {"adapter_residual"}, "attention_entropy": {"attention_entropy"}}
    expected = set()
    if "intervention.start_step=5" not in overrides:
        for name, keys in wanted.items():
            if any(name in o for o in overrides):
                expected |= keys
    assert set(facts.extra) == expected


def test_shared_reference_pass_gives_the_same_kl_reference(tmp_path, tiny_model_dir, math_jsonl):
    model = ["model=local_lora", "model.lora.dropout=0", "algo.beta=0.1"]
    with_arca = make_trainer(tmp_path / "a", tiny_model_dir, math_jsonl, *model, "intervention=arca")
    plain = make_trainer(tmp_path / "b", tiny_model_dir, math_jsonl, *model)
    batch, _ = with_arca.rollout()
    assert torch.equal(with_arca.facts(batch, 0).ref_logprobs, plain.facts(batch, 0).ref_logprobs)


def test_opd_advantage_is_exactly_zero_when_the_teacher_is_the_student(tmp_path, tiny_model_dir, math_jsonl):
    trainer = make_trainer(
        tmp_path, tiny_model_dir, math_jsonl, "algo=opd", "algo.teacher.source=local",
        f"algo.teacher.path={tiny_model_dir}", teacher=tiny_model_dir,
    )  # fmt: skip
    batch, _ = trainer.rollout()
    facts = trainer.facts(batch, step=0)
    assert bool(facts.response_mask.any())
    assert torch.equal(facts.advantages, torch.zeros_like(facts.advantages))
    assert torch.equal(facts.rewards, batch.rewards)  # the verifier still scored the samples


def test_opd_advantage_is_teacher_minus_student_log_probs(
    tmp_path, tiny_model_dir, sft_model_dir, math_jsonl
):
    trainer = make_trainer(
        tmp_path, tiny_model_dir, math_jsonl, "algo=opd", "algo.teacher.source=local",
        f"algo.teacher.path={sft_model_dir}", teacher=sft_model_dir,
    )  # fmt: skip
    batch, _ = trainer.rollout()
    facts = trainer.facts(batch, step=0)
    r = batch.rollout
    args = (r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    teacher = AutoModelForCausalLM.from_pretrained(sft_model_dir).eval()
    with torch.no_grad():
        want = response_logprobs(teacher, *args)[0] - response_logprobs(trainer.policy.model.eval(), *args)[0]
    trainer.policy.model.train()
    assert torch.allclose(facts.advantages, want, atol=1e-5)
    assert float(facts.advantages.abs().max()) > 0.1  # an untrained student and an SFT teacher disagree


def test_privileged_prompt_fills_the_template():
    ex = Example(prompt="3+4=", answer="7", target="3+4+0=7>7")
    assert privileged_prompt("{solution};{prompt}", ex) == "3+4+0=7>7;3+4="
    assert privileged_prompt("{answer}:{prompt}", Example(prompt="1+1=", answer="2")) == "2:1+1="
    assert privileged_prompt("{solution};{prompt}", Example(prompt="1+1=", answer="2")) == "2;1+1="


# ------------------------------------------------------------------------------------------- refusals


def test_arca_without_lora_is_refused_before_the_model_is_loaded(tmp_path, monkeypatch):
    from experiments import train

    def no_model(*_):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(train, "base_model", no_model)
    raw = compose_config("intervention=arca", "tracking=off", f"run_dir={tmp_path}")
    with pytest.raises(ConfigError) as err:
        train.run(raw)
    message = str(err.value)
    assert "intervention 'arca'" in message
    assert "model.lora.enabled=true" in message


def test_a_compose_step_is_refused_by_its_own_name():
    raw = compose_config("intervention=compose", "intervention.steps=[{name: hapo}, {name: arca}]")
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(raw)
    with pytest.raises(ConfigError, match=r"intervention 'arca' needs the hidden states .*model\.lora"):
        check_config(cfg, build_intervention(OmegaConf.to_container(raw.intervention)))


def test_teacher_facts_need_distillation_mode(monkeypatch):
    from omegaconf import OmegaConf

    from grpo import credit
    from grpo.credit import Intervention, register

    # a registry copy for this test: the method registered here must not reach the tests of every registered method
    monkeypatch.setattr(credit, "_REGISTRY", dict(credit._REGISTRY))

    @register("needs_teacher_test")
    class NeedsTeacher(Intervention):
        needs = ("teacher_logprobs",)

    cfg = OmegaConf.to_object(compose_config())
    with pytest.raises(
        ConfigError, match=r"intervention 'needs_teacher_test' needs the teacher's log-probs.*algo=opd"
    ):
        check_config(cfg, build_intervention({"name": "needs_teacher_test"}))
    NeedsTeacher.needs = ("no_such_fact",)
    with pytest.raises(
        ConfigError, match=r"intervention 'needs_teacher_test'.*no provider computes the fact"
    ):
        check_config(cfg, build_intervention({"name": "needs_teacher_test"}))


def test_trainer_refuses_opd_without_a_teacher(tmp_path, tiny_model_dir, math_jsonl):
    with pytest.raises(ConfigError, match=r"algo\.advantage=teacher .* needs the teacher's log-probs"):
        make_trainer(
            tmp_path, tiny_model_dir, math_jsonl, "algo=opd", "algo.teacher.source=local",
            f"algo.teacher.path={tiny_model_dir}",
        )  # fmt: skip


def test_attention_entropy_is_refused_on_a_model_without_eager_attention(
    tmp_path, tiny_model_dir, math_jsonl
):
    trainer = make_trainer(tmp_path, tiny_model_dir, math_jsonl)
    model = trainer.policy.model
    assert eager_support(model) is None
    model._can_set_attn_implementation = lambda: False
    assert "eager attention" in eager_support(model)
    intervention = build_intervention({"name": "attention_entropy"})
    with pytest.raises(
        ConfigError, match=r"intervention 'attention_entropy' needs the attention probabilities"
    ):
        check_model(trainer.cfg, intervention, trainer.policy, None)


def test_out_of_range_layers_are_refused_when_the_trainer_is_built(tmp_path, tiny_model_dir, math_jsonl):
    trainer = make_trainer(tmp_path, tiny_model_dir, math_jsonl, "model=local_lora")
    for values, needle in [
        ({"name": "arca", "layer": 3}, "layer=3 is out of range"),  # 2 layers: indices -3..2
        ({"name": "attention_entropy", "heads": [0, 2]}, r"heads \[2\] out of range"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            check_model(trainer.cfg, build_intervention(values), trainer.policy, None)
    check_model(trainer.cfg, build_intervention({"name": "arca", "layer": -3}), trainer.policy, None)


def test_teacher_with_another_tokenizer_is_refused(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from experiments.tasks.tokenizer import build_char_tokenizer

    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.save_pretrained(other)
    build_char_tokenizer("0123456789+=").save_pretrained(other)
    policy_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = ModelConfig(source="local", path=str(tiny_model_dir), device="cpu")
    with pytest.raises(ConfigError, match="tokenizer's vocabulary differs"):
        load_teacher(cfg, other, policy_tokenizer)
    teacher = load_teacher(cfg, tiny_model_dir, policy_tokenizer)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize(
    "override,needle",
    [
        ("algo.dynamic_sampling=true", "algo.dynamic_sampling"),
        ("algo.overlong_buffer=2", "algo.overlong_buffer"),
        ("algo.teacher.source=local", "algo.teacher.path is required"),
        ("algo.teacher.min_accuracy=1.0", "algo.teacher.min_accuracy"),
        ("algo.teacher.source=cloud", "algo.teacher.source"),
        ("algo.group_size=0", "algo.group_size must be >= 1"),
    ],
)
def test_distillation_config_is_refused_by_name(override, needle):
    from omegaconf import OmegaConf

    from grpo.config import validate

    cfg = OmegaConf.to_object(compose_config("algo=opd", override))
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        validate(cfg)


def test_distillation_allows_one_sample_per_prompt():
    from omegaconf import OmegaConf

    from grpo.config import validate

    validate(OmegaConf.to_object(compose_config("algo=opd", "algo.group_size=1")))
    with pytest.raises(ConfigError, match="group advantages need 2 samples"):
        validate(OmegaConf.to_object(compose_config("algo.group_size=1")))
