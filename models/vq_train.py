"""Single-process training loop, losses and metrics for ``VQTokenizer``.

``train_vq`` is a plain function of (model, batch iterator, config): no process groups, no
framework. A distributed runner (Ray Train) can wrap the model in DDP and call it per worker;
everything needed to resume (model, optimizer, scheduler, discriminator, step, torch RNG) is in
``VQTrainState.state_dict()``.

Losses: pixel reconstruction (L1, L2 or both), the quantizer's commitment loss (the codebook
itself is learned by EMA, so there is no separate codebook loss term), an optional
differentiable SSIM term, and an optional PatchGAN hinge loss that switches on after
``adversarial_start_step`` (taming's recipe, with its adaptive weight). There is no perceptual
(LPIPS) loss: see ``VQTrainConfig.perceptual_weight``.

Metrics (``evaluate_vq``): PSNR and SSIM on the uint8 [0, 255] scale, codebook usage and code
perplexity; ``recon_grid_png`` renders originals over reconstructions.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.schedule import warmup_cosine
from models.vq_tokenizer import VQTokenizer, images_to_model_input, to_uint8

__all__ = [
    "PatchDiscriminator",
    "VQTrainConfig",
    "VQTrainResult",
    "VQTrainState",
    "code_usage_stats",
    "evaluate_vq",
    "iterate_batches",
    "psnr_uint8",
    "recon_grid_png",
    "ssim",
    "train_vq",
]

RECON_LOSSES = ("l1", "l2", "l1+l2")


@dataclass(frozen=True)
class VQTrainConfig:
    """Hyper-parameters of ``train_vq``.

    Attributes:
        steps: Optimizer steps (the loop also stops early when the batch iterator ends).
        lr: Peak AdamW learning rate of the tokenizer.
        betas: Adam betas (taming uses (0.5, 0.9)).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear learning-rate warm-up steps; afterwards cosine decay to
            ``lr * min_lr_ratio`` at ``steps``.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        batch_size: Images per batch; used by ``iterate_batches`` (``train_vq`` takes whatever
            batches it is given).
        recon_loss: Pixel loss on [-1, 1] images: ``"l1"``, ``"l2"`` or ``"l1+l2"``.
        codebook_weight: Weight of the quantizer loss (commitment, already scaled by the model's
            ``commitment_weight``); the codebook itself follows an EMA, not this gradient.
        ssim_weight: Weight of ``1 - SSIM`` (differentiable, Gaussian window), a structural term
            we offer in place of a perceptual loss.
        perceptual_weight: Must stay 0. A perceptual (LPIPS) loss needs ImageNet VGG16 weights and
            LPIPS calibration heads that would have to be downloaded, and our machines are offline
            with nothing of that kind shipped. Instead we rely on L1 (sharper than L2), the
            optional SSIM term (``ssim_weight``) for local structure/contrast, and the optional
            PatchGAN loss (``adversarial_weight``) for texture realism.
        adversarial_weight: Weight of the PatchGAN hinge generator loss (0 disables the
            discriminator entirely).
        adversarial_start_step: Step from which the discriminator trains and its loss is added
            (warm-up: let reconstructions become reasonable first).
        adaptive_adversarial_weight: Scale the generator loss by taming's adaptive weight
            ``|grad rec| / |grad adv|`` at the decoder's last layer.
        disc_lr: Discriminator learning rate (None: ``lr``).
        disc_channels: Channels of the discriminator's first layer.
        disc_layers: Stride-2 layers of the discriminator (receptive field grows with it).
        grad_clip: Max global gradient norm (0 disables clipping).
        seed: Seeds torch's global RNG at the start (k-means init, dead-code sampling,
            discriminator init); CPU runs are bit-for-bit repeatable.
        log_every: Call ``log`` every this many steps (and at the last step).
        eval_every: Also evaluate on ``val_images`` every this many steps (0: only at the end).
        eval_batch_size: Chunk size for evaluation.
        num_threads: ``torch.set_num_threads`` for the duration of the call (restored after);
            None leaves torch's setting. On a small shared CPU, 1 thread avoids the OpenMP
            spin-wait collapse (we measured 10x slow-downs with 2 threads on 2 busy cores).
    """

    steps: int = 300
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    batch_size: int = 16
    recon_loss: Literal["l1", "l2", "l1+l2"] = "l1"
    codebook_weight: float = 1.0
    ssim_weight: float = 0.0
    perceptual_weight: float = 0.0
    adversarial_weight: float = 0.0
    adversarial_start_step: int = 0
    adaptive_adversarial_weight: bool = True
    disc_lr: float | None = None
    disc_channels: int = 32
    disc_layers: int = 2
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    eval_every: int = 0
    eval_batch_size: int = 32
    num_threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        errors = []
        if self.steps < 0:
            errors.append(f"steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            errors.append(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            errors.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.recon_loss not in RECON_LOSSES:
            errors.append(f"recon_loss must be one of {RECON_LOSSES}, got {self.recon_loss!r}")
        if self.perceptual_weight != 0.0:
            errors.append(
                "perceptual_weight must be 0: LPIPS/VGG weights cannot be downloaded offline "
                "(use ssim_weight and/or adversarial_weight instead)"
            )
        for name in ("codebook_weight", "ssim_weight", "adversarial_weight", "grad_clip"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            errors.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.adversarial_start_step < 0:
            errors.append("warmup_steps and adversarial_start_step must be >= 0")
        if self.log_every < 1 or self.eval_every < 0 or self.eval_batch_size < 1:
            errors.append("log_every and eval_batch_size must be >= 1, eval_every >= 0")
        if self.num_threads is not None and self.num_threads < 1:
            errors.append(f"num_threads must be >= 1 or None, got {self.num_threads}")
        if self.disc_layers < 1 or self.disc_channels < 1:
            errors.append("disc_layers and disc_channels must be >= 1")
        if errors:
            raise ValueError("invalid VQTrainConfig: " + "; ".join(errors))

    @property
    def uses_discriminator(self) -> bool:
        """Whether a discriminator is built (``adversarial_weight > 0``)."""
        return self.adversarial_weight > 0


# ----------------------------------------------------------------------------------------------
# Metrics


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 255.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), Gaussian window, per image; differentiable.

    Local statistics use a separable Gaussian window (11 taps, sigma 1.5 by default) over the
    'valid' region; the SSIM map is averaged over pixels and channels. Windows larger than the
    image are shrunk to the largest odd size that fits.

    Args:
        x: (B, C, H, W) or (B, H, W), any real dtype.
        y: Same shape as ``x``.
        data_range: Value range of the data (255 for uint8, 2 for [-1, 1]).
        window_size: Odd Gaussian window size.
        sigma: Gaussian standard deviation.
        k1: Luminance stabiliser constant.
        k2: Contrast stabiliser constant.

    Returns:
        float (B,) SSIM values; 1 for identical images.
    """
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim == 3:
        x, y = x.unsqueeze(1), y.unsqueeze(1)
    x, y = x.float(), y.float()
    _, c, h, w = x.shape
    size = min(window_size, h, w)
    size -= 1 - size % 2
    g = _gaussian_window(size, sigma, x.device)
    wx = g.view(1, 1, 1, size).expand(c, 1, 1, size)
    wy = g.view(1, 1, size, 1).expand(c, 1, size, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, wx, groups=c), wy, groups=c)

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean(dim=(1, 2, 3))


def psnr_uint8(x: torch.Tensor, y: torch.Tensor, max_db: float = 100.0) -> torch.Tensor:
    """Per-image PSNR in dB of uint8-scale images.

    Args:
        x: (B, ...) values in [0, 255] (uint8 or float).
        y: Same shape.
        max_db: Value reported for identical images.

    Returns:
        float (B,).
    """
    diff = x.double() - y.double()
    mse = diff.pow(2).flatten(1).mean(dim=1)
    out = 10.0 * torch.log10(255.0**2 / mse.clamp_min(1e-12))
    return out.clamp(max=max_db).float()


def code_usage_stats(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Codebook usage of a set of code grids.

    Args:
        codes: int (B, h, w) (any shape).
        codebook_size: Number of codebook entries.

    Returns:
        ``codes_used`` (distinct codes), ``codebook_usage`` (% of the codebook used) and
        ``perplexity`` (exp of the entropy of the code histogram; = codebook_size when uniform).
    """
    counts = torch.bincount(codes.reshape(-1).long().cpu(), minlength=codebook_size).double()
    total = counts.sum().clamp_min(1.0)
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {
        "codes_used": float(used),
        "codebook_usage": 100.0 * used / codebook_size,
        "perplexity": float(entropy.exp()),
    }


def _unwrap(model: nn.Module) -> VQTokenizer:
    core = getattr(model, "module", model)
    if not isinstance(core, VQTokenizer):
        raise TypeError(f"expected a VQTokenizer (or a wrapper with .module), got {type(core)}")
    return core


def evaluate_vq(
    model: nn.Module, images_uint8: torch.Tensor | np.ndarray, batch_size: int = 32
) -> dict[str, float]:
    """Reconstruction quality and codebook usage on a set of images.

    Uses ``encode``/``decode`` (deterministic, no state change). Originals are brought to the
    model's resolution first; RGB models are compared after averaging their output to grey.

    Args:
        model: The tokenizer (or a DDP-style wrapper).
        images_uint8: uint8 (N, H, W) or (N, 1, H, W).
        batch_size: Images per evaluation chunk (encode/decode sub-chunk on CPU).

    Returns:
        ``psnr`` (dB, mean over images, uint8 scale), ``ssim`` (mean), ``mse`` (uint8 scale),
        ``codes_used``, ``codebook_usage`` (%), ``perplexity`` and ``num_images``.
    """
    core = _unwrap(model)
    images = torch.as_tensor(images_uint8)
    if images.shape[0] == 0:
        raise ValueError("evaluate_vq needs at least one image")
    was_training = core.training
    core.eval()
    psnrs, ssims, mses, all_codes = [], [], [], []
    try:
        for chunk in images.split(batch_size):
            orig = to_uint8(images_to_model_input(chunk, core.config.image_size, 1))
            codes = core.encode(chunk)
            rec = to_uint8(core.decode(codes))
            all_codes.append(codes)
            psnrs.append(psnr_uint8(orig, rec))
            ssims.append(ssim(orig.float(), rec.float(), data_range=255.0))
            mses.append((orig.double() - rec.double()).pow(2).flatten(1).mean(dim=1))
    finally:
        core.train(was_training)
    stats = code_usage_stats(torch.cat(all_codes), core.num_codes)
    return {
        "psnr": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
        "mse": float(torch.cat(mses).mean()),
        **stats,
        "num_images": float(images.shape[0]),
    }


def recon_grid_png(
    originals: torch.Tensor | np.ndarray,
    recons: torch.Tensor | np.ndarray,
    max_images: int = 8,
    pad: int = 2,
) -> bytes:
    """A PNG with originals on the top row and reconstructions on the bottom row.

    Args:
        originals: uint8 (N, H, W) / (N, 1, H, W), or float in [-1, 1].
        recons: Same layout (may be at a different resolution; it is resized to match).
        max_images: Columns shown (the first ``max_images`` images).
        pad: White padding between tiles, in pixels.

    Returns:
        PNG bytes (8-bit grey).
    """
    from PIL import Image

    def as_u8(t: torch.Tensor | np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.dtype != torch.uint8:
            t = to_uint8(t)
        return t[:, 0] if t.ndim == 4 else t

    top, bottom = as_u8(originals)[:max_images], as_u8(recons)[:max_images]
    n = min(top.shape[0], bottom.shape[0])
    if n == 0:
        raise ValueError("recon_grid_png needs at least one image pair")
    top, bottom = top[:n], bottom[:n]
    h, w = top.shape[-2:]
    if bottom.shape[-2:] != (h, w):
        resized = F.interpolate(bottom[:, None].float(), size=(h, w), mode="bilinear")
        bottom = resized[:, 0].round().clamp(0, 255).to(torch.uint8)
    canvas = np.full((2 * h + 3 * pad, n * w + (n + 1) * pad), 255, dtype=np.uint8)
    for i in range(n):
        x0 = pad + i * (w + pad)
        canvas[pad : pad + h, x0 : x0 + w] = top[i].numpy()
        canvas[2 * pad + h : 2 * pad + 2 * h, x0 : x0 + w] = bottom[i].numpy()
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Discriminator


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix / taming ``NLayerDiscriminator``), one logit per patch.

    GroupNorm replaces taming's BatchNorm so that the discriminator has no running statistics
    (simpler to checkpoint and to run under DDP). Weights are initialised N(0, 0.02) as in taming.

    Args:
        in_channels: Image channels.
        channels: Channels of the first layer (doubled per layer, capped at 8x).
        num_layers: Number of stride-2 layers.
    """

    def __init__(self, in_channels: int = 1, channels: int = 32, num_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                nn.Conv2d(
                    channels * prev, channels * mult, 4, stride=stride, padding=1, bias=False
                ),
                nn.GroupNorm(min(8, channels * mult), channels * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits.

        Args:
            x: float (B, C, H, W) in [-1, 1].

        Returns:
            float (B, 1, h', w').
        """
        return self.main(x)


def _hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


# ----------------------------------------------------------------------------------------------
# Training state and loop


def _lr_lambda(cfg: VQTrainConfig) -> Callable[[int], float]:
    return warmup_cosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)


class VQTrainState:
    """Everything ``train_vq`` needs to resume: model, optimizers, scheduler, step and RNG.

    Build it after seeding (``train_vq`` does both when no state is passed). ``state_dict()``
    captures the torch global RNG at call time; ``load_state_dict()`` restores it, so a resumed
    run continues bit-for-bit as long as the batch iterator resumes at ``step`` too (see
    ``iterate_batches(start_batch=...)``).

    Args:
        model: The tokenizer (or a DDP-style wrapper around one).
        cfg: Training config.
    """

    def __init__(self, model: nn.Module, cfg: VQTrainConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.step = 0
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.discriminator: PatchDiscriminator | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        if cfg.uses_discriminator:
            core = _unwrap(model)
            device = core.conv_in_weight.device
            self.discriminator = PatchDiscriminator(
                core.config.in_channels, cfg.disc_channels, cfg.disc_layers
            ).to(device)
            self.disc_optimizer = torch.optim.AdamW(
                self.discriminator.parameters(),
                lr=cfg.disc_lr or cfg.lr,
                betas=cfg.betas,
                weight_decay=cfg.weight_decay,
            )

    def state_dict(self) -> dict[str, Any]:
        """Resumable state (tensors and plain Python values; ``torch.save``-able).

        Returns:
            Dict with ``step``, ``model``, ``optimizer``, ``scheduler``, ``discriminator``,
            ``disc_optimizer`` (None without a discriminator), ``torch_rng_state``,
            ``cuda_rng_state`` (None unless CUDA is in use) and ``train_config``.
        """
        return {
            "step": self.step,
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "discriminator": self.discriminator.state_dict() if self.discriminator else None,
            "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer else None,
            "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_state": torch.cuda.get_rng_state_all()
            if torch.cuda.is_initialized()
            else None,
            "train_config": dataclasses.asdict(self.cfg),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores ``state_dict()`` output (strict for the model and discriminator).

        Args:
            state: As returned by ``state_dict``.

        Raises:
            ValueError: Discriminator presence differs between state and config.
        """
        _unwrap(self.model).load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        has_disc = state.get("discriminator") is not None
        if has_disc != (self.discriminator is not None):
            raise ValueError("discriminator present in state/config mismatch (adversarial_weight)")
        if self.discriminator is not None and self.disc_optimizer is not None:
            self.discriminator.load_state_dict(state["discriminator"], strict=True)
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng_state"])
        cuda_states = state.get("cuda_rng_state")
        if cuda_states is not None and len(cuda_states) == torch.cuda.device_count() > 0:
            torch.cuda.set_rng_state_all(cuda_states)


@dataclass
class VQTrainResult:
    """What ``train_vq`` returns.

    Attributes:
        steps: Steps completed in total (including steps of a resumed state).
        seconds: Wall time of this call's training steps (evaluation excluded).
        steps_per_second: Training throughput of this call.
        initial_metrics: ``evaluate_vq`` before this call's first step.
        final_metrics: ``evaluate_vq`` after the last step.
        history: Every logged row (``step`` plus the metrics passed to ``log``).
        state: The training state (resume with ``train_vq(..., state=state)``).
    """

    steps: int
    seconds: float
    steps_per_second: float
    initial_metrics: dict[str, float]
    final_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    state: VQTrainState | None = None


def iterate_batches(
    images_uint8: torch.Tensor | np.ndarray, batch_size: int, seed: int = 0, start_batch: int = 0
) -> Iterator[torch.Tensor]:
    """Endless shuffled batches over an in-memory image set (epoch permutations from ``seed``).

    Batch ``k`` depends only on (seed, k), so ``start_batch`` resumes the stream exactly.

    Args:
        images_uint8: uint8 (N, H, W).
        batch_size: Images per batch (the last partial batch of an epoch is dropped, unless the
            set is smaller than a batch).
        seed: Shuffle seed.
        start_batch: Index of the first batch to yield.

    Yields:
        uint8 (batch_size, H, W) batches.
    """
    images = torch.as_tensor(images_uint8)
    n = images.shape[0]
    if n == 0:
        raise ValueError("iterate_batches needs at least one image")
    per_epoch = max(1, n // batch_size)
    k = start_batch
    while True:
        epoch, pos = divmod(k, per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx = perm[pos * batch_size : (pos + 1) * batch_size]
        yield images[torch.from_numpy(idx)]
        k += 1


def _recon_loss(kind: str, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(recon, target)
    if kind == "l2":
        return F.mse_loss(recon, target)
    return F.l1_loss(recon, target) + F.mse_loss(recon, target)


def _adaptive_weight(
    rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
) -> torch.Tensor:
    rec_grads = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grads.norm() / (g_grads.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach()


def _train_step(model: nn.Module, state: VQTrainState, batch: torch.Tensor) -> dict[str, float]:
    cfg = state.cfg
    core = _unwrap(model)
    x = core.to_model_input(batch)
    recon, vq_loss, codes = model(x)
    rec = _recon_loss(cfg.recon_loss, recon, x)
    nll = rec
    out: dict[str, float] = {}
    if cfg.ssim_weight > 0:
        ssim_loss = 1.0 - ssim(recon, x, data_range=2.0).mean()
        nll = nll + cfg.ssim_weight * ssim_loss
        out["ssim_loss"] = float(ssim_loss.detach())
    loss = nll + cfg.codebook_weight * vq_loss
    adv_on = state.discriminator is not None and state.step >= cfg.adversarial_start_step
    if adv_on:
        disc = state.discriminator
        disc.requires_grad_(False)
        g_loss = -disc(recon).mean()
        disc.requires_grad_(True)
        if cfg.adaptive_adversarial_weight:
            d_weight = _adaptive_weight(nll, g_loss, core.decoder.conv_out.weight)
        else:
            d_weight = torch.tensor(1.0)
        loss = loss + cfg.adversarial_weight * d_weight * g_loss
        out["g_loss"] = float(g_loss.detach())
        out["d_weight"] = float(d_weight)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        out["grad_norm"] = float(grad_norm)
    state.optimizer.step()
    state.scheduler.step()
    if adv_on and state.disc_optimizer is not None:
        disc = state.discriminator
        logits_real = disc(x.detach())
        logits_fake = disc(recon.detach())
        d_loss = _hinge_d_loss(logits_real, logits_fake)
        state.disc_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        state.disc_optimizer.step()
        out["d_loss"] = float(d_loss.detach())
        out["logits_real"] = float(logits_real.detach().mean())
        out["logits_fake"] = float(logits_fake.detach().mean())
    with torch.no_grad():
        mse_u8 = ((recon.detach().clamp(-1, 1) - x) * 127.5).pow(2).flatten(1).mean(dim=1)
        batch_psnr = (10 * torch.log10(255.0**2 / mse_u8.clamp_min(1e-12))).mean()
    usage = code_usage_stats(codes.detach(), core.num_codes)
    out.update(
        loss=float(loss.detach()),
        recon_loss=float(rec.detach()),
        vq_loss=float(vq_loss.detach()),
        batch_psnr=float(batch_psnr),
        batch_codebook_usage=usage["codebook_usage"],
        batch_perplexity=usage["perplexity"],
        lr=float(state.optimizer.param_groups[0]["lr"]),
    )
    return out


def train_vq(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    val_images: torch.Tensor | np.ndarray,
    cfg: VQTrainConfig,
    log: Callable[[int, dict], None] | None = None,
    state: VQTrainState | None = None,
) -> VQTrainResult:
    """Trains the tokenizer in this process until ``cfg.steps`` (or the batches run out).

    Without ``state``, seeds torch's global RNG with ``cfg.seed`` and builds a fresh
    ``VQTrainState`` (so the whole run is a function of the seed and the batches); with ``state``
    (e.g. restored via ``load_state_dict``), continues from ``state.step``.

    Args:
        model: ``VQTokenizer`` or a DDP-style wrapper (``.module``); trained in place.
        batches: Iterable of uint8 (B, H, W) or (B, 1, H, W) image batches (any size, resized
            to the model's ``image_size``); consumed one per step.
        val_images: uint8 (N, H, W) images for ``evaluate_vq`` (before, every ``eval_every`` steps
            and after training).
        cfg: Training config.
        log: Called as ``log(step, metrics)`` every ``cfg.log_every`` steps, at the last step and
            after each evaluation (metrics prefixed ``val_``).
        state: Resume from this state (its model must be ``model``).

    Returns:
        The result with metrics, history and the final state.
    """
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train_vq(model, batches, val_images, cfg, log, state)
    finally:
        torch.set_num_threads(threads)


def _train_vq(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    val_images: torch.Tensor | np.ndarray,
    cfg: VQTrainConfig,
    log: Callable[[int, dict], None] | None,
    state: VQTrainState | None,
) -> VQTrainResult:
    if state is None:
        torch.manual_seed(cfg.seed)
        state = VQTrainState(model, cfg)
    elif state.model is not model:
        raise ValueError("state.model is not the model being trained")
    history: list[dict[str, float]] = []

    def emit(step: int, metrics: dict[str, float]) -> None:
        history.append({"step": float(step), **metrics})
        if log is not None:
            log(step, metrics)

    initial = evaluate_vq(model, val_images, cfg.eval_batch_size)
    model.train()
    iterator = iter(batches)
    seconds, steps_run = 0.0, 0
    window_start, window_steps = time.perf_counter(), 0
    while state.step < cfg.steps:
        try:
            batch = next(iterator)
        except StopIteration:
            break
        t0 = time.perf_counter()
        metrics = _train_step(model, state, batch)
        seconds += time.perf_counter() - t0
        state.step += 1
        steps_run += 1
        window_steps += 1
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            now = time.perf_counter()
            metrics["steps_per_second"] = window_steps / max(now - window_start, 1e-9)
            window_start, window_steps = now, 0
            emit(state.step, metrics)
        if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < cfg.steps:
            val = evaluate_vq(model, val_images, cfg.eval_batch_size)
            emit(state.step, {f"val_{k}": v for k, v in val.items()})
            model.train()
    final = evaluate_vq(model, val_images, cfg.eval_batch_size)
    emit(state.step, {f"val_{k}": v for k, v in final.items()})
    model.train()
    return VQTrainResult(
        steps=state.step,
        seconds=seconds,
        steps_per_second=steps_run / seconds if seconds > 0 else 0.0,
        initial_metrics=initial,
        final_metrics=final,
        history=history,
        state=state,
    )
