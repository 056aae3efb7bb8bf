"""The four benchmark tasks on a tiny random model and synthetic rows (no Dagster)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.catalog import Catalog
from cxr.labeler import OBSERVATIONS
from evaluation.data import EvalRows, image_prefix_ids, mask_positions
from evaluation.features import pixel_block_features
from evaluation.findings import FindingsConfig, run_findings, select_layer
from evaluation.inpainting import InpaintingConfig, positionwise_mode, run_inpainting
from evaluation.report_generation import (
    ReportGenerationConfig,
    clinical_f1,
    generate_reports,
    green_scores,
    parse_green,
    run_report_generation,
)
from evaluation.results import EvalRunInfo, MetricRow, read_results, upsert_results
from evaluation.retrieval import RetrievalConfig, report_log_likelihoods, run_retrieval
from evaluation.stats import patient_bootstrap
from models.early_fusion import build_model, lm_config_from_preset
from models.vocabulary import Vocabulary
from models.vq_tokenizer import VQTokenizer, config_from_preset

CODES = 16  # 4 x 4 grid
CODEBOOK = 16


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
    m = build_model(lm_config_from_preset("debug"), vocab, max_positions=CODES + 40)
    return m.eval()


def make_rows(n: int, seed: int, patients: int | None = None) -> EvalRows:
    """Rows whose Cardiomegaly label is visible in the codes (code 3 frequent when positive)."""
    rng = np.random.default_rng(seed)
    labels = np.full((n, len(OBSERVATIONS)), np.nan, dtype=np.float32)
    positive = rng.random(n) < 0.5
    labels[:, OBSERVATIONS.index("Cardiomegaly")] = positive.astype(np.float32)
    labels[:, OBSERVATIONS.index("Edema")] = (rng.random(n) < 0.4).astype(np.float32)
    codes = rng.integers(0, CODEBOOK, size=(n, CODES))
    codes[positive, :6] = 3
    patients = patients or n
    return EvalRows(
        image_ids=[f"img_{seed}_{i:03d}" for i in range(n)],
        study_ids=[f"stu_{seed}_{i // 2:03d}" for i in range(n)],
        patient_ids=[f"pat_{seed}_{i % patients:03d}" for i in range(n)],
        codes=codes,
        text_ids=[list(rng.integers(3, 40, size=rng.integers(3, 9))) for _ in range(n)],
        labels=labels,
        total_rows=n,
    )


def test_masks_are_exact_seeded_and_per_image():
    a = mask_positions("img_a", 64, 0.4, seed=0)
    assert a.sum() == round(0.4 * 64)
    assert np.array_equal(a, mask_positions("img_a", 64, 0.4, seed=0))
    assert not np.array_equal(a, mask_positions("img_b", 64, 0.4, seed=0))
    block = mask_positions("img_a", 64, 0.25, seed=0, pattern="block").reshape(8, 8)
    rows, cols = np.nonzero(block)
    assert block.sum() == 16 and np.ptp(rows) == 3 and np.ptp(cols) == 3
    with pytest.raises(ValueError, match="square"):
        mask_positions("img_a", 12, 0.25, seed=0, pattern="block")


def test_patient_bootstrap_interval_contains_the_estimate():
    values = np.arange(20, dtype=float)
    est = patient_bootstrap([f"p{i // 2}" for i in range(20)], lambda i: values[i].mean(), 200)
    assert est.ci_low < est.value < est.ci_high and est.n == 20
    assert est.value == pytest.approx(9.5)


def test_findings_probe_sees_a_visible_finding(model, vocab):
    train, test = make_rows(120, 1), make_rows(60, 2)
    cfg = FindingsConfig(layer=1, mask_ratios=(0.0, 0.8), n_boot=50, min_test_positives=3)
    result = run_findings(model, vocab, train, test, cfg)
    table = {(r.method, r.metric, r.observation, r.mask_ratio): r for r in result.rows}
    codes0 = table[("bag_of_codes", "auroc", "Cardiomegaly", 0.0)]
    assert codes0.value > 0.9 and codes0.ci_low <= codes0.value <= codes0.ci_high
    assert table[("model", "auroc", "Cardiomegaly", 0.0)].value is not None
    assert table[("model", "macro_auroc", "", 0.8)].value is not None
    # an observation absent from the test set is skipped with its reason, never scored
    fracture = table[("model", "auroc", "Fracture", 0.0)]
    assert fracture.value is None and fracture.status.startswith("skipped: 0 positive")
    assert set(result.samples["method"].unique()) == {"model", "bag_of_codes"}


def test_pixel_block_features_hide_masked_tokens():
    images = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    plain = pixel_block_features(images, None, grid=4, code_grid=2)
    assert plain.shape == (2, 16)
    assert plain[0, 0] == pytest.approx(images[0, :2, :2].mean() / 255.0)
    masks = np.zeros((2, 4), dtype=bool)
    masks[0, 1] = True  # the top-right token covers blocks (0, 2), (0, 3), (1, 2), (1, 3)
    hidden = pixel_block_features(images, masks, grid=4, code_grid=2).reshape(2, 4, 4)
    assert np.isnan(hidden[0, :2, 2:]).all() and np.isfinite(hidden[0, :, :2]).all()
    assert np.isfinite(hidden[1]).all()
    with pytest.raises(ValueError, match="multiple of the code grid"):
        pixel_block_features(images, masks, grid=2, code_grid=4)


def test_pixel_blocks_ceiling_reads_what_the_decoder_shows(model, vocab):
    """The pixel baseline sees a finding drawn in the decoded pixels, code histograms do not."""
    train, test = make_rows(120, 1), make_rows(60, 2)
    bright = {}  # Edema: a bright top-left corner in the decoded image, codes drawn at random
    for seed, rows in enumerate((train, test)):
        rows.codes = np.random.default_rng(5 + seed).integers(0, CODEBOOK, size=rows.codes.shape)
        for codes, label in zip(
            rows.codes, rows.labels[:, OBSERVATIONS.index("Edema")], strict=True
        ):
            bright[codes.tobytes()] = label == 1.0

    def decode(codes):
        images = np.full((len(codes), 8, 8), 100, dtype=np.uint8)
        images[[bright[c.tobytes()] for c in codes], :2, :2] = 250
        return images

    cfg = FindingsConfig(layer=1, mask_ratios=(0.0, 0.8), n_boot=50, pixel_grid=4)
    result = run_findings(model, vocab, train, test, cfg, decode=decode)
    table = {(r.method, r.metric, r.observation, r.mask_ratio): r for r in result.rows}
    assert table[("pixel_blocks", "auroc", "Edema", 0.0)].value > 0.95
    assert table[("bag_of_codes", "auroc", "Edema", 0.0)].value < 0.75
    assert set(result.samples["method"].unique()) == {"model", "bag_of_codes", "pixel_blocks"}
    n_pos, n_neg = result.test_patients["Edema"]
    assert n_pos == int((test.labels[:, OBSERVATIONS.index("Edema")] == 1).sum()) and n_neg > 0
    # no decoder, or pixel_grid 0: no such baseline
    cfg0 = FindingsConfig(layer=1, mask_ratios=(0.0,), n_boot=10, pixel_grid=0)
    plain = run_findings(model, vocab, train, test, cfg0, decode=decode)
    assert "pixel_blocks" not in set(plain.samples["method"].unique())


def test_layer_choice_uses_its_own_validate_floor(model, vocab):
    """A TEST floor larger than VALIDATE can meet must not force the fallback layer."""
    train, validate = make_rows(120, 1), make_rows(40, 4)
    strict = FindingsConfig(min_test_positives=30, n_boot=10)
    selection, _ = select_layer(model, vocab, train, validate, strict)
    assert selection.status.startswith("fallback")
    own = FindingsConfig(min_test_positives=30, min_validate_positives=3, n_boot=10)
    selection, _ = select_layer(model, vocab, train, validate, own)
    assert selection.status == "chosen on validate"


def test_inpainting_scores_the_image_blind_baseline(vocab):
    torch.manual_seed(0)
    vq = VQTokenizer(config_from_preset("debug", codebook_size=CODEBOOK)).eval()
    with torch.no_grad():  # an untrained k-means codebook is all zeros: every code looks alike
        vq.codebook.copy_(torch.randn_like(vq.codebook))
    rows = make_rows(6, 3)
    rows.codes = np.random.default_rng(1).integers(0, CODEBOOK, (6, vq.grid_size**2))
    rows.codes[:, 0] = 7  # position 0 is 7 everywhere: the image-blind fill gets it right
    pixels = np.random.default_rng(0).integers(0, 255, (6, 48, 48), dtype=np.uint8)
    cfg = InpaintingConfig(mask_ratios=(0.25,), patterns=("random", "block"), n_boot=20)
    mode = positionwise_mode(rows.codes, CODEBOOK)
    assert mode[0] == 7
    result = run_inpainting(None, vq, vocab, rows, pixels, mode, cfg)
    metrics = {(r.method, r.metric, r.setting): r.value for r in result.rows}
    assert 0 <= metrics[("image_blind_mode_fill", "masked_token_accuracy", "random")] <= 1
    assert 0 < metrics[("image_blind_mode_fill", "psnr_vs_reconstruction", "block")] < 100
    assert metrics[("vq_reconstruction", "psnr_vs_original", "no masking")] > 0
    assert result.preview_png.startswith(b"\x89PNG")
    assert result.samples.height == 2 * 6


def test_prefix_cache_scores_equal_full_forward(model, vocab):
    rows = make_rows(3, 4)
    prefixes = image_prefix_ids(rows.codes, None, vocab, with_eot=True)
    reports = [[5, 6, 7, vocab.image_start_id], [9, vocab.image_start_id]]
    ids = torch.full((2, 4), vocab.pad_id)
    valid = torch.zeros((2, 4), dtype=torch.bool)
    for k, r in enumerate(reports):
        ids[k, : len(r)] = torch.tensor(r)
        valid[k, : len(r)] = True
    cached = report_log_likelihoods(model, prefixes, ids, valid, batch_size=2)
    for p in range(3):
        for k, r in enumerate(reports):
            full = torch.cat([prefixes[p], torch.tensor(r)])[None]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=full).logits[0].double(), -1)
            start = prefixes.shape[1]
            expected = sum(float(logp[start - 1 + t, tok]) for t, tok in enumerate(r))
            assert cached[p, k] == pytest.approx(expected, abs=1e-3)


def test_retrieval_ranks_and_chance(model, vocab):
    rows = make_rows(8, 5)
    result = run_retrieval(model, vocab, rows, RetrievalConfig(ks=(1, 5), n_boot=20))
    values = {(r.method, r.metric): r.value for r in result.rows}
    assert values[("chance", "i2t_recall@1")] == pytest.approx(1 / 4)
    assert values[("chance", "t2i_recall@5")] == pytest.approx(
        1 - (6 * 5 * 4 * 3 * 2) / (8 * 7 * 6 * 5 * 4)
    )
    assert 0 <= values[("model", "i2t_recall@5")] <= 1
    assert result.scores.shape == (8, 4)


def test_generation_emits_only_text_ids_within_bounds(model, vocab):
    rows = make_rows(4, 6)
    cfg = ReportGenerationConfig(min_new_tokens=5, max_new_tokens=12, batch_size=3)
    reports = generate_reports(model, rows.codes, vocab, cfg)
    assert len(reports) == 4
    for r in reports:
        assert 5 <= len(r) <= 12 and all(0 <= t < vocab.text_vocab_size for t in r)


def test_report_generation_scores_and_skips_green(model, vocab):
    train, test = make_rows(10, 7), make_rows(4, 8)
    words = {t: f"w{t}" for t in range(40)}
    words[5] = "cardiomegaly"
    words[6] = "no effusion"

    def decode(ids: list[int]) -> str:
        return " ".join(words[t] for t in ids if t >= 3)

    cfg = ReportGenerationConfig(max_new_tokens=8, n_boot=20, feature_layer=None)
    result = run_report_generation(model, vocab, decode, train, test, cfg)
    green = [r for r in result.rows if r.metric == "green"]
    assert green and all(r.value is None and r.status.startswith("skipped") for r in green)
    methods = {r.method for r in result.rows}
    assert methods == {"model", "nearest_train_report_codes"}
    assert result.samples.height == 8


@pytest.fixture(scope="module")
def local_judge(tmp_path_factory) -> Path:
    """A tiny causal LM on disk with a chat template, as a GREEN judge directory would be."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.text_tokenizer import train_bpe

    folder = tmp_path_factory.mktemp("judge")
    tokenizer = train_bpe(["Heart size is normal. No pleural effusion."] * 20, vocab_size=300)
    tokenizer.chat_template = (
        "{% for m in messages %}[user] {{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_green_with_a_local_judge_reports_unparsed_answers_as_a_failure(model, vocab, local_judge):
    """The judge path end to end: chat template, generation, parsing; nonsense is never a score."""
    hypotheses, references = ["Normal heart.", "Effusion."], ["Heart size is normal.", "None."]
    assert green_scores(str(local_judge), hypotheses, references, 6) == [None, None]
    train, test = make_rows(10, 7), make_rows(4, 8)
    cfg = ReportGenerationConfig(
        max_new_tokens=4,
        n_boot=10,
        green_model_path=str(local_judge),
        green_max_new_tokens=4,
        feature_layer=None,
    )
    result = run_report_generation(model, vocab, lambda ids: "w", train, test, cfg)
    green = [r for r in result.rows if r.metric == "green"]
    assert {r.method for r in green} == {"model", "nearest_train_report_codes"}
    assert all(r.value is None and r.status.startswith("failed: none of the 4") for r in green)


def test_report_generation_feature_baseline_uses_the_models_layer_features(model, vocab):
    train, test = make_rows(10, 7), make_rows(4, 8)
    cfg = ReportGenerationConfig(max_new_tokens=4, n_boot=10)
    result = run_report_generation(model, vocab, lambda ids: "w", train, test, cfg)
    assert {r.method for r in result.rows} == {
        "model",
        "nearest_train_report_codes",
        "nearest_train_report_features",
    }
    baselines = run_report_generation(None, vocab, lambda ids: "w", train, test, cfg)
    assert {r.method for r in baselines.rows} == {"nearest_train_report_codes"}


def test_green_rows_score_only_parsed_answers():
    from evaluation.report_generation import _green_row

    cfg = ReportGenerationConfig(green_model_path="/judge", n_boot=50)
    row = _green_row("model", [0.5, None, 1.0, 0.0], ["p1", "p1", "p2", "p3"], cfg)
    assert row.value == pytest.approx(0.5) and row.n == 3
    assert row.status == "ok (1 judge answers unparsed)"
    assert row.ci_low <= row.value <= row.ci_high
    skipped = _green_row("model", [None], ["p1"], ReportGenerationConfig())
    assert skipped.value is None and skipped.status.startswith("skipped")


def test_clinical_f1_and_green_parser():
    ref = np.array([[1, 0, 1], [0, 0, 1]], dtype=bool)
    pred = np.array([[1, 1, 0], [0, 0, 1]], dtype=bool)
    micro, macro = clinical_f1(pred, ref)
    assert micro == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert macro == pytest.approx((1.0 + 2 / 3) / 2)
    answer = (
        "[Explanation]:\nok\n\n[Clinically Significant Errors]:\n(a) False report: 1. x\n"
        "(b) Missing a finding: 0.\n(c) Misidentification: 2. y; z\n\n"
        "[Clinically Insignificant Errors]:\n(a) False report: 0.\n\n"
        "[Matched Findings]:\n3. a; b; c"
    )
    assert parse_green(answer) == pytest.approx(3 / 6)
    assert parse_green("I cannot evaluate this") is None


def _write_rows(catalog_path: str, value: float) -> None:
    info = EvalRunInfo("ckpt-a", "findings", f"run-{value}", "/x", "h", {}, {}, "c", "code")
    rows = [MetricRow("findings", "model", "auroc", value, o) for o in OBSERVATIONS]
    for _ in range(5):
        upsert_results(Catalog(Path(catalog_path)), info, rows)


def test_results_upsert_is_idempotent_and_safe_across_processes(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_rows, args=(str(catalog.path), v)) for v in (0.6, 0.7)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    frame = read_results(catalog)
    assert frame.height == len(OBSERVATIONS)  # no duplicates, no lost rows
    assert frame["value"].n_unique() == 1 and frame["run_id"].n_unique() == 1
    with pytest.raises(ValueError, match="duplicate"):
        upsert_results(
            catalog,
            EvalRunInfo("ckpt-a", "findings", "r", "/x", "h", {}, {}, "c", "code"),
            [MetricRow("findings", "model", "auroc", 0.5)] * 2,
        )


def test_auroc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from evaluation.stats import auroc

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(40) < 0.3
        s = np.round(rng.random(40), 1)  # many ties
        if y.any() and not y.all():
            assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(auroc(np.zeros(5), np.arange(5)))


def test_resample_counts_are_the_resamples_of_resample_indices():
    from evaluation.stats import resample_counts, resample_indices

    groups = [f"p{i % 7}" for i in range(30)]
    counts = resample_counts(groups, 50, seed=3)
    indices = resample_indices(groups, 50, seed=3)
    assert counts.shape == (50, 30)
    for row, index in zip(counts, indices, strict=True):
        np.testing.assert_array_equal(row, np.bincount(index, minlength=30))
    assert resample_counts(groups, 0).shape == (0, 30)


def test_weighted_statistics_equal_the_per_resample_loop():
    """The vectorised bootstrap gives what indexing every resample gives: ties, NaN targets,
    resamples with one class only (NaN), rows of observations."""
    from evaluation.findings import macro_auroc, weighted_macro_auroc
    from evaluation.stats import (
        auroc,
        resample_counts,
        resample_indices,
        weighted_auroc,
        weighted_nanmean,
    )

    rng = np.random.default_rng(1)
    n = 60
    groups = [f"p{i // 3}" for i in range(n)]
    targets = (rng.random((n, 3)) < [0.3, 0.05, 0.5]).astype(float)
    targets[rng.random((n, 3)) < 0.1] = np.nan
    scores = {k: np.round(rng.normal(size=n), 1) for k in range(3)}  # many ties
    counts = resample_counts(groups, 200, seed=2)
    indices = resample_indices(groups, 200, seed=2)
    y, s = targets[:, 0], scores[0]
    keep = np.isfinite(y)
    loop = np.array([auroc(y[i][keep[i]], s[i][keep[i]]) for i in indices])
    np.testing.assert_allclose(weighted_auroc(y, s, counts), loop, rtol=0, atol=1e-12)
    y1, keep1 = targets[:, 1], np.isfinite(targets[:, 1])
    rare = np.array([auroc(y1[i][keep1[i]], scores[1][i][keep1[i]]) for i in indices])
    assert np.isnan(rare).any()  # some resamples draw no positive of the rare observation
    np.testing.assert_array_equal(
        np.isnan(weighted_auroc(targets[:, 1], scores[1], counts)), np.isnan(rare)
    )
    np.testing.assert_allclose(
        weighted_macro_auroc(targets, scores, counts),
        [macro_auroc(targets, scores, i) for i in indices],
        rtol=0,
        atol=1e-12,
    )
    assert weighted_auroc(y, s, np.ones(n))[0] == pytest.approx(auroc(y[keep], s[keep]), abs=1e-12)
    v = rng.normal(size=n)
    v[::5] = np.nan
    np.testing.assert_allclose(
        weighted_nanmean(v, counts), [np.nanmean(v[i]) for i in indices], rtol=0, atol=1e-12
    )
    assert np.isnan(weighted_nanmean(np.full(n, np.nan), counts[:2])).all()


def test_retrieval_ties_count_against_the_query(vocab):
    """A model that scores every pair the same retrieves nothing at k=1 (ties are misses)."""

    class Constant(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.config = type("C", (), {"max_position_embeddings": 64})()

        def forward(self, input_ids, past_key_values=None, **_):
            from transformers import DynamicCache

            logits = torch.zeros(*input_ids.shape, vocab.size) + self.weight
            return type("O", (), {"logits": logits, "past_key_values": DynamicCache()})()

    rows = make_rows(6, 9)
    result = run_retrieval(Constant(), vocab, rows, RetrievalConfig(ks=(1,), n_boot=0))
    values = {(r.method, r.metric): r.value for r in result.rows}
    assert values[("model", "i2t_recall@1")] == 0.0
    assert values[("model", "t2i_recall@1")] == 0.0
