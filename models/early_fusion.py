"""The early-fusion language model: Phi presets, construction and pretrained-weight loading.

CheXmix has no image encoder and no projection layer: one decoder-only transformer (RadPhi-2, a
``PhiForCausalLM``) models VQ image codes and report tokens in one sequence, its embedding and
LM head extended to the unified vocabulary of :class:`models.vocabulary.Vocabulary`.

Presets (``LM_PRESETS``):

- ``debug``: hidden 64, 2 layers, 4 heads; tests only.
- ``tiny``: hidden 128, 4 layers, 4 heads (about 1.2M parameters with the demo's vocabulary);
  the CPU demo preset: about three times the sequences per CPU-second of ``small``, which is
  what the demo's fixed time budget needs (``bench/demo_budget.py``).
- ``small``: hidden 256, 4 layers, 8 heads (about 3M parameters besides the embedding and the
  LM head, which scale with the vocabulary); trains in minutes on 2 cores.
- ``radphi2``: Phi-2's shape (32 layers, hidden 2560, 32 heads, intermediate 10240, partial
  rotary factor 0.4, about 2.8B parameters); build it from scratch or, as CheXmix does, load
  RadPhi-2 weights from a local directory with :func:`load_pretrained`.

Nothing here downloads: models are built from a ``PhiConfig`` or loaded with
``local_files_only=True``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PhiConfig, PhiForCausalLM

from models.vocabulary import Vocabulary

__all__ = [
    "EMBEDDING_KEYS",
    "LM_PRESETS",
    "LMConfig",
    "PretrainedLoadReport",
    "build_model",
    "count_parameters",
    "lm_config_from_preset",
    "load_pretrained",
    "phi_config",
    "unwrap_model",
]

#: Tensors whose first dimension is the vocabulary (resized to ``Vocabulary.size``).
EMBEDDING_KEYS = ("model.embed_tokens.weight", "lm_head.weight", "lm_head.bias")


@dataclass(frozen=True)
class LMConfig:
    """Shape of the Phi decoder (everything except the vocabulary and the context length).

    Attributes:
        name: Preset name (informational).
        hidden_size: Model width.
        num_layers: Decoder layers.
        num_heads: Attention heads (``hidden_size`` must be divisible by it).
        intermediate_size: MLP width.
        partial_rotary_factor: Fraction of each head's dimensions that get rotary embeddings
            (Phi-2: 0.4).
        rope_theta: Rotary base.
        hidden_act: MLP activation (Phi: ``gelu_new``).
        layer_norm_eps: LayerNorm epsilon.
        dropout: Residual, embedding and attention dropout (0 keeps CPU runs deterministic).
        initializer_range: Std of the normal weight init.
    """

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    hidden_act: str = "gelu_new"
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        errors = []
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads >= 1 and self.hidden_size % self.num_heads:
            errors.append(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        elif self.num_heads >= 1:
            rotary = int(self.hidden_size // self.num_heads * self.partial_rotary_factor)
            if rotary < 2 or rotary % 2:
                errors.append(
                    f"head_dim {self.hidden_size // self.num_heads} x partial_rotary_factor "
                    f"{self.partial_rotary_factor} = {rotary} rotary dims: must be even and >= 2"
                )
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            errors.append(
                f"partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}"
            )
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"dropout must be in [0, 1), got {self.dropout}")
        if errors:
            raise ValueError("invalid LMConfig: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        return cls(**data)


LM_PRESETS: dict[str, LMConfig] = {
    "debug": LMConfig("debug", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256),
    "tiny": LMConfig("tiny", hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
    "small": LMConfig("small", hidden_size=256, num_layers=4, num_heads=8, intermediate_size=1024),
    "radphi2": LMConfig(
        "radphi2",
        hidden_size=2560,
        num_layers=32,
        num_heads=32,
        intermediate_size=10240,
        partial_rotary_factor=0.4,
    ),
}


def lm_config_from_preset(name: str, **overrides: Any) -> LMConfig:
    """A preset, optionally with fields replaced.

    Args:
        name: One of ``LM_PRESETS``.
        **overrides: ``LMConfig`` fields to replace.

    Returns:
        The config.

    Raises:
        KeyError: Unknown preset.
    """
    if name not in LM_PRESETS:
        raise KeyError(f"unknown LM preset {name!r}; choose one of {sorted(LM_PRESETS)}")
    return dataclasses.replace(LM_PRESETS[name], **overrides)


def phi_config(lm_config: LMConfig, vocab: Vocabulary, max_positions: int) -> PhiConfig:
    """The ``PhiConfig`` of ``lm_config`` over ``vocab`` with ``max_positions`` positions.

    ``pad_token_id`` is ``vocab.pad_id`` (its embedding row stays zero and gets no gradient);
    ``bos`` and ``eos`` are ``<|img|>``, which opens every sequence and ends every report.
    """
    if max_positions < 8:
        raise ValueError(f"max_positions must be >= 8, got {max_positions}")
    return PhiConfig(
        vocab_size=vocab.size,
        hidden_size=lm_config.hidden_size,
        intermediate_size=lm_config.intermediate_size,
        num_hidden_layers=lm_config.num_layers,
        num_attention_heads=lm_config.num_heads,
        resid_pdrop=lm_config.dropout,
        embd_pdrop=lm_config.dropout,
        attention_dropout=lm_config.dropout,
        hidden_act=lm_config.hidden_act,
        max_position_embeddings=max_positions,
        initializer_range=lm_config.initializer_range,
        layer_norm_eps=lm_config.layer_norm_eps,
        use_cache=False,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": lm_config.rope_theta,
            "partial_rotary_factor": lm_config.partial_rotary_factor,
        },
        bos_token_id=vocab.image_start_id,
        eos_token_id=vocab.image_start_id,
        pad_token_id=vocab.pad_id,
    )


def build_model(lm_config: LMConfig, vocab: Vocabulary, max_positions: int) -> PhiForCausalLM:
    """A randomly initialised ``PhiForCausalLM`` (seed torch first for reproducible weights).

    Args:
        lm_config: Decoder shape (e.g. ``LM_PRESETS["small"]``).
        vocab: Unified vocabulary; the embedding and LM head get ``vocab.size`` rows.
        max_positions: Context length (sequence of N image codes and T report tokens needs
            N + T + 4).

    Returns:
        The model in float32, train mode.
    """
    model = PhiForCausalLM(phi_config(lm_config, vocab, max_positions))
    model.train()
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP/FSDP-style wrappers (``.module``), else ``model``."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------
# Pretrained weights


@dataclass
class PretrainedLoadReport:
    """What :func:`load_pretrained` did with each tensor of a checkpoint.

    Attributes:
        source: The checkpoint directory.
        loaded: Model tensors found in the checkpoint with the right shape.
        missing: Model tensors the checkpoint lacks (left at their random init).
        unexpected: Checkpoint tensors the model has no place for (ignored).
        mismatched: ``(name, checkpoint shape, model shape)`` of tensors not loaded because of
            their shape.
        resized: Vocabulary-sized tensors resized to ``Vocabulary.size``:
            name -> ``(old shape, new shape)``.
        source_vocab_size: Rows of the checkpoint's embedding.
        target_vocab_size: ``Vocabulary.size``.
        kept_rows: Rows copied unchanged (the text ids, ``[0, vocab.text_vocab_size)``).
        mean_init_rows: Rows set to the mean of the kept rows (image codes, mask, pad; pad is
            then zeroed in the embedding).
    """

    source: str
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
    source_vocab_size: int
    target_vocab_size: int
    kept_rows: int
    mean_init_rows: int

    @property
    def problems(self) -> list[str]:
        """Missing, unexpected or mismatched tensors other than the resized vocabulary tensors."""
        out = [f"missing {k}" for k in self.missing if k not in EMBEDDING_KEYS]
        out += [f"unexpected {k}" for k in self.unexpected]
        out += [
            f"shape mismatch {k}: checkpoint {a} vs model {b}"
            for k, a, b in self.mismatched
            if k not in EMBEDDING_KEYS
        ]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            **dataclasses.asdict(self),
            "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched],
            "resized": {k: [list(a), list(b)] for k, (a, b) in self.resized.items()},
        }

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"{len(self.loaded)} tensors loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mismatched; vocabulary "
            f"{self.source_vocab_size} -> {self.target_vocab_size} rows ({self.kept_rows} kept, "
            f"{self.mean_init_rows} mean-initialised)"
        )


def _resize_rows(old: torch.Tensor, new_rows: int, keep: int) -> torch.Tensor:
    """``old`` (V, ...) -> (new_rows, ...): rows ``[0, keep)`` copied, the rest their mean."""
    new = old.new_empty((new_rows, *old.shape[1:]))
    mean = old[:keep].float().mean(dim=0).to(old.dtype)
    new[:keep] = old[:keep]
    new[keep:] = mean
    return new


def load_pretrained(
    path: str | Path,
    vocab: Vocabulary,
    strict_report: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[PhiForCausalLM, PretrainedLoadReport]:
    """Load a local Phi checkpoint (e.g. RadPhi-2) and extend it to the unified vocabulary.

    As CheXmix does, the embedding and the LM head (weight and bias) are resized to
    ``vocab.size`` rows. Text rows ``[0, vocab.text_vocab_size)`` are kept; every other row
    (image codes, mask, pad, and any padding rows of the original vocabulary that now hold image
    codes) starts at the mean of the kept rows, so no image code starts out far more or less
    likely than an average text token. The pad row of the embedding is zero (``padding_idx``).

    Args:
        path: Directory with ``config.json`` and safetensors weights of a ``PhiForCausalLM``
            (transformers layout).
        vocab: Target vocabulary; its text ids must be the checkpoint's tokenizer ids.
        strict_report: Raise when any tensor other than the vocabulary-sized ones is missing,
            unexpected or of the wrong shape.
        dtype: Dtype to load the weights in.

    Returns:
        ``(model, report)``: the resized model (train mode) and what was loaded.

    Raises:
        ValueError: The checkpoint's vocabulary is smaller than ``vocab.text_vocab_size``, or
            (with ``strict_report``) the report has problems.
    """
    path = Path(path)
    model, info = PhiForCausalLM.from_pretrained(
        path, local_files_only=True, output_loading_info=True, dtype=dtype
    )
    missing = sorted(info.get("missing_keys", []))
    unexpected = sorted(info.get("unexpected_keys", []))
    mismatched = sorted(
        (k, tuple(int(x) for x in a), tuple(int(x) for x in b))
        for k, a, b in info.get("mismatched_keys", [])
    )
    bad_names = set(missing) | {k for k, _, _ in mismatched}
    loaded = sorted(k for k in model.state_dict() if k not in bad_names)
    old_vocab = int(model.config.vocab_size)
    if old_vocab < vocab.text_vocab_size:
        raise ValueError(
            f"checkpoint {path} has {old_vocab} embedding rows but the vocabulary has "
            f"{vocab.text_vocab_size} text ids: is it the same text tokenizer?"
        )
    keep = vocab.text_vocab_size
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    with torch.no_grad():
        old_emb = model.model.embed_tokens.weight
        emb = nn.Embedding(vocab.size, old_emb.shape[1], padding_idx=vocab.pad_id).to(
            device=old_emb.device, dtype=old_emb.dtype
        )
        emb.weight.copy_(_resize_rows(old_emb, vocab.size, keep))
        emb.weight[vocab.pad_id].zero_()
        resized["model.embed_tokens.weight"] = (tuple(old_emb.shape), tuple(emb.weight.shape))
        model.model.embed_tokens = emb

        old_head = model.lm_head
        head = nn.Linear(old_head.in_features, vocab.size, bias=old_head.bias is not None).to(
            device=old_head.weight.device, dtype=old_head.weight.dtype
        )
        head.weight.copy_(_resize_rows(old_head.weight, vocab.size, keep))
        resized["lm_head.weight"] = (tuple(old_head.weight.shape), tuple(head.weight.shape))
        if old_head.bias is not None:
            head.bias.copy_(_resize_rows(old_head.bias, vocab.size, keep))
            resized["lm_head.bias"] = (tuple(old_head.bias.shape), tuple(head.bias.shape))
        model.lm_head = head
    model.config.vocab_size = vocab.size
    model.vocab_size = vocab.size
    model.model.vocab_size = vocab.size
    model.model.padding_idx = vocab.pad_id
    model.config.pad_token_id = vocab.pad_id
    model.config.bos_token_id = vocab.image_start_id
    model.config.eos_token_id = vocab.image_start_id
    model.config.use_cache = False
    report = PretrainedLoadReport(
        source=str(path),
        loaded=loaded,
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
        resized=resized,
        source_vocab_size=old_vocab,
        target_vocab_size=vocab.size,
        kept_rows=keep,
        mean_init_rows=vocab.size - keep,
    )
    if strict_report and report.problems:
        shown = "; ".join(report.problems[:20])
        more = len(report.problems) - 20
        raise ValueError(
            f"pretrained checkpoint {path} does not match PhiForCausalLM: {shown}"
            + (f" (+{more} more)" if more > 0 else "")
        )
    model.train()
    return model, report
