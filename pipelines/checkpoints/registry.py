"""Which checkpoints exist for evaluation, under which partition key, and how to open one.

Three places are scanned (cheaply: names, sizes and mtimes, never file contents):

* ``<storage>/checkpoints/stage<N>[-<arm>]/<name>/checkpoint.json``: published by the training
  assets (``stage1``, ``stage2``, ``stage1-continued``); key ``<folder>-<name>``, e.g.
  ``stage2-step_000150-1a2b3c4d``.
* the external folder (``<storage>/checkpoints/external`` or ``$CHEXMIX_EXTERNAL_CHECKPOINTS``):
  every sub-folder holding a ``checkpoint.json`` or a complete ``train_lm`` checkpoint
  (``COMPLETE`` marker); key ``ext-<name>``.
* ``<storage>/checkpoints/registered/<key>.json``: any directory registered by
  ``python -m pipelines.evaluate register PATH``.

A checkpoint's fingerprint changes when its files change, so a re-written checkpoint is
evaluated again. Opening one re-hashes every file against its manifest (published ones) or
builds the manifest on the spot (external ones).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.storage import combined_hash, file_sha256, write_json
from pipelines.checkpoints.publish import CHECKPOINT_MANIFEST, verify_checkpoint

EXTERNAL_ENV = "CHEXMIX_EXTERNAL_CHECKPOINTS"
COMPLETE_MARKER = "COMPLETE"
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class CheckpointRef:
    """A discovered checkpoint.

    Attributes:
        key: Partition key (``[A-Za-z0-9_.-]``).
        path: Absolute checkpoint directory.
        origin: ``published``, ``external`` or ``registered``.
        fingerprint: Changes whenever the checkpoint's files change.
    """

    key: str
    path: Path
    origin: str
    fingerprint: str


def partition_key(prefix: str, name: str) -> str:
    """A partition key from a prefix and a folder name."""
    cleaned = _KEY_CHARS.sub("_", name).strip("_.") or "checkpoint"
    return f"{prefix}-{cleaned}"[:120]


def is_complete(path: Path) -> bool:
    """A published (``checkpoint.json``) or ``train_lm`` (``COMPLETE``) checkpoint folder."""
    return (path / CHECKPOINT_MANIFEST).is_file() or (path / COMPLETE_MARKER).is_file()


def fingerprint(path: Path) -> str:
    """Hash of relative names, sizes and mtimes of every file (no contents read)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def external_dir(storage_root: Path) -> Path:
    """The folder watched for externally dropped checkpoints."""
    configured = os.environ.get(EXTERNAL_ENV, "")
    return (
        Path(configured).expanduser().resolve()
        if configured
        else (storage_root / "checkpoints" / "external")
    )


def discover(storage_root: Path) -> list[CheckpointRef]:
    """Every complete checkpoint in the three places, sorted by key.

    Raises:
        ValueError: Two different directories map to the same key.
    """
    found: dict[str, CheckpointRef] = {}

    def add(ref: CheckpointRef) -> None:
        other = found.get(ref.key)
        if other is not None and other.path != ref.path:
            raise ValueError(
                f"checkpoint key {ref.key!r} names both {other.path} and {ref.path}; rename one"
            )
        found[ref.key] = ref

    root = storage_root / "checkpoints"
    for manifest in sorted(root.glob(f"stage[0-9]*/*/{CHECKPOINT_MANIFEST}")):
        folder = manifest.parent
        key = partition_key(folder.parent.name, folder.name)
        add(CheckpointRef(key, folder.resolve(), "published", fingerprint(folder)))
    external = external_dir(storage_root)
    if external.is_dir():
        for folder in sorted(p for p in external.iterdir() if p.is_dir()):
            if is_complete(folder):
                ref = CheckpointRef(
                    partition_key("ext", folder.name),
                    folder.resolve(),
                    "external",
                    fingerprint(folder),
                )
                add(ref)
    for entry in sorted((root / "registered").glob("*.json")):
        info = json.loads(entry.read_text())
        folder = Path(info["path"])
        if is_complete(folder):
            add(CheckpointRef(info["key"], folder, "registered", fingerprint(folder)))
    return [found[k] for k in sorted(found)]


def register(storage_root: Path, path: Path, key: str | None = None) -> CheckpointRef:
    """Register a checkpoint directory for evaluation (what the CLI does).

    Raises:
        FileNotFoundError: ``path`` is not a complete checkpoint.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir() or not is_complete(path):
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint: expected a folder with {CHECKPOINT_MANIFEST} "
            f"(published by the pipeline) or a {COMPLETE_MARKER} marker (train_lm)"
        )
    key = key or partition_key("reg", path.name)
    if _KEY_CHARS.search(key):
        raise ValueError(f"checkpoint key {key!r} may only use letters, digits, '_', '.', '-'")
    write_json(
        {"key": key, "path": str(path), "registered_at": dt.datetime.now(dt.UTC).isoformat()},
        storage_root / "checkpoints" / "registered" / f"{key}.json",
    )
    return CheckpointRef(key, path, "registered", fingerprint(path))


def find(storage_root: Path, key: str) -> CheckpointRef:
    """The checkpoint of a partition key.

    Raises:
        KeyError: No complete checkpoint has this key (any more).
    """
    for ref in discover(storage_root):
        if ref.key == key:
            return ref
    raise KeyError(
        f"no complete checkpoint has key {key!r} under {storage_root / 'checkpoints'} or "
        f"{external_dir(storage_root)}: was it deleted or renamed?"
    )


def open_manifest(ref: CheckpointRef) -> dict[str, Any]:
    """The verified manifest: every file re-hashed (published) or hashed now (external).

    Raises:
        FileNotFoundError / ValueError: A listed file is missing or changed (named).
    """
    if (ref.path / CHECKPOINT_MANIFEST).is_file():
        manifest = verify_checkpoint(ref.path)
    else:
        files = {
            p.relative_to(ref.path).as_posix(): file_sha256(p)
            for p in sorted(ref.path.rglob("*"))
            if p.is_file()
        }
        meta_path = ref.path / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        manifest = {
            "stage": (meta.get("train_config") or {}).get("stage"),
            "step": meta.get("step"),
            "train_config": meta.get("train_config"),
            "files": files,
            "content_hash": combined_hash([f"{k}:{v}" for k, v in files.items()]),
        }
    return {**manifest, "origin": ref.origin, "path": str(ref.path)}
