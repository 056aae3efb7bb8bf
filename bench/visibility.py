"""How visible is each finding at the tokenizer's resolution, before and after tokenization?

For every CheXpert observation, a linear probe (the findings benchmark's) on position-aware
block means of (a) the stored image brought to the image tokenizer's input size and (b) the
tokenizer's reconstruction from the token shards' codes, fitted on TRAIN and scored on
VALIDATE (TEST is never read), beside the bag-of-codes probe. An observation that no probe can
see in (a) is invisible at that resolution; one lost between (a) and (b) is lost by the
tokenizer. Prints one table and writes JSON.

    .venv/bin/python bench/visibility.py --storage storage --json bench/results/visibility.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

# Running a script puts bench/ first on sys.path, where bench/tokenize.py would shadow the
# standard library's tokenize: move it last, put the repository root first.
sys.path.sort(key=lambda p: Path(p or ".").resolve() == Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import machine_info, repo_relative
from cxr.labeler import OBSERVATIONS
from evaluation.data import load_pixels, load_split
from evaluation.features import code_histograms, pixel_block_features
from evaluation.findings import FindingsConfig, _class_patients, prepare_rows, probe_scores
from evaluation.inpainting import decode_uint8, originals_at_tokenizer_size
from evaluation.stats import auroc
from models.lm_data import shard_paths_from_manifest
from models.vocabulary import Vocabulary
from models.vq_tokenizer import load_checkpoint


def _aurocs(train_x, train_t, val_x, val_t, val_patients, config) -> dict[str, float | None]:
    scores, _ = probe_scores(train_x, train_t, val_x, val_t, val_patients, config)
    out: dict[str, float | None] = {}
    for k, name in enumerate(OBSERVATIONS):
        if k in scores:
            keep = np.isfinite(val_t[:, k])
            out[name] = round(float(auroc(val_t[keep, k], scores[k][keep])), 4)
        else:
            out[name] = None
    defined = [v for v in out.values() if v is not None]
    out["macro"] = round(float(np.mean(defined)), 4) if defined else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", required=True, help="storage root with token shards")
    parser.add_argument("--grid", type=int, nargs="+", default=[16, 32], help="blocks per side")
    parser.add_argument("--min-positives", type=int, default=5, help="VALIDATE patients")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    root = Path(args.storage)
    vocab = Vocabulary.load(root / "tokenizers" / "vocabulary.json")
    shards = [str(p) for p in shard_paths_from_manifest(root / "tokens")]
    config = FindingsConfig(min_test_positives=args.min_positives)
    train = prepare_rows(load_split(shards, "train"), config)
    validate = prepare_rows(load_split(shards, "validate"), config)
    images_dir = root / "images"
    image_manifest = json.loads((images_dir / "_manifest.json").read_text())
    image_shards = [images_dir / s["path"] for s in image_manifest["shards"]]
    vq = load_checkpoint(root / "tokenizers" / "image").eval()
    code_grid = math.isqrt(train.codes.shape[1])
    t_train, t_val = (r.targets(config.uncertainty_policy) for r in (train, validate))
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "bag_of_codes": tuple(
            code_histograms(r.codes, None, vocab.codebook_size) for r in (train, validate)
        )
    }
    original = [
        originals_at_tokenizer_size(vq, load_pixels(image_shards, r.image_ids)).numpy()
        for r in (train, validate)
    ]
    decoded = [decode_uint8(vq, r.codes, 32).numpy() for r in (train, validate)]
    for grid in args.grid:
        feats[f"original_{grid}"] = tuple(
            pixel_block_features(x, None, grid, code_grid) for x in original
        )
        feats[f"reconstruction_{grid}"] = tuple(
            pixel_block_features(x, None, grid, code_grid) for x in decoded
        )
    table = {
        name: _aurocs(x[0], t_train, x[1], t_val, validate.patient_ids, config)
        for name, x in feats.items()
    }
    positives = {
        name: _class_patients(t_val[:, k], validate.patient_ids)[0]
        for k, name in enumerate(OBSERVATIONS)
    }
    names = list(feats)
    print(f"VALIDATE {len(validate)} frontal images, TRAIN {len(train)}; AUROC per observation")
    print(f"{'observation':28s} {'pos pat':>7s} " + " ".join(f"{n[:16]:>16s}" for n in names))
    for obs in [*OBSERVATIONS, "macro"]:
        cells = " ".join(
            f"{'-' if table[n][obs] is None else format(table[n][obs], '.3f'):>16s}" for n in names
        )
        print(f"{obs:28s} {positives.get(obs, ''):>7} {cells}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": machine_info(["torch", "numpy", "scikit-learn"]),
                    "storage": repo_relative(root),
                    "args": {
                        k: repo_relative(v) if k in ("storage", "json") and v else v
                        for k, v in vars(args).items()
                    },
                    "train_images": len(train),
                    "validate_images": len(validate),
                    "validate_positive_patients": positives,
                    "validate_auroc": table,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
