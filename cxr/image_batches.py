"""Streams of decoded images for tokenizer training: one split, one worker's part, bounded memory.

Images come from the ``cxr_images`` shards joined to the split manifest by study; a worker of a
distributed run reads only the images whose id hashes to its rank.
"""

from __future__ import annotations

import glob
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

    The order is shard by shard: never a sort over the whole split, so memory is one shard's pixels
    whatever the archive size. Image shards hold consecutive image ids, so ``seed=0`` (shards in
    name order, each sorted by id) is the global image-id order; any other seed shuffles the shard
    order and the images inside each shard (``train_batches`` mixes across shards with its buffer).

    Args:
        images_glob: Glob of the image shards.
        splits_path: The split manifest.
        split: train, validate or test.
        limit: At most this many images (after the rank filter).
        seed: 0 = sorted by image id; otherwise a seeded pseudo-random order.
        rank: This worker's rank; it reads images whose id hashes to it.
        world_size: Number of workers.
    """
    shards = sorted(glob.glob(images_glob))
    if seed:
        random.Random(seed).shuffle(shards)
    order = f"hash(i.image_id || '{int(seed)}')" if seed else "i.image_id"
    shard_filter = ""
    if world_size > 1:
        shard_filter = f"AND hash(i.image_id) % {int(world_size)} = {int(rank)}"
    con = duckdb.connect()
    try:
        con.execute(
            "CREATE TEMP TABLE split_studies AS "
            "SELECT study_id FROM read_parquet(?) WHERE split = ?",
            [str(splits_path), split],
        )
        left = limit if limit else None
        for shard in shards:
            limit_sql = f"LIMIT {int(left)}" if left is not None else ""
            reader = con.sql(
                f"""SELECT i.pixels, i.height, i.width FROM read_parquet(?) i
                    SEMI JOIN split_studies s ON i.study_id = s.study_id
                    WHERE true {shard_filter} ORDER BY {order} {limit_sql}""",
                params=[shard],
            ).to_arrow_reader(256)
            for batch in reader:
                for row in batch.to_pylist():
                    yield np.frombuffer(row["pixels"], dtype=np.uint8).reshape(
                        row["height"], row["width"]
                    )
                    if left is not None:
                        left -= 1
            if left is not None and left <= 0:
                return
    finally:
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
