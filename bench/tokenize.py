"""Benchmark the token_shards path (``cxr.token_shards.ShardTokenizer``) against a bare encode loop.

Usage::

    python bench/tokenize.py [--preset small] [--images 256] [--batch-size 64]
        [--image-size 256] [--images-per-shard 128] [--repeats 3] [--device cpu]
        [--out bench/results] [--profile] [--max-seconds S] [--threads N]

In a temporary folder it builds a randomly initialised (seeded) VQ tokenizer of ``--preset`` (the
codebook is filled with random vectors, as a trained one would be, so code lookups are not
degenerate) and a tiny BPE, writes ``--images`` synthetic uint8 images (smooth blobs + noise) as
image shards in ``cxr.images.IMAGE_SCHEMA`` and a plan Parquet with the columns that
``plan_token_shards`` writes. Then, after one warm-up of each, it times ``--repeats`` interleaved
rounds (order alternating) of:

* path: a fresh ``ShardTokenizer(...)`` (load timed on its own) whose ``process(task)`` runs over
  every shard with a new ``input_hash`` (never reused): plan + image Parquet read,
  ``np.frombuffer``/``np.stack``, ``VQTokenizer.encode`` per ``--batch-size`` slice, text
  tokenization, row building, zstd Parquet written atomically + sha256;
* bare: the same decoded uint8 images already in memory as one torch tensor (on ``--device``),
  ``model.encode(x[i:i + batch_size])`` per slice under ``torch.inference_mode`` (the encoder's
  own default CPU chunking, exactly as the path calls it).

The path's time inside ``VQTokenizer.encode`` is also measured within each path round, giving
its own overhead (Parquet I/O, text, rows) and a "same-encoder" ratio that stays meaningful when
other processes load the CPU (the plain ratio then mostly measures contention noise).

Prints a table and writes ``<out>/tokenize-<preset>-<device>-<date>.json`` with machine info.
If path/bare < 0.9 (or with ``--profile``) it cProfiles one extra ``process()`` and reports the
time per stage. With ``--max-seconds``, a one-image probe estimates the run first and the
benchmark is skipped (and recorded as skipped) when the estimate is over that budget.
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
import datetime as dt
import io
import json
import os
import pstats
import statistics
import tempfile
import time
import uuid
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
from models.vq_tokenizer import VQTokenizer, config_from_preset, save_checkpoint

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
STAGES = {  # label -> substrings of pstats function names (file:line(name)) summed by cumtime
    "parquet read (plan + image shard)": ["parquet/core.py:", "read_table"],
    "arrow -> python (to_pylist/to_pydict)": ["to_pylist", "to_pydict"],
    "encode_images (frombuffer/stack + VQ)": ["token_shards.py:", "encode_images"],
    "  VQTokenizer.encode": ["vq_tokenizer.py:", "(encode)"],
    "text tokenization": ["tokenization_utils_base.py:", "__call__"],
    "codes .tolist() + row dicts": ["<method 'tolist'"],
    "pa.Table.from_pylist": ["from_pylist"],
    "write_parquet (zstd write + sha256)": ["storage.py:", "(write_parquet)"],
}


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
    for shard_index, start in enumerate(range(0, n, per_shard)):
        shard = f"shard-{shard_index:05d}"
        rows = []
        for i in range(start, min(n, start + per_shard)):
            pixels = synthetic_image(size, rng)
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


def build_tokenizers(root: Path, preset: str, texts: list[str], seed: int) -> tuple[Path, Path]:
    """Random-init VQ checkpoint (random codebook) + tiny BPE, saved under ``root``."""
    torch.manual_seed(seed)
    model = VQTokenizer(config_from_preset(preset)).eval()
    codebook = model.quantize._codebook
    with torch.no_grad():  # as if k-means-initialised: distinct random codes, not all zeros
        codebook.embed.normal_()
        codebook.embed_avg.copy_(codebook.embed)
        codebook.cluster_size.fill_(1.0)
        codebook.initted.fill_(True)
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


class Bench:
    """Holds the inputs and runs one path or bare round."""

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
        """The tasks with a new input hash, so ``process`` never reuses an output."""
        return [
            TokenTask(shard=t.shard, input_hash=uuid.uuid4().hex, num_items=t.num_items)
            for t in self.tasks
        ]

    def path_round(self) -> dict[str, float]:
        """Fresh worker (load timed apart), then ``process`` over every shard."""
        sync(self.device)
        start = time.perf_counter()
        worker = ShardTokenizer(**self.kwargs)
        sync(self.device)
        load_s = time.perf_counter() - start
        tasks = self.fresh_tasks()
        # Time spent inside the encoder, so the path's own cost is known from the same round
        # (robust to other load on the machine): one perf_counter pair per batch.
        encode, encode_s = worker.vq.encode, [0.0]

        def timed_encode(*a: Any, **kw: Any) -> torch.Tensor:
            t = time.perf_counter()
            try:
                return encode(*a, **kw)
            finally:
                encode_s[0] += time.perf_counter() - t

        worker.vq.encode = timed_encode  # type: ignore[method-assign]
        reset_peak(self.device)
        start = time.perf_counter()
        summaries = [worker.process(t) for t in tasks]
        sync(self.device)
        process_s = time.perf_counter() - start
        for task, summary in zip(tasks, summaries, strict=True):
            if summary["reused"] or summary["num_rows"] != task.num_items:
                raise RuntimeError(f"unexpected summary for {task}: {summary}")
        return {
            "load_s": load_s,
            "process_s": process_s,
            "encode_s": encode_s[0],
            "overhead_s": process_s - encode_s[0],
            "peak_mib": peak_mib(self.device),
        }

    def bare_round(self, model: VQTokenizer, images: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``model.encode`` per batch over the in-memory images; (seconds, codes)."""
        bs = self.args.batch_size
        reset_peak(self.device)
        sync(self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            codes = [model.encode(images[i : i + bs]) for i in range(0, images.shape[0], bs)]
        sync(self.device)
        return time.perf_counter() - start, torch.cat(codes)

    def path_codes(self) -> np.ndarray:
        """Image codes of the last written token shards, in image-id order."""
        parts = []
        for task in self.tasks:
            table = pq.read_table(self.root / "tokens" / f"{task.shard}.parquet")
            parts.append(np.asarray(table.column("image_codes").to_pylist(), dtype=np.int64))
        return np.concatenate(parts)

    def profile(self) -> tuple[str, dict[str, float], float]:
        """cProfile one ``process`` round; (top functions text, stage cumtimes, total seconds)."""
        worker = ShardTokenizer(**self.kwargs)
        tasks = self.fresh_tasks()
        prof = cProfile.Profile()
        start = time.perf_counter()
        prof.enable()
        for task in tasks:
            worker.process(task)
        prof.disable()
        total = time.perf_counter() - start
        stats = pstats.Stats(prof)
        stages: dict[str, float] = {}
        for label, needles in STAGES.items():
            cum = 0.0
            for (file, line, name), (_, _, _, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
                key = f"{file}:{line}({name})"
                if all(n in key for n in needles):
                    cum += ct
            stages[label] = cum
        for (file, _, name), (_, _, tt, _, _) in stats.stats.items():  # type: ignore[attr-defined]
            if file.endswith("token_shards.py") and name == "process":
                stages["process() self (sort, row dicts, lookups)"] = tt
        stages["other / not visible to cProfile"] = total - sum(
            v for k, v in stages.items() if not k.startswith(" ")
        )
        stream = io.StringIO()
        pstats.Stats(prof, stream=stream).sort_stats("cumulative").print_stats(25)
        return stream.getvalue(), stages, total


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


def write_json(args: argparse.Namespace, payload: dict[str, Any]) -> Path:
    """Write the result JSON; returns its path."""
    args.out.mkdir(parents=True, exist_ok=True)
    date = dt.date.today().isoformat()
    out_path = args.out / f"tokenize-{args.preset}-{args.device.split(':')[0]}-{date}.json"
    out_path.write_text(json.dumps(payload, indent=2) + "\n")
    return out_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", choices=["debug", "small", "chexmix"])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=256, help="side of the stored images")
    parser.add_argument("--images-per-shard", type=int, default=128, help="as cxr_images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--profile", action="store_true", help="always cProfile process()")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--max-seconds", type=float, default=None, help="skip if the probe estimate exceeds this"
    )
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device} requested but torch.cuda.is_available() is False")
    if min(args.images, args.batch_size, args.repeats, args.images_per_shard) < 1:
        raise SystemExit("--images, --batch-size, --repeats and --images-per-shard must be >= 1")
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
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": info,
        "target_ratio": TARGET_RATIO,
        "path": "fresh ShardTokenizer (load timed apart) + process() over every image shard "
        "with a new input_hash: plan/image Parquet read, frombuffer/stack, VQ encode per "
        "batch_size slice, text tokenization, rows, zstd Parquet write + sha256",
        "bare_loop": "model.encode(x[i:i+batch_size]) over the decoded uint8 images already in "
        "memory as one tensor on the device, under torch.inference_mode (encoder's default "
        "chunking, as the path calls it)",
    }
    with tempfile.TemporaryDirectory(prefix="bench_tokenize_") as tmp_name:
        root = Path(tmp_name)
        t0 = time.perf_counter()
        tasks, pixels, texts = write_inputs(
            root, args.images, args.image_size, args.images_per_shard, args.seed
        )
        vq_dir, _ = build_tokenizers(root, args.preset, texts, args.seed)
        setup_s = time.perf_counter() - t0
        bench = Bench(args, root, tasks)
        start = time.perf_counter()
        from models.vq_tokenizer import load_checkpoint

        model = load_checkpoint(vq_dir, map_location=device).eval()
        bare_load_s = time.perf_counter() - start
        images = torch.from_numpy(pixels).to(device)
        cfg = model.config
        payload["model"] = {
            "config": cfg.to_dict(),
            "codes_per_image": model.codes_per_image,
            "parameters": sum(p.numel() for p in model.parameters()),
            "encoder_parameters": sum(p.numel() for p in model.encoder.parameters()),
        }
        payload["setup_s"] = setup_s
        print(
            f"setup {setup_s:.1f}s: {args.images} images {args.image_size}px in {len(tasks)} "
            f"shard(s), preset {args.preset} ({cfg.image_size}px -> {model.codes_per_image} codes)"
        )

        if args.max_seconds is not None:  # one-image probe (includes first-call overheads)
            start = time.perf_counter()
            with torch.inference_mode():
                model.encode(images[:1])
            sync(device)
            per_image = time.perf_counter() - start
            estimate = per_image * args.images * 2 * (args.repeats + 1)
            payload["probe"] = {"s_per_image": per_image, "estimated_total_s": estimate}
            print(f"probe: {per_image:.2f} s/image -> estimated {estimate:.0f}s of timing")
            if estimate > args.max_seconds:
                payload["skipped"] = (
                    f"estimated {estimate:.0f}s > --max-seconds {args.max_seconds:.0f}"
                )
                info["load_average_after"] = os.getloadavg()
                print(f"SKIPPED: {payload['skipped']}; wrote {write_json(args, payload)}")
                return

        # Warm-up (imports, oneDNN kernels, page cache); the first load is the cold one.
        cold = bench.path_round()
        bare_warm_s, bare_codes = bench.bare_round(model, images)
        codes_match = bool(
            np.array_equal(bench.path_codes(), bare_codes.reshape(args.images, -1).numpy())
        )
        path_rounds: list[dict[str, Any]] = []
        bare_times: list[float] = []
        bare_peaks: list[float | None] = []
        for r in range(args.repeats):
            order = ["path", "bare"] if r % 2 == 0 else ["bare", "path"]
            for name in order:
                if name == "path":
                    path_rounds.append(bench.path_round())
                else:
                    seconds, _ = bench.bare_round(model, images)
                    bare_times.append(seconds)
                    bare_peaks.append(peak_mib(device))
        process_med = statistics.median(r["process_s"] for r in path_rounds)
        load_med = statistics.median(r["load_s"] for r in path_rounds)
        bare_med = statistics.median(bare_times)
        path_ips, bare_ips = args.images / process_med, args.images / bare_med
        ratio = path_ips / bare_ips
        best_ratio = min(bare_times) / min(r["process_s"] for r in path_rounds)
        overhead_med = statistics.median(r["overhead_s"] for r in path_rounds)
        # Path/bare if the encoder ran equally fast in both: only the path's own work counts.
        encode_ratio = statistics.median(r["encode_s"] / r["process_s"] for r in path_rounds)
        result = {
            "preset": args.preset,
            "codes_per_image": model.codes_per_image,
            "batch_size": args.batch_size,
            "path_img_per_s": path_ips,
            "bare_img_per_s": bare_ips,
            "ratio": ratio,
            "meets_target": ratio >= TARGET_RATIO,
            "ratio_best_of": best_ratio,
            "ratio_same_encoder": encode_ratio,
            "path_overhead_outside_encode_s_median": overhead_med,
            "path_overhead_ms_per_image": 1000 * overhead_med / args.images,
            "path_encode_s": [r["encode_s"] for r in path_rounds],
            "model_load_s_median": load_med,
            "model_load_s_cold": cold["load_s"],
            "bare_model_load_s": bare_load_s,
            "path_process_s": [r["process_s"] for r in path_rounds],
            "path_load_s": [r["load_s"] for r in path_rounds],
            "bare_s": bare_times,
            "warmup": {"path_process_s": cold["process_s"], "bare_s": bare_warm_s},
            "codes_match_bare": codes_match,
        }
        if device.type == "cuda":
            result["path_peak_gpu_mib"] = max(r["peak_mib"] for r in path_rounds)
            result["bare_peak_gpu_mib"] = max(p for p in bare_peaks if p is not None)
        payload["result"] = result

        profile_text = ""
        if ratio < TARGET_RATIO or args.profile:
            profile_text, stages, total = bench.profile()
            payload["profile"] = {
                "process_s_under_cprofile": total,
                "stage_cumtime_s": stages,
                "stage_share": {k: v / total for k, v in stages.items()},
                "top_cumulative": profile_text,
            }
    info["load_average_after"] = os.getloadavg()

    print()
    header = (
        f"{'preset':<8} {'codes/img':>9} {'batch':>5} {'path img/s':>10} {'bare img/s':>10} "
        f"{'ratio':>6} {'load s':>7}"
    )
    print(header)
    print(
        f"{args.preset:<8} {result['codes_per_image']:>9} {args.batch_size:>5} "
        f"{path_ips:>10.1f} {bare_ips:>10.1f} {ratio:>6.2f} {load_med:>7.2f}"
    )
    extra = (
        f"ratio best-of-{args.repeats} {best_ratio:.2f}; same-encoder ratio {encode_ratio:.3f} "
        f"(path overhead outside encode {overhead_med * 1000:.0f} ms = "
        f"{1000 * overhead_med / args.images:.2f} ms/image); codes match bare: {codes_match}; "
        f"cold load {cold['load_s']:.2f}s"
    )
    if device.type == "cuda":
        extra += (
            f"; peak GPU MiB path {result['path_peak_gpu_mib']:.0f} "
            f"bare {result['bare_peak_gpu_mib']:.0f}"
        )
    print(extra)
    load = info["load_average_before"], info["load_average_after"]
    print(f"load average before {load[0][0]:.2f}, after {load[1][0]:.2f} (1 min)")
    if profile_text:
        prof = payload["profile"]
        print()
        print(f"process() under cProfile: {prof['process_s_under_cprofile']:.2f}s; stages:")
        for label, seconds in prof["stage_cumtime_s"].items():
            print(f"  {label:<40} {seconds:>7.3f}s {prof['stage_share'][label]:>6.1%}")
    print(f"wrote {write_json(args, payload)}")


if __name__ == "__main__":
    main()
