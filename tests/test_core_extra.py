"""GRPO core pieces that test_core_math does not reach: exact zeros for flat groups, the lr schedule, the sampler
against the training-time log-probs, chunking, top-p, stop tokens, multi-epoch / minibatch updates with a frozen
pi_old, the LoRA reference, device / dtype / chat-template resolution, evaluation metrics and safe checkpoints.
Expected values are written out by hand or come from an independent computation (full logits, Categorical)."""

from __future__ import annotations

import hashlib
import math
import pickle
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from experiments.tasks.base import Example
from grpo import checkpoint
from grpo import evaluate as evaluate_module
from grpo.advantages import group_advantages
from grpo.config import EvalConfig, ModelConfig
from grpo.model import Policy, load_policy, resolve_device, resolve_dtype
from grpo.rollout import response_logprobs, sample
from grpo.trainer import Trainer, lr_lambda
from tests.conftest import make_trainer as shared_make_trainer

# ------------------------------------------------------------------------------------------------ advantages


@pytest.mark.parametrize("value", [0.1, 0.2, 0.7, 0.9])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_all_equal_group_gets_exactly_zero(value, scale_by_std):
    # seven rewards of 0.1 have a float32 mean 1 ulp away from 0.1: without care A = +-0.93 for "no signal"
    rewards = torch.tensor([value] * 7 + [1.0, 0.0])
    groups = torch.tensor([0] * 7 + [1, 1])
    adv = group_advantages(rewards, groups, scale_by_std=scale_by_std, eps=0.0)
    assert adv[:7].tolist() == [0.0] * 7
    # the informative group is untouched: +-0.5 / sqrt(0.5) = +-0.707107 (or +-0.5 without std)
    want = 0.5 / math.sqrt(0.5) if scale_by_std else 0.5
    assert adv[7:].tolist() == pytest.approx([want, -want], abs=1e-6)


def test_group_advantages_default_eps_hand_value():
    # rewards 1, 0: mean .5, sample std sqrt(.5) = .7071068 ; A = .5 / (.7071068 + 1e-4) = .7070068
    adv = group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
    assert adv.tolist() == pytest.approx([0.7070068, -0.7070068], abs=1e-6)


# ------------------------------------------------------------------------------------------------ lr schedule


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


# ------------------------------------------------------------------------------------------------ rollout


def tiny_llama(vocab: int = 40, seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 5], [1, 10, 11, 12], [1, 13, 14]]


def full_logits(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Logits predicting each response token, from one unpadded full forward (no cache, no chunking)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        return model(ids).logits[0, len(prompt) - 1 : -1]


def test_sampler_logprobs_and_entropy_match_a_plain_forward_and_top_p_holds():
    model = tiny_llama()
    temperature, top_p = 0.7, 0.8
    roll = sample(
        model,
        PROMPTS * 4,
        max_new_tokens=10,
        eos_id=2,
        pad_id=0,
        temperature=temperature,
        top_p=top_p,
        generator=torch.Generator().manual_seed(0),
    )
    checked = 0
    for row, prompt in enumerate(PROMPTS * 4):
        n = int(roll.response_mask[row].sum())
        tokens = roll.response_ids[row, :n].tolist()
        # the mask is a prefix and ends at EOS, or runs to max_new_tokens
        assert roll.response_mask[row, :n].all() and not roll.response_mask[row, n:].any()
        assert 2 not in tokens[:-1] and (tokens[-1] == 2 or n == 10)
        probs = torch.softmax(full_logits(model, prompt, tokens) / temperature, -1)
        dist = torch.distributions.Categorical(probs=probs)
        want_logp = dist.log_prob(torch.tensor(tokens))
        assert torch.allclose(roll.logprobs[row, :n], want_logp, atol=1e-5)
        assert torch.allclose(roll.entropy[row, :n], dist.entropy(), atol=1e-5)
        assert (roll.logprobs[row, n:] == 0).all() and (roll.entropy[row, n:] == 0).all()
        for t, token in enumerate(tokens):  # top-p: the mass strictly above the drawn token is < top_p
            p = probs[t]
            assert float(p[p > p[token]].sum()) < top_p + 1e-6
            checked += 1
    assert checked > 50


def test_training_logprobs_match_the_sampler_and_do_not_depend_on_chunking():
    model = tiny_llama(seed=1)
    roll = sample(
        model,
        PROMPTS * 2,
        max_new_tokens=9,
        eos_id=2,
        pad_id=0,
        temperature=1.3,
        generator=torch.Generator().manual_seed(1),
    )
    args = (model, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
    results = {}
    for chunk in (1, 7, 10_000):
        model.zero_grad()
        logp, ent = response_logprobs(*args, temperature=1.3, chunk_size=chunk, with_entropy=True)
        logp.sum().backward()
        grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
        results[chunk] = (logp.detach(), ent, grad)
        assert torch.allclose(logp.detach(), roll.logprobs, atol=1e-5)
        assert torch.allclose(ent, roll.entropy, atol=1e-5)
        assert (logp.detach()[~roll.response_mask] == 0).all()
    for chunk in (1, 7):
        assert torch.allclose(results[chunk][2], results[10_000][2], atol=1e-5)


def test_sampling_stops_at_any_of_several_stop_ids():
    model = tiny_llama(seed=2)
    kw = dict(max_new_tokens=12, pad_id=0, temperature=3.0, generator=None)
    free = sample(model, PROMPTS * 4, eos_id=39, **{**kw, "generator": torch.Generator().manual_seed(5)})
    # pick two tokens the unconstrained sampler actually produced mid-response and make them stop tokens
    seen = free.response_ids[free.response_mask].tolist()
    stops = sorted(set(seen), key=seen.count)[-2:]
    roll = sample(model, PROMPTS * 4, eos_id=stops, **{**kw, "generator": torch.Generator().manual_seed(5)})
    ended = 0
    for row in range(len(PROMPTS) * 4):
        tokens = roll.response_ids[row, : int(roll.response_mask[row].sum())].tolist()
        assert not set(tokens[:-1]) & set(stops)
        ended += tokens[-1] in stops
    assert ended >= 4


def test_finished_rows_leave_the_batch_without_changing_any_response(monkeypatch):
    """Rows that finish are dropped from the running batch and KV cache; each response, log-prob and entropy
    equals that of the same prompt generated alone (greedy: no randomness to share)."""
    from transformers import DynamicCache

    model = tiny_llama(seed=3)
    prompts = PROMPTS * 3
    kw = dict(max_new_tokens=12, pad_id=0, greedy=True)
    free = sample(model, prompts, eos_id=39, **kw)
    # half the prompts' second greedy token becomes a stop token: those rows finish early, the others run on
    stops = sorted({int(free.response_ids[row, 1]) for row in range(0, len(prompts), 2)})
    selections: list[int] = []
    original = DynamicCache.batch_select_indices

    def spy(self, indices):
        selections.append(len(indices))
        return original(self, indices)

    monkeypatch.setattr(DynamicCache, "batch_select_indices", spy)
    roll = sample(model, prompts, eos_id=stops, **kw)
    assert selections and selections[-1] < len(prompts), "no row was ever dropped: the test proves nothing"
    lengths = roll.response_mask.sum(-1)
    assert int(lengths.min()) <= 2 and int(lengths.max()) == 12
    for row, prompt in enumerate(prompts):
        alone = sample(model, [prompt], eos_id=stops, **kw)
        n = int(alone.response_mask.sum())
        assert int(lengths[row]) == n
        assert roll.response_ids[row, :n].tolist() == alone.response_ids[0, :n].tolist()
        assert torch.allclose(roll.logprobs[row, :n], alone.logprobs[0, :n], atol=1e-5)
        assert torch.allclose(roll.entropy[row, :n], alone.entropy[0, :n], atol=1e-5)
        assert (roll.response_ids[row, n:] == 0).all() and (roll.logprobs[row, n:] == 0).all()


def test_models_that_rescale_their_logits_use_the_full_forward():
    # Gemma 2 soft-caps its logits after the head: head(hidden) alone is not the policy
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        final_logit_softcapping=0.5,  # tiny cap: the capped distribution is far from the raw one
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(cfg).eval()
    prompt = torch.tensor([[1, 5, 6], [0, 1, 7]])
    prompt_mask = prompt != 0
    resp = torch.randint(3, 40, (2, 5))
    resp_mask = torch.ones(2, 5, dtype=torch.bool)
    logp, _ = response_logprobs(model, prompt, prompt_mask, resp, resp_mask, chunk_size=2)
    for row in range(2):
        kept = prompt[row][prompt_mask[row]].tolist()
        want = torch.log_softmax(full_logits(model, kept, resp[row].tolist()), -1)
        assert torch.allclose(logp[row].detach(), want.gather(-1, resp[row][:, None])[:, 0], atol=1e-5)


# ------------------------------------------------------------------------------------------------ trainer


def fake_reward(example: Example, completion: str) -> float:
    """Deterministic 0/1 reward with variance inside most groups of an untrained model's gibberish."""
    return float(hashlib.blake2b(f"{example.prompt}|{completion}".encode()).digest()[0] % 2)


def make_trainer(tmp_path: Path, model_dir: Path, jsonl: Path, *overrides: str) -> Trainer:
    return shared_make_trainer(
        tmp_path, model_dir, jsonl, "sampling.max_new_tokens=6", *overrides, reward=fake_reward
    )


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


def test_dynamic_sampling_reports_the_unfiltered_reward(tmp_path, tiny_model_dir, math_jsonl):
    trainer = make_trainer(tmp_path, tiny_model_dir, math_jsonl, "algo=dapo")
    batch, stats = trainer.rollout()
    assert 0.0 <= stats["train/reward_mean_sampled"] <= 1.0
    for g in batch.group_ids.unique():
        rewards = batch.rewards[batch.group_ids == g]
        assert rewards.min() < rewards.max()


# ------------------------------------------------------------------------------------------------ model


def test_device_and_dtype_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16


def test_lora_reference_is_the_base_with_the_adapter_disabled(tiny_model_dir):
    cfg = ModelConfig(source="local", path=str(tiny_model_dir), device="cpu")
    cfg.lora.enabled, cfg.lora.r = True, 4
    policy = load_policy(cfg, tiny_model_dir, need_reference=True, seed=0)
    assert policy.reference is None  # no second copy of the weights
    with torch.no_grad():  # move the adapter away from its zero start
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt_ids = torch.tensor([[1, 5, 6, 7], [0, 1, 8, 9]])
    prompt_mask = prompt_ids != 0
    resp = torch.tensor([[10, 11, 12], [13, 14, 2]])
    resp_mask = torch.ones_like(resp, dtype=torch.bool)
    args = (prompt_ids, prompt_mask, resp, resp_mask)
    with torch.no_grad():
        want, _ = response_logprobs(base, *args)
        module, context = policy.reference_context()
        with context:
            ref, _ = response_logprobs(module, *args)
        current, _ = response_logprobs(policy.model, *args)
    assert torch.allclose(ref, want, atol=1e-6)
    assert not torch.allclose(current, want, atol=1e-3)  # outside the context the adapter is back on


def test_full_finetuning_reference_is_a_frozen_copy(tiny_model_dir):
    cfg = ModelConfig(source="local", path=str(tiny_model_dir), device="cpu")
    policy = load_policy(cfg, tiny_model_dir, need_reference=True, seed=0)
    module, _ = policy.reference_context()
    assert module is policy.reference and module is not policy.model
    assert not any(p.requires_grad for p in module.parameters())
    assert load_policy(cfg, tiny_model_dir, need_reference=False, seed=0).reference is None


def test_chat_template_is_used_when_present_unless_never(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    chat_dir = tmp_path / "chat_model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}u:{{ m['content'] }};{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )
    model.save_pretrained(chat_dir)
    tokenizer.save_pretrained(chat_dir)
    auto = load_policy(
        ModelConfig(source="local", path=str(chat_dir)), chat_dir, need_reference=False, seed=0
    )
    assert auto.use_chat_template
    assert auto.tokenizer.decode(auto.encode_prompt("1+2=")) == "<bos>u:1+2=;a:"
    never = load_policy(
        ModelConfig(source="local", path=str(chat_dir), chat_template="never"),
        chat_dir,
        need_reference=False,
        seed=0,
    )
    assert not never.use_chat_template
    assert never.encode_prompt("1+2=") == [tokenizer.bos_token_id] + tokenizer.encode("1+2=")
    plain = load_policy(ModelConfig(source="local"), tiny_model_dir, need_reference=False, seed=0)
    assert not plain.use_chat_template  # the built-in char tokenizer has no template


def test_stop_ids_include_the_generation_config_eos(tiny_model_dir):
    policy = load_policy(ModelConfig(source="local"), tiny_model_dir, need_reference=False, seed=0)
    eos = policy.tokenizer.eos_token_id
    policy.model.generation_config.eos_token_id = [eos, 7]
    assert policy.stop_ids == [eos, 7]
    policy.model.generation_config.eos_token_id = None
    assert policy.stop_ids == [eos]


# ------------------------------------------------------------------------------------------------ evaluation


class _Task:
    name = "fake"

    def __init__(self, examples):
        self._examples = examples

    def test(self):
        return self._examples


def test_evaluate_metrics_hand_values(monkeypatch):
    from grpo.evaluate import Completion

    examples = [Example(prompt="p0", answer="a"), Example(prompt="p1", answer="b")]

    def fake_generate(policy, task, exs, *, repeats, greedy, **kw):
        if greedy:  # greedy: p0 right, p1 wrong
            return [[Completion(exs[0], "x", 1.0, "a")], [Completion(exs[1], "y", 0.0, "c")]]
        # 4 samples: p0 has 3 right (answers a, a, a, d) ; p1 has 1 right (answers b, e, None, e)
        return [
            [Completion(exs[0], "", r, a) for r, a in [(1.0, "a"), (1.0, "a"), (1.0, "a"), (0.0, "d")]],
            [Completion(exs[1], "", r, a) for r, a in [(1.0, "b"), (0.0, "e"), (0.0, None), (0.0, "e")]],
        ]

    monkeypatch.setattr(evaluate_module, "generate", fake_generate)
    model = torch.nn.Linear(1, 1)
    policy = Policy(model, None, Path("."), lora=False, use_chat_template=False)  # type: ignore[arg-type]
    cfg = EvalConfig(n_prompts=2, n_samples=4, pass_k=[1, 2, 4])
    metrics, greedy = evaluate_module.evaluate(policy, _Task(examples), cfg, 8, torch.Generator())
    assert metrics["eval/accuracy"] == 0.5
    assert metrics["eval/avg_at_4"] == pytest.approx(4 / 8)
    # pass@1 = c/n averaged: (3/4 + 1/4)/2 ; pass@2 = 1 - C(n-c,2)/C(4,2): p0 1 - 0/6 = 1, p1 1 - 3/6 = .5
    assert metrics["eval/pass_at_1"] == pytest.approx(0.5)
    assert metrics["eval/pass_at_2"] == pytest.approx(0.75)
    assert metrics["eval/pass_at_4"] == pytest.approx(1.0)
    # distinct answers / n: p0 {a, d} = 2/4, p1 {b, e} = 2/4
    assert metrics["eval/diversity"] == pytest.approx(0.5)
    assert len(greedy) == 2 and model.training  # the train/eval mode is restored


# ------------------------------------------------------------------------------------------------ checkpoint


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoint_load_refuses_pickled_objects(tmp_path):
    (tmp_path / checkpoint.CHECKPOINT_DIR).mkdir()
    with open(tmp_path / checkpoint.CHECKPOINT_DIR / checkpoint.STATE_FILE, "wb") as fh:
        torch.save({"next_step": 1, "evil": _Payload()}, fh)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load(tmp_path)
    good = {"next_step": 3, "rng": checkpoint.rng_state({"g": torch.Generator().manual_seed(1)})}
    checkpoint.save(tmp_path, good)
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded["next_step"] == 3


# ------------------------------------------------------------------------------------------------ CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_training_step_on_cuda(tmp_path, tiny_model_dir, math_jsonl):
    trainer = make_trainer(tmp_path, tiny_model_dir, math_jsonl, "model.device=cuda", "algo.beta=0.1")
    metrics = trainer.step(0)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["train/kl"])
    assert group_advantages(torch.ones(4, device="cuda"), torch.tensor([0, 0, 1, 1])).device.type == "cuda"


def test_overlong_penalty_hand_values():
    from grpo.advantages import overlong_penalty

    lengths = torch.tensor([10, 40, 45, 50])
    # L_max 50, buffer 10: free up to 40 tokens, then linear down to -1 at 50
    assert torch.equal(overlong_penalty(lengths, 50, 10), torch.tensor([0.0, 0.0, -0.5, -1.0]))
    assert torch.equal(overlong_penalty(lengths, 50, 10, factor=0.5), torch.tensor([0.0, 0.0, -0.25, -0.5]))
    assert torch.equal(overlong_penalty(lengths, 50, 0), torch.zeros(4))


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
