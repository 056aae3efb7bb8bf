"""``ingest_quarantine``: every file or record ingest could not use, with its reason."""

import dagster as dg
import duckdb

from assets import paths
from cxr.previews import bar_chart_png, markdown_image, markdown_table
from cxr.storage import atomic_path, file_sha256
from pipelines.lineage import record_lineage
from pipelines.resources import StorageResource


@dg.asset(
    group_name="ingest",
    deps=["studies", "cxr_images"],
    kinds={"parquet"},
    description="Quarantined inputs from every ingest stage (manifest header read, studies "
    "join, image decoding): record, file, stage, reason, detail, exception class.",
)
def ingest_quarantine(
    context: dg.AssetExecutionContext, storage: StorageResource
) -> dg.MaterializeResult:
    """Union of the per-stage rejection tables into ``quarantine/ingest_quarantine.parquet``."""
    sources = [str(storage.path(*paths.STUDIES_REJECTED))]
    sources.append(str(storage.path(*paths.IMAGES_DIR) / "shard-*.rejected.parquet"))
    target = storage.path(*paths.QUARANTINE)
    con = duckdb.connect()
    union = " UNION ALL ".join(
        f"SELECT file_id, record_id, kind, stage, reason, detail, exception_class "
        f"FROM read_parquet('{s}')"
        for s in sources
    )
    with atomic_path(target) as tmp:
        con.execute(
            f"COPY ({union} ORDER BY stage, record_id) TO '{tmp}' "
            "(FORMAT parquet, COMPRESSION zstd)"
        )
    by_reason = con.execute(
        f"""SELECT reason, stage, count(*) AS n FROM read_parquet('{target}')
            GROUP BY ALL ORDER BY n DESC, reason"""
    ).fetchall()
    examples = con.execute(
        f"""SELECT reason, any_value(detail) AS example FROM read_parquet('{target}')
            GROUP BY reason ORDER BY reason"""
    ).fetchall()
    con.close()
    storage.catalog().register_views({"ingest_quarantine": str(target)})
    counts: dict[str, int] = {}
    for reason, _stage, n in by_reason:
        counts[reason] = counts.get(reason, 0) + n
    total = sum(counts.values())
    context.log.info(f"{total} quarantined: {counts}")
    sha = file_sha256(target)
    lineage = record_lineage(
        context, storage, [str(target)], sha, inputs=["studies", "cxr_images"], config={}
    )
    metadata = {
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
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(sha))
