"""Image <-> report retrieval over the TEST set, scored by the model's likelihood.

Score of report r for image i: ``log p(r | i) - prior(r)``, a pointwise mutual information.
The conditional term ranks images for a report (text -> image); subtracting each report's prior
stops image -> text from returning the most generic report for every image (for text -> image
the prior is a constant per report, so the ranking is exactly the likelihood ranking).

Two priors (``RetrievalConfig.prior``):

* ``mean_image`` (default): the mean over the TEST images of ``log p(r | image)``, i.e. each
  report's column of the score matrix is centred. Every checkpoint computes it from the same
  in-distribution inputs it scores anyway (no extra forward pass), so arms stay comparable.
* ``masked_image``: ``log p(r | all image tokens = mask id)``. Only arms trained with masked
  inputs (stage 2) have seen the mask id; for the others that prefix is out of distribution,
  which tilts a comparison towards stage 2. Kept as an option.

A model that ignores the image gives every (image, report) pair the same score under the
default prior, so it ranks at chance. ``log p(r | i)`` sums the report tokens and the closing
``<|img|>``; the image prefix is run once per image and its KV cache reused for every candidate
report.

Candidates are one report per TEST study; a hit is counted by study (an image retrieves its
study's report; a report retrieves any image of its study). Recall@1/5/10 both directions with
patient-bootstrap intervals.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch import nn

from evaluation.data import EvalRows, batches, image_prefix_ids
from evaluation.results import MetricRow
from evaluation.stats import patient_bootstrap, recall_at_k
from models.early_fusion import unwrap_model
from models.vocabulary import Vocabulary

TASK = "retrieval"
PRIORS = ("mean_image", "masked_image")


@dataclass(frozen=True)
class RetrievalConfig:
    """Settings of the retrieval benchmark.

    Attributes:
        ks: Recall cut-offs.
        prior: Report prior subtracted from ``log p(report | image)``: ``mean_image``
            (default; the mean over TEST images) or ``masked_image`` (all image tokens masked;
            only fair to arms trained with masked inputs). See the module docstring.
        max_text_tokens: Report tokens scored per candidate (the training truncation).
        report_batch_size: Candidate reports scored together against one image prefix.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.
    """

    ks: Sequence[int] = (1, 5, 10)
    prior: str = "mean_image"
    max_text_tokens: int = 128
    report_batch_size: int = 64
    n_boot: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prior not in PRIORS:
            raise ValueError(f"retrieval prior must be one of {PRIORS}, got {self.prior!r}")


@dataclass
class RetrievalResult:
    """Metric rows, per-query ranks, and the score matrix (images x reports)."""

    rows: list[MetricRow]
    samples: pl.DataFrame
    scores: np.ndarray


def _report_tensors(
    reports: list[list[int]], vocab: Vocabulary, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded report ids (each followed by ``<|img|>``) and their validity mask."""
    seqs = [[*r[:max_tokens], vocab.image_start_id] for r in reports]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), vocab.pad_id, dtype=torch.long)
    valid = torch.zeros((len(seqs), length), dtype=torch.bool)
    for k, s in enumerate(seqs):
        ids[k, : len(s)] = torch.tensor(s)
        valid[k, : len(s)] = True
    return ids, valid


@torch.no_grad()
def report_log_likelihoods(
    model: nn.Module,
    prefix_ids: torch.Tensor,
    report_ids: torch.Tensor,
    report_valid: torch.Tensor,
    batch_size: int,
) -> np.ndarray:
    """``log p(report | prefix)`` for every (prefix, report) pair.

    Args:
        model: The LM.
        prefix_ids: int64 (P, Lp) prompts (``<|img|> codes <|/img|> <|endoftext|>``).
        report_ids: int64 (R, Lr) right-padded report ids.
        report_valid: bool (R, Lr) real report positions.
        batch_size: Reports per forward pass.

    Returns:
        float64 (P, R).
    """
    core = unwrap_model(model)
    device = next(core.parameters()).device
    out = np.zeros((prefix_ids.shape[0], report_ids.shape[0]))
    report_ids, report_valid = report_ids.to(device), report_valid.to(device)
    for p in range(prefix_ids.shape[0]):
        prefix = prefix_ids[p : p + 1].to(device)
        first = core(input_ids=prefix, use_cache=True)
        first_logp = torch.log_softmax(first.logits[0, -1].float(), dim=-1)
        for part in batches(report_ids.shape[0], batch_size):
            ids, valid = report_ids[part], report_valid[part]
            b = ids.shape[0]
            cache = copy.deepcopy(first.past_key_values)
            cache.batch_repeat_interleave(b)
            attention = torch.cat(
                [torch.ones((b, prefix.shape[1]), dtype=torch.long, device=device), valid.long()],
                dim=1,
            )
            logits = core(
                input_ids=ids, attention_mask=attention, past_key_values=cache, use_cache=True
            ).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            token_logp = logp.gather(-1, ids[:, 1:, None])[..., 0] * valid[:, 1:]
            total = first_logp[ids[:, 0]] + token_logp.sum(dim=1)
            out[p, part] = total.double().cpu().numpy()
    return out


def pmi_scores(conditional: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``log p(r | i) - prior(r)``: float (I, R) from (I, R) and a (1, R) prior row."""
    return conditional - np.asarray(prior).reshape(1, -1)


def chance_recall(study_index: np.ndarray, num_studies: int, k: int, direction: str) -> float:
    """Expected Recall@k of a random ranking (one report per study; m images per study)."""
    if direction == "i2t":
        return min(k, num_studies) / num_studies
    total = len(study_index)
    values = []
    for j in range(num_studies):
        m = int((study_index == j).sum())
        miss = 1.0
        for t in range(min(k, total)):
            miss *= max(total - m - t, 0) / (total - t)
        values.append(1.0 - miss)
    return float(np.mean(values))


def run_retrieval(
    model: nn.Module, vocab: Vocabulary, test: EvalRows, config: RetrievalConfig
) -> RetrievalResult:
    """Recall@k image -> report and report -> image over ``test``."""
    studies = sorted(set(test.study_ids))
    first_row = {s: test.study_ids.index(s) for s in reversed(test.study_ids)}
    reports = [test.text_ids[first_row[s]] for s in studies]
    report_ids, report_valid = _report_tensors(reports, vocab, config.max_text_tokens)
    prefixes = image_prefix_ids(test.codes, None, vocab, with_eot=True)
    conditional = report_log_likelihoods(
        model, prefixes, report_ids, report_valid, config.report_batch_size
    )
    if config.prior == "masked_image":
        blind = image_prefix_ids(
            test.codes[:1], np.ones((1, test.codes.shape[1]), dtype=bool), vocab, with_eot=True
        )
        prior = report_log_likelihoods(
            model, blind, report_ids, report_valid, config.report_batch_size
        )
    else:
        prior = conditional.mean(axis=0, keepdims=True)
    scores = pmi_scores(conditional, prior)
    study_index = np.array([studies.index(s) for s in test.study_ids])
    # image -> text: rank of the image's own study report among all reports (0 = top)
    # ties count against the query (identical truncated reports must not inflate recall)
    own = scores[np.arange(len(test)), study_index]
    i2t_ranks = (scores > own[:, None]).sum(axis=1) + (scores == own[:, None]).sum(axis=1) - 1
    # text -> image: rank of the best image of the report's study among all images
    t2i_ranks = np.empty(len(studies), dtype=np.int64)
    for j in range(len(studies)):
        column = scores[:, j]
        best_own = column[study_index == j].max()
        others = column[study_index != j]
        t2i_ranks[j] = int((others > best_own).sum() + (others == best_own).sum())
    report_patients = [test.patient_ids[first_row[s]] for s in studies]
    rows: list[MetricRow] = []
    for direction, ranks, groups in (
        ("i2t", i2t_ranks, test.patient_ids),
        ("t2i", t2i_ranks, report_patients),
    ):
        for k in config.ks:
            est = patient_bootstrap(
                groups, lambda i, r=ranks, k=k: recall_at_k(r[i], k), config.n_boot, config.seed
            )
            rows.append(
                MetricRow(
                    TASK,
                    "model",
                    f"{direction}_recall@{k}",
                    est.value,
                    setting=f"pmi, {config.prior} prior",
                    ci_low=est.ci_low,
                    ci_high=est.ci_high,
                    n=est.n,
                )
            )
        for k in config.ks:
            rows.append(
                MetricRow(
                    TASK,
                    "chance",
                    f"{direction}_recall@{k}",
                    chance_recall(study_index, len(studies), k, direction),
                    setting="analytic",
                    n=len(ranks),
                )
            )
    samples = pl.concat(
        [
            pl.DataFrame(
                {
                    "direction": "i2t",
                    "query_id": test.image_ids,
                    "study_id": test.study_ids,
                    "patient_id": test.patient_ids,
                    "rank": i2t_ranks,
                    "top1_study_id": [studies[j] for j in scores.argmax(axis=1)],
                }
            ),
            pl.DataFrame(
                {
                    "direction": "t2i",
                    "query_id": studies,
                    "study_id": studies,
                    "patient_id": report_patients,
                    "rank": t2i_ranks,
                    "top1_study_id": [test.study_ids[i] for i in scores.argmax(axis=0)],
                }
            ),
        ]
    )
    return RetrievalResult(rows, samples, scores)
