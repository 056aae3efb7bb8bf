"""The source manifest: one row per file under the source root, built incrementally.

Two Parquet files come out of a scan:

* ``manifest.parquet`` (shareable): pseudonymous ids, file size, content hash, the header
  fields the pipeline needs (read without pixel data) and a header status. No paths, no PHI.
* ``locations.parquet`` (private zone): ``file_id -> rel_path, size, mtime``: how to find the
  file again. Paths of raw PACS exports can contain UIDs, so they never leave ``private/``.

A re-scan re-reads only files whose (path, size, mtime) changed; the rest are carried over from
the previous manifest by a DuckDB join, so memory stays bounded by the batch size, not by the
archive.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cxr.duck import scratch_connection
from cxr.errors import ImageRejected, RejectReason
from cxr.privacy import Pseudonymizer
from cxr.sources import ListedFile, SourceSpec, list_source
from cxr.storage import atomic_path, file_sha256

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("file_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("patient_id", pa.string()),
        pa.field("study_id", pa.string()),
        pa.field("series_id", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("accession_id", pa.string()),
        pa.field("modality", pa.string()),
        pa.field("body_part", pa.string()),
        pa.field("view_position", pa.string()),
        pa.field("sop_class_uid", pa.string()),
        pa.field("transfer_syntax_uid", pa.string()),
        pa.field("photometric", pa.string()),
        pa.field("rows", pa.int32()),
        pa.field("cols", pa.int32()),
        pa.field("bits_stored", pa.int32()),
        pa.field("num_frames", pa.int32()),
        pa.field("samples_per_pixel", pa.int32()),
        pa.field("header_status", pa.string(), nullable=False),
        pa.field("header_detail", pa.string()),
    ]
)
LOCATIONS_SCHEMA = pa.schema(
    [
        pa.field("file_id", pa.string(), nullable=False),
        pa.field("rel_path", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("mtime_ns", pa.int64(), nullable=False),
    ]
)
HEADER_OK = "ok"
SCAN_BATCH_ROWS = 2048


@dataclass(frozen=True)
class ScanResult:
    """What a scan did.

    Attributes:
        num_files: Rows in the new manifest.
        num_rescanned: Files read this time (new or changed).
        num_reused: Rows carried over unchanged from the previous manifest.
        num_removed: Rows of the previous manifest whose file is gone.
        manifest_sha256: Content hash of the new manifest file.
    """

    num_files: int
    num_rescanned: int
    num_reused: int
    num_removed: int
    manifest_sha256: str


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def header_fields(ds: Any, pseudo: Pseudonymizer) -> dict[str, Any]:
    """The manifest's header columns from a pixel-less DICOM dataset; ids pseudonymised."""

    def hashed(kind: str, keyword: str) -> str | None:
        raw = _clean(ds.get(keyword))
        return pseudo.hash_id(kind, raw) if raw else None

    meta = getattr(ds, "file_meta", None)
    transfer_syntax = _clean(meta.get("TransferSyntaxUID")) if meta is not None else None
    sop_class = _clean(ds.get("SOPClassUID"))
    if sop_class is None and meta is not None:
        sop_class = _clean(meta.get("MediaStorageSOPClassUID"))
    return {
        "patient_id": hashed("patient", "PatientID"),
        "study_id": hashed("study", "StudyInstanceUID"),
        "series_id": hashed("series", "SeriesInstanceUID"),
        "image_id": hashed("image", "SOPInstanceUID"),
        "accession_id": hashed("accession", "AccessionNumber"),
        "modality": _clean(ds.get("Modality")),
        "body_part": _clean(ds.get("BodyPartExamined")),
        "view_position": _clean(ds.get("ViewPosition")),
        "sop_class_uid": sop_class,
        "transfer_syntax_uid": transfer_syntax,
        "photometric": _clean(ds.get("PhotometricInterpretation")),
        "rows": _int_or_none(ds.get("Rows")),
        "cols": _int_or_none(ds.get("Columns")),
        "bits_stored": _int_or_none(ds.get("BitsStored")),
        "num_frames": _int_or_none(ds.get("NumberOfFrames")) or 1,
        "samples_per_pixel": _int_or_none(ds.get("SamplesPerPixel")),
    }


def _raster_fields(path: Path) -> dict[str, Any]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            cols, rows = image.size
            mode = image.mode
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageRejected(
            RejectReason.UNREADABLE_RASTER, f"PIL cannot open {path.suffix} file: {exc}"
        ) from exc
    return {"rows": rows, "cols": cols, "photometric": mode, "num_frames": 1}


def scrub_paths(text: str, path: Path, source_root: Path) -> str:
    """Remove source paths (which may contain UIDs or names) from an error message."""
    for value in (str(path), str(source_root), path.name):
        text = text.replace(value, "<file>")
    return text


def scan_file(listed: ListedFile, spec: SourceSpec, pseudo: Pseudonymizer) -> dict[str, Any]:
    """One manifest row for one listed file (reads the header only, hashes the bytes)."""
    from cxr.pixels import read_dicom_header

    path = Path(spec.root) / listed.rel_path
    row: dict[str, Any] = {name: None for name in MANIFEST_SCHEMA.names}
    row.update(
        file_id=pseudo.hash_id("file", listed.rel_path),
        kind=listed.kind,
        size_bytes=listed.size_bytes,
        sha256=file_sha256(path),
        header_status=HEADER_OK,
    )
    try:
        if listed.kind == "dicom":
            row.update(header_fields(read_dicom_header(path), pseudo))
        elif listed.kind == "raster":
            row.update(_raster_fields(path))
        elif listed.kind == "other":
            raise ImageRejected(
                RejectReason.OUTSIDE_LAYOUT,
                f"file is neither an image nor a report under the {spec.layout!r} layout",
            )
    except ImageRejected as rejected:
        row["header_status"] = rejected.reason.value
        row["header_detail"] = scrub_paths(rejected.detail, path, Path(spec.root))
    # Path-derived ids (mimic-cxr) take precedence over header ids: the archive's own keys.
    if listed.raw_patient:
        row["patient_id"] = pseudo.hash_id("patient", listed.raw_patient)
    if listed.raw_study:
        row["study_id"] = pseudo.hash_id("study", listed.raw_study)
        if listed.kind == "report" and spec.layout == "dicom-tree":
            row["accession_id"] = pseudo.hash_id("accession", listed.raw_study)
    if listed.raw_image:
        row["image_id"] = pseudo.hash_id("image", listed.raw_image)
    return row


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def scan_source(
    spec: SourceSpec,
    pseudo: Pseudonymizer,
    manifest_path: Path,
    locations_path: Path,
    num_threads: int = 4,
) -> ScanResult:
    """Scan ``spec.root`` and (re)write the manifest and the private locations file.

    Unchanged files (same relative path, size and mtime as in the previous locations file) are
    not read again: their previous manifest rows are carried over.
    """
    manifest_path, locations_path = Path(manifest_path), Path(locations_path)
    with tempfile.TemporaryDirectory(prefix="chexmix-scan-") as tmp_dir:
        tmp = Path(tmp_dir)
        listing_path = tmp / "listing.parquet"
        _write_listing(spec, listing_path)
        con = scratch_connection()
        have_previous = manifest_path.exists() and locations_path.exists()
        if have_previous:
            unchanged_sql = f"""
                SELECT l.rel_path, loc.file_id FROM read_parquet('{listing_path}') l
                JOIN read_parquet('{locations_path}') loc
                  ON l.rel_path = loc.rel_path AND l.size_bytes = loc.size_bytes
                 AND l.mtime_ns = loc.mtime_ns"""
            con.execute(f"CREATE TABLE unchanged AS {unchanged_sql}")
            num_removed = con.execute(
                f"""SELECT count(*) FROM read_parquet('{locations_path}') loc
                    ANTI JOIN read_parquet('{listing_path}') l ON l.rel_path = loc.rel_path"""
            ).fetchall()[0][0]
        else:
            con.execute("CREATE TABLE unchanged (rel_path VARCHAR, file_id VARCHAR)")
            num_removed = 0
        to_scan = con.sql(
            f"""SELECT l.* FROM read_parquet('{listing_path}') l
                ANTI JOIN unchanged u ON l.rel_path = u.rel_path ORDER BY l.rel_path"""
        ).to_arrow_reader(SCAN_BATCH_ROWS)
        new_rows_path = tmp / "new_rows.parquet"
        num_rescanned = 0
        with (
            pq.ParquetWriter(new_rows_path, MANIFEST_SCHEMA) as writer,
            ThreadPoolExecutor(max_workers=num_threads) as pool,
        ):
            for batch in to_scan:
                listed = [ListedFile(**row) for row in batch.to_pylist()]
                rows = list(pool.map(lambda item: scan_file(item, spec, pseudo), listed))
                writer.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
                num_rescanned += len(rows)
        reused_sql = (
            f"""SELECT m.* FROM read_parquet('{manifest_path}') m
                SEMI JOIN unchanged u ON m.file_id = u.file_id"""
            if have_previous
            else f"SELECT * FROM read_parquet('{new_rows_path}') WHERE false"
        )
        num_reused = con.execute("SELECT count(*) FROM unchanged").fetchall()[0][0]
        manifest_reader = con.sql(
            f"""SELECT * FROM ({reused_sql} UNION ALL
                              SELECT * FROM read_parquet('{new_rows_path}'))
                ORDER BY file_id"""
        ).to_arrow_reader(SCAN_BATCH_ROWS)
        _stream_to_parquet(manifest_reader, MANIFEST_SCHEMA, manifest_path)
        pseudo_file_ids = con.sql(
            f"SELECT rel_path, size_bytes, mtime_ns FROM read_parquet('{listing_path}')"
            " ORDER BY rel_path"
        ).to_arrow_reader(SCAN_BATCH_ROWS)
        _stream_to_parquet(
            (
                pa.RecordBatch.from_pylist(
                    [
                        {"file_id": pseudo.hash_id("file", r["rel_path"]), **r}
                        for r in batch.to_pylist()
                    ],
                    schema=LOCATIONS_SCHEMA,
                )
                for batch in pseudo_file_ids
            ),
            LOCATIONS_SCHEMA,
            locations_path,
        )
        num_files = con.execute(f"SELECT count(*) FROM read_parquet('{manifest_path}')").fetchall()[
            0
        ][0]
        con.close()
    return ScanResult(
        num_files=num_files,
        num_rescanned=num_rescanned,
        num_reused=num_reused,
        num_removed=num_removed,
        manifest_sha256=file_sha256(manifest_path),
    )


_LISTING_SCHEMA = pa.schema(
    [
        ("rel_path", pa.string()),
        ("kind", pa.string()),
        ("size_bytes", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("raw_patient", pa.string()),
        ("raw_study", pa.string()),
        ("raw_image", pa.string()),
    ]
)


def _write_listing(spec: SourceSpec, path: Path) -> None:
    with pq.ParquetWriter(path, _LISTING_SCHEMA) as writer:
        for batch in _batched(list_source(spec), SCAN_BATCH_ROWS):
            writer.write_table(
                pa.Table.from_pylist([item.__dict__ for item in batch], schema=_LISTING_SCHEMA)
            )


def _stream_to_parquet(batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: Path) -> None:
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_table(pa.Table.from_batches([batch]).cast(schema))
