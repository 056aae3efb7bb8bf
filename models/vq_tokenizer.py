"""VQ image tokenizer: a taming/Chameleon-layout VQGAN that turns chest X-rays into discrete codes.

Architecture choice. The encoder and decoder are diffusers' ``Encoder``/``Decoder``
(``diffusers.models.autoencoders.vae``): a maintained, numerically identical re-implementation of
taming-transformers' VQGAN trunk (same ResNet blocks, GroupNorm eps 1e-6, single-head attention,
asymmetric-pad stride-2 downsampling, nearest upsampling), so a Chameleon/CheXmix ``vqgan.ckpt``
maps onto it 1:1 by renaming keys (``tokenizer_key_to_taming``). The quantizer is
vector-quantize-pytorch's ``VectorQuantize``, which provides what makes a codebook train well from
scratch on a small budget: EMA codebook updates, k-means initialisation on the first batch and
dead-code replacement (``threshold_ema_dead_code``). We rejected diffusers' whole ``VQModel``: its
quantizer is taming's gradient-trained ``VectorQuantizer`` (no EMA, k-means or dead-code revival,
so small codebooks collapse) and it brings hub/``ConfigMixin`` machinery we do not need; we also
rejected re-typing taming's trunk by hand (1:1 key names, but code we would own and have to test).

Conventions: images are grey chest X-rays, ``uint8`` (B, H, W) or (B, 1, H, W), or float in
[-1, 1]; code grids are ``int64`` (B, h, w) in raster order with values in [0, codebook_size).
Downstream, image code ``c`` becomes token id ``text_vocab + c``.

Only torch, diffusers and vector-quantize-pytorch are used here (no dagster, no ray). diffusers is
imported lazily when a model is built, so configs and presets are cheap to import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CHECKPOINT_CONFIG_FILE",
    "CHECKPOINT_WEIGHTS_FILE",
    "ENCODE_PRECISIONS",
    "TAMING_IGNORED_PREFIXES",
    "VQ_PRESETS",
    "EncodeOptions",
    "VQConfig",
    "VQTokenizer",
    "checkpoint_sha256",
    "config_from_preset",
    "export_taming_state_dict",
    "import_taming_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "taming_key_table",
    "to_uint8",
    "tokenizer_key_to_taming",
]

CHECKPOINT_WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_CONFIG_FILE = "config.json"
_CHECKPOINT_FORMAT = "chexmix-vq-tokenizer"
_CHECKPOINT_FORMAT_VERSION = 1

TAMING_IGNORED_PREFIXES: tuple[str, ...] = ("loss.",)
"""Checkpoint key prefixes that ``import_taming_checkpoint`` skips on purpose.

``loss.`` is taming's ``VQLPIPSWithDiscriminator``: the PatchGAN discriminator and the frozen
LPIPS/VGG weights. Both only matter for training the original model and have no counterpart in the
tokenizer.
Every other key must be used, and every tokenizer parameter must be filled.
"""


@dataclass(frozen=True)
class VQConfig:
    """Shape and quantizer settings of a ``VQTokenizer`` (taming ``ddconfig`` + quantizer).

    Attributes:
        image_size: Side of the square model input in pixels (taming ``resolution``).
        in_channels: Image channels, 1 (grey) or 3. Chameleon/CheXmix checkpoints are RGB
            (``in_channels=3``); grey CXRs are then repeated to 3 channels on input and the three
            output channels are averaged back to grey by ``decode``.
        base_channels: Channels of the first level (taming ``ch``).
        channel_mult: Channel multiplier per resolution level (taming ``ch_mult``); there is one
            2x downsampling between consecutive levels, so ``downsample = 2 ** (len - 1)``.
        num_res_blocks: ResNet blocks per encoder level (the decoder uses one more, as taming).
        attn_resolutions: Pixel resolutions of the levels that get self-attention after every
            ResNet block (taming ``attn_resolutions``). The mid block always has one attention
            layer, at the code-grid resolution.
        z_channels: Channels of the encoder output / decoder input (taming ``z_channels``).
        codebook_size: Number of codebook entries (taming ``n_embed``).
        code_dim: Dimension of a codebook vector (taming ``embed_dim``).
        norm_groups: GroupNorm groups (taming hard-codes 32); must divide every channel count.
        commitment_weight: Weight of the commitment loss inside the quantizer (taming ``beta``).
        ema_decay: EMA decay of the codebook statistics.
        kmeans_init: Initialise the codebook by k-means on the first training batch.
        kmeans_iters: k-means iterations for that initialisation.
        threshold_ema_dead_code: Codes whose EMA usage count per batch falls below this are replaced
            by random encoder outputs of the current batch (0 disables it).
        rotation_trick: Pass gradients through the quantizer with the rotation trick
            (arXiv 2410.06424) instead of the plain straight-through estimator.
        dropout: Dropout inside the ResNet blocks (taming default 0.0).
    """

    image_size: int = 512
    in_channels: int = 1
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int = 256
    codebook_size: int = 8192
    code_dim: int = 256
    norm_groups: int = 32
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    threshold_ema_dead_code: float = 2.0
    rotation_trick: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # JSON round-trips give lists; store tuples so the config stays hashable and comparable.
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        errors: list[str] = []
        positive = (
            "image_size",
            "base_channels",
            "num_res_blocks",
            "z_channels",
            "codebook_size",
            "code_dim",
            "norm_groups",
            "kmeans_iters",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(f"{name} must be a positive int, got {value!r}")
        if self.in_channels not in (1, 3):
            errors.append(f"in_channels must be 1 or 3, got {self.in_channels!r}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            errors.append(f"channel_mult must be non-empty positive ints, got {self.channel_mult}")
        if self.codebook_size < 2:
            errors.append(f"codebook_size must be >= 2, got {self.codebook_size}")
        if not 0.0 < self.ema_decay < 1.0:
            errors.append(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.commitment_weight < 0:
            errors.append(f"commitment_weight must be >= 0, got {self.commitment_weight}")
        if self.threshold_ema_dead_code < 0:
            errors.append(
                f"threshold_ema_dead_code must be >= 0, got {self.threshold_ema_dead_code}"
            )
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not errors:
            if self.image_size % self.downsample:
                errors.append(
                    f"image_size {self.image_size} is not divisible by the downsample factor "
                    f"{self.downsample} (= 2 ** (len(channel_mult) - 1))"
                )
            for ch in sorted(set(self.level_channels)):
                if ch % self.norm_groups:
                    errors.append(
                        f"channel count {ch} is not divisible by norm_groups {self.norm_groups}"
                    )
            levels = self.level_resolutions
            bad = [r for r in self.attn_resolutions if r not in levels]
            if bad:
                errors.append(f"attn_resolutions {bad} are not level resolutions {levels}")
        if errors:
            raise ValueError("invalid VQConfig: " + "; ".join(errors))

    @property
    def num_levels(self) -> int:
        """Number of resolution levels (``len(channel_mult)``)."""
        return len(self.channel_mult)

    @property
    def downsample(self) -> int:
        """Spatial downsampling factor from image to code grid."""
        return 2 ** (self.num_levels - 1)

    @property
    def grid_size(self) -> int:
        """Side of the square code grid (h = w)."""
        return self.image_size // self.downsample

    @property
    def codes_per_image(self) -> int:
        """Number of codes per image (``grid_size ** 2``)."""
        return self.grid_size**2

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of each level (``base_channels * channel_mult``)."""
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """Feature-map side of each encoder level, from the input resolution down."""
        return tuple(self.image_size // 2**i for i in range(self.num_levels))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VQConfig:
        """Builds a config from ``to_dict`` output; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown VQConfig fields: {unknown}")
        return cls(**dict(data))


VQ_PRESETS: dict[str, VQConfig] = {
    # Unit tests: 32 px -> 8x8 codes from 32 entries; trains in seconds.
    "debug": VQConfig(
        image_size=32,
        base_channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        z_channels=32,
        codebook_size=32,
        code_dim=16,
        norm_groups=8,
        ema_decay=0.8,
        threshold_ema_dead_code=1.0,
    ),
    # CPU demo: 128 px -> 16x16 = 256 codes from 512 entries; a few minutes on 2 cores.
    "small": VQConfig(
        image_size=128,
        base_channels=16,
        channel_mult=(1, 2, 2, 4),
        num_res_blocks=1,
        z_channels=64,
        codebook_size=512,
        code_dim=32,
        norm_groups=8,
        ema_decay=0.9,
        threshold_ema_dead_code=1.0,
    ),
    # CheXmix / Chameleon: 512 px -> 32x32 = 1,024 codes from 8,192 entries, taming f16 trunk
    # (ch 128, ch_mult 1,1,2,2,4, 2 res blocks). As in Chameleon's vqgan.yaml (attn_resolutions:
    # []) attention sits only in the mid blocks, i.e. at 32x32; taming's ImageNet f16 model also has
    # attention in its lowest level: use attn_resolutions=(32,) for that layout. Real checkpoints
    # are RGB: config_from_preset("chexmix", in_channels=3).
    "chexmix": VQConfig(),
}


def config_from_preset(name: str, **overrides: Any) -> VQConfig:
    """Returns preset ``name`` with fields replaced by ``overrides`` (validated).

    Args:
        name: One of ``VQ_PRESETS`` ("debug", "small", "chexmix").
        **overrides: ``VQConfig`` fields to replace.

    Returns:
        The validated config.

    Raises:
        ValueError: Unknown preset or field, or an invalid resulting config.
    """
    if name not in VQ_PRESETS:
        raise ValueError(f"unknown VQ preset {name!r}; choose one of {sorted(VQ_PRESETS)}")
    names = {f.name for f in dataclasses.fields(VQConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown VQConfig fields: {unknown}")
    return dataclasses.replace(VQ_PRESETS[name], **overrides)


# ----------------------------------------------------------------------------------------------
# Pre/post-processing


def _as_tensor(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy array, got {type(images).__name__}")
    return images


def images_to_model_input(
    images: torch.Tensor | np.ndarray, image_size: int, channels: int = 1
) -> torch.Tensor:
    """Converts grey images to the model's float input in [-1, 1].

    ``uint8`` is scaled ``x / 127.5 - 1``; floating-point input is taken to be in [-1, 1] already.
    Images that are not ``image_size`` square are resized (shortest side, antialiased bilinear)
    and centre-cropped, as the CheXmix preprocessing does. Grey input is repeated to ``channels``.

    Args:
        images: (B, H, W) or (B, C, H, W), ``uint8`` or float; C is 1 or ``channels``.
        image_size: Output side.
        channels: Output channels (1 or 3).

    Returns:
        float32 (B, channels, image_size, image_size) in [-1, 1].
    """
    x = _as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"expected (B, H, W) or (B, C, H, W) images, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    elif x.dtype.is_floating_point:
        x = x.float()
    else:
        raise TypeError(f"images must be uint8 or float in [-1, 1], got {x.dtype}")
    if x.shape[1] not in (1, channels):
        raise ValueError(f"images have {x.shape[1]} channels, model expects 1 or {channels}")
    h, w = x.shape[-2:]
    if (h, w) != (image_size, image_size):
        scale = image_size / min(h, w)
        new_h, new_w = max(image_size, round(h * scale)), max(image_size, round(w * scale))
        x = F.interpolate(
            x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
        top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
        x = x[..., top : top + image_size, left : left + image_size].clamp(-1.0, 1.0)
    if x.shape[1] != channels:
        x = x.expand(-1, channels, -1, -1)
    return x.contiguous()


CPU_CHUNK = 8
"""Default encode/decode chunk on CPU: small chunks keep activations in cache (3-5x faster)."""


def _chunks(t: torch.Tensor, batch_size: int | None, device: torch.device) -> list[torch.Tensor]:
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if t.shape[0] == 0:
        return []
    if batch_size is None:
        batch_size = CPU_CHUNK if device.type == "cpu" else t.shape[0]
    return list(t.split(batch_size))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Maps float images in [-1, 1] to ``uint8`` [0, 255] (rounded, clamped).

    Args:
        images: float (B, 1, H, W) or (B, H, W); channels > 1 are averaged to grey.

    Returns:
        uint8 (B, H, W).
    """
    x = images.detach().float()
    if x.ndim == 4:
        x = x.mean(dim=1)
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


ENCODE_PRECISIONS = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EncodeOptions:
    """How ``VQTokenizer.encode`` runs the encoder (never the weights, never the code search).

    The defaults reproduce the plain fp32 eager encoder exactly (CPU codes are bit-identical to a
    model without options). Fast GPU settings: ``EncodeOptions("float16", compile=True)`` or
    ``EncodeOptions("bfloat16", compile=True)``.

    Attributes:
        precision: ``float32``, or autocast of the encoder to ``float16`` or ``bfloat16``. The
            latents are cast back to fp32 and the nearest-code search always runs in fp32, so
            only the encoder's rounding changes. fp16 keeps 3 more mantissa bits than bf16: on
            seeded random-init models with codebooks sampled from their own latents (CPU), fp16
            codes agreed with fp32 on 99.9% (debug), 99.5% (small) and 98.9% (chexmix) of
            positions, bf16 on 98.4%, 96.4% and 89.6% (``bench/tokenize.py`` measures it on
            the GPU). A trained tokenizer's margins decide the real figure: measure it. fp16's
            range is 6.5e4: fine for GroupNorm-ed activations, but check a new checkpoint.
        compile: ``torch.compile`` the encoder, ``quant_conv`` and the uint8 -> [-1, 1]
            conversion as one graph (fuses GroupNorm + SiLU + residual adds, which are
            memory-bound at 512 px). Compiled on the first call (tens of seconds for ``chexmix``
            on a GPU); chunks smaller than the batch are zero-padded so the graph is compiled
            for one shape only.
        channels_last: Run the convolutions in channels-last memory format (the model's default,
            2-3x faster on CPU); False uses contiguous NCHW.
        cudnn_benchmark: On CUDA, let cuDNN time its convolution algorithms for each new shape
            and keep the fastest (no effect on CPU; algorithm choice can change the last bits).
    """

    precision: str = "float32"
    compile: bool = False
    channels_last: bool = True
    cudnn_benchmark: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ENCODE_PRECISIONS:
            raise ValueError(
                f"precision must be one of {ENCODE_PRECISIONS}, got {self.precision!r}"
            )
        for name in ("compile", "channels_last", "cudnn_benchmark"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def is_default_eager(self) -> bool:
        """True when encode takes the plain fp32 eager path (the reference numerics)."""
        return self.precision == "float32" and not self.compile and self.channels_last


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool):
    """Sets ``torch.backends.cudnn.benchmark`` for the block (restored after)."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


# ----------------------------------------------------------------------------------------------
# Model


class VQTokenizer(nn.Module):
    """VQGAN image tokenizer: encoder -> quant_conv -> VQ -> post_quant_conv -> decoder.

    Submodule names follow diffusers (``encoder.down_blocks...``) plus ``quant_conv``,
    ``quantize`` (``VectorQuantize``) and ``post_quant_conv`` as in taming.

    ``encode``/``decode`` always use a plain nearest-neighbour codebook lookup under
    ``torch.inference_mode`` (no EMA update, no k-means, no randomness), so they are deterministic
    and never change the model. ``forward`` in training mode goes through ``VectorQuantize``
    (EMA updates, k-means init, dead-code replacement, commitment loss); in eval mode it uses the
    same lookup as ``encode``.
    """

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        # Lazy: importing diffusers costs seconds; configs/presets should not pay it.
        from diffusers.models.autoencoders.vae import Decoder, Encoder
        from vector_quantize_pytorch import VectorQuantize

        self.config = config
        attn = set(config.attn_resolutions)
        levels = config.level_resolutions
        down_types = tuple(
            "AttnDownEncoderBlock2D" if r in attn else "DownEncoderBlock2D" for r in levels
        )
        up_types = tuple(
            "AttnUpDecoderBlock2D" if r in attn else "UpDecoderBlock2D" for r in reversed(levels)
        )
        self.encoder = Encoder(
            in_channels=config.in_channels,
            out_channels=config.z_channels,
            down_block_types=down_types,
            block_out_channels=config.level_channels,
            layers_per_block=config.num_res_blocks,
            norm_num_groups=config.norm_groups,
            act_fn="silu",
            double_z=False,
            mid_block_add_attention=True,
        )
        self.quant_conv = nn.Conv2d(config.z_channels, config.code_dim, 1)
        self.quantize = VectorQuantize(
            dim=config.code_dim,
            codebook_size=config.codebook_size,
            decay=config.ema_decay,
            commitment_weight=config.commitment_weight,
            kmeans_init=config.kmeans_init,
            kmeans_iters=config.kmeans_iters,
            threshold_ema_dead_code=config.threshold_ema_dead_code,
            rotation_trick=config.rotation_trick,
            straight_through=False,
            accept_image_fmap=True,
        )
        self.post_quant_conv = nn.Conv2d(config.code_dim, config.z_channels, 1)
        self.decoder = Decoder(
            in_channels=config.z_channels,
            out_channels=config.in_channels,
            up_block_types=up_types,
            block_out_channels=config.level_channels,
            layers_per_block=config.num_res_blocks,
            norm_num_groups=config.norm_groups,
            act_fn="silu",
            norm_type="group",
            mid_block_add_attention=True,
        )
        if config.dropout:
            for module in self.modules():
                if isinstance(module, nn.Dropout):
                    module.p = config.dropout
        # channels_last convolutions are 2-3x faster on CPU (oneDNN) and fine on GPU.
        self.to(memory_format=torch.channels_last)
        self.encode_options = EncodeOptions()
        self._compiled_latents: Any = None

    def set_encode_options(self, options: EncodeOptions | None = None, **fields: Any) -> None:
        """Chooses how ``encode`` runs (see ``EncodeOptions``); weights are not changed.

        Args:
            options: The options (default: ``EncodeOptions()``), or None with ``fields``.
            **fields: ``EncodeOptions`` fields, applied on top of ``options``.

        Raises:
            ValueError: Invalid options.
        """
        options = dataclasses.replace(options or EncodeOptions(), **fields)
        fmt = torch.channels_last if options.channels_last else torch.contiguous_format
        if options.channels_last != self.encode_options.channels_last:
            self.to(memory_format=fmt)
        if options.compile and (self._compiled_latents is None or options != self.encode_options):
            # A fresh compiled function per option set: autocast and layout are baked in.
            self._compiled_latents = torch.compile(self._latents_from_images, dynamic=False)
        elif not options.compile:
            self._compiled_latents = None
        self.encode_options = options

    def compile_encoder(self) -> None:
        """Shorthand for ``set_encode_options(self.encode_options, compile=True)``."""
        self.set_encode_options(self.encode_options, compile=True)

    # -- sizes -------------------------------------------------------------------------------

    @property
    def grid_size(self) -> int:
        """Side of the code grid (h = w)."""
        return self.config.grid_size

    @property
    def codes_per_image(self) -> int:
        """Codes per image, ``grid_size ** 2``."""
        return self.config.codes_per_image

    @property
    def num_codes(self) -> int:
        """Number of distinct codes (codebook size); codes lie in [0, num_codes)."""
        return self.config.codebook_size

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook, (codebook_size, code_dim)."""
        return self.quantize.codebook

    @property
    def codebook_initialised(self) -> bool:
        """False until k-means init ran (an untrained k-means codebook is all zeros)."""
        return bool(self.quantize._codebook.initted.item())

    # -- building blocks ---------------------------------------------------------------------

    def to_model_input(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``images_to_model_input`` for this model's size and channels.

        Args:
            images: uint8 or [-1, 1] float, (B, H, W) or (B, C, H, W).

        Returns:
            float32 (B, in_channels, image_size, image_size) on the model's device.
        """
        x = images_to_model_input(images, self.config.image_size, self.config.in_channels)
        return x.to(self.conv_in_weight.device)

    @property
    def conv_in_weight(self) -> torch.Tensor:
        """First conv weight (used to find the model's device/dtype)."""
        return self.encoder.conv_in.weight

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous pre-quantization latents.

        Args:
            x: float (B, in_channels, S, S) in [-1, 1].

        Returns:
            float (B, code_dim, h, w).
        """
        fmt = torch.channels_last if self.encode_options.channels_last else torch.contiguous_format
        return self.quant_conv(self.encoder(x.contiguous(memory_format=fmt)))

    def _latents_from_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (uint8 of the right size, or [-1, 1] float) -> fp32 latents.

        The body of the compiled graph (and of the eager path for non-default options): the
        uint8 conversion is the same expression as ``images_to_model_input``.
        """
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        if x.shape[1] != self.config.in_channels:
            x = x.expand(-1, self.config.in_channels, -1, -1)
        if self.encode_options.precision != "float32":
            dtype = getattr(torch, self.encode_options.precision)
            with torch.autocast(device_type=x.device.type, dtype=dtype):
                z = self.encode_latents(x)
        else:
            z = self.encode_latents(x)
        return z.float()

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codebook entry (L2) for every latent vector; deterministic.

        Args:
            z: float (B, code_dim, h, w).

        Returns:
            int64 (B, h, w).
        """
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        embed = self.codebook.float()
        e_sq = embed.pow(2).sum(dim=1)[None, :]
        # argmin ||z - e||^2 = argmin (||e||^2 - 2 z.e); ||z||^2 is constant per row. Rows are
        # chunked so the distance matrix stays small (<= 64 MiB at 8,192 codes).
        if flat.device.type == "cuda":  # one GEMM with the bias in its epilogue; 512 MiB chunks
            rows = max(1, (1 << 27) // embed.shape[0])
            idx = [
                torch.addmm(e_sq, part, embed.t(), alpha=-2.0).argmin(dim=1)
                for part in flat.split(rows)
            ]
            return torch.cat(idx).view(b, h, w)
        rows = max(1, (1 << 24) // embed.shape[0])
        idx = [(e_sq - 2.0 * part @ embed.t()).argmin(dim=1) for part in flat.split(rows)]
        return torch.cat(idx).view(b, h, w)

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """Looks codes up in the codebook.

        Args:
            codes: int (B, h, w) in [0, codebook_size).

        Returns:
            float (B, code_dim, h, w).
        """
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.ndim != 3:
            raise ValueError(f"codes must be (B, h, w), got shape {tuple(codes.shape)}")
        if codes.numel():
            lo, hi = int(codes.min()), int(codes.max())
            if lo < 0 or hi >= self.num_codes:
                raise ValueError(f"codes must lie in [0, {self.num_codes}), got [{lo}, {hi}]")
        embed = self.codebook
        q = embed[codes.long().to(embed.device)]
        return q.permute(0, 3, 1, 2).contiguous()

    def decode_latents(self, q: torch.Tensor) -> torch.Tensor:
        """Decodes quantized latents.

        Args:
            q: float (B, code_dim, h, w).

        Returns:
            float (B, in_channels, S, S), unclamped.
        """
        q = q.contiguous(memory_format=torch.channels_last)
        return self.decoder(self.post_quant_conv(q))

    # -- public API --------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Auto-encodes a batch.

        Args:
            x: float (B, in_channels, S, S) in [-1, 1] (see ``to_model_input``).

        Returns:
            ``(recon, commit_loss, codes)``: recon float (B, in_channels, S, S) (unclamped),
            commit_loss a scalar (already weighted by ``commitment_weight``), codes int64 (B, h, w).
        """
        z = self.encode_latents(x)
        if self.training:
            q, codes, commit_loss = self.quantize(z)
            commit_loss = commit_loss.reshape(())
        else:
            codes = self.nearest_codes(z)
            q = self.codes_to_latents(codes).to(z.dtype)
            commit_loss = F.mse_loss(q, z) * self.config.commitment_weight
        return self.decode_latents(q), commit_loss, codes.long()

    def encode(
        self, images: torch.Tensor | np.ndarray, batch_size: int | None = None
    ) -> torch.Tensor:
        """Tokenizes images.

        Args:
            images: uint8 (B, H, W) / (B, 1, H, W) or float in [-1, 1]; resized if not square
                ``image_size``.
            batch_size: Chunk size (None: ``CPU_CHUNK`` on CPU, everything at once elsewhere).

        Returns:
            int64 (B, h, w) codes in [0, codebook_size), raster order, on CPU.
        """
        out = [torch.empty(0, self.grid_size, self.grid_size, dtype=torch.long)]
        out.append(self.encode_on_device(images, batch_size=batch_size).cpu())
        return torch.cat(out)

    def encode_on_device(
        self,
        images: torch.Tensor | np.ndarray,
        batch_size: int | None = None,
        pad_to: int | None = None,
    ) -> torch.Tensor:
        """``encode`` without the copy back: codes stay on the model's device, no sync.

        Args:
            images: As for ``encode``; uint8 input may live on the host (pinned memory is
                copied with ``non_blocking``) and is converted to float on the device.
            batch_size: Chunk size (None: ``CPU_CHUNK`` on CPU, everything at once elsewhere).
            pad_to: With ``compile`` and no ``batch_size`` off the CPU: chunks of at least
                this many images, zero-padded to it, so the compiled graph sees one shape
                (padded rows are dropped). Compiled chunks are always padded to the chunk size.

        Returns:
            int64 (B, h, w) codes on the model's device.
        """
        images = _as_tensor(images)
        device = self.conv_in_weight.device
        opts = self.encode_options
        out = []
        if batch_size is None and device.type != "cpu" and pad_to:
            batch_size = max(pad_to, images.shape[0])
        step = batch_size or (CPU_CHUNK if device.type == "cpu" else images.shape[0])
        with (
            torch.inference_mode(),
            _cudnn_benchmark(opts.cudnn_benchmark and device.type == "cuda"),
        ):
            for chunk in _chunks(images, batch_size, device):
                if opts.is_default_eager:  # the reference path, unchanged
                    if device.type != "cpu":  # uint8 over the bus, float made on the device
                        chunk = chunk.to(device, non_blocking=chunk.is_pinned())
                    x = self.to_model_input(chunk)
                    out.append(self.nearest_codes(self.encode_latents(x)))
                    continue
                x = self._fast_input(chunk, device)
                n = x.shape[0]
                if self._compiled_latents is not None:
                    if n < step:
                        x = torch.cat([x, x.new_zeros((step - n, *x.shape[1:]))])
                    z = self._compiled_latents(x)[:n]
                else:
                    z = self._latents_from_images(x)
                out.append(self.nearest_codes(z))
        if not out:
            return torch.empty(0, self.grid_size, self.grid_size, dtype=torch.long, device=device)
        return torch.cat(out) if len(out) > 1 else out[0]

    def _fast_input(self, chunk: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 of the model's size stays uint8 (converted inside the graph), else float."""
        size = self.config.image_size
        x = chunk.unsqueeze(1) if chunk.ndim == 3 else chunk
        if x.dtype == torch.uint8 and x.ndim == 4 and tuple(x.shape[-2:]) == (size, size):
            if x.shape[1] not in (1, self.config.in_channels):
                raise ValueError(
                    f"images have {x.shape[1]} channels, model expects 1 or "
                    f"{self.config.in_channels}"
                )
            return x.to(device, non_blocking=x.is_pinned())
        return self.to_model_input(x.to(device, non_blocking=x.is_pinned()))

    def decode(
        self, codes: torch.Tensor, batch_size: int | None = None, keep_channels: bool = False
    ) -> torch.Tensor:
        """Reconstructs images from codes.

        Args:
            codes: int (B, h, w) in [0, codebook_size).
            batch_size: Chunk size (None: ``CPU_CHUNK`` on CPU, everything at once elsewhere).
            keep_channels: Return all ``in_channels`` channels instead of grey.

        Returns:
            float (B, 1, S, S) in [-1, 1] on CPU (RGB models are averaged to grey unless
            ``keep_channels``).
        """
        codes = _as_tensor(codes)
        size, c = self.config.image_size, self.config.in_channels if keep_channels else 1
        out = [torch.empty(0, c, size, size)]
        with torch.inference_mode():
            for chunk in _chunks(codes, batch_size, self.conv_in_weight.device):
                rec = self.decode_latents(self.codes_to_latents(chunk)).clamp(-1.0, 1.0)
                if not keep_channels and rec.shape[1] != 1:
                    rec = rec.mean(dim=1, keepdim=True)
                out.append(rec.float().cpu())
        return torch.cat(out)

    def reconstruct(
        self, images: torch.Tensor | np.ndarray, batch_size: int | None = None
    ) -> torch.Tensor:
        """``decode(encode(images))``.

        Args:
            images: As for ``encode``.
            batch_size: Chunk size.

        Returns:
            float (B, 1, S, S) in [-1, 1].
        """
        return self.decode(self.encode(images, batch_size=batch_size), batch_size=batch_size)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _config_json(config: VQConfig) -> bytes:
    doc = {
        "format": _CHECKPOINT_FORMAT,
        "format_version": _CHECKPOINT_FORMAT_VERSION,
        "config": config.to_dict(),
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def write_checkpoint_files(model: VQTokenizer, folder: str | Path) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into the existing, private ``folder``.

    For a folder nobody reads yet (an ``atomic_dir`` staging folder, a Ray Train checkpoint
    folder); ``save_checkpoint`` publishes a folder atomically.

    Returns:
        ``folder`` as a Path.
    """
    from safetensors.torch import save

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    (folder / CHECKPOINT_WEIGHTS_FILE).write_bytes(
        save(state, metadata={"format": _CHECKPOINT_FORMAT})
    )
    (folder / CHECKPOINT_CONFIG_FILE).write_bytes(_config_json(model.config))
    return folder


def save_checkpoint(model: VQTokenizer, path_dir: str | Path) -> Path:
    """Write ``model.safetensors`` + ``config.json`` as the folder ``path_dir``, atomically.

    Through ``cxr.storage.atomic_dir``: the files go to a hidden sibling folder, are fsynced and
    the folder is swapped into place, so readers see the complete old checkpoint or the complete
    new one, never a mix (an existing ``path_dir`` is replaced as a whole).

    Args:
        model: The tokenizer.
        path_dir: Target directory.

    Returns:
        ``path_dir`` as a Path.
    """
    from cxr.storage import atomic_dir

    path_dir = Path(path_dir)
    with atomic_dir(path_dir) as tmp:
        write_checkpoint_files(model, tmp)
    return path_dir


def load_checkpoint(path_dir: str | Path, map_location: str | torch.device = "cpu") -> VQTokenizer:
    """Loads a ``save_checkpoint`` directory (strict key check), in eval mode.

    Args:
        path_dir: Directory with ``model.safetensors`` and ``config.json``.
        map_location: Device for the weights.

    Returns:
        The tokenizer, ``eval()``-ed.

    Raises:
        FileNotFoundError: A file is missing.
        ValueError: Wrong format or keys/shapes that do not match the config.
    """
    from safetensors.torch import load_file

    path_dir = Path(path_dir)
    cfg_path, w_path = path_dir / CHECKPOINT_CONFIG_FILE, path_dir / CHECKPOINT_WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"VQ checkpoint file missing: {p}")
    doc = json.loads(cfg_path.read_text())
    if doc.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(
            f"{cfg_path} is not a {_CHECKPOINT_FORMAT} config (format={doc.get('format')!r})"
        )
    if doc.get("format_version") != _CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"unsupported checkpoint format_version {doc.get('format_version')!r}")
    model = VQTokenizer(VQConfig.from_dict(doc["config"]))
    state = load_file(str(w_path), device=str(map_location))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path_dir} does not match its config: {exc}") from exc
    return model.to(map_location).eval()


def checkpoint_sha256(path_dir: str | Path) -> str:
    """SHA-256 over ``config.json`` and ``model.safetensors`` (names and bytes, fixed order).

    Args:
        path_dir: A ``save_checkpoint`` directory.

    Returns:
        Hex digest; identical models saved twice give the same digest.
    """
    path_dir = Path(path_dir)
    h = hashlib.sha256()
    for name in (CHECKPOINT_CONFIG_FILE, CHECKPOINT_WEIGHTS_FILE):
        h.update(name.encode() + b"\0")
        with open(path_dir / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# taming / Chameleon / CheXmix vqgan.ckpt import

_RESNET_LEAF = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2"}
_RESNET_LEAF["conv_shortcut"] = "nin_shortcut"
_ATTN_LEAF = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_DERIVED_KEYS = frozenset(
    {
        "quantize._codebook.embed_avg",
        "quantize._codebook.cluster_size",
        "quantize._codebook.initted",
    }
)
_CODEBOOK_KEY = "quantize._codebook.embed"


def _leaf(rest: str, table: Mapping[str, str], key: str) -> str:
    module, _, param = rest.rpartition(".")
    if module not in table or param not in ("weight", "bias"):
        raise KeyError(f"no taming counterpart for tokenizer key {key!r}")
    return f"{table[module]}.{param}"


def tokenizer_key_to_taming(key: str, num_levels: int) -> str | None:
    """Maps one ``VQTokenizer`` state-dict key to its taming ``VQModel`` key.

    The table (``L = num_levels``; decoder levels are stored in reverse order by taming)::

        encoder|decoder.conv_in|conv_out.*           -> same
        encoder|decoder.conv_norm_out.*              -> encoder|decoder.norm_out.*
        quant_conv.*, post_quant_conv.*              -> same
        quantize._codebook.embed (1, K, D)           -> quantize.embedding.weight (K, D)
        X.mid_block.resnets.{0,1}.R                  -> X.mid.block_{1,2}.R'
        X.mid_block.attentions.0.A                   -> X.mid.attn_1.A'
        encoder.down_blocks.{i}.resnets.{j}.R        -> encoder.down.{i}.block.{j}.R'
        encoder.down_blocks.{i}.attentions.{j}.A     -> encoder.down.{i}.attn.{j}.A'
        encoder.down_blocks.{i}.downsamplers.0.conv  -> encoder.down.{i}.downsample.conv
        decoder.up_blocks.{k}.resnets.{j}.R          -> decoder.up.{L-1-k}.block.{j}.R'
        decoder.up_blocks.{k}.attentions.{j}.A       -> decoder.up.{L-1-k}.attn.{j}.A'
        decoder.up_blocks.{k}.upsamplers.0.conv      -> decoder.up.{L-1-k}.upsample.conv
        R: norm1, conv1, norm2, conv2 same; conv_shortcut -> nin_shortcut (1x1)
        A: group_norm -> norm; to_q/to_k/to_v -> q/k/v; to_out.0 -> proj_out
           (Linear (C, C) weights <-> 1x1 Conv (C, C, 1, 1) weights)

    Args:
        key: Tokenizer state-dict key.
        num_levels: ``config.num_levels``.

    Returns:
        The taming key, or None for the quantizer's EMA bookkeeping buffers (``embed_avg``,
        ``cluster_size``, ``initted``), which taming does not have and the import derives.

    Raises:
        KeyError: The key has no taming counterpart (should not happen for a built model).
    """
    if key in _DERIVED_KEYS:
        return None
    if key == _CODEBOOK_KEY:
        return "quantize.embedding.weight"
    if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.(weight|bias)", key) or re.fullmatch(
        r"(quant_conv|post_quant_conv)\.(weight|bias)", key
    ):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", key)
    if m:
        return f"{m[1]}.norm_out.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_leaf(m[3], _RESNET_LEAF, key)}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key)
    if m:
        return f"{m[1]}.mid.attn_1.{_leaf(m[2], _ATTN_LEAF, key)}"
    m = re.fullmatch(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.(.+)", key)
    if m:
        part, level, rest = m[1], int(m[2]), m[3]
        if part == "decoder.up":
            level = num_levels - 1 - level
        if level < 0 or level >= num_levels:
            raise KeyError(f"level out of range in tokenizer key {key!r}")
        m2 = re.fullmatch(r"resnets\.(\d+)\.(.+)", rest)
        if m2:
            return f"{part}.{level}.block.{m2[1]}.{_leaf(m2[2], _RESNET_LEAF, key)}"
        m2 = re.fullmatch(r"attentions\.(\d+)\.(.+)", rest)
        if m2:
            return f"{part}.{level}.attn.{m2[1]}.{_leaf(m2[2], _ATTN_LEAF, key)}"
        m2 = re.fullmatch(r"(downsamplers|upsamplers)\.0\.conv\.(weight|bias)", rest)
        if m2:
            name = "downsample" if m2[1] == "downsamplers" else "upsample"
            return f"{part}.{level}.{name}.conv.{m2[2]}"
    raise KeyError(f"no taming counterpart for tokenizer key {key!r}")


def _is_attn_linear_weight(key: str) -> bool:
    return (
        ".attentions." in key
        and re.search(r"\.(to_q|to_k|to_v|to_out\.0)\.weight$", key) is not None
    )


def taming_key_table(model: VQTokenizer) -> dict[str, str]:
    """The full taming-key -> tokenizer-key table for ``model`` (derived buffers excluded).

    Args:
        model: A tokenizer (may live on the ``meta`` device).

    Returns:
        ``{taming_key: tokenizer_key}``.
    """
    n = model.config.num_levels
    table: dict[str, str] = {}
    for key in model.state_dict():
        t = tokenizer_key_to_taming(key, n)
        if t is not None:
            table[t] = key
    return table


def _to_taming_tensor(key: str, value: torch.Tensor) -> torch.Tensor:
    if key == _CODEBOOK_KEY:
        return value[0]
    if _is_attn_linear_weight(key):
        return value[:, :, None, None]
    return value


def _from_taming_tensor(key: str, value: torch.Tensor) -> torch.Tensor:
    if key == _CODEBOOK_KEY:
        return value[None]
    if _is_attn_linear_weight(key):
        return value.reshape(value.shape[0], value.shape[1])
    return value


def _taming_shape_ok(key: str, taming: torch.Tensor, ours: torch.Tensor) -> bool:
    if _is_attn_linear_weight(key):
        return tuple(taming.shape) == (*ours.shape, 1, 1)
    if key == _CODEBOOK_KEY:
        return tuple(taming.shape) == tuple(ours.shape[1:])
    return tuple(taming.shape) == tuple(ours.shape)


def export_taming_state_dict(model: VQTokenizer) -> dict[str, torch.Tensor]:
    """The model's weights under taming ``VQModel`` key names and shapes (inverse of the import).

    Args:
        model: The tokenizer.

    Returns:
        ``{taming_key: tensor}`` (a copy, on CPU).
    """
    state = model.state_dict()
    return {
        t: _to_taming_tensor(k, state[k]).detach().cpu().clone()
        for t, k in taming_key_table(model).items()
    }


def _read_taming_state_dict(path: Path, allow_pickle: bool) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:
        if allow_pickle:
            raise
        raise ValueError(
            f"cannot read {path} with torch.load(weights_only=True) ({type(exc).__name__}: {exc}). "
            "Lightning checkpoints sometimes pickle extra objects; if you trust the file, pass "
            "allow_pickle=True."
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        return dict(obj["state_dict"])
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise ValueError(f"{path} holds neither a {{'state_dict': ...}} dict nor a plain state dict")


def _list_keys(label: str, keys: list[str], limit: int = 40) -> str:
    shown = ", ".join(keys[:limit])
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{label} ({len(keys)}): {shown}{more}"


def import_taming_checkpoint(
    path: str | Path | Mapping[str, Any],
    config: VQConfig,
    ignored_prefixes: tuple[str, ...] = TAMING_IGNORED_PREFIXES,
    allow_pickle: bool = False,
) -> VQTokenizer:
    """Loads a taming-transformers ``VQModel`` checkpoint (Chameleon / CheXmix ``vqgan.ckpt``).

    Strict, unlike the CheXmix release (which loads with ``strict=False`` and hides mismatches):
    every tokenizer parameter must be filled and every checkpoint key must be used, except keys
    under ``ignored_prefixes`` (default ``loss.``: taming's discriminator and LPIPS weights). The
    quantizer's EMA buffers, which taming has no equivalent for, are derived from the codebook:
    ``cluster_size = threshold_ema_dead_code + 1`` for every code (so fine-tuning does not
    immediately recycle the pretrained codebook), ``embed_avg = embed * cluster_size`` and
    ``initted = True`` (k-means init is skipped).

    Chameleon/CheXmix VQGANs are RGB: build ``config`` with ``in_channels=3``
    (e.g. ``config_from_preset("chexmix", in_channels=3)``); grey CXRs are then repeated to three
    channels by ``encode`` and ``decode`` averages the three output channels.

    Args:
        path: A torch file whose ``"state_dict"`` (or top level) holds taming keys, or such a
            mapping already loaded.
        config: Must describe the checkpoint's architecture.
        ignored_prefixes: Checkpoint key prefixes to skip on purpose.
        allow_pickle: Use ``torch.load(weights_only=False)``; only for trusted files.

    Returns:
        The tokenizer in eval mode.

    Raises:
        ValueError: Missing, unexpected or mis-shaped keys (all listed), or an unreadable file.
    """
    if isinstance(path, Mapping):
        src = dict(path["state_dict"]) if "state_dict" in path else dict(path)
        origin = "<mapping>"
    else:
        src = _read_taming_state_dict(Path(path), allow_pickle)
        origin = str(path)
    model = VQTokenizer(config)
    table = taming_key_table(model)
    ours = model.state_dict()
    ignored = [k for k in src if k.startswith(tuple(ignored_prefixes))]
    ignored_set = set(ignored)
    unexpected = sorted(k for k in src if k not in table and k not in ignored_set)
    missing = sorted(k for k in table if k not in src)
    non_tensor = sorted(k for k in src if k in table and not isinstance(src[k], torch.Tensor))
    mismatched = []
    for k, o_key in table.items():
        value = src.get(k)
        if isinstance(value, torch.Tensor) and not _taming_shape_ok(o_key, value, ours[o_key]):
            want = tuple(_to_taming_tensor(o_key, ours[o_key]).shape)
            mismatched.append(f"{k} {tuple(value.shape)} vs expected {want}")
    mismatched.sort()
    if missing or unexpected or mismatched or non_tensor:
        parts = [f"taming checkpoint {origin} does not match VQConfig {config}"]
        if missing:
            parts.append(_list_keys("missing keys", missing))
        if unexpected:
            parts.append(_list_keys("unexpected keys", unexpected))
        if mismatched:
            parts.append(_list_keys("shape mismatches", mismatched))
        if non_tensor:
            parts.append(_list_keys("non-tensor values", non_tensor))
        raise ValueError("\n".join(parts))
    new_state: dict[str, torch.Tensor] = {}
    for t_key, o_key in table.items():
        new_state[o_key] = _from_taming_tensor(o_key, src[t_key]).to(ours[o_key].dtype)
    embed = new_state[_CODEBOOK_KEY]
    cluster = torch.full_like(
        ours["quantize._codebook.cluster_size"], config.threshold_ema_dead_code + 1.0
    )
    new_state["quantize._codebook.cluster_size"] = cluster
    new_state["quantize._codebook.embed_avg"] = embed * cluster[..., None]
    new_state["quantize._codebook.initted"] = torch.tensor(True)
    model.load_state_dict(new_state, strict=True)
    return model.eval()
