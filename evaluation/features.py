"""Image features: the transformer's hidden states over image positions, or a code histogram.

CheXmix classifies findings from the mean of one layer's hidden states over the image-token
positions (early-middle layers work best; the benchmark chooses among ``candidate_layers`` on
VALIDATE, all of them taken from one forward pass). Because attention is causal and the image
comes first, those states depend on the image tokens only, so only ``<|img|> codes <|/img|>``
is fed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from evaluation.data import batches, image_prefix_ids
from models.early_fusion import unwrap_model
from models.vocabulary import Vocabulary

#: Models with at most this many blocks have every layer as a candidate.
SMALL_MODEL_LAYERS = 12
#: Depth fractions of the candidate band of deeper models: 7-12 of 32 blocks (CheXmix).
DEFAULT_LAYER_BAND = (0.22, 0.375)


def resolve_layer(layer: int | float | None, num_layers: int) -> int:
    """A hidden-state index in [1, num_layers] from an index or a depth fraction.

    ``layer`` >= 1 is taken as is (1 = output of the first block); a float in (0, 1) is a
    fraction of the depth (CheXmix's 7-12 of 32 is about 0.3), rounded, at least 1. None (the
    findings default, where the layer is chosen on VALIDATE) gives the middle default candidate,
    for callers that need one representative layer without VALIDATE (timing, the fallback).
    """
    if layer is None:
        candidates = candidate_layers((), num_layers)
        return candidates[len(candidates) // 2]
    if isinstance(layer, float) and 0.0 < layer < 1.0:
        return max(1, round(layer * num_layers))
    layer = int(layer)
    if not 1 <= layer <= num_layers:
        raise ValueError(f"layer must lie in [1, {num_layers}] or be a fraction, got {layer}")
    return layer


def candidate_layers(candidates: Sequence[int | float], num_layers: int) -> list[int]:
    """The hidden-state indices to choose among on VALIDATE.

    Args:
        candidates: Layers (indices >= 1 or depth fractions); empty: every layer of a model of
            at most ``SMALL_MODEL_LAYERS`` blocks, otherwise the early-middle band
            ``DEFAULT_LAYER_BAND`` of the depth (7-12 of 32 for RadPhi-2, as CheXmix advises).
        num_layers: Transformer blocks.

    Returns:
        Sorted distinct indices in [1, num_layers].
    """
    if not candidates:
        if num_layers <= SMALL_MODEL_LAYERS:
            return list(range(1, num_layers + 1))
        low, high = (resolve_layer(f, num_layers) for f in DEFAULT_LAYER_BAND)
        return list(range(low, high + 1))
    return sorted({resolve_layer(c, num_layers) for c in candidates})


@torch.no_grad()
def hidden_state_features_by_layer(
    model: nn.Module,
    codes: np.ndarray,
    masks: np.ndarray | None,
    vocab: Vocabulary,
    layers: Sequence[int],
    batch_size: int = 32,
) -> dict[int, np.ndarray]:
    """Mean hidden state over the image-code positions of several layers, one forward pass.

    Args:
        model: A ``PhiForCausalLM`` (or a wrapper).
        codes: int (M, N) raw codes.
        masks: bool (M, N) positions replaced by the mask id, or None.
        vocab: Id layout.
        layers: Hidden-state indices (0 = embeddings, k = output of block k).
        batch_size: Images per forward pass.

    Returns:
        Layer -> float32 (M, hidden).
    """
    core = unwrap_model(model)
    device = next(core.parameters()).device
    out: dict[int, list[np.ndarray]] = {int(k): [] for k in layers}
    for part in batches(len(codes), batch_size):
        ids = image_prefix_ids(codes[part], None if masks is None else masks[part], vocab)
        states = core(
            input_ids=ids.to(device), output_hidden_states=True, use_cache=False
        ).hidden_states
        for layer, chunks in out.items():
            chunks.append(states[layer][:, 1:-1].float().mean(dim=1).cpu().numpy())
    return {layer: np.concatenate(chunks).astype(np.float32) for layer, chunks in out.items()}


def hidden_state_features(
    model: nn.Module,
    codes: np.ndarray,
    masks: np.ndarray | None,
    vocab: Vocabulary,
    layer: int,
    batch_size: int = 32,
) -> np.ndarray:
    """Mean hidden state of ``layer`` over the image-code positions.

    Args:
        model: A ``PhiForCausalLM`` (or a wrapper).
        codes: int (M, N) raw codes.
        masks: bool (M, N) positions replaced by the mask id, or None.
        vocab: Id layout.
        layer: Hidden-state index (0 = embeddings, k = output of block k).
        batch_size: Images per forward pass.

    Returns:
        float32 (M, hidden).
    """
    return hidden_state_features_by_layer(model, codes, masks, vocab, [layer], batch_size)[layer]


def code_histograms(codes: np.ndarray, masks: np.ndarray | None, codebook_size: int) -> np.ndarray:
    """Bag-of-image-codes: normalised code histogram over the VISIBLE codes (no transformer).

    Returns:
        float32 (M, codebook_size); an all-masked image gives a zero row.
    """
    codes = np.asarray(codes, dtype=np.int64)
    visible = np.ones(codes.shape, dtype=bool) if masks is None else ~np.asarray(masks)
    out = np.zeros((codes.shape[0], codebook_size), dtype=np.float32)
    rows = np.repeat(np.arange(codes.shape[0]), codes.shape[1])
    np.add.at(out, (rows[visible.reshape(-1)], codes.reshape(-1)[visible.reshape(-1)]), 1.0)
    counts = out.sum(axis=1, keepdims=True)
    return out / np.maximum(counts, 1.0)


def pixel_block_features(
    images: np.ndarray, masks: np.ndarray | None, grid: int, code_grid: int
) -> np.ndarray:
    """Position-aware pixel features: block means of (decoded) images on a ``grid`` x ``grid``.

    The findings task's "pixel ceiling": what a linear probe can read from the pixels that the
    image tokenizer lets through, position by position, with no transformer. Blocks under a
    masked image token are NaN (the caller imputes them, e.g. with TRAIN means), so masking
    hides the same pixels from this baseline as from the model.

    Args:
        images: uint8 or float (M, H, W) images, H and W divisible by ``grid``.
        masks: bool (M, code_grid**2) masked image-token positions (raster order), or None.
        grid: Blocks per side; a multiple of ``code_grid`` when ``masks`` is given.
        code_grid: Image tokens per side.

    Returns:
        float32 (M, grid * grid) block means in [0, 1] (NaN under masked tokens).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or images.shape[1] % grid or images.shape[2] % grid:
        raise ValueError(f"images must be (M, H, W) with H, W divisible by {grid}: {images.shape}")
    m, h, w = images.shape
    scale = 255.0 if images.max(initial=0.0) > 1.0 else 1.0
    blocks = images.reshape(m, grid, h // grid, grid, w // grid).mean(axis=(2, 4)) / scale
    if masks is not None:
        if grid % code_grid:
            raise ValueError(f"grid {grid} must be a multiple of the code grid {code_grid}")
        per = grid // code_grid
        hidden = np.asarray(masks, dtype=bool).reshape(m, code_grid, code_grid)
        hidden = hidden.repeat(per, axis=1).repeat(per, axis=2)
        blocks = np.where(hidden, np.nan, blocks)
    return blocks.reshape(m, grid * grid).astype(np.float32)
