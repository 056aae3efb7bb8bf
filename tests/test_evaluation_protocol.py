"""The evaluation protocol: layer chosen on VALIDATE only, paired comparisons, a retrieval prior
every arm computes the same way, labels scored as trained (no Dagster)."""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest
import torch
from test_evaluation import CODEBOOK, CODES, make_rows

from cxr.catalog import Catalog
from cxr.labeler import OBSERVATIONS, UNCERTAINTY_POLICIES, apply_uncertainty_policy
from evaluation.comparisons import (
    EvaluatedTask,
    comparables,
    comparison_pairs,
    paired_difference,
    read_comparisons,
    update_comparisons,
)
from evaluation.data import EvalRows, patient_subset, policy_of_labels, uncertainty_targets
from evaluation.features import (
    candidate_layers,
    hidden_state_features,
    hidden_state_features_by_layer,
    resolve_layer,
)
from evaluation.findings import FindingsConfig, run_findings, select_layer
from evaluation.results import EvalRunInfo, MetricRow, upsert_results
from evaluation.retrieval import RetrievalConfig, run_retrieval
from evaluation.stats import auroc, patient_bootstrap
from models.early_fusion import build_model, lm_config_from_preset
from models.vocabulary import Vocabulary

CARDIO = OBSERVATIONS.index("Cardiomegaly")


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary(
        text_vocab_size=40,
        codebook_size=CODEBOOK,
        image_start_id=1,
        image_end_id=2,
        eot_id=0,
        image_offset=64,
    )


@pytest.fixture(scope="module")
def model(vocab):
    torch.manual_seed(0)
    return build_model(lm_config_from_preset("debug"), vocab, max_positions=CODES + 40).eval()


def findings_samples(scores: np.ndarray, labels: np.ndarray, patients: list[str]) -> pl.DataFrame:
    """A findings ``samples.parquet`` with one observation (Cardiomegaly) for the model."""
    return pl.DataFrame(
        {
            "image_id": [f"img_{i:04d}" for i in range(len(scores))],
            "patient_id": patients,
            "method": "model",
            "layer": 1,
            "mask_ratio": 0.0,
            "observation": "Cardiomegaly",
            "label": labels.astype(np.int8),
            "score": scores.astype(np.float32),
        },
        schema_overrides={"layer": pl.Int16},
    )


def test_a_planted_difference_is_seen_paired_while_unpaired_intervals_overlap():
    rng = np.random.default_rng(0)
    n = 300
    patients = [f"p{i // 2:03d}" for i in range(n)]
    y = (rng.random(n) < 0.4).astype(float)
    shared = rng.normal(size=n)  # per-image difficulty both checkpoints share
    score_b = 0.6 * y + shared
    score_a = score_b + 0.12 * y  # checkpoint a ranks every positive a little higher
    a = findings_samples(score_a, y, patients)
    b = findings_samples(score_b, y, patients)
    (item,) = list(comparables("findings", a, b))
    assert item.metric == "macro_auroc" and item.setting == "layer 1 vs layer 1"
    paired = paired_difference(item.groups, item.statistic_a, item.statistic_b, 400, seed=0)
    assert paired.diff == pytest.approx(auroc(y, score_a) - auroc(y, score_b))
    assert paired.ci_low > 0 and paired.p_le_zero == 0.0
    assert paired.n_patients == n // 2
    unpaired = [
        patient_bootstrap(patients, lambda i, s=s: auroc(y[i], s[i]), 400, seed=0)
        for s in (score_a, score_b)
    ]
    assert unpaired[0].ci_low < unpaired[1].ci_high  # separately, they look alike


def test_layer_selection_never_reads_test(model, vocab):
    train, validate, test = make_rows(80, 21), make_rows(40, 22), make_rows(40, 23)
    cfg = FindingsConfig(mask_ratios=(0.0,), n_boot=10, min_test_positives=3)
    result = run_findings(model, vocab, train, test, cfg, validate=validate)
    poisoned = copy.deepcopy(test)
    poisoned.codes = np.random.default_rng(5).integers(0, CODEBOOK, poisoned.codes.shape)
    poisoned.labels = np.where(np.isnan(poisoned.labels), np.nan, 1.0 - poisoned.labels)
    again = run_findings(model, vocab, train, poisoned, cfg, validate=validate)
    assert result.selection == again.selection
    selection = result.selection
    assert selection.status == "chosen on validate"
    assert set(selection.validate_scores) == {1, 2}  # every layer of the 2-block debug model
    assert selection.validate_scores[selection.layer] == max(
        v for v in selection.validate_scores.values() if v is not None
    )
    # the candidates' VALIDATE scores are rows, and TEST is scored at the chosen layer only
    validate_rows = [r for r in result.rows if r.metric == "validate_macro_auroc"]
    assert {r.setting for r in validate_rows} == {"layer 1", "layer 2"}
    assert [r.status for r in validate_rows if r.setting == f"layer {selection.layer}"] == [
        "ok: chosen"
    ]
    model_rows = [r for r in result.rows if r.method == "model" and r.metric == "auroc"]
    assert {r.setting for r in model_rows} == {f"layer {selection.layer}"}
    assert set(result.samples.filter(pl.col("method") == "model")["layer"]) == {selection.layer}
    with pytest.raises(ValueError, match="VALIDATE"):
        run_findings(model, vocab, train, test, cfg)
    fixed = run_findings(model, vocab, train, test, FindingsConfig(layer=2, mask_ratios=(0.0,)))
    assert fixed.selection.layer == 2 and fixed.selection.status == "fixed by config"


def test_all_candidate_layers_come_from_one_forward_pass(model, vocab):
    rows = make_rows(6, 24)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    by_layer = hidden_state_features_by_layer(model, rows.codes, None, vocab, [1, 2], 32)
    handle.remove()
    assert len(calls) == 1
    for layer in (1, 2):
        single = hidden_state_features(model, rows.codes, None, vocab, layer)
        np.testing.assert_allclose(by_layer[layer], single, rtol=1e-5, atol=1e-6)
    # callers that need one layer without VALIDATE (bench/evaluate.py) get a default candidate
    assert resolve_layer(FindingsConfig().layer, 32) in candidate_layers((), 32)
    _, features = select_layer(
        model, vocab, rows, make_rows(6, 25), FindingsConfig(min_test_positives=1)
    )
    assert set(features) == {1, 2}


def test_retrieval_prior_gives_identical_scores_to_a_model_that_ignores_the_image(model, vocab):
    blind = copy.deepcopy(model)
    with torch.no_grad():  # every image code embeds the same: the image cannot matter
        weight = blind.get_input_embeddings().weight
        codes = slice(vocab.image_offset, vocab.image_offset + vocab.codebook_size)
        weight[codes] = weight[vocab.image_offset].clone()
    rows = make_rows(8, 26)
    result = run_retrieval(blind, vocab, rows, RetrievalConfig(n_boot=0))
    np.testing.assert_allclose(result.scores, 0.0, atol=1e-9)  # every pair scores the same
    masked = run_retrieval(blind, vocab, rows, RetrievalConfig(n_boot=0, prior="masked_image"))
    assert np.ptp(masked.scores) > 1e-3  # the mask-prefix prior ranks reports by a bias
    assert {r.setting for r in result.rows if r.method == "model"} == {"pmi, mean_image prior"}
    with pytest.raises(ValueError, match="prior"):
        RetrievalConfig(prior="blank")


def test_label_policy_round_trip():
    raw = {o: v for o, v in zip(OBSERVATIONS, [1.0, 0.0, -1.0, None] * 4, strict=False)}
    labels = np.array(
        [[np.nan if raw[o] is None else raw[o] for o in OBSERVATIONS]], dtype=np.float32
    )
    for policy in UNCERTAINTY_POLICIES:
        trained = apply_uncertainty_policy(raw, policy)
        scored = uncertainty_targets(labels, policy)[0]
        for k, o in enumerate(OBSERVATIONS):
            if raw[o] is None:
                assert scored[k] == 0.0  # not mentioned: negative in evaluation
            elif trained[o] is None:
                assert np.isnan(scored[k])  # left out, as in training
            else:
                assert scored[k] == trained[o]
    with pytest.raises(ValueError, match="uncertainty policy"):
        uncertainty_targets(labels, "u_maybe")


def test_evaluation_reads_the_policy_finding_labels_trained_with(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cxr.token_shards import LABEL_COLUMNS

    studies = [dict.fromkeys(OBSERVATIONS), {**dict.fromkeys(OBSERVATIONS), "Edema": -1.0}]
    for policy in UNCERTAINTY_POLICIES:
        rows = []
        for labels in studies:
            targets = apply_uncertainty_policy(labels, policy)
            rows.append(
                {
                    **{c: labels[o] for c, o in zip(LABEL_COLUMNS, OBSERVATIONS, strict=True)},
                    **{
                        f"target_{c}": targets[o]
                        for c, o in zip(LABEL_COLUMNS, OBSERVATIONS, strict=True)
                    },
                }
            )
        path = tmp_path / f"{policy}.parquet"
        schema = pa.schema([pa.field(k, pa.float32()) for k in rows[0]])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
        assert policy_of_labels(path) == policy
    pq.write_table(pa.Table.from_pylist(rows[:1], schema=schema), tmp_path / "none.parquet")
    assert policy_of_labels(tmp_path / "none.parquet") is None


def test_findings_follow_the_policy_count_patients_and_views(vocab):
    rows = make_rows(60, 27, patients=30)
    rows.labels[:10, CARDIO] = -1.0
    rows.is_frontal = np.arange(60) % 6 != 5
    cfg = FindingsConfig(mask_ratios=(0.0,), n_boot=0, views="all", min_test_positives=3)
    ignore = run_findings(
        None, vocab, rows, rows, FindingsConfig(**{**cfg.__dict__, "uncertainty_policy": "ignore"})
    )
    ones = run_findings(None, vocab, rows, rows, cfg)
    cardio = pl.col("observation") == "Cardiomegaly"
    assert ignore.samples.filter(cardio).height == 50 and ones.samples.filter(cardio).height == 60
    assert ones.samples.filter(cardio & (pl.col("image_id") == rows.image_ids[0]))["label"][0] == 1
    frontal = run_findings(None, vocab, rows, rows, FindingsConfig(mask_ratios=(0.0,), n_boot=0))
    assert frontal.samples.filter(cardio).height == 50
    # 4 positive images, but from 2 patients only: too few PATIENTS
    few = make_rows(24, 28, patients=12)
    few.labels[:, CARDIO] = 0.0
    few.labels[[0, 12, 1, 13], CARDIO] = 1.0  # both images of patients 0 and 1
    skipped = run_findings(None, vocab, few, few, cfg)
    row = next(r for r in skipped.rows if r.observation == "Cardiomegaly")
    assert row.value is None and row.status.startswith("skipped: 2 positive / 10 negative patients")


def test_train_cap_keeps_whole_patients_deterministically():
    rows = make_rows(40, 29, patients=10)  # 4 images per patient
    capped = patient_subset(rows, 12)
    assert len(capped) == 12 and len(set(capped.patient_ids)) == 3
    assert capped.image_ids == patient_subset(rows, 12).image_ids
    assert patient_subset(rows, None) is rows


def _upsert(
    catalog: Catalog, key: str, task: str, samples: pl.DataFrame, path, manifest: dict, run="1"
):
    samples.write_parquet(path)
    info = EvalRunInfo(
        key,
        task,
        f"run-{key}-{run}",
        f"/ckpt/{key}",
        "h",
        manifest,
        {},
        "cfg",
        "code",
        None,
        str(path),
    )
    upsert_results(catalog, info, [MetricRow(task, "model", "macro_auroc", 0.5)])


def test_comparisons_pair_arms_of_one_stage1_family_and_baselines(tmp_path):
    rng = np.random.default_rng(1)
    n = 80
    patients = [f"p{i:03d}" for i in range(n)]
    y = (rng.random(n) < 0.5).astype(float)
    catalog = Catalog(tmp_path / "catalog.duckdb")
    base = findings_samples(y + rng.normal(size=n), y, patients)
    codes = pl.concat(
        [
            base.with_columns(
                pl.lit(method).alias("method"), pl.lit(0).cast(pl.Int16).alias("layer")
            )
            for method in ("bag_of_codes", "pixel_blocks")
        ]
    )
    arms = {
        "stage1-a": {"arm": "stage1"},
        "stage1-continued-a": {"arm": "stage1-continued", "init_checkpoint": "/ckpt/stage1-a"},
        "stage2-a": {"arm": "stage2", "init_checkpoint": "/ckpt/stage1-a"},
        "stage2-other": {"arm": "stage2", "init_checkpoint": "/ckpt/stage1-other"},
    }
    for k, (key, manifest) in enumerate(arms.items()):  # later arms rank positives higher
        samples = base.with_columns((pl.col("score") + 0.1 * k * pl.col("label")).cast(pl.Float32))
        _upsert(
            catalog,
            key,
            "findings",
            pl.concat([samples, codes]),
            tmp_path / f"{key}.parquet",
            manifest,
        )
    counts = update_comparisons(catalog, n_boot=50, seed=0, code_version="test")
    frame = read_comparisons(catalog)
    pairs = set(
        frame.filter(pl.col("kind") == "checkpoint").select("checkpoint_a", "checkpoint_b").rows()
    )
    assert pairs == {
        ("stage2-a", "stage1-continued-a"),
        ("stage2-a", "stage1-a"),
        ("stage1-continued-a", "stage1-a"),
    }
    baselines = frame.filter(pl.col("kind") == "baseline")
    assert set(baselines["checkpoint_b"]) == {"bag_of_codes", "pixel_blocks"}
    assert baselines.height == 8
    assert counts == {"pairs": 11, "recomputed": 11, "kept": 0, "rows": 11}
    ablation = frame.filter(
        pl.col("checkpoint_a") == "stage2-a", pl.col("checkpoint_b") == "stage1-continued-a"
    )
    assert ablation["diff"][0] > 0 and ablation["arm_b"][0] == "stage1-continued"
    # nothing re-evaluated: nothing recomputed; one side re-evaluated: only its pairs
    assert update_comparisons(catalog, n_boot=50, seed=0)["recomputed"] == 0
    _upsert(
        catalog,
        "stage1-a",
        "findings",
        pl.concat([base, codes]),
        tmp_path / "again.parquet",
        arms["stage1-a"],
        run="2",
    )
    assert (
        update_comparisons(catalog, n_boot=50, seed=0)["recomputed"] == 2 + 2
    )  # its 2 baselines + 2 pairs


def test_comparison_pairs_order_later_arms_first():
    def task(key: str, arm: str, family: str) -> EvaluatedTask:
        return EvaluatedTask(key, "retrieval", "r", "s", "c", arm, family)

    pairs = comparison_pairs(
        [task("s1", "stage1", "F"), task("s2", "stage2", "F"), task("x", "external", "G")]
    )
    assert [(a.checkpoint_id, b.checkpoint_id, m) for a, b, m in pairs] == [
        ("s2", "s1", "model"),
        ("s2", "s2", "chance"),
        ("s1", "s1", "chance"),
        ("x", "x", "chance"),
    ]


def test_eval_rows_without_view_information_take_every_row():
    rows = EvalRows(["a"], ["s"], ["p"], np.zeros((1, CODES), int), [[3]], np.zeros((1, 14)), 1)
    assert rows.views("frontal") is rows
    with pytest.raises(ValueError, match="views"):
        rows.views("lateral")
