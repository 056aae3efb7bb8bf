"""The vocabulary contract and the text tokenizer."""

import numpy as np
import pytest

from models.text_tokenizer import load_tokenizer, special_ids, tokenizer_sha256, train_bpe
from models.vocabulary import Vocabulary

TEXTS = [
    "The heart size is normal. No pleural effusion or pneumothorax.",
    "Moderate right pleural effusion with adjacent atelectasis.",
    "Lungs are clear. No acute cardiopulmonary process.",
] * 20


def test_vocabulary_layout_matches_chexmix_rules():
    vocab = Vocabulary.build(
        50295, 8192, {"<|endoftext|>": 50256, "<|img|>": 50293, "<|/img|>": 50294}
    )
    assert vocab.image_offset == 50304  # text vocabulary rounded up to a multiple of 64
    assert vocab.mask_id == 50304 + 8192 and vocab.pad_id == vocab.mask_id + 1
    assert vocab.size == vocab.pad_id + 1
    seq = vocab.sequence(np.array([0, 5, 8191]), np.array([10, 11]))
    assert seq.tolist() == [50293, 50304, 50309, 58495, 50294, 50256, 10, 11, 50293]
    with pytest.raises(ValueError, match=r"image codes must lie in \[0, 8192\)"):
        vocab.image_ids(np.array([8192]))
    with pytest.raises(ValueError, match="overlaps the text ids"):
        Vocabulary(100, 16, 1, 2, 0, image_offset=50)
    with pytest.raises(ValueError, match="lacks special tokens"):
        Vocabulary.build(100, 16, {"<|img|>": 1})


def test_vocabulary_round_trips_through_json(tmp_path):
    vocab = Vocabulary.build(700, 512, {"<|endoftext|>": 0, "<|img|>": 1, "<|/img|>": 2})
    vocab.save(tmp_path / "v.json")
    again = Vocabulary.load(tmp_path / "v.json")
    assert again == vocab and again.sha256 == vocab.sha256


def test_bpe_trains_offline_saves_and_reloads(tmp_path):
    tokenizer = train_bpe(TEXTS, vocab_size=400)
    ids = special_ids(tokenizer)
    assert set(ids) == {"<|endoftext|>", "<|img|>", "<|/img|>"}
    encoded = tokenizer("No pleural effusion.", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(encoded) == "No pleural effusion."
    assert not set(encoded) & set(ids.values())
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    again = load_tokenizer(tmp_path / "tok")
    assert again("No pleural effusion.", add_special_tokens=False)["input_ids"] == encoded
    assert len(tokenizer_sha256(tmp_path / "tok")) == 64
    with pytest.raises(ValueError, match="vocab_size must be >= 300"):
        train_bpe(TEXTS, vocab_size=100)
    with pytest.raises(FileNotFoundError, match="not a tokenizer directory"):
        load_tokenizer(tmp_path)
