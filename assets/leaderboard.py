"""``leaderboard``: paired comparisons first, then every checkpoint and baseline, with figures.

Rebuilt from DuckDB ``eval_comparisons`` and ``eval_results`` (so it never needs a model); also
kept as the DuckDB view ``leaderboard`` and as ``<storage>/evaluation/leaderboard.md`` with its
PNGs.
"""

import dagster as dg
import polars as pl

from cxr.previews import markdown_image, markdown_table
from evaluation.comparisons import read_comparisons
from evaluation.leaderboard import LEADERBOARD_VIEW, build_markdown
from evaluation.plots import auroc_by_ratio_png, paired_difference_png
from evaluation.results import read_results
from pipelines.resources import StorageResource


@dg.asset(
    group_name="evaluation",
    deps=[
        "eval_comparisons",
        "findings_eval",
        "inpainting_eval",
        "report_generation_eval",
        "retrieval_eval",
    ],
    kinds={"duckdb"},
    description="Markdown leaderboard: paired differences first (stage 2 minus stage 1 "
    "continued vs mask ratio), the layers chosen on VALIDATE, then every checkpoint and "
    "baseline (95% patient-bootstrap CIs), inpainting examples and sample reports.",
)
def leaderboard(storage: StorageResource) -> dg.MaterializeResult:
    """Tables and figures from every ``eval_results`` row."""
    from cxr.storage import write_bytes

    catalog = storage.catalog()
    results = read_results(catalog)
    if results.height == 0:
        raise dg.Failure(
            "eval_results is empty: evaluate a checkpoint first (the checkpoint sensor does, or "
            "`python -m pipelines.evaluate run --all`)"
        )
    catalog.write(lambda con: con.execute(LEADERBOARD_VIEW))
    comparisons = read_comparisons(catalog)
    markdown = build_markdown(results, comparisons)
    out = storage.path("evaluation")
    auroc_png = auroc_by_ratio_png(results.filter(pl.col("task") == "findings"))
    paired_png = paired_difference_png(comparisons)
    if paired_png:
        write_bytes(paired_png, out / "paired_difference_vs_mask_ratio.png")
        markdown = markdown.replace(
            "### Feature layer",
            "![paired difference vs mask ratio](paired_difference_vs_mask_ratio.png)\n\n"
            "### Feature layer",
            1,
        )
    write_bytes(markdown.encode(), out / "leaderboard.md")
    metadata = {
        "checkpoints": results["checkpoint_id"].n_unique(),
        "rows": results.height,
        "comparisons": comparisons.height,
        "leaderboard": dg.MetadataValue.md(markdown),
        "path": dg.MetadataValue.path(str(out / "leaderboard.md")),
    }
    if paired_png:
        metadata["paired_difference_vs_mask_ratio"] = dg.MetadataValue.md(
            markdown_image(paired_png, "paired difference vs mask ratio")
        )
    if auroc_png:
        write_bytes(auroc_png, out / "auroc_vs_mask_ratio.png")
        metadata["auroc_vs_mask_ratio"] = dg.MetadataValue.md(
            markdown_image(auroc_png, "AUROC vs mask ratio")
        )
    latest = results.sort("recorded_at", descending=True)["checkpoint_id"][0]
    stage2 = sorted(c for c in results["checkpoint_id"].unique().to_list() if "stage2" in c)
    shown = stage2[-1] if stage2 else latest
    examples = out / shown / "inpainting" / "inpainting_examples.png"
    if examples.is_file():
        metadata["inpainting_examples"] = dg.MetadataValue.md(
            f"checkpoint `{shown}`\n\n" + markdown_image(examples.read_bytes(), "inpainting")
        )
    roc = out / shown / "findings" / "roc_curves.png"
    if roc.is_file():
        metadata["roc_curves"] = dg.MetadataValue.md(
            f"checkpoint `{shown}`, no masking\n\n" + markdown_image(roc.read_bytes(), "ROC")
        )
    reports = out / shown / "report_generation" / "samples.parquet"
    if reports.is_file():
        sample = pl.read_parquet(reports).filter(pl.col("method") == "model").head(4)
        metadata["sample_reports"] = dg.MetadataValue.md(
            f"checkpoint `{shown}`\n\n"
            + markdown_table(
                [
                    {"generated": g[:240], "reference": r[:240]}
                    for g, r in zip(sample["generated"], sample["reference"], strict=True)
                ],
                ["generated", "reference"],
            )
        )
    return dg.MaterializeResult(metadata=metadata)
