"""Findings classification under image-token masking (CheXmix's discriminative benchmark).

Protocol (nothing looks at TEST to choose anything):

1. **Layer, chosen on VALIDATE.** For every candidate layer (all layers of a small model, the
   early-middle band of a deep one; ``features.candidate_layers``) features are the mean hidden
   state over the image positions, taken in ONE forward pass per image. One logistic-regression
   probe per CheXpert observation is fitted on TRAIN features and scored on VALIDATE without
   masking; the layer with the best VALIDATE macro AUROC wins (ties: the shallower layer).
2. **TEST, once.** Per mask ratio, a fixed fraction of each image's tokens is replaced by the mask
   id (seeded per image), probes are fitted on TRAIN features of the same ratio at the chosen
   layer and scored on TEST: AUROC per observation and macro, with patient-bootstrap intervals.

Targets follow one uncertainty policy (``data.uncertainty_targets``, the ``finding_labels``
policies); an observation is scored only with ``min_test_positives`` positive and as many
negative PATIENTS. TRAIN is capped at a deterministic patient-level subset. Baseline in the same
table: the same probe on a bag-of-image-codes histogram (no transformer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from torch import nn

from cxr.labeler import OBSERVATIONS
from evaluation.data import (
    DEFAULT_UNCERTAINTY_POLICY,
    EvalRows,
    mask_positions,
    patient_subset,
)
from evaluation.features import (
    candidate_layers,
    code_histograms,
    hidden_state_features,
    hidden_state_features_by_layer,
    pixel_block_features,
    resolve_layer,
)
from evaluation.results import MetricRow
from evaluation.stats import auroc, interval, resample_counts, weighted_auroc
from models.vocabulary import Vocabulary

TASK = "findings"


@dataclass(frozen=True)
class FindingsConfig:
    """Settings of the findings benchmark.

    Attributes:
        layer: None (default): the layer is chosen on VALIDATE among ``candidate_layers``.
            A hidden-state index (>= 1) or a depth fraction in (0, 1) fixes it instead.
        candidate_layers: Layers to choose among (indices or depth fractions); empty: every
            layer of a model of at most 12 blocks, else the 7-12-of-32 band of the depth.
        mask_ratios: Fractions of image tokens masked (same masks for every checkpoint).
        probe_c: Inverse L2 strength of the logistic-regression probe.
        min_test_positives: An observation is scored on TEST only with at least this many
            positive and this many negative PATIENTS.
        min_validate_positives: The same floor on VALIDATE, for the layer choice (VALIDATE is
            usually the smallest split; None: ``min_test_positives``).
        uncertainty_policy: Target of an uncertain mention: ``u_ones`` (positive, default),
            ``u_zeros`` (negative) or ``ignore`` (left out of that observation).
        views: ``frontal`` (PA/AP images only, default) or ``all``.
        max_train_images: TRAIN images the probes are fitted on (a deterministic patient-level
            subset beyond it), so evaluation cost does not grow with TRAIN; None: all.
        pixel_grid: Blocks per side of the ``pixel_blocks`` ceiling baseline (block means of
            the image tokenizer's reconstruction; a multiple of the code grid); 0: no such
            baseline.
        n_boot: Bootstrap resamples for the intervals.
        batch_size: Images per forward pass.
        seed: Masking and bootstrap seed.
    """

    layer: int | float | None = None
    candidate_layers: Sequence[int | float] = ()
    mask_ratios: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8)
    probe_c: float = 0.5
    min_test_positives: int = 3
    min_validate_positives: int | None = None
    uncertainty_policy: str = DEFAULT_UNCERTAINTY_POLICY
    views: str = "frontal"
    max_train_images: int | None = 20000
    pixel_grid: int = 16
    n_boot: int = 500
    batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class LayerSelection:
    """Which layer the TEST scores use, and why.

    Attributes:
        layer: The chosen hidden-state index.
        validate_scores: Candidate layer -> VALIDATE macro AUROC (None: not defined).
        status: ``chosen on validate``, ``fixed by config`` or ``fallback: <reason>``.
        validate_images: VALIDATE images behind the scores.
    """

    layer: int
    validate_scores: dict[int, float | None]
    status: str
    validate_images: int = 0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (for metadata and caches)."""
        return {
            "layer": self.layer,
            "validate_scores": {str(k): v for k, v in self.validate_scores.items()},
            "status": self.status,
            "validate_images": self.validate_images,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LayerSelection:
        """Inverse of ``to_dict``."""
        return cls(
            int(data["layer"]),
            {int(k): v for k, v in data["validate_scores"].items()},
            str(data["status"]),
            int(data.get("validate_images", 0)),
        )


@dataclass
class FindingsResult:
    """Metric rows, per-sample probe scores (long format), the layer selection.

    ``test_patients``: per observation, the TEST patients with a positive / a negative target.
    """

    rows: list[MetricRow]
    samples: pl.DataFrame
    curves: dict[str, list[float]] = field(default_factory=dict)
    selection: LayerSelection | None = None
    test_patients: dict[str, tuple[int, int]] = field(default_factory=dict)


def prepare_rows(rows: EvalRows, config: FindingsConfig, cap: bool = False) -> EvalRows:
    """The findings task's rows: the configured views, TRAIN capped at whole patients."""
    rows = rows.views(config.views)
    return patient_subset(rows, config.max_train_images) if cap else rows


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


def _masked_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC over the samples whose target is defined (NaN targets are left out)."""
    keep = np.isfinite(y)
    return auroc(y[keep], s[keep])


def _class_patients(target: np.ndarray, patients: Sequence[str]) -> tuple[int, int]:
    """Distinct patients with a positive image, and with a negative image."""
    patients = np.asarray(patients)
    return len(set(patients[target == 1.0])), len(set(patients[target == 0.0]))


def probe_scores(
    train_x: np.ndarray,
    train_t: np.ndarray,
    eval_x: np.ndarray,
    eval_t: np.ndarray,
    eval_patients: Sequence[str],
    config: FindingsConfig,
    min_patients: int | None = None,
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Probe scores on the evaluated rows for every observation that can be scored.

    Args:
        train_x: float (M, D) TRAIN features.
        train_t: float (M, 14) TRAIN targets (NaN = left out).
        eval_x: float (E, D) features of the rows scored (VALIDATE or TEST).
        eval_t: float (E, 14) their targets.
        eval_patients: E patient ids.
        config: Settings (``min_test_positives``, ``probe_c``, ``seed``).
        min_patients: Positive / negative patient floor (None: ``min_test_positives``).

    Returns:
        Observation index -> float (E,) scores, and observation index -> skip reason.
    """
    scores: dict[int, np.ndarray] = {}
    skipped: dict[int, str] = {}
    floor = config.min_test_positives if min_patients is None else min_patients
    for k in range(len(OBSERVATIONS)):
        n_pos, n_neg = _class_patients(eval_t[:, k], eval_patients)
        if min(n_pos, n_neg) < floor:
            skipped[k] = f"skipped: {n_pos} positive / {n_neg} negative patients (< {floor})"
            continue
        keep = np.isfinite(train_t[:, k])
        s = fit_probe_scores(train_x[keep], train_t[keep, k], eval_x, config.probe_c, config.seed)
        if s is None:
            skipped[k] = "skipped: one class only in the train split"
            continue
        scores[k] = s
    return scores, skipped


def macro_auroc(targets: np.ndarray, scores: dict[int, np.ndarray], index: np.ndarray) -> float:
    """Mean AUROC over the scored observations defined on the samples ``index``.

    A resample that happens to draw no positive of a rare observation still counts the others.
    """
    values = np.array([_masked_auroc(targets[index, k], s[index]) for k, s in scores.items()])
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the finite entries; NaN for a column with none."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def weighted_macro_auroc(
    targets: np.ndarray, scores: dict[int, np.ndarray], weights: np.ndarray
) -> np.ndarray:
    """``macro_auroc`` for every row of sample weights (B, M) at once (``weighted_auroc``)."""
    weights = np.atleast_2d(weights)
    if not scores:
        return np.full(len(weights), np.nan)
    return _nanmean_rows(
        np.stack([weighted_auroc(targets[:, k], s, weights) for k, s in scores.items()])
    )


def evaluate_features(
    method: str,
    ratio: float,
    train_x: np.ndarray,
    train: EvalRows,
    test_x: np.ndarray,
    test: EvalRows,
    config: FindingsConfig,
    layer: int | None = None,
) -> tuple[list[MetricRow], pl.DataFrame]:
    """Per-observation and macro AUROC of probes on one feature set.

    ``layer`` (the model's hidden state, None for a baseline) becomes the rows' setting.
    """
    train_t = train.targets(config.uncertainty_policy)
    test_t = test.targets(config.uncertainty_policy)
    setting = "" if layer is None else f"layer {layer}"
    resamples = resample_counts(test.patient_ids, config.n_boot, config.seed)
    per_observation: dict[int, np.ndarray] = {}
    scores, skipped = probe_scores(train_x, train_t, test_x, test_t, test.patient_ids, config)
    rows: list[MetricRow] = []
    samples = []
    for k, observation in enumerate(OBSERVATIONS):
        y = test_t[:, k]
        keep = np.isfinite(y)
        if k in skipped:
            rows.append(
                MetricRow(
                    TASK,
                    method,
                    "auroc",
                    None,
                    observation,
                    ratio,
                    setting=setting,
                    n=int(keep.sum()),
                    status=skipped[k],
                )
            )
            continue
        s = scores[k]
        per_observation[k] = weighted_auroc(y, s, resamples)
        est = interval(_masked_auroc(y, s), per_observation[k], int(keep.sum()))
        rows.append(
            MetricRow(
                TASK,
                method,
                "auroc",
                est.value,
                observation,
                ratio,
                setting=setting,
                ci_low=est.ci_low,
                ci_high=est.ci_high,
                n=est.n,
            )
        )
        samples.append(
            pl.DataFrame(
                {
                    "image_id": np.asarray(test.image_ids)[keep],
                    "patient_id": np.asarray(test.patient_ids)[keep],
                    "method": method,
                    "layer": layer or 0,
                    "mask_ratio": ratio,
                    "observation": observation,
                    "label": y[keep].astype(np.int8),
                    "score": s[keep].astype(np.float32),
                },
                schema_overrides={"layer": pl.Int16},
            )
        )
    if scores:
        est = interval(
            macro_auroc(test_t, scores, np.arange(len(test))),
            _nanmean_rows(np.stack(list(per_observation.values()))),
            len(test),
        )
        rows.append(
            MetricRow(
                TASK,
                method,
                "macro_auroc",
                est.value,
                "",
                ratio,
                setting=setting,
                ci_low=est.ci_low,
                ci_high=est.ci_high,
                n=est.n,
                status=f"ok: {len(scores)} observations",
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
                setting=setting,
                n=len(test),
                status="skipped: no observation has enough positive and negative test patients",
            )
        )
    frame = pl.concat(samples) if samples else pl.DataFrame()
    return rows, frame


def select_layer(
    model: nn.Module,
    vocab: Vocabulary,
    train: EvalRows,
    validate: EvalRows | None,
    config: FindingsConfig,
) -> tuple[LayerSelection, dict[int, np.ndarray]]:
    """The layer whose TRAIN-fitted probes score best on VALIDATE (no masking).

    TEST is not an argument: nothing about it can influence the choice. ``train`` and
    ``validate`` are used as given (``prepare_rows`` them first).

    Returns:
        The selection, and the unmasked TRAIN features of every layer computed (layer ->
        (M, D)), so the caller does not extract them twice.
    """
    num_layers = int(model.config.num_hidden_layers)
    if config.layer is not None:
        layer = resolve_layer(config.layer, num_layers)
        return LayerSelection(layer, {}, "fixed by config"), {}
    if validate is None or len(validate) == 0:
        raise ValueError(
            "choosing the feature layer needs VALIDATE rows; got none (or set a fixed `layer`)"
        )
    layers = candidate_layers(config.candidate_layers, num_layers)
    train_x = hidden_state_features_by_layer(
        model, train.codes, None, vocab, layers, config.batch_size
    )
    val_x = hidden_state_features_by_layer(
        model, validate.codes, None, vocab, layers, config.batch_size
    )
    train_t = train.targets(config.uncertainty_policy)
    val_t = validate.targets(config.uncertainty_policy)
    floor = config.min_validate_positives
    everything = np.arange(len(validate))
    found: dict[int, float | None] = {}
    for layer in layers:
        scores, _ = probe_scores(
            train_x[layer], train_t, val_x[layer], val_t, validate.patient_ids, config, floor
        )
        value = macro_auroc(val_t, scores, everything) if scores else float("nan")
        found[layer] = value if np.isfinite(value) else None
    defined = {k: v for k, v in found.items() if v is not None}
    if defined:
        best = max(defined.values())
        layer = min(k for k, v in defined.items() if v == best)  # ties: the shallower layer
        status = "chosen on validate"
    else:
        layer = layers[len(layers) // 2]
        status = (
            "fallback: no observation has enough positive and negative VALIDATE patients; "
            "middle candidate"
        )
    return LayerSelection(layer, found, status, len(validate)), train_x


def selection_rows(selection: LayerSelection) -> list[MetricRow]:
    """The candidates' VALIDATE macro AUROC as metric rows (metric ``validate_macro_auroc``)."""
    return [
        MetricRow(
            TASK,
            "model",
            "validate_macro_auroc",
            value,
            "",
            0.0,
            setting=f"layer {layer}",
            n=selection.validate_images,
            status=("ok: chosen" if layer == selection.layer else "ok")
            if value is not None
            else "skipped: not defined on validate",
        )
        for layer, value in sorted(selection.validate_scores.items())
    ]


def _impute_train_mean(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN (masked) features replaced by the TRAIN mean of their column (0 where all NaN)."""
    with np.errstate(all="ignore"):
        fill = np.nan_to_num(np.nanmean(train_x, axis=0), nan=0.0)
    return (np.where(np.isnan(x), fill, x).astype(np.float32) for x in (train_x, test_x))


def run_findings(
    model: nn.Module | None,
    vocab: Vocabulary,
    train: EvalRows,
    test: EvalRows,
    config: FindingsConfig,
    validate: EvalRows | None = None,
    decode: Callable[[np.ndarray], np.ndarray] | None = None,
) -> FindingsResult:
    """The findings table for one checkpoint (``model``) and its baselines.

    Args:
        model: The LM, or None for the baselines alone.
        vocab: Id layout.
        train: TRAIN rows (probe fitting); capped to ``max_train_images`` whole patients.
        test: TEST rows (scoring, once, at the chosen layer).
        config: Settings.
        validate: VALIDATE rows (the layer choice); needed unless ``config.layer`` is set.
        decode: Image tokenizer decoder, int (M, N) codes -> (M, H, W) images, for the
            ``pixel_blocks`` baseline (None, or ``config.pixel_grid`` 0: no such baseline).
    """
    train = prepare_rows(train, config, cap=True)
    test = prepare_rows(test, config)
    pixels = None
    if decode is not None and config.pixel_grid > 0:
        pixels = (decode(train.codes), decode(test.codes))
    code_grid = math.isqrt(train.codes.shape[1])
    rows: list[MetricRow] = []
    frames = []
    selection = None
    unmasked_train: dict[int, np.ndarray] = {}
    if model is not None:
        if validate is not None:
            validate = prepare_rows(validate, config)
        selection, unmasked_train = select_layer(model, vocab, train, validate, config)
        rows.extend(selection_rows(selection))
    for ratio in config.mask_ratios:
        train_masks = masks_for(train, ratio, config.seed)
        test_masks = masks_for(test, ratio, config.seed + 1)
        feature_sets = [
            (
                "bag_of_codes",
                None,
                code_histograms(train.codes, train_masks, vocab.codebook_size),
                code_histograms(test.codes, test_masks, vocab.codebook_size),
            )
        ]
        if pixels is not None:
            feature_sets.append(
                (
                    "pixel_blocks",
                    None,
                    *_impute_train_mean(
                        pixel_block_features(pixels[0], train_masks, config.pixel_grid, code_grid),
                        pixel_block_features(pixels[1], test_masks, config.pixel_grid, code_grid),
                    ),
                )
            )
        if selection is not None:
            layer = selection.layer
            if train_masks is None and layer in unmasked_train:
                train_x = unmasked_train[layer]
            else:
                train_x = hidden_state_features(
                    model, train.codes, train_masks, vocab, layer, config.batch_size
                )
            test_x = hidden_state_features(
                model, test.codes, test_masks, vocab, layer, config.batch_size
            )
            feature_sets.append(("model", layer, train_x, test_x))
        for method, layer, train_x, test_x in feature_sets:
            new_rows, frame = evaluate_features(
                method, float(ratio), train_x, train, test_x, test, config, layer
            )
            rows.extend(new_rows)
            if frame.height:
                frames.append(frame)
    samples = pl.concat(frames) if frames else pl.DataFrame()
    chosen = selection.layer if selection is not None else 0
    test_t = test.targets(config.uncertainty_policy)
    return FindingsResult(
        rows,
        samples,
        {"layer": [float(chosen)], "train_images": [float(len(train))]},
        selection,
        {o: _class_patients(test_t[:, k], test.patient_ids) for k, o in enumerate(OBSERVATIONS)},
    )
