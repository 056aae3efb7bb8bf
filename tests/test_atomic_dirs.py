"""Folder outputs (tokenizers, checkpoints) are published atomically by ``cxr.storage.atomic_dir``.

Drills: a writer killed (SIGKILL) half-way through writing a new tokenizer, or after writing it
but before publishing, leaves the old tokenizer usable and byte-identical; the fallback publish
(file systems without an atomic exchange) interrupted between its two renames is undone; the
``text_tokenizer`` asset itself keeps the old tokenizer when saving the new one fails.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cxr import storage as storage_module
from cxr.storage import OLD_MARK, TEMP_MARK, StorageWriteError, atomic_dir, restore_dir
from models.text_tokenizer import load_tokenizer, tokenizer_sha256, train_bpe

TEXTS = [
    "No pleural effusion or pneumothorax.",
    "The heart size is normal. Lungs are clear.",
    "Mild cardiomegaly with small bilateral pleural effusions.",
] * 20


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture()
def old_tokenizer(tmp_path) -> Path:
    out = tmp_path / "tokenizers" / "text"
    with atomic_dir(out) as tmp:
        train_bpe(TEXTS, vocab_size=300, min_frequency=1).save_pretrained(str(tmp))
    return out


def test_new_folder_replaces_old_only_when_complete(tmp_path, monkeypatch):
    exchanges = []
    real_exchange = storage_module._exchange
    monkeypatch.setattr(
        storage_module, "_exchange", lambda a, b: exchanges.append(b) or real_exchange(a, b)
    )
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        assert tmp.is_dir() and tmp.parent == out.parent and tmp.name.startswith(".out.tmp-")
        (tmp / "a.txt").write_text("one")
        assert not out.exists()  # nothing visible before the block ends
    assert _tree(out) == {"a.txt": b"one"}
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("two")
        assert _tree(out) == {"a.txt": b"one"}  # the old version until the swap
    assert _tree(out) == {"b.txt": b"two"}  # replaced whole: no file of the old version left
    assert exchanges == [out]  # one atomic exchange (this Linux file system supports it)
    assert _hidden(tmp_path) == []


def test_failure_inside_the_block_keeps_the_old_folder(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("boom")
    assert _tree(out) == {"a.txt": b"old"}
    assert _hidden(tmp_path) == []


def test_unwritable_parent_is_a_storage_write_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(StorageWriteError, match="not writable"), atomic_dir(parent / "x"):
            pass
    finally:
        parent.chmod(0o755)


def test_fallback_publish_interrupted_between_renames_is_restored(tmp_path, monkeypatch):
    """Without RENAME_EXCHANGE: old -> .old-*, new -> final; a crash in between is undone."""
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    monkeypatch.setattr(storage_module, "_exchange", lambda *_: False)
    real_rename = os.rename

    def crash_on_second_rename(src, dst):
        if Path(dst) == out:
            raise KeyboardInterrupt  # the process dies here
        real_rename(src, dst)

    monkeypatch.setattr(storage_module.os, "rename", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("new")
    monkeypatch.setattr(storage_module.os, "rename", real_rename)
    assert not out.exists() and any(OLD_MARK in n for n in _hidden(tmp_path))
    assert restore_dir(out) == out
    assert _tree(out) == {"a.txt": b"old"}
    with atomic_dir(out) as tmp:  # the fallback path, uninterrupted
        (tmp / "a.txt").write_text("new")
    assert _tree(out) == {"a.txt": b"new"} and _hidden(tmp_path) == []


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from cxr.storage import atomic_dir
    from models.text_tokenizer import train_bpe

    out, when = Path(sys.argv[1]), sys.argv[2]
    texts = ["Right upper lobe consolidation.", "Small left apical pneumothorax."] * 20
    tokenizer = train_bpe(texts, vocab_size=300, min_frequency=1)
    with atomic_dir(out) as tmp:
        if when == "mid-write":  # the new tokenizer is half written
            (tmp / "tokenizer.json").write_text('{"version": "1.0", "trunc')
        else:  # complete, not yet published
            tokenizer.save_pretrained(str(tmp))
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize("when", ["mid-write", "before-publish"])
def test_drill_writer_killed_keeps_old_tokenizer_usable(old_tokenizer, when):
    before = _tree(old_tokenizer)
    sha = tokenizer_sha256(old_tokenizer)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(old_tokenizer), when],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _tree(old_tokenizer) == before  # byte-identical old version
    tokenizer = load_tokenizer(old_tokenizer)  # and usable
    assert tokenizer("No pleural effusion.")["input_ids"]
    assert tokenizer_sha256(old_tokenizer) == sha
    leftovers = _hidden(old_tokenizer.parent)
    assert len(leftovers) == 1 and TEMP_MARK in leftovers[0]  # hidden: readers never see it
    with atomic_dir(old_tokenizer) as tmp:  # the next write clears what the killed one left
        train_bpe(TEXTS[:6], vocab_size=300, min_frequency=1).save_pretrained(str(tmp))
    assert _hidden(old_tokenizer.parent) == []
    load_tokenizer(old_tokenizer)


def _dummy_inputs(root: Path) -> None:
    """The text_tokenizer asset hashes its inputs for lineage; any Parquet file will do here."""
    for name in ("report_sections", "splits"):
        path = root / "curation" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"study_id": ["s1"]}), path)


def test_text_tokenizer_asset_keeps_old_tokenizer_when_saving_fails(tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    from assets.text_tokenizer import text_tokenizer
    from pipelines.resources import StorageResource

    storage_root = tmp_path / "storage"
    _dummy_inputs(storage_root)
    source = tmp_path / "pretrained"
    train_bpe(TEXTS, vocab_size=300, min_frequency=1).save_pretrained(str(source))
    run_config = {"ops": {"text_tokenizer": {"config": {"pretrained_dir": str(source)}}}}
    resources = {"storage": StorageResource(root=str(storage_root))}
    assert dg.materialize([text_tokenizer], resources=resources, run_config=run_config).success
    out = storage_root / "tokenizers" / "text"
    before = _tree(out)

    def fail_half_way(self, save_directory, *args, **kwargs):
        Path(save_directory, "tokenizer.json").write_text("{ half")
        raise OSError(28, "No space left on device", str(Path(save_directory, "vocab.json")))

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", fail_half_way)
    failed = dg.materialize(
        [text_tokenizer], resources=resources, run_config=run_config, raise_on_error=False
    )
    assert not failed.success
    assert _tree(out) == before
    load_tokenizer(out)
    assert _hidden(out.parent) == []  # no visible ``text.tmp``, no hidden leftover either
