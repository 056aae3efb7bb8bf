"""Benchmark one checkpoint's four evaluation tasks on N TEST images and project MIMIC-CXR's test.

Usage::

    python bench/evaluate.py [--preset radphi2] [--device cuda] [--images 64]
        [--feature-batch 64] [--inpaint-batch 64] [--gen-batch 64] [--gen-tokens 128]
        [--retrieval-images 16] [--retrieval-reports 128] [--report-batch 64]
        [--dtype bfloat16] [--max-seconds 90] [--skip-load] [--out bench/results]

The model is a randomly initialised ``PhiForCausalLM`` of the preset (``build_model``, built on
the device, cast to ``--dtype``: bf16 weights on CUDA, fp32 on CPU; SDPA attention; no weights
are downloaded and no checkpoint is needed). The inputs are synthetic TEST rows: random image
codes and random report ids of 100-150 tokens. Each task calls the project's own function:

* findings: ``evaluation.features.hidden_state_features`` at every mask ratio of
  ``FindingsConfig.mask_ratios`` (seeded ``mask_positions`` per image) -> images/s per ratio;
* inpainting: ``evaluation.inpainting.predict_masked_codes`` (one pass, 40% random mask) ->
  images/s (the cost of one pass does not depend on the mask);
* report generation: ``evaluation.report_generation.generate_reports`` (greedy, batched, KV
  cache) with ``min_new_tokens = max_new_tokens = --gen-tokens`` so every report has the same
  length -> generated tokens/s and reports/s; a run with one new token gives the prefill time,
  the difference the time per decode step. A hook on the decoder checks that the KV cache is
  used (after the prompt, every forward sees one new token and a cache), since our model config
  sets ``use_cache=False`` and only the explicit ``use_cache=True`` of ``generate_reports``
  turns it on;
* retrieval: ``evaluation.retrieval.report_log_likelihoods`` for ``--retrieval-images`` image
  prefixes x ``--retrieval-reports`` candidate reports (truncated to
  ``RetrievalConfig.max_text_tokens``, ``--report-batch`` per forward) -> pairs/s; the image
  prefixes are also timed alone, to separate the per-image and per-pair costs.

Every timed call is preceded by an untimed warm-up of the same shapes and bracketed by
``torch.cuda.synchronize``. Peak GPU memory (``max_memory_allocated``) is recorded per task.
Build time (construction + init + cast) and, unless ``--skip-load``, the time
``models.lm_train.load_lm_checkpoint`` takes to load the same weights from an fp32 checkpoint
written to a temporary folder (what the evaluation assets do once per task) are reported, and
one batch of features is timed on that fp32 model: the assets run checkpoints in fp32 without
autocast today, so that rate, not the bf16 one, is today's path.

Projection for MIMIC-CXR's official test split (``MIMIC_CXR_TEST_IMAGES`` images,
``MIMIC_CXR_TEST_STUDIES`` studies), from the measured rates and how each task scales:
findings: images x mask ratios passes; inpainting: images x ratios x patterns passes;
generation: ceil(images / batch) x (prefill + (max_new_tokens - 1) x decode step), an upper
bound (a batch stops early when every report has ended); retrieval scores EVERY test image
against one report per test study, plus one image-blind prefix: (images + 1) x (prefix +
ceil(studies / report batch) x batch) -- quadratic in the test set. TRAIN features (findings
probes, capped by ``FindingsConfig.max_train_images``; the report-generation baseline) are
projected on separate lines. Not included: VQ decoding and PSNR/SSIM (inpainting), probe
fitting, text metrics, bootstraps, reading the token shards.

If polars or duckdb is not installed (a bare GPU machine), they are replaced by placeholder
modules that raise on any use: the evaluation modules import them at module level, but the
timed functions never touch them. The JSON records which were replaced.

Prints a table and writes ``<out>/eval-<preset>-<device>-<date>.json`` (no absolute paths).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running this file puts bench/ first on sys.path, where bench/tokenize.py shadows the stdlib
# ``tokenize`` (imported by ``inspect``, which torch imports): move bench/ last before anything
# imports it (stable sort), and put the repository root first.
sys.path.sort(key=lambda p: Path(p or ".").resolve() == Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import datetime as dt
import importlib
import json
import math
import os
import re
import resource
import shutil
import tempfile
import time
import traceback
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

_START = time.perf_counter()  # --max-seconds counts from here (after importing torch)
for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(_key, _value)

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["torch", "transformers", "numpy", "pyarrow", "polars", "duckdb"]
#: Imported at module level by evaluation/ (polars: inpainting, report_generation, retrieval,
#: findings; duckdb: evaluation.data -> cxr.token_shards, evaluation.results -> cxr.catalog) but
#: never used by the timed functions: replaced by raising placeholders when not installed.
OPTIONAL_MODULES = ("polars", "duckdb")

#: MIMIC-CXR-JPG v2.0.0 official split (``mimic-cxr-2.0.0-split.csv``; Johnson et al. 2019,
#: arXiv:1901.07042, Table 1): test = 5,159 images, 3,269 studies, 293 patients (train 368,960 /
#: 222,758 / 64,586; validate 2,991 / 1,808 / 500; totals 377,110 images, 227,835 studies).
MIMIC_CXR_TEST_IMAGES = 5159
MIMIC_CXR_TEST_STUDIES = 3269
MIMIC_CXR_TRAIN_IMAGES = 368960  # the TRAIN features when max_train_images is None (no cap)
#: TRAIN images for the findings probes when ``FindingsConfig`` has no ``max_train_images``.
DEFAULT_MAX_TRAIN_IMAGES = 20000
#: TRAIN images of the report-generation nearest-report baseline (``ReportGenerationRun.
#: max_train_rows`` default in assets/evaluation.py, not imported here: it needs dagster).
REPORT_BASELINE_TRAIN_IMAGES = 5000
#: ``RetrievalRun.max_test_rows`` default in assets/evaluation.py (for the capped line).
RETRIEVAL_ASSET_TEST_CAP = 200
#: Report tokens of the training context (``LMTrainConfig.max_text_tokens`` default): a
#: checkpoint's context is codes + this + 4, which bounds ``generate_reports``.
TRAIN_MAX_TEXT_TOKENS = 256
REPORT_TOKENS = (100, 150)  # synthetic report length range (inclusive)
INPAINT_RATIO = 0.4
SPECIALS = {"<|endoftext|>": 0, "<|img|>": 1, "<|/img|>": 2}
#: Per preset: text vocabulary (radphi2: Phi-2's tokenizer), codebook, codes per image.
PRESET_DATA: dict[str, dict[str, int]] = {
    "debug": {"text_vocab": 512, "codebook": 128, "codes": 64},
    "small": {"text_vocab": 2048, "codebook": 512, "codes": 256},
    "radphi2": {"text_vocab": 50295, "codebook": 8192, "codes": 1024},
}
#: Defaults per device type (H200: 139 GB; radphi2 bf16 batch 64 needs ~20 GB for features,
#: ~25 GB of KV cache for generation and ~22 GB of repeated prefix cache for retrieval).
DEVICE_DEFAULTS: dict[str, dict[str, int]] = {
    "cuda": {
        "images": 64,
        "feature_batch": 64,
        "inpaint_batch": 64,
        "gen_batch": 64,
        "gen_tokens": 128,
        "retrieval_images": 16,
        "retrieval_reports": 128,
        "report_batch": 64,
    },
    "cpu": {
        "images": 16,
        "feature_batch": 8,
        "inpaint_batch": 8,
        "gen_batch": 8,
        "gen_tokens": 16,
        "retrieval_images": 4,
        "retrieval_reports": 16,
        "report_batch": 8,
    },
}
#: Seconds of --max-seconds budget the checkpoint-load timing needs on a GPU (radphi2: write
#: and read an 11 GB fp32 checkpoint); below this it is skipped.
LOAD_RESERVE_S = 40.0
#: Unmasked images whose features are timed on the loaded fp32 model (one batch).
LOADED_FEATURE_IMAGES = 16


# ----------------------------------------------------------------------------------------------
# Imports of the evaluation code


def _placeholder(name: str) -> types.ModuleType:
    """A module that raises ImportError on any attribute use (names a missing package)."""
    module = types.ModuleType(name)

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(
            f"{name} is not installed: bench/evaluate.py replaced it by a placeholder because the "
            f"timed evaluation functions do not use it, but {name}.{attr} was used"
        )

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def replace_missing_modules(names: tuple[str, ...] = OPTIONAL_MODULES) -> list[str]:
    """Put a raising placeholder in ``sys.modules`` for each of ``names`` that cannot import."""
    replaced = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _placeholder(name)
            replaced.append(name)
    return replaced


def import_evaluation() -> types.SimpleNamespace:
    """The evaluation functions and configs timed here."""
    from evaluation.data import image_prefix_ids, mask_positions
    from evaluation.features import hidden_state_features, resolve_layer
    from evaluation.findings import FindingsConfig
    from evaluation.inpainting import InpaintingConfig, predict_masked_codes
    from evaluation.report_generation import ReportGenerationConfig, generate_reports
    from evaluation.retrieval import RetrievalConfig, report_log_likelihoods

    return types.SimpleNamespace(
        image_prefix_ids=image_prefix_ids,
        mask_positions=mask_positions,
        hidden_state_features=hidden_state_features,
        resolve_layer=resolve_layer,
        FindingsConfig=FindingsConfig,
        InpaintingConfig=InpaintingConfig,
        predict_masked_codes=predict_masked_codes,
        ReportGenerationConfig=ReportGenerationConfig,
        generate_reports=generate_reports,
        RetrievalConfig=RetrievalConfig,
        report_log_likelihoods=report_log_likelihoods,
    )


# ----------------------------------------------------------------------------------------------
# Timing helpers


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall seconds, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak allocated GPU memory since the last reset, GiB (None on CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def forward_flops_per_token(params_matmul: int, num_layers: int, hidden: int, ctx: int) -> int:
    """Forward FLOPs per token: ``2 N + 4 L h T`` (one third of bench/train.py's training count)."""
    return 2 * params_matmul + 4 * num_layers * hidden * ctx


# ----------------------------------------------------------------------------------------------
# Inputs and model


def synthetic_test_rows(
    n: int, codes: int, codebook: int, text_vocab: int, seed: int
) -> tuple[list[str], np.ndarray, list[list[int]]]:
    """Image ids, random codes int64 (n, codes) and report ids of 100-150 tokens (no specials)."""
    rng = np.random.default_rng(seed)
    image_ids = [f"img{i:06d}" for i in range(n)]
    grid = rng.integers(0, codebook, size=(n, codes), dtype=np.int64)
    lengths = rng.integers(REPORT_TOKENS[0], REPORT_TOKENS[1] + 1, size=n)
    reports = [rng.integers(len(SPECIALS), text_vocab, size=k).tolist() for k in lengths]
    return image_ids, grid, reports


def report_tensors(
    reports: list[list[int]], image_start_id: int, pad_id: int, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates as the retrieval task builds them: ``report[:max_tokens] + <|img|>``, padded."""
    seqs = [[*r[:max_tokens], image_start_id] for r in reports]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    valid = torch.zeros((len(seqs), length), dtype=torch.bool)
    for k, seq in enumerate(seqs):
        ids[k, : len(seq)] = torch.tensor(seq)
        valid[k, : len(seq)] = True
    return ids, valid


def build_on_device(
    preset: str, vocab: Any, max_positions: int, device: torch.device, dtype: torch.dtype, seed: int
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``build_model`` constructed and initialised on ``device``, cast, eval mode, SDPA."""
    from models.early_fusion import build_model, count_parameters, lm_config_from_preset

    lm_cfg = lm_config_from_preset(preset)
    torch.manual_seed(seed)
    model, seconds = timed(
        device, lambda: _build(build_model, lm_cfg, vocab, max_positions, device, dtype)
    )
    total = count_parameters(model)
    embedding = model.get_input_embeddings().weight.numel()
    return model, {
        "build_s": seconds,
        "params_total": total,
        "params_matmul": total - embedding,
        "num_layers": lm_cfg.num_layers,
        "hidden_size": lm_cfg.hidden_size,
        "max_positions": max_positions,
        "dtype": str(dtype).removeprefix("torch."),
        "attn_implementation": model.config._attn_implementation,
        "config_use_cache": bool(model.config.use_cache),
        "weights_gib": (
            torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
    }


def _build(build_model, lm_cfg, vocab, max_positions, device, dtype) -> torch.nn.Module:
    with torch.device(device):
        model = build_model(lm_cfg, vocab, max_positions)
    model = model.to(dtype=dtype).eval()
    if model.config._attn_implementation != "sdpa":
        model.set_attn_implementation("sdpa")
    return model


# ----------------------------------------------------------------------------------------------
# The four tasks


def bench_features(ev, model, codes, image_ids, vocab, ratios, batch, device, fpt) -> dict:
    """``hidden_state_features`` at each mask ratio: images/s (and forward TFLOP/s) per ratio."""
    layer = ev.resolve_layer(ev.FindingsConfig().layer, model.config.num_hidden_layers)
    ev.hidden_state_features(model, codes[:batch], None, vocab, layer, batch)  # warm-up
    reset_peak(device)
    per_ratio = []
    n, ctx = codes.shape
    for ratio in ratios:
        masks = None
        if ratio > 0:
            masks = np.stack([ev.mask_positions(i, ctx, ratio, 0, "random") for i in image_ids])
        features, seconds = timed(
            device,
            lambda m=masks: ev.hidden_state_features(model, codes, m, vocab, layer, batch),
        )
        if features.shape != (n, model.config.hidden_size) or not np.isfinite(features).all():
            raise RuntimeError(f"features at ratio {ratio}: shape {features.shape} or non-finite")
        per_ratio.append(
            {
                "mask_ratio": float(ratio),
                "seconds": seconds,
                "images_per_s": n / seconds,
                "tflops": n * (ctx + 2) * fpt / seconds / 1e12,
            }
        )
    total = sum(r["seconds"] for r in per_ratio)
    return {
        "layer": layer,
        "batch_size": batch,
        "images": n,
        "per_ratio": per_ratio,
        "seconds": total,
        "images_per_s": n * len(ratios) / total,  # image passes per second over all ratios
        "peak_gib": peak_gib(device),
    }


def bench_inpainting(ev, model, codes, image_ids, vocab, batch, device, fpt) -> dict:
    """``predict_masked_codes`` on one 40% random mask per image: images/s."""
    n, ctx = codes.shape
    masks = np.stack([ev.mask_positions(i, ctx, INPAINT_RATIO, 0, "random") for i in image_ids])
    ev.predict_masked_codes(model, codes[:batch], masks[:batch], vocab, batch)  # warm-up
    reset_peak(device)
    filled, seconds = timed(
        device, lambda: ev.predict_masked_codes(model, codes, masks, vocab, batch)
    )
    if filled.shape != codes.shape or (filled[~masks] != codes[~masks]).any():
        raise RuntimeError("predict_masked_codes changed unmasked codes or the shape")
    return {
        "mask_ratio": INPAINT_RATIO,
        "pattern": "random",
        "batch_size": batch,
        "images": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "tflops": n * (ctx + 2) * fpt / seconds / 1e12,
        "peak_gib": peak_gib(device),
    }


def check_kv_cache(ev, model, codes, vocab, new_tokens: int = 4) -> dict:
    """Run ``generate_reports`` on 2 images with a hook on the decoder: is the cache used?"""
    calls: list[tuple[int, bool]] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        width = int(ids.shape[1]) if ids is not None else int(kwargs["inputs_embeds"].shape[1])
        cache = kwargs.get("past_key_values")
        calls.append((width, cache is not None and cache.get_seq_length() > 0))

    config = ev.ReportGenerationConfig(
        min_new_tokens=new_tokens, max_new_tokens=new_tokens, batch_size=2
    )
    handle = model.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        ev.generate_reports(model, codes[:2], vocab, config)
    finally:
        handle.remove()
    prompt = codes.shape[1] + 3
    used = (
        len(calls) == new_tokens
        and calls[0] == (prompt, False)
        and all(c == (1, True) for c in calls[1:])
    )
    return {
        "kv_cache_used": used,
        "decoder_calls": len(calls),
        "input_widths": [c[0] for c in calls],
        "prompt_tokens": prompt,
        "config_use_cache": bool(model.config.use_cache),
    }


def bench_generation(ev, model, codes, vocab, batch, new_tokens, device) -> dict:
    """``generate_reports``: prefill time, decode-step time, tokens/s and reports/s."""
    n = codes.shape[0]
    batch = min(batch, n)
    batches = math.ceil(n / batch)

    def config(tokens: int):
        return ev.ReportGenerationConfig(
            min_new_tokens=tokens, max_new_tokens=tokens, batch_size=batch
        )

    ev.generate_reports(model, codes[:batch], vocab, config(2))  # warm-up
    reset_peak(device)
    _, prefill_s = timed(device, lambda: ev.generate_reports(model, codes, vocab, config(1)))
    reports, seconds = timed(
        device, lambda: ev.generate_reports(model, codes, vocab, config(new_tokens))
    )
    if len(reports) != n:
        raise RuntimeError(f"generate_reports returned {len(reports)} reports for {n} images")
    tokens = sum(len(r) for r in reports)
    prefill_per_batch = prefill_s / batches
    step_s = max(0.0, seconds / batches - prefill_per_batch) / max(1, new_tokens - 1)
    return {
        "batch_size": batch,
        "images": n,
        "new_tokens": new_tokens,
        "seconds": seconds,
        "generated_tokens": tokens,
        "all_reports_full_length": tokens == n * new_tokens,
        "tokens_per_s": tokens / seconds,
        "reports_per_s": n / seconds,
        "prefill_s_per_batch": prefill_per_batch,
        "decode_step_s": step_s,
        "peak_gib": peak_gib(device),
    }


def bench_retrieval(ev, model, codes, reports, vocab, batch, device) -> dict:
    """``report_log_likelihoods`` on P prefixes x R candidates; per-prefix and per-batch cost."""
    max_tokens = ev.RetrievalConfig().max_text_tokens
    report_ids, valid = report_tensors(reports, vocab.image_start_id, vocab.pad_id, max_tokens)
    prefixes = ev.image_prefix_ids(codes, None, vocab, with_eot=True)
    p, r = prefixes.shape[0], report_ids.shape[0]
    ev.report_log_likelihoods(model, prefixes[:1], report_ids[:batch], valid[:batch], batch)
    reset_peak(device)
    scores, seconds = timed(
        device, lambda: ev.report_log_likelihoods(model, prefixes, report_ids, valid, batch)
    )
    if scores.shape != (p, r) or not np.isfinite(scores).all():
        raise RuntimeError(f"report_log_likelihoods: shape {scores.shape} or non-finite scores")
    core_device = next(model.parameters()).device

    def prefixes_alone() -> None:
        with torch.no_grad():
            for k in range(p):
                model(input_ids=prefixes[k : k + 1].to(core_device), use_cache=True)

    _, prefix_total = timed(device, prefixes_alone)
    batches = math.ceil(r / batch)
    prefix_s = prefix_total / p
    batch_s = max(0.0, seconds / p - prefix_s) / batches
    return {
        "images": p,
        "candidate_reports": r,
        "report_batch_size": batch,
        "report_tokens_scored": int(valid.sum()),
        "max_text_tokens": max_tokens,
        "seconds": seconds,
        "pairs_per_s": p * r / seconds,
        "prefix_s": prefix_s,
        "report_batch_s": batch_s,
        "pairs_per_s_full_batches": batch / batch_s if batch_s else None,
        "peak_gib": peak_gib(device),
    }


def time_checkpoint_load(ev, model, vocab, codes: np.ndarray, device: torch.device) -> dict:
    """Write the weights as an fp32 training checkpoint; time ``load_lm_checkpoint`` on it.

    The loaded model is what the evaluation assets run today (fp32 weights, no autocast): one
    batch of unmasked features on it measures that path against the ``--dtype`` model.
    """
    from safetensors.torch import save_file

    from models.lm_train import COMPLETE_MARKER, STEP_DIR_PREFIX, load_lm_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="chexmix-bench-eval-"))
    try:
        step = tmp / f"{STEP_DIR_PREFIX}000000"
        (step / "model").mkdir(parents=True)
        start = time.perf_counter()
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, step / "model" / "model.safetensors", metadata={"format": "pt"})
        model.config.save_pretrained(step / "model")
        vocab.save(step / "vocab.json")
        (step / "meta.json").write_text(json.dumps({"step": 0}))
        (step / COMPLETE_MARKER).write_text("0\n")
        write_s = time.perf_counter() - start
        size = sum(f.stat().st_size for f in step.rglob("*") if f.is_file())
        del state
        reset_peak(device)
        (loaded, _), seconds = timed(device, lambda: load_lm_checkpoint(step, device))
        dtype = str(next(loaded.parameters()).dtype).removeprefix("torch.")
        peak = peak_gib(device)
        layer = ev.resolve_layer(ev.FindingsConfig().layer, loaded.config.num_hidden_layers)
        k = min(LOADED_FEATURE_IMAGES, len(codes))
        ev.hidden_state_features(loaded, codes[:2], None, vocab, layer, k)  # warm-up
        _, features_s = timed(
            device, lambda m=loaded: ev.hidden_state_features(m, codes[:k], None, vocab, layer, k)
        )
        del loaded
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "load_s": seconds,
        "checkpoint_bytes": size,
        "write_s": write_s,
        "loaded_dtype": dtype,
        "peak_gib_with_bench_model": peak,
        "loaded_features_images": k,
        "loaded_features_images_per_s": k / features_s,
        "note": "file just written, so read from the page cache: a cold read is slower",
    }


# ----------------------------------------------------------------------------------------------
# Projection


def project(
    results: dict[str, Any], ev, train: tuple[int, str], load_s: float | None
) -> dict[str, Any]:
    """Seconds for MIMIC-CXR's test split per task, from the measured rates (see the docstring)."""
    m, s = MIMIC_CXR_TEST_IMAGES, MIMIC_CXR_TEST_STUDIES
    lines: dict[str, dict[str, Any]] = {}
    features = results.get("features")
    if features:
        per_image = sum(1.0 / r["images_per_s"] for r in features["per_ratio"])
        lines["findings_test_features"] = {
            "seconds": m * per_image,
            "how": f"{m} images x {len(features['per_ratio'])} mask ratios",
        }
        ratio0 = features["per_ratio"][0]["images_per_s"]
        lines["report_generation_baseline_test_features"] = {
            "seconds": m / ratio0,
            "how": f"{m} images x 1 (unmasked) features pass, nearest-TRAIN-report baseline",
        }
    inpainting = results.get("inpainting")
    if inpainting:
        cfg = ev.InpaintingConfig()
        passes = len(cfg.mask_ratios) * len(cfg.patterns)
        lines["inpainting"] = {
            "seconds": m * passes / inpainting["images_per_s"],
            "how": f"{m} images x {len(cfg.mask_ratios)} ratios x {len(cfg.patterns)} patterns "
            "one-pass predictions (VQ decode / PSNR / SSIM not included)",
        }
    generation = results.get("generation")
    if generation:
        tokens = ev.ReportGenerationConfig().max_new_tokens
        batches = math.ceil(m / generation["batch_size"])
        per_batch = generation["prefill_s_per_batch"] + (tokens - 1) * generation["decode_step_s"]
        lines["report_generation"] = {
            "seconds": batches * per_batch,
            "how": f"{batches} batches of {generation['batch_size']} x (prefill + {tokens - 1} "
            "decode steps): upper bound, every batch runs to max_new_tokens",
        }
    retrieval = results.get("retrieval")
    if retrieval:
        b = retrieval["report_batch_size"]

        def retrieval_s(images: int, studies: int) -> float:
            batches = math.ceil(studies / b)
            return (images + 1) * (retrieval["prefix_s"] + batches * retrieval["report_batch_s"])

        lines["retrieval"] = {
            "seconds": retrieval_s(m, s),
            "how": f"({m} images + 1 image-blind prior) x {s} study reports = {(m + 1) * s:,} "
            f"pairs: quadratic in the test set",
        }
        capped = RETRIEVAL_ASSET_TEST_CAP
        capped_studies = round(capped * s / m)
        lines["retrieval_at_asset_cap"] = {
            "seconds": retrieval_s(capped, capped_studies),
            "how": f"RetrievalRun.max_test_rows={capped} images x ~{capped_studies} "
            "studies (informative, not in the totals)",
        }
    totals_keys = [k for k in lines if k != "retrieval_at_asset_cap"]
    test_total = sum(lines[k]["seconds"] for k in totals_keys)
    train_images, train_source = train
    train_lines: dict[str, dict[str, Any]] = {}
    if features:
        ratios = features["per_ratio"]
        train_lines["findings_train_features"] = {
            "seconds": train_images * sum(1.0 / r["images_per_s"] for r in ratios),
            "how": f"{train_images} TRAIN images ({train_source}) x {len(ratios)} mask ratios",
        }
        train_lines["report_generation_baseline_train_features"] = {
            "seconds": REPORT_BASELINE_TRAIN_IMAGES / ratios[0]["images_per_s"],
            "how": f"{REPORT_BASELINE_TRAIN_IMAGES} TRAIN images "
            "(ReportGenerationRun.max_train_rows) x 1",
        }
    train_total = sum(v["seconds"] for v in train_lines.values())
    loads = 4 * load_s if load_s is not None else None
    complete = all(results.get(k) for k in ("features", "inpainting", "generation", "retrieval"))
    return {
        "dtype": results["dtype"],
        "dtype_note": "rates measured with the model in this dtype; the evaluation assets load "
        "checkpoints in float32 (load_lm_checkpoint) and run them without autocast: see "
        "results.load.loaded_features_images_per_s for that path",
        "mimic_cxr_test_images": m,
        "mimic_cxr_test_studies": s,
        "complete": complete,
        "test_split": lines,
        "test_split_total_s": test_total,
        "train_features": train_lines,
        "train_features_total_s": train_total,
        "model_loads_s": loads,
        "model_loads_how": "4 task assets x load_lm_checkpoint (fp32 checkpoint)",
        "total_s": test_total + train_total + (loads or 0.0),
    }


# ----------------------------------------------------------------------------------------------
# Report


def _hours(seconds: float) -> str:
    return f"{seconds:10.0f} s {seconds / 3600:7.2f} h"


def print_report(payload: dict[str, Any]) -> None:
    """The measured table and the projection."""
    r = payload["results"]
    model = payload["model"]
    print()
    print(
        f"{payload['resolved']['preset']} on {payload['resolved']['device']} "
        f"({payload['machine'].get('gpu', 'cpu')}): {model['params_total'] / 1e6:.1f}M params, "
        f"{model['dtype']}, attention {model['attn_implementation']}, built in "
        f"{model['build_s']:.1f} s"
        + (f", load_lm_checkpoint {r['load']['load_s']:.1f} s" if r.get("load") else "")
    )
    print(f"{'task':<34} {'rate':>22} {'seconds':>8} {'TFLOP/s':>8} {'peak GiB':>9}")

    def row(name: str, rate: str, item: dict[str, Any]) -> None:
        tf = f"{item['tflops']:8.1f}" if "tflops" in item else f"{'':>8}"
        peak = f"{item['peak_gib']:9.1f}" if item.get("peak_gib") is not None else f"{'n/a':>9}"
        print(f"{name:<34} {rate:>22} {item['seconds']:8.2f} {tf} {peak}")

    if r.get("features"):
        for item in r["features"]["per_ratio"]:
            row(
                f"features, mask {item['mask_ratio']:.0%}",
                f"{item['images_per_s']:.1f} images/s",
                {**item, "peak_gib": r["features"]["peak_gib"]},
            )
    if r.get("inpainting"):
        rate = f"{r['inpainting']['images_per_s']:.1f} images/s"
        row("inpainting (one pass)", rate, r["inpainting"])
    if r.get("generation"):
        g = r["generation"]
        name = f"generation ({g['new_tokens']} tok, batch {g['batch_size']})"
        row(name, f"{g['tokens_per_s']:.0f} tok/s", g)
        print(
            f"{'':<34} {g['reports_per_s']:>13.2f} reports/s; prefill "
            f"{g['prefill_s_per_batch']:.3f} s/batch, decode step {g['decode_step_s'] * 1e3:.1f} ms"
        )
    if r.get("retrieval"):
        t = r["retrieval"]
        name = f"retrieval ({t['images']} x {t['candidate_reports']})"
        row(name, f"{t['pairs_per_s']:.1f} pairs/s", t)
        full = t["pairs_per_s_full_batches"]
        print(
            f"{'':<34} prefix {t['prefix_s'] * 1e3:.1f} ms/image, "
            f"{t['report_batch_s'] * 1e3:.1f} ms/batch of {t['report_batch_size']}"
            + (f" ({full:.0f} pairs/s)" if full else "")
        )
    if r.get("load") and r.get("features"):
        fp32 = r["load"]["loaded_features_images_per_s"]
        ours = r["features"]["per_ratio"][0]["images_per_s"]
        print(
            f"features on the load_lm_checkpoint model ({r['load']['loaded_dtype']}, no autocast: "
            f"the eval assets' path today): {fp32:.1f} images/s vs {ours:.1f} at "
            f"{model['dtype']} ({ours / fp32:.1f}x)"
        )
    kv = r.get("kv_cache") or {"kv_cache_used": "not checked", "input_widths": []}
    print(f"KV cache used by generate_reports: {kv['kv_cache_used']} (widths {kv['input_widths']})")
    for name in payload["skipped"]:
        print(f"SKIPPED {name}: --max-seconds reached")
    p = payload["projection"]
    print()
    print(
        f"Projection, MIMIC-CXR test split ({p['mimic_cxr_test_images']} images, "
        f"{p['mimic_cxr_test_studies']} studies), this device and batch sizes"
        + ("" if p["complete"] else " (INCOMPLETE: tasks skipped)")
    )
    for name, item in p["test_split"].items():
        print(f"  {name:<42} {_hours(item['seconds'])}  {item['how']}")
    print(f"  {'= test split total':<42} {_hours(p['test_split_total_s'])}")
    for name, item in p["train_features"].items():
        print(f"  {name:<42} {_hours(item['seconds'])}  {item['how']}")
    if p["model_loads_s"] is not None:
        print(f"  {'model loads':<42} {_hours(p['model_loads_s'])}  {p['model_loads_how']}")
    print(f"  {'= total':<42} {_hours(p['total_s'])}")


def machine_facts() -> dict[str, Any]:
    """``bench.common.machine_info`` (CPU, load, platform, versions), or less without psutil."""
    extra = {"torch_num_threads": torch.get_num_threads()}
    try:
        from bench.common import machine_info
    except ImportError as e:  # psutil missing: the same facts but the package versions
        import platform

        return {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            **extra,
            "machine_info_error": repr(e),
        }
    return machine_info(PACKAGES, extra=extra)


def scrub_paths(text: str) -> str:
    """A traceback with repository files relative and other files from site-packages/ on."""

    def short(match: re.Match[str]) -> str:
        path = match.group(1)
        if path.startswith(str(REPO_ROOT) + os.sep):
            return f'File "{path[len(str(REPO_ROOT)) + 1 :]}"'
        tail = re.search(r"(site-packages|dist-packages|python3\.\d+)/.*", path)
        return f'File "{tail.group(0) if tail else Path(path).name}"'

    return re.sub(r'File "(/[^"]+)"', short, text)


def relative(path: Path) -> str:
    """``path`` relative to the repository (or its name alone): no machine paths in the JSON."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(REPO_ROOT))
    except ValueError:
        return path.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=None, choices=sorted(PRESET_DATA))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"])
    parser.add_argument("--images", type=int, default=None, help="synthetic TEST images N")
    parser.add_argument("--feature-batch", type=int, default=None)
    parser.add_argument("--inpaint-batch", type=int, default=None)
    parser.add_argument("--gen-batch", type=int, default=None)
    parser.add_argument("--gen-tokens", type=int, default=None, help="new tokens per report")
    parser.add_argument("--retrieval-images", type=int, default=None, help="image prefixes")
    parser.add_argument("--retrieval-reports", type=int, default=None, help="candidates")
    parser.add_argument("--report-batch", type=int, default=None, help="candidates per pass")
    parser.add_argument("--train-images", type=int, default=None, help="TRAIN feature cap")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="skip later tasks")
    parser.add_argument("--skip-load", action="store_true", help="no checkpoint load timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    device = torch.device("cuda" if cuda else "cpu")
    preset = args.preset or ("radphi2" if cuda else "debug")
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    defaults = DEVICE_DEFAULTS[device.type]
    knobs = {k: getattr(args, k) or v for k, v in defaults.items()}
    for name, value in knobs.items():
        if value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = PRESET_DATA[preset]
    deadline = _START + args.max_seconds

    replaced = replace_missing_modules()
    ev = import_evaluation()
    from models.vocabulary import Vocabulary

    info = machine_facts()
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    vocab = Vocabulary.build(data["text_vocab"], data["codebook"], SPECIALS)
    max_positions = data["codes"] + TRAIN_MAX_TEXT_TOKENS + 4
    if knobs["gen_tokens"] > max_positions - data["codes"] - 3:
        parser.error(f"--gen-tokens must be <= {max_positions - data['codes'] - 3}")
    findings_cfg = ev.FindingsConfig()
    ratios = [float(x) for x in findings_cfg.mask_ratios]
    if args.train_images:
        train_images, train_source = args.train_images, "--train-images"
    elif not hasattr(findings_cfg, "max_train_images"):
        train_images = DEFAULT_MAX_TRAIN_IMAGES
        train_source = "DEFAULT_MAX_TRAIN_IMAGES: FindingsConfig has no max_train_images"
    elif findings_cfg.max_train_images:
        train_images = findings_cfg.max_train_images
        train_source = "FindingsConfig.max_train_images"
    else:
        train_images, train_source = MIMIC_CXR_TRAIN_IMAGES, "no cap: every MIMIC-CXR TRAIN image"
    print(
        f"preset {preset}, {device.type}, {str(dtype).removeprefix('torch.')}, vocab "
        f"{vocab.size}, {data['codes']} codes/image, {knobs['images']} images; replaced by "
        f"placeholders: {replaced or 'none'}",
        flush=True,
    )

    model, model_info = build_on_device(preset, vocab, max_positions, device, dtype, args.seed)
    fpt = forward_flops_per_token(
        model_info["params_matmul"],
        model_info["num_layers"],
        model_info["hidden_size"],
        data["codes"] + 2,
    )
    image_ids, codes, reports = synthetic_test_rows(
        knobs["images"], data["codes"], data["codebook"], data["text_vocab"], args.seed
    )
    results: dict[str, Any] = {"dtype": model_info["dtype"]}
    print(f"model built in {model_info['build_s']:.1f} s", flush=True)
    skipped: list[str] = []
    errors: dict[str, str] = {}
    candidates = [reports[k % len(reports)] for k in range(knobs["retrieval_reports"])]
    retrieval_codes = codes[: knobs["retrieval_images"]]
    tasks: dict[str, Callable[[], dict]] = {
        "kv_cache": lambda: check_kv_cache(ev, model, codes, vocab),
        "features": lambda: bench_features(
            ev, model, codes, image_ids, vocab, ratios, knobs["feature_batch"], device, fpt
        ),
        "inpainting": lambda: bench_inpainting(
            ev, model, codes, image_ids, vocab, knobs["inpaint_batch"], device, fpt
        ),
        "generation": lambda: bench_generation(
            ev, model, codes, vocab, knobs["gen_batch"], knobs["gen_tokens"], device
        ),
        "retrieval": lambda: bench_retrieval(
            ev, model, retrieval_codes, candidates, vocab, knobs["report_batch"], device
        ),
    }
    if not args.skip_load:
        tasks["load"] = lambda: time_checkpoint_load(ev, model, vocab, codes, device)
    for name, run in tasks.items():
        reserve = LOAD_RESERVE_S if name == "load" and cuda else 0.0
        if time.perf_counter() + reserve > deadline:
            skipped.append(name)
            print(f"SKIPPED {name}: --max-seconds {args.max_seconds} reached", flush=True)
            continue
        try:
            results[name] = run()
        except Exception:  # keep the other tasks' numbers of a scarce GPU run; exit 1 below
            errors[name] = scrub_paths(traceback.format_exc())
            print(f"FAILED {name}:\n{errors[name]}", file=sys.stderr, flush=True)
            if cuda:
                torch.cuda.empty_cache()
            continue
        print(f"{name} done ({time.perf_counter() - _START:.0f} s since start)", flush=True)
    load_s = results["load"]["load_s"] if results.get("load") else None
    projection = project(results, ev, (train_images, train_source), load_s)
    peaks = [v["peak_gib"] for v in results.values() if isinstance(v, dict) and v.get("peak_gib")]
    info["load_average_after"] = os.getloadavg()
    payload = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "args": {k: relative(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "resolved": {
            "preset": preset,
            "device": device.type,
            **knobs,
            "mask_ratios": ratios,
            "train_images": train_images,
            "train_images_source": train_source,
            "report_tokens_range": list(REPORT_TOKENS),
            "vocab_size": vocab.size,
            "codes_per_image": data["codes"],
        },
        "machine": info,
        "replaced_modules": replaced,
        "model": model_info,
        "forward_flops_per_token": fpt,
        "results": results,
        "skipped": skipped,
        "errors": errors,
        "peak_gpu_gib": max(peaks) if peaks else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "projection": projection,
        "wall_s": time.perf_counter() - _START,
    }
    print_report(payload)
    print(f"peak GPU memory {payload['peak_gpu_gib'] or 0:.1f} GiB; wall {payload['wall_s']:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    out_path = args.out / f"eval-{preset}-{device.type}-{dt.date.today().isoformat()}.json"
    out_path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {relative(out_path)}")
    kv_cache_used = bool(results.get("kv_cache", {}).get("kv_cache_used"))
    if not kv_cache_used:
        print("ERROR: generate_reports did not use the KV cache", file=sys.stderr)
    if errors:
        print(
            f"ERROR: {', '.join(errors)} failed (tracebacks above and in the JSON)", file=sys.stderr
        )
    return 0 if kv_cache_used and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
