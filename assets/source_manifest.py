"""``source_manifest``: every file under the source root, hashed, with its DICOM header facts."""

import dagster as dg
import duckdb

from assets import paths
from cxr.manifest import scan_source
from cxr.previews import markdown_table
from pipelines.lineage import record_lineage
from pipelines.resources import PrivacyResource, SourceResource, StorageResource


class SourceManifestConfig(dg.Config):
    """How the scan runs."""

    num_threads: int = 4
    """Threads reading headers and hashing files (I/O bound)."""


@dg.asset(
    group_name="ingest",
    kinds={"parquet", "dicom"},
    description="One row per file under the source root: pseudonymous ids, content hash and the "
    "header fields ingest needs (read without pixel data). Incremental: unchanged files are "
    "not read again.",
)
def source_manifest(
    context: dg.AssetExecutionContext,
    config: SourceManifestConfig,
    source: SourceResource,
    storage: StorageResource,
    privacy: PrivacyResource,
) -> dg.MaterializeResult:
    """Scan the configured archive into ``source/manifest.parquet``."""
    spec = source.spec()
    manifest_path = storage.path(*paths.SOURCE_MANIFEST)
    result = scan_source(
        spec,
        privacy.pseudonymizer(storage),
        manifest_path,
        storage.path(*paths.SOURCE_LOCATIONS),
        num_threads=config.num_threads,
    )
    context.log.info(
        f"scanned {result.num_files} files: {result.num_rescanned} read, "
        f"{result.num_reused} unchanged, {result.num_removed} gone"
    )
    by_kind = duckdb.sql(
        f"""SELECT kind, header_status AS status, count(*) AS files,
                   round(sum(size_bytes) / 1e6, 1) AS megabytes
            FROM read_parquet('{manifest_path}') GROUP BY ALL ORDER BY files DESC"""
    ).fetchall()
    table = [dict(zip(("kind", "status", "files", "megabytes"), r, strict=True)) for r in by_kind]
    storage.catalog().register_views({"source_manifest": str(manifest_path)})
    lineage = record_lineage(
        context,
        storage,
        [str(manifest_path)],
        result.manifest_sha256,
        inputs=[],
        config={"layout": spec.layout, "root": str(spec.root), **config.model_dump()},
    )
    return dg.MaterializeResult(
        metadata={
            "num_files": result.num_files,
            "num_read": result.num_rescanned,
            "num_unchanged": result.num_reused,
            "num_removed": result.num_removed,
            "layout": spec.layout,
            "path": dg.MetadataValue.path(str(manifest_path)),
            "sha256": result.manifest_sha256,
            **lineage,
            "files_by_kind": dg.MetadataValue.md(
                markdown_table(table, ["kind", "status", "files", "megabytes"])
            ),
        },
        data_version=dg.DataVersion(result.manifest_sha256),
    )
