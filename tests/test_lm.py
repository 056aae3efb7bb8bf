"""Early-fusion LM unit tests: presets, data, stage-2 masking, loss, training, checkpoints."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PhiConfig, PhiForCausalLM

from cxr.token_shards import LABEL_COLUMNS, token_schema
from models.early_fusion import (
    LM_PRESETS,
    build_model,
    count_parameters,
    lm_config_from_preset,
    load_pretrained,
    phi_config,
)
from models.lm_data import (
    IGNORE_INDEX,
    MODALITY_IMAGE,
    MODALITY_SPECIAL,
    MODALITY_TEXT,
    DataPosition,
    InMemoryBatches,
    TokenShardBatches,
    apply_stage2_masking,
    build_example,
    collate,
    iter_eval_batches,
    iter_positioned_rows,
    iter_token_rows,
)
from models.lm_train import (
    COMPLETE_MARKER,
    LMTrainConfig,
    evaluate_lm,
    latest_complete_checkpoint,
    lm_loss,
    load_lm_checkpoint,
    train_lm,
)
from models.vocabulary import Vocabulary

CODES = 16
CODEBOOK = 32


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build(
        text_vocab_size=300,
        codebook_size=CODEBOOK,
        specials={"<|endoftext|>": 0, "<|img|>": 1, "<|/img|>": 2},
    )


def random_rows(n: int, seed: int = 0, codes: int = CODES) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "image_codes": rng.integers(0, CODEBOOK, codes).astype(np.int16),
            "text_ids": rng.integers(3, 300, int(rng.integers(2, 10))).astype(np.int32),
        }
        for _ in range(n)
    ]


def write_shards(out_dir: Path, num_shards: int = 2, rows_per_shard: int = 20) -> list[Path]:
    """Token shards with the real schema: 8-row row groups, every 5th row in 'validate'."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(num_shards):
        rows = []
        for i, r in enumerate(random_rows(rows_per_shard, seed=shard)):
            n = shard * rows_per_shard + i
            rows.append(
                {
                    "image_id": f"img{n:04d}",
                    "study_id": f"s{n:04d}",
                    "patient_id": "p0",
                    "split": "validate" if i % 5 == 0 else "train",
                    "view_position": "PA",
                    "is_frontal": True,
                    "image_codes": r["image_codes"].tolist(),
                    "text_ids": r["text_ids"].tolist(),
                    "text_source": "findings",
                    **dict.fromkeys(LABEL_COLUMNS),
                }
            )
        path = out_dir / f"shard-{shard:05d}.parquet"
        pq.write_table(
            pa.Table.from_pylist(rows, schema=token_schema(CODES)), path, row_group_size=8
        )
        paths.append(path)
    return paths


def debug_model(vocab: Vocabulary, seed: int = 0) -> PhiForCausalLM:
    torch.manual_seed(seed)
    return build_model(LM_PRESETS["debug"], vocab, max_positions=64)


# ----------------------------------------------------------------------------------------------
# Presets and pretrained weights


def test_presets_build_with_vocab_sized_embeddings(vocab):
    from assets.stage_checkpoints import LM_PRESET_NAMES

    assert tuple(LM_PRESETS) == LM_PRESET_NAMES  # the launchpad's list is the models' list
    for name in ("debug", "tiny", "small"):
        preset = LM_PRESETS[name]
        model = build_model(preset, vocab, max_positions=128)
        assert model.config.hidden_size == preset.hidden_size
        assert model.config.num_hidden_layers == preset.num_layers
        assert model.config.num_attention_heads == preset.num_heads
        assert model.model.embed_tokens.weight.shape == (vocab.size, preset.hidden_size)
        assert model.lm_head.weight.shape == (vocab.size, preset.hidden_size)
        assert model.config.pad_token_id == vocab.pad_id
        assert torch.all(model.model.embed_tokens.weight[vocab.pad_id] == 0)
        logits = model(input_ids=torch.tensor([[1, vocab.image_offset, 2]])).logits
        assert logits.shape == (1, 3, vocab.size)
    assert LM_PRESETS["debug"].hidden_size == 64 and LM_PRESETS["debug"].num_layers == 2
    assert 1e6 < count_parameters(build_model(LM_PRESETS["small"], vocab, 128)) < 10e6
    with pytest.raises(ValueError, match="rotary dims"):  # Phi needs an even rotary width
        lm_config_from_preset("debug", hidden_size=32, partial_rotary_factor=0.4)

    big_vocab = Vocabulary.build(
        50295, 8192, {"<|endoftext|>": 50256, "<|img|>": 50293, "<|/img|>": 50294}
    )
    cfg = phi_config(LM_PRESETS["radphi2"], big_vocab, 2048)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (32, 2560, 32)
    assert cfg.intermediate_size == 10240
    assert cfg.rope_parameters["partial_rotary_factor"] == pytest.approx(0.4)
    assert cfg.vocab_size == big_vocab.size == big_vocab.image_offset + 8192 + 2
    with torch.device("meta"):
        radphi2 = build_model(LM_PRESETS["radphi2"], big_vocab, 2048)
    assert 2.7e9 < count_parameters(radphi2) < 2.9e9


def _save_tiny_phi(path: Path, vocab_size: int = 320) -> PhiForCausalLM:
    torch.manual_seed(0)
    cfg = PhiConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        partial_rotary_factor=0.5,
    )
    model = PhiForCausalLM(cfg)
    model.save_pretrained(path)
    return model


def test_load_pretrained_resizes_and_reports(tmp_path, vocab):
    source = _save_tiny_phi(tmp_path / "phi")
    model, report = load_pretrained(tmp_path / "phi", vocab)
    assert report.missing == [] and report.unexpected == [] and report.problems == []
    assert set(report.loaded) == set(source.state_dict())
    assert report.resized["model.embed_tokens.weight"] == ((320, 32), (vocab.size, 32))
    assert set(report.resized) == {"model.embed_tokens.weight", "lm_head.weight", "lm_head.bias"}
    emb, old = model.model.embed_tokens.weight, source.model.embed_tokens.weight
    keep = vocab.text_vocab_size
    assert torch.equal(emb[:keep], old[:keep])
    mean = old[:keep].mean(dim=0)
    assert torch.allclose(emb[vocab.image_offset + 5], mean, atol=1e-6)
    assert torch.allclose(emb[vocab.mask_id], mean, atol=1e-6)
    assert torch.all(emb[vocab.pad_id] == 0)
    assert torch.allclose(model.lm_head.bias[vocab.image_offset], source.lm_head.bias[:keep].mean())
    for name, tensor in source.state_dict().items():
        if name not in report.resized:
            assert torch.equal(model.state_dict()[name], tensor), name
    assert model.config.vocab_size == vocab.size
    logits = model(input_ids=torch.tensor([[1, vocab.image_offset + 3, vocab.pad_id]])).logits
    assert logits.shape[-1] == vocab.size


def test_load_pretrained_strict_report_rejects_mismatched_checkpoints(tmp_path, vocab):
    _save_tiny_phi(tmp_path / "phi")
    weights = tmp_path / "phi" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.layers.1.mlp.fc1.weight"]
    tensors["model.extra_adapter.weight"] = torch.zeros(2, 2)
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing model\.layers\.1\.mlp\.fc1\.weight"):
        load_pretrained(tmp_path / "phi", vocab)
    _, report = load_pretrained(tmp_path / "phi", vocab, strict_report=False)
    assert report.missing == ["model.layers.1.mlp.fc1.weight"]
    assert report.unexpected == ["model.extra_adapter.weight"]

    _save_tiny_phi(tmp_path / "small_vocab", vocab_size=200)
    with pytest.raises(ValueError, match="same text tokenizer"):
        load_pretrained(tmp_path / "small_vocab", vocab)


# ----------------------------------------------------------------------------------------------
# Reading and batching


def test_iter_token_rows_splits_workers_disjointly_and_resumes(tmp_path):
    paths = write_shards(tmp_path)
    everything = [r["image_id"] for r in iter_token_rows(paths, "train", columns=("image_id",))]
    assert len(everything) == 32 and len(set(everything)) == 32
    parts = [
        [r["image_id"] for r in iter_token_rows(paths, "train", rank, 2, columns=("image_id",))]
        for rank in range(2)
    ]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(everything)
    skipped = iter_token_rows(paths, "train", 1, 2, start_row=5, columns=("image_id",))
    assert [r["image_id"] for r in skipped] == parts[1][5:]
    # more workers than row groups: rows are striped instead
    stripes = [
        [r["image_id"] for r in iter_token_rows(paths, "train", rank, 8, columns=("image_id",))]
        for rank in range(8)
    ]
    assert sorted(i for part in stripes for i in part) == sorted(everything)
    row = next(iter_token_rows(paths, "validate"))
    assert row["image_codes"].shape == (CODES,) and row["split"] == "validate"


def test_data_position_resumes_exactly_across_epochs(tmp_path):
    paths = write_shards(tmp_path)

    def stream(start=None):
        return iter_positioned_rows(
            paths, "train", start=start, shuffle=True, seed=3, epochs=None, columns=("image_id",)
        )

    it = stream()
    seen = [next(it) for _ in range(80)]  # 2.5 epochs of 32 rows
    first_epoch = [r["image_id"] for r, _ in seen[:32]]
    assert [r["image_id"] for r, _ in seen[32:64]] != first_epoch  # reshuffled per epoch
    for cut in (0, 7, 31, 45):
        position = DataPosition.from_dict(json.loads(json.dumps(seen[cut][1].to_dict())))
        resumed = stream(position)
        expected = [r["image_id"] for r, _ in seen[cut + 1 :]]
        assert [next(resumed)[0]["image_id"] for _ in expected] == expected


def test_build_example_layout_and_truncation(vocab):
    row = {"image_codes": np.arange(CODES) % CODEBOOK, "text_ids": np.arange(3, 23)}
    ex = build_example(row, vocab, max_text_tokens=5)
    ids, modality = ex["input_ids"], ex["modality"]
    assert ids.shape == (CODES + 5 + 4,)
    assert ids[0] == vocab.image_start_id and ids[-1] == vocab.image_start_id
    assert ids[CODES + 1] == vocab.image_end_id and ids[CODES + 2] == vocab.eot_id
    assert torch.equal(ids[1 : CODES + 1], torch.arange(CODES) + vocab.image_offset)
    assert torch.equal(ids[CODES + 3 : CODES + 8], torch.arange(3, 8))
    assert (modality == MODALITY_IMAGE).sum() == CODES
    assert (modality == MODALITY_TEXT).sum() == 5
    assert (modality == MODALITY_SPECIAL).sum() == 4
    with pytest.raises(ValueError, match="text ids"):
        build_example({"image_codes": [0], "text_ids": [400]}, vocab, 10)


def test_collate_pads_and_padding_is_never_in_the_loss(vocab):
    rows = random_rows(3)
    rows[1]["text_ids"] = rows[1]["text_ids"][:1]
    batch = collate([build_example(r, vocab, 50) for r in rows], vocab)
    lengths = [CODES + len(r["text_ids"]) + 4 for r in rows]
    assert batch["input_ids"].shape == (3, max(lengths))
    for i, length in enumerate(lengths):
        assert batch["attention_mask"][i].sum() == length
        assert torch.all(batch["input_ids"][i, length:] == vocab.pad_id)
        assert torch.all(batch["labels"][i, length:] == IGNORE_INDEX)
        assert torch.equal(batch["labels"][i, :length], batch["input_ids"][i, :length])
    assert not torch.any(batch["image_mask"] & (batch["attention_mask"] == 0))
    assert not torch.any(batch["text_mask"] & (batch["attention_mask"] == 0))

    torch.manual_seed(0)
    logits = torch.randn(*batch["input_ids"].shape, vocab.size)
    base = lm_loss(logits, batch)
    assert base["image_tokens"] + base["text_tokens"] == sum(lengths) - 3  # no target at t = 0
    perturbed = logits.clone()
    pad = batch["attention_mask"] == 0
    perturbed[pad] = torch.randn(int(pad.sum()), vocab.size) * 100  # logits AT padding
    # logits predicting a padding target: position t - 1 for every padded t
    shifted_pad = torch.zeros_like(pad)
    shifted_pad[:, :-1] = pad[:, 1:]
    perturbed[shifted_pad] = torch.randn(int(shifted_pad.sum()), vocab.size) * 100
    again = lm_loss(perturbed, batch)
    assert torch.allclose(again["loss"], base["loss"])


def test_loss_is_split_per_modality(vocab):
    batch = collate([build_example(r, vocab, 50) for r in random_rows(4, seed=1)], vocab)
    torch.manual_seed(1)
    logits = torch.randn(*batch["input_ids"].shape, vocab.size)
    out = lm_loss(logits, batch, image_weight=2.0, text_weight=0.5)
    targets, preds = batch["labels"][:, 1:], logits[:, :-1]
    is_image = batch["image_mask"][:, 1:]
    valid = targets != IGNORE_INDEX
    ce = torch.nn.functional.cross_entropy(
        preds.reshape(-1, vocab.size), targets.clamp(min=0).reshape(-1), reduction="none"
    ).view(targets.shape)
    img, txt = ce[valid & is_image], ce[valid & ~is_image]
    assert int(out["image_tokens"]) == img.numel() == 4 * CODES  # targets = every image code
    assert torch.allclose(out["image_loss"], img.mean())
    assert torch.allclose(out["text_loss"], txt.mean())
    expected = (2.0 * img.sum() + 0.5 * txt.sum()) / (img.numel() + txt.numel())
    assert torch.allclose(out["loss"], expected)
    # a perfect image predictor has ~0 image loss while the text loss stays at chance level
    perfect = logits.clone()
    rows, cols = torch.nonzero(valid & is_image, as_tuple=True)
    perfect[rows, cols, targets[rows, cols]] = 1e4
    split = lm_loss(perfect, batch)
    assert float(split["image_loss"]) < 1e-3
    assert float(split["text_loss"]) > 0.5 * math.log(vocab.size)


# ----------------------------------------------------------------------------------------------
# Stage 2 masking


def test_stage2_masking_touches_only_image_and_text_at_requested_ratios(vocab):
    batch = collate([build_example(r, vocab, 50) for r in random_rows(6, seed=2)], vocab)
    original = {k: v.clone() for k, v in batch.items()}
    rng = torch.Generator().manual_seed(0)
    masked_ids, positions = apply_stage2_masking(batch, vocab, rng, (0.25, 0.25), (0.5, 0.5))
    for k in batch:
        assert torch.equal(batch[k], original[k]), f"{k} was modified"
    assert torch.all(masked_ids[positions] == vocab.mask_id)
    assert torch.equal(masked_ids[~positions], batch["input_ids"][~positions])
    assert not torch.any(positions & ~(batch["image_mask"] | batch["text_mask"]))
    n_text = batch["text_mask"].sum(dim=1).double()
    assert torch.equal((positions & batch["image_mask"]).sum(dim=1), torch.full((6,), CODES // 4))
    assert torch.equal(
        (positions & batch["text_mask"]).sum(dim=1), torch.round(0.5 * n_text).long()
    )

    big = collate([build_example(r, vocab, 50) for r in random_rows(400, seed=3, codes=64)], vocab)
    _, pos = apply_stage2_masking(big, vocab, torch.Generator().manual_seed(1), (0.0, 0.8), (0, 0))
    fractions = (pos & big["image_mask"]).sum(dim=1) / 64.0
    assert float(fractions.min()) >= 0.0 and float(fractions.max()) <= 0.8 + 1e-9
    assert abs(float(fractions.mean()) - 0.4) < 0.05
    assert not torch.any(pos & big["text_mask"])
    # same generator state, same masks
    _, again = apply_stage2_masking(
        big, vocab, torch.Generator().manual_seed(1), (0.0, 0.8), (0, 0)
    )
    assert torch.equal(pos, again)


def test_loss_on_default_is_all_and_masked_needs_stage2():
    assert LMTrainConfig().loss_on == "all"
    assert LMTrainConfig(stage=2, loss_on="masked").loss_on == "masked"
    with pytest.raises(ValueError, match="stage 2"):
        LMTrainConfig(stage=1, loss_on="masked")
    with pytest.raises(ValueError, match="loss weight"):
        LMTrainConfig(image_loss_weight=0.0, text_loss_weight=0.0)


def test_stage2_overfit_recovers_masked_image_codes_in_one_pass(vocab):
    rows = random_rows(8, seed=4, codes=32)
    model = debug_model(vocab)
    cfg = LMTrainConfig(
        stage=2,
        steps=200,
        batch_size=8,
        lr=3e-3,
        warmup_steps=10,
        weight_decay=0.0,
        checkpoint_every=0,
        log_every=50,
        num_threads=1,
    )
    result = train_lm(model, InMemoryBatches(rows, vocab, batch_size=8), cfg)
    assert result.steps == 200
    scores = evaluate_lm(
        model, iter_eval_batches(rows, vocab, 8, 100), vocab, image_mask_ratio=0.4, seed=7
    )
    assert scores["masked_image_tokens"] == 8 * round(0.4 * 32)
    chance = scores["chance_image_accuracy"]
    assert chance == pytest.approx(1 / CODEBOOK)
    assert scores["masked_image_accuracy"] > 0.5, scores
    assert scores["masked_image_accuracy"] > 10 * chance

    untrained = evaluate_lm(
        debug_model(vocab, seed=1), iter_eval_batches(rows, vocab, 8, 100), vocab, 0.4, seed=7
    )
    assert untrained["masked_image_accuracy"] < 0.2


def test_masked_only_loss_trains(vocab):
    rows = random_rows(4, seed=5)
    cfg = LMTrainConfig(stage=2, loss_on="masked", steps=3, batch_size=4, checkpoint_every=0)
    result = train_lm(debug_model(vocab), InMemoryBatches(rows, vocab, 4), cfg)
    assert result.steps == 3 and math.isfinite(result.last_metrics["loss"])


def test_bfloat16_autocast_keeps_float32_weights(vocab):
    rows = random_rows(4, seed=8)
    model = debug_model(vocab)
    cfg = LMTrainConfig(steps=2, batch_size=4, checkpoint_every=0, dtype="bfloat16")
    result = train_lm(model, InMemoryBatches(rows, vocab, 4), cfg)
    assert math.isfinite(result.last_metrics["loss"])
    assert model.lm_head.weight.dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# Checkpoints and resume


def _train_cfg(**overrides) -> LMTrainConfig:
    base = {
        "stage": 2,
        "steps": 12,
        "batch_size": 4,
        "lr": 3e-3,
        "warmup_steps": 2,
        "checkpoint_every": 4,
        "log_every": 4,
        "max_text_tokens": 8,
        "num_threads": 1,
    }
    return LMTrainConfig(**{**base, **overrides})


def test_resume_gives_identical_weights_and_step_count(tmp_path, vocab):
    paths = write_shards(tmp_path / "tokens")
    cfg = _train_cfg()

    def factory():
        return TokenShardBatches(paths, vocab, cfg.batch_size, cfg.max_text_tokens, seed=1)

    logged: list[int] = []
    reference = debug_model(vocab)
    full = train_lm(
        reference, factory(), cfg, tmp_path / "a", log=lambda step, _: logged.append(step)
    )
    assert full.steps == 12 and logged == [4, 8, 12]
    assert full.final_checkpoint == tmp_path / "a" / "step_000012"
    assert set(full.last_metrics) >= {"loss", "image_loss", "text_loss", "lr", "tokens_per_s"}

    def crash(step: int) -> bool:
        if step == 6:
            raise RuntimeError("simulated crash")
        return False

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_lm(debug_model(vocab), factory(), cfg, tmp_path / "b", should_stop=crash)
    assert latest_complete_checkpoint(tmp_path / "b").name == "step_000004"

    resumed_model = debug_model(vocab, seed=123)  # weights come from the checkpoint
    checkpoints: list[int] = []
    resumed = train_lm(
        resumed_model,
        factory(),
        cfg,
        tmp_path / "b",
        resume_from=tmp_path / "b",
        on_checkpoint=lambda _, step: checkpoints.append(step),
    )
    assert resumed.start_step == 4 and resumed.steps == 12
    assert checkpoints == [8, 12]
    ref_state, new_state = reference.state_dict(), resumed_model.state_dict()
    for name in ref_state:
        assert torch.equal(ref_state[name], new_state[name]), name
    state = torch.load(tmp_path / "b" / "step_000012" / "training_state.pt", weights_only=False)
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {12}

    model, info = load_lm_checkpoint(tmp_path / "b")
    assert info["step"] == 12 and info["vocab"] == vocab
    assert torch.equal(model.lm_head.weight, reference.lm_head.weight)
    scores = evaluate_lm(model, iter_eval_batches(paths, vocab, 4, 8), vocab)
    assert scores["num_sequences"] == 8 and math.isfinite(scores["loss"])


def test_incomplete_checkpoint_is_ignored(tmp_path, vocab):
    rows = random_rows(8, seed=6)
    cfg = _train_cfg(stage=1, steps=4, checkpoint_every=2)
    train_lm(debug_model(vocab), InMemoryBatches(rows, vocab, 4), cfg, tmp_path)
    assert latest_complete_checkpoint(tmp_path).name == "step_000004"
    partial = tmp_path / "step_000006"
    shutil.copytree(tmp_path / "step_000004", partial)
    (partial / COMPLETE_MARKER).unlink()
    (tmp_path / ".step_000008.tmp-deadbeef").mkdir()
    assert latest_complete_checkpoint(tmp_path).name == "step_000004"
    resumed = train_lm(
        debug_model(vocab),
        InMemoryBatches(rows, vocab, 4),
        _train_cfg(stage=1, steps=6, checkpoint_every=2),
        tmp_path,
        resume_from=tmp_path,
    )
    assert resumed.start_step == 4 and resumed.steps == 6
    assert (tmp_path / "step_000006" / COMPLETE_MARKER).is_file()
    assert latest_complete_checkpoint(tmp_path).name == "step_000006"
    # the partial folder was replaced as a whole (cxr.storage.atomic_dir), no temp folder left
    assert sorted(p.name for p in tmp_path.glob(".step_000006*")) == []
    assert latest_complete_checkpoint(tmp_path / "nothing") is None
    with pytest.raises(FileNotFoundError):
        load_lm_checkpoint(tmp_path / "nothing")


# ----------------------------------------------------------------------------------------------
# The loop's GPU-oriented pieces, checked on CPU


def test_right_padded_detects_collate_batches_only():
    from models.lm_train import right_padded

    assert right_padded(torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    assert right_padded(torch.ones(2, 1, dtype=torch.long))
    assert not right_padded(torch.tensor([[0, 1, 1, 1]]))  # left padding needs the mask
    assert not right_padded(torch.tensor([[1, 0, 1, 0]]))


def test_prefetcher_keeps_order_and_raises_the_reader_error():
    from models.lm_train import _Prefetcher

    def stream():
        for i in range(5):
            yield {"x": torch.full((2,), i)}, i
        raise OSError("shard vanished")

    prefetcher = _Prefetcher(stream(), depth=2, pin=False)
    seen = [next(prefetcher)[1] for _ in range(5)]
    assert seen == [0, 1, 2, 3, 4]
    with pytest.raises(OSError, match="shard vanished"):
        next(prefetcher)
    prefetcher.close()


def test_compiled_loop_matches_the_eager_loop(vocab, tmp_path, monkeypatch):
    """``compile=True`` (regional compile of the blocks + the loss) on CPU: same losses."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    rows = random_rows(16, seed=3)
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model(lm_config_from_preset("debug"), vocab, 64)
        cfg = LMTrainConfig(stage=2, steps=3, batch_size=4, log_every=1, compile=compiled)
        history = train_lm(model, InMemoryBatches(rows, vocab, 4), cfg).history
        losses[compiled] = [h["loss"] for h in history]
        assert [h["window_steps"] for h in history] == [1.0, 1.0, 1.0]
    assert np.allclose(losses[False], losses[True], rtol=1e-5), losses


def test_log_rows_cover_windows_of_steps(vocab):
    rows = random_rows(16, seed=4)
    torch.manual_seed(0)
    model = build_model(lm_config_from_preset("debug"), vocab, 64)
    cfg = LMTrainConfig(steps=7, batch_size=4, log_every=3)
    history = train_lm(model, InMemoryBatches(rows, vocab, 4), cfg).history
    assert [h["step"] for h in history] == [3.0, 6.0, 7.0]
    assert [h["window_steps"] for h in history] == [3.0, 3.0, 1.0]
    for h in history:
        assert h["tokens_per_s"] == pytest.approx(h["tokens"] / h["window_s"])
        assert 0.0 <= h["data_wait_fraction"] <= 1.0
