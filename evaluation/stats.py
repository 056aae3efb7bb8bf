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


def _patient_draws(groups: Sequence[str], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Patient index per sample (M,), and the patients each resample draws, int (n_boot, P).

    The one source of the resamples: ``resample_indices`` and ``resample_counts`` are two views
    of these draws, so every statistic of one seed gets the same patient resamples.
    """
    groups = np.asarray(groups)
    if n_boot <= 0 or len(groups) == 0:
        return np.zeros(len(groups), dtype=np.int64), np.zeros((0, 0), dtype=np.int64)
    _, inverse = np.unique(groups, return_inverse=True)
    n_patients = int(inverse.max()) + 1
    rng = np.random.default_rng(seed)
    draws = np.stack([rng.integers(0, n_patients, size=n_patients) for _ in range(n_boot)])
    return inverse, draws


def resample_indices(groups: Sequence[str], n_boot: int, seed: int = 0) -> list[np.ndarray]:
    """``n_boot`` patient-level resamples: sample indices of patients drawn with replacement."""
    inverse, draws = _patient_draws(groups, n_boot, seed)
    if not len(draws):
        return []
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(inverse.max() + 1))
    members = np.split(order, starts[1:])
    return [np.concatenate([members[g] for g in drawn]) for drawn in draws]


def resample_counts(groups: Sequence[str], n_boot: int, seed: int = 0) -> np.ndarray:
    """The resamples of ``resample_indices`` as counts: int (n_boot, M).

    Each row says how often each sample is drawn, from the same patient draws, so every
    statistic gets the same intervals.

    A statistic that is a weighted sum over samples (a mean, an AUROC) is then computed for all
    resamples at once with matrix operations instead of once per resample.
    """
    inverse, draws = _patient_draws(groups, n_boot, seed)
    if not len(draws):
        return np.zeros((0, len(inverse)), dtype=np.int32)
    n_patients = draws.shape[1]
    per_patient = np.stack([np.bincount(drawn, minlength=n_patients) for drawn in draws])
    return per_patient[:, inverse].astype(np.int32)


#: Resamples per block of a weighted statistic (bounds memory at MIMIC-CXR TEST size).
WEIGHT_BLOCK = 128


def weighted_auroc(y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of every row of ``weights`` (B, M): the AUROC of the sample multiset it counts.

    Equal to ``auroc(y[i], s[i])`` for the index array ``i`` whose counts are the row (ties
    count half, as Mann-Whitney's average ranks do); samples with a NaN target are left out;
    NaN where a row has no positive or no negative.
    """
    y_true = np.asarray(y_true, dtype=float)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    keep = np.isfinite(y_true)
    y, s, w = y_true[keep] == 1.0, np.asarray(scores, dtype=float)[keep], weights[:, keep]
    out = np.full(len(weights), np.nan)
    if y.size == 0:
        return out
    order = np.argsort(s, kind="stable")
    s, y, w = s[order], y[order], w[:, order]
    new_score = np.r_[True, s[1:] != s[:-1]]  # first sample of each tied score
    starts, group = np.flatnonzero(new_score), np.cumsum(new_score) - 1
    for lo in range(0, len(w), WEIGHT_BLOCK):
        block = w[lo : lo + WEIGHT_BLOCK]
        negatives = np.add.reduceat(block * ~y, starts, axis=1)  # negative weight per score
        below = np.cumsum(negatives, axis=1) - negatives
        credit = (below + 0.5 * negatives)[:, group[y]]
        positive = block[:, y]
        n_pos, n_neg = positive.sum(axis=1), negatives.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = (positive * credit).sum(axis=1) / (n_pos * n_neg)
        out[lo : lo + WEIGHT_BLOCK] = np.where((n_pos > 0) & (n_neg > 0), value, np.nan)
    return out


def weighted_nanmean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of the finite ``values`` (M,) for every row of ``weights`` (B, M).

    NaN where a row weights no finite value.
    """
    values = np.asarray(values, dtype=float)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    finite = np.isfinite(values)
    total = weights @ finite.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (weights @ np.where(finite, values, 0.0)) / total
    return np.where(total > 0, mean, np.nan)


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
