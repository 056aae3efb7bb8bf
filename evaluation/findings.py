"""Findings classification under image-token masking (CheXmix's discriminative benchmark).

Per mask ratio, a fixed fraction of each image's tokens is replaced by the mask id (seeded per
image), features are taken from the model (mean hidden state over image positions at a layer),
one logistic-regression probe per CheXpert observation is fitted on TRAIN features of the same
ratio and scored on TEST: AUROC per observation and macro, with patient-bootstrap intervals.
Baseline in the same table: the same probe on a bag-of-image-codes histogram (no transformer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from torch import nn

from cxr.labeler import OBSERVATIONS
from evaluation import DEFAULT_LAYER
from evaluation.data import EvalRows, mask_positions
from evaluation.features import code_histograms, hidden_state_features
from evaluation.results import MetricRow
from evaluation.stats import auroc, interval, resample_indices
from models.vocabulary import Vocabulary

TASK = "findings"


@dataclass(frozen=True)
class FindingsConfig:
    """Settings of the findings benchmark.

    Attributes:
        layer: Hidden-state index (>= 1) or a depth fraction in (0, 1).
        mask_ratios: Fractions of image tokens masked (same masks for every checkpoint).
        probe_c: Inverse L2 strength of the logistic-regression probe.
        min_test_positives: An observation enters the table (and the macro) only with at least
            this many positive and this many negative TEST images.
        n_boot: Bootstrap resamples for the intervals.
        batch_size: Images per forward pass.
        seed: Masking and bootstrap seed.
    """

    layer: int | float = DEFAULT_LAYER
    mask_ratios: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8)
    probe_c: float = 0.5
    min_test_positives: int = 3
    n_boot: int = 500
    batch_size: int = 32
    seed: int = 0


@dataclass
class FindingsResult:
    """Metric rows and per-sample probe scores (long format)."""

    rows: list[MetricRow]
    samples: pl.DataFrame
    curves: dict[str, list[float]] = field(default_factory=dict)


def masks_for(rows: EvalRows, ratio: float, seed: int) -> np.ndarray | None:
    """Bool (M, N) seeded random masks of ``ratio`` per image, None for ratio 0."""
    if ratio <= 0:
        return None
    n = rows.codes.shape[1]
    return np.stack([mask_positions(i, n, ratio, seed, "random") for i in rows.image_ids])


def fit_probe_scores(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, c: float, seed: int
) -> np.ndarray | None:
    """Positive-class probabilities on ``test_x`` of a standardised logistic probe.

    Returns None when TRAIN has a single class (no probe can be fitted).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if train_y.min() == train_y.max():
        return None
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed)
    )
    probe.fit(train_x, train_y.astype(int))
    return probe.predict_proba(test_x)[:, 1]


def evaluate_features(
    method: str,
    ratio: float,
    train_x: np.ndarray,
    train: EvalRows,
    test_x: np.ndarray,
    test: EvalRows,
    config: FindingsConfig,
) -> tuple[list[MetricRow], pl.DataFrame]:
    """Per-observation and macro AUROC of probes on one feature set."""
    train_y, test_y = train.positives, test.positives
    resamples = resample_indices(test.patient_ids, config.n_boot, config.seed)
    rows: list[MetricRow] = []
    scores: dict[int, np.ndarray] = {}
    samples = []
    for k, observation in enumerate(OBSERVATIONS):
        n_pos = int(test_y[:, k].sum())
        n_neg = len(test) - n_pos
        if min(n_pos, n_neg) < config.min_test_positives:
            rows.append(
                MetricRow(
                    TASK,
                    method,
                    "auroc",
                    None,
                    observation,
                    ratio,
                    n=len(test),
                    status=f"skipped: {n_pos} positive / {n_neg} negative test images "
                    f"(< {config.min_test_positives})",
                )
            )
            continue
        s = fit_probe_scores(train_x, train_y[:, k], test_x, config.probe_c, config.seed)
        if s is None:
            rows.append(
                MetricRow(
                    TASK,
                    method,
                    "auroc",
                    None,
                    observation,
                    ratio,
                    n=len(test),
                    status="skipped: one class only in the train split",
                )
            )
            continue
        scores[k] = s
        y = test_y[:, k]
        est = interval(auroc(y, s), [auroc(y[i], s[i]) for i in resamples], len(test))
        rows.append(
            MetricRow(
                TASK,
                method,
                "auroc",
                est.value,
                observation,
                ratio,
                ci_low=est.ci_low,
                ci_high=est.ci_high,
                n=est.n,
            )
        )
        samples.append(
            pl.DataFrame(
                {
                    "image_id": test.image_ids,
                    "patient_id": test.patient_ids,
                    "method": method,
                    "mask_ratio": ratio,
                    "observation": observation,
                    "label": y.astype(np.int8),
                    "score": s.astype(np.float32),
                }
            )
        )
    if scores:

        def macro(i: np.ndarray) -> float:
            # mean over the scored observations defined in this (re)sample: a resample that
            # happens to draw no positive of a rare observation still counts the others
            values = np.array([auroc(test_y[i, k], s[i]) for k, s in scores.items()])
            return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

        est = interval(macro(np.arange(len(test))), [macro(i) for i in resamples], len(test))
        rows.append(
            MetricRow(
                TASK,
                method,
                "macro_auroc",
                est.value,
                "",
                ratio,
                setting=f"{len(scores)} observations",
                ci_low=est.ci_low,
                ci_high=est.ci_high,
                n=est.n,
            )
        )
    else:
        rows.append(
            MetricRow(
                TASK,
                method,
                "macro_auroc",
                None,
                "",
                ratio,
                n=len(test),
                status="skipped: no observation has enough positive and negative test images",
            )
        )
    frame = pl.concat(samples) if samples else pl.DataFrame()
    return rows, frame


def run_findings(
    model: nn.Module | None,
    vocab: Vocabulary,
    train: EvalRows,
    test: EvalRows,
    config: FindingsConfig,
) -> FindingsResult:
    """The findings table for one checkpoint (``model``) and the bag-of-codes baseline.

    Args:
        model: The LM, or None for the baseline alone.
        vocab: Id layout.
        train: TRAIN rows (probe fitting).
        test: TEST rows (scoring).
        config: Settings.
    """
    from evaluation.features import resolve_layer

    rows: list[MetricRow] = []
    frames = []
    layer = None
    if model is not None:
        layer = resolve_layer(config.layer, model.config.num_hidden_layers)
    for ratio in config.mask_ratios:
        train_masks = masks_for(train, ratio, config.seed)
        test_masks = masks_for(test, ratio, config.seed + 1)
        feature_sets = [
            (
                "bag_of_codes",
                code_histograms(train.codes, train_masks, vocab.codebook_size),
                code_histograms(test.codes, test_masks, vocab.codebook_size),
            )
        ]
        if model is not None:
            feature_sets.append(
                (
                    "model",
                    hidden_state_features(
                        model, train.codes, train_masks, vocab, layer, config.batch_size
                    ),
                    hidden_state_features(
                        model, test.codes, test_masks, vocab, layer, config.batch_size
                    ),
                )
            )
        for method, train_x, test_x in feature_sets:
            new_rows, frame = evaluate_features(
                method, float(ratio), train_x, train, test_x, test, config
            )
            rows.extend(new_rows)
            if frame.height:
                frames.append(frame)
    samples = pl.concat(frames) if frames else pl.DataFrame()
    return FindingsResult(rows, samples, {"layer": [float(layer or 0)]})
