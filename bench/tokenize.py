"""Benchmark the token_shards path (``cxr.token_shards.ShardTokenizer``) against a bare encode loop.

Usage::

    python bench/tokenize.py [--preset small] [--device cpu] [--images N] [--batch-size 64]
        [--image-size S] [--images-per-shard 128] [--repeats 2] [--settings fp32,fast]
        [--out bench/results] [--max-seconds S] [--strict-images N] [--profile] [--threads N]

    # the GPU run (one H200, ~2 minutes including compile):
    python bench/tokenize.py --preset chexmix --device cuda --out DIR

In a temporary folder it builds a seeded, randomly initialised VQ tokenizer of ``--preset`` whose
codebook is sampled from the encoder's own latents of the benchmark images (plus a little noise),
as k-means initialisation would, so nearest-code decisions have realistic margins and the
agreement figures mean something; a tiny BPE; ``--images`` synthetic uint8 images (smooth blobs,
noise; stored at the preset's size unless ``--image-size``) as image shards in
``cxr.images.IMAGE_SCHEMA``, and a plan Parquet with the columns ``plan_token_shards`` writes.

Each encoder setting of ``--settings`` (``fp32``: the reference eager float32 encoder; ``bf16``:
bf16 autocast; ``fp16``; ``compile``: fp32 compiled; ``fast``: bf16 + torch.compile +
channels_last; ``fast16``: the same in fp16; ``fast_nchw``: ``fast`` in NCHW) gets one
``ShardTokenizer`` (its load, and the first batch, which compiles and autotunes, are timed apart)
and ``--repeats`` interleaved rounds of:

* path: ``process_all`` over every shard with a fresh ``input_hash`` (never reused): plan +
  image Parquet read and pixel decode into pinned memory (reader thread), uint8 host->device
  copies and the encoder (this thread), rows + zstd Parquet written atomically + sha256 (writer
  thread);
* bare: ``encode_on_device`` per ``--batch-size`` slice of the same images already on the device,
  one sync at the end.

Reported per setting: images/s of both, path/bare, code agreement with fp32 on the same images
(fraction of identical positions; on CUDA also with a strict-fp32 reference on
``--strict-images`` images: cuDNN/cuBLAS TF32 off), path codes vs bare codes, peak GPU memory,
compile/warm-up seconds. The schedule puts fp32's reference pass first, then the other settings,
then fp32's remaining rounds; with ``--max-seconds`` (default 120 on CUDA) rounds that would
end past the budget are skipped and listed. The JSON
``<out>/tokenize-<preset>-<device>-<date>.json`` is rewritten after every stage
(``"complete": false`` until the end), so a run killed by an outer time limit still leaves its
numbers. Paths in it are relative to the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file shares its name with the stdlib ``tokenize`` module (imported by ``inspect``, which
# torch imports) and running it as a script puts bench/ first on sys.path: move bench/ to the end
# (stable sort) before anything imports ``tokenize``, and put the repository root first.
sys.path.sort(key=lambda p: Path(p or ".").resolve() == Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import cProfile
import dataclasses
import datetime as dt
import io
import json
import os
import pstats
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.common import machine_info as common_machine_info
from cxr.images import IMAGE_SCHEMA, ROW_GROUP_IMAGES
from cxr.storage import write_parquet
from cxr.token_shards import LABEL_COLUMNS, ShardTokenizer, TokenTask
from models.text_tokenizer import train_bpe
from models.vq_tokenizer import EncodeOptions, VQTokenizer, config_from_preset, save_checkpoint

TARGET_RATIO = 0.9
PACKAGES = ["torch", "numpy", "pyarrow", "tokenizers", "transformers", "diffusers"]
PACKAGES.append("vector-quantize-pytorch")
SENTENCES = [
    "The lungs are clear without focal consolidation.",
    "No pleural effusion or pneumothorax is seen.",
    "Heart size is normal.",
    "The cardiomediastinal silhouette is stable.",
    "There is mild pulmonary vascular congestion.",
    "Small left pleural effusion with adjacent atelectasis.",
    "Right internal jugular catheter terminates in the SVC.",
    "Endotracheal tube is 4 cm above the carina.",
    "Patchy opacity in the right lower lobe may represent pneumonia.",
    "Moderate cardiomegaly is unchanged from the prior study.",
    "No acute osseous abnormality.",
    "Degenerative changes of the thoracic spine.",
    "Low lung volumes with bibasilar atelectasis.",
    "No evidence of pulmonary edema.",
    "Interval removal of the nasogastric tube.",
]
SETTINGS: dict[str, EncodeOptions] = {
    "fp32": EncodeOptions(),
    "bf16": EncodeOptions(precision="bfloat16"),
    "fp16": EncodeOptions(precision="float16"),
    "compile": EncodeOptions(compile=True),
    "fast": EncodeOptions(precision="bfloat16", compile=True, channels_last=True),
    "fast16": EncodeOptions(precision="float16", compile=True, channels_last=True),
    "fast_nchw": EncodeOptions(precision="bfloat16", compile=True, channels_last=False),
}
AGREEMENT_TARGET = 0.995
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Synthetic inputs


def synthetic_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) uint8 image: a body ellipse, a few smooth blobs and noise."""
    y = (np.arange(size, dtype=np.float32) / size)[:, None]
    x = (np.arange(size, dtype=np.float32) / size)[None, :]
    img = 0.2 + 0.5 * np.exp(-((((x - 0.5) / 0.42) ** 2 + ((y - 0.55) / 0.5) ** 2) ** 3))
    for _ in range(int(rng.integers(3, 7))):
        cx, cy = rng.uniform(0.15, 0.85, 2)
        sx, sy = rng.uniform(0.05, 0.25, 2)
        amp = rng.uniform(-0.35, 0.35)
        img = img + amp * np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))
    img = img + rng.normal(0.0, 0.03, (size, size)).astype(np.float32)
    return np.clip(img * 255.0, 0, 255).astype(np.uint8)


POOL = 48  # distinct base images; the others are shifted, flipped, re-noised copies (fast)


def synthetic_images(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` (size, size) uint8 images: ``POOL`` base images, then rolled/flipped/noised ones."""
    base = [synthetic_image(size, rng) for _ in range(min(n, POOL))]
    out = list(base)
    for i in range(len(base), n):
        img = np.roll(base[i % len(base)], tuple(rng.integers(-size // 8, size // 8, 2)), (0, 1))
        if rng.random() < 0.5:
            img = img[:, ::-1]
        noise = rng.integers(-6, 7, img.shape, dtype=np.int16)
        out.append(np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return out


def synthetic_report(rng: np.random.Generator) -> str:
    """A few report sentences."""
    picks = rng.choice(len(SENTENCES), size=int(rng.integers(2, 7)), replace=False)
    return " ".join(SENTENCES[i] for i in picks)


def write_inputs(
    root: Path, n: int, size: int, per_shard: int, seed: int
) -> tuple[list[TokenTask], np.ndarray, list[str]]:
    """Image shards + plan under ``root``; returns tasks, the images (sorted by id), texts."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    all_pixels: list[np.ndarray] = []
    plan_rows: list[dict[str, Any]] = []
    tasks: list[TokenTask] = []
    texts: list[str] = []
    images = synthetic_images(n, size, rng)
    for shard_index, start in enumerate(range(0, n, per_shard)):
        shard = f"shard-{shard_index:05d}"
        rows = []
        for i in range(start, min(n, start + per_shard)):
            pixels = images[i]
            all_pixels.append(pixels)
            image_id, study_id, patient_id = (
                f"img_{i:06d}",
                f"stu_{i // 2:06d}",
                f"pat_{i // 4:05d}",
            )
            frontal = bool(i % 3)
            view = "PA" if frontal else "LATERAL"
            rows.append(
                {
                    "image_id": image_id,
                    "study_id": study_id,
                    "patient_id": patient_id,
                    "view_position": view,
                    "is_frontal": frontal,
                    "height": size,
                    "width": size,
                    "pixels": pixels.tobytes(),
                    "pixel_mean": float(pixels.mean()),
                    "pixel_std": float(pixels.std()),
                    "source_format": "dicom",
                    "transfer_syntax": "1.2.840.10008.1.2.1",
                    "decoder": "synthetic",
                    "original_rows": size,
                    "original_cols": size,
                    "photometric": "MONOCHROME2",
                    "bits_stored": 8,
                    "voi": "window",
                    "file_sha256": f"{i:064x}",
                }
            )
            text = synthetic_report(rng)
            texts.append(text)
            labels = {c: (1.0 if rng.random() < 0.3 else None) for c in LABEL_COLUMNS}
            plan_rows.append(
                {
                    "shard": shard,
                    "image_id": image_id,
                    "study_id": study_id,
                    "patient_id": patient_id,
                    "view_position": view,
                    "is_frontal": frontal,
                    "split": "train",
                    "text": text,
                    "text_source": "findings",
                    **labels,
                }
            )
        table = pa.Table.from_pylist(rows, schema=IMAGE_SCHEMA).replace_schema_metadata(
            {b"chexmix.input_hash": f"bench-{shard}".encode()}
        )
        write_parquet(table, images_dir / f"{shard}.parquet", row_group_size=ROW_GROUP_IMAGES)
        tasks.append(TokenTask(shard=shard, input_hash="", num_items=len(rows)))
    plan_schema = pa.schema(
        [
            ("shard", pa.string()),
            ("image_id", pa.string()),
            ("study_id", pa.string()),
            ("patient_id", pa.string()),
            ("view_position", pa.string()),
            ("is_frontal", pa.bool_()),
            ("split", pa.string()),
            ("text", pa.string()),
            ("text_source", pa.string()),
            *[(c, pa.float32()) for c in LABEL_COLUMNS],
        ]
    )
    pq.write_table(
        pa.Table.from_pylist(plan_rows, schema=plan_schema),
        root / "plan.parquet",
        compression="zstd",
        row_group_size=2048,
    )
    return tasks, np.stack(all_pixels), texts


def init_codebook_from_latents(
    model: VQTokenizer, images: torch.Tensor, seed: int, noise: float = 0.1, max_images: int = 16
) -> None:
    """Fills the codebook with encoder latents of ``images`` (+ ``noise`` x their std).

    What k-means initialisation starts from: entries lie where the latents are, so nearest-code
    margins (and the agreement of reduced precision with fp32) are realistic, unlike a codebook
    of random normals far from every latent.
    """
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    need = -(-cfg.codebook_size // cfg.codes_per_image)  # images whose latents cover K codes
    take = images[: max(1, min(images.shape[0], max_images, 2 * need))]
    with torch.inference_mode():
        z = torch.cat(
            [model.encode_latents(model.to_model_input(c)).float().cpu() for c in take.split(8)]
        )
    flat = z.permute(0, 2, 3, 1).reshape(-1, cfg.code_dim)
    pick = torch.randint(0, flat.shape[0], (cfg.codebook_size,), generator=gen)
    if flat.shape[0] >= cfg.codebook_size:
        pick = torch.randperm(flat.shape[0], generator=gen)[: cfg.codebook_size]
    embed = flat[pick] + noise * flat.std(dim=0) * torch.randn(
        cfg.codebook_size, cfg.code_dim, generator=gen
    )
    codebook = model.quantize._codebook
    with torch.no_grad():
        codebook.embed.copy_(embed[None].to(codebook.embed.device))
        codebook.embed_avg.copy_(codebook.embed)
        codebook.cluster_size.fill_(1.0)
        codebook.initted.fill_(True)


def build_tokenizers(
    root: Path,
    preset: str,
    texts: list[str],
    seed: int,
    images: np.ndarray,
    device: torch.device | str = "cpu",
) -> tuple[Path, Path]:
    """Random-init VQ checkpoint (codebook from its own latents) + tiny BPE under ``root``."""
    torch.manual_seed(seed)
    model = VQTokenizer(config_from_preset(preset)).eval().to(device)
    init_codebook_from_latents(model, torch.from_numpy(images), seed)
    vq_dir = save_checkpoint(model, root / "vq")
    text_dir = root / "text"
    train_bpe(texts[:200] * 4, vocab_size=400).save_pretrained(str(text_dir))
    return vq_dir, text_dir


# ----------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Reset the peak-memory counter (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """Peak allocated GPU memory since the last reset, MiB (None on CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def agreement(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Fraction of positions where two code arrays of one shape are equal."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"code arrays differ in size: {a.shape} vs {b.shape}")
    return float((a == b).mean()) if a.size else 1.0


def relative_path(path: Path) -> str:
    """``path`` relative to the repository when inside it, else its name (never absolute)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return f"<outside repo>/{Path(path).name}"


class Budget:
    """Wall-clock budget: a round runs only if it is expected to end within ``max_seconds``."""

    def __init__(self, max_seconds: float | None) -> None:
        self.start, self.max_seconds = time.perf_counter(), max_seconds
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, label: str, expected_s: float) -> bool:
        """False (and ``label`` recorded as skipped) if the round would overrun."""
        if self.max_seconds is None or self.elapsed() + expected_s <= self.max_seconds:
            return True
        self.skipped.append(f"{label} (expected {expected_s:.1f}s at {self.elapsed():.0f}s)")
        return False


class Setting:
    """One encoder setting: its worker, bare model and the rounds measured so far."""

    def __init__(self, name: str, options: EncodeOptions, kwargs: dict[str, Any]) -> None:
        self.name, self.options = name, options
        device = torch.device(kwargs["device"])
        sync(device)
        start = time.perf_counter()
        self.worker = ShardTokenizer(**kwargs, **dataclasses.asdict(options))
        sync(device)
        self.load_s = time.perf_counter() - start
        self.model = self.worker.vq  # the bare loop uses the same (compiled) model
        self.path_s: list[float] = []
        self.bare_s: list[float] = []
        self.peaks: list[float] = []
        self.first_batch_s: float | None = None
        self.batch_s: float | None = None  # a second batch: steady state
        self.bare_codes: torch.Tensor | None = None
        self.path_codes: np.ndarray | None = None
        self.result: dict[str, Any] = {"options": dataclasses.asdict(options)}

    def expected_s(self, n: int, batch_size: int) -> float:
        """Expected seconds of one round over ``n`` images (from what was measured)."""
        times = self.path_s + self.bare_s
        if times:
            return max(times)
        return 1.3 * (self.batch_s or 0.0) * -(-n // batch_size)


class Bench:
    """Holds the inputs and runs path and bare rounds for each setting."""

    def __init__(self, args: argparse.Namespace, root: Path, tasks: list[TokenTask]) -> None:
        self.args, self.root, self.tasks = args, root, tasks
        self.device = torch.device(args.device)
        self.kwargs = {
            "vq_dir": str(root / "vq"),
            "text_tokenizer_dir": str(root / "text"),
            "images_dir": str(root / "images"),
            "plan_path": str(root / "plan.parquet"),
            "out_dir": str(root / "tokens"),
            "file_metadata": {"chexmix.bench": "tokenize"},
            "batch_size": args.batch_size,
            "device": args.device,
        }
        (root / "tokens").mkdir(exist_ok=True)

    def fresh_tasks(self) -> list[TokenTask]:
        """The tasks with a new input hash, so ``process_all`` never reuses an output."""
        return [
            TokenTask(shard=t.shard, input_hash=uuid.uuid4().hex, num_items=t.num_items)
            for t in self.tasks
        ]

    def first_batches(self, setting: Setting, images: torch.Tensor) -> None:
        """Two bare batches: the first compiles and autotunes, the second is steady state."""
        bs = self.args.batch_size
        for attr in ("first_batch_s", "batch_s"):
            sync(self.device)
            start = time.perf_counter()
            setting.model.encode_on_device(images[:bs], pad_to=bs)
            sync(self.device)
            setattr(setting, attr, time.perf_counter() - start)

    def path_round(self, setting: Setting) -> float:
        """``process_all`` over every shard; seconds (peak memory recorded)."""
        tasks = self.fresh_tasks()
        reset_peak(self.device)
        sync(self.device)
        start = time.perf_counter()
        summaries = setting.worker.process_all(tasks)
        sync(self.device)
        seconds = time.perf_counter() - start
        for task, summary in zip(tasks, summaries, strict=True):
            if summary["reused"] or summary["num_rows"] != task.num_items:
                raise RuntimeError(f"unexpected summary for {task}: {summary}")
        setting.path_s.append(seconds)
        if (peak := peak_mib(self.device)) is not None:
            setting.peaks.append(peak)
        setting.path_codes = self.read_path_codes()
        return seconds

    def bare_round(self, setting: Setting, images: torch.Tensor) -> float:
        """``encode_on_device`` per batch over the images on the device; seconds."""
        bs = self.args.batch_size
        reset_peak(self.device)
        sync(self.device)
        start = time.perf_counter()
        codes = [
            setting.model.encode_on_device(images[i : i + bs], pad_to=bs)
            for i in range(0, images.shape[0], bs)
        ]
        sync(self.device)
        seconds = time.perf_counter() - start
        setting.bare_s.append(seconds)
        if (peak := peak_mib(self.device)) is not None:
            setting.peaks.append(peak)
        setting.bare_codes = torch.cat(codes).reshape(images.shape[0], -1).cpu()
        return seconds

    def read_path_codes(self) -> np.ndarray:
        """Image codes of the last written token shards, in image-id order."""
        parts = []
        for task in self.tasks:
            table = pq.read_table(self.root / "tokens" / f"{task.shard}.parquet")
            codes = table.column("image_codes").combine_chunks().flatten().to_numpy()
            parts.append(codes.reshape(table.num_rows, -1).astype(np.int64))
        return np.concatenate(parts)

    def strict_fp32_codes(self, setting: Setting, images: torch.Tensor) -> torch.Tensor:
        """Codes of the eager fp32 encoder with TF32 off in cuDNN and cuBLAS (CUDA only)."""
        cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            bs = self.args.batch_size
            codes = [
                setting.model.encode_on_device(images[i : i + bs])
                for i in range(0, images.shape[0], bs)
            ]
            return torch.cat(codes).reshape(images.shape[0], -1).cpu()
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul

    def profile(self, setting: Setting) -> str:
        """cProfile one sequential (no overlap) ``process_all``; the top functions."""
        worker = setting.worker
        worker.overlap = False
        prof = cProfile.Profile()
        try:
            prof.enable()
            worker.process_all(self.fresh_tasks())
            sync(self.device)
            prof.disable()
        finally:
            worker.overlap = True
        stream = io.StringIO()
        pstats.Stats(prof, stream=stream).sort_stats("cumulative").print_stats(25)
        return stream.getvalue()


def summarize(setting: Setting, n: int, reference: Setting | None, strict: Any) -> dict[str, Any]:
    """The setting's figures so far (medians over rounds)."""
    res = setting.result
    res.update(
        {
            "load_s": setting.load_s,
            "first_batch_s": setting.first_batch_s,
            "second_batch_s": setting.batch_s,
            "path_s": setting.path_s,
            "bare_s": setting.bare_s,
        }
    )
    if setting.path_s:
        res["path_img_per_s"] = n / statistics.median(setting.path_s)
    if setting.bare_s:
        res["bare_img_per_s"] = n / statistics.median(setting.bare_s)
    if setting.path_s and setting.bare_s:
        res["ratio"] = res["path_img_per_s"] / res["bare_img_per_s"]
        res["meets_ratio_target"] = res["ratio"] >= TARGET_RATIO
    if setting.peaks:
        res["peak_gpu_mib"] = max(setting.peaks)
    if setting.bare_codes is not None and setting.path_codes is not None:
        res["path_codes_vs_bare"] = agreement(setting.path_codes, setting.bare_codes.numpy())
    if (
        reference is not None
        and reference.bare_codes is not None
        and setting.bare_codes is not None
    ):
        res["agreement_vs_fp32"] = agreement(setting.bare_codes, reference.bare_codes)
        res["meets_agreement_target"] = res["agreement_vs_fp32"] >= AGREEMENT_TARGET
    if strict is not None and setting.bare_codes is not None:
        res["agreement_vs_strict_fp32"] = agreement(setting.bare_codes[: strict.shape[0]], strict)
    return res


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU/GPU, load, threads and versions."""
    info = common_machine_info(
        PACKAGES,
        load_key="load_average_before",
        extra={
            "torch_num_threads": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
        },
    )
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def json_path(args: argparse.Namespace) -> Path:
    date = dt.date.today().isoformat()
    return args.out / f"tokenize-{args.preset}-{args.device.split(':')[0]}-{date}.json"


def write_json(args: argparse.Namespace, payload: dict[str, Any]) -> Path:
    """Write (or rewrite) the result JSON; returns its path."""
    args.out.mkdir(parents=True, exist_ok=True)
    out_path = json_path(args)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, out_path)
    return out_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", choices=["debug", "small", "chexmix"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=None, help="default 1024 CUDA, 256 CPU")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--images-per-shard", type=int, default=128, help="as cxr_images")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--settings",
        default=None,
        help=f"comma list of {sorted(SETTINGS)}; default fp32,fast16,fast,compile (CUDA, in "
        "that priority under --max-seconds), fp32,bf16 (CPU)",
    )
    parser.add_argument(
        "--strict-images", type=int, default=256, help="CUDA: images for the strict-fp32 check"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--profile", action="store_true", help="cProfile one sequential round")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="skip rounds that would end past this wall time (default 120 on CUDA, none on CPU)",
    )
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device} requested but torch.cuda.is_available() is False")
    args.images = args.images or (1024 if cuda else 256)
    args.image_size = args.image_size or config_from_preset(args.preset).image_size
    args.settings = args.settings or ("fp32,fast16,fast,compile" if cuda else "fp32,bf16")
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown or not names:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {sorted(SETTINGS)}")
    args.settings = ["fp32", *[s for s in names if s != "fp32"]]  # fp32 is the reference
    if args.max_seconds is None and cuda:
        args.max_seconds = 120.0
    if min(args.images, args.batch_size, args.repeats, args.images_per_shard) < 1:
        raise SystemExit("--images, --batch-size, --repeats and --images-per-shard must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    budget = Budget(args.max_seconds)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine_info(device)
    print(
        f"cpus={info['cpu_count']} load={tuple(round(x, 2) for x in info['load_average_before'])} "
        f"torch={info['versions']['torch']} threads={info['torch_num_threads']} device={device}"
    )
    payload: dict[str, Any] = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "complete": False,
        "args": {k: relative_path(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": info,
        "target_ratio": TARGET_RATIO,
        "agreement_target": AGREEMENT_TARGET,
        "path": "ShardTokenizer.process_all over every image shard with a new input_hash: "
        "reader thread (plan/image Parquet, pixels into pinned memory, text tokens), encoder "
        "(non-blocking uint8 H2D, float on the device), writer thread (rows, zstd Parquet "
        "atomic write + sha256)",
        "bare_loop": "encode_on_device(x[i:i+batch_size]) over the uint8 images already on the "
        "device, one sync at the end (same model object as the path)",
        "agreement": "fraction of identical code positions vs the fp32 setting on the same "
        "images; agreement_vs_strict_fp32: vs eager fp32 with TF32 off (CUDA)",
        "settings": {},
    }
    n = args.images
    with tempfile.TemporaryDirectory(prefix="bench_tokenize_") as tmp_name:
        root = Path(tmp_name)
        t0 = time.perf_counter()
        tasks, pixels, texts = write_inputs(
            root, n, args.image_size, args.images_per_shard, args.seed
        )
        build_tokenizers(root, args.preset, texts, args.seed, pixels, device)
        payload["setup_s"] = time.perf_counter() - t0
        images = torch.from_numpy(pixels).to(device)
        cfg = config_from_preset(args.preset)
        payload["model"] = {"config": cfg.to_dict(), "codes_per_image": cfg.codes_per_image}
        print(
            f"setup {payload['setup_s']:.1f}s: {n} images {args.image_size}px in {len(tasks)} "
            f"shard(s), preset {args.preset} ({cfg.image_size}px -> {cfg.codes_per_image} codes)"
        )
        bench = Bench(args, root, tasks)
        settings: dict[str, Setting] = {}
        strict: torch.Tensor | None = None

        def report() -> None:
            reference = settings.get("fp32")
            for name, setting in settings.items():
                payload["settings"][name] = summarize(setting, n, reference, strict)
            payload["skipped"] = budget.skipped
            payload["elapsed_s"] = budget.elapsed()
            write_json(args, payload)

        def start(name: str) -> Setting:
            setting = Setting(name, SETTINGS[name], bench.kwargs)
            bench.first_batches(setting, images)
            settings[name] = setting
            print(
                f"[{budget.elapsed():5.0f}s] {name}: load {setting.load_s:.1f}s, first batch "
                f"(compile/autotune) {setting.first_batch_s:.1f}s, second {setting.batch_s:.2f}s"
            )
            return setting

        def rounds(setting: Setting, kinds: list[str]) -> None:
            for kind in kinds:
                label = f"{setting.name} {kind} round"
                if not budget.allows(label, setting.expected_s(n, args.batch_size)):
                    continue
                run: Callable[[], float] = (
                    (lambda: bench.path_round(setting))
                    if kind == "path"
                    else (lambda: bench.bare_round(setting, images))
                )
                seconds = run()
                print(f"[{budget.elapsed():5.0f}s] {label}: {n / seconds:.1f} images/s")
                report()

        # Priorities under the budget: fp32's reference codes, the first fast setting, one fp32
        # path round and the strict reference, the other settings, then fp32's extra rounds.
        fp32 = start("fp32")
        rounds(fp32, ["bare"])
        compile_s = 45.0  # expected first compile (then: the last one measured)
        for index, name in enumerate(args.settings[1:]):
            expected = compile_s if SETTINGS[name].compile else 0.0
            if budget.allows(f"{name} (load + first batches)", expected + 10.0):
                setting = start(name)
                if SETTINGS[name].compile:
                    compile_s = setting.first_batch_s or compile_s
                report()
                kinds = [
                    k for r in range(args.repeats) for k in ("path", "bare")[:: 1 - 2 * (r % 2)]
                ]
                rounds(setting, kinds)
            if index == 0:
                rounds(fp32, ["path"])
                if device.type == "cuda" and args.strict_images > 0:
                    m = min(args.strict_images, n)
                    if budget.allows(
                        "strict fp32 reference", 3 * m * fp32.expected_s(n, args.batch_size) / n
                    ):
                        strict = bench.strict_fp32_codes(fp32, images[:m])
                    report()
        if len(args.settings) == 1:
            rounds(fp32, ["path"])
        rounds(fp32, [k for _ in range(args.repeats - 1) for k in ("bare", "path")])
        report()
        if args.profile:
            payload["profile_sequential_fp32"] = bench.profile(fp32)
    info["load_average_after"] = os.getloadavg()
    payload["complete"] = True
    report()

    print()
    print(
        f"{'setting':<10} {'path img/s':>10} {'bare img/s':>10} {'ratio':>6} {'agree fp32':>10} "
        f"{'agree strict':>12} {'peak GiB':>8} {'1st batch s':>11}"
    )
    for name, res in payload["settings"].items():
        peak = res.get("peak_gpu_mib")

        def fmt(key: str, spec: str, res: dict[str, Any] = res) -> str:
            value = res.get(key)
            return format(value, spec) if value is not None else "-"

        print(
            f"{name:<10} {fmt('path_img_per_s', '10.1f'):>10} {fmt('bare_img_per_s', '10.1f'):>10}"
            f" {fmt('ratio', '6.2f'):>6} {fmt('agreement_vs_fp32', '10.4f'):>10}"
            f" {fmt('agreement_vs_strict_fp32', '12.4f'):>12}"
            f" {(format(peak / 1024, '8.1f') if peak else '-'):>8}"
            f" {fmt('first_batch_s', '11.1f'):>11}"
        )
    if budget.skipped:
        print(f"skipped (budget {args.max_seconds}s): {budget.skipped}")
    print(f"total {budget.elapsed():.0f}s; wrote {relative_path(json_path(args))}")
    return payload


if __name__ == "__main__":
    main()
