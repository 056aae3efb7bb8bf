"""``eval_comparisons``: paired differences between checkpoints and against baselines.

Rebuilt from the per-sample outputs the evaluation assets keep (never from a model): a pair is
recomputed when either side was re-evaluated, and written to the DuckDB table
``eval_comparisons`` (``evaluation/comparisons.py`` says how pairs are formed).
"""

import dagster as dg
import polars as pl
from pydantic import Field

from cxr.previews import markdown_image
from evaluation.comparisons import read_comparisons, update_comparisons
from evaluation.leaderboard import paired_table
from evaluation.plots import paired_difference_png
from pipelines.resources import StorageResource


class EvalComparisonsConfig(dg.Config):
    """Bootstrap of the paired differences."""

    n_boot: int = Field(default=1000, description="Patient resamples shared by both arms")
    seed: int = Field(default=0, description="Resampling seed")


@dg.asset(
    group_name="evaluation",
    deps=["findings_eval", "inpainting_eval", "report_generation_eval", "retrieval_eval"],
    kinds={"duckdb"},
    description="Paired differences (a - b, 95% CI, fraction of resamples <= 0) on the same "
    "patient resamples: arms of one stage-1 family against each other (stage 2 vs stage 1 "
    "continued is the ablation), and every checkpoint against its task's baselines.",
)
def eval_comparisons(
    config: EvalComparisonsConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """Bring DuckDB ``eval_comparisons`` up to date with ``eval_results``."""
    from cxr.lineage import git_code_version

    catalog = storage.catalog()
    counts = update_comparisons(catalog, config.n_boot, config.seed, git_code_version())
    table = read_comparisons(catalog)
    metadata = {
        **counts,
        "paired": dg.MetadataValue.md(paired_table(table)),
    }
    png = paired_difference_png(table)
    if png:
        metadata["paired_difference_vs_mask_ratio"] = dg.MetadataValue.md(
            markdown_image(png, "paired difference vs mask ratio")
        )
    version = (
        table.select("checkpoint_a", "checkpoint_b", "task", "run_id_a", "run_id_b", "n_boot")
        .unique()
        .sort(pl.all())
        .hash_rows()
        .sum()
        if table.height
        else 0
    )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(str(version)))
