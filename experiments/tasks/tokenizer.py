"""Character-level tokenizer in Hugging Face format, shared by all built-in tasks.

Every character of the alphabet is one token; characters outside it map to ``<unk>``. Special tokens:
``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3. ``encode`` adds no special tokens (there is no
post-processor): callers prepend ``<bos>`` themselves (``[bos] + tokenizer.encode(prompt)``) and the trainer
appends ``<eos>`` to supervised targets. There is no chat template: a prompt is just the problem text.

The tokenizer saves with ``save_pretrained(dir)`` and loads back with ``AutoTokenizer.from_pretrained(dir)``
with identical ids and decoding (the decoder joins tokens without spaces; ``clean_up_tokenization_spaces``
is off so spaces before punctuation survive a round trip).
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
"""Special tokens, in id order (``<pad>`` is id 0)."""

BUILTIN_ALPHABET: str = string.digits + "+-*/=()<>,.:; " + string.ascii_lowercase
"""One alphabet for every built-in task (arith and countdown use digits and ``+-*/=(),:>``; the rest is
headroom so new synthetic tasks fit the same tokenizer). Changing it changes token ids: bump
``experiments.base_model.BASE_MODEL_VERSION`` when you do."""


def build_char_tokenizer(
    alphabet: str = BUILTIN_ALPHABET, *, model_max_length: int = 256
) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` with one token per character of ``alphabet`` (after the 4 specials)."""
    chars: list[str] = []
    for ch in alphabet:
        if ch not in chars:
            chars.append(ch)
    if not chars:
        raise ValueError("the alphabet is empty")
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        if ch in vocab:
            raise ValueError(f"alphabet character {ch!r} collides with a special token")
        vocab[ch] = len(vocab)

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # isolate every single character (newlines included) as its own pre-token
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="right",
    )


def char_vocab(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Character -> id map of a char tokenizer (specials excluded), for fast encoding in tight loops."""
    return {tok: i for tok, i in tokenizer.get_vocab().items() if tok not in SPECIAL_TOKENS and len(tok) == 1}
