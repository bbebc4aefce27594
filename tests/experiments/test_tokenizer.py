"""The char tokenizer: ids, specials, and an exact round trip through save_pretrained / AutoTokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from experiments.tasks import make_task
from experiments.tasks.tokenizer import BUILTIN_ALPHABET, SPECIAL_TOKENS, build_char_tokenizer, char_vocab


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def task_strings():
    arith, countdown = make_task("arith", n_test=20), make_task("countdown", n_test=20)
    out = []
    for task in (arith, countdown):
        for ex in list(task.test()) + list(task.train()[:20]):
            out += [ex.prompt, ex.target, ex.prompt + ex.target]
    return out


def test_special_ids(tokenizer):
    assert tokenizer.pad_token_id == 0
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (
        tokenizer.bos_token == "<bos>" and tokenizer.eos_token == "<eos>" and tokenizer.unk_token == "<unk>"
    )
    assert len(tokenizer) == len(SPECIAL_TOKENS) + len(set(BUILTIN_ALPHABET))
    assert getattr(tokenizer, "chat_template", None) is None


def test_one_token_per_character_no_specials_added(tokenizer):
    text = "1234+567=4+7+0=11,3+6+1=10>1801"
    ids = tokenizer.encode(text)
    assert len(ids) == len(text)
    assert tokenizer.bos_token_id not in ids and tokenizer.eos_token_id not in ids
    vocab = char_vocab(tokenizer)
    assert ids == [vocab[c] for c in text]
    # spaces and punctuation survive decoding (no clean-up of " ," etc.)
    assert tokenizer.decode(tokenizer.encode(" a , b . (1) ")) == " a , b . (1) "


def test_unknown_characters_map_to_unk(tokenizer):
    ids = tokenizer.encode("1é2")
    assert ids == [
        tokenizer.convert_tokens_to_ids("1"),
        tokenizer.unk_token_id,
        tokenizer.convert_tokens_to_ids("2"),
    ]


def test_task_strings_are_in_the_alphabet(tokenizer, task_strings):
    for text in task_strings:
        assert tokenizer.unk_token_id not in tokenizer.encode(text), text
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_round_trip_through_autotokenizer(tmp_path, tokenizer, task_strings):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
        assert getattr(loaded, name) == getattr(tokenizer, name), name
    for text in task_strings:
        ids = tokenizer.encode(text)
        assert loaded.encode(text) == ids
        assert loaded(text, add_special_tokens=False)["input_ids"] == ids
        assert loaded.decode(ids) == text
        framed = [loaded.bos_token_id] + ids + [loaded.eos_token_id, loaded.pad_token_id]
        assert loaded.decode(framed, skip_special_tokens=True) == text


def test_custom_alphabet_and_empty_alphabet():
    tok = build_char_tokenizer("ab")
    assert len(tok) == 6 and tok.decode(tok.encode("abba")) == "abba"
    with pytest.raises(ValueError):
        build_char_tokenizer("")
