"""``leaderboard``: every evaluated checkpoint and baseline side by side, with figures.

Rebuilt from DuckDB ``eval_results`` (so it never needs a model); also kept as the DuckDB view
``leaderboard`` and as ``<storage>/evaluation/leaderboard.md`` with its PNGs.
"""

import dagster as dg
import polars as pl

from cxr.previews import markdown_image, markdown_table
from evaluation.leaderboard import LEADERBOARD_VIEW, build_markdown
from evaluation.plots import auroc_by_ratio_png
from evaluation.results import read_results
from pipelines.resources import StorageResource


@dg.asset(
    group_name="evaluation",
    code_version="1",
    deps=["findings_eval", "inpainting_eval", "report_generation_eval", "retrieval_eval"],
    kinds={"duckdb"},
    description="Markdown leaderboard across checkpoints and baselines (values with 95% "
    "patient-bootstrap CIs), AUROC-vs-mask-ratio plot, inpainting examples and sample reports.",
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
    markdown = build_markdown(results)
    out = storage.path("evaluation")
    auroc_png = auroc_by_ratio_png(results.filter(pl.col("task") == "findings"))
    write_bytes(markdown.encode(), out / "leaderboard.md")
    metadata = {
        "checkpoints": results["checkpoint_id"].n_unique(),
        "rows": results.height,
        "leaderboard": dg.MetadataValue.md(markdown),
        "path": dg.MetadataValue.path(str(out / "leaderboard.md")),
    }
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
