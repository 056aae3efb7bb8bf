"""Atomic, deterministic file and folder writes under the storage root.

Every artifact is written to a hidden temporary name in the same directory and renamed into
place, so a reader never sees a partial file and a crashed run leaves at most a ``.*.tmp-*``
entry that the next run removes. Folders (tokenizers, checkpoints) go through ``atomic_dir``:
the old folder is replaced only once the new one is complete, by one atomic exchange. Parquet
files are written without timestamps, so the same rows give the same bytes (and the same content
hash) on every run.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_COMPRESSION = "zstd"


TEMP_MARK = ".tmp-"
"""Infix of in-flight temporary files: ``.<name>.tmp-<8 hex>``. Readers never list them."""
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class StorageWriteError(OSError):
    """An output could not be written; nothing was published under its final name.

    Subclasses ``OSError`` (same ``errno``) so existing handlers keep working; the message names
    the output path and says what went wrong in words.

    Attributes:
        path: The output (file or folder) that could not be written.
    """

    path: str = ""


def _reason(exc: OSError) -> str:
    code = exc.errno
    if code in _FULL:
        return (
            f"the file system is full ({os.strerror(code)}); free space or point the storage "
            "root elsewhere"
        )
    if code in _UNWRITABLE:
        return (
            f"the storage location is not writable ({os.strerror(code)}); check the permissions "
            "of the storage root (CHEXMIX_STORAGE_ROOT) or whether it is mounted read-only"
        )
    return str(exc)


def _write_failure(final: Path, tmp: Path, exc: OSError) -> bool:
    """Whether ``exc`` (raised inside an atomic write) is a failure to write ``final``.

    A read error of some INPUT file inside the block (a vanished source file, say) is not.
    """
    if exc.errno in _FULL or exc.errno == errno.EROFS:
        return True  # reads cannot fail this way
    names = {str(exc.filename or ""), str(getattr(exc, "filename2", "") or "")}
    ours = {str(tmp), str(final), str(final.parent)}
    inside_tmp = any(name.startswith(str(tmp) + os.sep) for name in names)  # a folder's files
    return bool(names & ours) or inside_tmp or str(tmp) in str(exc) or str(final) in str(exc)


def storage_write_error(final: Path, exc: OSError) -> StorageWriteError:
    """A ``StorageWriteError`` for ``final`` from the raw ``exc`` (chain it with ``from exc``)."""
    err = StorageWriteError(exc.errno, f"could not write {final}: {_reason(exc)}")
    err.path = str(final)
    return err


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` if the block succeeds.

    On any failure the temporary file is removed and ``final`` is left as it was (absent, or
    the previous complete version). A failure to WRITE (disk full, quota, read-only or
    unwritable storage) is re-raised as ``StorageWriteError`` naming ``final``.

    Raises:
        StorageWriteError: ``final`` or its temporary file could not be written.
    """
    final = Path(final)
    ensure_dir(final.parent)
    tmp = final.with_name(f".{final.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except StorageWriteError:
        raise
    except OSError as exc:
        if _write_failure(final, tmp, exc):
            raise storage_write_error(final, exc) from exc
        raise
    finally:
        with contextlib.suppress(OSError):  # best effort: an unwritable folder keeps nothing
            tmp.unlink(missing_ok=True)


OLD_MARK = ".old-"
"""Infix of a replaced folder set aside by the fallback publish: ``.<name>.old-<8 hex>``."""
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns:
        False where the C library, the kernel or the file system cannot exchange.

    Raises:
        OSError: The exchange is supported but failed (permissions, ...).
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        handle = os.open(path, flags)
    except OSError:
        return  # best effort (some file systems refuse to open folders)
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def restore_dir(final: Path) -> Path | None:
    """Put back a folder set aside by an interrupted fallback publish, if ``final`` is missing.

    The fallback (file systems without an atomic exchange) renames the old folder to
    ``.<name>.old-*``, then the new one into place; a crash between the two renames leaves
    ``final`` absent and the old version complete under the hidden name. Leftover ``.old-*``
    folders next to a present ``final`` are removed.

    Returns:
        The restored folder, or None if nothing was restored.
    """
    final = Path(final)
    set_aside = sorted(
        final.parent.glob(f".{final.name}{OLD_MARK}*"), key=lambda p: p.stat().st_mtime
    )
    restored = None
    if set_aside and not final.exists():
        os.rename(set_aside.pop(), final)
        restored = final
    for stale in set_aside:
        shutil.rmtree(stale, ignore_errors=True)
    return restored


def _publish_dir(tmp: Path, final: Path) -> None:
    """Move the complete folder ``tmp`` onto ``final``; afterwards ``tmp`` holds the old one."""
    if not final.exists():
        try:
            os.rename(tmp, final)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # another writer got there
                raise
    if _exchange(tmp, final):
        return
    old = final.with_name(f".{final.name}{OLD_MARK}{uuid.uuid4().hex[:8]}")
    os.rename(final, old)
    os.rename(tmp, final)
    os.rename(old, tmp)  # the caller removes tmp


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``final``; publish it as ``final`` if the block succeeds.

    The block writes the whole output into the yielded folder. On success its files are
    fsynced and the folder replaces ``final`` by one atomic ``renameat2(RENAME_EXCHANGE)`` (a
    plain rename when there is no old version; on file systems without the exchange, two renames
    that ``restore_dir`` can undo), so at every instant ``final`` is either the complete old
    version or the complete new one. On any failure, a crash included, the old version stays;
    the temporary folder is removed (or, after a kill, by the next ``atomic_dir`` of the same
    output). One writer per output at a time.

    Raises:
        StorageWriteError: The folder could not be written (disk full, quota, read-only or
            unwritable storage).
    """
    final = Path(final)
    ensure_dir(final.parent)
    restore_dir(final)
    for leftover in final.parent.glob(f".{final.name}{TEMP_MARK}*"):  # killed writers
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = final.with_name(f".{final.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        yield tmp
        for path in sorted(tmp.rglob("*"), reverse=True):
            _fsync_path(path)
        _fsync_path(tmp)
        _publish_dir(tmp, final)
        _fsync_path(final.parent)
    except StorageWriteError:
        raise
    except OSError as exc:
        if _write_failure(final, tmp, exc):
            raise storage_write_error(final, exc) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_dir(folder: Path) -> Path:
    """Create ``folder`` (and parents) if needed; raise ``StorageWriteError`` if it cannot be.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_write_error(folder, exc) from exc
    return folder


def ensure_writable_dir(folder: Path) -> Path:
    """``ensure_dir``, then prove the folder takes a new file (a probe, removed at once).

    Fails fast, before any work, on a read-only or permission-restricted storage root.

    Raises:
        StorageWriteError: The folder cannot be created or written.
    """
    folder = ensure_dir(folder)
    probe = folder / f".write-probe{TEMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        probe.touch()
    except OSError as exc:
        raise storage_write_error(folder, exc) from exc
    probe.unlink(missing_ok=True)
    return folder


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


def drop_stale_manifest(manifest_path: Path, planned: set[str], all_reusable: bool) -> bool:
    """Delete a shard set's manifest before a run that will rewrite any of its shards.

    Shards are replaced one by one; if the old manifest stayed while they were, a run killed
    half-way would leave a manifest listing a mix of old and new files. The manifest is kept only
    when it lists exactly ``planned`` and every planned shard will be reused. An unreadable
    manifest is always dropped.

    Returns:
        True if a manifest was deleted.
    """
    manifest_path = Path(manifest_path)
    if not manifest_path.exists():
        return False
    try:
        listed = {s["path"] for s in json.loads(manifest_path.read_text())["shards"]}
    except (ValueError, KeyError, TypeError):
        listed = None
    if listed == planned and all_reusable:
        return False
    manifest_path.unlink(missing_ok=True)
    return True


def prune_unlisted(folder: Path, pattern: str, keep: set[str]) -> None:
    """Delete files matching ``pattern`` in ``folder`` whose names a manifest does not list.

    Also deletes temporary files of such names (``.<name>.tmp-*``) that a killed writer left
    behind. Call it only after this run's own writes into ``folder`` have finished.
    """
    folder = Path(folder)
    for stale in folder.glob(pattern):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    for leftover in folder.glob(f".{pattern}{TEMP_MARK}*"):
        leftover.unlink(missing_ok=True)


def leftover_temp_files(folder: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes in ``folder`` (not recursive), sorted."""
    return sorted(Path(folder).glob(f".*{TEMP_MARK}*"))
