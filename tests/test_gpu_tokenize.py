"""GPU tier (``pytest -m gpu``; skipped without CUDA): image tokenization on a real GPU.

- fp32 on CUDA vs the CPU reference: not bit-exact (cuDNN and oneDNN sum in different orders):
  >= 99.5% identical code positions with TF32 off, >= 99% with cuDNN's default TF32
  convolutions (10-bit mantissas, about fp16's rounding);
- the token_shards path on CUDA (pinned uint8 host->device copies, overlapped reader/writer
  threads) writes the codes of the bare encoder, and its fp16/bf16 + torch.compile settings
  agree with fp32 on >= 99.5% (fp16) of positions; bf16's agreement is reported and must stay
  >= 95% (bf16 keeps 3 fewer mantissa bits: 96-98% on these random models).

Models are seeded ``small``/``debug`` presets whose codebooks are sampled from their own latents
(``bench.tokenize.init_codebook_from_latents``), so nearest-code margins are realistic.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bench.tokenize import build_tokenizers, write_inputs
from cxr.token_shards import ShardTokenizer
from models.vq_tokenizer import EncodeOptions, load_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

AGREEMENT = 0.995


def agreement(a, b) -> float:
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    assert a.shape == b.shape
    return float((a == b).mean())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Per preset: image shards (60 images, 3 shards incl. a partial one), plan, tokenizers."""
    made = {}
    for preset, size in (("small", 128), ("debug", 32)):
        root = tmp_path_factory.mktemp(f"gpu_tokens_{preset}")
        tasks, pixels, texts = write_inputs(root, 60, size, 24, seed=1)
        build_tokenizers(root, preset, texts, 1, pixels)  # codebook init on the CPU
        tasks = [dataclasses.replace(t, input_hash=f"h-{t.shard}") for t in tasks]
        made[preset] = (root, tasks, pixels)
    return made


def worker(root, out: str, **options) -> ShardTokenizer:
    (root / out).mkdir(exist_ok=True)
    return ShardTokenizer(
        vq_dir=str(root / "vq"),
        text_tokenizer_dir=str(root / "text"),
        images_dir=str(root / "images"),
        plan_path=str(root / "plan.parquet"),
        out_dir=str(root / out),
        file_metadata={"chexmix.test": "gpu"},
        batch_size=16,
        device="cuda",
        **options,
    )


def shard_codes(root, out: str, tasks) -> np.ndarray:
    parts = [
        np.asarray(
            pq.read_table(root / out / f"{t.shard}.parquet").column("image_codes").to_pylist()
        )
        for t in tasks
    ]
    return np.concatenate(parts)


def test_cuda_fp32_codes_match_cpu(inputs):
    root, _, pixels = inputs["small"]
    images = torch.from_numpy(pixels)
    cpu = load_checkpoint(root / "vq").encode(images)
    gpu_model = load_checkpoint(root / "vq", map_location="cuda")
    tf32 = gpu_model.encode(images.cuda(), batch_size=16)
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        strict = gpu_model.encode(images.cuda(), batch_size=16)
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    assert tf32.device.type == "cpu" and tf32.shape == cpu.shape
    assert cpu.unique().numel() > 50  # codes are not degenerate
    assert agreement(strict, cpu) >= AGREEMENT, agreement(strict, cpu)
    assert agreement(tf32, cpu) >= 0.99, agreement(tf32, cpu)


def test_cuda_path_writes_the_bare_codes_and_fast_settings_agree(inputs):
    root, tasks, pixels = inputs["debug"]
    images = torch.from_numpy(pixels)
    fp32 = worker(root, "fp32")
    summaries = fp32.process_all(tasks)
    assert [s["num_rows"] for s in summaries] == [t.num_items for t in tasks]
    assert fp32.vq.conv_in_weight.device.type == "cuda"
    reference = shard_codes(root, "fp32", tasks)
    bare, start = [], 0
    for task in tasks:  # the path's batches: 16-image slices of each shard
        part = images[start : start + task.num_items].cuda()
        start += task.num_items
        bare.append(fp32.vq.encode(part, batch_size=16).reshape(task.num_items, -1).numpy())
    assert agreement(reference, np.concatenate(bare)) == 1.0  # same model, shapes, kernels
    cpu = load_checkpoint(root / "vq").encode(images).reshape(len(pixels), -1).numpy()
    assert agreement(reference, cpu) >= 0.99

    fast16 = worker(root, "fast16", precision="float16", compile=True)
    fast16.process_all(tasks)  # compiles on the first batch; the partial shard is padded
    codes16 = shard_codes(root, "fast16", tasks)
    assert agreement(codes16, reference) >= AGREEMENT, agreement(codes16, reference)
    assert fast16.vq.encode_options == EncodeOptions("float16", compile=True)

    bf16 = worker(root, "bf16", precision="bfloat16")
    bf16.process_all(tasks)
    codes_bf16 = shard_codes(root, "bf16", tasks)
    assert agreement(codes_bf16, reference) >= 0.95, agreement(codes_bf16, reference)
