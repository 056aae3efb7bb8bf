"""Which LM shape and budget learns most per CPU-second on the demo? Judged on VALIDATE only.

For each candidate (model shape, batch, steps, learning rate, report tokens) this trains the
three arms in-process on an existing storage root's token shards (stage 1; then, from it, stage
2 and stage 1 continued for the same number of steps), and prints per arm: seconds, sequences/s,
tokens/s, the VALIDATE loss, the VALIDATE findings macro AUROC of TRAIN-fitted probes (layer
chosen on VALIDATE at 0% masking, then scored at the other mask ratios too) beside the
bag-of-codes probe, and one-pass masked-image-token accuracy at 40% masking. TEST is never read.

    .venv/bin/python bench/demo_budget.py --storage storage --candidates h128x4 h256x4 \
        --json bench/results/demo-budget.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

# Running a script puts bench/ first on sys.path, where bench/tokenize.py would shadow the
# standard library's tokenize: move it last, put the repository root first.
sys.path.sort(key=lambda p: Path(p or ".").resolve() == Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import machine_info, repo_relative
from evaluation.data import load_split
from evaluation.features import code_histograms, hidden_state_features_by_layer
from evaluation.findings import (
    FindingsConfig,
    macro_auroc,
    masks_for,
    prepare_rows,
    probe_scores,
)
from models.early_fusion import LMConfig, build_model, count_parameters
from models.lm_data import TokenShardBatches, iter_eval_batches, shard_paths_from_manifest
from models.lm_train import LMTrainConfig, evaluate_lm, train_lm
from models.vocabulary import Vocabulary

#: name -> (LMConfig fields, training fields)
CANDIDATES: dict[str, tuple[dict, dict]] = {
    "h256x4": (
        dict(hidden_size=256, num_layers=4, num_heads=8, intermediate_size=1024),
        dict(batch_size=8, lr=1e-3),
    ),
    "h128x4": (
        dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
        dict(batch_size=16, lr=2e-3),
    ),
    "h128x4b8": (
        dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
        dict(batch_size=8, lr=2e-3),
    ),
    "h192x4": (
        dict(hidden_size=192, num_layers=4, num_heads=6, intermediate_size=768),
        dict(batch_size=16, lr=1.5e-3),
    ),
    "h128x6": (
        dict(hidden_size=128, num_layers=6, num_heads=4, intermediate_size=512),
        dict(batch_size=16, lr=2e-3),
    ),
}
RATIOS = (0.0, 0.4, 0.6)


def _train(model, vocab, shards, cfg: LMTrainConfig) -> tuple[float, dict]:
    data = TokenShardBatches(shards, vocab, cfg.batch_size, cfg.max_text_tokens, seed=cfg.seed)
    rows: list[dict] = []
    start = time.perf_counter()
    train_lm(model, data, cfg, log=lambda step, m: rows.append({"step": step, **m}))
    seconds = time.perf_counter() - start
    tokens = sum(r.get("tokens", 0.0) for r in rows)
    return seconds, {
        "seconds": round(seconds, 1),
        "sequences_per_s": round(cfg.steps * cfg.batch_size / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "final_train_loss": round(float(rows[-1]["loss"]), 4) if rows else None,
    }


def _probe(model, vocab, train, validate, config: FindingsConfig) -> dict:
    """VALIDATE macro AUROC: layer chosen at 0% masking, then every ratio at that layer."""
    t_train = train.targets(config.uncertainty_policy)
    t_val = validate.targets(config.uncertainty_policy)
    layers = list(range(1, int(model.config.num_hidden_layers) + 1))
    out: dict = {}
    chosen = None
    for ratio in RATIOS:
        m_train = masks_for(train, ratio, config.seed)
        m_val = masks_for(validate, ratio, config.seed + 1)
        use = layers if chosen is None else [chosen]
        x_train = hidden_state_features_by_layer(model, train.codes, m_train, vocab, use, 64)
        x_val = hidden_state_features_by_layer(model, validate.codes, m_val, vocab, use, 64)
        every = np.arange(len(validate))
        scores_by_layer = {}
        for layer in use:
            scores, _ = probe_scores(
                x_train[layer], t_train, x_val[layer], t_val, validate.patient_ids, config
            )
            scores_by_layer[layer] = macro_auroc(t_val, scores, every) if scores else float("nan")
        if chosen is None:
            chosen = max(scores_by_layer, key=lambda k: np.nan_to_num(scores_by_layer[k], nan=-1))
            out["layer_scores"] = {str(k): round(v, 4) for k, v in scores_by_layer.items()}
            out["layer"] = chosen
        out[f"model_{ratio:g}"] = round(scores_by_layer[chosen], 4)
    return out


def _bag_of_codes(vocab, train, validate, config: FindingsConfig) -> dict:
    t_train = train.targets(config.uncertainty_policy)
    t_val = validate.targets(config.uncertainty_policy)
    out = {}
    for ratio in RATIOS:
        h_train = code_histograms(
            train.codes, masks_for(train, ratio, config.seed), vocab.codebook_size
        )
        h_val = code_histograms(
            validate.codes, masks_for(validate, ratio, config.seed + 1), vocab.codebook_size
        )
        scores, _ = probe_scores(h_train, t_train, h_val, t_val, validate.patient_ids, config)
        out[f"bag_{ratio:g}"] = round(macro_auroc(t_val, scores, np.arange(len(validate))), 4)
        out["observations"] = len(scores)
    return out


def _val(model, vocab, shards, max_text_tokens) -> dict:
    def batches():
        return iter_eval_batches(
            shards, vocab, batch_size=32, max_text_tokens=max_text_tokens, split="validate"
        )

    plain = evaluate_lm(model, batches(), vocab)
    masked = evaluate_lm(model, batches(), vocab, image_mask_ratio=0.4, seed=1)
    return {
        "val_loss": round(plain["loss"], 4),
        "val_image_loss": round(plain["image_loss"], 4),
        "val_text_loss": round(plain["text_loss"], 4),
        "masked_image_accuracy_0.4": round(masked["masked_image_accuracy"], 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", required=True, help="storage root with token shards")
    parser.add_argument("--candidates", nargs="+", default=["h128x4"], choices=sorted(CANDIDATES))
    parser.add_argument("--steps", type=int, default=300, help="steps of each arm")
    parser.add_argument("--max-text-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-positives", type=int, default=5, help="VALIDATE patients")
    parser.add_argument("--max-train-images", type=int, default=2000)
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    root = Path(args.storage)
    vocab = Vocabulary.load(root / "tokenizers" / "vocabulary.json")
    shards = [str(p) for p in shard_paths_from_manifest(root / "tokens")]
    config = FindingsConfig(min_test_positives=args.min_positives)
    train = prepare_rows(load_split(shards, "train"), config)
    train = prepare_rows(train, FindingsConfig(max_train_images=args.max_train_images), cap=True)
    validate = prepare_rows(load_split(shards, "validate"), config)
    base = _bag_of_codes(vocab, train, validate, config)
    print(f"VALIDATE {len(validate)} frontal images, TRAIN {len(train)}; bag of codes {base}")
    results = {
        "machine": machine_info(["torch", "transformers", "scikit-learn"]),
        "storage": repo_relative(root),
        "args": {
            k: repo_relative(v) if k in ("storage", "json") and v else v
            for k, v in vars(args).items()
        },
    }
    results["bag_of_codes"] = base
    results["candidates"] = {}
    max_positions = 256 + args.max_text_tokens + 8
    for name in args.candidates:
        lm_fields, train_fields = CANDIDATES[name]
        torch.manual_seed(0)
        model = build_model(LMConfig(name, **lm_fields), vocab, max_positions)
        common = dict(
            steps=args.steps,
            warmup_steps=min(20, args.steps // 10),
            max_text_tokens=args.max_text_tokens,
            log_every=max(1, args.steps // 10),
            **train_fields,
        )
        entry = {"parameters": count_parameters(model), "lm": lm_fields, "train": common}
        _, entry["stage1"] = _train(model, vocab, shards, LMTrainConfig(stage=1, **common))
        entry["stage1"].update(_val(model, vocab, shards, args.max_text_tokens))
        for arm, stage in (("stage2", 2), ("stage1_continued", 1)):
            arm_model = copy.deepcopy(model)
            _, entry[arm] = _train(
                arm_model, vocab, shards, LMTrainConfig(stage=stage, seed=1, **common)
            )
            entry[arm].update(_val(arm_model, vocab, shards, args.max_text_tokens))
            arm_model.eval()
            entry[arm].update(_probe(arm_model, vocab, train, validate, config))
        model.eval()
        entry["stage1"].update(_probe(model, vocab, train, validate, config))
        results["candidates"][name] = entry
        print(json.dumps({name: entry}, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
