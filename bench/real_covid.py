"""Real-data evaluation: the demo's checkpoints on the COVID-19 image data collection.

Nothing here is trained or tuned on the COVID images or notes. The script

1. runs the pipeline's own ingest, curation and tokenization assets (real Dagster
   materializations, the ``images-csv`` source adapter with its defaults for the collection's
   ``metadata.csv``) into a fresh storage root under ``--work-dir``, reusing the demo's text
   and image tokenizers (``pretrained_dir``) and putting every patient in the TEST split;
2. evaluates the demo's published stage-1 and stage-2 checkpoints (and the stage-1-continued
   control when published) and the baselines on those TEST rows with the evaluation library: VQ
   reconstruction, one-pass inpainting (40%, random and block) vs an image-blind fill
   (position-wise mode of the DEMO TRAIN codes), image <-> note retrieval (a hit counted per
   NOTE: a patient's images share one note, and the same note text is one candidate; 95%
   intervals by patient bootstrap), report generation scored against the clinical notes, and
   findings AUROC with probes fitted on the demo TRAIN features and scored against CheXpert
   labels that our labeler reads from the notes;
3. prints a table and writes ``<out>/real-covid-<date>.json`` (machine, args, timings, data
   counts, every metric row).

The collection's notes are clinical case descriptions (history plus imaging findings), not
sectioned radiology reports, and the demo model was trained on synthetic phantoms, so the
numbers measure synthetic-to-real transfer; expect chance-level discrimination. Every derived
file (decoded images, token shards, labels) stays under ``--work-dir``: the collection's
licences (CC BY-NC-SA / BY-NC-ND) forbid committing edited copies.

Usage (after ``make demo``)::

    .venv/bin/python bench/real_covid.py --demo-storage storage
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running a script puts bench/ first on sys.path, where bench/tokenize.py would shadow the
# stdlib module of that name: move bench/ to the end, and put the repository root first.
sys.path.sort(key=lambda p: Path(p or ".").resolve() == Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is ever downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

from bench.common import DATA_ASSETS, load_average, relative_args, repo_relative, scrub_paths
from bench.common import machine_info as common_machine_info
from evaluation import DEFAULT_LAYER

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COVID = REPO.parent / "shared" / "data" / "covid_chestxray"
WORK_MARKER = ".real_covid_work"
PACKAGES = [
    "torch",
    "transformers",
    "dagster",
    "numpy",
    "scikit-learn",
    "sacrebleu",
    "rouge-score",
    "polars",
    "pyarrow",
    "duckdb",
]
PIPELINE_GROUPS = ("ingest", "curation", "tokenization")
INPAINT_RATIO = 0.4
FINDINGS_RATIOS = (0.0,)


# ----------------------------------------------------------------------------------------------
# Helpers


class Timer:
    """Wall-clock seconds per named phase: ``with timer("name"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the block and add its duration under ``name``."""
        start = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        yield
        took = time.perf_counter() - start
        self.seconds[name] = round(self.seconds.get(name, 0.0) + took, 2)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {took:.1f} s", flush=True)


def note_key(text_ids: list[int]) -> str:
    """Identity of a note: a hash of its token ids (identical notes give identical ids)."""
    return "note_" + hashlib.sha256(",".join(map(str, text_ids)).encode()).hexdigest()[:16]


def _json_value(value: Any) -> Any:
    """``value`` with NaN/inf as None, numpy scalars as plain JSON types, paths relative."""
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return repo_relative(value)
    if isinstance(value, str):
        return scrub_paths(value)
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def fresh_storage(work_dir: Path) -> Path:
    """``<work_dir>/storage``, emptied; refuses a non-empty work dir this script did not make."""
    work_dir.mkdir(parents=True, exist_ok=True)
    marker = work_dir / WORK_MARKER
    if any(work_dir.iterdir()) and not marker.exists():
        raise SystemExit(
            f"--work-dir {work_dir} is not empty and was not made by this script; "
            "choose an empty or new folder"
        )
    marker.write_text("made by bench/real_covid.py; safe to delete\n")
    storage = work_dir / "storage"
    shutil.rmtree(storage, ignore_errors=True)
    storage.mkdir()
    return storage


# ----------------------------------------------------------------------------------------------
# 1. The pipeline on the collection


def demo_pixel_config(demo_storage: Path) -> dict[str, Any]:
    """The demo run's ``cxr_images`` pixel chain, so COVID images are prepared the same way."""
    manifest = json.loads((demo_storage / "images" / "_manifest.json").read_text())
    pixel = manifest["pixel_config"]
    keys = (
        "image_size",
        "fit",
        "raster_percentile_clip",
        "allowed_modalities",
        "allowed_body_parts",
        "min_side",
        "max_side",
        "max_aspect",
    )
    out = {k: pixel[k] for k in keys if k in pixel}
    out["percentile_clip"] = list(pixel.get("percentile_clip") or [])
    out["raster_percentile_clip"] = list(pixel.get("raster_percentile_clip") or [])
    return out


def run_pipeline(
    args: argparse.Namespace, storage: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Materialize ingest -> token shards on the collection; returns metadata and checks."""
    import dagster as dg

    from pipelines.definitions import defs
    from pipelines.resources import (
        MLflowResource,
        PrivacyResource,
        RayResource,
        SourceResource,
        StorageResource,
    )

    definitions = defs()
    resources = {
        "source": SourceResource(root=str(args.covid_root), layout="images-csv"),
        "storage": StorageResource(root=str(storage)),
        "privacy": PrivacyResource(),  # a fresh secret salt under <storage>/private
        "ray": RayResource(num_cpus=2),
        "mlflow_tracking": MLflowResource(
            tracking_uri=f"sqlite:///{storage / 'mlflow' / 'mlflow.db'}"
        ),
    }
    (storage / "mlflow").mkdir(exist_ok=True)
    tokenizers = args.demo_storage / "tokenizers"
    run_config = {
        "ops": {
            "source_manifest": {"config": {"num_threads": 2}},
            "cxr_images": {"config": {**demo_pixel_config(args.demo_storage), "use_ray": False}},
            "finding_labels": {
                # measurement sets of the labeler; unrelated to this collection
                "config": {"ground_truth_labels_csv": "", "openi_reports_dir": ""}
            },
            "splits": {
                "config": {"train_fraction": 0.0, "validate_fraction": 0.0, "test_fraction": 1.0}
            },
            "text_tokenizer": {"config": {"pretrained_dir": str(tokenizers / "text")}},
            "image_tokenizer": {
                "config": {
                    "pretrained_dir": str(tokenizers / "image"),
                    # the asset's own measurement (no intervals; all images are scored with
                    # patient-bootstrap intervals in step 2)
                    "max_val_images": 64,
                    "real_check_dir": "",  # the TEST images ARE the real check here
                }
            },
            "token_shards": {"config": {"use_ray": False}},
        }
    }
    result = dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        resources=resources,
        selection=dg.AssetSelection.groups(*PIPELINE_GROUPS),
        run_config=run_config,
        raise_on_error=True,
    )
    if not result.success:
        raise SystemExit("the pipeline run on the COVID collection failed")
    keep = {
        "source_manifest": ("num_files", "files_by_kind"),
        "cxr_images": ("num_images", "num_rejected", "decoded", "rejected"),
        "image_tokenizer": (
            "preset",
            "num_val_images",
            "val_psnr",
            "val_ssim",
            "val_codes_used",
            "val_codebook_usage",
            "val_perplexity",
            "sha256",
        ),
        "text_tokenizer": ("vocab_size", "sha256"),
        "vocabulary": ("vocab_size", "sha256"),
        "token_shards": ("num_rows", "rows", "num_shards"),
    }
    # by asset key, not by step: the cxr_images step also materializes ingest_quarantine
    latest = {
        e.asset_key.to_user_string(): e.materialization
        for e in result.get_asset_materialization_events()
    }
    metadata: dict[str, Any] = {}
    for asset in DATA_ASSETS:
        event = latest.get(asset)
        values = {k: v.value for k, v in event.metadata.items()} if event else {}
        wanted = keep.get(asset)
        metadata[asset] = {
            k: v
            for k, v in values.items()
            if (k in wanted if wanted else isinstance(v, int | float))
            and isinstance(v, int | float | str)
        }
    checks = [
        {
            "asset": e.asset_key.to_user_string(),
            "check": e.check_name,
            "passed": bool(e.passed),
            "severity": e.severity.value,
        }
        for e in result.get_asset_check_evaluations()
    ]
    return metadata, checks


def collection_summary(storage: Path) -> dict[str, Any]:
    """Counts over the derived tables: studies, matches, text sources, quarantine, labels."""
    import duckdb

    from assets import paths

    con = duckdb.connect()

    def q(sql: str) -> list[tuple]:
        return con.execute(sql).fetchall()

    studies = str(storage.joinpath(*paths.STUDIES))
    sections = str(storage.joinpath(*paths.REPORT_SECTIONS))
    quarantine = str(storage.joinpath(*paths.QUARANTINE))
    splits = str(storage.joinpath(*paths.SPLITS))
    summary = {
        "studies_by_match_status": dict(
            q(f"SELECT match_status, count(*) FROM '{studies}' GROUP BY 1 ORDER BY 1")
        ),
        "text_source": dict(
            q(f"SELECT text_source, count(*) FROM '{sections}' GROUP BY 1 ORDER BY 1")
        ),
        "quarantine_reasons": dict(
            q(f"SELECT reason, count(*) FROM '{quarantine}' GROUP BY 1 ORDER BY 1")
        ),
        "split_patients": dict(
            q(f"SELECT split, count(DISTINCT patient_id) FROM '{splits}' GROUP BY 1 ORDER BY 1")
        ),
    }
    con.close()
    return summary


# ----------------------------------------------------------------------------------------------
# 2. Evaluation


def patient_subset(rows: Any, max_images: int, salt: str = "retrieval") -> Any:
    """Whole patients, in the order of a salted hash of their id, up to ``max_images`` images.

    Keeping every image of a chosen patient keeps the collection's structure (a patient's images
    share one note), so a note can be the right answer for several image queries.
    """
    by_patient: dict[str, list[int]] = {}
    for index, patient in enumerate(rows.patient_ids):
        by_patient.setdefault(patient, []).append(index)
    order = sorted(by_patient, key=lambda p: hashlib.sha256(f"{salt}|{p}".encode()).hexdigest())
    picked: list[int] = []
    for patient in order:
        if len(picked) + len(by_patient[patient]) > max_images:
            continue
        picked.extend(by_patient[patient])
    return rows.subset(sorted(picked))


#: Training arms evaluated when published (folders under ``checkpoints/``); stage 1 and 2 must be.
ARMS = ("stage1", "stage2", "stage1-continued")


def published_checkpoint(demo_storage: Path, arm: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest published checkpoint of an arm, re-hashed against its manifest."""
    from pipelines.checkpoints.publish import verify_checkpoint

    folders = sorted(
        p.parent for p in (demo_storage / "checkpoints" / arm).glob("*/checkpoint.json")
    )
    if not folders:
        if arm == "stage1-continued":  # the optional control arm
            return None
        raise SystemExit(f"no published {arm} checkpoint under {demo_storage}")
    manifests = [(verify_checkpoint(f), f) for f in folders]
    manifest, folder = max(manifests, key=lambda mf: (int(mf[0].get("step", 0)), str(mf[1])))
    return folder, manifest


def check_contract(storage: Path, manifest: dict[str, Any], vocab_path: Path) -> dict[str, bool]:
    """The COVID storage's tokenizers and vocabulary are the ones the checkpoint was trained on."""
    from assets import paths
    from cxr.storage import file_sha256
    from models.text_tokenizer import tokenizer_sha256
    from models.vq_tokenizer import checkpoint_sha256

    same = {
        "text_tokenizer": tokenizer_sha256(storage.joinpath(*paths.TEXT_TOKENIZER_DIR))
        == manifest.get("text_tokenizer_sha256"),
        "image_tokenizer": checkpoint_sha256(storage.joinpath(*paths.IMAGE_TOKENIZER_DIR))
        == manifest.get("image_tokenizer_sha256"),
        "vocabulary": file_sha256(vocab_path) == manifest.get("vocabulary_sha256"),
    }
    if not all(same.values()):
        raise SystemExit(f"tokenizer / vocabulary contract differs from the checkpoint: {same}")
    return same


def token_shard_paths(storage_root: Path) -> list[str]:
    """Token shards listed (and verified) by a storage's token manifest."""
    from models.lm_data import shard_paths_from_manifest

    return [str(p) for p in shard_paths_from_manifest(storage_root / "tokens", verify=True)]


def vq_rows(
    vq: Any, test: Any, pixels: np.ndarray, n_boot: int, seed: int
) -> tuple[list[Any], float]:
    """VQ reconstruction PSNR and SSIM (vs the original at the tokenizer's size), bootstrapped.

    The reconstruction decodes the token shards' codes. As a consistency check, the first 16
    images are encoded again: the fraction of codes equal to the shards' is returned.
    """
    import torch

    from evaluation.inpainting import originals_at_tokenizer_size
    from evaluation.results import MetricRow
    from evaluation.stats import patient_bootstrap
    from models.vq_tokenizer import to_uint8
    from models.vq_train import psnr_uint8, ssim

    original = originals_at_tokenizer_size(vq, pixels)
    grid = torch.as_tensor(test.codes).view(-1, vq.grid_size, vq.grid_size)
    recon = torch.cat([to_uint8(vq.decode(grid[i : i + 32])) for i in range(0, len(grid), 32)])
    again = vq.encode(torch.as_tensor(pixels[:16])).reshape(-1, vq.codes_per_image).numpy()
    per_image = {
        "psnr_vs_original": psnr_uint8(recon, original).numpy(),
        "ssim_vs_original": ssim(recon.float(), original.float()).numpy(),
    }
    rows = []
    for metric, values in per_image.items():
        est = patient_bootstrap(
            test.patient_ids, lambda i, v=values: float(v[i].mean()), n_boot, seed
        )
        rows.append(
            MetricRow(
                "vq_reconstruction",
                "vq_tokenizer",
                metric,
                est.value,
                setting="no masking",
                ci_low=est.ci_low,
                ci_high=est.ci_high,
                n=est.n,
            )
        )
    return rows, float((again == test.codes[:16]).mean())


def evaluate(
    args: argparse.Namespace, storage: Path, timer: Timer
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every task on the COVID TEST rows for both checkpoints; metric rows and facts."""

    from assets import paths
    from evaluation.data import load_pixels, load_split
    from evaluation.findings import FindingsConfig, run_findings
    from evaluation.inpainting import InpaintingConfig, positionwise_mode, run_inpainting
    from evaluation.report_generation import ReportGenerationConfig, run_report_generation
    from evaluation.retrieval import RetrievalConfig, run_retrieval
    from models.lm_train import load_lm_checkpoint
    from models.text_tokenizer import load_tokenizer
    from models.vocabulary import Vocabulary
    from models.vq_tokenizer import load_checkpoint

    facts: dict[str, Any] = {}
    all_rows: list[dict[str, Any]] = []

    def add(rows: list, checkpoint: str) -> None:
        for row in rows:
            all_rows.append({"checkpoint": checkpoint, **row.to_dict()})

    with timer("load rows"):
        vocab_path = storage.joinpath(*paths.VOCABULARY)
        vocab = Vocabulary.load(vocab_path)
        test = load_split(token_shard_paths(storage), "test", max_rows=args.max_test_rows)
        train = load_split(token_shard_paths(args.demo_storage), "train")
        images_dir = storage.joinpath(*paths.IMAGES_DIR)
        image_manifest = json.loads((images_dir / "_manifest.json").read_text())
        pixels = load_pixels(
            [images_dir / s["path"] for s in image_manifest["shards"]], test.image_ids
        )
        vq = load_checkpoint(storage.joinpath(*paths.IMAGE_TOKENIZER_DIR)).eval()
        tokenizer = load_tokenizer(storage.joinpath(*paths.TEXT_TOKENIZER_DIR))
    notes = [note_key(t) for t in test.text_ids]
    positives = test.positives
    facts["test"] = {
        "images": len(test),
        "patients": len(set(test.patient_ids)),
        "studies": len(set(test.study_ids)),
        "distinct_notes": len(set(notes)),
        "images_with_empty_note": int(sum(1 for t in test.text_ids if not t)),
        "note_tokens_median": float(np.median([len(t) for t in test.text_ids])),
        "label_positives": {o: int(positives[:, k].sum()) for k, o in enumerate(_observations())},
    }
    facts["demo_train"] = {
        "images": len(train),
        "patients": len(set(train.patient_ids)),
        "label_positives": {
            o: int(train.positives[:, k].sum()) for k, o in enumerate(_observations())
        },
    }
    print(f"COVID test rows: {facts['test']}")

    with timer("vq reconstruction"):
        rows, facts["vq_reencode_code_agreement"] = vq_rows(
            vq, test, pixels, args.n_boot, args.seed
        )
        add(rows, "")

    mode_codes = positionwise_mode(train.codes, vocab.codebook_size)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True).strip()

    # retrieval: whole hash-chosen patients (its cost is images x notes), one candidate per NOTE
    subset = patient_subset(test, args.retrieval_images)
    retrieval_rows = dataclasses.replace(subset, study_ids=[note_key(t) for t in subset.text_ids])
    facts["retrieval_subset"] = {
        "images": len(subset),
        "patients": len(set(subset.patient_ids)),
        "notes": len(set(retrieval_rows.study_ids)),
    }
    facts["checkpoints"] = {}
    for arm in ARMS:
        found = published_checkpoint(args.demo_storage, arm)
        if found is None:
            continue
        folder, manifest = found
        key = f"{arm}-{folder.name}"
        check_contract(storage, manifest, vocab_path)
        model, info = load_lm_checkpoint(folder)
        if info["vocab"] != vocab:
            raise SystemExit(f"{key} was trained with vocabulary {info['vocab']}, not {vocab}")
        max_text_tokens = int((info.get("train_config") or {}).get("max_text_tokens", 128))
        facts["checkpoints"][key] = {
            "path": repo_relative(folder),
            "content_hash": manifest["content_hash"],
            "step": manifest.get("step"),
            "val_loss_demo": (manifest.get("val") or {}).get("loss"),
            "max_text_tokens": max_text_tokens,
        }
        baselines = arm == "stage1"  # baseline rows do not depend on the checkpoint: keep one copy

        with timer(f"{key} inpainting"):
            result = run_inpainting(
                model,
                vq,
                vocab,
                test,
                pixels,
                mode_codes,
                InpaintingConfig(
                    mask_ratios=(INPAINT_RATIO,),
                    patterns=("random", "block"),
                    n_boot=args.n_boot,
                    batch_size=args.batch_size,
                    seed=args.seed,
                ),
            )
            add([r for r in result.rows if r.method == "model"], key)
            if baselines:
                add([r for r in result.rows if r.method == "image_blind_mode_fill"], "")

        with timer(f"{key} retrieval"):
            result = run_retrieval(
                model,
                vocab,
                retrieval_rows,
                RetrievalConfig(
                    max_text_tokens=max_text_tokens,
                    report_batch_size=args.report_batch_size,
                    n_boot=args.n_boot,
                    seed=args.seed,
                ),
            )
            add([r for r in result.rows if r.method == "model"], key)
            if baselines:
                add([r for r in result.rows if r.method == "chance"], "")
                # candidates are scored on their first max_text_tokens tokens (training's cut)
                truncated = {note_key(t[:max_text_tokens]) for t in subset.text_ids}
                facts["retrieval_subset"]["notes_distinct_after_truncation"] = len(truncated)
                facts["retrieval_subset"]["notes_longer_than_max_text_tokens"] = len(
                    {
                        n
                        for n, t in zip(retrieval_rows.study_ids, subset.text_ids, strict=True)
                        if len(t) > max_text_tokens
                    }
                )

        with timer(f"{key} report generation"):
            result = run_report_generation(
                model,
                vocab,
                decode,
                train,
                test,
                ReportGenerationConfig(
                    max_new_tokens=args.max_new_tokens,
                    batch_size=args.batch_size,
                    n_boot=args.n_boot,
                    seed=args.seed,
                ),
            )
            scored = [r for r in result.rows if r.metric != "green"]  # no local judge
            # the feature-nearest baseline uses this checkpoint's features; the code one does not
            add([r for r in scored if r.method != "nearest_train_report_codes"], key)
            if baselines:
                add([r for r in scored if r.method == "nearest_train_report_codes"], "")
            example = result.samples.filter(result.samples["method"] == "model").head(2)
            facts["checkpoints"][key]["generated_examples"] = [
                g[:240] for g in example["generated"].to_list()
            ]

        with timer(f"{key} findings"):
            result = run_findings(
                model,
                vocab,
                train,
                test,
                FindingsConfig(
                    layer=DEFAULT_LAYER,
                    mask_ratios=FINDINGS_RATIOS,
                    n_boot=args.n_boot,
                    batch_size=args.batch_size,
                    seed=args.seed,
                ),
            )
            add([r for r in result.rows if r.method == "model"], key)
            if baselines:
                add([r for r in result.rows if r.method == "bag_of_codes"], "")
        del model
    return all_rows, facts


def _observations() -> tuple[str, ...]:
    from cxr.labeler import OBSERVATIONS

    return tuple(OBSERVATIONS)


# ----------------------------------------------------------------------------------------------
# 3. Output


def _fmt(row: dict[str, Any]) -> str:
    if row["value"] is None:
        return row["status"]
    text = f"{row['value']:.3f}"
    if row["ci_low"] is not None:
        text += f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    return text


def print_table(rows: list[dict[str, Any]]) -> None:
    """Summary rows (no per-observation AUROCs, no chance rows beyond Recall@k)."""
    print()
    print(f"{'task':<18} {'checkpoint / method':<58} {'metric':<42} {'value [95% CI]':<26} n")
    for row in rows:
        if row["task"] == "findings" and row["metric"] == "auroc" and row["value"] is None:
            continue  # skipped observations: listed with their reason in the JSON
        who = f"{row['checkpoint'] or '-'} / {row['method']}"
        metric = row["metric"]
        if row["setting"] and row["task"] == "inpainting":
            metric = f"{metric} {row['setting']} {row['mask_ratio']:.0%}"
        if row["observation"]:
            metric = f"{metric} {row['observation']}"
        print(f"{row['task']:<18} {who:<58} {metric:<42} {_fmt(row):<26} {row['n']}")


def parse_args() -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--demo-storage",
        type=Path,
        default=Path("/tmp/demo120/storage"),
        help="storage root of a finished demo run (read only): tokenizers, checkpoints, shards",
    )
    parser.add_argument("--covid-root", type=Path, default=DEFAULT_COVID)
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "chexmix-real-covid",
        help="where the derived COVID storage goes (never inside the repository)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--max-test-rows", type=int, default=None, help="cap (None: all images)")
    parser.add_argument(
        "--retrieval-images",
        type=int,
        default=64,
        help="TEST images ranked against their notes (whole hash-chosen patients, at most this "
        "many images): the likelihood scorer costs images x notes forward passes",
    )
    parser.add_argument("--n-boot", type=int, default=200, help="patient-bootstrap resamples")
    parser.add_argument(
        "--reuse-storage",
        action="store_true",
        help="skip step 1 and evaluate the work dir's storage from an earlier run",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--report-batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    args.demo_storage = args.demo_storage.expanduser().resolve()
    args.covid_root = args.covid_root.expanduser().resolve()
    args.work_dir = args.work_dir.expanduser().resolve()
    if REPO in args.work_dir.parents or args.work_dir == REPO:
        raise SystemExit("--work-dir must lie outside the repository (derived data, licences)")
    for need in (args.demo_storage / "tokenizers", args.covid_root / "metadata.csv"):
        if not need.exists():
            raise SystemExit(f"{need} does not exist")
    return args


def main() -> None:
    """Run the three steps and write the JSON."""
    args = parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = common_machine_info(
        PACKAGES,
        load_key="load_average_before",
        extra={"torch_num_threads": torch.get_num_threads()},
    )
    print(f"cpus={info['cpu_count']} load={info['load_average_before']} torch={torch.__version__}")
    timer = Timer()
    started = time.perf_counter()
    if args.reuse_storage:
        storage = args.work_dir / "storage"
        if not (storage / "tokens" / "_manifest.json").is_file():
            raise SystemExit(f"--reuse-storage: no finished pipeline run under {storage}")
        pipeline_metadata, checks = {"reused": str(storage)}, []
    else:
        storage = fresh_storage(args.work_dir)
        with timer("pipeline (ingest -> token shards)"):
            pipeline_metadata, checks = run_pipeline(args, storage)
    summary = collection_summary(storage)
    rows, facts = evaluate(args, storage, timer)
    info["load_average_after"] = load_average()
    print_table(rows)
    payload = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "args": relative_args(args),
        "machine": info,
        "what": "demo checkpoints (synthetic phantoms) evaluated on the COVID-19 image data "
        "collection (Cohen et al., arXiv:2006.11988) through the images-csv adapter; every "
        "image in TEST; nothing trained or tuned on it. References are clinical notes, not "
        "radiology reports. Retrieval hits are counted per note; intervals resample patients. "
        "Retrieval ranks the images of hash-chosen whole patients (at most --retrieval-images) "
        "against the notes of those patients (its cost is images x notes).",
        "settings": {
            "inpainting_mask_ratio": INPAINT_RATIO,
            "findings_mask_ratios": list(FINDINGS_RATIOS),
            "feature_layer_fraction": DEFAULT_LAYER,
            "image_blind_baseline": "position-wise mode of the demo TRAIN codes",
            "probes_fitted_on": "demo TRAIN features and labels",
        },
        "timings_s": {**timer.seconds, "total": round(time.perf_counter() - started, 2)},
        "pipeline": {"metadata": pipeline_metadata, "checks": checks, "summary": summary},
        "facts": facts,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out_path = args.out / f"real-covid-{dt.date.today().isoformat()}.json"
    out_path.write_text(json.dumps(_json_value(payload), indent=2) + "\n")
    print(f"\ntotal {payload['timings_s']['total']:.0f} s; wrote {repo_relative(out_path)}")


if __name__ == "__main__":
    main()
