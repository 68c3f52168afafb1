"""The small tokenizer of the from-scratch generator.

A 30k-token vocabulary makes the softmax of a 256-d generator cost as much as the rest of the model on CPU,
so when the pipeline trains its own generator it also trains its own ~4000-token byte-level BPE on the corpus.
Byte-level means any string round-trips (no <unk>), so answers decode exactly.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


def build_generator_tokenizer(texts: list[str] | None, vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so nothing is ever unknown
        show_progress=False,
    )
    # the prompt words are always there, even for a tiny corpus
    texts = list(texts or []) + ["Background: Question: Answer: Paraphrase:"]
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK)
