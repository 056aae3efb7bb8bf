"""Atomic, deterministic file writes under the storage root.

Every artifact is written to a temporary name in the same directory and renamed into place, so
a reader never sees a partial file and a crashed run leaves at most a ``*.tmp-*`` file that the
next run overwrites. Parquet files are written without timestamps, so the same rows give the
same bytes (and the same content hash) on every run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_COMPRESSION = "zstd"


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_parquet(table: pa.Table, path: Path, row_group_size: int | None = None) -> str:
    """Write ``table`` atomically as zstd Parquet; return the file's sha256."""
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            compression=PARQUET_COMPRESSION,
            row_group_size=row_group_size,
            write_statistics=True,
        )
    return file_sha256(path)


def write_json(obj: Any, path: Path) -> str:
    """Write ``obj`` atomically as sorted, indented JSON; return the file's sha256."""
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    return write_bytes(data, path)


def write_bytes(data: bytes, path: Path) -> str:
    """Write ``data`` atomically; return its sha256."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def combined_hash(parts: list[str]) -> str:
    """One sha256 over an ordered list of hashes/strings (e.g. the shards of a shard set)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def empty_table(schema: pa.Schema) -> pa.Table:
    """A zero-row table with ``schema``."""
    return schema.empty_table()


INPUT_HASH_KEY = b"chexmix.input_hash"


def parquet_input_hash(path: Path) -> str | None:
    """The input hash recorded in a shard's metadata, or None if absent or unreadable.

    Shards carry the hash of the inputs they were made from, so a re-run reuses a shard whose
    inputs are unchanged and redoes any missing, partial or foreign file.
    """
    if not Path(path).exists():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    value = meta.get(INPUT_HASH_KEY)
    return value.decode() if value else None


def prune_unlisted(folder: Path, pattern: str, keep: set[str]) -> None:
    """Delete files matching ``pattern`` in ``folder`` whose names a manifest does not list."""
    for stale in Path(folder).glob(pattern):
        if stale.name not in keep:
            stale.unlink()
