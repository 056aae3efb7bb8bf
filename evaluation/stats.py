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
        seed: Resampling seed.
        alpha: 1 - coverage.

    Returns:
        The estimate on all samples; the interval is NaN when fewer than half of the resamples
        gave a defined value.
    """
    groups = np.asarray(groups)
    m = len(groups)
    value = float(statistic(np.arange(m)))
    if n_boot <= 0 or m == 0:
        return Estimate(value, float("nan"), float("nan"), m)
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        picked = rng.integers(0, len(members), size=len(members))
        index = np.concatenate([members[g] for g in picked])
        v = statistic(index)
        if np.isfinite(v):
            values.append(v)
    if len(values) < n_boot / 2:
        return Estimate(value, float("nan"), float("nan"), m)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(low), float(high), m)


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    if y_true.min(initial=1) == y_true.max(initial=0):
        return float("nan")
    return float(roc_auc_score(y_true, scores))


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose first correct item is within the top ``k`` (rank 0 = top)."""
    ranks = np.asarray(ranks)
    return float(np.mean(ranks < k)) if ranks.size else float("nan")
