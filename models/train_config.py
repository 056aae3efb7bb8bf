"""Hyper-parameters of the LM training loop (``models.lm_train.train_lm``).

Kept apart from the loop so configuration (the Dagster launchpad, presets) reads and validates
it without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["DTYPE_NAMES", "LOSS_ON", "LMTrainConfig"]

LOSS_ON = ("all", "masked")
#: Autocast dtypes of the forward pass (``float32``: none).
DTYPE_NAMES = ("float32", "bfloat16")


@dataclass(frozen=True)
class LMTrainConfig:
    """Hyper-parameters of ``train_lm``.

    Attributes:
        stage: 1 = plain next-token prediction; 2 = masked image-language next-token
            prediction (inputs masked per batch, targets the original tokens).
        steps: Total optimizer steps of the run (a resumed run continues up to it).
        batch_size: Sequences per batch and per worker. Used by the data factories that the
            runners build (``train_lm`` takes the batches it is given).
        lr: Peak AdamW learning rate.
        betas: AdamW betas.
        warmup_steps: Linear warm-up steps; then cosine decay to ``lr * min_lr_ratio`` at
            ``steps``.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        weight_decay: AdamW weight decay of matrices (biases and norms are not decayed).
        grad_clip: Max global gradient norm (0: no clipping; the norm is still logged).
        image_loss_weight: Weight of the image-code targets' cross-entropy sum.
        text_loss_weight: Weight of the other targets' cross-entropy sum.
        loss_on: Stage 2 only. ``"all"`` (default): every image/text target is in the loss;
            ``"masked"``: only targets whose input slot was masked. We default to ``"all"``
            because, with causal attention, the logit predicting token t never sees input t,
            so the mask at t changes nothing about that prediction: the masked-only loss
            trains the same conditional (original token given a corrupted prefix) on a random
            ~40% subset of the targets (mean ratio of U(0, 0.8)). ``"all"`` is that objective
            with 2.5x more supervised tokens, keeps samples that drew a ratio near 0 (clean
            prefixes, i.e. stage 1's next-token prediction, which report and image generation
            need) in the loss instead of dropping them, and never yields an empty loss.
        image_mask_ratio_range: Stage 2: per-sample image mask ratio ~ U(low, high).
        text_mask_ratio_range: Stage 2: per-sample report mask ratio ~ U(low, high).
        seed: Seeds python / numpy / torch at the start of a fresh run (dropout) and the
            per-step masking generators.
        log_every: Call ``log`` every this many steps (and at the last step).
        checkpoint_every: Checkpoint every this many steps (0: only at the end); a checkpoint
            is always written at the end when a checkpoint directory is given.
        keep_last: Keep only the newest this many complete checkpoints (0: keep all).
        max_text_tokens: Report tokens kept per sequence (used by the data factories).
        dtype: ``"float32"``, or ``"bfloat16"``: autocast of the forward pass on the model's
            device (weights, optimizer state and the loss stay float32; no loss scaling is
            needed, which is why float16 is not offered). Use float32 on CPU.
        num_threads: ``torch.set_num_threads`` during the call (restored after); None leaves
            torch's setting.
        compile: Regional ``torch.compile``: every decoder block (compiled once, reused by all
            blocks) and the loss. For GPUs: it fuses the norms, activations, rotary embedding
            and the cross-entropy over the vocabulary. The first step pays the compile time.
        prefetch_batches: Batches read ahead by a background thread (pinned host memory,
            copied to the device without blocking) when the model is on a GPU; 0 reads each
            batch when it is needed. Ignored on CPU, where reading ahead only competes with
            the step for the same cores.
    """

    stage: Literal[1, 2] = 1
    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    image_loss_weight: float = 1.0
    text_loss_weight: float = 1.0
    loss_on: Literal["all", "masked"] = "all"
    image_mask_ratio_range: tuple[float, float] = (0.0, 0.8)
    text_mask_ratio_range: tuple[float, float] = (0.0, 0.8)
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 0
    max_text_tokens: int = 256
    dtype: Literal["float32", "bfloat16"] = "float32"
    num_threads: int | None = None
    compile: bool = False
    prefetch_batches: int = 2

    def __post_init__(self) -> None:
        for name in ("betas", "image_mask_ratio_range", "text_mask_ratio_range"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        errors = []
        if self.stage not in (1, 2):
            errors.append(f"stage must be 1 or 2, got {self.stage}")
        if self.steps < 0:
            errors.append(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            errors.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            errors.append(f"lr must be > 0, got {self.lr}")
        if self.loss_on not in LOSS_ON:
            errors.append(f"loss_on must be one of {LOSS_ON}, got {self.loss_on!r}")
        if self.loss_on == "masked" and self.stage != 2:
            errors.append("loss_on='masked' needs stage 2")
        if self.image_loss_weight < 0 or self.text_loss_weight < 0:
            errors.append("loss weights must be >= 0")
        if self.image_loss_weight + self.text_loss_weight <= 0:
            errors.append("at least one loss weight must be > 0")
        for name in ("image_mask_ratio_range", "text_mask_ratio_range"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high <= 1.0:
                errors.append(f"{name} must satisfy 0 <= low <= high <= 1, got {(low, high)}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            errors.append("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
        if self.grad_clip < 0 or self.weight_decay < 0:
            errors.append("grad_clip and weight_decay must be >= 0")
        if self.log_every < 1 or self.checkpoint_every < 0 or self.keep_last < 0:
            errors.append("log_every must be >= 1, checkpoint_every and keep_last >= 0")
        if self.max_text_tokens < 0:
            errors.append(f"max_text_tokens must be >= 0, got {self.max_text_tokens}")
        if self.dtype not in DTYPE_NAMES:
            errors.append(f"dtype must be one of {sorted(DTYPE_NAMES)}, got {self.dtype!r}")
        if self.prefetch_batches < 0:
            errors.append(f"prefetch_batches must be >= 0, got {self.prefetch_batches}")
        if self.num_threads is not None and self.num_threads < 1:
            errors.append(f"num_threads must be >= 1 or None, got {self.num_threads}")
        if errors:
            raise ValueError("invalid LMTrainConfig: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMTrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return cls(**data)
