"""The ingest quarantine: every file or record ingest could not use, with its reason.

Each ingest stage sets its rejects aside in its own table (manifest header failures and studies
join problems in ``studies/rejected.parquet``, decode failures in one
``images/shard-NNNNN.rejected.parquet`` sidecar per image shard); this module unions them into
one table and summarises it by reason, so the diagnosis of an archive is readable even when a
quality gate then stops the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from cxr.storage import atomic_path

QUARANTINE_COLUMNS = "file_id, record_id, kind, stage, reason, detail, exception_class"


def quarantine_sources(studies_rejected: Path, images_dir: Path) -> list[Path]:
    """The per-stage reject tables that exist now, in stage order.

    Decode sidecars come from the image shard set's ``_manifest.json`` when it exists (so a
    sidecar of an older, larger shard set is never read), else from the folder.
    """
    sources = [Path(studies_rejected)] if Path(studies_rejected).exists() else []
    images_dir = Path(images_dir)
    manifest = images_dir / "_manifest.json"
    if manifest.exists():
        listed = [
            images_dir / s["rejected_path"] for s in json.loads(manifest.read_text())["shards"]
        ]
    else:
        listed = sorted(images_dir.glob("shard-[0-9][0-9][0-9][0-9][0-9].rejected.parquet"))
    return sources + [p for p in listed if p.exists()]


def _union(sources: list[Path]) -> str:
    if not sources:  # nothing was set aside yet: an empty table of the right columns
        return (
            "SELECT NULL::VARCHAR AS file_id, NULL::VARCHAR AS record_id, NULL::VARCHAR AS kind, "
            "NULL::VARCHAR AS stage, NULL::VARCHAR AS reason, NULL::VARCHAR AS detail, "
            "NULL::VARCHAR AS exception_class WHERE false"
        )
    files = ", ".join(f"'{p}'" for p in sources)
    return f"SELECT {QUARANTINE_COLUMNS} FROM read_parquet([{files}])"


def write_quarantine(sources: list[Path], target: Path) -> int:
    """Union ``sources`` into ``target`` (zstd Parquet, atomically), ordered by stage and record.

    Returns:
        The number of quarantined rows.
    """
    con = duckdb.connect()
    try:
        with atomic_path(Path(target)) as tmp:
            con.execute(
                f"COPY ({_union(sources)} ORDER BY stage, record_id) TO '{tmp}' "
                "(FORMAT parquet, COMPRESSION zstd)"
            )
        return con.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchall()[0][0]
    finally:
        con.close()


def counts_by_reason(sources: list[Path]) -> list[tuple[str, str, int]]:
    """``(reason, stage, count)`` over reject tables or the quarantine, largest count first."""
    con = duckdb.connect()
    try:
        return [
            (reason, stage, int(n))
            for reason, stage, n in con.execute(
                f"SELECT reason, stage, count(*) AS n FROM ({_union(sources)}) "
                "GROUP BY ALL ORDER BY n DESC, reason, stage"
            ).fetchall()
        ]
    finally:
        con.close()


def example_details(sources: list[Path]) -> list[tuple[str, str]]:
    """One example ``detail`` per reason, sorted by reason."""
    con = duckdb.connect()
    try:
        return con.execute(
            f"SELECT reason, any_value(detail) FROM ({_union(sources)}) GROUP BY reason "
            "ORDER BY reason"
        ).fetchall()
    finally:
        con.close()


def summary_line(by_reason: list[tuple[str, str, int]], limit: int = 8) -> str:
    """A one-line summary, e.g. ``14 quarantined: non_cxr 9 (cxr_images), not_dicom 2 ...``."""
    total = sum(n for _, _, n in by_reason)
    if not total:
        return "nothing quarantined"
    parts = [f"{reason} {n} ({stage})" for reason, stage, n in by_reason[:limit]]
    if len(by_reason) > limit:
        parts.append(f"{len(by_reason) - limit} more reasons")
    return f"{total} quarantined: " + ", ".join(parts)
