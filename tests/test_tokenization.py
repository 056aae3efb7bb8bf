"""The vocabulary contract, the text tokenizer and the token-shard pipeline."""

import dataclasses

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


# ---------------------------------------------------------------------------------------------
# Token shards: the ShardTokenizer pipeline (debug VQ preset, CPU)


@pytest.fixture(scope="module")
def shard_inputs(tmp_path_factory):
    """3 image shards (8, 8, 4 images at 32 px), a plan, a debug VQ checkpoint and a tiny BPE."""
    import torch

    from bench.tokenize import build_tokenizers, write_inputs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("token_shards")
    tasks, pixels, texts = write_inputs(root, 20, 32, 8, seed=0)
    build_tokenizers(root, "debug", texts, 0, pixels)
    tasks = [dataclasses.replace(t, input_hash=f"hash-{t.shard}") for t in tasks]
    yield root, tasks, pixels
    torch.set_num_threads(threads)


def _worker(root, out: str, **options):
    from cxr.token_shards import ShardTokenizer

    (root / out).mkdir(exist_ok=True)
    return ShardTokenizer(
        vq_dir=str(root / "vq"),
        text_tokenizer_dir=str(root / "text"),
        images_dir=str(root / "images"),
        plan_path=str(root / "plan.parquet"),
        out_dir=str(root / out),
        file_metadata={"chexmix.test": "1"},
        batch_size=6,
        **options,
    )


def _legacy_table(worker, task, codes: np.ndarray):
    """The token shard table as the row-by-row builder made it (codes as Python lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cxr.token_shards import LABEL_COLUMNS

    plan = pq.read_table(worker.plan_path, filters=[("shard", "=", task.shard)])
    plan_rows = {r["image_id"]: r for r in plan.to_pylist()}
    ids = sorted(plan_rows)
    encoded = worker.text([plan_rows[i]["text"] for i in ids], add_special_tokens=False)
    rows = []
    for index, image_id in enumerate(ids):
        meta = plan_rows[image_id]
        rows.append(
            {
                "image_id": image_id,
                "study_id": meta["study_id"],
                "patient_id": meta["patient_id"],
                "split": meta["split"],
                "view_position": meta["view_position"],
                "is_frontal": bool(meta["is_frontal"]),
                "image_codes": codes[index].tolist(),
                "text_ids": encoded["input_ids"][index],
                "text_source": meta["text_source"],
                **{c: meta[c] for c in LABEL_COLUMNS},
            }
        )
    return pa.Table.from_pylist(rows, schema=worker.schema).replace_schema_metadata(
        {**worker.file_metadata, b"chexmix.input_hash": task.input_hash.encode()}
    )


def test_overlapped_pipeline_writes_the_bytes_of_the_sequential_and_legacy_paths(shard_inputs):
    import pyarrow.parquet as pq
    import torch

    from cxr.storage import file_sha256, write_parquet
    from cxr.token_shards import ROW_GROUP_ROWS

    root, tasks, pixels = shard_inputs
    sequential = _worker(root, "seq", overlap=False)
    overlapped = _worker(root, "ovl", overlap=True)
    seen: dict[str, list[str]] = {"seq": [], "ovl": []}  # progress: each shard as it is done
    seq = sequential.process_all(tasks, lambda s: seen["seq"].append(s["shard"]))
    ovl = overlapped.process_all(tasks, lambda s: seen["ovl"].append(s["shard"]))
    assert seen["seq"] == seen["ovl"] == [t.shard for t in tasks]
    assert [s["shard"] for s in ovl] == [t.shard for t in tasks]
    assert [s["sha256"] for s in seq] == [s["sha256"] for s in ovl]
    assert not any(s["reused"] for s in ovl)
    # the codes are the model's own, and the legacy row builder gives the same file bytes
    codes = sequential.vq.encode(torch.from_numpy(pixels)).reshape(len(pixels), -1).numpy()
    start = 0
    for task, summary in zip(tasks, seq, strict=True):
        part = codes[start : start + task.num_items].astype(np.int16)
        start += task.num_items
        table = pq.read_table(root / "seq" / f"{task.shard}.parquet")
        assert table.column("image_codes").to_pylist() == part.tolist()
        legacy = root / "legacy" / f"{task.shard}.parquet"
        sha = write_parquet(_legacy_table(sequential, task, part), legacy, ROW_GROUP_ROWS)
        assert sha == summary["sha256"] == file_sha256(root / "ovl" / f"{task.shard}.parquet")
    # a re-run reuses every shard, in order
    again = overlapped.process_all(tasks)
    assert all(s["reused"] for s in again)
    assert [s["sha256"] for s in again] == [s["sha256"] for s in ovl]
    assert overlapped.process(tasks[1])["sha256"] == ovl[1]["sha256"]


def test_pipeline_errors_surface_and_leave_only_whole_files(shard_inputs, monkeypatch):
    from cxr.storage import leftover_temp_files

    root, tasks, _ = shard_inputs
    fresh = [dataclasses.replace(t, input_hash=f"again-{t.shard}") for t in tasks]
    worker = _worker(root, "failing", overlap=True)
    write = worker.write

    def failing_write(shard, *args):
        if shard.task.shard == tasks[1].shard:
            raise OSError("disk on fire")
        return write(shard, *args)

    monkeypatch.setattr(worker, "write", failing_write)
    with pytest.raises(OSError, match="disk on fire"):
        worker.process_all(fresh)
    assert not leftover_temp_files(root / "failing")
    written = sorted(p.name for p in (root / "failing").glob("shard-*.parquet"))
    assert f"{tasks[1].shard}.parquet" not in written

    monkeypatch.setattr(worker, "write", write)
    missing = dataclasses.replace(tasks[2], shard="shard-00099")
    with pytest.raises(FileNotFoundError):  # the reader thread's error
        worker.process_all([fresh[0], missing, fresh[1]])

    def failing_encode(images):
        raise RuntimeError("device lost")

    monkeypatch.setattr(worker, "encode", failing_encode)
    with pytest.raises(RuntimeError, match="device lost"):
        worker.process_all(fresh)


def test_decode_pixels_orders_checks_sizes_and_pins_only_when_asked():
    import pyarrow as pa

    from cxr.token_shards import decode_pixels

    images = [np.full((3, 4), i, np.uint8) for i in range(3)]
    table = pa.table(
        {
            "image_id": ["c", "a", "b"],
            "pixels": [im.tobytes() for im in images],
            "height": [3, 3, 3],
            "width": [4, 4, 4],
        }
    )
    out = decode_pixels(table, [1, 2, 0])
    assert out.shape == (3, 3, 4) and out[:, 0, 0].tolist() == [1, 2, 0]
    assert not out.is_pinned()
    mixed = table.set_column(2, "height", pa.array([3, 2, 3]))
    with pytest.raises(ValueError, match="share one size"):
        decode_pixels(mixed, [0, 1, 2])
    short = table.set_column(1, "pixels", pa.array([b"x", b"y", b"z"]))
    with pytest.raises(ValueError, match="has 1 pixel bytes, expected 3x4"):
        decode_pixels(short, [0, 1, 2])


def test_token_shards_config_defaults_are_the_encode_options():
    from assets.token_shards import TokenShardsConfig
    from models.vq_tokenizer import EncodeOptions

    config = TokenShardsConfig()
    defaults = EncodeOptions()
    assert config.encode_options() == defaults
    assert (config.precision, config.compile, config.channels_last) == (
        defaults.precision,
        defaults.compile,
        defaults.channels_last,
    )
    with pytest.raises(ValueError, match="precision must be one of"):
        TokenShardsConfig(precision="int8").encode_options()
