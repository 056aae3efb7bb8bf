"""The leaderboard: paired differences first, then every checkpoint's and baseline's numbers.

Built from ``eval_comparisons`` and ``eval_results`` only, so it can be rebuilt at any time
without a model.
"""

from __future__ import annotations

import polars as pl

LEADERBOARD_VIEW = """
CREATE OR REPLACE VIEW leaderboard AS
SELECT checkpoint_id, task, method, metric, mask_ratio, setting, value, ci_low, ci_high, n,
       eval_config_hash, code_version, recorded_at
FROM eval_results
WHERE observation = '' AND status LIKE 'ok%' AND metric NOT LIKE 'validate_%'
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


#: Metrics of ``eval_comparisons`` shown in the leaderboard's paired table (all are stored).
PAIRED_HEADLINES = {
    "findings": ("macro_auroc",),
    "inpainting": ("psnr_vs_reconstruction",),
    "report_generation": ("rouge_l", "green"),
    "retrieval": ("i2t_recall@5", "t2i_recall@5"),
}


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def paired_table(comparisons: pl.DataFrame) -> str:
    """Markdown: a - b with its paired 95% CI and the fraction of resamples where a - b <= 0."""
    if comparisons.height == 0:
        return "_no paired comparisons yet_"
    order = {task: k for k, task in enumerate(PAIRED_HEADLINES)}
    rows = comparisons.filter(
        pl.any_horizontal(
            [
                (pl.col("task") == task) & pl.col("metric").is_in(list(metrics))
                for task, metrics in PAIRED_HEADLINES.items()
            ]
        )
    )
    rows = rows.with_columns(
        pl.col("task").replace_strict(order, default=len(order)).alias("_task"),
        (pl.col("kind") == "baseline").alias("_baseline"),
    ).sort(
        ["_baseline", "_task", "checkpoint_a", "checkpoint_b", "metric", "setting", "mask_ratio"]
    )
    lines = [
        "| a | b | task | metric | mask | setting | value a | value b | a - b [95% CI] "
        "| P(a - b <= 0) | patients |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.iter_rows(named=True):
        b = r["checkpoint_b"] if r["kind"] == "checkpoint" else f"baseline: {r['checkpoint_b']}"
        lines.append(
            f"| {r['checkpoint_a']} | {b} | {r['task']} | {r['metric']} | {r['mask_ratio']:.0%} "
            f"| {r['setting']} | {_number(r['value_a'])} | {_number(r['value_b'])} "
            f"| {_cell(r['diff'], r['ci_low'], r['ci_high'])} | {_number(r['p_le_zero'], 3)} "
            f"| {r['n_patients']} |"
        )
    return "\n".join(lines)


def layer_table(results: pl.DataFrame) -> str:
    """Markdown: each checkpoint's feature layer and the candidates' VALIDATE macro AUROC."""
    rows = results.filter(
        (pl.col("task") == "findings") & (pl.col("metric") == "validate_macro_auroc")
    )
    if rows.height == 0:
        return "_no layer selection recorded_"
    lines = [
        "| checkpoint | chosen layer | VALIDATE macro AUROC per candidate layer |",
        "|---|---|---|",
    ]
    for (checkpoint,), group in rows.sort("setting").group_by(
        ["checkpoint_id"], maintain_order=True
    ):
        chosen = group.filter(pl.col("status") == "ok: chosen")["setting"].to_list()
        cells = ", ".join(
            f"{s.removeprefix('layer ')}: {_number(v)}"
            for s, v in zip(group["setting"], group["value"], strict=True)
        )
        lines.append(
            f"| {checkpoint} | {chosen[0].removeprefix('layer ') if chosen else '-'} | {cells} |"
        )
    return "\n".join(lines[:2] + sorted(lines[2:]))


def build_markdown(results: pl.DataFrame, comparisons: pl.DataFrame | None = None) -> str:
    """The paired table, the layer choices, then the four task tables (95% bootstrap CIs)."""
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
            "### Paired comparisons (TEST; a - b on the same patient resamples)",
            "Pairs: arms of one stage-1 family (later arm first: stage 2, stage 1 continued, "
            "stage 1) and each checkpoint against its task's baselines. A CI above 0 and "
            "P(a - b <= 0) near 0 mean a is better on these patients.",
            paired_table(comparisons if comparisons is not None else pl.DataFrame()),
            "### Feature layer (chosen on VALIDATE, best macro AUROC without masking)",
            layer_table(results),
            "### Findings classification (macro AUROC, TEST, image tokens masked)",
            findings,
            "### Inpainting (one pass; PSNR dB vs the tokenizer's reconstruction)",
            inpainting,
            "### Report generation",
            report,
            "### Retrieval (Recall@k, hits by study; model: PMI, report prior = mean over TEST "
            "images unless the setting says otherwise)",
            retrieval,
        ]
    )
