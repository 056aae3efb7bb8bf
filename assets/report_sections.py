"""``report_sections``: every report split into sections, with the text the model trains on."""

import dagster as dg
from pydantic import Field

from assets import paths
from cxr.curation import CORE_SECTIONS, build_report_sections
from cxr.previews import markdown_table
from cxr.storage import file_sha256
from pipelines.lineage import record_lineage
from pipelines.resources import StorageResource


class ReportSectionsConfig(dg.Config):
    """Which text the model trains on."""

    text_mode: str = Field(
        default="findings_impression",
        description="findings_impression (default: FINDINGS + IMPRESSION, IMPRESSION alone when "
        "there are no FINDINGS), impression, findings or full",
    )
    unsectioned_full_text: bool = Field(
        default=True,
        description="Use the whole text of reports that have no section headers at all (e.g. "
        "clinical notes of an images-csv collection) instead of listing them as unusable.",
    )


@dg.asset(
    group_name="curation",
    deps=["studies"],
    kinds={"parquet"},
    description="Per study: the sections found (INDICATION, HISTORY, COMPARISON, TECHNIQUE, "
    "FINDINGS, IMPRESSION, unknown ones by name), the training text and where it came from. "
    "Studies without usable text are kept with text_source = no_usable_text / no_report.",
)
def report_sections(
    context: dg.AssetExecutionContext, config: ReportSectionsConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """Parse the reports of ``studies`` into ``curation/report_sections.parquet``."""
    out = storage.path(*paths.REPORT_SECTIONS)
    result = build_report_sections(
        storage.path(*paths.STUDIES), out, config.text_mode, config.unsectioned_full_text
    )
    total = max(result["num_studies"], 1)
    names = list(CORE_SECTIONS) + sorted(set(result["coverage"]) - set(CORE_SECTIONS))
    coverage = [
        {
            "section": n,
            "studies": result["coverage"].get(n, 0),
            "share": f"{result['coverage'].get(n, 0) / total:.1%}",
        }
        for n in names
    ]
    sources = [{"text_source": k, "studies": v} for k, v in sorted(result["text_sources"].items())]
    unusable = sum(
        v for k, v in result["text_sources"].items() if k in ("no_usable_text", "no_report")
    )
    sha = file_sha256(out)
    storage.catalog().register_views({"report_sections": str(out)})
    lineage = record_lineage(
        context, storage, [str(out)], sha, inputs=["studies"], config=config.model_dump()
    )
    context.log.info(f"{result['num_studies']} reports parsed; {unusable} without usable text")
    return dg.MaterializeResult(
        metadata={
            "num_studies": result["num_studies"],
            "num_without_usable_text": unusable,
            "section_coverage": dg.MetadataValue.md(
                markdown_table(coverage, ["section", "studies", "share"])
            ),
            "text_sources": dg.MetadataValue.md(
                markdown_table(sources, ["text_source", "studies"])
            ),
            "path": dg.MetadataValue.path(str(out)),
            "sha256": sha,
            **lineage,
        },
        data_version=dg.DataVersion(sha),
    )
