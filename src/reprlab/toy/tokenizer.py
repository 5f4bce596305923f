"""A word-level tokenizer for the toy world, saved as a standard Hugging Face tokenizer.

Every word and punctuation mark of the world is one token (the vocabulary has a few hundred
entries), so the LM head is small and training is cheap. As in GPT-2, a token carries its
leading space (``" Paris"`` is the token ``ĠParis``; a text's first word has none), so a decoded
continuation can be appended to its prompt as it is. Special tokens: ``<|bos|>`` (added in
front of every encoded text), ``<|end|>`` (end of a document and of a chat turn; the eos
token), ``<|pad|>``, ``<|unk|>`` and the chat roles ``<|system|>``, ``<|user|>``,
``<|assistant|>``. The chat template renders

    <|bos|><|user|> What is 2 + 3 ?<|end|><|assistant|> 5 .<|end|>

so that the prompt (with ``add_generation_prompt=True``) is a token prefix of prompt + answer.
"""

from __future__ import annotations

from collections.abc import Iterable

BOS, EOS, PAD, UNK = "<|bos|>", "<|end|>", "<|pad|>", "<|unk|>"
ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIALS = (PAD, BOS, EOS, UNK) + ROLES

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tokenizer(texts: Iterable[str]):
    """A ``PreTrainedTokenizerFast`` whose vocabulary is every word of ``texts``."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for piece in _pieces(texts):
        vocab.setdefault(piece, len(vocab))
    return _from_vocab(vocab)


def extend_tokenizer(tokenizer, texts: Iterable[str]):
    """``tokenizer`` with every new word of ``texts`` appended to its vocabulary: the ids of
    the words it had are unchanged, so a model keeps its embeddings for them."""
    vocab = dict(tokenizer.get_vocab())
    for piece in _pieces(texts):
        vocab.setdefault(piece, len(vocab))
    return _from_vocab(vocab)


def _pieces(texts: Iterable[str]) -> list[str]:
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return sorted({p for t in texts for p, _ in pre.pre_tokenize_str(t)})


def _from_vocab(vocab: dict[str, int]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=list(ROLES), model_max_length=512, padding_side="right")
    fast.chat_template = CHAT_TEMPLATE
    return fast
