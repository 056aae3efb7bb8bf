"""The leaderboard: headline numbers of every checkpoint and baseline, as markdown tables.

Built from ``eval_results`` only, so it can be rebuilt at any time without a model.
"""

from __future__ import annotations

import polars as pl

LEADERBOARD_VIEW = """
CREATE OR REPLACE VIEW leaderboard AS
SELECT checkpoint_id, task, method, metric, mask_ratio, setting, value, ci_low, ci_high, n,
       eval_config_hash, code_version, recorded_at
FROM eval_results
WHERE observation = '' AND status LIKE 'ok%'
  AND (task <> 'inpainting' OR metric IN ('psnr_vs_original', 'psnr_vs_reconstruction',
                                          'masked_token_accuracy'))
"""


def _cell(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "-"
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _arms(frame: pl.DataFrame) -> list[tuple[str, str, str]]:
    """(label, checkpoint_id, method): every checkpoint's model, then each baseline once."""
    arms = []
    checkpoints = sorted(frame["checkpoint_id"].unique().to_list())
    for checkpoint in checkpoints:
        if frame.filter(
            (pl.col("checkpoint_id") == checkpoint) & (pl.col("method") == "model")
        ).height:
            arms.append((checkpoint, checkpoint, "model"))
    baselines = sorted(set(frame["method"].unique().to_list()) - {"model"})
    for method in baselines:
        # baselines do not depend on the checkpoint: show the most recent evaluation's numbers
        latest = frame.filter(pl.col("method") == method).sort("recorded_at", descending=True)[
            "checkpoint_id"
        ][0]
        arms.append((f"baseline: {method}", latest, method))
    return arms


def task_table(results: pl.DataFrame, task: str, columns: list[tuple[str, str, float, str]]) -> str:
    """A markdown table: rows = arms, columns = (header, metric, mask ratio, setting)."""
    frame = results.filter(pl.col("task") == task)
    if frame.height == 0:
        return f"_no {task} results yet_"
    header = "| arm | " + " | ".join(c[0] for c in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for label, checkpoint, method in _arms(frame):
        cells = []
        for _, metric, ratio, setting in columns:
            row = frame.filter(
                (pl.col("checkpoint_id") == checkpoint)
                & (pl.col("method") == method)
                & (pl.col("metric") == metric)
                & ((pl.col("mask_ratio") - ratio).abs() < 1e-9)
                & ((pl.col("setting") == setting) if setting is not None else pl.lit(True))
                & (pl.col("observation") == "")
            )
            cells.append(
                _cell(row["value"][0], row["ci_low"][0], row["ci_high"][0]) if row.height else ""
            )
        if any(cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_markdown(results: pl.DataFrame) -> str:
    """All four task tables (values with 95% patient-bootstrap CIs)."""
    ratios = sorted(results.filter(pl.col("task") == "findings")["mask_ratio"].unique().to_list())
    findings = task_table(
        results, "findings", [(f"macro AUROC @{r:.0%}", "macro_auroc", r, None) for r in ratios]
    )
    inpaint_ratios = sorted(
        results.filter(pl.col("task") == "inpainting")["mask_ratio"].unique().to_list()
    )
    inpainting = task_table(
        results,
        "inpainting",
        [
            (f"PSNR vs recon. @{r:.0%} {p}", "psnr_vs_reconstruction", r, p)
            for p in ("random", "block")
            for r in inpaint_ratios
            if r > 0
        ]
        + [("PSNR vs original @40% random", "psnr_vs_original", 0.4, "random")],
    )
    report = task_table(
        results,
        "report_generation",
        [
            ("BLEU-4", "bleu4", 0.0, ""),
            ("ROUGE-L", "rouge_l", 0.0, ""),
            ("clinical F1 micro", "clinical_f1_micro", 0.0, ""),
            ("clinical F1 macro", "clinical_f1_macro", 0.0, ""),
            ("GREEN", "green", 0.0, ""),
        ],
    )
    retrieval = task_table(
        results,
        "retrieval",
        [(f"{d} R@{k}", f"{d}_recall@{k}", 0.0, None) for d in ("i2t", "t2i") for k in (1, 5, 10)],
    )
    return "\n\n".join(
        [
            "### Findings classification (macro AUROC, TEST, image tokens masked)",
            findings,
            "### Inpainting (one pass; PSNR dB vs the tokenizer's reconstruction)",
            inpainting,
            "### Report generation",
            report,
            "### Retrieval (Recall@k, hits by study; model: PMI likelihood)",
            retrieval,
        ]
    )
