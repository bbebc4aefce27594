"""Sampling and log-probs: the sampler against a plain forward, chunking, top-p, stop tokens, compaction."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from grpo.rollout import entropy_from_logits, response_logprobs, sample, top_p_filter
from tests.conftest import tiny_llama as shared_tiny_llama


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    return shared_tiny_llama(seed).eval()


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


@pytest.mark.parametrize("decoder", ["fast", "generic"])
def test_finished_rows_leave_the_batch_without_changing_any_response(monkeypatch, decoder):
    """Rows that finish are dropped from the running batch and KV cache; each response, log-prob and entropy
    equals that of the same prompt generated alone (greedy: no randomness to share)."""
    from grpo.decode import FastDecoder, GenericDecoder

    model = tiny_llama(seed=3)
    prompts = PROMPTS * 3
    kw = dict(max_new_tokens=12, pad_id=0, greedy=True, decoder=decoder)
    free = sample(model, prompts, eos_id=39, **kw)
    # half the prompts' second greedy token becomes a stop token: those rows finish early, the others run on
    stops = sorted({int(free.response_ids[row, 1]) for row in range(0, len(prompts), 2)})
    selections: list[int] = []
    cls = FastDecoder if decoder == "fast" else GenericDecoder
    original = cls.select

    def spy(self, indices):
        selections.append(len(indices))
        return original(self, indices)

    monkeypatch.setattr(cls, "select", spy)
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


def test_chunked_logprobs_and_entropy_match_categorical():
    model = shared_tiny_llama(0, vocab_size=50, num_hidden_layers=1, max_position_embeddings=64)
    prompt = torch.randint(3, 50, (3, 4))
    prompt_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    resp = torch.randint(3, 50, (3, 7))
    resp_mask = torch.ones(3, 7, dtype=torch.bool)
    resp_mask[2, 5:] = False
    temperature = 0.7
    logp, ent = response_logprobs(
        model, prompt, prompt_mask, resp, resp_mask, temperature=temperature, chunk_size=3, with_entropy=True
    )
    for row in range(3):
        keep = torch.cat([prompt[row][prompt_mask[row]], resp[row]])
        logits = model(keep[None]).logits[0, prompt_mask[row].sum() - 1 : -1] / temperature
        dist = torch.distributions.Categorical(logits=logits)
        n = int(resp_mask[row].sum())
        assert torch.allclose(logp[row, :n], dist.log_prob(resp[row])[:n], atol=1e-5)
        assert torch.allclose(ent[row, :n], dist.entropy()[:n], atol=1e-5)
        assert (logp[row, n:] == 0).all()


def test_entropy_from_random_logits_matches_categorical():
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(3)) * 3
    _, ent = entropy_from_logits(logits)
    assert torch.allclose(ent, torch.distributions.Categorical(logits=logits).entropy(), atol=1e-6)


def test_top_p_keeps_smallest_set_with_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = top_p_filter(probs.log(), 0.8).isfinite()
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    assert top_p_filter(probs.log(), 0.81).isfinite().tolist() == [[True, True, True, False]]


def test_columns_no_row_uses_are_not_computed_and_change_nothing():
    model = tiny_llama(seed=4)
    roll = sample(model, PROMPTS * 2, max_new_tokens=9, eos_id=[2, 3], pad_id=0, temperature=2.0,
                  generator=torch.Generator().manual_seed(3))  # fmt: skip
    lengths = roll.response_mask.sum(-1)
    short = torch.nonzero((lengths < lengths.max()) & roll.prompt_mask[:, 0].logical_not()).squeeze(-1)
    assert len(short) >= 2, "need rows with a shorter prompt and a shorter response"
    widths: list[int] = []
    hook = model.model.register_forward_pre_hook(
        lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    args = (roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
    full, _ = response_logprobs(model, *args)
    part, _ = response_logprobs(model, *(x[short] for x in args))
    hook.remove()
    assert widths[0] == roll.prompt_ids.shape[1] + roll.response_ids.shape[1] and widths[1] < widths[0]
    assert part.shape == (len(short), roll.response_ids.shape[1])
    assert torch.allclose(part, full[short], atol=1e-6) and (part[~roll.response_mask[short]] == 0).all()


def test_the_fused_linear_head_has_the_gradient_of_log_softmax():
    from grpo.rollout import _LinearHeadLogprob

    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 9, (6,), generator=g)
    assert torch.autograd.gradcheck(
        lambda h, w, b: _LinearHeadLogprob.apply(h, w, b, targets, 0.7, False)[0], (h, w, b)
    )
    logp, ent = _LinearHeadLogprob.apply(h, w, b, targets, 0.7, True)
    want = torch.log_softmax((h @ w.T + b) / 0.7, -1)
    assert torch.allclose(logp, want.gather(-1, targets[:, None]).squeeze(-1))
    assert torch.allclose(ent, -(want.exp() * want).sum(-1)) and not ent.requires_grad
    # batched vector-Jacobian products (vmap over the backward) equal separate ones
    vs = torch.randn(2, 6, dtype=torch.float64, generator=g)
    batched = torch.autograd.grad(logp, (h, w, b), vs, retain_graph=True, is_grads_batched=True)
    for k in range(2):
        single = torch.autograd.grad(logp, (h, w, b), vs[k], retain_graph=True)
        assert all(torch.allclose(x[k], y) for x, y in zip(batched, single, strict=True))


def test_fused_and_checkpointed_head_paths_agree(monkeypatch):
    import grpo.rollout as rollout

    model = tiny_llama(seed=5)
    roll = sample(model, PROMPTS * 2, max_new_tokens=7, eos_id=2, pad_id=0, temperature=1.5,
                  generator=torch.Generator().manual_seed(2))  # fmt: skip
    args = (model, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
    results = []
    for fused in (True, False):
        monkeypatch.setattr(rollout, "_plain_linear", lambda head, fused=fused: fused)
        model.zero_grad()
        logp, ent = response_logprobs(*args, temperature=1.5, chunk_size=5, with_entropy=True)
        (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
        results.append((logp.detach(), ent, [p.grad.clone() for p in model.parameters()]))
    (lf, ef, gf), (lc, ec, gc) = results
    assert torch.allclose(lf, lc, atol=1e-6) and torch.allclose(ef, ec, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(gf, gc, strict=True))


def test_length_buckets_give_the_numbers_and_gradients_of_one_forward():
    model = tiny_llama(seed=6)
    roll = sample(model, PROMPTS * 4, max_new_tokens=10, eos_id=[2, 3], pad_id=0, temperature=2.0,
                  generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert roll.response_mask.sum(-1).unique().numel() > 2, "responses of one length: buckets change nothing"
    args = (model, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
    results = []
    for buckets in (1, 3, 100):  # 100 > rows / 2: one forward
        model.zero_grad()
        logp, ent = response_logprobs(*args, temperature=2.0, with_entropy=True, buckets=buckets)
        (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
        results.append((logp.detach(), ent, [p.grad.clone() for p in model.parameters()]))
    for logp, ent, grads in results[1:]:
        assert torch.allclose(logp, results[0][0], atol=1e-6) and torch.allclose(
            ent, results[0][1], atol=1e-6
        )
        assert (logp[~roll.response_mask] == 0).all()
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, results[0][2], strict=True))
