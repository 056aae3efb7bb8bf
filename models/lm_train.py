"""Single-process training loop of the early-fusion LM (CheXmix stages 1 and 2).

``train_lm`` is a plain function of (model, data factory, config): no framework. A distributed
runner (``pipelines.on_ray.lm_training``) wraps the model in DDP/FSDP, gives every worker its own
data factory and calls the same function; the loop notices an initialised
``torch.distributed`` process group and then (a) gathers every rank's data position and RNG
states into rank 0's checkpoint, (b) averages logged metrics over ranks. Every rank must call
``train_lm`` with the same config, and checkpoints are written by rank 0 only.

Loss (``lm_loss``): causal next-token cross-entropy computed from the logits (position t
predicts token t + 1), split into targets that are image codes (``image_loss``) and all other
targets (``text_loss``: report tokens and the structural specials, among them the closing
``<|img|>`` that stops report generation). Padding is never a target. The optimised loss is
``(image_loss_weight * sum_image_ce + text_loss_weight * sum_text_ce) / num_targets``; with
both weights 1 it is the plain token-mean LM loss of CheXmix stage 1.

Stage 2: every batch's inputs are corrupted by ``apply_stage2_masking`` (a per-sample fraction
of image codes and of report tokens replaced by the mask id); attention stays causal and the
targets are the ORIGINAL next tokens. The masking generator of a step is seeded from
``(seed, rank, step)``, so masks are reproducible and need no state to resume.

Checkpoints (``checkpoint_dir/step_000500/``): ``model/`` (``config.json`` +
``model.safetensors``, loadable by ``PhiForCausalLM.from_pretrained``), ``training_state.pt``
(optimizer, scheduler, every rank's data position and torch / numpy / python (/ CUDA) RNG
states), ``vocab.json``, ``meta.json`` (step, configs, last metrics) and ``COMPLETE``. They are
written to a hidden temporary folder, ``COMPLETE`` last, and published by
``cxr.storage.atomic_dir`` (fsync, then one atomic swap), so a crash never leaves a folder that
``latest_complete_checkpoint`` would pick. Resuming restores everything:
an interrupted run ends with the same number of optimizer steps and, single-process on CPU,
bit-identical weights to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.storage import atomic_dir
from models.early_fusion import unwrap_model
from models.lm_data import IGNORE_INDEX, BatchFactory, DataPosition, apply_stage2_masking
from models.schedule import warmup_cosine
from models.train_config import LMTrainConfig
from models.vocabulary import Vocabulary

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "COMPLETE_MARKER",
    "LMTrainConfig",
    "LMTrainResult",
    "checkpoint_step",
    "evaluate_lm",
    "latest_complete_checkpoint",
    "list_complete_checkpoints",
    "lm_loss",
    "load_lm_checkpoint",
    "train_lm",
]

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
CHECKPOINT_FORMAT_VERSION = 1
STEP_DIR_PREFIX = "step_"
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


@dataclass
class LMTrainResult:
    """What ``train_lm`` returns.

    Attributes:
        steps: Optimizer steps completed in total (those before a resume included).
        start_step: Step the call started from (0 for a fresh run).
        seconds: Wall time of this call's steps (checkpointing included).
        steps_per_second: This call's step throughput.
        tokens_per_second: This call's non-padding input tokens per second (this rank).
        history: Logged rows (``step`` plus metrics).
        last_metrics: Metrics of the last step.
        checkpoints: Checkpoints written by this call (rank 0; empty elsewhere).
        final_checkpoint: The newest complete checkpoint after the call (rank 0), or None.
        data_position: This rank's data position after the last step.
        stopped_early: ``should_stop`` ended the run before ``steps``.
    """

    steps: int
    start_step: int
    seconds: float
    steps_per_second: float
    tokens_per_second: float
    history: list[dict[str, float]] = field(default_factory=list)
    last_metrics: dict[str, float] = field(default_factory=dict)
    checkpoints: list[Path] = field(default_factory=list)
    final_checkpoint: Path | None = None
    data_position: DataPosition = field(default_factory=DataPosition)
    stopped_early: bool = False


# ----------------------------------------------------------------------------------------------
# Loss


def lm_loss(
    logits: torch.Tensor,
    batch: dict[str, torch.Tensor],
    image_weight: float = 1.0,
    text_weight: float = 1.0,
    target_positions: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Shifted next-token cross-entropy, split into image-code and other targets.

    Every position is scored in one ``cross_entropy`` call and the two target sets are
    selected with masks, not by boolean indexing: the shapes never depend on the data, so
    nothing waits for the device and ``torch.compile`` sees one static graph.

    Args:
        logits: (B, L, V) model outputs on the (possibly masked) inputs.
        batch: ``collate`` output; uses ``labels`` (B, L) (original tokens, -100 on padding)
            and ``image_mask`` (B, L).
        image_weight: Weight of the image targets' cross-entropy sum.
        text_weight: Weight of the other targets' cross-entropy sum.
        target_positions: Optional bool (B, L): only targets at these positions count (stage 2
            ``loss_on="masked"`` passes the masked positions).

    Returns:
        ``loss`` (scalar, differentiable: weighted sum over targets / number of targets),
        ``image_loss`` and ``text_loss`` (detached means, 0 when there is no such target),
        ``image_tokens`` and ``text_tokens`` (target counts), ``image_ce_sum`` and
        ``text_ce_sum`` (detached sums), ``image_correct`` and ``text_correct`` (argmax hits).
        All are 0-d tensors on the logits' device.
    """
    device = logits.device
    labels = batch["labels"].to(device)
    image_mask = batch["image_mask"].to(device)
    if target_positions is not None:
        target_positions = target_positions.to(device)
    return _loss_terms(
        logits, labels, image_mask, target_positions, float(image_weight), float(text_weight)
    )


def _loss_terms(
    logits: torch.Tensor,
    labels: torch.Tensor,
    image_mask: torch.Tensor,
    target_positions: torch.Tensor | None,
    image_weight: float,
    text_weight: float,
) -> dict[str, torch.Tensor]:
    """``lm_loss`` on tensors already on the logits' device (the part that gets compiled)."""
    vocab_size = logits.shape[-1]
    # position t predicts token t + 1: shift the targets, not the (large) logits
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    is_image = F.pad(image_mask[:, 1:], (0, 1), value=False)
    valid = targets != IGNORE_INDEX
    if target_positions is not None:
        valid = valid & F.pad(target_positions[:, 1:], (0, 1), value=False)
    ce = F.cross_entropy(
        logits.reshape(-1, vocab_size).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    with torch.no_grad():
        hits = logits.argmax(dim=-1) == targets
    out: dict[str, torch.Tensor] = {}
    total = logits.new_zeros((), dtype=torch.float32)
    count_sum = logits.new_zeros((), dtype=torch.long)
    for name, sel, weight in (
        ("image", valid & is_image, image_weight),
        ("text", valid & ~is_image, text_weight),
    ):
        ce_sum = torch.where(sel, ce, 0.0).sum()
        count = sel.sum()
        total = total + weight * ce_sum
        count_sum = count_sum + count
        out[f"{name}_ce_sum"] = ce_sum.detach()
        out[f"{name}_tokens"] = count
        out[f"{name}_loss"] = ce_sum.detach() / count.clamp(min=1)
        out[f"{name}_correct"] = (hits & sel).sum()
    out["loss"] = total / count_sum.clamp(min=1)
    return out


# ----------------------------------------------------------------------------------------------
# Helpers: distributed context, RNG, schedule


def _dist_info() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather_objects(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def _mask_generator(seed: int, rank: int, step: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, rank, step, 2604]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _lr_lambda(cfg: LMTrainConfig) -> Callable[[int], float]:
    return warmup_cosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)


def _make_optimizer(model: nn.Module, cfg: LMTrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # by name, not ndim: FSDP (use_orig_params) exposes every parameter as a 1-D shard
        module = name.rsplit(".", 1)[0].lower()
        (no_decay if name.endswith("bias") or "norm" in module else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # On GPUs one fused kernel updates every tensor (the foreach default launches several per
    # group); the CPU keeps the foreach path, whose results the CPU tests pin down.
    fused = all(p.device.type == "cuda" for p in decay + no_decay) and bool(decay + no_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def compile_blocks(model: nn.Module) -> int:
    """Regional ``torch.compile``: compile every decoder block of ``model`` in place.

    All blocks share one class and one graph, so the first compiles and the others reuse it
    (seconds instead of the minutes a whole-model compile takes). ``Module.compile`` keeps
    the parameter names, so checkpoints and DDP/FSDP wrappers are unaffected; under FSDP the
    wrapped (inner) blocks are compiled.

    Returns:
        The number of blocks compiled.
    """
    from transformers.models.phi.modeling_phi import PhiDecoderLayer

    blocks = [m for m in model.modules() if isinstance(m, PhiDecoderLayer)]
    for block in blocks:
        block.compile()
    return len(blocks)


def right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row of ``attention_mask`` (B, L) is ones then zeros (``collate``).

    Then causal attention without the mask is exact for every real position (a token never
    attends to later positions, where the padding is), and SDPA can run its flash kernel
    instead of a masked one. Padded positions are never targets of the loss.
    """
    if attention_mask.shape[1] < 2:
        return True
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


class _Prefetcher:
    """Reads ``(batch, position)`` pairs of ``stream`` ahead in a thread, in pinned memory.

    Errors of the reading thread are raised by ``__next__``; ``close`` stops the thread.
    """

    _DONE = object()

    def __init__(self, stream: Iterator[Any], depth: int, pin: bool) -> None:
        import queue
        import threading

        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._pin = pin
        self._thread = threading.Thread(
            target=self._run, args=(stream,), name="lm-batch-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, stream: Iterator[Any]) -> None:
        try:
            for batch, position in stream:
                if self._pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                if not self._put((batch, position)):
                    return
            self._put(self._DONE)
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)

    def __iter__(self) -> _Prefetcher:
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is self._DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    target = DTYPES[dtype]
    if target is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=target)


@contextlib.contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Full (unsharded, CPU) model and optimizer state dicts keyed by parameter name.

    Collective under FSDP (every rank must call it); works for plain and DDP models too.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=options)


def _load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    model_state: dict[str, Any],
    optim_state: dict[str, Any] | None,
) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=True)
    if optimizer is None or optim_state is None:
        set_model_state_dict(model, model_state, options=options)
    else:
        set_state_dict(
            model,
            optimizer,
            model_state_dict=model_state,
            optim_state_dict=optim_state,
            options=options,
        )


# ----------------------------------------------------------------------------------------------
# Checkpoint files


def checkpoint_step(path: str | Path) -> int | None:
    """Step of a ``step_NNNNNN`` folder name, else None."""
    name = Path(path).name
    if not name.startswith(STEP_DIR_PREFIX):
        return None
    digits = name[len(STEP_DIR_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def list_complete_checkpoints(directory: str | Path) -> list[Path]:
    """Complete ``step_*`` checkpoints (``COMPLETE`` marker present), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        step = checkpoint_step(child)
        if step is not None and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            found.append((step, child))
    return [p for _, p in sorted(found)]


def latest_complete_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint under ``directory``; incomplete folders are ignored."""
    complete = list_complete_checkpoints(directory)
    return complete[-1] if complete else None


def _resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if (path / COMPLETE_MARKER).is_file():
        return path
    latest = latest_complete_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no complete checkpoint at or under {path}")
    return latest


def _write_checkpoint(
    directory: Path,
    step: int,
    core: nn.Module,
    model_state: dict[str, Any],
    training_state: dict[str, Any],
    vocab: Vocabulary,
    meta: dict[str, Any],
) -> Path:
    """Write ``directory/step_NNNNNN`` atomically (``atomic_dir``; ``COMPLETE`` written last)."""
    from safetensors.torch import save_file

    final = directory / f"{STEP_DIR_PREFIX}{step:06d}"
    if (final / COMPLETE_MARKER).is_file():
        return final
    with atomic_dir(final) as tmp:  # hidden temp folder, fsynced, then swapped into place
        (tmp / "model").mkdir()
        tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        save_file(tensors, tmp / "model" / "model.safetensors", metadata={"format": "pt"})
        core.config.save_pretrained(tmp / "model")
        torch.save(training_state, tmp / "training_state.pt")
        vocab.save(tmp / "vocab.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        (tmp / COMPLETE_MARKER).write_text(f"{step}\n")
    return final


def load_lm_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by ``train_lm`` for evaluation or fine-tuning.

    Args:
        path: A ``step_NNNNNN`` folder, or a folder of them (the newest complete one is used).
        map_location: Device for the model.

    Returns:
        ``(model, info)``: a ``PhiForCausalLM`` in eval mode, and ``path``, ``step``, ``vocab``
        (``Vocabulary``), ``train_config`` (dict), ``lm_config`` (dict or None), ``metrics``
        (last logged metrics), ``world_size``.
    """
    from transformers import PhiForCausalLM

    path = _resolve_checkpoint(path)
    model = PhiForCausalLM.from_pretrained(
        path / "model", local_files_only=True, dtype=torch.float32
    ).to(map_location)
    model.eval()
    meta = json.loads((path / "meta.json").read_text())
    info = {
        "path": path,
        "step": int(meta["step"]),
        "vocab": Vocabulary.load(path / "vocab.json"),
        "train_config": meta.get("train_config"),
        "lm_config": meta.get("lm_config"),
        "metrics": meta.get("metrics", {}),
        "world_size": meta.get("world_size", 1),
    }
    return model, info


# ----------------------------------------------------------------------------------------------
# Training


def _materialize(metrics: dict[str, Any]) -> dict[str, float]:
    """Metrics as floats: device tensors are stacked and read with one synchronisation."""
    keys = [k for k, v in metrics.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in metrics.items() if k not in keys}
    if keys:
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).tolist()
        out.update(zip(keys, values, strict=True))
    return out


@dataclass
class _Window:
    """Steps since the last log row: their wall time, tokens and time spent waiting for data.

    On a GPU the host runs ahead of the device, so one step's host time means nothing; the
    window is timed from its start to a synchronisation at its end.
    """

    start: float
    steps: int = 0
    tokens: float = 0.0
    data_s: float = 0.0

    def close(self, metrics: dict[str, float], on_gpu: bool) -> dict[str, float]:
        """The log row of the window: ``metrics`` of its last step plus throughput."""
        if on_gpu:
            torch.cuda.synchronize()
        seconds = max(time.perf_counter() - self.start, 1e-9)
        steps = max(self.steps, 1)
        return {
            **metrics,
            "tokens": self.tokens,
            "window_steps": float(self.steps),
            "window_s": seconds,
            "step_s": seconds / steps,
            "tokens_per_s": self.tokens / seconds,
            "data_wait_s": self.data_s,
            "data_wait_fraction": self.data_s / seconds,
        }


class _Trainer:
    """State and step function shared by ``train_lm`` (one per call)."""

    def __init__(self, model: nn.Module, vocab: Vocabulary, cfg: LMTrainConfig) -> None:
        self.model = model
        self.core = unwrap_model(model)
        self.vocab = vocab
        self.cfg = cfg
        self.rank, self.world = _dist_info()
        self.device = next(self.core.parameters()).device
        self.optimizer = _make_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.step = 0
        self.position = DataPosition()
        self.loss_fn: Callable[..., dict[str, torch.Tensor]] = _loss_terms
        self.compiled_blocks = 0
        if cfg.compile:
            self.compiled_blocks = compile_blocks(model)
            self.loss_fn = torch.compile(_loss_terms)

    def restore(self, path: Path) -> None:
        """Load weights, optimizer, scheduler, step, this rank's data position and RNG."""
        from safetensors.torch import load_file

        state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=False)
        model_state = load_file(path / "model" / "model.safetensors")
        _load_full_state(self.model, self.optimizer, model_state, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        saved_vocab = Vocabulary.load(path / "vocab.json")
        if saved_vocab != self.vocab:
            raise ValueError(f"checkpoint {path} was trained with another vocabulary")
        rank_states = state["rank_states"]
        if len(rank_states) == self.world:
            mine = rank_states[self.rank]
            self.position = DataPosition.from_dict(mine["data_position"])
            _set_rng_state(mine["rng"])
        else:
            first = DataPosition.from_dict(rank_states[0]["data_position"])
            self.position = DataPosition(epoch=first.epoch + 1, rows_seen=first.rows_seen)
            _set_rng_state(rank_states[0]["rng"])
            logger.warning(
                "checkpoint %s has %d rank states but the run has %d workers: the data "
                "restarts at epoch %d",
                path,
                len(rank_states),
                self.world,
                self.position.epoch,
            )

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One optimizer step on a host ``batch``; returns this rank's per-step metrics.

        Nothing here waits for the device: the stage-2 masks, the token counts and the
        padding check are computed on the host batch, and the losses and the gradient norm
        are returned as device tensors (``materialize`` turns a list of these into floats
        with one synchronisation, at logging time).
        """
        cfg = self.cfg
        self.model.train()
        metrics: dict[str, Any] = {"tokens": float(batch["attention_mask"].sum())}
        inputs, target_positions = batch["input_ids"], None
        if cfg.stage == 2:
            rng = _mask_generator(cfg.seed, self.rank, self.step)
            inputs, masked = apply_stage2_masking(
                batch, self.vocab, rng, cfg.image_mask_ratio_range, cfg.text_mask_ratio_range
            )
            if cfg.loss_on == "masked":
                target_positions = masked
            eligible = batch["image_mask"].sum() + batch["text_mask"].sum()
            metrics["masked_fraction"] = float(masked.sum()) / max(float(eligible), 1.0)
        attention_mask = batch["attention_mask"]
        if right_padded(attention_mask):
            attention_mask = None

        def to_device(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(self.device, non_blocking=True)

        with _autocast(self.device, cfg.dtype):
            logits = self.model(
                input_ids=to_device(inputs),
                attention_mask=to_device(attention_mask),
                use_cache=False,
            ).logits
        losses = self.loss_fn(
            logits,
            to_device(batch["labels"]),
            to_device(batch["image_mask"]),
            to_device(target_positions),
            float(cfg.image_loss_weight),
            float(cfg.text_loss_weight),
        )
        del logits
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        metrics.update(
            {
                "loss": losses["loss"].detach(),
                "image_loss": losses["image_loss"],
                "text_loss": losses["text_loss"],
                "lr": float(lr),
                "grad_norm": grad_norm.detach(),
            }
        )
        return metrics

    def reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Mean of each metric over ranks (sum for token counts and throughput); collective."""
        if self.world == 1:
            return dict(metrics)
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(values)
        summed = {"tokens", "tokens_per_s"}  # over ranks; times are averaged
        return {
            k: float(v) if k in summed else float(v) / self.world
            for k, v in zip(keys, values.tolist(), strict=True)
        }

    def checkpoint(
        self, directory: Path | None, metrics: dict[str, float], lm_meta: dict[str, Any] | None
    ) -> Path | None:
        """Gather every rank's state (collective); rank 0 writes ``step_NNNNNN``."""
        if directory is None:
            return None
        rank_state = {
            "rank": self.rank,
            "data_position": self.position.to_dict(),
            "rng": _rng_state(),
        }
        rank_states = _all_gather_objects(rank_state, self.world)
        model_state, optim_state = _full_state(self.model, self.optimizer)
        if self.rank != 0:
            return None
        training_state = {
            "step": self.step,
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "rank_states": rank_states,
            "world_size": self.world,
        }
        meta = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "step": self.step,
            "stage": self.cfg.stage,
            "train_config": self.cfg.to_dict(),
            "lm_config": lm_meta,
            "world_size": self.world,
            "metrics": metrics,
            "vocab_sha256": self.vocab.sha256,
            "data_positions": [s["data_position"] for s in rank_states],
        }
        path = _write_checkpoint(
            directory, self.step, self.core, model_state, training_state, self.vocab, meta
        )
        if self.cfg.keep_last:
            for old in list_complete_checkpoints(directory)[: -self.cfg.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        return path


def train_lm(
    model: nn.Module,
    data_factory: BatchFactory,
    cfg: LMTrainConfig,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
    lm_config: dict[str, Any] | None = None,
) -> LMTrainResult:
    """Train (or continue training) the LM for ``cfg.steps`` optimizer steps in total.

    Args:
        model: A ``PhiForCausalLM`` (or a DDP/FSDP wrapper of one) on its device.
        data_factory: Called with a ``DataPosition``, returns an endless iterator of
            ``(batch, position_after_batch)`` (``collate`` batches); must expose ``.vocab``.
            See ``models.lm_data.TokenShardBatches`` / ``InMemoryBatches``.
        cfg: Training config.
        checkpoint_dir: Where ``step_NNNNNN`` checkpoints go (None: no checkpoints). Every
            rank passes it; rank 0 writes.
        resume_from: A checkpoint folder, or a folder of them (the newest complete one); the
            run continues from its step. None: a fresh run (global RNGs seeded with
            ``cfg.seed``; seed torch yourself before building the model for reproducible
            initial weights).
        log: ``log(step, metrics)`` every ``cfg.log_every`` steps and at the last step, with
            the last step's ``loss``, ``image_loss``, ``text_loss``, ``lr``, ``grad_norm`` (and
            ``masked_fraction`` in stage 2), and the window of steps since the previous row:
            ``window_steps``, ``window_s``, ``tokens`` (input tokens of the window),
            ``tokens_per_s``, ``step_s`` (mean seconds per step), ``data_wait_s`` and
            ``data_wait_fraction`` (time the loop waited for a batch); averaged over ranks
            (token counts and throughput summed). The device is synchronised only for these
            rows, so ``log_every`` also sets how often the host waits for the GPU.
        on_checkpoint: ``on_checkpoint(path, step)`` after each checkpoint, on every rank
            (``path`` is rank 0's folder; it only exists on rank 0's machine).
        should_stop: ``should_stop(step)`` before each step (``step`` = steps done so far);
            True ends the run early after a checkpoint. Must agree across ranks. May raise
            (fault-injection drills).
        lm_config: Model shape (``LMConfig.to_dict()``) recorded in the checkpoint metadata.

    Returns:
        An ``LMTrainResult``.
    """
    vocab = data_factory.vocab
    with _threads(cfg.num_threads):
        trainer = _Trainer(model, vocab, cfg)
        if resume_from is not None:
            resume_path = _resolve_checkpoint(resume_from)
            trainer.restore(resume_path)
            logger.info("resumed from %s at step %d", resume_path, trainer.step)
        else:
            _seed_everything(cfg.seed + trainer.rank)
        checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        result = LMTrainResult(
            steps=trainer.step,
            start_step=trainer.step,
            seconds=0.0,
            steps_per_second=0.0,
            tokens_per_second=0.0,
            data_position=trainer.position,
        )
        last_metrics: dict[str, float] = {}
        written_step = -1

        def save() -> None:
            nonlocal written_step
            path = trainer.checkpoint(checkpoint_dir, last_metrics, lm_config)
            written_step = trainer.step
            if path is not None:
                result.checkpoints.append(path)
            if on_checkpoint is not None and checkpoint_dir is not None:
                on_checkpoint(checkpoint_dir / f"{STEP_DIR_PREFIX}{trainer.step:06d}", trainer.step)

        start_time = time.perf_counter()
        total_tokens = 0.0
        stream: Iterator[tuple[dict[str, torch.Tensor], DataPosition]] | None = None
        prefetcher: _Prefetcher | None = None
        on_gpu = trainer.device.type == "cuda"
        window = _Window(time.perf_counter())
        try:
            while trainer.step < cfg.steps:
                if should_stop is not None and should_stop(trainer.step):
                    result.stopped_early = True
                    break
                if stream is None:
                    stream = iter(data_factory(trainer.position))
                    if on_gpu and cfg.prefetch_batches > 0:
                        prefetcher = _Prefetcher(stream, cfg.prefetch_batches, pin=True)
                        stream = prefetcher
                t0 = time.perf_counter()
                batch, position = next(stream)
                window.data_s += time.perf_counter() - t0
                metrics = trainer.train_step(batch)
                trainer.position = position
                window.steps += 1
                window.tokens += metrics["tokens"]
                total_tokens += metrics["tokens"]
                last_metrics = metrics
                step = trainer.step
                if step % cfg.log_every == 0 or step == cfg.steps:
                    row = trainer.reduce(window.close(_materialize(metrics), on_gpu))
                    last_metrics = row
                    result.history.append({"step": float(step), **row})
                    if log is not None:
                        log(step, row)
                    window = _Window(time.perf_counter())
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    last_metrics = _materialize(last_metrics)
                    save()
                    window = _Window(time.perf_counter())
        finally:
            if prefetcher is not None:
                prefetcher.close()
        last_metrics = _materialize(last_metrics)
        if trainer.step != written_step and (
            trainer.step > result.start_step or result.stopped_early
        ):
            save()
        result.seconds = time.perf_counter() - start_time
        done = trainer.step - result.start_step
        result.steps = trainer.step
        result.steps_per_second = done / result.seconds if result.seconds > 0 else 0.0
        result.tokens_per_second = total_tokens / result.seconds if result.seconds > 0 else 0.0
        result.last_metrics = last_metrics
        result.data_position = trainer.position
        if checkpoint_dir is not None and trainer.rank == 0:
            result.final_checkpoint = latest_complete_checkpoint(checkpoint_dir)
    return result


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    data: Iterable[Any],
    vocab: Vocabulary,
    image_mask_ratio: float = 0.0,
    text_mask_ratio: float = 0.0,
    seed: int = 0,
    max_batches: int | None = None,
    dtype: str = "float32",
) -> dict[str, float]:
    """Validation loss and token accuracy per modality, optionally on masked inputs.

    With mask ratios > 0, every sample gets exactly ``round(ratio * count)`` image (report)
    tokens masked (``apply_stage2_masking`` with a fixed ratio, seeded), and one forward pass
    is scored: this measures one-pass inpainting (``masked_image_accuracy``).

    Args:
        model: The LM (or a wrapper).
        data: Iterable of ``collate`` batches (or ``(batch, position)`` pairs).
        vocab: Id layout.
        image_mask_ratio: Fraction of image codes masked in the inputs.
        text_mask_ratio: Fraction of report tokens masked in the inputs.
        seed: Masking seed.
        max_batches: Stop after this many batches.
        dtype: Autocast dtype name (see ``LMTrainConfig.dtype``).

    Returns:
        Token-weighted ``loss``, ``image_loss``, ``text_loss``, ``image_accuracy``,
        ``text_accuracy``, ``image_perplexity``, ``image_tokens``, ``text_tokens``; with
        masking also ``masked_image_loss``, ``masked_image_accuracy``, ``masked_text_loss``,
        ``masked_text_accuracy`` and their token counts; ``chance_image_accuracy``
        (``1 / codebook_size``) and ``num_sequences``.
    """
    core = unwrap_model(model)
    device = next(core.parameters()).device
    was_training = core.training
    core.eval()
    rng = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    masking = image_mask_ratio > 0 or text_mask_ratio > 0

    def add(prefix: str, out: dict[str, torch.Tensor]) -> None:
        for name in ("image", "text"):
            for kind in ("ce_sum", "tokens", "correct"):
                key = f"{prefix}{name}_{kind}"
                sums[key] = sums.get(key, 0.0) + float(out[f"{name}_{kind}"])

    sequences = 0
    try:
        for index, item in enumerate(data):
            if max_batches is not None and index >= max_batches:
                break
            batch = item[0] if isinstance(item, tuple) else item
            batch = {k: v.to(device) for k, v in batch.items()}
            inputs, masked = batch["input_ids"], None
            if masking:
                inputs, masked = apply_stage2_masking(
                    batch,
                    vocab,
                    rng,
                    (image_mask_ratio, image_mask_ratio),
                    (text_mask_ratio, text_mask_ratio),
                )
            with _autocast(device, dtype):
                logits = core(
                    input_ids=inputs, attention_mask=batch["attention_mask"], use_cache=False
                ).logits
            add("", lm_loss(logits, batch))
            if masked is not None:
                add("masked_", lm_loss(logits, batch, target_positions=masked))
            sequences += int(batch["input_ids"].shape[0])
    finally:
        core.train(was_training)

    def ratio(a: str, b: str) -> float:
        return sums.get(a, 0.0) / max(sums.get(b, 0.0), 1.0)

    total_tokens = sums.get("image_tokens", 0.0) + sums.get("text_tokens", 0.0)
    out = {
        "loss": (sums.get("image_ce_sum", 0.0) + sums.get("text_ce_sum", 0.0))
        / max(total_tokens, 1.0),
        "image_loss": ratio("image_ce_sum", "image_tokens"),
        "text_loss": ratio("text_ce_sum", "text_tokens"),
        "image_accuracy": ratio("image_correct", "image_tokens"),
        "text_accuracy": ratio("text_correct", "text_tokens"),
        "image_tokens": sums.get("image_tokens", 0.0),
        "text_tokens": sums.get("text_tokens", 0.0),
        "chance_image_accuracy": 1.0 / vocab.codebook_size,
        "num_sequences": float(sequences),
    }
    out["image_perplexity"] = math.exp(min(out["image_loss"], 50.0))
    if masking:
        for name in ("image", "text"):
            out[f"masked_{name}_loss"] = ratio(f"masked_{name}_ce_sum", f"masked_{name}_tokens")
            out[f"masked_{name}_accuracy"] = ratio(
                f"masked_{name}_correct", f"masked_{name}_tokens"
            )
            out[f"masked_{name}_tokens"] = sums.get(f"masked_{name}_tokens", 0.0)
    return out
