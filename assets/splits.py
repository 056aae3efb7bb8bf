"""``splits``: patients (never studies or images) assigned to train / validate / test."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from assets import paths
from cxr.previews import markdown_table
from cxr.splits import SPLITS, SplitRatios, build_split_manifest, read_official_split
from cxr.storage import file_sha256
from pipelines.lineage import record_lineage
from pipelines.resources import PrivacyResource, StorageResource


class SplitsConfig(dg.Config):
    """How patients are assigned to splits."""

    train_fraction: float = 0.8
    validate_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: str = Field(
        default="chexmix-split-v1",
        description="Versioned seed of the hash assignment; change it only to make a NEW split.",
    )
    official_split_csv: str = Field(
        default="",
        description="Optional official split (MIMIC-CXR layout: subject_id, split, ...; .csv or "
        ".csv.gz). Its patients keep their official split; others are hash-assigned.",
    )


@dg.asset(
    group_name="curation",
    deps=["studies"],
    kinds={"parquet"},
    description="Split manifest: one row per study with pseudonymous patient id, image ids, "
    "split, where the split came from (hash / official) and a content hash of the study.",
)
def splits(
    context: dg.AssetExecutionContext,
    config: SplitsConfig,
    storage: StorageResource,
    privacy: PrivacyResource,
) -> dg.MaterializeResult:
    """Assign every patient of ``studies`` to a split, reproducibly."""
    ratios = SplitRatios(config.train_fraction, config.validate_fraction, config.test_fraction)
    official = None
    if config.official_split_csv:
        pseudo = privacy.pseudonymizer(storage)
        official = read_official_split(
            Path(config.official_split_csv), lambda raw: pseudo.hash_id("patient", raw)
        )
    out = storage.path(*paths.SPLITS)
    counts = build_split_manifest(
        storage.path(*paths.STUDIES),
        storage.path(*paths.STUDY_IMAGES),
        out,
        config.split_seed,
        ratios,
        official,
    )
    sha = file_sha256(out)
    storage.catalog().register_views({"splits": str(out)})
    lineage = record_lineage(
        context, storage, [str(out)], sha, inputs=["studies"], config=config.model_dump()
    )
    table = [
        {"split": s, "patients": counts[f"patients/{s}"], "studies": counts[f"studies/{s}"]}
        for s in SPLITS
    ]
    context.log.info(f"split sizes: {table}")
    return dg.MaterializeResult(
        metadata={
            **{f"patients/{s}": counts[f"patients/{s}"] for s in SPLITS},
            **{f"studies/{s}": counts[f"studies/{s}"] for s in SPLITS},
            "split_sizes": dg.MetadataValue.md(
                markdown_table(table, ["split", "patients", "studies"])
            ),
            "official_split_patients": len(official) if official else 0,
            "path": dg.MetadataValue.path(str(out)),
            "sha256": sha,
            **lineage,
        },
        data_version=dg.DataVersion(sha),
    )
