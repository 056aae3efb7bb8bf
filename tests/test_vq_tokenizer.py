"""VQ tokenizer: shapes, determinism, checkpoints, strict taming import, training, metrics."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.vq_tokenizer import (
    VQ_PRESETS,
    VQConfig,
    VQTokenizer,
    checkpoint_sha256,
    config_from_preset,
    export_taming_state_dict,
    import_taming_checkpoint,
    load_checkpoint,
    save_checkpoint,
    taming_key_table,
    tokenizer_key_to_taming,
)
from models.vq_train import (
    VQTrainConfig,
    VQTrainState,
    code_usage_stats,
    iterate_batches,
    psnr_uint8,
    recon_grid_png,
    ssim,
    train_vq,
)

# ---------------------------------------------------------------------------------------------
# helpers


def blobs(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 (n, size, size): smooth background gradient plus 1-3 bright Gaussian blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        img = 0.15 + 0.2 * (rng.uniform() * xx + rng.uniform() * yy)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.15, 0.85, 2)
            r = rng.uniform(0.06, 0.2)
            img += rng.uniform(0.3, 0.6) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return torch.from_numpy(out)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: 2 OpenMP threads on 2 shared, busy cores can run 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def debug_model() -> VQTokenizer:
    torch.manual_seed(0)
    model = VQTokenizer(config_from_preset("debug")).eval()
    # Run one training forward so k-means initialises the codebook (otherwise all codes are 0).
    model.train()
    with torch.no_grad():
        model(model.to_model_input(blobs(16, seed=1)))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# config / presets


def test_presets_code_counts_without_building() -> None:
    expected = {"debug": (4, 8, 64), "small": (8, 16, 256), "chexmix": (16, 32, 1024)}
    for name, (down, grid, codes) in expected.items():
        cfg = VQ_PRESETS[name]
        assert (cfg.downsample, cfg.grid_size, cfg.codes_per_image) == (down, grid, codes)
    chexmix = VQ_PRESETS["chexmix"]
    assert (chexmix.image_size, chexmix.codebook_size, chexmix.code_dim) == (512, 8192, 256)
    assert chexmix.channel_mult == (1, 1, 2, 2, 4) and chexmix.base_channels == 128
    assert VQ_PRESETS["small"].codebook_size == 512 and VQ_PRESETS["debug"].codebook_size == 32


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": 30}, "not divisible by the downsample"),
        ({"in_channels": 2}, "in_channels"),
        ({"norm_groups": 5}, "norm_groups"),
        ({"attn_resolutions": (7,)}, "attn_resolutions"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"codebook_size": 1}, "codebook_size"),
    ],
)
def test_config_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_preset("debug", **overrides)


def test_config_from_preset_errors_and_json_round_trip() -> None:
    with pytest.raises(ValueError, match="unknown VQ preset"):
        config_from_preset("huge")
    with pytest.raises(ValueError, match="unknown VQConfig fields"):
        config_from_preset("debug", bogus=1)
    cfg = config_from_preset("small", codebook_size=256)
    assert VQConfig.from_dict(cfg.to_dict()) == cfg
    assert VQConfig.from_dict({**cfg.to_dict(), "channel_mult": [1, 2, 2, 4]}) == cfg


# ---------------------------------------------------------------------------------------------
# model API


def test_encode_decode_shapes_and_range(debug_model: VQTokenizer) -> None:
    m = debug_model
    assert (m.grid_size, m.codes_per_image, m.num_codes) == (8, 64, 32)
    imgs = blobs(5)
    codes = m.encode(imgs)
    assert codes.shape == (5, 8, 8) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 32
    # (B, 1, H, W) uint8 and [-1, 1] float inputs give the same codes.
    assert torch.equal(m.encode(imgs[:, None]), codes)
    assert torch.equal(m.encode(imgs.float() / 127.5 - 1.0), codes)
    rec = m.decode(codes)
    assert rec.shape == (5, 1, 32, 32) and rec.dtype == torch.float32
    assert float(rec.min()) >= -1.0 and float(rec.max()) <= 1.0
    # Non-square / other-size input is resized and centre-cropped.
    assert m.encode(torch.zeros(2, 40, 64, dtype=torch.uint8)).shape == (2, 8, 8)
    recon, commit, fcodes = m(m.to_model_input(imgs))
    assert recon.shape == (5, 1, 32, 32) and commit.ndim == 0 and torch.equal(fcodes, codes)
    with pytest.raises(ValueError, match="codes must lie"):
        m.decode(torch.full((1, 8, 8), 32))
    with pytest.raises(TypeError):
        m.encode(torch.zeros(1, 32, 32, dtype=torch.int32))


def test_eval_is_deterministic_and_stateless(debug_model: VQTokenizer) -> None:
    m = debug_model
    before = {k: v.clone() for k, v in m.state_dict().items()}
    imgs = blobs(20, seed=3)
    a, b = m.encode(imgs), m.encode(imgs, batch_size=3)
    assert torch.equal(a, b)
    assert torch.equal(m.decode(a), m.decode(a))
    # Chunking may pick other conv kernels: equal up to float rounding.
    torch.testing.assert_close(m.decode(a), m.decode(a, batch_size=7), rtol=0, atol=1e-5)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    # An untrained k-means model is not initialised by encode either.
    fresh = VQTokenizer(config_from_preset("debug")).eval()
    fresh.encode(imgs)
    assert not fresh.codebook_initialised


def test_save_load_round_trip(tmp_path, debug_model: VQTokenizer) -> None:
    out = save_checkpoint(debug_model, tmp_path / "vq")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    digest = checkpoint_sha256(out)
    loaded = load_checkpoint(out)
    assert loaded.config == debug_model.config and not loaded.training
    imgs = blobs(8, seed=4)
    assert torch.equal(loaded.encode(imgs), debug_model.encode(imgs))
    # Overwriting an existing directory replaces it as a whole (cxr.storage.atomic_dir), stable
    # for identical weights.
    (out / "stale.txt").write_text("from an older writer")
    save_checkpoint(loaded, out)
    assert checkpoint_sha256(out) == digest and not (out / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # A config that does not match the weights fails loudly.
    text = (out / "config.json").read_text().replace('"codebook_size": 32', '"codebook_size": 64')
    (out / "config.json").write_text(text)
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(out)


# ---------------------------------------------------------------------------------------------
# taming layout: an independent generator of taming VQModel key names/shapes and a functional
# reference forward pass written from taming-transformers' diffusionmodules/model.py.


def taming_layout(dd: dict, embed_dim: int, n_embed: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a taming ``VQModel`` (encoder, decoder, quantizer, convs, loss stub)."""
    s: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        s[f"{name}.weight"], s[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name: str, c: int) -> None:
        s[f"{name}.weight"], s[f"{name}.bias"] = (c,), (c,)

    def block(p: str, cin: int, cout: int) -> None:
        norm(f"{p}.norm1", cin)
        conv(f"{p}.conv1", cin, cout, 3)
        norm(f"{p}.norm2", cout)
        conv(f"{p}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{p}.nin_shortcut", cin, cout, 1)

    def attn(p: str, c: int) -> None:
        norm(f"{p}.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{p}.{n}", c, c, 1)

    ch, mult, nrb = dd["ch"], dd["ch_mult"], dd["num_res_blocks"]
    levels, attn_res = len(mult), dd["attn_resolutions"]
    in_mult = (1, *mult)
    conv("encoder.conv_in", dd["in_channels"], ch, 3)
    res = dd["resolution"]
    for i in range(levels):
        cin, cout = ch * in_mult[i], ch * mult[i]
        for j in range(nrb):
            block(f"encoder.down.{i}.block.{j}", cin, cout)
            cin = cout
            if res in attn_res:
                attn(f"encoder.down.{i}.attn.{j}", cout)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", cout, cout, 3)
            res //= 2
    c = ch * mult[-1]
    for part in ("encoder", "decoder"):
        block(f"{part}.mid.block_1", c, c)
        attn(f"{part}.mid.attn_1", c)
        block(f"{part}.mid.block_2", c, c)
    norm("encoder.norm_out", c)
    conv("encoder.conv_out", c, dd["z_channels"], 3)
    conv("quant_conv", dd["z_channels"], embed_dim, 1)
    s["quantize.embedding.weight"] = (n_embed, embed_dim)
    conv("post_quant_conv", embed_dim, dd["z_channels"], 1)
    conv("decoder.conv_in", dd["z_channels"], c, 3)
    cin = c
    for i in reversed(range(levels)):
        cout = ch * mult[i]
        for j in range(nrb + 1):
            block(f"decoder.up.{i}.block.{j}", cin, cout)
            cin = cout
            if res in attn_res:
                attn(f"decoder.up.{i}.attn.{j}", cout)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
            res *= 2
    norm("decoder.norm_out", cin)
    conv("decoder.conv_out", cin, dd["out_ch"], 3)
    # VQLPIPSWithDiscriminator leftovers that a real vqgan.ckpt carries.
    s["loss.logvar"] = ()
    s["loss.discriminator.main.0.weight"] = (64, dd["out_ch"], 4, 4)
    s["loss.perceptual_loss.lin0.model.1.weight"] = (1, 64, 1, 1)
    return s


def random_taming_state_dict(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in layout.items():
        t = torch.randn(shape, generator=g)
        if len(shape) == 1 and key.endswith(".weight"):  # GroupNorm scale
            t = 1.0 + 0.1 * t
        elif key.endswith(".bias"):
            t = 0.05 * t
        elif len(shape) == 4:
            t = t / math.sqrt(shape[1] * shape[2] * shape[3])
        sd[key] = t
    return sd


def _gn(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.group_norm(x, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)


def _conv(sd: dict, p: str, x: torch.Tensor, stride: int = 1, padding: int | None = None):
    w = sd[f"{p}.weight"]
    pad = w.shape[-1] // 2 if padding is None else padding
    return F.conv2d(x, w, sd[f"{p}.bias"], stride=stride, padding=pad)


def _block(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    h = _conv(sd, f"{p}.conv1", F.silu(_gn(sd, f"{p}.norm1", x)))
    h = _conv(sd, f"{p}.conv2", F.silu(_gn(sd, f"{p}.norm2", h)))
    if f"{p}.nin_shortcut.weight" in sd:
        x = _conv(sd, f"{p}.nin_shortcut", x)
    return x + h


def _attn(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    h = _gn(sd, f"{p}.norm", x)
    q, k, v = (_conv(sd, f"{p}.{n}", h) for n in ("q", "k", "v"))
    b, c, hh, ww = q.shape
    w_ = torch.bmm(q.reshape(b, c, hh * ww).permute(0, 2, 1), k.reshape(b, c, hh * ww))
    w_ = torch.softmax(w_ * c**-0.5, dim=2)
    h = torch.bmm(v.reshape(b, c, hh * ww), w_.permute(0, 2, 1)).reshape(b, c, hh, ww)
    return x + _conv(sd, f"{p}.proj_out", h)


def _maybe_attn(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return _attn(sd, p, x) if f"{p}.q.weight" in sd else x


def _mid(sd: dict, part: str, h: torch.Tensor) -> torch.Tensor:
    h = _block(sd, f"{part}.mid.block_1", h)
    h = _attn(sd, f"{part}.mid.attn_1", h)
    return _block(sd, f"{part}.mid.block_2", h)


def taming_encode(sd: dict, dd: dict, x: torch.Tensor) -> torch.Tensor:
    levels = len(dd["ch_mult"])
    h = _conv(sd, "encoder.conv_in", x)
    for i in range(levels):
        for j in range(dd["num_res_blocks"]):
            h = _block(sd, f"encoder.down.{i}.block.{j}", h)
            h = _maybe_attn(sd, f"encoder.down.{i}.attn.{j}", h)
        if i != levels - 1:
            h = _conv(sd, f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), 2, 0)
    h = _mid(sd, "encoder", h)
    h = _conv(sd, "encoder.conv_out", F.silu(_gn(sd, "encoder.norm_out", h)))
    return _conv(sd, "quant_conv", h)


def taming_decode(sd: dict, dd: dict, codes: torch.Tensor) -> torch.Tensor:
    levels = len(dd["ch_mult"])
    h = sd["quantize.embedding.weight"][codes].permute(0, 3, 1, 2)
    h = _conv(sd, "decoder.conv_in", _conv(sd, "post_quant_conv", h))
    h = _mid(sd, "decoder", h)
    for i in reversed(range(levels)):
        for j in range(dd["num_res_blocks"] + 1):
            h = _block(sd, f"decoder.up.{i}.block.{j}", h)
            h = _maybe_attn(sd, f"decoder.up.{i}.attn.{j}", h)
        if i != 0:
            h = _conv(sd, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0))
    return _conv(sd, "decoder.conv_out", F.silu(_gn(sd, "decoder.norm_out", h)))


# Tiny RGB taming config: 3 levels (so decoder level reversal is exercised), attention in the
# lowest level as in taming's f16 model, GroupNorm(32) as taming hard-codes.
TINY_DD = {
    "resolution": 32,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": (1, 1, 2),
    "num_res_blocks": 1,
    "attn_resolutions": (8,),
    "z_channels": 8,
}
TINY_CFG = VQConfig(
    image_size=32,
    in_channels=3,
    base_channels=32,
    channel_mult=(1, 1, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),
    z_channels=8,
    codebook_size=16,
    code_dim=4,
    norm_groups=32,
)


@pytest.fixture(scope="module")
def taming_ckpt() -> dict:
    return random_taming_state_dict(taming_layout(TINY_DD, embed_dim=4, n_embed=16))


def test_taming_import_matches_reference_forward(tmp_path, taming_ckpt: dict) -> None:
    path = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": taming_ckpt, "global_step": 7}, path)
    model = import_taming_checkpoint(path, TINY_CFG)
    grey = blobs(3, seed=5)
    x = grey.float()[:, None].expand(-1, 3, -1, -1) / 127.5 - 1.0  # grey repeated to RGB
    with torch.no_grad():
        ref_z = taming_encode(taming_ckpt, TINY_DD, x)
        torch.testing.assert_close(model.encode_latents(x), ref_z, rtol=1e-4, atol=1e-4)
        codes = model.encode(grey)
        d = (
            (
                ref_z.permute(0, 2, 3, 1).reshape(-1, 4)[:, None]
                - taming_ckpt["quantize.embedding.weight"][None]
            )
            .pow(2)
            .sum(-1)
        )
        assert (codes.reshape(-1) == d.argmin(1)).float().mean() > 0.95
        ref_rec = taming_decode(taming_ckpt, TINY_DD, codes)
        torch.testing.assert_close(
            model.decode(codes, keep_channels=True), ref_rec.clamp(-1, 1), rtol=1e-4, atol=1e-4
        )
        assert model.decode(codes).shape == (3, 1, 32, 32)  # RGB averaged back to grey
    # Export is the exact inverse of import.
    exported = export_taming_state_dict(model)
    expected = {k: v for k, v in taming_ckpt.items() if not k.startswith("loss.")}
    assert exported.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(exported[k], v), k
    again = import_taming_checkpoint({"state_dict": exported}, TINY_CFG)
    assert torch.equal(again.encode(grey), codes)
    assert again.codebook_initialised


def test_taming_import_missing_key(taming_ckpt: dict) -> None:
    sd = dict(taming_ckpt)
    del sd["decoder.up.2.attn.1.proj_out.weight"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): decoder\.up\.2\.attn\.1\.proj_out"):
        import_taming_checkpoint(sd, TINY_CFG)


def test_taming_import_unexpected_key(taming_ckpt: dict) -> None:
    sd = {**taming_ckpt, "encoder.down.0.extra.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): encoder\.down\.0\.extra\.weight"):
        import_taming_checkpoint(sd, TINY_CFG)


def test_taming_import_ignores_loss_keys_only_on_purpose(taming_ckpt: dict) -> None:
    assert any(k.startswith("loss.") for k in taming_ckpt)
    import_taming_checkpoint(taming_ckpt, TINY_CFG)  # loss.* are ignored by default
    with pytest.raises(ValueError, match=r"unexpected keys \(3\): loss\."):
        import_taming_checkpoint(taming_ckpt, TINY_CFG, ignored_prefixes=())


def test_taming_import_config_mismatch(taming_ckpt: dict) -> None:
    # Wrong codebook size: a shape mismatch. Wrong attention layout: missing/unexpected keys.
    bad = VQConfig(**{**TINY_CFG.to_dict(), "codebook_size": 32})
    with pytest.raises(ValueError, match=r"shape mismatches \(1\): quantize\.embedding\.weight"):
        import_taming_checkpoint(taming_ckpt, bad)
    no_attn = VQConfig(**{**TINY_CFG.to_dict(), "attn_resolutions": ()})
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): decoder\.up\.2\.attn\.0"):
        import_taming_checkpoint(taming_ckpt, no_attn)


def test_chexmix_layout_matches_chameleon_taming_layout() -> None:
    """The chexmix preset (RGB) has exactly the key set/shapes of Chameleon's f16 VQGAN."""
    dd = {
        "resolution": 512,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": (1, 1, 2, 2, 4),
        "num_res_blocks": 2,
        "attn_resolutions": (),
        "z_channels": 256,
    }
    layout = {
        k: v
        for k, v in taming_layout(dd, embed_dim=256, n_embed=8192).items()
        if not k.startswith("loss.")
    }
    with torch.device("meta"):
        model = VQTokenizer(config_from_preset("chexmix", in_channels=3))
    table = taming_key_table(model)
    assert table.keys() == layout.keys()
    state = model.state_dict()
    for t_key, o_key in table.items():
        ours = tuple(state[o_key].shape)
        if t_key == "quantize.embedding.weight":
            ours = ours[1:]
        elif len(layout[t_key]) == 4 and len(ours) == 2:  # attention Linear vs 1x1 conv
            ours = (*ours, 1, 1)
        assert ours == layout[t_key], t_key
    n_params = sum(math.prod(s) for s in layout.values())
    assert 60e6 < n_params < 80e6  # taming f16 VQGAN scale
    assert tokenizer_key_to_taming("decoder.up_blocks.0.upsamplers.0.conv.weight", 5) == (
        "decoder.up.4.upsample.conv.weight"
    )


# ---------------------------------------------------------------------------------------------
# metrics


def test_ssim_properties() -> None:
    imgs = blobs(4, size=48, seed=6).float()
    assert torch.allclose(ssim(imgs, imgs), torch.ones(4), atol=1e-5)
    g = torch.Generator().manual_seed(0)
    light = (imgs + 10 * torch.randn(imgs.shape, generator=g)).clamp(0, 255)
    heavy = (imgs + 40 * torch.randn(imgs.shape, generator=g)).clamp(0, 255)
    s_light, s_heavy = ssim(imgs, light), ssim(imgs, heavy)
    assert (s_light < 0.999).all() and (s_heavy < s_light).all()
    assert torch.allclose(ssim(light, imgs), s_light, atol=1e-6)  # symmetric
    const = torch.full((1, 20, 20), 100.0)
    assert torch.allclose(ssim(const, const), torch.ones(1))
    assert float(ssim(imgs[:1], 255 - imgs[:1])) < 0.5  # inverted contrast
    # Small images shrink the window instead of failing; gradients flow (used as a loss).
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    ssim(x, torch.rand(2, 1, 8, 8), data_range=1.0).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_psnr_and_usage_stats() -> None:
    a = torch.zeros(2, 4, 4, dtype=torch.uint8)
    b = a.clone()
    b[1] = 255
    p = psnr_uint8(a, b)
    assert float(p[0]) == 100.0 and abs(float(p[1])) < 1e-6
    stats = code_usage_stats(torch.tensor([[0, 1], [2, 3]]), 8)
    assert stats["codes_used"] == 4 and stats["codebook_usage"] == 50.0
    assert abs(stats["perplexity"] - 4.0) < 1e-9


def test_recon_grid_png(debug_model: VQTokenizer) -> None:
    imgs = blobs(3, seed=7)
    png = recon_grid_png(imgs, debug_model.reconstruct(imgs), pad=2)
    arr = np.asarray(Image.open(io.BytesIO(png)))
    assert arr.shape == (2 * 32 + 3 * 2, 3 * 32 + 4 * 2) and arr.dtype == np.uint8
    assert np.array_equal(arr[2:34, 2:34], imgs[0].numpy())


# ---------------------------------------------------------------------------------------------
# training


def test_train_config_validation() -> None:
    with pytest.raises(ValueError, match="perceptual_weight must be 0"):
        VQTrainConfig(perceptual_weight=0.1)
    with pytest.raises(ValueError, match="recon_loss"):
        VQTrainConfig(recon_loss="huber")  # type: ignore[arg-type]


def test_tiny_training_improves_psnr_and_uses_codebook() -> None:
    torch.manual_seed(0)
    model = VQTokenizer(config_from_preset("debug"))
    train, val = blobs(256, seed=10), blobs(64, seed=11)
    cfg = VQTrainConfig(steps=100, batch_size=16, lr=2e-3, warmup_steps=10, log_every=25, seed=0)
    logged: list[int] = []
    result = train_vq(
        model, iterate_batches(train, 16, seed=0), val, cfg, log=lambda s, m: logged.append(s)
    )
    assert result.steps == 100 and logged[:4] == [25, 50, 75, 100]
    init, final = result.initial_metrics, result.final_metrics
    assert final["psnr"] > init["psnr"] + 8.0, (init, final)
    assert final["psnr"] > 24.0, final
    assert final["ssim"] > init["ssim"]
    assert final["codebook_usage"] >= 50.0, final  # k-means init + dead-code replacement
    assert final["perplexity"] > 8.0
    assert all(math.isfinite(v) for row in result.history for v in row.values())


def test_training_is_deterministic_and_resumable(tmp_path) -> None:
    train, val = blobs(64, seed=12), blobs(8, seed=13)
    cfg = VQTrainConfig(steps=6, batch_size=8, warmup_steps=2, log_every=3, seed=3)

    def fresh() -> VQTokenizer:
        torch.manual_seed(123)  # same init; train_vq reseeds with cfg.seed
        return VQTokenizer(config_from_preset("debug"))

    a = fresh()
    train_vq(a, iterate_batches(train, 8, seed=1), val, cfg)
    b = fresh()
    # The loop stops early when the batches run out: "preempted" after 3 of 6 steps.
    res = train_vq(b, itertools.islice(iterate_batches(train, 8, seed=1), 3), val, cfg)
    assert res.steps == 3
    torch.save(res.state.state_dict(), tmp_path / "state.pt")
    c = fresh()
    state = VQTrainState(c, cfg)
    state.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert state.step == 3
    train_vq(c, iterate_batches(train, 8, seed=1, start_batch=3), val, cfg, state=state)
    sa, sc = a.state_dict(), c.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k


def test_adversarial_path_after_warmup_is_finite() -> None:
    torch.manual_seed(0)
    model = VQTokenizer(config_from_preset("debug"))
    cfg = VQTrainConfig(
        steps=6,
        batch_size=8,
        adversarial_weight=0.5,
        adversarial_start_step=2,
        log_every=1,
        ssim_weight=0.1,
    )
    result = train_vq(model, iterate_batches(blobs(32, seed=14), 8), blobs(8, seed=15), cfg)
    rows = [r for r in result.history if "loss" in r]
    assert len(rows) == 6
    assert all("d_loss" not in r for r in rows[:2])
    adv = rows[2:]
    assert all("d_loss" in r and "g_loss" in r and "d_weight" in r for r in adv)
    assert all(math.isfinite(v) for r in rows for v in r.values())
    state = result.state.state_dict()
    assert state["discriminator"] is not None and state["step"] == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# encode options (precision, compile, memory format)


def test_encode_options_validation_and_default_path_is_the_reference(
    debug_model: VQTokenizer,
) -> None:
    from models.vq_tokenizer import CPU_CHUNK, EncodeOptions

    with pytest.raises(ValueError, match="precision must be one of"):
        EncodeOptions(precision="fp8")
    with pytest.raises(ValueError, match="compile must be a bool"):
        EncodeOptions(compile="yes")  # type: ignore[arg-type]
    imgs = blobs(20, seed=5)
    with torch.inference_mode():  # the plain composition, chunked as encode does on CPU
        ref = torch.cat(
            [
                debug_model.nearest_codes(debug_model.encode_latents(debug_model.to_model_input(c)))
                for c in imgs.split(CPU_CHUNK)
            ]
        )
    assert debug_model.encode_options == EncodeOptions()
    assert torch.equal(debug_model.encode(imgs), ref)
    on_device = debug_model.encode_on_device(imgs, pad_to=64)
    assert on_device.dtype == torch.long and torch.equal(on_device, ref)
    assert debug_model.encode_on_device(imgs[:0]).shape == (0, 8, 8)


def test_reduced_precision_and_nchw_agree_and_reset_restores_exact_codes() -> None:
    torch.manual_seed(0)
    model = VQTokenizer(config_from_preset("debug")).eval()
    imgs = blobs(24, seed=6)
    with torch.no_grad():  # codebook from the model's own latents: realistic margins
        z = model.encode_latents(model.to_model_input(imgs)).permute(0, 2, 3, 1)
        flat = z.reshape(-1, z.shape[-1])
        model.quantize._codebook.embed.copy_(flat[torch.randperm(flat.shape[0])[:32]][None])
    ref = model.encode(imgs)
    assert ref.unique().numel() > 8
    for fields, floor in (
        ({"channels_last": False}, 0.99),
        ({"precision": "float16"}, 0.98),
        ({"precision": "bfloat16"}, 0.9),
    ):
        model.set_encode_options(**fields)
        codes = model.encode(imgs)
        assert (codes == ref).float().mean() >= floor, fields
        assert model.encode_on_device(imgs, pad_to=16).shape == ref.shape
    model.set_encode_options(channels_last=False)
    assert model.conv_in_weight.is_contiguous()  # NCHW weights
    model.set_encode_options()  # back to the defaults: the exact reference codes again
    assert model.conv_in_weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(model.encode(imgs), ref)


@pytest.mark.slow
def test_compiled_encoder_pads_to_one_shape_and_matches_eager() -> None:
    """torch.compile on CPU (~30-100 s on 2 cores): the opt-in ``slow`` tier."""
    torch.manual_seed(0)
    model = VQTokenizer(config_from_preset("debug")).eval()
    imgs = blobs(20, seed=7)
    ref = model.encode(imgs)
    model.compile_encoder()
    assert model.encode_options.compile
    codes = model.encode(imgs, batch_size=8)  # chunks 8, 8, 4 (padded to 8): one graph
    assert (codes == ref).float().mean() >= 0.99
    model.set_encode_options()
    assert torch.equal(model.encode(imgs), ref)
