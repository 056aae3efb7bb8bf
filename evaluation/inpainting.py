"""Inpainting: predict masked image tokens in ONE forward pass, decode, compare pixels.

Stage 2 is trained for exactly this (masked input tokens, original targets). Masks are random
positions or one contiguous square block, at several ratios, seeded per image. The predicted
grid (unmasked codes kept, masked ones replaced by the arg-max over image codes) is decoded by
the image tokenizer and compared with (a) the original image and (b) the tokenizer's own
reconstruction of the unmasked codes: (b) isolates the transformer from the tokenizer's loss.
Image-blind baseline: every masked code filled with the most frequent TRAIN code at its grid
position. Stage 1 vs stage 2 comes from evaluating both checkpoints.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch import nn

from evaluation.data import EvalRows, batches, image_prefix_ids, mask_positions
from evaluation.results import MetricRow
from evaluation.stats import patient_bootstrap
from models.early_fusion import unwrap_model
from models.vocabulary import Vocabulary
from models.vq_tokenizer import VQTokenizer, to_uint8
from models.vq_train import psnr_uint8, ssim

TASK = "inpainting"


@dataclass(frozen=True)
class InpaintingConfig:
    """Settings of the inpainting benchmark.

    Attributes:
        mask_ratios: Fractions of image tokens masked.
        patterns: ``random`` and/or ``block``.
        n_boot: Bootstrap resamples.
        batch_size: Images per forward / decode pass.
        seed: Masking seed.
        example_images: Test images shown in the preview PNG.
    """

    mask_ratios: Sequence[float] = (0.2, 0.4, 0.6, 0.8)
    patterns: Sequence[str] = ("random", "block")
    n_boot: int = 500
    batch_size: int = 32
    seed: int = 0
    example_images: int = 4


@dataclass
class InpaintingResult:
    """Metric rows, per-sample scores and a preview PNG (originals / masked / inpainted)."""

    rows: list[MetricRow]
    samples: pl.DataFrame
    preview_png: bytes


def positionwise_mode(codes: np.ndarray, codebook_size: int) -> np.ndarray:
    """Most frequent code at each grid position over ``codes`` (M, N) -> (N,)."""
    counts = np.zeros((codes.shape[1], codebook_size), dtype=np.int64)
    for position in range(codes.shape[1]):
        counts[position] = np.bincount(codes[:, position], minlength=codebook_size)
    return counts.argmax(axis=1)


@torch.no_grad()
def predict_masked_codes(
    model: nn.Module, codes: np.ndarray, masks: np.ndarray, vocab: Vocabulary, batch_size: int
) -> np.ndarray:
    """One-pass inpainting: masked codes replaced by the model's arg-max image code.

    The code at grid position p sits at input index p + 1 (after ``<|img|>``) and is predicted
    by the logits at index p; only image-code ids compete.

    Returns:
        int64 (M, N): ``codes`` with the masked positions predicted.
    """
    core = unwrap_model(model)
    device = next(core.parameters()).device
    out = codes.copy()
    lo, hi = vocab.image_offset, vocab.image_offset + vocab.codebook_size
    for part in batches(len(codes), batch_size):
        ids = image_prefix_ids(codes[part], masks[part], vocab).to(device)
        logits = core(input_ids=ids, use_cache=False).logits[:, : codes.shape[1], lo:hi]
        predicted = logits.argmax(dim=-1).cpu().numpy()
        out[part] = np.where(masks[part], predicted, codes[part])
    return out


def decode_uint8(vq: VQTokenizer, codes: np.ndarray, batch_size: int) -> torch.Tensor:
    """uint8 (M, S, S) images decoded from int (M, N) raster-order codes."""
    grid = vq.grid_size
    out = []
    for part in batches(len(codes), batch_size):
        chunk = torch.as_tensor(codes[part]).view(-1, grid, grid)
        out.append(to_uint8(vq.decode(chunk, batch_size=batch_size)))
    return torch.cat(out)


def originals_at_tokenizer_size(vq: VQTokenizer, pixels: np.ndarray) -> torch.Tensor:
    """The stored images brought to the tokenizer's input (resize/crop), as uint8 (M, S, S)."""
    return to_uint8(vq.to_model_input(torch.as_tensor(pixels)).cpu())


def run_inpainting(
    model: nn.Module | None,
    vq: VQTokenizer,
    vocab: Vocabulary,
    test: EvalRows,
    pixels: np.ndarray,
    mode_codes: np.ndarray,
    config: InpaintingConfig,
) -> InpaintingResult:
    """The inpainting table for one checkpoint and the image-blind baseline.

    Args:
        model: The LM, or None for the baselines alone.
        vq: The image tokenizer that made the codes.
        vocab: Id layout.
        test: TEST rows.
        pixels: uint8 (M, H, W) originals of ``test`` (``load_pixels``).
        mode_codes: (N,) position-wise most frequent TRAIN code.
        config: Settings.
    """
    original = originals_at_tokenizer_size(vq, pixels)
    reconstruction = decode_uint8(vq, test.codes, config.batch_size)
    rows: list[MetricRow] = []
    frames = []
    ceiling = psnr_uint8(reconstruction, original).numpy()
    est = patient_bootstrap(
        test.patient_ids, lambda i: float(ceiling[i].mean()), config.n_boot, config.seed
    )
    rows.append(
        MetricRow(
            TASK,
            "vq_reconstruction",
            "psnr_vs_original",
            est.value,
            ci_low=est.ci_low,
            ci_high=est.ci_high,
            n=est.n,
            setting="no masking",
        )
    )
    examples: list[tuple[str, np.ndarray]] = []
    n = test.codes.shape[1]
    for pattern in config.patterns:
        for ratio in config.mask_ratios:
            masks = np.stack(
                [mask_positions(i, n, ratio, config.seed, pattern) for i in test.image_ids]
            )
            methods = {"image_blind_mode_fill": np.where(masks, mode_codes[None, :], test.codes)}
            if model is not None:
                methods["model"] = predict_masked_codes(
                    model, test.codes, masks, vocab, config.batch_size
                )
            for method, filled in methods.items():
                decoded = decode_uint8(vq, filled, config.batch_size)
                per_image = {
                    "psnr_vs_original": psnr_uint8(decoded, original).numpy(),
                    "psnr_vs_reconstruction": psnr_uint8(decoded, reconstruction).numpy(),
                    "ssim_vs_original": ssim(decoded.float(), original.float()).numpy(),
                    "ssim_vs_reconstruction": ssim(decoded.float(), reconstruction.float()).numpy(),
                    "masked_token_accuracy": np.array(
                        [
                            (f[m] == c[m]).mean() if m.any() else np.nan
                            for f, c, m in zip(filled, test.codes, masks, strict=True)
                        ]
                    ),
                }
                for metric, values in per_image.items():
                    est = patient_bootstrap(
                        test.patient_ids,
                        lambda i, v=values: float(np.nanmean(v[i])),
                        config.n_boot,
                        config.seed,
                    )
                    rows.append(
                        MetricRow(
                            TASK,
                            method,
                            metric,
                            est.value,
                            "",
                            float(ratio),
                            pattern,
                            est.ci_low,
                            est.ci_high,
                            est.n,
                        )
                    )
                frames.append(
                    pl.DataFrame(
                        {
                            "image_id": test.image_ids,
                            "patient_id": test.patient_ids,
                            "method": method,
                            "pattern": pattern,
                            "mask_ratio": float(ratio),
                            "masked_tokens": masks.sum(axis=1).astype(np.int32),
                            **{k: v.astype(np.float32) for k, v in per_image.items()},
                        }
                    )
                )
            if pattern == config.patterns[0] and ratio == _example_ratio(config.mask_ratios):
                k = min(config.example_images, len(test))
                blind = decode_uint8(vq, methods["image_blind_mode_fill"][:k], config.batch_size)
                masked_view = _masked_view(reconstruction[:k], masks[:k], vq.grid_size)
                examples = [
                    ("original", original[:k].numpy()),
                    ("VQ reconstruction", reconstruction[:k].numpy()),
                    (f"masked {ratio:.0%}", masked_view),
                    ("image-blind fill", blind.numpy()),
                ]
                if "model" in methods:
                    inpainted = decode_uint8(vq, methods["model"][:k], config.batch_size)
                    examples.append(("model, one pass", inpainted.numpy()))
    return InpaintingResult(rows, pl.concat(frames), _grid_png(examples))


def _example_ratio(ratios: Sequence[float]) -> float:
    return min(ratios, key=lambda r: abs(r - 0.4))


def _masked_view(images: torch.Tensor, masks: np.ndarray, grid: int) -> np.ndarray:
    """Images with masked token cells painted mid-grey."""
    out = images.numpy().copy()
    size = out.shape[-1]
    cell = size // grid
    for k, mask in enumerate(masks):
        for p in np.flatnonzero(mask):
            r, c = divmod(int(p), grid)
            out[k, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = 128
    return out


def _grid_png(columns: list[tuple[str, np.ndarray]]) -> bytes:
    if not columns:
        return b""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = columns[0][1].shape[0]
    fig, axes = plt.subplots(
        rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows), dpi=80, squeeze=False
    )
    for j, (title, images) in enumerate(columns):
        for i in range(rows):
            axes[i, j].imshow(images[i], cmap="gray", vmin=0, vmax=255)
            axes[i, j].axis("off")
        axes[0, j].set_title(title, fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
