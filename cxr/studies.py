"""Studies: images joined to their report, per layout, with nothing dropped silently.

Outputs (Parquet, pseudonymous ids only):

* ``study_images``: one row per usable-looking image record (header read fine): image id,
  study, patient, file, view position, format.
* ``studies``: one row per study seen in images OR reports: counts, views, the raw report text
  and a ``match_status`` of ``matched``, ``images_without_report`` or ``report_without_images``.
* ``rejected``: files/records that cannot become part of a study (header failures, outside the
  layout, unreadable reports, CSV rows whose image is missing), each with its reason.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cxr.duck import scratch_connection
from cxr.errors import RejectReason
from cxr.manifest import HEADER_OK
from cxr.privacy import Pseudonymizer
from cxr.sources import SourceSpec
from cxr.storage import atomic_path

FRONTAL_VIEWS = ("PA", "AP", "AP SUPINE", "AP AXIAL", "PA LLD", "AP LLD")
BATCH_ROWS = 2048

STUDY_IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("study_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("file_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("view_position", pa.string()),
        pa.field("is_frontal", pa.bool_(), nullable=False),
    ]
)
REPORTS_SCHEMA = pa.schema(
    [
        pa.field("study_key", pa.string(), nullable=False),
        pa.field("accession_key", pa.string()),
        pa.field("patient_id", pa.string()),
        pa.field("report_file_id", pa.string()),
        pa.field("report_text", pa.string(), nullable=False),
    ]
)
REJECTED_SCHEMA = pa.schema(
    [
        pa.field("file_id", pa.string()),
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("exception_class", pa.string()),
    ]
)


@dataclass(frozen=True)
class StudiesResult:
    """Counts from building the studies tables."""

    num_studies: int
    num_images: int
    num_matched: int
    num_images_without_report: int
    num_reports_without_images: int
    num_rejected: int


def normalize_view(view: str | None) -> str | None:
    """Upper-cased, whitespace-folded view position ('' -> None); 'LATERAL' -> 'LL'."""
    if view is None:
        return None
    text = " ".join(str(view).upper().split())
    if not text or text == "?":
        return None
    return {"LATERAL": "LL", "L": "LL", "LAT": "LL"}.get(text, text)


def decode_report_bytes(data: bytes) -> str | None:
    """Report text from raw bytes (UTF-8, else Latin-1); None if binary or blank."""
    if b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text if text.strip() else None


def build_studies(
    spec: SourceSpec,
    pseudo: Pseudonymizer,
    manifest_path: Path,
    locations_path: Path,
    out_dir: Path,
) -> StudiesResult:
    """Write ``studies.parquet``, ``study_images.parquet`` and ``rejected.parquet`` to out_dir."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="chexmix-studies-") as tmp_dir:
        tmp = Path(tmp_dir)
        images_path, reports_path, rejected_path = (
            tmp / "images.parquet",
            tmp / "reports.parquet",
            tmp / "rejected.parquet",
        )
        con = scratch_connection()
        con.execute(
            f"""CREATE VIEW manifest AS SELECT m.*, l.rel_path
                FROM read_parquet('{manifest_path}') m
                JOIN read_parquet('{locations_path}') l USING (file_id)"""
        )
        with pq.ParquetWriter(rejected_path, REJECTED_SCHEMA) as rejected:
            rejected.write_table(_header_rejections(con))
            if spec.layout == "images-csv":
                _csv_records(spec, pseudo, con, images_path, reports_path, rejected)
            else:
                _file_images(con, images_path, rejected)
                _file_reports(spec, con, reports_path, rejected)
        result = _join(con, images_path, reports_path, rejected_path, out_dir)
        con.close()
    return result


def _header_rejections(con: duckdb.DuckDBPyConnection) -> pa.Table:
    table = con.sql(
        f"""SELECT file_id, file_id AS record_id, kind, 'manifest' AS stage,
                   header_status AS reason, header_detail AS detail,
                   'ImageRejected' AS exception_class
            FROM manifest WHERE header_status <> '{HEADER_OK}' ORDER BY file_id"""
    ).to_arrow_table()
    return table.cast(REJECTED_SCHEMA)


def _file_images(con: duckdb.DuckDBPyConnection, images_path: Path, rejected: Any) -> None:
    frontal = ", ".join(f"'{v}'" for v in FRONTAL_VIEWS)
    reader = con.sql(
        f"""SELECT image_id, study_id, patient_id, file_id, kind,
                   CASE WHEN upper(trim(view_position)) IN ('LATERAL', 'L', 'LAT') THEN 'LL'
                        WHEN trim(coalesce(view_position, '')) IN ('', '?') THEN NULL
                        ELSE upper(trim(view_position)) END AS view_position,
                   coalesce(upper(trim(view_position)) IN ({frontal}), false) AS is_frontal,
                   row_number() OVER (PARTITION BY image_id ORDER BY file_id) AS copy_rank
            FROM manifest
            WHERE kind IN ('dicom', 'raster') AND header_status = '{HEADER_OK}'
            ORDER BY image_id NULLS LAST, file_id"""
    ).to_arrow_reader(BATCH_ROWS)
    with pq.ParquetWriter(images_path, STUDY_IMAGES_SCHEMA) as writer:
        for batch in reader:
            good, bad = [], []
            for row in batch.to_pylist():
                missing = [k for k in ("image_id", "study_id", "patient_id") if not row[k]]
                if not missing and row["copy_rank"] > 1:
                    bad.append(
                        {
                            "file_id": row["file_id"],
                            "record_id": row["file_id"],
                            "kind": row["kind"],
                            "stage": "studies",
                            "reason": RejectReason.DUPLICATE_INSTANCE.value,
                            "detail": "another file carries the same SOPInstanceUID; the first "
                            "(by file id) is ingested",
                            "exception_class": None,
                        }
                    )
                elif missing:
                    bad.append(
                        {
                            "file_id": row["file_id"],
                            "record_id": row["file_id"],
                            "kind": row["kind"],
                            "stage": "studies",
                            "reason": RejectReason.MISSING_IDENTIFIERS.value,
                            "detail": f"no {', '.join(missing)} in header or path; expected "
                            "SOPInstanceUID, StudyInstanceUID and PatientID",
                            "exception_class": None,
                        }
                    )
                else:
                    good.append({k: v for k, v in row.items() if k != "copy_rank"})
            writer.write_table(pa.Table.from_pylist(good, schema=STUDY_IMAGES_SCHEMA))
            if bad:
                rejected.write_table(pa.Table.from_pylist(bad, schema=REJECTED_SCHEMA))


def _file_reports(
    spec: SourceSpec, con: duckdb.DuckDBPyConnection, reports_path: Path, rejected: Any
) -> None:
    reader = con.sql(
        """SELECT file_id, rel_path, study_id, accession_id, patient_id FROM manifest
           WHERE kind = 'report' ORDER BY file_id"""
    ).to_arrow_reader(BATCH_ROWS)
    with pq.ParquetWriter(reports_path, REPORTS_SCHEMA) as writer:
        for batch in reader:
            good, bad = [], []
            for row in batch.to_pylist():
                text = decode_report_bytes((Path(spec.root) / row["rel_path"]).read_bytes())
                if text is None:
                    bad.append(
                        {
                            "file_id": row["file_id"],
                            "record_id": row["file_id"],
                            "kind": "report",
                            "stage": "studies",
                            "reason": RejectReason.UNREADABLE_REPORT.value,
                            "detail": "report file is empty or binary; expected plain text",
                            "exception_class": None,
                        }
                    )
                    continue
                good.append(
                    {
                        "study_key": row["study_id"],
                        # dicom-tree: the file stem may be an accession number instead of a UID
                        "accession_key": row["accession_id"],
                        "patient_id": row["patient_id"],
                        "report_file_id": row["file_id"],
                        "report_text": text,
                    }
                )
            writer.write_table(pa.Table.from_pylist(good, schema=REPORTS_SCHEMA))
            if bad:
                rejected.write_table(pa.Table.from_pylist(bad, schema=REJECTED_SCHEMA))


def _csv_records(
    spec: SourceSpec,
    pseudo: Pseudonymizer,
    con: duckdb.DuckDBPyConnection,
    images_path: Path,
    reports_path: Path,
    rejected: Any,
) -> None:
    options = spec.images_csv
    csv_path = Path(spec.root) / options.csv_name
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"images-csv layout expects the CSV {csv_path}; set images_csv.csv_name to its name"
        )
    files = dict(
        con.execute(
            f"SELECT rel_path, file_id FROM manifest WHERE header_status = '{HEADER_OK}'"
            " AND kind IN ('raster', 'dicom')"
        ).fetchall()
    )
    convert = pacsv.ConvertOptions(column_types={}, strings_can_be_null=False)
    reader = pacsv.open_csv(
        csv_path,
        read_options=pacsv.ReadOptions(block_size=1 << 22),
        convert_options=convert,
    )
    needed = [options.image_column, options.patient_column, options.text_column]
    missing = [c for c in needed if c not in reader.schema.names]
    if missing:
        raise ValueError(
            f"{csv_path.name} lacks columns {missing}; it has {reader.schema.names}. "
            "Map them with the images_csv options."
        )
    seen_reports: set[tuple[str, str]] = set()
    referenced: set[str] = set()
    with (
        pq.ParquetWriter(images_path, STUDY_IMAGES_SCHEMA) as images,
        pq.ParquetWriter(reports_path, REPORTS_SCHEMA) as reports,
    ):
        row_number = 0
        for batch in reader:
            image_rows, report_rows, bad = [], [], []
            for row in batch.to_pylist():
                row_number += 1
                filename = str(row[options.image_column] or "").strip()
                patient = str(row[options.patient_column] or "").strip()
                text = str(row[options.text_column] or "")
                record_id = f"{options.csv_name}:row{row_number}"
                rel = f"{options.image_dir.strip('/')}/{filename}".lstrip("/")
                if not patient:
                    bad.append(_bad_record(record_id, None, "patient column is empty"))
                    continue
                study_raw = (
                    str(row.get(options.study_column) or "").strip() if options.study_column else ""
                ) or f"{patient}/{hashlib.sha256(text.encode()).hexdigest()[:16]}"
                study_id = pseudo.hash_id("study", study_raw)
                patient_id = pseudo.hash_id("patient", patient)
                if text.strip() and (study_id, text) not in seen_reports:
                    seen_reports.add((study_id, text))
                    report_rows.append(
                        {
                            "study_key": study_id,
                            "accession_key": None,
                            "patient_id": patient_id,
                            "report_file_id": None,
                            "report_text": text,
                        }
                    )
                file_id = files.get(rel)
                if file_id is None:
                    bad.append(
                        _bad_record(
                            record_id,
                            None,
                            f"image file {filename!r} not found or "
                            "unreadable under the image folder",
                        )
                    )
                    continue
                referenced.add(rel)
                view = normalize_view(row.get(options.view_column)) if options.view_column else None
                image_rows.append(
                    {
                        "image_id": pseudo.hash_id("image", f"{patient}/{filename}"),
                        "study_id": study_id,
                        "patient_id": patient_id,
                        "file_id": file_id,
                        "kind": "raster" if not rel.lower().endswith(".dcm") else "dicom",
                        "view_position": view,
                        "is_frontal": view in FRONTAL_VIEWS,
                    }
                )
            images.write_table(pa.Table.from_pylist(image_rows, schema=STUDY_IMAGES_SCHEMA))
            reports.write_table(pa.Table.from_pylist(report_rows, schema=REPORTS_SCHEMA))
            if bad:
                rejected.write_table(pa.Table.from_pylist(bad, schema=REJECTED_SCHEMA))
    orphans = [
        {
            **_bad_record(file_id, file_id, "image file is not referenced by any CSV row"),
            "kind": "raster",
        }
        for rel, file_id in sorted(files.items())
        if rel not in referenced
    ]
    if orphans:
        rejected.write_table(pa.Table.from_pylist(orphans, schema=REJECTED_SCHEMA))


def _bad_record(record_id: str, file_id: str | None, detail: str) -> dict[str, Any]:
    return {
        "file_id": file_id,
        "record_id": record_id,
        "kind": "csv_row",
        "stage": "studies",
        "reason": RejectReason.UNMATCHED_RECORD.value,
        "detail": detail,
        "exception_class": None,
    }


def _join(
    con: duckdb.DuckDBPyConnection,
    images_path: Path,
    reports_path: Path,
    rejected_path: Path,
    out_dir: Path,
) -> StudiesResult:
    con.execute(f"CREATE VIEW images AS SELECT * FROM read_parquet('{images_path}')")
    con.execute(
        """CREATE TABLE accession_map AS
           SELECT accession_id, min(study_id) AS study_id FROM manifest
           WHERE kind = 'dicom' AND accession_id IS NOT NULL AND study_id IS NOT NULL
           GROUP BY accession_id"""
    )
    # A report's study: its own key if images carry it, else the study of the images whose
    # accession number is the report's file stem (dicom-tree), else its own key (no images).
    con.execute(
        f"""CREATE TABLE reports AS
            SELECT CASE WHEN r.study_key IN (SELECT study_id FROM images) THEN r.study_key
                        ELSE coalesce(a.study_id, r.study_key) END AS study_id,
                   r.patient_id, r.report_file_id, r.report_text
            FROM read_parquet('{reports_path}') r
            LEFT JOIN accession_map a ON a.accession_id = r.accession_key"""
    )
    con.execute(
        """CREATE TABLE study_images_agg AS
           SELECT study_id, any_value(patient_id) AS patient_id, count(*) AS num_images,
                  count(*) FILTER (WHERE is_frontal) AS num_frontal,
                  list_sort(list_distinct(list(view_position) FILTER (view_position IS NOT NULL)))
                      AS views
           FROM images GROUP BY study_id"""
    )
    studies_sql = """
        WITH linked AS (
            SELECT study_id, any_value(patient_id) AS patient_id,
                   min(report_file_id) AS report_file_id,
                   string_agg(DISTINCT report_text, '\n\n') AS report_text
            FROM reports GROUP BY study_id
        )
        SELECT coalesce(i.study_id, l.study_id) AS study_id,
               coalesce(i.patient_id, l.patient_id) AS patient_id,
               coalesce(i.num_images, 0)::INTEGER AS num_images,
               coalesce(i.num_frontal, 0)::INTEGER AS num_frontal,
               coalesce(i.views, []::VARCHAR[]) AS views,
               l.report_file_id, l.report_text,
               CASE WHEN i.study_id IS NULL THEN 'report_without_images'
                    WHEN l.study_id IS NULL THEN 'images_without_report'
                    ELSE 'matched' END AS match_status
        FROM study_images_agg i FULL OUTER JOIN linked l ON i.study_id = l.study_id
        ORDER BY study_id"""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, sql in (
        ("studies", studies_sql),
        ("study_images", "SELECT * FROM images ORDER BY image_id"),
        ("rejected", f"SELECT * FROM read_parquet('{rejected_path}') ORDER BY record_id"),
    ):
        target = out_dir / f"{name}.parquet"
        reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
        with (
            atomic_path(target) as tmp_target,
            pq.ParquetWriter(tmp_target, reader.schema, compression="zstd") as writer,
        ):
            for batch in reader:
                writer.write_batch(batch)
    counts = con.execute(
        f"""SELECT count(*),
                   count(*) FILTER (WHERE match_status = 'matched'),
                   count(*) FILTER (WHERE match_status = 'images_without_report'),
                   count(*) FILTER (WHERE match_status = 'report_without_images')
            FROM read_parquet('{out_dir / "studies.parquet"}')"""
    ).fetchall()[0]
    num_images = con.execute("SELECT count(*) FROM images").fetchall()[0][0]
    num_rejected = con.execute(
        f"SELECT count(*) FROM read_parquet('{out_dir / 'rejected.parquet'}')"
    ).fetchall()[0][0]
    return StudiesResult(
        num_studies=counts[0],
        num_images=num_images,
        num_matched=counts[1],
        num_images_without_report=counts[2],
        num_reports_without_images=counts[3],
        num_rejected=num_rejected,
    )
