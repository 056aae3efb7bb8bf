"""Benchmark the LM training loop bare and wrapped in Ray Train (``pipelines.on_ray.lm_training``).

Usage::

    python bench/train.py [--preset small] [--steps 40] [--warmup 3] [--batch-size 8]
        [--codes 256] [--text-tokens 64] [--rows 512] [--threads 1] [--repeats 3]
        [--ddp-workers 2] [--device auto] [--out bench/results] [--skip-ray]

In a temporary folder it writes synthetic token shards (``cxr.token_shards.token_schema``; random
image codes in ``[0, codebook)``, ``--text-tokens`` random report ids per row, split ``train``,
two shards of 64-row row groups) and a ``Vocabulary``; every sequence has the same length
``codes + text_tokens + 4`` (no padding). Then, ``--repeats`` times in alternation:

* bare: one process, the model built with ``torch.manual_seed(seed)`` exactly as the Ray worker
  builds it, ``models.lm_train.train_lm`` on ``TokenShardBatches`` (no checkpoints);
* ray 1 worker: ``pipelines.on_ray.lm_training.fit_with_ray`` with the same shards, vocabulary and
  ``LMTrainConfig`` (checkpoint only at the end), a fresh storage folder and run name;

and finally ``--ddp-workers`` workers (DDP, gloo on CPU) once (0 skips it; on CPU the workers
compete for the same cores, so it is a contention number, not a scaling number).

Every run does ``--warmup + --steps`` optimizer steps with ``log_every=1``; the loop throughput
is computed from ``train_lm``'s per-step history rows (``step_s``: batch fetch + step, and
``tokens``) of the last ``--steps`` steps, so warm-up steps, model build, Ray start-up and the
final checkpoint are all excluded. ``train_lm``'s own ``tokens_per_second`` (whole call: warm-up
steps and the checkpoint included) and the end-to-end wall time (Ray import + ``ray.init`` for the
first Ray run, worker group start, model build, training, checkpoint upload, teardown) are
reported separately. Target (project issue): Ray-wrapped loop tokens/s >= 0.9 x bare at 1
worker (checked on the median over the repeats, and best-of as the contention-robust figure).
Threads are fixed with ``LMTrainConfig.num_threads = --threads`` in both modes. The CPU seconds
used during each run by the driver, every Ray process and the rest of the machine (other jobs)
are sampled with psutil, to show where the time goes. The final losses of bare and Ray-1 runs
must match (same seed, same data order): the JSON records the difference.

FLOPs per token = ``6 * N + 12 * n_layers * hidden * seq_len`` (PaLM appendix B), with ``N`` the
parameters that take part in matmuls (all but the input-embedding table, which is a lookup; the
untied LM head counts) and ``seq_len`` the input length (codes + report tokens + 4 specials). On
a GPU (``--device auto`` picks CUDA when available) the run uses bfloat16 autocast, the default
preset is ``radphi2`` (1024 codes: 1028 + report-token inputs, i.e. 1027 + report-token targets)
and MFU = achieved FLOP/s / the dense bf16 peak of the GPU (``PEAK_BF16_TFLOPS`` or
``--peak-tflops``). On CPU there is no meaningful peak: MFU is reported as n/a. The Ray runs
write one full checkpoint (weights + AdamW state, about 34 GB for ``radphi2``, twice while Ray
uploads it) under ``$TMPDIR``; the GPU path has not been run on a GPU yet.

Prints a table and writes ``<out>/train-<preset>-<cpu|cuda>-<date>.json`` with machine info.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running this file puts bench/ first on sys.path, where bench/tokenize.py shadows the stdlib
# ``tokenize`` (imported by ``inspect``, which torch imports): move bench/ last before anything
# imports it (stable sort); main() then drops it altogether so Ray does not hand it to workers.
sys.path.sort(key=lambda p: Path(p or ".").resolve() == Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import dataclasses
import datetime as dt
import gc
import json
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.common import machine_info as common_machine_info
from bench.common import repo_relative
from cxr.token_shards import LABEL_COLUMNS, token_schema
from models.early_fusion import (
    LMConfig,
    build_model,
    count_parameters,
    lm_config_from_preset,
)
from models.lm_data import TokenShardBatches
from models.lm_train import LMTrainConfig, train_lm
from models.vocabulary import Vocabulary

for _key, _value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}.items():
    os.environ.setdefault(_key, _value)  # before ray is imported (lazily, in run_ray)

TARGET_RATIO = 0.9  # CPU (2 cores shared by the driver, Ray's daemons and the worker)
TARGET_RATIO_GPU = 0.95
PACKAGES = ["torch", "transformers", "ray", "numpy", "pyarrow"]
SPECIALS = {"<|endoftext|>": 0, "<|img|>": 1, "<|/img|>": 2}
ROW_GROUP_ROWS = 64
#: Per preset: text vocabulary, codebook, codes per image, report tokens, batch size on a GPU.
PRESET_DATA: dict[str, dict[str, int]] = {
    "debug": {"text_vocab": 512, "codebook": 128, "codes": 64, "text_tokens": 32, "gpu_batch": 8},
    "small": {"text_vocab": 2048, "codebook": 512, "codes": 256, "text_tokens": 64, "gpu_batch": 8},
    # Phi-2's tokenizer (50295 ids) and a 1024-code image (32 x 32 latent); batch 4 keeps
    # full-precision AdamW state + bf16 activations of 2.8B parameters inside 80 GB.
    "radphi2": {
        "text_vocab": 50295,
        "codebook": 8192,
        "codes": 1024,
        "text_tokens": 128,
        "gpu_batch": 4,
    },
}
#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched in order against the device name.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)


# ----------------------------------------------------------------------------------------------
# Inputs


def make_vocab(text_vocab: int, codebook: int) -> Vocabulary:
    """The unified vocabulary of the synthetic data."""
    return Vocabulary.build(text_vocab_size=text_vocab, codebook_size=codebook, specials=SPECIALS)


def write_token_shards(
    out_dir: Path, rows: int, codes: int, text_tokens: int, vocab: Vocabulary, seed: int
) -> list[Path]:
    """Two token shards (``token_schema``), every row ``split="train"``, 64-row row groups."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_shard = [rows - rows // 2, rows // 2]
    paths, index = [], 0
    for shard, count in enumerate(per_shard):
        if count == 0:
            continue
        records = []
        for _ in range(count):
            records.append(
                {
                    "image_id": f"img{index:06d}",
                    "study_id": f"s{index // 2:06d}",
                    "patient_id": f"p{index // 4:05d}",
                    "split": "train",
                    "view_position": "PA",
                    "is_frontal": True,
                    "image_codes": rng.integers(0, vocab.codebook_size, codes).tolist(),
                    "text_ids": rng.integers(3, vocab.text_vocab_size, text_tokens).tolist(),
                    "text_source": "findings",
                    **dict.fromkeys(LABEL_COLUMNS),
                }
            )
            index += 1
        table = pa.Table.from_pylist(records, schema=token_schema(codes))
        path = out_dir / f"shard-{shard:05d}.parquet"
        pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# FLOPs / MFU


def flops_per_token(model: torch.nn.Module, lm_cfg: LMConfig, seq_len: int) -> dict[str, Any]:
    """``6 N + 12 L h T`` training FLOPs per token (N: parameters used in matmuls)."""
    total = count_parameters(model)
    embedding = model.get_input_embeddings().weight.numel()
    matmul = total - embedding
    dense = 6 * matmul
    attention = 12 * lm_cfg.num_layers * lm_cfg.hidden_size * seq_len
    return {
        "params_total": total,
        "params_input_embedding": embedding,
        "params_matmul": matmul,
        "seq_len": seq_len,
        "dense_flops_per_token": dense,
        "attention_flops_per_token": attention,
        "flops_per_token": dense + attention,
    }


def gpu_peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float, str]:
    """Dense bf16 peak FLOP/s of ``device`` (0.0 when unknown) and where it came from."""
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return 0.0, "n/a on CPU"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{key} bf16 dense (table)"
    return 0.0, f"unknown GPU {name!r}: pass --peak-tflops"


# ----------------------------------------------------------------------------------------------
# CPU accounting (where the time goes on a shared 2-core machine)


def _process_label(proc: psutil.Process, root_pid: int) -> str:
    """Short label of a process of this tree (the driver, a Ray daemon or a Ray worker)."""
    if proc.pid == root_pid:
        return "driver (this process)"
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    if not cmd:
        return proc.name()
    head = cmd[0].split()[0] if cmd[0].startswith("ray::") else Path(cmd[0]).name
    if head.startswith("python"):
        scripts = [a for a in cmd[1:] if not a.startswith("-")]
        head = Path(scripts[0]).name if scripts else head
    if head.startswith("ray::"):
        head = head.split(".")[0]  # ray::RayTrainWorker.run_train_fn -> ray::RayTrainWorker
    return head[:40]


class CpuSampler:
    """CPU seconds used during a window by this process tree (grouped by label) and the machine.

    Samples ``cpu_times`` of the driver and all its descendants (Ray's gcs_server, raylet,
    agents and workers are descendants of a Ray started here) every ``interval`` seconds;
    processes born during the window count from 0. A process's time after its last sample
    (e.g. a worker that exits) is missed, so the figures are lower bounds.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.root = psutil.Process()
        self.first: dict[tuple[int, float], float] = {}
        self.last: dict[tuple[int, float], tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, initial: bool) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            try:
                times = proc.cpu_times()
                key = (proc.pid, proc.create_time())
            except psutil.Error:
                continue
            cpu = times.user + times.system
            if key not in self.first:
                self.first[key] = cpu if initial else 0.0
            # relabel every time: a worker starts as setup_worker.py, then sets its actor title;
            # keep the last good label of a process that is exiting
            label = _process_label(proc, self.root.pid)
            if label == "?" and key in self.last:
                label = self.last[key][0]
            self.last[key] = (label, cpu)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(False)

    def __enter__(self) -> CpuSampler:
        self.machine_start = psutil.cpu_times()
        self.wall_start = time.perf_counter()
        self._sample(True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(False)
        self.wall_s = time.perf_counter() - self.wall_start
        end = psutil.cpu_times()
        busy = [
            (getattr(end, f) - getattr(self.machine_start, f))
            for f in ("user", "nice", "system", "irq", "softirq", "steal")
            if hasattr(end, f)
        ]
        self.machine_busy_s = sum(busy)

    def report(self) -> dict[str, Any]:
        """``wall_s``, machine busy CPU-s and cores, and CPU-s per process label (sorted)."""
        groups: dict[str, float] = {}
        for key, (label, cpu) in self.last.items():
            groups[label] = groups.get(label, 0.0) + max(0.0, cpu - self.first[key])
        tree = sum(groups.values())
        return {
            "wall_s": self.wall_s,
            "machine_busy_cpu_s": self.machine_busy_s,
            "machine_busy_cores": self.machine_busy_s / self.wall_s,
            "tree_cpu_s": tree,
            "other_jobs_cpu_s": max(0.0, self.machine_busy_s - tree),
            "by_process_cpu_s": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        }


# ----------------------------------------------------------------------------------------------
# Runs


def steady_state(history: list[dict[str, float]], warmup: int) -> dict[str, Any]:
    """Loop throughput over the log windows that start after ``warmup`` steps.

    ``train_lm`` logs one row per window of ``log_every`` steps, timed from the window's start
    to a device synchronisation at its end (``window_s``, ``tokens``, ``data_wait_s``).
    """
    if not history:
        raise RuntimeError("train_lm logged no row")
    rows = [r for r in history if r["step"] - r["window_steps"] >= warmup]
    if not rows:
        raise RuntimeError(f"no log window after the {warmup} warm-up steps")
    seconds = sum(r["window_s"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    steps = sum(r["window_steps"] for r in rows)
    return {
        "steps": int(steps),
        "loop_s": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "steps_per_s": steps / seconds,
        "step_s_mean": seconds / steps,
        "step_s_windows": [round(r["step_s"], 5) for r in history],
        "data_wait_fraction": sum(r["data_wait_s"] for r in rows) / seconds,
        "warmup_s": sum(r["window_s"] for r in history if r not in rows),
        "loss_final": history[-1]["loss"],
        "losses": [round(r["loss"], 6) for r in history],
    }


def cuda_memory(device: torch.device) -> dict[str, float]:
    """Peak allocated / reserved GPU memory (GiB) since the last reset; empty on CPU."""
    if device.type != "cuda":
        return {}
    return {
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
    }


def build_on(device: torch.device, preset: str, vocab: Vocabulary, max_positions: int) -> Any:
    """The seeded model, initialised directly on ``device`` (as the Ray GPU worker builds it)."""
    with torch.device(device):
        return build_model(lm_config_from_preset(preset), vocab, max_positions)


def run_bare(
    shards: list[Path],
    vocab: Vocabulary,
    preset: str,
    cfg: LMTrainConfig,
    max_positions: int,
    device: torch.device,
    warmup: int,
) -> dict[str, Any]:
    """One process: the model built (seeded) as the Ray worker builds it; no checkpoints."""
    load = os.getloadavg()[0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if cfg.compile:
        # each run compiles for its own shapes (static kernels), as a fresh process would;
        # the on-disk kernel cache still serves graphs compiled before
        torch._dynamo.reset()
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_on(device, preset, vocab, max_positions)
    data = TokenShardBatches(
        shards,
        vocab,
        batch_size=cfg.batch_size,
        max_text_tokens=cfg.max_text_tokens,
        split="train",
        shuffle=True,
        seed=cfg.seed,
    )
    setup_s = time.perf_counter() - start
    with CpuSampler() as cpu:
        result = train_lm(model, data, cfg)
    wall = time.perf_counter() - start
    memory = cuda_memory(device)
    del model, data
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "mode": "bare",
        "workers": 1,
        "stage": cfg.stage,
        "compile": cfg.compile,
        "batch_size": cfg.batch_size,
        "load_1min_at_start": load,
        "setup_s": setup_s,
        "call_s": result.seconds,
        "call_tokens_per_s": result.tokens_per_second,
        "call_steps_per_s": result.steps_per_second,
        "call_gap_s": result.seconds - sum(r["window_s"] for r in result.history),
        "wall_s": wall,
        "cpu": cpu.report(),
        **memory,
        **steady_state(result.history, warmup),
    }


def run_parity(
    common: dict[str, Any], device: torch.device, steps: int, batch_size: int
) -> dict[str, Any]:
    """The same seed and data for ``steps`` steps: eager (compile off) vs the tested settings.

    Both runs log every step; the reference is the plain eager loop, whose losses match the
    previous boolean-indexing loss within 1.4e-6 on CPU (the CPU tests pin that path down).
    """
    cfg = common["cfg"]
    base = dataclasses.replace(
        cfg, steps=steps, log_every=1, warmup_steps=min(10, steps), batch_size=batch_size
    )
    args = {**common, "warmup": 1, "device": device}
    reference = run_bare(**{**args, "cfg": dataclasses.replace(base, compile=False)})
    tested = run_bare(**{**args, "cfg": base})
    diffs = [abs(a - b) for a, b in zip(reference["losses"], tested["losses"], strict=True)]
    rel = [d / max(abs(a), 1e-9) for d, a in zip(diffs, reference["losses"], strict=True)]
    return {
        "steps": steps,
        "reference": {k: v for k, v in reference.items() if k != "cpu"},
        "tested": {k: v for k, v in tested.items() if k != "cpu"},
        "abs_diffs": [round(d, 6) for d in diffs],
        "max_abs_diff": max(diffs),
        "max_rel_diff": max(rel),
        "criterion": "bf16 noise: every step's loss within 1% (relative) of the eager loop's",
        "within_bf16_noise": max(rel) <= 0.01,
    }


def ensure_ray(max_workers: int) -> tuple[dict[str, float], bool]:
    """Import Ray Train and start the local Ray exactly as ``fit_with_ray`` would.

    Returns:
        ``({"ray_import_s", "ray_init_s"}, started)``: timings, and whether Ray was started here.
    """
    bench_dir = Path(__file__).resolve().parent
    # Ray hands the driver script's folder to its workers when it is on sys.path: drop it.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != bench_dir]
    start = time.perf_counter()
    import ray
    import ray.train.torch  # what fit_with_ray imports first

    from pipelines.on_ray.startup import ensure_ray

    imported = time.perf_counter()
    already = ray.is_initialized()
    ensure_ray(min_cpus=max_workers)
    timings = {
        "ray_import_s": imported - start,
        "ray_init_s": 0.0 if already else time.perf_counter() - imported,
    }
    return timings, not already


def run_ray(
    shards: list[Path],
    vocab: Vocabulary,
    preset: str,
    cfg: LMTrainConfig,
    max_positions: int,
    workers: int,
    use_gpu: bool,
    storage_root: Path,
    warmup: int,
    startup: dict[str, float] | None,
    checkpoint: bool = True,
) -> dict[str, Any]:
    """``fit_with_ray`` on a fresh storage folder; ``startup``: Ray start-up to add to the wall.

    ``checkpoint=False`` skips the final checkpoint (``radphi2``: 34 GB of weights and AdamW
    state, written twice while Ray uploads it).
    """
    from pipelines.on_ray.lm_training import fit_with_ray

    config = {
        "shard_paths": [str(p) for p in shards],
        "vocab": dataclasses.asdict(vocab),
        "train": cfg.to_dict(),
        "lm_preset": preset,
        "max_positions": max_positions,
        "split": "train",
        "shuffle": True,
        "checkpoint": checkpoint,
    }
    run_name = f"bench-{preset}-{workers}w-{uuid.uuid4().hex[:8]}"
    storage = storage_root / run_name
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with CpuSampler() as cpu:
        out = fit_with_ray(config, workers, use_gpu, str(storage), run_name, max_failures=0)
    fit_call_s = time.perf_counter() - start
    summary = out["worker_summary"]
    history = summary["history"]
    startup_s = sum((startup or {}).values())
    row = {
        "mode": "ray",
        "workers": int(summary["world_size"]),
        "stage": cfg.stage,
        "compile": cfg.compile,
        "batch_size": cfg.batch_size,
        "checkpoint_written": checkpoint,
        "load_1min_at_start": load,
        "includes_ray_startup": startup is not None,
        **(startup or {}),
        "fit_call_s": fit_call_s,
        "trainer_fit_s": out["wall_s"],
        "call_s": summary["seconds"],
        "call_tokens_per_s": summary["tokens_per_second"],
        "call_steps_per_s": summary["steps_per_second"],
        "call_gap_s": summary["seconds"] - sum(r["window_s"] for r in history),
        "wall_s": startup_s + fit_call_s,
        "checkpoint": str(out["checkpoint_path"]) if out["checkpoint_path"] else None,
        "cpu": cpu.report(),
        **steady_state(history, warmup),
    }
    # fixed cost outside the worker's train_lm call: worker group start, model build, teardown
    row["outside_train_lm_s"] = fit_call_s - summary["seconds"]
    shutil.rmtree(storage, ignore_errors=True)
    return row


# ----------------------------------------------------------------------------------------------
# Report


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    """CPU/GPU, load, threads and versions."""
    info = common_machine_info(
        PACKAGES,
        load_key="load_average_before",
        extra={
            "torch_num_threads_requested": threads,
            "torch_num_threads_default": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
        },
    )
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    return info


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    """Median of ``key`` over ``rows`` (nan when empty)."""
    values = [r[key] for r in rows]
    return statistics.median(values) if values else float("nan")


def print_table(rows: list[dict[str, Any]], bare_tps: float, flops: float, peak: float) -> None:
    """One line per run."""
    header = (
        f"{'mode':<5} {'workers':>7} {'tokens/s':>9} {'steps/s':>8} {'ratio':>6} {'wall s':>7} "
        f"{'call tok/s':>10} {'setup s':>8} {'GFLOP/s':>8} {'MFU':>6} {'load':>5}"
    )
    print(header)
    for r in rows:
        achieved = r["tokens_per_s"] * flops
        mfu = f"{achieved / peak:>6.1%}" if peak else f"{'n/a':>6}"
        setup = r.get("setup_s", r.get("outside_train_lm_s", 0.0))
        wall = f"{r['wall_s']:>6.1f}" + ("*" if r.get("includes_ray_startup") else " ")
        print(
            f"{r['mode']:<5} {r['workers']:>7} {r['tokens_per_s']:>9.1f} {r['steps_per_s']:>8.3f} "
            f"{r['tokens_per_s'] / bare_tps:>6.3f} {wall:>7} {r['call_tokens_per_s']:>10.1f} "
            f"{setup:>8.2f} {achieved / 1e9:>8.2f} {mfu} {r['load_1min_at_start']:>5.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=None, choices=sorted(PRESET_DATA))
    parser.add_argument("--steps", type=int, default=40, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="extra leading steps, not measured")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--codes", type=int, default=None, help="image codes per sequence")
    parser.add_argument("--text-tokens", type=int, default=None, help="report tokens per row")
    parser.add_argument("--text-vocab", type=int, default=None)
    parser.add_argument("--codebook", type=int, default=None)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="alternating bare / ray-1 pairs")
    parser.add_argument("--ddp-workers", type=int, default=2, help="0 skips the DDP run")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU peak override")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--stage", type=int, default=1, choices=[1, 2])
    parser.add_argument(
        "--compile", action="store_true", help="LMTrainConfig.compile (regional torch.compile)"
    )
    parser.add_argument(
        "--log-every",
        type=int,
        default=None,
        help="train_lm log window (a device sync each); default 1 on CPU, 5 on CUDA",
    )
    parser.add_argument(
        "--parity-steps",
        type=int,
        default=0,
        help="first run N steps eager (compile off) and with the tested settings, same seed "
        "and data, and report the per-step loss differences",
    )
    parser.add_argument(
        "--extra-batch-sizes",
        default="",
        help="comma-separated batch sizes of extra bare runs after the main ones (reported "
        "apart, with MFU and peak memory; an out-of-memory run is recorded, not fatal)",
    )
    parser.add_argument(
        "--parity-batch-size",
        type=int,
        default=None,
        help="batch of the parity runs (default --batch-size; the eager loop needs more memory)",
    )
    parser.add_argument(
        "--no-ray-checkpoint",
        action="store_true",
        help="Ray runs write no final checkpoint (radphi2: 34 GB of weights + AdamW state)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    preset = args.preset or ("radphi2" if cuda else "small")
    defaults = PRESET_DATA[preset]
    codes = args.codes or defaults["codes"]
    text_tokens = args.text_tokens if args.text_tokens is not None else defaults["text_tokens"]
    batch_size = args.batch_size or (defaults["gpu_batch"] if cuda else 8)
    vocab = make_vocab(
        args.text_vocab or defaults["text_vocab"], args.codebook or defaults["codebook"]
    )
    seq_len = codes + text_tokens + 4
    total_steps = args.warmup + args.steps
    log_every = args.log_every or (5 if cuda else 1)
    if args.warmup % log_every or args.steps % log_every:
        parser.error(f"--warmup and --steps must be multiples of the log window {log_every}")
    cfg = LMTrainConfig(
        stage=args.stage,
        steps=total_steps,
        batch_size=batch_size,
        warmup_steps=min(10, total_steps),
        log_every=log_every,
        compile=args.compile,
        checkpoint_every=total_steps,  # Ray runs: one checkpoint, at the end (bare: none)
        max_text_tokens=text_tokens,
        dtype="bfloat16" if cuda else "float32",
        num_threads=args.threads,
        seed=args.seed,
    )
    lm_cfg = lm_config_from_preset(preset)
    info = machine_info(device, args.threads)
    torch.set_num_threads(args.threads)
    peak, peak_source = gpu_peak_flops(device, args.peak_tflops)
    with torch.device("meta"):
        flop_model = build_model(lm_cfg, vocab, seq_len)
    flops = flops_per_token(flop_model, lm_cfg, seq_len)
    del flop_model
    print(
        f"preset {preset} on {device.type}: {flops['params_total'] / 1e6:.2f}M params "
        f"({flops['params_matmul'] / 1e6:.2f}M in matmuls), vocab {vocab.size}, seq {seq_len} "
        f"({codes} codes + {text_tokens} report + 4), batch {batch_size}, {args.warmup}+"
        f"{args.steps} steps, {args.threads} thread(s), "
        f"{flops['flops_per_token'] / 1e6:.1f} MFLOP/token; load {info['load_average_before']}"
    )

    tmp = Path(tempfile.mkdtemp(prefix="chexmix-bench-train-"))
    rows: list[dict[str, Any]] = []
    ray_started_here = False
    try:
        shards = write_token_shards(tmp / "tokens", args.rows, codes, text_tokens, vocab, args.seed)
        common = {"shards": shards, "vocab": vocab, "preset": preset, "cfg": cfg}
        common |= {"max_positions": seq_len, "warmup": args.warmup}
        parity: dict[str, Any] | None = None
        if args.parity_steps:
            parity = run_parity(
                common, device, args.parity_steps, args.parity_batch_size or batch_size
            )
            print(
                f"parity over {args.parity_steps} steps: max |loss diff| "
                f"{parity['max_abs_diff']:.4f} (max relative {parity['max_rel_diff']:.2%}); "
                f"eager {parity['reference']['tokens_per_s']:.0f} tok/s, peak "
                f"{parity['reference'].get('peak_allocated_gib', 0):.1f} GiB",
                flush=True,
            )
        startup: dict[str, float] | None = None
        for repeat in range(args.repeats):
            rows.append(run_bare(**common, device=device))
            print(f"[{repeat}] bare    {rows[-1]['tokens_per_s']:9.1f} tok/s", flush=True)
            if args.skip_ray:
                continue
            first_ray = startup is None
            if first_ray:
                startup, ray_started_here = ensure_ray(max(1, args.ddp_workers))
            rows.append(
                run_ray(
                    **common,
                    workers=1,
                    use_gpu=cuda,
                    storage_root=tmp,
                    startup=startup if first_ray else None,
                    checkpoint=not args.no_ray_checkpoint,
                )
            )
            print(f"[{repeat}] ray 1w  {rows[-1]['tokens_per_s']:9.1f} tok/s", flush=True)
        extra_rows = []
        for extra in [int(b) for b in args.extra_batch_sizes.split(",") if b.strip()]:
            extra_cfg = dataclasses.replace(cfg, batch_size=extra)
            try:
                row = run_bare(**{**common, "cfg": extra_cfg}, device=device)
            except torch.cuda.OutOfMemoryError as error:
                gc.collect()
                torch.cuda.empty_cache()
                extra_rows.append({"batch_size": extra, "error": f"out of memory: {error}"[:300]})
                print(f"bare batch {extra}: out of memory", flush=True)
                continue
            row["mfu"] = row["tokens_per_s"] * flops["flops_per_token"] / peak if peak else None
            extra_rows.append({k: v for k, v in row.items() if k != "cpu"})
            print(
                f"bare batch {extra}: {row['tokens_per_s']:9.1f} tok/s"
                + (f", MFU {row['mfu']:.1%}" if peak else "")
                + f", peak {row.get('peak_allocated_gib', 0):.1f} GiB",
                flush=True,
            )
        ddp_note = None
        if not args.skip_ray and args.ddp_workers > 1:
            if cuda and torch.cuda.device_count() < args.ddp_workers:
                ddp_note = f"skipped: {torch.cuda.device_count()} GPU(s) < {args.ddp_workers}"
            else:
                rows.append(
                    run_ray(
                        **common,
                        workers=args.ddp_workers,
                        use_gpu=cuda,
                        storage_root=tmp,
                        startup=None,
                        checkpoint=not args.no_ray_checkpoint,
                    )
                )
                print(f"ray {args.ddp_workers}w  {rows[-1]['tokens_per_s']:9.1f} tok/s total")
    finally:
        if ray_started_here:
            import ray

            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    info["load_average_after"] = os.getloadavg()

    bare = [r for r in rows if r["mode"] == "bare"]
    ray1 = [r for r in rows if r["mode"] == "ray" and r["workers"] == 1]
    ddp = [r for r in rows if r["mode"] == "ray" and r["workers"] > 1]
    bare_tps = median_of(bare, "tokens_per_s")
    ray1_tps = median_of(ray1, "tokens_per_s")
    ratio = ray1_tps / bare_tps if ray1 else None
    target_ratio = TARGET_RATIO_GPU if cuda else TARGET_RATIO
    fpt = flops["flops_per_token"]
    summary: dict[str, Any] = {
        "bare_tokens_per_s_median": bare_tps,
        "ray1_tokens_per_s_median": ray1_tps if ray1 else None,
        "ray1_over_bare": ratio,
        "target_ratio": target_ratio,
        "target_met": None if ratio is None else ratio >= target_ratio,
        "ray1_over_bare_best_of": (
            max(r["tokens_per_s"] for r in ray1) / max(r["tokens_per_s"] for r in bare)
            if ray1
            else None
        ),
        "ray1_call_over_bare_call": (
            median_of(ray1, "call_tokens_per_s") / median_of(bare, "call_tokens_per_s")
            if ray1
            else None
        ),
        "ddp_tokens_per_s_total": ddp[0]["tokens_per_s"] if ddp else None,
        "ddp_scaling_efficiency": (
            ddp[0]["tokens_per_s"] / (ddp[0]["workers"] * bare_tps) if ddp else None
        ),
        "ddp_note": ddp_note,
        "loss_parity_bare_vs_ray1": (
            max(abs(r["loss_final"] - bare[0]["loss_final"]) for r in ray1) if ray1 else None
        ),
        "achieved_flops_per_s_bare": bare_tps * fpt,
        "peak_flops_per_s": peak or None,
        "peak_source": peak_source,
        "mfu_bare": bare_tps * fpt / peak if peak else None,
        "mfu_ray1": ray1_tps * fpt / peak if peak and ray1 else None,
        "peak_allocated_gib_bare": max((r.get("peak_allocated_gib", 0.0) for r in bare), default=0)
        or None,
        "data_wait_fraction_bare": median_of(bare, "data_wait_fraction"),
        "parity_max_abs_loss_diff": parity["max_abs_diff"] if parity else None,
        "parity_within_bf16_noise": parity["within_bf16_noise"] if parity else None,
    }

    print()
    print_table(rows, bare_tps, fpt, peak)
    print("tokens/s, steps/s: loop after warm-up (train_lm step_s); ratio vs median bare;")
    print("wall: bare = build + train_lm; ray = fit_with_ray call (* + Ray import/init);")
    print("setup: bare model build / ray time outside the worker's train_lm call")
    if ray1:
        verdict = "MET" if summary["target_met"] else "NOT MET"
        print(
            f"ray 1 worker / bare (median loop tokens/s): {ratio:.3f} -> target >= "
            f"{target_ratio} {verdict}; best-of-{len(ray1)} ratio "
            f"{summary['ray1_over_bare_best_of']:.3f}; whole-call ratio "
            f"{summary['ray1_call_over_bare_call']:.3f}; final-loss |diff| "
            f"{summary['loss_parity_bare_vs_ray1']:.2e}"
        )
        first = ray1[0]
        print(
            f"ray start-up: import {first.get('ray_import_s', 0):.1f}s + init "
            f"{first.get('ray_init_s', 0):.1f}s; per run outside train_lm "
            f"{median_of(ray1, 'outside_train_lm_s'):.1f}s; in-call gap (ckpt+report) "
            f"{median_of(ray1, 'call_gap_s'):.2f}s vs bare {median_of(bare, 'call_gap_s'):.2f}s"
        )
    for r in [*bare[:1], *ray1[:2], *ddp]:
        c = r["cpu"]
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(c["by_process_cpu_s"].items())[:6])
        print(
            f"CPU-s during {r['mode']} {r['workers']}w ({c['wall_s']:.1f}s wall, machine busy "
            f"{c['machine_busy_cores']:.2f} cores): {top}; other jobs {c['other_jobs_cpu_s']:.1f}"
        )
    if ddp:
        print(
            f"DDP {ddp[0]['workers']} workers: {summary['ddp_tokens_per_s_total']:.1f} tok/s total,"
            f" scaling efficiency {summary['ddp_scaling_efficiency']:.2f} (same cores)"
        )
    elif ddp_note:
        print(f"DDP: {ddp_note}")
    achieved = summary["achieved_flops_per_s_bare"]
    if peak:
        print(
            f"MFU bare {summary['mfu_bare']:.1%}"
            + (f", ray 1 worker {summary['mfu_ray1']:.1%}" if ray1 else "")
            + f" ({achieved / 1e12:.1f} TFLOP/s of "
            f"{peak / 1e12:.0f}, {peak_source})"
        )
    elif device.type == "cpu":
        print(f"achieved {achieved / 1e9:.2f} GFLOP/s; MFU: n/a on CPU (needs a GPU peak)")
    else:
        print(f"achieved {achieved / 1e12:.1f} TFLOP/s; MFU: n/a ({peak_source})")
    load = info["load_average_before"], info["load_average_after"]
    print(f"load average before {load[0][0]:.2f}, after {load[1][0]:.2f} (1 min)")

    payload = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "args": {k: repo_relative(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "resolved": {
            "preset": preset,
            "device": device.type,
            "codes": codes,
            "text_tokens": text_tokens,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "vocab": dataclasses.asdict(vocab),
            "vocab_size": vocab.size,
            "lm_config": lm_cfg.to_dict(),
            "train_config": cfg.to_dict(),
        },
        "machine": info,
        "method": {
            "loop": "tokens/s = sum(tokens) / sum(step_s) over train_lm history rows after "
            "--warmup steps (step_s = batch fetch + forward/backward/optimizer step)",
            "call": "train_lm's own tokens_per_second (warm-up steps and, for Ray, the final "
            "checkpoint + ray.train.report included)",
            "wall": "bare: model build + train_lm; ray: fit_with_ray call, the first one plus "
            "Ray import and ray.init",
            "flops": "6 * params_matmul + 12 * n_layers * hidden * seq_len per token",
        },
        "flops": flops,
        "summary": summary,
        "runs": rows,
        "extra_batch_sizes": extra_rows,
        "parity": parity,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    date = dt.date.today().isoformat()
    variant = f"s{cfg.stage}{'-compile' if cfg.compile else ''}-b{batch_size}"
    out_path = args.out / f"train-{preset}-{device.type}-{variant}-{date}.json"
    out_path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
