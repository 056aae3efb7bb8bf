"""Publishing finished LM checkpoints where the evaluation side finds them.

``<storage>/checkpoints/stage{1,2}/step_NNNNNN-<run>/`` holds the model files copied from the
training run, and ``checkpoint.json`` (written LAST, atomically) says what it is: stage, step,
the exact token shards, tokenizers and vocabulary it was trained on, its validation metrics, the
MLflow run and the code version, plus a sha256 per file so a missing or altered file is caught
before use. A folder without ``checkpoint.json`` is not a checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cxr.storage import atomic_dir, combined_hash, file_sha256, write_json

CHECKPOINT_MANIFEST = "checkpoint.json"


def publish_checkpoint(source: Path, target: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Copy a complete training checkpoint to ``target``, manifest last, then publish it.

    The copy is built in a hidden folder and replaces ``target`` in one atomic step
    (``atomic_dir``): a crash at any point leaves the previous checkpoint, never a partial one.
    """
    with atomic_dir(Path(target)) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        files = {
            p.relative_to(staging).as_posix(): file_sha256(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        manifest = {
            **info,
            "files": files,
            "content_hash": combined_hash([f"{k}:{v}" for k, v in files.items()]),
        }
        write_json(manifest, staging / CHECKPOINT_MANIFEST)
    return manifest


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The manifest of a published checkpoint, after re-hashing every file it lists.

    Raises:
        FileNotFoundError: No manifest (incomplete) or a listed file is missing.
        ValueError: The manifest is unreadable or inconsistent, or a file's content changed.
    """
    path = Path(path)
    manifest_path = path / CHECKPOINT_MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{path} has no {CHECKPOINT_MANIFEST}: not a complete checkpoint")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint manifest {manifest_path} is unreadable: {exc!r}") from exc
    listed = {  # publish_checkpoint hashes in path order; the JSON keeps keys in text order
        combined_hash([f"{k}:{files[k]}" for k in order])
        for order in (sorted(files), sorted(files, key=Path))
    }
    if "content_hash" in manifest and manifest["content_hash"] not in listed:
        raise ValueError(
            f"checkpoint manifest {manifest_path} is inconsistent: its content_hash does not "
            "match the file hashes it lists"
        )
    for name, expected in files.items():
        file = path / name
        if not file.exists():
            raise FileNotFoundError(f"checkpoint file {file} listed in the manifest is missing")
        actual = file_sha256(file)
        if actual != expected:
            raise ValueError(
                f"checkpoint file {file} is corrupt: sha256 {actual[:16]}... but the manifest "
                f"says {expected[:16]}..."
            )
    return manifest


def verified_from_pointer(pointer: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint a ``latest.json`` pointer names, verified (``verify_checkpoint``).

    Use it wherever a published checkpoint is consumed (stage 2 from stage 1, evaluation).

    Returns:
        The checkpoint folder and its manifest.

    Raises:
        FileNotFoundError: No pointer, or the checkpoint is incomplete or lacks a file.
        ValueError: The pointer or the checkpoint is unreadable or corrupt.
    """
    pointer = Path(pointer)
    if not pointer.exists():
        raise FileNotFoundError(f"{pointer} is missing: no checkpoint has been published there")
    try:
        target = Path(json.loads(pointer.read_text())["path"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint pointer {pointer} is unreadable: {exc!r}") from exc
    return target, verify_checkpoint(target)


def list_published(root: Path) -> list[Path]:
    """Every complete published checkpoint under ``root`` (any stage), sorted by path."""
    return sorted(p.parent for p in Path(root).glob(f"*/*/{CHECKPOINT_MANIFEST}"))
