"""Streams of decoded images for tokenizer training: one split, one worker's part, bounded memory.

Images come from the ``cxr_images`` shards joined to the split manifest by study; a worker of a
distributed run reads only the images whose id hashes to its rank.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np


def split_images(
    images_glob: str,
    splits_path: Path,
    split: str,
    limit: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[np.ndarray]:
    """Yield (H, W) uint8 images of one split, in a seeded order, for one worker.

    Args:
        images_glob: Glob of the image shards.
        splits_path: The split manifest.
        split: train, validate or test.
        limit: At most this many images (after the rank filter).
        seed: 0 = sorted by image id; otherwise a seeded pseudo-random order.
        rank: This worker's rank; it reads images whose id hashes to it.
        world_size: Number of workers.
    """
    con = duckdb.connect()
    order = f"hash(image_id || '{int(seed)}')" if seed else "image_id"
    limit_sql = f"LIMIT {int(limit)}" if limit else ""
    shard_filter = f"AND hash(image_id) % {int(world_size)} = {int(rank)}" if world_size > 1 else ""
    reader = con.sql(
        f"""SELECT i.pixels, i.height, i.width FROM read_parquet('{images_glob}') i
            JOIN read_parquet('{splits_path}') s USING (study_id)
            WHERE s.split = '{split}' {shard_filter} ORDER BY {order} {limit_sql}"""
    ).to_arrow_reader(256)
    for batch in reader:
        for row in batch.to_pylist():
            yield np.frombuffer(row["pixels"], dtype=np.uint8).reshape(row["height"], row["width"])
    con.close()


def train_batches(
    images_glob: str,
    splits_path: Path,
    batch_size: int,
    seed: int,
    buffer: int = 512,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[np.ndarray]:
    """Endless shuffled (buffered) (B, H, W) batches of TRAIN images, epoch after epoch.

    Raises:
        ValueError: This worker sees fewer TRAIN images than one batch.
    """
    rng = random.Random(seed * 1000 + rank)
    epoch = 0
    while True:
        pool: list[np.ndarray] = []
        seen = 0
        for image in split_images(
            images_glob,
            splits_path,
            "train",
            seed=seed + epoch + 1,
            rank=rank,
            world_size=world_size,
        ):
            seen += 1
            pool.append(image)
            if len(pool) >= buffer:
                rng.shuffle(pool)
                while len(pool) >= batch_size:
                    yield np.stack([pool.pop() for _ in range(batch_size)])
        rng.shuffle(pool)
        while len(pool) >= batch_size:
            yield np.stack([pool.pop() for _ in range(batch_size)])
        if seen < batch_size:
            raise ValueError(
                f"worker {rank}/{world_size} has only {seen} TRAIN images; need at least "
                f"batch_size={batch_size}"
            )
        epoch += 1
