"""Report generation: greedy decoding after the image prompt, scored against the reference.

The prompt is ``<|img|> codes <|/img|> <|endoftext|>`` (the training layout), decoding is greedy
with the KV cache, batched (every prompt has the same length, so no padding), 5 to 200 new
tokens, stopping at ``<|img|>`` (the token that closes a report in training); only text ids may
be generated. Metrics: BLEU-4 (sacrebleu, corpus level), ROUGE-L F1 (rouge-score), clinical
efficacy (our CheXpert labeler on generated and reference text; "positive vs rest"; micro F1 over
all 14 observations, macro F1 over the observations positive in at least one reference), and
GREEN when a local judge model is configured (otherwise reported as skipped). Baseline: the TRAIN
report of the nearest TRAIN image (cosine similarity of image features).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from cxr.labeler import OBSERVATIONS, CheXpertLabeler
from evaluation import DEFAULT_LAYER
from evaluation.data import EvalRows, batches, image_prefix_ids
from evaluation.results import MetricRow
from evaluation.stats import Estimate, patient_bootstrap
from models.early_fusion import unwrap_model
from models.vocabulary import Vocabulary

TASK = "report_generation"


@dataclass(frozen=True)
class ReportGenerationConfig:
    """Settings of the report-generation benchmark.

    Attributes:
        min_new_tokens: Fewest tokens generated before ``<|img|>`` may end the report.
        max_new_tokens: Most tokens generated (also capped by the model's context length).
        batch_size: Reports decoded together.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.
        green_model_path: Local directory of a GREEN judge model (e.g. GREEN-RadLlama2-7b); empty:
            GREEN is reported as skipped (no model is ever downloaded).
        green_max_new_tokens: Judge output budget.
        feature_layer: Hidden-state layer (index or depth fraction) of the model's image
            features for the nearest-TRAIN-report-by-features baseline; None: no such baseline.
    """

    min_new_tokens: int = 5
    max_new_tokens: int = 200
    batch_size: int = 32
    n_boot: int = 500
    seed: int = 0
    green_model_path: str = ""
    green_max_new_tokens: int = 512
    feature_layer: int | float | None = DEFAULT_LAYER


@dataclass
class ReportGenerationResult:
    """Metric rows and per-sample generated / reference / baseline reports."""

    rows: list[MetricRow]
    samples: pl.DataFrame


class _TextOnly:
    """Logits processor: only text ids (specials included) may be generated."""

    def __init__(self, text_vocab_size: int) -> None:
        self.text_vocab_size = text_vocab_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, self.text_vocab_size :] = float("-inf")
        return scores


@torch.no_grad()
def generate_reports(
    model: nn.Module,
    codes: np.ndarray,
    vocab: Vocabulary,
    config: ReportGenerationConfig,
) -> list[list[int]]:
    """Greedy report token ids per image (without the closing ``<|img|>``)."""
    from transformers import LogitsProcessorList

    core = unwrap_model(model)
    device = next(core.parameters()).device
    prompt_len = codes.shape[1] + 3
    room = int(core.config.max_position_embeddings) - prompt_len
    max_new = max(1, min(config.max_new_tokens, room))
    min_new = min(config.min_new_tokens, max_new)
    out: list[list[int]] = []
    for part in batches(len(codes), config.batch_size):
        ids = image_prefix_ids(codes[part], None, vocab, with_eot=True).to(device)
        generated = core.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new,
            min_new_tokens=min_new,
            eos_token_id=vocab.image_start_id,
            pad_token_id=vocab.pad_id,
            logits_processor=LogitsProcessorList([_TextOnly(vocab.text_vocab_size)]),
            use_cache=True,
        )[:, prompt_len:]
        for row in generated.cpu().tolist():
            text = []
            for token in row:
                if token in (vocab.image_start_id, vocab.pad_id):
                    break
                text.append(token)
            out.append(text)
    return out


def nearest_reports(train_x: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Index of the most cosine-similar TRAIN row for each TEST row."""
    a = train_x / np.maximum(np.linalg.norm(train_x, axis=1, keepdims=True), 1e-12)
    b = test_x / np.maximum(np.linalg.norm(test_x, axis=1, keepdims=True), 1e-12)
    return (b @ a.T).argmax(axis=1)


# ----------------------------------------------------------------------------------------------
# Metrics


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 in [0, 1] (sacrebleu, default 13a tokenisation)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score / 100.0)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F1 per pair (rouge-score)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return np.array(
        [
            scorer.score(ref, hyp)["rougeL"].fmeasure
            for hyp, ref in zip(hypotheses, references, strict=True)
        ]
    )


def positive_matrix(labeler: CheXpertLabeler, texts: Sequence[str]) -> np.ndarray:
    """Bool (M, 14): observation labelled positive (1) in each text; the rest is negative."""
    return np.array(
        [[lab.get(o) == 1 for o in OBSERVATIONS] for lab in labeler.label_many(texts)],
        dtype=bool,
    ).reshape(len(texts), len(OBSERVATIONS))


def clinical_f1(predicted: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(micro F1 over every observation, macro F1 over observations positive in a reference)."""
    tp = (predicted & reference).sum(axis=0)
    fp = (predicted & ~reference).sum(axis=0)
    fn = (~predicted & reference).sum(axis=0)
    denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / denominator) if denominator else float("nan")
    present = reference.any(axis=0)
    if not present.any():
        return micro, float("nan")
    per = 2 * tp[present] / np.maximum(2 * tp[present] + fp[present] + fn[present], 1)
    return micro, float(per.mean())


def text_metrics(
    hypotheses: list[str],
    references: list[str],
    labeler: CheXpertLabeler,
    groups: Sequence[str],
    n_boot: int,
    seed: int,
) -> dict[str, Estimate]:
    """BLEU-4, ROUGE-L, clinical micro/macro F1 with patient-bootstrap intervals."""
    rouge = rouge_l(hypotheses, references)
    predicted = positive_matrix(labeler, hypotheses)
    reference = positive_matrix(labeler, references)
    statistics: dict[str, Callable[[np.ndarray], float]] = {
        "bleu4": lambda i: bleu4([hypotheses[k] for k in i], [references[k] for k in i]),
        "rouge_l": lambda i: float(rouge[i].mean()),
        "clinical_f1_micro": lambda i: clinical_f1(predicted[i], reference[i])[0],
        "clinical_f1_macro": lambda i: clinical_f1(predicted[i], reference[i])[1],
    }
    return {name: patient_bootstrap(groups, fn, n_boot, seed) for name, fn in statistics.items()}


# ----------------------------------------------------------------------------------------------
# GREEN (optional, local judge only)

GREEN_PROMPT = (
    "Objective: Evaluate the accuracy of a candidate radiology report in comparison to a "
    "reference radiology report composed by expert radiologists.\n\n"
    "Process Overview: You will be presented with:\n\n"
    "1. The criteria for making a judgment.\n2. The reference radiology report.\n"
    "3. The candidate radiology report.\n4. The desired format for your assessment.\n\n"
    "1. Criteria for Judgment:\n\n"
    "    For each candidate report, determine:\n\n"
    "    The count of clinically significant errors.\n"
    "    The count of clinically insignificant errors.\n\n"
    "    Errors can fall into one of these categories:\n\n"
    "    a) False report of a finding in the candidate.\n"
    "    b) Missing a finding present in the reference.\n"
    "    c) Misidentification of a finding's anatomic location/position.\n"
    "    d) Misassessment of the severity of a finding.\n"
    "    e) Mentioning a comparison that isn't in the reference.\n"
    "    f) Omitting a comparison detailing a change from a prior study.\n"
    "    Note: Concentrate on the clinical findings rather than the report's writing style. "
    "Evaluate only the findings that appear in both reports.\n\n"
    "2. Reference Report:\n    {reference}\n\n"
    "3. Candidate Report:\n    {candidate}\n\n"
    "4. Reporting Your Assessment:\n\n"
    "    Follow this specific format for your output, even if no errors are found:\n"
    "    ```\n    [Explanation]:\n    <Explanation>\n\n"
    "    [Clinically Significant Errors]:\n    (a) <Error Type>: <The number of errors>. "
    "<Error 1>; <Error 2>; ...; <Error n>\n    ....\n"
    "    (f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>\n\n"
    "    [Clinically Insignificant Errors]:\n    (a) <Error Type>: <The number of errors>. "
    "<Error 1>; <Error 2>; ...; <Error n>\n    ....\n\n"
    "    [Matched Findings]:\n    <The number of matched findings>. <Finding 1>; <Finding 2>; "
    "...; <Finding n>\n    ```\n"
)

_SECTION = re.compile(
    r"\[(Clinically Significant Errors|Matched Findings)\]:\s*(.*?)(?=\n\s*\[|\Z)", re.S
)


def parse_green(judge_output: str) -> float | None:
    """GREEN score of one judge answer: matched / (matched + significant errors).

    Returns None when the answer does not follow the format (counted as unparsed, never
    guessed). Zero matched findings and zero errors gives 0 (GREEN's convention).
    """
    sections = {name: body for name, body in _SECTION.findall(judge_output)}
    if set(sections) != {"Clinically Significant Errors", "Matched Findings"}:
        return None
    errors = sum(
        int(n)
        for n in re.findall(r"\([a-f]\)[^:\n]*:\s*(\d+)", sections["Clinically Significant Errors"])
    )
    matched_number = re.match(r"\s*(\d+)", sections["Matched Findings"])
    if matched_number is None:
        return None
    matched = int(matched_number.group(1))
    return matched / (matched + errors) if matched + errors else 0.0


def _green_row(
    method: str,
    scores: Sequence[float | None],
    patient_ids: Sequence[str],
    config: ReportGenerationConfig,
) -> MetricRow:
    """The GREEN row of one method: skipped without a judge, failed if no answer parsed."""
    if not config.green_model_path:
        status = "skipped: no local GREEN judge model configured (green_model_path)"
        return MetricRow(TASK, method, "green", None, n=0, status=status)
    parsed = np.array([np.nan if g is None else g for g in scores], dtype=float)
    unparsed = int(np.isnan(parsed).sum())
    if unparsed == len(parsed):  # never a NaN score labelled ok
        status = (
            f"failed: none of the {unparsed} judge answers followed the GREEN format "
            "(is green_model_path a GREEN judge?)"
        )
        return MetricRow(TASK, method, "green", None, n=0, status=status)
    est = patient_bootstrap(
        patient_ids, lambda i: _mean_of_parsed(parsed[i]), config.n_boot, config.seed
    )
    return MetricRow(
        TASK,
        method,
        "green",
        est.value,
        ci_low=est.ci_low,
        ci_high=est.ci_high,
        n=est.n - unparsed,
        status="ok" if not unparsed else f"ok ({unparsed} judge answers unparsed)",
    )


def _mean_of_parsed(scores: np.ndarray) -> float:
    """Mean of the parsed GREEN scores (NaN = unparsed); NaN when none parsed."""
    parsed = scores[~np.isnan(scores)]
    return float(parsed.mean()) if parsed.size else float("nan")


@torch.no_grad()
def green_scores(
    judge_path: str, hypotheses: Sequence[str], references: Sequence[str], max_new_tokens: int
) -> list[float | None]:
    """GREEN per pair with a LOCAL causal-LM judge (never downloaded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(judge_path)
    if not path.is_dir():
        raise FileNotFoundError(f"GREEN judge model directory {path} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    judge = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    judge.eval()
    out: list[float | None] = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        messages = [{"role": "user", "content": GREEN_PROMPT.format(reference=ref, candidate=hyp)}]
        if tokenizer.chat_template:  # transformers 5 returns a BatchEncoding here
            encoded = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        else:
            encoded = tokenizer(messages[0]["content"], return_tensors="pt")
        ids = encoded["input_ids"].to(judge.device)
        answer = judge.generate(
            ids,
            attention_mask=encoded["attention_mask"].to(judge.device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
        out.append(
            parse_green(tokenizer.decode(answer[0, ids.shape[1] :], skip_special_tokens=True))
        )
    return out


# ----------------------------------------------------------------------------------------------
# The task


def run_report_generation(
    model: nn.Module | None,
    vocab: Vocabulary,
    decode: Callable[[list[int]], str],
    train: EvalRows,
    test: EvalRows,
    config: ReportGenerationConfig,
) -> ReportGenerationResult:
    """Generated reports of one checkpoint and the nearest-neighbour baselines, scored.

    Args:
        model: The LM, or None for the baselines alone.
        vocab: Id layout.
        decode: Text ids -> text (the text tokenizer, specials skipped).
        train: TRAIN rows (baseline report pool).
        test: TEST rows.
        config: Settings.
    """
    from evaluation.features import code_histograms, hidden_state_features, resolve_layer

    labeler = CheXpertLabeler.from_rules_dir()
    references = [decode(t) for t in test.text_ids]
    candidates: dict[str, list[str]] = {}
    if model is not None:
        candidates["model"] = [
            decode(t) for t in generate_reports(model, test.codes, vocab, config)
        ]
    train_reports = [decode(t) for t in train.text_ids]
    hist_train = code_histograms(train.codes, None, vocab.codebook_size)
    hist_test = code_histograms(test.codes, None, vocab.codebook_size)
    nearest = nearest_reports(hist_train, hist_test)
    candidates["nearest_train_report_codes"] = [train_reports[i] for i in nearest]
    if model is not None and config.feature_layer is not None:
        layer = resolve_layer(config.feature_layer, model.config.num_hidden_layers)
        train_x = hidden_state_features(model, train.codes, None, vocab, layer, config.batch_size)
        test_x = hidden_state_features(model, test.codes, None, vocab, layer, config.batch_size)
        nearest = nearest_reports(train_x, test_x)
        candidates["nearest_train_report_features"] = [train_reports[i] for i in nearest]
    rows: list[MetricRow] = []
    frames = []
    for method, hypotheses in candidates.items():
        scores = text_metrics(
            hypotheses, references, labeler, test.patient_ids, config.n_boot, config.seed
        )
        for metric, est in scores.items():
            rows.append(
                MetricRow(
                    TASK,
                    method,
                    metric,
                    est.value,
                    ci_low=est.ci_low,
                    ci_high=est.ci_high,
                    n=est.n,
                )
            )
        green: list[float | None] = [None] * len(hypotheses)
        if config.green_model_path:
            green = green_scores(
                config.green_model_path, hypotheses, references, config.green_max_new_tokens
            )
        rows.append(_green_row(method, green, test.patient_ids, config))
        frames.append(
            pl.DataFrame(
                {
                    "image_id": test.image_ids,
                    "study_id": test.study_ids,
                    "patient_id": test.patient_ids,
                    "method": method,
                    "generated": hypotheses,
                    "reference": references,
                    "rouge_l": rouge_l(hypotheses, references).astype(np.float32),
                    "green": pl.Series([g for g in green], dtype=pl.Float32),
                }
            )
        )
    return ReportGenerationResult(rows, pl.concat(frames))
