"""The report text tokenizer: a byte-level BPE trained with ``tokenizers``.

Saved as a transformers ``PreTrainedTokenizerFast`` directory, so a user can instead point the
pipeline at an existing tokenizer directory on disk (e.g. RadPhi-2's) that has the same special
tokens. Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from models.vocabulary import END_OF_TEXT, IMAGE_END, IMAGE_START, TEXT_SPECIAL_TOKENS

PAD_TOKEN = "<|pad|>"
MASK_TOKEN = "<|mask|>"


def train_bpe(
    texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (streamed) with the CheXmix special tokens.

    Args:
        texts: Report texts (the TRAIN split only, to keep evaluation honest).
        vocab_size: Target vocabulary size, specials included.
        min_frequency: Minimum pair frequency for a merge.
    """
    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*TEXT_SPECIAL_TOKENS, PAD_TOKEN, MASK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return wrap(tokenizer)


def wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer around a ``tokenizers`` one, specials declared."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=END_OF_TEXT,
        bos_token=END_OF_TEXT,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        additional_special_tokens=[IMAGE_START, IMAGE_END],
    )


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer directory from disk (never from a hub) and check its specials."""
    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"{path} is not a tokenizer directory (no tokenizer.json); expected a "
            "PreTrainedTokenizerFast saved with save_pretrained"
        )
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    vocab = tokenizer.get_vocab()
    missing = [t for t in TEXT_SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(
            f"tokenizer at {path} lacks the special tokens {missing}; add them with "
            "tokenizer.add_special_tokens before using it with this pipeline"
        )
    return tokenizer


def special_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Ids of the CheXmix special tokens in ``tokenizer``."""
    vocab = tokenizer.get_vocab()
    return {t: vocab[t] for t in TEXT_SPECIAL_TOKENS if t in vocab}


def tokenizer_sha256(path: Path) -> str:
    """Content hash of a saved tokenizer directory (its tokenizer.json)."""
    return hashlib.sha256((Path(path) / "tokenizer.json").read_bytes()).hexdigest()
