"""``studies``: images joined to their report per study; unmatched ones listed, not dropped."""

import dagster as dg
import duckdb

from assets import paths
from cxr.previews import markdown_table
from cxr.studies import build_studies
from pipelines.lineage import content_hash_of, record_lineage
from pipelines.resources import PrivacyResource, SourceResource, StorageResource


@dg.asset(
    group_name="ingest",
    deps=["source_manifest"],
    kinds={"parquet"},
    description="One row per study (images + report text, match status) and one per study "
    "image (view position, frontal flag). Images without a report and reports without images "
    "are kept and counted.",
)
def studies(
    context: dg.AssetExecutionContext,
    source: SourceResource,
    storage: StorageResource,
    privacy: PrivacyResource,
) -> dg.MaterializeResult:
    """Build ``studies/studies.parquet`` and ``studies/study_images.parquet``."""
    spec = source.spec()
    manifest_path = storage.path(*paths.SOURCE_MANIFEST)
    if not manifest_path.exists():
        raise dg.Failure(f"{manifest_path} is missing: materialize source_manifest first")
    result = build_studies(
        spec,
        privacy.pseudonymizer(storage),
        manifest_path,
        storage.path(*paths.SOURCE_LOCATIONS),
        storage.path(*paths.STUDIES_DIR),
    )
    studies_path, images_path = storage.path(*paths.STUDIES), storage.path(*paths.STUDY_IMAGES)
    views = duckdb.sql(
        f"""SELECT coalesce(view_position, '(none)') AS view, count(*) AS images
            FROM read_parquet('{images_path}') GROUP BY ALL ORDER BY images DESC"""
    ).fetchall()
    storage.catalog().register_views(
        {
            "studies": str(studies_path),
            "study_images": str(images_path),
        }
    )
    context.log.info(f"{result}")
    digest = content_hash_of("studies", storage)
    lineage = record_lineage(
        context,
        storage,
        [str(studies_path), str(images_path), str(storage.path(*paths.STUDIES_REJECTED))],
        digest,
        inputs=["source_manifest"],
        config={"layout": spec.layout},
    )
    return dg.MaterializeResult(
        metadata={
            "num_studies": result.num_studies,
            "num_images": result.num_images,
            "num_matched": result.num_matched,
            "num_images_without_report": result.num_images_without_report,
            "num_reports_without_images": result.num_reports_without_images,
            "num_rejected_records": result.num_rejected,
            "studies_path": dg.MetadataValue.path(str(studies_path)),
            "study_images_path": dg.MetadataValue.path(str(images_path)),
            "views": dg.MetadataValue.md(
                markdown_table([{"view": v, "images": n} for v, n in views], ["view", "images"])
            ),
            "sha256": digest,
            **lineage,
        },
        data_version=dg.DataVersion(digest),
    )
