"""Decode every study image into model-ready uint8 arrays, written as Parquet shards.

The work is planned once (a Parquet plan sorted by image id, cut into fixed-size shards) and
each shard is an independent, idempotent task: it reads its slice of the plan, decodes its
images, and writes ``shard-NNNNN.parquet`` (+ a ``.rejected.parquet`` sidecar) atomically. A
shard whose inputs (image ids, file hashes, pixel config) are unchanged is not decoded again, so
a re-run after a crash only does the missing work and ends byte-identical to a clean run. The
set is complete when ``_manifest.json`` (written last) lists it.

Memory: one shard of images per worker (``images_per_shard`` x ``image_size``^2 bytes), never
the dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cxr.duck import scratch_connection
from cxr.errors import ImageRejected
from cxr.manifest import scrub_paths
from cxr.storage import (
    atomic_path,
    drop_stale_manifest,
    file_sha256,
    parquet_input_hash,
    prune_unlisted,
    write_parquet,
)
from cxr.studies import REJECTED_SCHEMA

IMAGE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("study_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("view_position", pa.string()),
        pa.field("is_frontal", pa.bool_(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("pixels", pa.binary(), nullable=False),
        pa.field("pixel_mean", pa.float32(), nullable=False),
        pa.field("pixel_std", pa.float32(), nullable=False),
        pa.field("source_format", pa.string(), nullable=False),
        pa.field("transfer_syntax", pa.string()),
        pa.field("decoder", pa.string(), nullable=False),
        pa.field("original_rows", pa.int32(), nullable=False),
        pa.field("original_cols", pa.int32(), nullable=False),
        pa.field("photometric", pa.string()),
        pa.field("bits_stored", pa.int32()),
        pa.field("voi", pa.string()),
        pa.field("file_sha256", pa.string(), nullable=False),
    ]
)
SHARD_REJECTED_SCHEMA = REJECTED_SCHEMA  # one quarantine schema for every stage
MANIFEST_NAME = "_manifest.json"
ROW_GROUP_IMAGES = 64


@dataclass(frozen=True)
class ShardTask:
    """One unit of decoding work: the images of plan rows with this ``shard_index``."""

    shard_index: int
    input_hash: str
    num_items: int

    @property
    def name(self) -> str:
        """Sortable shard file stem."""
        return f"shard-{self.shard_index:05d}"


def pixel_config_hash(pixel_config: Any) -> str:
    """Stable hash of a (dataclass) pixel configuration."""
    blob = json.dumps(dataclasses.asdict(pixel_config), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_shards(
    study_images_path: Path,
    manifest_path: Path,
    locations_path: Path,
    plan_path: Path,
    images_per_shard: int,
    config_hash: str,
) -> list[ShardTask]:
    """Write the decoding plan and return one task per shard (small: ids and hashes only).

    The plan holds source paths, so it belongs in the private zone of the storage root.
    """
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    con = scratch_connection()
    con.execute(
        f"""CREATE TABLE plan AS
            SELECT i.*, m.sha256 AS file_sha256, l.rel_path,
                   ((row_number() OVER (ORDER BY i.image_id)) - 1) // {images_per_shard}
                       AS shard_index
            FROM read_parquet('{study_images_path}') i
            JOIN read_parquet('{manifest_path}') m USING (file_id)
            JOIN read_parquet('{locations_path}') l USING (file_id)
            ORDER BY i.image_id"""
    )
    with atomic_path(plan_path) as tmp:  # streamed by DuckDB, never held in Python
        con.execute(
            f"""COPY (SELECT * FROM plan ORDER BY image_id) TO '{tmp}'
                (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {max(images_per_shard, 1024)})"""
        )
    rows = con.execute(
        f"""SELECT shard_index::INTEGER,
                   sha256(string_agg(image_id || ':' || file_sha256, ',' ORDER BY image_id)
                          || '|{config_hash}'),
                   count(*)::INTEGER
            FROM plan GROUP BY shard_index ORDER BY shard_index"""
    ).fetchall()
    con.close()
    return [ShardTask(shard_index=r[0], input_hash=r[1], num_items=r[2]) for r in rows]


def is_reusable(task: ShardTask, out_dir: Path) -> bool:
    """Whether ``task``'s shard (and sidecar) already exist, made from the same inputs.

    The shard is written after its sidecar, so a shard with the task's input hash in its
    metadata means both writes of that task finished.
    """
    shard_path = Path(out_dir) / f"{task.name}.parquet"
    rejected_path = Path(out_dir) / f"{task.name}.rejected.parquet"
    return parquet_input_hash(shard_path) == task.input_hash and rejected_path.exists()


def invalidate_manifest(out_dir: Path, tasks: list[ShardTask]) -> bool:
    """Delete ``_manifest.json`` before a run that will rewrite the shard set.

    Shards are replaced one by one; if the old manifest stayed while they were, a run killed
    half-way would leave a manifest that lists a mix of old and new files. Removing it first
    makes the set read as incomplete until ``finalize_shards`` writes the new manifest. A run
    that reuses every shard of exactly the listed set keeps the manifest.

    Returns:
        True if a manifest was deleted.
    """
    planned = {f"{t.name}.parquet" for t in tasks}
    reusable = all(is_reusable(t, out_dir) for t in tasks)
    return drop_stale_manifest(Path(out_dir) / MANIFEST_NAME, planned, reusable)


def process_shard(
    task: ShardTask, source_root: Path, plan_path: Path, out_dir: Path, pixel_config: Any
) -> dict[str, Any]:
    """Decode one shard's images (or reuse the shard if its inputs are unchanged).

    Returns:
        Summary dict: shard name, path, counts, sha256, whether it was reused.
    """
    from cxr.pixels import decode_dicom, decode_raster

    shard_path = out_dir / f"{task.name}.parquet"
    rejected_path = out_dir / f"{task.name}.rejected.parquet"
    if is_reusable(task, out_dir):
        num_rows = pq.read_metadata(shard_path).num_rows
        return {
            "shard": task.name,
            "num_images": num_rows,
            "num_rejected": pq.read_metadata(rejected_path).num_rows,
            "sha256": file_sha256(shard_path),
            "rejected_sha256": file_sha256(rejected_path),
            "reused": True,
        }
    plan = pq.read_table(plan_path, filters=[("shard_index", "=", task.shard_index)])
    images, rejected = [], []
    for item in plan.to_pylist():
        path = Path(source_root) / item["rel_path"]
        try:
            decode = decode_dicom if item["kind"] == "dicom" else decode_raster
            decoded = decode(path, pixel_config)
        except ImageRejected as exc:
            detail = scrub_paths(exc.detail, path, source_root)
            rejected.append(_rejection(item, exc.reason.value, detail, type(exc).__name__))
            continue
        except Exception as exc:  # a decoder crash on one bad file must not fail the run
            detail = f"{exc!r} at {traceback.extract_tb(exc.__traceback__)[-1].name}"
            detail = scrub_paths(detail, path, source_root)
            rejected.append(_rejection(item, "undecodable", detail, type(exc).__name__))
            continue
        pixels = np.ascontiguousarray(decoded.pixels, dtype=np.uint8)
        images.append(
            {
                "image_id": item["image_id"],
                "study_id": item["study_id"],
                "patient_id": item["patient_id"],
                "view_position": item["view_position"],
                "is_frontal": bool(item["is_frontal"]),
                "height": int(pixels.shape[0]),
                "width": int(pixels.shape[1]),
                "pixels": pixels.tobytes(),
                "pixel_mean": float(pixels.mean()),
                "pixel_std": float(pixels.std()),
                "source_format": decoded.source_format,
                "transfer_syntax": decoded.transfer_syntax or None,
                "decoder": decoded.decoder,
                "original_rows": int(decoded.original_rows),
                "original_cols": int(decoded.original_cols),
                "photometric": decoded.photometric,
                "bits_stored": decoded.bits_stored,
                "voi": decoded.voi,
                "file_sha256": item["file_sha256"],
            }
        )
    meta = {b"chexmix.input_hash": task.input_hash.encode()}
    rejected_table = pa.Table.from_pylist(rejected, schema=SHARD_REJECTED_SCHEMA)
    rejected_sha = write_parquet(rejected_table.replace_schema_metadata(meta), rejected_path)
    table = pa.Table.from_pylist(images, schema=IMAGE_SCHEMA).replace_schema_metadata(meta)
    sha = write_parquet(table, shard_path, row_group_size=ROW_GROUP_IMAGES)  # written last
    return {
        "shard": task.name,
        "num_images": len(images),
        "num_rejected": len(rejected),
        "sha256": sha,
        "rejected_sha256": rejected_sha,
        "reused": False,
    }


def _rejection(item: dict[str, Any], reason: str, detail: str, exc_class: str) -> dict[str, Any]:
    return {
        "file_id": item["file_id"],
        "record_id": item["image_id"],
        "kind": item["kind"],
        "stage": "cxr_images",
        "reason": reason,
        "detail": detail,
        "exception_class": exc_class,
    }


def finalize_shards(out_dir: Path, summaries: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    """Write ``_manifest.json`` last and delete shard files the manifest does not list.

    Returns:
        sha256 over the ordered shard hashes (the content hash of the whole image set).
    """
    from cxr.storage import combined_hash, write_json

    summaries = sorted(summaries, key=lambda s: s["shard"])
    content_hash = combined_hash([s["sha256"] + s["rejected_sha256"] for s in summaries])
    write_json(
        {
            "shards": [
                {
                    "path": f"{s['shard']}.parquet",
                    "rejected_path": f"{s['shard']}.rejected.parquet",
                    "num_images": s["num_images"],
                    "num_rejected": s["num_rejected"],
                    "sha256": s["sha256"],
                    "rejected_sha256": s["rejected_sha256"],
                }
                for s in summaries
            ],
            "num_images": sum(s["num_images"] for s in summaries),
            "num_rejected": sum(s["num_rejected"] for s in summaries),
            "content_hash": content_hash,
            **extra,
        },
        out_dir / MANIFEST_NAME,
    )
    keep = {f"{s['shard']}.parquet" for s in summaries} | {
        f"{s['shard']}.rejected.parquet" for s in summaries
    }
    prune_unlisted(out_dir, "shard-*.parquet", keep)
    return content_hash


def verify_image_shards(out_dir: Path) -> dict[str, Any]:
    """Re-hash every image shard and sidecar against ``_manifest.json`` before they are used.

    Returns:
        The manifest.

    Raises:
        FileNotFoundError: No manifest (the set is incomplete), or a listed file is missing.
        ValueError: The manifest is unreadable or inconsistent, or a file's sha256 differs
            from the manifest's (the message names the file).
    """
    from cxr.storage import combined_hash

    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} is missing: the image shard set is incomplete")
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["shards"]
        pairs = [
            (entry[name_key], entry[sha_key])
            for entry in entries
            for name_key, sha_key in (("path", "sha256"), ("rejected_path", "rejected_sha256"))
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"image shard manifest {manifest_path} is unreadable: {exc!r}") from exc
    expected_hash = combined_hash([e["sha256"] + e["rejected_sha256"] for e in entries])
    if manifest.get("content_hash") != expected_hash:
        raise ValueError(
            f"image shard manifest {manifest_path} is inconsistent: its content_hash does not "
            "match the shard hashes it lists"
        )
    for name, expected in pairs:
        path = out_dir / name
        if not path.exists():
            raise FileNotFoundError(f"image shard {path} listed in the manifest is missing")
        actual = file_sha256(path)
        if actual != expected:
            raise ValueError(
                f"image shard {path} is corrupt: sha256 {actual[:16]}... but the manifest says "
                f"{expected[:16]}..."
            )
    return manifest
