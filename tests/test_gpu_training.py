"""GPU tier (``pytest -m gpu``; skipped without CUDA): the training paths on a real GPU.

- bf16 training of a reduced ``radphi2``-shaped model (Phi-2's width, heads, MLP and partial
  rotary, 2 blocks): the compiled + fused path follows the eager loop's loss curve within
  bf16 noise, and both learn;
- the Ray Train GPU worker path (1 worker) with FSDP at world size 1 (Ray's
  ``prepare_model(parallel_strategy="fsdp")``), DDP and no wrapper: the worker trains on the
  GPU, all three give the bare loop's losses (same seed, same data), and the FSDP checkpoint
  loads back with the DDP run's weights.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from models.early_fusion import LMConfig, build_model, lm_config_from_preset
from models.lm_data import InMemoryBatches, TokenShardBatches
from models.lm_train import LMTrainConfig, load_lm_checkpoint, train_lm
from models.vocabulary import Vocabulary

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SPECIALS = {"<|endoftext|>": 0, "<|img|>": 1, "<|/img|>": 2}


def reduced_radphi2() -> LMConfig:
    return dataclasses.replace(lm_config_from_preset("radphi2"), name="radphi2-2l", num_layers=2)


def random_rows(n: int, codes: int, codebook: int, text_vocab: int, seed: int = 0) -> list[dict]:
    """Rows of 1024 codes and 128 report tokens: 1156-token sequences, bench/train.py's shape
    (scripts/gpu_check.sh runs the benchmark first, so the compiled block comes from its cache)."""
    rng = np.random.default_rng(seed)
    return [
        {
            "image_codes": rng.integers(0, codebook, codes).astype(np.int16),
            "text_ids": rng.integers(3, text_vocab, 128).astype(np.int32),
        }
        for _ in range(n)
    ]


def train_losses(cfg: LMTrainConfig, lm_cfg: LMConfig, vocab: Vocabulary, rows: list[dict]):
    torch.manual_seed(cfg.seed)
    with torch.device("cuda"):
        model = build_model(lm_cfg, vocab, 1024 + 128 + 4)
    result = train_lm(model, InMemoryBatches(rows, vocab, cfg.batch_size), cfg)
    return [h["loss"] for h in result.history]


def test_bf16_compiled_training_follows_the_eager_loss_curve():
    vocab = Vocabulary.build(text_vocab_size=2048, codebook_size=1024, specials=SPECIALS)
    rows = random_rows(32, 1024, 1024, 2048)
    cfg = LMTrainConfig(
        stage=2, steps=12, batch_size=8, lr=3e-4, warmup_steps=2, log_every=1,
        checkpoint_every=0, dtype="bfloat16", max_text_tokens=128,
    )  # fmt: skip
    eager = train_losses(cfg, reduced_radphi2(), vocab, rows)
    compiled = train_losses(dataclasses.replace(cfg, compile=True), reduced_radphi2(), vocab, rows)
    rel = [abs(a - b) / a for a, b in zip(eager, compiled, strict=True)]
    assert max(rel) < 0.01, (eager, compiled)
    assert eager[-1] < eager[0] - 0.05 and compiled[-1] < compiled[0] - 0.05


# ----------------------------------------------------------------------------------------------
# Ray Train on the GPU


@pytest.fixture(scope="module")
def ray_gpu():
    import ray

    from pipelines.on_ray.startup import ensure_ray

    ensure_ray(min_cpus=2)
    if not ray.cluster_resources().get("GPU"):
        pytest.fail(f"Ray sees no GPU: {ray.cluster_resources()}")
    yield
    ray.shutdown()


def _shards(tmp_path: Path, vocab: Vocabulary) -> list[Path]:
    from bench.train import write_token_shards

    return write_token_shards(tmp_path / "tokens", 96, 64, 24, vocab, seed=0)


def _fit(tmp_path: Path, shards, vocab, train: dict, **extra) -> dict:
    from pipelines.on_ray.lm_training import fit_with_ray

    config = {
        "shard_paths": [str(p) for p in shards],
        "vocab": dataclasses.asdict(vocab),
        "train": train,
        "lm_preset": "small",
        "max_positions": 64 + 24 + 4,
        "shuffle": True,
        **extra,
    }
    name = f"gpu-{uuid.uuid4().hex[:8]}"
    return fit_with_ray(config, 1, True, str(tmp_path / "ray"), name, max_failures=0)


TRAIN = {
    "stage": 1, "steps": 8, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "log_every": 1,
    "checkpoint_every": 0, "max_text_tokens": 24, "dtype": "float32",
}  # fmt: skip


def test_ray_gpu_worker_fsdp_ddp_and_bare_loop_agree(tmp_path, ray_gpu):
    """One Ray GPU worker with FSDP (world size 1), DDP and no wrapper, and the bare loop."""
    vocab = Vocabulary.build(text_vocab_size=512, codebook_size=128, specials=SPECIALS)
    shards = _shards(tmp_path, vocab)
    losses, checkpoints = {}, {}
    for strategy in ("fsdp", "ddp", None):
        out = _fit(tmp_path, shards, vocab, TRAIN, parallel_strategy=strategy)
        summary = out["worker_summary"]
        assert summary["device"].startswith("cuda"), summary["device"]
        losses[strategy] = [h["loss"] for h in summary["history"]]
        checkpoints[strategy] = out["checkpoint_path"]

    cfg = LMTrainConfig(**TRAIN)
    torch.manual_seed(cfg.seed)
    with torch.device("cuda"):
        model = build_model(lm_config_from_preset("small"), vocab, 64 + 24 + 4)
    data = TokenShardBatches(
        shards, vocab, batch_size=8, max_text_tokens=24, split="train", shuffle=True, seed=0
    )
    losses["bare"] = [h["loss"] for h in train_lm(model, data, cfg).history]
    assert np.allclose(losses["fsdp"], losses["ddp"], rtol=1e-3), losses
    assert np.allclose(losses["ddp"], losses[None], rtol=1e-3), losses
    assert np.allclose(losses[None], losses["bare"], rtol=1e-3), losses
    model, info = load_lm_checkpoint(checkpoints["fsdp"])
    assert info["step"] == TRAIN["steps"]
    reference, _ = load_lm_checkpoint(checkpoints["ddp"])
    for (name, a), (_, b) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-4), name
