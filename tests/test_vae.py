"""The MAGI-1 ViT VAE: structure, loading, frame rules, tiling (exact to the official algorithm), helpers."""

from __future__ import annotations

import json
import weakref

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from magi1.checkpoint.layout import CheckpointError
from magi1.models.vae import (
    OFFICIAL_DDCONFIG,
    SCALE_FACTOR,
    VAEConfig,
    VAEConfigError,
    ViTVAE,
    build_on_meta,
    normalize_per_head,
    resize_grid_embedding,
)
from magi1.models.vae_helpers import decode_chunk, encode_image, encode_video, unit_range_to_pixels
from magi1.models.vae_tiling import (
    TileSettings,
    TilingError,
    assign_tiles,
    decoded_frame_count,
    encoded_frame_count,
    plan_decode_tiles,
    tiled_decode,
    tiled_encode,
)

# Official factors (8 px, 4 frames), official block layout, tiny widths. embed 512 makes the decoder
# un-patchify into 2 channels, so the channel order matters.
TINY = dict(
    video_size=32, video_length=8, patch_size=8, patch_length=4, z_chans=16, embed_dim=256, depth=1,
    num_heads=4, mlp_ratio=0.5, qkv_bias=True, ln_in_attn=True, conv_last_layer=True,
)  # fmt: skip
SMALL_TILES = TileSettings(height=32, width=64, length=8)  # 4x8 latents, 2 latent frames per tile


@pytest.fixture(scope="module")
def vae() -> ViTVAE:
    torch.manual_seed(0)
    return ViTVAE(VAEConfig(**TINY)).init_weights(seed=1).eval()


def video(frames: int, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, height, width, generator=g) * 2 - 1


def latent(frames: int, height: int = 4, width: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 16, frames, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- structure
def test_official_config_builds_on_meta_with_official_counts():
    model = build_on_meta()
    assert len(model.state_dict()) == 496
    assert model.num_parameters() == 613_755_239
    assert sum(p.numel() for p in model.encoder.parameters()) == 307_278_880
    assert sum(p.numel() for p in model.decoder.parameters()) == 306_476_359
    assert model.encoder.pos_embed.shape == (1, 4097, 1024)
    assert model.decoder.last_layer.weight.shape == (3, 4, 3, 3, 3)


def test_state_dict_names_are_the_official_ones(vae):
    per_block = [
        "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
        "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    ]  # fmt: skip
    shared = ["cls_token", "pos_embed", "norm.weight", "norm.bias", "last_layer.weight", "last_layer.bias"]
    expected = {f"encoder.{n}" for n in shared + ["patch_embed.proj.weight", "patch_embed.proj.bias"]}
    expected |= {f"decoder.{n}" for n in shared + ["proj_in.weight", "proj_in.bias"]}
    expected |= {f"{part}.blocks.0.{n}" for part in ("encoder", "decoder") for n in per_block}
    assert set(vae.state_dict()) == expected


def test_config_rejects_unknown_keys_and_unsupported_options():
    with pytest.raises(VAEConfigError, match="unknown ddconfig keys"):
        VAEConfig.from_ddconfig({**OFFICIAL_DDCONFIG, "bogus": 1})
    with pytest.raises(VAEConfigError, match="use_rope"):
        VAEConfig(**{**TINY, "use_rope": True})
    with pytest.raises(VAEConfigError, match="attn_drop_rate"):
        VAEConfig(**{**TINY, "attn_drop_rate": 0.1})


def test_qkv_norm_divides_by_std_plus_eps():
    x = torch.randn(2, 5, 3, 4, 16, dtype=torch.float64)
    std = x.std(-1, keepdim=True, unbiased=False)
    expected = (x - x.mean(-1, keepdim=True)) / (std + 1e-5)
    torch.testing.assert_close(normalize_per_head(x), expected)
    # not the same function as a LayerNorm (sqrt(var + eps)) for small-variance heads
    small = x * 1e-3
    assert not torch.allclose(normalize_per_head(small), F.layer_norm(small, (16,), eps=1e-5), atol=1e-4)


def test_position_embedding_resize_is_trilinear_without_align_corners(vae):
    enc = vae.encoder
    assert enc.position_embedding((2, 4, 4)) is enc.pos_embed  # the trained grid: used as is
    resized = enc.position_embedding((1, 4, 4))
    assert resized.shape == (1, 1 + 16, 256)
    torch.testing.assert_close(resized[:, 0], enc.pos_embed[:, 0])  # the cls row is never resized
    # 2 -> 1 frames samples source position 0.5: the mean of frames 0 and 1
    grid = enc.pos_embed[:, 1:].reshape(2, 16, 256)
    torch.testing.assert_close(resized[0, 1:], (grid[0] + grid[1]) / 2)
    # 4 -> 3 frames samples positions 1/6, 3/2, 17/6 (align_corners=False)
    rows = torch.arange(4.0).view(1, 4, 1)
    out = resize_grid_embedding(rows, (4, 1, 1), (3, 1, 1))
    torch.testing.assert_close(out.flatten(), torch.tensor([1 / 6, 1.5, 17 / 6]))


def test_decoder_unpatchify_channel_order():
    cfg = VAEConfig(**{**TINY, "embed_dim": 512, "num_heads": 8})  # 2 pixel channels per token
    dec = ViTVAE(cfg).init_weights(seed=2).decoder.eval()
    captured = {}
    dec.norm.register_forward_hook(lambda m, i, o: captured.__setitem__("tokens", o[:, 1:]))
    dec.last_layer.register_forward_pre_hook(lambda m, i: captured.__setitem__("pixels", i[0]))
    with torch.no_grad():
        dec(latent(2, 2, 3))
    tokens, pixels = captured["tokens"], captured["pixels"]  # (1, 2*2*3, 512), (1, 2, 8, 16, 24)
    for lt in range(2):
        for lh in range(2):
            for lw in range(3):
                token = tokens[0, (lt * 2 + lh) * 3 + lw].view(4, 8, 8, 2)  # (pt, ph, pw, c), c fastest
                block = pixels[0, :, lt * 4 : lt * 4 + 4, lh * 8 : lh * 8 + 8, lw * 8 : lw * 8 + 8]
                torch.testing.assert_close(block, token.permute(3, 0, 1, 2))


# ---------------------------------------------------------------------------------------------- frame rules
@pytest.mark.parametrize("frames,latents", [(1, 1), (4, 1), (5, 1), (8, 2), (11, 2)])
def test_encode_frame_counts(vae, frames, latents):
    with torch.no_grad():
        assert vae.encode(video(frames)).shape == (1, 16, latents, 4, 4)


def test_single_frame_is_repeated_to_four(vae):
    frame = video(1)
    with torch.no_grad():
        torch.testing.assert_close(vae.encode(frame), vae.encode(frame.expand(-1, -1, 4, -1, -1))[:, :, :1])


@pytest.mark.parametrize("latents,frames", [(1, 1), (2, 8), (3, 12)])
def test_decode_frame_counts(vae, latents, frames):
    with torch.no_grad():
        assert vae.decode(latent(latents)).shape == (1, 3, frames, 32, 32)


def test_tiled_frame_counts_at_24_fps():
    assert [encoded_frame_count(t) for t in (1, 4, 8, 12, 13, 16, 24, 25, 32, 37)] == [1, 1, 2, 3, 4, 4, 6, 7, 8, 10]
    assert [decoded_frame_count(n) for n in range(1, 9)] == [1, 8, 12, 13, 20, 24, 25, 32]
    for crashing in (2, 3, 14, 15, 26, 27):
        with pytest.raises(TilingError, match="1 frame or at least 4"):
            encoded_frame_count(crashing)
    with pytest.raises(TilingError, match="fps must be at least 8"):
        decoded_frame_count(6, TileSettings.for_fps(6))


def test_official_tile_plans_give_official_shapes():
    settings = TileSettings()
    assert plan_decode_tiles((1, 16, 6, 90, 160), settings).output_grid == (24, 720, 1280)
    assert plan_decode_tiles((1, 16, 4, 90, 160), settings).output_grid == (13, 720, 1280)
    grid = plan_decode_tiles((1, 16, 6, 90, 160), settings)
    assert grid.shape == (2, 4, 7)
    shares = assign_tiles(grid, 3)
    assert sorted(i for share in shares for i in share) == list(range(56))
    assert shares[0][:2] == [0, 3]  # largest tiles first, dealt round-robin


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "shape,message",
    [
        ((1, 4, 4, 32, 32), "expected 3 channels"),
        ((1, 3, 4, 30, 32), "multiples of 8"),
        ((1, 3, 0, 32, 32), "empty"),
        ((1, 3, 2, 32, 32), "at least 4"),
        ((3, 4, 32, 32), r"\(B, C, T, H, W\)"),
    ],
)
def test_bad_videos_give_clear_errors(vae, shape, message):
    with pytest.raises(ValueError, match=message):
        vae.encode(torch.zeros(shape))


def test_bad_inputs_to_helpers_and_tiling(vae):
    with pytest.raises(TilingError, match="16 channels"):
        tiled_decode(vae, torch.zeros(1, 4, 2, 4, 4), SMALL_TILES)
    with pytest.raises(TypeError, match="uint8"):
        encode_video(vae, torch.zeros(4, 32, 32, 3))
    with pytest.raises(ValueError, match="empty"):
        encode_video(vae, torch.zeros(0, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(TilingError, match="not a multiple of 8"):
        encode_video(vae, torch.zeros(4, 36, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        encode_image(vae, torch.zeros(3, 32, 32, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------- loading
def write_folder(path, model: ViTVAE, *, class_name="ViTVAE", dtype=torch.bfloat16, drop=None, extra=None):
    path.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": class_name, "ddconfig": model.config.to_ddconfig(), "model_type": "vit"}
    (path / "config.json").write_text(json.dumps(config))
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items() if k != drop}
    state.update(extra or {})
    save_file(state, str(path / "diffusion_pytorch_model.safetensors"))
    return path


def test_from_pretrained_loads_strictly_in_the_requested_dtype(vae, tmp_path):
    folder = write_folder(tmp_path / "vae", vae)
    loaded = ViTVAE.from_pretrained(folder, dtype="float32", device="cpu")
    assert loaded.dtype == torch.float32 and not loaded.training
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, vae.state_dict()[name].bfloat16().float())
    assert ViTVAE.from_pretrained(folder, dtype=torch.bfloat16, device="cpu").dtype == torch.bfloat16


def test_from_pretrained_names_what_is_wrong(vae, tmp_path):
    cases = {
        "missing": dict(drop="decoder.norm.bias"),
        "unexpected": dict(extra={"decoder.final_proj.weight": torch.zeros(2, 2)}),
        "mis-shaped": dict(drop="encoder.cls_token", extra={"encoder.cls_token": torch.zeros(1, 1, 8)}),
    }
    for word, kwargs in cases.items():
        folder = write_folder(tmp_path / word, vae, **kwargs)
        with pytest.raises(CheckpointError, match=word):
            ViTVAE.from_pretrained(folder, device="cpu")
    with pytest.raises(CheckpointError, match="_class_name"):
        ViTVAE.from_pretrained(write_folder(tmp_path / "cls", vae, class_name="AutoencoderKL"), device="cpu")
    (tmp_path / "cls" / "diffusion_pytorch_model.safetensors").unlink()
    (tmp_path / "cls" / "config.json").write_text(json.dumps({"_class_name": "ViTVAE", "ddconfig": TINY}))
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model.safetensors"):
        ViTVAE.from_pretrained(tmp_path / "cls", device="cpu")
    with pytest.raises(CheckpointError, match="no config.json"):
        ViTVAE.from_pretrained(tmp_path, device="cpu")


# ---------------------------------------------------------------------------------------------- tiling
def _ramp(prev, cur, axis, extent, round_once):
    """One row at a time, as the official blend loops (scalar weights from Python floats)."""
    e = min(prev.shape[axis], cur.shape[axis], extent)
    for k in range(e):
        a, b = prev.select(axis, prev.shape[axis] - e + k), cur.select(axis, k)
        if round_once:
            b.copy_((a.float() * (1 - k / e) + b.float() * (k / e)).to(b.dtype))
        else:
            b.copy_(a * (1 - k / e) + b * (k / e))


def official_tiling(fn, x, s: TileSettings, encode: bool):
    """A literal transcription of the official tile processor (8 px / 4 frame factors, no ranks)."""
    if encode:
        size, stride = (s.length, s.height, s.width), [int(n * (1 - o)) for n, o in
                       ((s.length, s.temporal_overlap), (s.height, s.spatial_overlap), (s.width, s.spatial_overlap))]
        out_tile = (s.length // 4, s.height // 8, s.width // 8)
    else:
        size = (s.length // 4, s.height // 8, s.width // 8)
        stride = [int(n * (1 - o)) for n, o in zip(size, (s.temporal_overlap, s.spatial_overlap, s.spatial_overlap))]
        out_tile = (size[0] * 4, size[1] * 8, size[2] * 8)
    overlaps = (s.temporal_overlap, s.spatial_overlap, s.spatial_overlap)
    blend = [int(n * o) for n, o in zip(out_tile, overlaps)]
    counts = [-(-x.shape[2 + d] // stride[d]) for d in range(3)]
    raw = {}
    for f in range(counts[0]):
        for i in range(counts[1]):
            for j in range(counts[2]):
                starts = (f * stride[0], i * stride[1], j * stride[2])
                raw[f, i, j] = fn(x[:, :, starts[0] : starts[0] + size[0], starts[1] : starts[1] + size[1],
                                    starts[2] : starts[2] + size[2]])  # fmt: skip
    kept = {}
    for key in raw:
        tile = raw[key] if encode else raw[key].clone()
        for d in range(3):
            if key[d] > 0:
                prev = list(key)
                prev[d] -= 1
                _ramp(raw[tuple(prev)], tile, 2 + d, blend[d], round_once=not encode)
        kept[key] = tile[:, :, : out_tile[0] - blend[0], : out_tile[1] - blend[1], : out_tile[2] - blend[2]]
    rows = lambda f, i: torch.cat([kept[f, i, j] for j in range(counts[2])], dim=4)  # noqa: E731
    return torch.cat([torch.cat([rows(f, i) for i in range(counts[1])], dim=3) for f in range(counts[0])], dim=2)


@pytest.mark.parametrize("frames", [1, 13])
def test_tiled_encode_matches_the_official_algorithm(vae, frames):
    x = video(frames, 40, 136)  # 2 x 3 spatial tiles, short border tiles, a 1-frame tail tile at 13
    with torch.no_grad():
        ours = tiled_encode(vae, x, SMALL_TILES)
        reference = official_tiling(vae.encode, x, SMALL_TILES, encode=True)
    assert ours.shape == (1, 16, 1 if frames == 1 else 3, 5, 17)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiled_decode_matches_the_official_algorithm(vae, dtype):
    model = vae if dtype == torch.float32 else ViTVAE(vae.config).init_weights(seed=1).to(dtype).eval()
    z = latent(3, 5, 17)  # a short 1-latent tail tile: 2 + 1 latent frames -> 8 + 1 frames
    with torch.no_grad():
        ours = tiled_decode(model, z, SMALL_TILES)
        reference = official_tiling(model.decode, z, SMALL_TILES, encode=False)
    assert ours.shape == (1, 3, 9, 40, 136) and ours.dtype == dtype
    assert torch.equal(ours, reference)


def test_tiled_equals_untiled_when_one_tile_covers_the_input(vae):
    settings = TileSettings(height=64, width=64, length=8)
    x, z = video(8), latent(2)
    with torch.no_grad():
        assert torch.equal(tiled_encode(vae, x, settings), vae.encode(x))
        assert torch.equal(tiled_decode(vae, z, settings), vae.decode(z))


def test_tiled_decode_memory_is_bounded_by_the_tile_not_the_video(vae):
    """Count the largest decoder input and how many decoded tiles are alive at once, for a short and a
    four times longer latent: neither may grow with the length."""

    def measure(frames: int) -> tuple[int, int]:
        alive, largest, peak_alive = [], [0], [0]
        original = vae.decode

        def tracked(z):
            largest[0] = max(largest[0], z.numel())
            out = original(z)
            alive.append(weakref.ref(out))
            peak_alive[0] = max(peak_alive[0], sum(ref() is not None for ref in alive))
            return out

        vae.decode = tracked
        try:
            with torch.no_grad():
                tiled_decode(vae, latent(frames, 7, 7), TileSettings(height=32, width=32, length=8))
        finally:
            del vae.decode
        return largest[0], peak_alive[0]

    short, long = measure(2), measure(8)
    assert short == long
    assert long[1] <= 3 + 2  # about one row of the 3 x 3 spatial tiles, never the 4 x 9 tiles of the video


# ---------------------------------------------------------------------------------------------- helpers
def test_encode_helpers_scale_the_tiled_mean(vae):
    pixels = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    expected = tiled_encode(vae, pixels.permute(3, 0, 1, 2)[None].float() / 127.5 - 1, TileSettings()) * SCALE_FACTOR
    torch.testing.assert_close(encode_video(vae, pixels), expected)
    image = encode_image(vae, pixels[0])
    assert image.shape == (1, 16, 1, 4, 4)
    torch.testing.assert_close(image, encode_video(vae, pixels[:1]))


def test_decode_chunk_gives_uint8_frames_channels_last(vae):
    z = latent(6, 4, 4) * SCALE_FACTOR
    frames = decode_chunk(vae, z, tiling=SMALL_TILES)
    assert frames.shape == (24, 32, 32, 3) and frames.dtype == torch.uint8
    with torch.no_grad():
        expected = unit_range_to_pixels(tiled_decode(vae, z / SCALE_FACTOR, SMALL_TILES))
    assert torch.equal(frames, expected[0].permute(1, 2, 3, 0))
    assert decode_chunk(vae, z[:, :, :3], tiling=SMALL_TILES).shape[0] == 9  # 8 + the 1-latent tail tile


def test_uint8_conversion_truncates_after_clamping():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 0.999, 1.5])
    assert unit_range_to_pixels(x).tolist() == [0, 0, 127, 191, 254, 255]
    # In bf16 every op rounds (spacing 0.5 below 128, 1 above): 0.59765625 -> 76.0 -> 203.5 -> 204,
    # where float32 gives 203.70 -> 203.
    v = 0.59765625
    assert unit_range_to_pixels(torch.tensor([v])).item() == 203
    assert unit_range_to_pixels(torch.tensor([v], dtype=torch.bfloat16)).item() == 204
