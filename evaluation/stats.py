"""Confidence intervals by patient-level bootstrap, and the small metrics shared by tasks.

Images of one patient are correlated, so every interval resamples PATIENTS with replacement
(all their samples come along), as is standard for clinical test sets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% bootstrap interval and sample count."""

    value: float
    ci_low: float
    ci_high: float
    n: int


def resample_indices(groups: Sequence[str], n_boot: int, seed: int = 0) -> list[np.ndarray]:
    """``n_boot`` patient-level resamples: sample indices of patients drawn with replacement."""
    groups = np.asarray(groups)
    if n_boot <= 0 or len(groups) == 0:
        return []
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(inverse.max() + 1))
    members = np.split(order, starts[1:])
    rng = np.random.default_rng(seed)
    return [
        np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])
        for _ in range(n_boot)
    ]


def interval(value: float, replicates: Sequence[float], n: int, alpha: float = 0.05) -> Estimate:
    """Percentile interval of bootstrap ``replicates``.

    NaN replicates are skipped; the interval is NaN when fewer than half are defined.
    """
    values = np.asarray(replicates, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0 or len(values) < len(replicates) / 2:
        return Estimate(value, float("nan"), float("nan"), n)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(low), float(high), n)


def patient_bootstrap(
    groups: Sequence[str],
    statistic: Callable[[np.ndarray], float],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """``statistic`` on all samples and its percentile interval over patient resamples.

    Args:
        groups: Patient id per sample, length M.
        statistic: Maps sample indices (int array, with repeats) to a number; may return NaN
            for a resample where it is undefined (e.g. one class only), which is skipped.
        n_boot: Resamples (0: no interval).
        seed: Resampling seed (the same seed gives the same resamples for every statistic).
        alpha: 1 - coverage.

    Returns:
        The estimate on all samples; the interval is NaN when fewer than half of the resamples
        gave a defined value.
    """
    m = len(groups)
    value = float(statistic(np.arange(m)))
    if n_boot <= 0 or m == 0:
        return Estimate(value, float("nan"), float("nan"), m)
    replicates = [statistic(index) for index in resample_indices(groups, n_boot, seed)]
    return interval(value, replicates, m, alpha)


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present.

    Mann-Whitney U with average ranks for ties: equal to sklearn's ``roc_auc_score`` at a
    fraction of its cost, which matters inside a bootstrap.
    """
    from scipy.stats import rankdata

    y_true = np.asarray(y_true).astype(bool)
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose first correct item is within the top ``k`` (rank 0 = top)."""
    ranks = np.asarray(ranks)
    return float(np.mean(ranks < k)) if ranks.size else float("nan")
