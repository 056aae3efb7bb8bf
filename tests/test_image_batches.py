"""Streams of split images for tokenizer training: order, limits, ranks and epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cxr.image_batches import split_images, train_batches

SIZE = 4


def _archive(tmp_path: Path, n_images: int = 40, per_shard: int = 7) -> tuple[str, Path]:
    """Image shards of consecutive ids (like ``cxr_images``); pixel value = image index."""
    ids = [f"img{i:03d}" for i in range(n_images)]
    studies = [f"s{i // 2:03d}" for i in range(n_images)]
    folder = tmp_path / "images"
    folder.mkdir()
    for start in range(0, n_images, per_shard):
        part = range(start, min(start + per_shard, n_images))
        pl.DataFrame(
            {
                "image_id": [ids[i] for i in part],
                "study_id": [studies[i] for i in part],
                "pixels": [bytes([i]) * SIZE * SIZE for i in part],
                "height": [SIZE] * len(part),
                "width": [SIZE] * len(part),
            }
        ).write_parquet(folder / f"shard-{start // per_shard:05d}.parquet")
    unique = sorted(set(studies))
    split = ["test" if k % 5 == 0 else "train" for k in range(len(unique))]
    splits = tmp_path / "splits.parquet"
    pl.DataFrame({"study_id": unique, "split": split}).write_parquet(splits)
    return str(folder / "shard-*.parquet"), splits


def _indices(images) -> list[int]:
    return [int(image[0, 0]) for image in images]


def _expected(split: str, n_images: int = 40) -> list[int]:
    return [i for i in range(n_images) if ((i // 2) % 5 == 0) == (split == "test")]


def test_seed_zero_is_image_id_order_and_limit_stops_early(tmp_path: Path) -> None:
    glob, splits = _archive(tmp_path)
    assert _indices(split_images(glob, splits, "test")) == _expected("test")
    assert _indices(split_images(glob, splits, "train", limit=9)) == _expected("train")[:9]
    first = next(split_images(glob, splits, "train"))
    assert first.shape == (SIZE, SIZE) and first.dtype == np.uint8


def test_seeded_order_is_a_reproducible_permutation_of_the_split(tmp_path: Path) -> None:
    glob, splits = _archive(tmp_path)
    a = _indices(split_images(glob, splits, "train", seed=3))
    assert sorted(a) == _expected("train")
    assert a == _indices(split_images(glob, splits, "train", seed=3))
    assert a != _indices(split_images(glob, splits, "train", seed=4))
    assert a != _expected("train")


def test_ranks_partition_the_split(tmp_path: Path) -> None:
    glob, splits = _archive(tmp_path)
    parts = [
        _indices(split_images(glob, splits, "train", seed=2, rank=r, world_size=3))
        for r in range(3)
    ]
    assert all(parts)
    assert sorted(i for part in parts for i in part) == _expected("train")


def test_train_batches_cover_each_epoch_once_and_reject_tiny_splits(tmp_path: Path) -> None:
    glob, splits = _archive(tmp_path)
    train = _expected("train")
    stream = train_batches(glob, splits, batch_size=4, seed=1, buffer=8)
    per_epoch = len(train) // 4
    epoch = [i for _ in range(per_epoch) for i in _indices(next(stream))]
    assert len(set(epoch)) == len(epoch) == per_epoch * 4
    assert set(epoch) <= set(train)
    with pytest.raises(ValueError, match="TRAIN images"):
        next(train_batches(glob, splits, batch_size=len(train) + 1, seed=1))
