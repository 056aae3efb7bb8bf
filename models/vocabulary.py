"""The unified vocabulary contract and the CheXmix sequence layout.

Ids, in order: text ids of the BPE tokenizer ``[0, text_vocab_size)`` (its special tokens
``<|img|>``, ``<|/img|>``, ``<|endoftext|>`` included), then image code ``c`` at
``image_offset + c`` for ``c in [0, codebook_size)``, then the mask id and the pad id. CheXmix
uses ``image_offset = 50368`` (RadPhi-2's padded text vocabulary); ours is the text vocabulary
rounded up to a multiple of 64, the same rule.

Shards store RAW image codes and text ids; offsets are applied only when batches are built, so
the vocabulary can change without re-tokenizing images.

Sequence (image first, as CheXmix): ``<|img|> c_1 .. c_N <|/img|> <|endoftext|> report <|img|>``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

IMAGE_START = "<|img|>"
IMAGE_END = "<|/img|>"
END_OF_TEXT = "<|endoftext|>"
TEXT_SPECIAL_TOKENS = (END_OF_TEXT, IMAGE_START, IMAGE_END)
VOCAB_VERSION = 1


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Vocabulary:
    """Id layout shared by shards, training and evaluation.

    Attributes:
        text_vocab_size: Size of the text tokenizer's vocabulary (specials included).
        codebook_size: Number of image codes of the image tokenizer.
        image_start_id: Text id of ``<|img|>``.
        image_end_id: Text id of ``<|/img|>``.
        eot_id: Text id of ``<|endoftext|>``.
        image_offset: Id of image code 0.
        version: Contract version (bumped when the layout rule changes).
    """

    text_vocab_size: int
    codebook_size: int
    image_start_id: int
    image_end_id: int
    eot_id: int
    image_offset: int
    version: int = VOCAB_VERSION

    def __post_init__(self) -> None:
        if self.image_offset < self.text_vocab_size:
            raise ValueError(
                f"image_offset {self.image_offset} overlaps the text ids [0, "
                f"{self.text_vocab_size})"
            )
        for name in ("image_start_id", "image_end_id", "eot_id"):
            if not 0 <= getattr(self, name) < self.text_vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is not a text id")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")

    @classmethod
    def build(
        cls, text_vocab_size: int, codebook_size: int, specials: dict[str, int], align: int = 64
    ) -> Vocabulary:
        """Layout for a text tokenizer (``specials``: token -> id) and a codebook size."""
        missing = [t for t in TEXT_SPECIAL_TOKENS if t not in specials]
        if missing:
            raise ValueError(f"text tokenizer lacks special tokens {missing}")
        return cls(
            text_vocab_size=text_vocab_size,
            codebook_size=codebook_size,
            image_start_id=specials[IMAGE_START],
            image_end_id=specials[IMAGE_END],
            eot_id=specials[END_OF_TEXT],
            image_offset=round_up(text_vocab_size, align),
        )

    @property
    def mask_id(self) -> int:
        """Id that replaces masked input tokens (stage 2)."""
        return self.image_offset + self.codebook_size

    @property
    def pad_id(self) -> int:
        """Padding id (never in the loss)."""
        return self.image_offset + self.codebook_size + 1

    @property
    def size(self) -> int:
        """Total number of ids: the embedding / LM head size."""
        return self.pad_id + 1

    def image_ids(self, codes: np.ndarray) -> np.ndarray:
        """Token ids of raw image codes (any shape, int)."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"image codes must lie in [0, {self.codebook_size}), got "
                f"[{codes.min()}, {codes.max()}]"
            )
        return codes + self.image_offset

    def sequence(self, codes: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
        """``<|img|> codes <|/img|> <|endoftext|> text <|img|>`` as int64 ids.

        Args:
            codes: Raw image codes, flattened raster order, shape (N,).
            text_ids: Report token ids, shape (T,), without specials.

        Returns:
            (N + T + 4,) int64.
        """
        text_ids = np.asarray(text_ids, dtype=np.int64)
        return np.concatenate(
            [
                [self.image_start_id],
                self.image_ids(np.ravel(codes)),
                [self.image_end_id, self.eot_id],
                text_ids,
                [self.image_start_id],
            ]
        ).astype(np.int64)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) of the contract."""
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def sha256(self) -> str:
        """Content hash of the contract."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: Path) -> None:
        """Write the contract as JSON."""
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        """Read a contract written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))
