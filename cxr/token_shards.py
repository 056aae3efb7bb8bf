"""Token shards: every decoded image as raw VQ codes, with its report's token ids and labels.

One token shard per image shard (``tokens/shard-NNNNN.parquet`` from ``images/shard-NNNNN``), so
the work splits into independent, idempotent tasks exactly like decoding: a shard whose inputs
(image shard hash, joined report/label/split rows, tokenizer hashes) are unchanged is reused,
and ``_manifest.json`` written last marks the set complete.

Codes are stored RAW (int16, ``[0, codebook_size)``), text ids without specials; the vocabulary
offset is applied only when training batches are built (``models.vocabulary``).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cxr.curation import column_name
from cxr.duck import scratch_connection
from cxr.labeler import OBSERVATIONS
from cxr.storage import (
    atomic_path,
    drop_stale_manifest,
    file_sha256,
    parquet_input_hash,
    prune_unlisted,
    write_parquet,
)

MANIFEST_NAME = "_manifest.json"
ROW_GROUP_ROWS = 256
LABEL_COLUMNS = tuple(column_name(o) for o in OBSERVATIONS)


def token_schema(codes_per_image: int) -> pa.Schema:
    """Schema of a token shard for a tokenizer with ``codes_per_image`` codes."""
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("study_id", pa.string(), nullable=False),
            pa.field("patient_id", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("view_position", pa.string()),
            pa.field("is_frontal", pa.bool_(), nullable=False),
            pa.field("image_codes", pa.list_(pa.int16(), codes_per_image), nullable=False),
            pa.field("text_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("text_source", pa.string(), nullable=False),
            *[pa.field(c, pa.float32()) for c in LABEL_COLUMNS],
        ]
    )


@dataclass(frozen=True)
class TokenTask:
    """Tokenize the images of one image shard."""

    shard: str
    input_hash: str
    num_items: int


def plan_token_shards(
    images_dir: Path,
    image_shards: list[dict[str, Any]],
    splits_path: Path,
    sections_path: Path,
    labels_path: Path,
    plan_path: Path,
    tokenizer_hash: str,
) -> list[TokenTask]:
    """Join images with split, text and labels per image (streamed by DuckDB) into a plan."""
    names = [s["path"] for s in image_shards]
    if not names:
        return []

    files = ", ".join(f"'{images_dir / n}'" for n in names)
    con = scratch_connection()
    labels = ", ".join(f"l.{c}" for c in LABEL_COLUMNS)
    con.execute(
        f"""CREATE VIEW joined AS
            SELECT regexp_extract(i.filename, '(shard-[0-9]+)', 1) AS shard,
                   i.image_id, i.study_id, i.patient_id, i.view_position, i.is_frontal,
                   s.split, coalesce(r.text, '') AS text,
                   coalesce(r.text_source, 'no_report') AS text_source, {labels}
            FROM read_parquet([{files}], filename = true) i
            LEFT JOIN read_parquet('{splits_path}') s USING (study_id)
            LEFT JOIN read_parquet('{sections_path}') r USING (study_id)
            LEFT JOIN read_parquet('{labels_path}') l USING (study_id)"""
    )
    with atomic_path(plan_path) as tmp:  # streamed to disk by DuckDB, never held in Python
        con.execute(
            f"COPY (SELECT * FROM joined ORDER BY shard, image_id) TO '{tmp}' "
            f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 2048)"
        )
    con.execute(f"CREATE VIEW plan AS SELECT * FROM read_parquet('{plan_path}')")
    missing = con.execute("SELECT count(*) FROM plan WHERE split IS NULL").fetchall()[0][0]
    if missing:
        raise ValueError(
            f"{missing} images belong to studies that the split manifest does not list; "
            "re-materialize splits after studies"
        )
    shard_hashes = {s["path"].removesuffix(".parquet"): s["sha256"] for s in image_shards}
    rows = con.execute(
        """SELECT shard, count(*)::INTEGER,
                  sha256(string_agg(image_id || '|' || split || '|' || text || '|' ||
                                    coalesce(text_source, ''), '\n' ORDER BY image_id))
           FROM plan GROUP BY shard ORDER BY shard"""
    ).fetchall()
    con.close()
    tasks = []
    for shard, count, joined_hash in rows:
        digest = hashlib.sha256(
            f"{shard_hashes[shard]}|{joined_hash}|{tokenizer_hash}".encode()
        ).hexdigest()
        tasks.append(TokenTask(shard=shard, input_hash=digest, num_items=count))
    return tasks


def current_ray_node_id() -> str:
    """Hex id of the Ray node running this process, or ``""`` outside Ray (never imports Ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return str(ray.get_runtime_context().get_node_id())


@dataclass
class LoadedShard:
    """One image shard read and decoded on the host, ready for the encoder.

    Attributes:
        task: The task.
        image_ids: Image ids in output (sorted) order.
        plan_rows: ``image_id -> plan row`` (split, ids, view, text source, labels).
        images: uint8 (B, H, W) in ``image_ids`` order (pinned when the encoder is on CUDA).
        text_ids: Report token ids (no specials) per image.
    """

    task: TokenTask
    image_ids: list[str]
    plan_rows: dict[str, dict[str, Any]]
    images: Any
    text_ids: list[list[int]]


def decode_pixels(table: pa.Table, order: list[int], pin_memory: bool = False) -> Any:
    """The ``pixels`` of ``table`` rows in ``order`` as one uint8 (B, H, W) torch tensor.

    Each image's bytes are viewed in place (no Python ``bytes`` copies) and copied once into
    the output, which is page-locked with ``pin_memory`` so a host->device copy can be
    asynchronous.

    Raises:
        ValueError: Images of different sizes, or a pixel buffer that does not match its size.
    """
    import torch

    heights = table.column("height").to_numpy()
    widths = table.column("width").to_numpy()
    sizes = set(zip(heights.tolist(), widths.tolist(), strict=True))
    if len(sizes) > 1:
        raise ValueError(
            f"images of one shard must share one size to be batched, got sizes {sorted(sizes)}"
        )
    h, w = sizes.pop() if sizes else (0, 0)
    out = torch.empty((len(order), h, w), dtype=torch.uint8, pin_memory=pin_memory)
    dest = out.numpy()
    pixels = table.column("pixels")
    ids = table.column("image_id")
    for k, i in enumerate(order):
        buf = pixels[i].as_buffer()
        if buf.size != h * w:
            raise ValueError(
                f"image {ids[i].as_py()} has {buf.size} pixel bytes, expected {h}x{w} = {h * w}"
            )
        dest[k] = np.frombuffer(buf, dtype=np.uint8).reshape(h, w)
    return out


class ShardTokenizer:
    """Stateful tokenizer worker: loads both tokenizers once, then tokenizes whole shards.

    Used as a Ray Data ``map_batches`` actor class (one instance per worker, so the model loads
    once) or called directly in-process. Each input row is a ``TokenTask``; each output row is
    that shard's summary: ``shard``, ``num_rows``, ``sha256``, ``reused`` and ``node_id`` (the
    Ray node that ran this worker, ``""`` in-process; for run metadata only, never written into
    a shard or the manifest).

    ``process_all`` runs a three-stage pipeline when ``overlap`` is on: a reader thread reads
    and decodes the next shard (Parquet, pixels into pinned host memory, report tokens) while
    the calling thread feeds the encoder (non-blocking uint8 host->device copies, conversion to
    float on the device, codes copied back asynchronously), and a writer thread builds and
    writes (atomically, + sha256) the previous shard once its codes have arrived. An error in
    any stage is raised in the caller; files are the same bytes as without overlap.
    """

    def __init__(
        self,
        vq_dir: str,
        text_tokenizer_dir: str,
        images_dir: str,
        plan_path: str,
        out_dir: str,
        file_metadata: dict[str, str],
        batch_size: int = 64,
        device: str = "cpu",
        precision: str = "float32",
        compile: bool = False,
        channels_last: bool = True,
        cudnn_benchmark: bool = True,
        overlap: bool = True,
    ) -> None:
        import torch

        from models.text_tokenizer import load_tokenizer
        from models.vq_tokenizer import EncodeOptions, load_checkpoint

        options = EncodeOptions(precision, compile, channels_last, cudnn_benchmark)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.vq = load_checkpoint(vq_dir, map_location=self.device).eval()
        self.vq.set_encode_options(options)
        self.text = load_tokenizer(Path(text_tokenizer_dir))
        self.images_dir, self.out_dir = Path(images_dir), Path(out_dir)
        self.plan_path = Path(plan_path)
        self.batch_size = batch_size
        self.overlap = overlap
        self.pin_memory = self.device.type == "cuda"
        self.file_metadata = {k.encode(): v.encode() for k, v in file_metadata.items()}
        self.schema = token_schema(self.vq.codes_per_image)
        self.node_id = current_ray_node_id()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        """Ray Data entry point: a batch of tasks (columns) -> a batch of summaries."""
        tasks = [
            TokenTask(shard=str(s), input_hash=str(h), num_items=int(n))
            for s, h, n in zip(batch["shard"], batch["input_hash"], batch["num_items"], strict=True)
        ]
        summaries = self.process_all(tasks)
        return {key: [s[key] for s in summaries] for key in summaries[0]} if summaries else {}

    # -- stages ----------------------------------------------------------------------------

    def _reused(self, task: TokenTask) -> dict[str, Any] | None:
        target = self.out_dir / f"{task.shard}.parquet"
        if parquet_input_hash(target) != task.input_hash:
            return None
        return {
            "shard": task.shard,
            "num_rows": pq.read_metadata(target).num_rows,
            "sha256": file_sha256(target),
            "reused": True,
            "node_id": self.node_id,
        }

    def load(self, task: TokenTask) -> LoadedShard | dict[str, Any]:
        """Read stage: the reused shard's summary, or the shard read, decoded and text-tokenized."""
        reused = self._reused(task)
        if reused is not None:
            return reused
        plan = pq.read_table(self.plan_path, filters=[("shard", "=", task.shard)])
        plan_rows = {r["image_id"]: r for r in plan.to_pylist()}
        table = pq.read_table(
            self.images_dir / f"{task.shard}.parquet",
            columns=["image_id", "pixels", "height", "width"],
        )
        all_ids = table.column("image_id").to_pylist()
        order = sorted(range(len(all_ids)), key=lambda i: all_ids[i])
        ids = [all_ids[i] for i in order]
        images = decode_pixels(table, order, pin_memory=self.pin_memory)
        texts = [plan_rows[i]["text"] for i in ids]
        encoded = self.text(texts, add_special_tokens=False)["input_ids"] if texts else []
        return LoadedShard(task, ids, plan_rows, images, encoded)

    def encode(self, images: Any) -> tuple[Any, Any]:
        """Encode stage: uint8 (B, H, W) host images -> (int16 (B, codes) host codes, event).

        Slices of ``batch_size`` go to the device without blocking; on CUDA the codes come back
        into pinned memory asynchronously and ``event`` (a ``torch.cuda.Event``) marks their
        arrival (None on CPU, where the codes are ready on return).
        """
        import torch

        cpi = self.vq.codes_per_image
        if images.shape[0] == 0:
            return torch.zeros((0, cpi), dtype=torch.int16), None
        parts = [
            self.vq.encode_on_device(
                images[start : start + self.batch_size], pad_to=self.batch_size
            )
            for start in range(0, images.shape[0], self.batch_size)
        ]
        codes = torch.cat(parts).reshape(images.shape[0], cpi).to(torch.int16)
        if codes.device.type != "cuda":
            return codes.cpu(), None
        host = torch.empty(codes.shape, dtype=torch.int16, pin_memory=True)
        host.copy_(codes, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def encode_images(self, pixels: list[bytes], heights: list[int], widths: list[int]) -> Any:
        """Raw codes (B, codes_per_image) int16 of a list of uint8 images."""
        import torch

        images = [
            np.frombuffer(p, dtype=np.uint8).reshape(h, w)
            for p, h, w in zip(pixels, heights, widths, strict=True)
        ]
        if not images:
            return np.zeros((0, self.vq.codes_per_image), np.int16)
        codes, event = self.encode(torch.from_numpy(np.stack(images)))
        if event is not None:
            event.synchronize()
        return codes.numpy()

    def build_table(self, shard: LoadedShard, codes: np.ndarray) -> pa.Table:
        """The token shard table: one row per image, in ``shard.image_ids`` order."""
        rows = []
        for index, image_id in enumerate(shard.image_ids):
            meta = shard.plan_rows[image_id]
            rows.append(
                {
                    "image_id": image_id,
                    "study_id": meta["study_id"],
                    "patient_id": meta["patient_id"],
                    "split": meta["split"],
                    "view_position": meta["view_position"],
                    "is_frontal": bool(meta["is_frontal"]),
                    "text_ids": shard.text_ids[index],
                    "text_source": meta["text_source"],
                    **{c: meta[c] for c in LABEL_COLUMNS},
                }
            )
        # The codes column straight from numpy: no Python ints (1,024 per image at 512 px).
        codes_field = self.schema.field("image_codes")
        index = self.schema.get_field_index("image_codes")
        others = pa.schema([f for f in self.schema if f.name != "image_codes"])
        flat = pa.array(np.ascontiguousarray(codes, dtype=np.int16).reshape(-1), type=pa.int16())
        column = pa.FixedSizeListArray.from_arrays(flat, self.vq.codes_per_image)
        table = pa.Table.from_pylist(rows, schema=others).add_column(index, codes_field, column)
        return table.replace_schema_metadata(
            {**self.file_metadata, b"chexmix.input_hash": shard.task.input_hash.encode()}
        )

    def write(self, shard: LoadedShard, codes: Any, event: Any = None) -> dict[str, Any]:
        """Write stage: wait for the codes, build the table, write it atomically + sha256."""
        if event is not None:
            event.synchronize()
        codes = codes.numpy() if hasattr(codes, "numpy") else np.asarray(codes)
        if codes.shape != (len(shard.image_ids), self.vq.codes_per_image):
            raise ValueError(
                f"shard {shard.task.shard}: codes of shape {codes.shape} for "
                f"{len(shard.image_ids)} images of {self.vq.codes_per_image} codes"
            )
        table = self.build_table(shard, codes)
        target = self.out_dir / f"{shard.task.shard}.parquet"
        sha = write_parquet(table, target, row_group_size=ROW_GROUP_ROWS)
        return {
            "shard": shard.task.shard,
            "num_rows": table.num_rows,
            "sha256": sha,
            "reused": False,
            "node_id": self.node_id,
        }

    # -- drivers ---------------------------------------------------------------------------

    def process(self, task: TokenTask) -> dict[str, Any]:
        """Tokenize one shard (or reuse it when its inputs are unchanged)."""
        return self.process_all([task])[0]

    def process_all(
        self,
        tasks: list[TokenTask],
        on_summary: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Tokenize ``tasks`` in order; summaries in the same order.

        ``on_summary`` is called with each shard's summary as soon as it is written (progress).

        With ``overlap``, reading/decoding the next shard and writing the previous one run in
        background threads while this thread feeds the encoder (at most one shard read ahead,
        two writes pending). The first error of any stage is raised here, after pending work is
        cancelled and running work has finished (a shard is only ever written whole).
        """
        tasks = list(tasks)
        summaries: list[dict[str, Any]] = []

        def done(summary: dict[str, Any]) -> None:
            summaries.append(summary)
            if on_summary is not None:
                on_summary(summary)

        if not self.overlap:
            for task in tasks:
                loaded = self.load(task)
                done(
                    loaded
                    if isinstance(loaded, dict)
                    else self.write(loaded, *self.encode(loaded.images))
                )
            return summaries
        self._pipelined(tasks, done)
        return summaries

    def _pipelined(self, tasks: list[TokenTask], done: Callable[[dict[str, Any]], None]) -> None:
        from collections import deque
        from concurrent.futures import Future, ThreadPoolExecutor

        reader = ThreadPoolExecutor(1, thread_name_prefix="token-shard-read")
        writer = ThreadPoolExecutor(1, thread_name_prefix="token-shard-write")
        loads: deque[Future] = deque()
        writes: deque[Future] = deque()
        pending = iter(tasks)

        def read_ahead() -> None:
            task = next(pending, None)
            if task is not None:
                loads.append(reader.submit(self.load, task))

        def raise_failed_write() -> None:
            for future in writes:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]

        try:
            read_ahead()
            while loads:
                loaded = loads.popleft().result()
                read_ahead()  # the next shard is read while this one is on the device
                if isinstance(loaded, dict):
                    reused: Future = Future()
                    reused.set_result(loaded)
                    writes.append(reused)
                else:
                    raise_failed_write()
                    writes.append(writer.submit(self.write, loaded, *self.encode(loaded.images)))
                while writes and (len(writes) > 2 or writes[0].done()):
                    done(writes.popleft().result())
            while writes:
                done(writes.popleft().result())
        finally:
            for future in (*loads, *writes):
                future.cancel()
            reader.shutdown(wait=True, cancel_futures=True)
            writer.shutdown(wait=True, cancel_futures=True)


def finalize_token_shards(
    out_dir: Path, summaries: list[dict[str, Any]], extra: dict[str, Any]
) -> str:
    """Write ``_manifest.json`` last, remove unlisted shards; return the set's content hash."""
    from cxr.storage import combined_hash, write_json

    summaries = sorted(summaries, key=lambda s: s["shard"])
    content_hash = combined_hash([s["sha256"] for s in summaries])
    write_json(
        {
            "shards": [
                {"path": f"{s['shard']}.parquet", "num_rows": s["num_rows"], "sha256": s["sha256"]}
                for s in summaries
            ],
            "num_rows": sum(s["num_rows"] for s in summaries),
            "content_hash": content_hash,
            **extra,
        },
        out_dir / MANIFEST_NAME,
    )
    prune_unlisted(out_dir, "shard-*.parquet", {f"{s['shard']}.parquet" for s in summaries})
    return content_hash


def invalidate_token_manifest(out_dir: Path, tasks: list[TokenTask]) -> bool:
    """Delete ``_manifest.json`` before a run that will rewrite some token shard.

    See ``cxr.storage.drop_stale_manifest``; a run that reuses every listed shard keeps it.

    Returns:
        True if a manifest was deleted.
    """
    planned = {f"{t.shard}.parquet" for t in tasks}
    reusable = all(
        parquet_input_hash(Path(out_dir) / f"{t.shard}.parquet") == t.input_hash for t in tasks
    )
    return drop_stale_manifest(Path(out_dir) / MANIFEST_NAME, planned, reusable)


def verify_shard_set(out_dir: Path) -> dict[str, Any]:
    """Re-hash every shard against the manifest; raise naming the first corrupt or missing file."""
    import json

    manifest_path = Path(out_dir) / MANIFEST_NAME
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} is missing: the token shard set is incomplete")
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = manifest["shards"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"token shard manifest {manifest_path} is unreadable: {exc}") from exc
    for shard in listed:
        path = Path(out_dir) / shard["path"]
        if not path.exists():
            raise FileNotFoundError(f"token shard {path} listed in the manifest is missing")
        actual = file_sha256(path)
        if actual != shard["sha256"]:
            raise ValueError(
                f"token shard {path} is corrupt: sha256 {actual[:16]}... but the manifest says "
                f"{shard['sha256'][:16]}..."
            )
    return manifest
