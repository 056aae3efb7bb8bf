"""Distributed training of the VQ image tokenizer with Ray Train (DDP).

The loop is ``models.vq_train.train_vq``, unchanged; Ray Train only starts the worker group,
wraps the model in DDP and collects the result. Each worker reads the TRAIN images whose id
hashes to its rank. Codebook statistics stay in sync across workers: the tokenizer is built
inside the worker after the process group exists, so vector-quantize-pytorch turns on
``sync_codebook`` (k-means initialisation and EMA updates are all-reduced), and DDP averages the
gradients of the encoder/decoder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxr.progress import ProgressLog, tailing


def _worker_loop(config: dict[str, Any]) -> None:
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch

    from cxr.image_batches import train_batches
    from models.vq_tokenizer import VQConfig, VQTokenizer, write_checkpoint_files
    from models.vq_train import VQTrainConfig, train_vq

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"])  # identical initial weights on every worker
    model = VQTokenizer(VQConfig.from_dict(config["vq_config"]))
    model = ray.train.torch.prepare_model(model)
    train_config = VQTrainConfig(**config["train_config"])
    batches = (
        torch.from_numpy(b)
        for b in train_batches(
            config["images_glob"],
            Path(config["splits_path"]),
            train_config.batch_size,
            config["seed"],
            rank=rank,
            world_size=world,
        )
    )
    val_images = np.load(config["val_images_path"])
    history: list[dict[str, Any]] = []
    progress = ProgressLog(config["progress_path"]) if config.get("progress_path") else None

    def log(step: int, metrics: dict) -> None:
        history.append(
            {
                "step": step,
                **{k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
            }
        )
        if rank == 0 and progress is not None:
            progress.append(history[-1])

    result = train_vq(model, batches, val_images, train_config, log=log)
    metrics = {
        f"val_{k}": float(v) for k, v in result.final_metrics.items() if isinstance(v, int | float)
    }
    metrics.update(world_size=world, steps=result.steps, steps_per_second=result.steps_per_second)
    inner = model.module if hasattr(model, "module") else model
    if world > 1:  # prove the EMA codebooks stayed identical across workers
        import torch.distributed as dist

        codebook = inner.codebook.detach().clone()
        reference = codebook.clone()
        dist.broadcast(reference, src=0)
        spread = (codebook - reference).abs().max()
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)
        metrics["codebook_max_abs_diff_across_workers"] = float(spread)
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint_files(inner.cpu(), tmp)  # private folder; the driver publishes
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)  # every rank reports the same number of times (barrier)


def fit_vq_with_ray(
    vq_config: dict[str, Any],
    train_config: dict[str, Any],
    images_glob: str,
    splits_path: Path,
    val_images: Any,
    out_dir: Path,
    num_workers: int,
    use_gpu: bool,
    seed: int,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the tokenizer on ``num_workers`` Ray workers; copy the checkpoint to ``out_dir``.

    ``on_progress`` is called in a driver thread with each row rank 0 logs (``step`` and the
    metrics) while the fit runs.

    Returns:
        The final metrics reported by rank 0.
    """
    import shutil

    import numpy as np
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cxr.storage import atomic_dir
    from pipelines.on_ray.startup import ensure_ray

    ensure_ray(min_cpus=num_workers)  # no-op when the step already started Ray
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    with tempfile.TemporaryDirectory(prefix="chexmix-vq-ray-") as tmp:
        val_path = Path(tmp) / "val.npy"
        np.save(val_path, np.asarray(val_images))
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={
                "vq_config": vq_config,
                "train_config": train_config,
                "images_glob": images_glob,
                "splits_path": str(splits_path),
                "val_images_path": str(val_path),
                "seed": seed,
                "progress_path": str(Path(tmp) / "progress.jsonl") if on_progress else None,
            },
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            # a fresh run directory each time: reusing a name silently resumes an old run
            run_config=RunConfig(name="vq", storage_path=str(Path(tmp) / "ray")),
        )
        with contextlib.ExitStack() as stack:
            if on_progress is not None:
                stack.enter_context(tailing(Path(tmp) / "progress.jsonl", on_progress))
            result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"Ray training returned no checkpoint (error: {result.error})")
        with (
            result.checkpoint.as_directory() as checkpoint_dir,
            atomic_dir(Path(out_dir)) as staging,
        ):
            shutil.copytree(checkpoint_dir, staging, dirs_exist_ok=True)
        return dict(result.metrics)
