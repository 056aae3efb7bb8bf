"""PNG figures for the UI: AUROC vs mask ratio, paired differences, ROC curves (Agg backend)."""

from __future__ import annotations

import io

import numpy as np
import polars as pl


def _figure(width: float = 6.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height), dpi=80)


def _png(plt, fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def auroc_by_ratio_png(results: pl.DataFrame, metric: str = "macro_auroc") -> bytes:
    """Macro AUROC (with 95% CI bars) vs image mask ratio, one line per checkpoint x method.

    Args:
        results: ``eval_results`` rows (``checkpoint_id``, ``method``, ``metric``,
            ``mask_ratio``, ``value``, ``ci_low``, ``ci_high``) of the findings task.
        metric: Metric to draw.
    """
    rows = results.filter((pl.col("metric") == metric) & pl.col("value").is_not_null())
    if rows.height == 0:
        return b""
    plt, fig, ax = _figure()
    seen_baseline = False
    for (checkpoint, method), group in rows.sort("mask_ratio").group_by(
        ["checkpoint_id", "method"], maintain_order=True
    ):
        if method != "model":
            if seen_baseline:  # baselines do not depend on the checkpoint: draw one
                continue
            seen_baseline = True
            label, style = method, "--"
        else:
            label, style = checkpoint, "-"
        x = group["mask_ratio"].to_numpy()
        y = group["value"].to_numpy()
        low = group["ci_low"].fill_null(np.nan).to_numpy()
        high = group["ci_high"].fill_null(np.nan).to_numpy()
        ax.errorbar(
            x,
            y,
            yerr=[np.nan_to_num(y - low), np.nan_to_num(high - y)],
            fmt=style + "o",
            capsize=3,
            label=label,
            markersize=4,
        )
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("fraction of image tokens masked")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(fontsize=7)
    ax.set_title("Findings classification under image masking")
    return _png(plt, fig)


def paired_difference_png(comparisons: pl.DataFrame, metric: str = "macro_auroc") -> bytes:
    """Findings ``metric`` of stage 2 minus stage 1 continued vs mask ratio, with its band.

    Every such pair in ``eval_comparisons`` is a line with its 95% paired interval as a band;
    without a stage-1-continued arm, every checkpoint pair is drawn instead.

    Args:
        comparisons: ``eval_comparisons`` rows.
        metric: Findings metric to draw.
    """
    if comparisons.height == 0:
        return b""
    rows = comparisons.filter(
        (pl.col("task") == "findings")
        & (pl.col("metric") == metric)
        & (pl.col("kind") == "checkpoint")
        & pl.col("diff").is_not_null()
    )
    ablation = rows.filter((pl.col("arm_a") == "stage2") & (pl.col("arm_b") == "stage1-continued"))
    title = "stage 2 minus stage 1 continued (paired)"
    if ablation.height:
        rows = ablation
    else:
        title = "checkpoint pairs, a minus b (paired)"
    if rows.height == 0:
        return b""
    plt, fig, ax = _figure()
    for (a, b), group in rows.sort("mask_ratio").group_by(
        ["checkpoint_a", "checkpoint_b"], maintain_order=True
    ):
        x = group["mask_ratio"].to_numpy()
        y = group["diff"].to_numpy()
        low = group["ci_low"].fill_null(np.nan).to_numpy()
        high = group["ci_high"].fill_null(np.nan).to_numpy()
        (line,) = ax.plot(x, y, "o-", markersize=4, label=f"{a} - {b}")
        ax.fill_between(x, low, high, alpha=0.2, color=line.get_color())
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("fraction of image tokens masked")
    ax.set_ylabel(f"difference in {metric.replace('_', ' ')}")
    ax.legend(fontsize=6)
    ax.set_title(title)
    return _png(plt, fig)


def roc_curves_png(samples: pl.DataFrame, method: str = "model", mask_ratio: float = 0.0) -> bytes:
    """ROC curve per observation from the findings per-sample scores."""
    from sklearn.metrics import roc_curve

    if samples.height == 0:
        return b""
    rows = samples.filter((pl.col("method") == method) & (pl.col("mask_ratio") == mask_ratio))
    if rows.height == 0:
        return b""
    plt, fig, ax = _figure(5.0, 4.2)
    for (observation,), group in rows.group_by(["observation"], maintain_order=True):
        y, s = group["label"].to_numpy(), group["score"].to_numpy()
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=str(observation), linewidth=1)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, {method}, mask {mask_ratio:.0%}")
    ax.legend(fontsize=6)
    return _png(plt, fig)
