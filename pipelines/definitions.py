"""The one Dagster code location.

Built lazily: importing this module scans nothing, starts no Ray and opens no database; Dagster
calls ``defs()`` when it loads the location. Each asset's code version is a hash of the
project source it runs (``pipelines.code_versions``), so the UI marks assets stale when it changes.
"""

from __future__ import annotations

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    """All assets, checks, jobs and resources of the pipeline."""
    from assets.checks import ALL_CHECKS
    from assets.cxr_images import cxr_images
    from assets.eval_comparisons import eval_comparisons
    from assets.evaluation import EVAL_ASSETS
    from assets.finding_labels import finding_labels
    from assets.image_tokenizer import image_tokenizer
    from assets.leaderboard import leaderboard
    from assets.report_sections import report_sections
    from assets.source_manifest import source_manifest
    from assets.splits import splits
    from assets.stage_checkpoints import (
        stage1_checkpoint,
        stage1_continued_checkpoint,
        stage2_checkpoint,
    )
    from assets.studies import studies
    from assets.text_tokenizer import text_tokenizer
    from assets.token_shards import token_shards
    from assets.vocabulary import vocabulary
    from pipelines.code_versions import with_code_versions
    from pipelines.jobs import JOBS
    from pipelines.resources import default_resources
    from pipelines.sensors import SENSORS

    return dg.Definitions(
        assets=with_code_versions(
            [
                source_manifest,
                studies,
                cxr_images,  # also materializes ingest_quarantine
                report_sections,
                finding_labels,
                splits,
                text_tokenizer,
                image_tokenizer,
                vocabulary,
                token_shards,
                stage1_checkpoint,
                stage2_checkpoint,
                stage1_continued_checkpoint,
                *EVAL_ASSETS,
                eval_comparisons,
                leaderboard,
            ]
        ),
        asset_checks=ALL_CHECKS,
        jobs=JOBS,
        sensors=SENSORS,
        resources=default_resources(),
    )
