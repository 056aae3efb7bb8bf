"""Ray Train wrapper of the LM training loop (the only module that imports ``ray.train``).

``fit_with_ray`` runs ``models.lm_train.train_lm`` on ``num_workers`` Ray Train workers
(``TorchTrainer``, Ray Train V2). Each worker:

1. builds the model (a preset, a stage-1 checkpoint to continue from, or local pretrained Phi
   weights) with the same seed on every rank;
2. wraps it with ``ray.train.torch.prepare_model``: DDP by default. FSDP
   (``parallel_strategy="fsdp"``) is the path for ``radphi2`` on GPUs: the installed Ray
   supports it through ``prepare_model(parallel_strategy="fsdp")`` (GPU-only: it raises
   without CUDA), and ``train_lm`` saves/loads full state dicts through
   ``torch.distributed.checkpoint.state_dict``, which gathers FSDP shards; this path is not
   exercised by the CPU test suite;
3. reads ITS OWN part of the token shards (``TokenShardBatches`` with the rank and world size
   of ``ray.train.get_context()``: row groups assigned round-robin by rank);
4. runs ``train_lm``; at every checkpoint rank 0 reports
   ``ray.train.report(metrics, checkpoint=Checkpoint.from_directory(step_dir))`` and every
   other rank reports metrics without a checkpoint, so all ranks call ``report`` (a barrier)
   the same number of times;
5. when Ray restarts the worker group after a failure (``FailureConfig(max_failures)``),
   resumes from ``ray.train.get_checkpoint()``: weights, optimizer, scheduler, step, every
   rank's data position and RNG states;
6. at the end, gathers every rank's Ray node id (``worker_node_ids`` in the summary), so a
   run shows where its workers ran. ``placement_strategy`` (``ScalingConfig``) decides that:
   ``PACK`` (default) fills one node first, ``SPREAD`` prefers distinct nodes,
   ``STRICT_SPREAD`` requires one node per worker.

Reruns with the same ``(storage_path, run_name)`` silently RESUME the earlier run (Ray Train
V2 behaviour): use a fresh run name (or storage path) for a fresh run.

``train_loop_config`` keys:

- ``shard_paths`` (list of str) or ``tokens_dir`` (str, a shard set with ``_manifest.json``);
- ``vocab`` (dict, ``dataclasses.asdict(Vocabulary)``) or ``vocab_path`` (str);
- ``train`` (dict): ``LMTrainConfig`` fields;
- ``lm_preset`` (str, default ``"small"``) and ``lm_overrides`` (dict of ``LMConfig`` fields);
- ``max_positions`` (int, default codes per image + ``max_text_tokens`` + 4);
- ``split`` (default ``"train"``), ``shuffle`` (default True);
- ``init_checkpoint`` (str, optional): start from the weights of a ``train_lm`` checkpoint
  (stage 2 after stage 1); ``pretrained_path`` (str, optional): start from local Phi weights
  (``load_pretrained``);
- ``parallel_strategy``: ``"ddp"`` (default), ``"fsdp"`` (GPU; wraps each ``PhiDecoderLayer``,
  ``use_orig_params=True``) or None; ``parallel_strategy_kwargs`` (dict) are passed on;
- ``checkpoint`` (bool, default True): False writes no checkpoint at all (benchmarks of
  ``radphi2``, whose weights + AdamW state are 34 GB); the result then has no checkpoint;
- ``fault_injection`` (dict, drills and tests only): ``{"rank", "step", "marker"}``: the
  worker of that rank raises before step ``step`` unless the ``marker`` file exists (it is
  created first), so the failure fires once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr.progress import ProgressLog, tailing
from models.vocabulary import Vocabulary

if TYPE_CHECKING:  # torch and transformers load only where training happens
    from models.lm_train import LMTrainConfig

__all__ = ["fit_with_ray", "resolve_shard_paths", "train_loop_per_worker"]

logger = logging.getLogger(__name__)

PARALLEL_STRATEGIES = ("ddp", "fsdp", None)
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def resolve_shard_paths(config: dict[str, Any]) -> list[str]:
    """Shard paths of a ``train_loop_config`` (``shard_paths`` or ``tokens_dir``)."""
    if config.get("shard_paths"):
        return [str(p) for p in config["shard_paths"]]
    if config.get("tokens_dir"):
        from models.lm_data import shard_paths_from_manifest

        return [str(p) for p in shard_paths_from_manifest(config["tokens_dir"])]
    raise ValueError("train_loop_config needs 'shard_paths' or 'tokens_dir'")


def _vocab(config: dict[str, Any]) -> Vocabulary:
    if config.get("vocab") is not None:
        return Vocabulary(**config["vocab"])
    if config.get("vocab_path"):
        return Vocabulary.load(Path(config["vocab_path"]))
    raise ValueError("train_loop_config needs 'vocab' or 'vocab_path'")


def _codes_per_image(shard_path: str) -> int:
    import pyarrow.parquet as pq

    return int(pq.read_schema(shard_path).field("image_codes").type.list_size)


def _build_model(
    config: dict[str, Any], vocab: Vocabulary, cfg: LMTrainConfig, device: Any = None
) -> Any:
    """Build the starting model (identical on every rank).

    A preset model is initialised directly on ``device`` (a GPU initialises ``radphi2``'s 2.8B
    parameters in a second, the CPU in about a minute); the seeded weights then depend on the
    device type, not on the rank. Checkpoint and pretrained weights load on the CPU.
    """
    import torch

    from models.early_fusion import build_model, lm_config_from_preset, load_pretrained
    from models.lm_train import load_lm_checkpoint

    torch.manual_seed(cfg.seed)
    if config.get("init_checkpoint"):
        model, info = load_lm_checkpoint(config["init_checkpoint"])
        if info["vocab"] != vocab:
            raise ValueError(f"init_checkpoint {info['path']} uses another vocabulary")
        model.train()
        return model
    if config.get("pretrained_path"):
        model, report = load_pretrained(config["pretrained_path"], vocab)
        logger.info("pretrained weights: %s", report.summary())
        return model
    lm_cfg = lm_config_from_preset(
        config.get("lm_preset", "small"), **config.get("lm_overrides", {})
    )
    max_positions = config.get("max_positions") or (
        _codes_per_image(resolve_shard_paths(config)[0]) + cfg.max_text_tokens + 4
    )
    with torch.device(device if device is not None else "cpu"):
        return build_model(lm_cfg, vocab, int(max_positions))


def _strategy_kwargs(strategy: str | None, config: dict[str, Any]) -> dict[str, Any] | None:
    """``prepare_model`` kwargs: FSDP shards per decoder layer and keeps parameter names."""
    if strategy != "fsdp":
        return config.get("parallel_strategy_kwargs")
    import functools

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers.models.phi.modeling_phi import PhiDecoderLayer

    return {
        "auto_wrap_policy": functools.partial(
            transformer_auto_wrap_policy, transformer_layer_cls={PhiDecoderLayer}
        ),
        "use_orig_params": True,
        **config.get("parallel_strategy_kwargs", {}),
    }


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train per-worker function (see the module docstring for ``config``).

    Returns:
        This worker's summary (Ray keeps rank 0's as ``Result.return_value``): ``steps``,
        ``start_step``, ``seconds``, ``steps_per_second``, ``tokens_per_second``,
        ``last_metrics``, ``world_size``, ``node_id`` (this worker's Ray node) and
        ``worker_node_ids`` (every rank's Ray node, in rank order).
    """
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from models.early_fusion import lm_config_from_preset
    from models.lm_data import TokenShardBatches
    from models.lm_train import LMTrainConfig, train_lm

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    vocab = _vocab(config)
    cfg = LMTrainConfig.from_dict(config["train"])
    model = _build_model(config, vocab, cfg, ray.train.torch.get_device())
    strategy = config.get("parallel_strategy", "ddp")
    model = ray.train.torch.prepare_model(
        model,
        parallel_strategy=strategy,
        parallel_strategy_kwargs=_strategy_kwargs(strategy, config),
    )
    data = TokenShardBatches(
        resolve_shard_paths(config),
        vocab,
        batch_size=cfg.batch_size,
        max_text_tokens=cfg.max_text_tokens,
        split=config.get("split", "train"),
        worker_rank=rank,
        num_workers=world,
        shuffle=config.get("shuffle", True),
        seed=cfg.seed,
    )
    lm_meta = None
    if not config.get("init_checkpoint") and not config.get("pretrained_path"):
        preset = lm_config_from_preset(
            config.get("lm_preset", "small"), **config.get("lm_overrides", {})
        )
        lm_meta = preset.to_dict()

    def on_checkpoint(path: Path, step: int) -> None:
        if rank == 0:
            meta = json.loads((path / "meta.json").read_text())
            metrics = {**meta.get("metrics", {}), "step": step}
            ray.train.report(
                metrics,
                checkpoint=Checkpoint.from_directory(str(path)),
                checkpoint_dir_name=path.name,
                delete_local_checkpoint_after_upload=True,
            )
        else:
            ray.train.report({"step": step}, checkpoint=None)

    progress = ProgressLog(config["progress_path"]) if config.get("progress_path") else None

    def log(step: int, metrics: dict[str, float]) -> None:
        if rank == 0 and progress is not None:
            progress.append({"step": step, "total": cfg.steps, **metrics})
        if rank == 0:
            logger.info(
                "step %d/%d loss %.4f image %.4f text %.4f lr %.2e %.0f tok/s",
                step,
                cfg.steps,
                metrics["loss"],
                metrics["image_loss"],
                metrics["text_loss"],
                metrics["lr"],
                metrics["tokens_per_s"],
            )

    fault = config.get("fault_injection")

    def should_stop(step: int) -> bool:
        if fault and rank == int(fault["rank"]) and step == int(fault["step"]):
            marker = Path(fault["marker"])
            if not marker.exists():
                marker.write_text(f"rank {rank} failed before step {step}\n")
                if fault.get("mode", "raise") == "sigkill":  # a hard crash: no Python cleanup
                    import signal

                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected failure on rank {rank} before step {step}")
        return False

    local_dir = Path(tempfile.mkdtemp(prefix=f"chexmix-lm-rank{rank}-"))
    try:
        with contextlib.ExitStack() as stack:
            resume_from = None
            checkpoint = ray.train.get_checkpoint()
            if checkpoint is not None:
                resume_from = Path(stack.enter_context(checkpoint.as_directory()))
            result = train_lm(
                model,
                data,
                cfg,
                checkpoint_dir=local_dir if config.get("checkpoint", True) else None,
                resume_from=resume_from,
                log=log,
                on_checkpoint=on_checkpoint,
                should_stop=should_stop,
                lm_config=lm_meta,
            )
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)
    node_ids = _gather_node_ids(world)
    return {
        "steps": result.steps,
        "start_step": result.start_step,
        "seconds": result.seconds,
        "steps_per_second": result.steps_per_second,
        "tokens_per_second": result.tokens_per_second,
        "last_metrics": result.last_metrics,
        "world_size": world,
        "node_id": node_ids[rank],
        "worker_node_ids": node_ids,
        "history": result.history,  # rank 0's logged rows, for MLflow and the loss curve
        "device": str(next(model.parameters()).device),
    }


def _gather_node_ids(world_size: int) -> list[str]:
    """Every rank's Ray node id, in rank order (all ranks call it: a collective)."""
    import ray
    import torch.distributed as dist

    node_id = str(ray.get_runtime_context().get_node_id())
    if world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [node_id]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, node_id)
    return [str(n) for n in gathered]


def fit_with_ray(
    train_loop_config: dict[str, Any],
    num_workers: int,
    use_gpu: bool,
    storage_path: str,
    run_name: str,
    max_failures: int,
    checkpoints_to_keep: int | None = None,
    placement_strategy: str = "PACK",
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the LM with Ray Train (DDP over ``num_workers`` workers); resume on failures.

    Starts a quiet local Ray when none is running (``$RAY_ADDRESS`` connects to a cluster),
    through ``pipelines.on_ray.startup.ensure_ray``.

    Args:
        train_loop_config: Per-worker config (see the module docstring).
        num_workers: Training workers (one process each; one GPU each with ``use_gpu``).
        use_gpu: Train on GPUs.
        storage_path: Ray Train storage (local folder or URI); checkpoints land in
            ``storage_path/run_name/step_NNNNNN``.
        run_name: Run name. Reusing a ``(storage_path, run_name)`` resumes that run.
        max_failures: Worker-group restarts allowed (each resumes from the latest checkpoint).
        checkpoints_to_keep: Keep only the newest N checkpoints in storage (None: all).
        placement_strategy: How the workers' placement group is laid over the Ray nodes:
            ``PACK`` (as few nodes as possible), ``SPREAD`` (distinct nodes when possible),
            ``STRICT_PACK`` (one node) or ``STRICT_SPREAD`` (one node per worker; the run
            waits until the cluster has that many nodes with room).
        on_progress: Called in a driver thread with rank 0's logged rows (``step``, ``total``,
            ``loss``, ``tokens_per_s``, ...) while the fit runs: the worker appends them to
            ``storage_path/<run_name>.progress.jsonl`` (a local ``storage_path`` only, seen by
            the driver when rank 0 shares its file system, as multi-node checkpoints need).

    Returns:
        ``metrics`` (rank 0's metrics of the latest checkpoint), ``checkpoint_path`` (the final
        complete checkpoint), ``run_path``, ``steps`` (optimizer steps done in total),
        ``start_step`` (step the last attempt resumed from; > 0 after a restart),
        ``worker_summary`` (rank 0's ``train_loop_per_worker`` return value),
        ``worker_node_ids`` (the Ray node of each rank), ``wall_s``.

    Raises:
        ValueError: Invalid config.
        ray.train.TrainingFailedError: The run failed more than ``max_failures`` times.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from models.lm_train import LMTrainConfig
    from pipelines.on_ray.startup import ensure_ray

    LMTrainConfig.from_dict(train_loop_config["train"])  # fail fast, in the driver
    _vocab(train_loop_config)
    resolve_shard_paths(train_loop_config)
    if train_loop_config.get("parallel_strategy", "ddp") not in PARALLEL_STRATEGIES:
        raise ValueError(f"parallel_strategy must be one of {PARALLEL_STRATEGIES}")
    if train_loop_config.get("parallel_strategy") == "fsdp" and not use_gpu:
        raise ValueError("parallel_strategy='fsdp' needs use_gpu=True (Ray's FSDP is GPU-only)")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if placement_strategy not in PLACEMENT_STRATEGIES:
        raise ValueError(
            f"placement_strategy must be one of {PLACEMENT_STRATEGIES}, got {placement_strategy!r}"
        )
    progress_path = None
    if on_progress is not None and "://" not in str(storage_path):
        progress_path = Path(storage_path) / f"{run_name}.progress.jsonl"
        progress_path.parent.mkdir(parents=True, exist_ok=True)
        progress_path.unlink(missing_ok=True)
        train_loop_config = {**train_loop_config, "progress_path": str(progress_path)}
    ensure_ray(min_cpus=num_workers)  # no-op when a step already started Ray
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=train_loop_config,
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, placement_strategy=placement_strategy
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=checkpoints_to_keep),
        ),
    )
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if progress_path is not None and on_progress is not None:
            stack.enter_context(tailing(progress_path, on_progress))
        result = trainer.fit()
    wall = time.perf_counter() - start
    if result.error is not None:
        raise result.error
    summary = result.return_value or {}
    return {
        "metrics": dict(result.metrics or {}),
        "checkpoint_path": result.checkpoint.path if result.checkpoint is not None else None,
        "run_path": result.path,
        "steps": summary.get("steps"),
        "start_step": summary.get("start_step"),
        "worker_summary": summary,
        "worker_node_ids": list(summary.get("worker_node_ids", [])),
        "wall_s": wall,
    }
