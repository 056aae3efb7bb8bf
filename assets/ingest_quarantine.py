"""``ingest_quarantine``: every file or record ingest could not use, with its reason.

Materialized by the same step as ``cxr_images`` (see there), so the table of reasons exists
whenever ingest ran, even when a blocking check on ``cxr_images`` (``decode_success_rate``) then
stops the run.
"""

from typing import Any

import dagster as dg

from assets import paths
from cxr.previews import bar_chart_png, markdown_image, markdown_table
from cxr.quarantine import counts_by_reason, example_details, quarantine_sources, write_quarantine
from cxr.storage import file_sha256
from pipelines.lineage import record_lineage
from pipelines.resources import StorageResource

INGEST_QUARANTINE = dg.AssetSpec(
    "ingest_quarantine",
    group_name="ingest",
    deps=["studies", "cxr_images"],
    kinds={"parquet"},
    description="Quarantined inputs from every ingest stage (manifest header read, studies "
    "join, image decoding): record, file, stage, reason, detail, exception class. Written by "
    "the cxr_images step, so it exists even when a blocking decode check stops the run.",
)


def current_sources(storage: StorageResource) -> list:
    """The reject tables of the current ingest outputs (``cxr.quarantine.quarantine_sources``)."""
    return quarantine_sources(
        storage.path(*paths.STUDIES_REJECTED), storage.path(*paths.IMAGES_DIR)
    )


def materialize_ingest_quarantine(
    context: dg.AssetExecutionContext, storage: StorageResource
) -> dg.MaterializeResult:
    """Union the per-stage rejects into ``quarantine/ingest_quarantine.parquet``; describe it."""
    target = storage.path(*paths.QUARANTINE)
    total = write_quarantine(current_sources(storage), target)
    by_reason = counts_by_reason([target])
    examples = example_details([target])
    storage.catalog().register_views({"ingest_quarantine": str(target)})
    counts: dict[str, int] = {}
    for reason, _stage, n in by_reason:
        counts[reason] = counts.get(reason, 0) + n
    context.log.info(f"{total} quarantined: {counts}")
    sha = file_sha256(target)
    lineage = record_lineage(
        context,
        storage,
        [str(target)],
        sha,
        # the image shard set, when one exists (this asset can be rebuilt on its own)
        inputs=["studies", "cxr_images"]
        if (storage.path(*paths.IMAGES_DIR) / "_manifest.json").exists()
        else ["studies"],
        config={},
        asset_key="ingest_quarantine",
    )
    metadata: dict[str, Any] = {
        "num_quarantined": total,
        **{f"reason/{reason}": n for reason, n in sorted(counts.items())},
        "path": dg.MetadataValue.path(str(target)),
        "by_reason": dg.MetadataValue.md(
            markdown_table(
                [{"reason": r, "stage": s, "count": n} for r, s, n in by_reason],
                ["reason", "stage", "count"],
            )
            + "\n"
            + markdown_table(
                [{"reason": r, "example": (d or "").replace("|", "/")[:160]} for r, d in examples],
                ["reason", "example"],
            )
        ),
        "sha256": sha,
        **lineage,
    }
    if counts:
        metadata["reasons_chart"] = dg.MetadataValue.md(
            markdown_image(bar_chart_png(counts, "quarantined inputs by reason"), "reasons")
        )
    return dg.MaterializeResult(
        asset_key="ingest_quarantine", metadata=metadata, data_version=dg.DataVersion(sha)
    )
