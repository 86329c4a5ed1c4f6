import copy

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from sdlearn import models, unet as U


@pytest.fixture(scope="module")
def meta_replica():
    return models.sd15_replica(meta=True)


def _inputs(unet, batch=1, tokens=77, *, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    side = unet.config.sample_size
    if device == "meta":
        sample = torch.zeros(batch, unet.config.in_channels, side, side, device="meta")
        text = torch.zeros(batch, tokens, unet.config.cross_attention_dim, device="meta")
    else:
        sample = torch.randn(batch, unet.config.in_channels, side, side, generator=g)
        text = torch.randn(batch, tokens, unet.config.cross_attention_dim, generator=g)
    return sample, text


# --- the shape walk -----------------------------------------------------------------------------


def test_trace_unet_on_tiny_components(tiny_components):
    unet = tiny_components.unet
    sample, text = _inputs(unet, batch=2)
    stages = U.trace_unet(unet, sample, 10, text)
    names = [s.name for s in stages]
    assert names == ["sample", "conv_in", "down_blocks.0", "down_blocks.1", "mid_block",
                     "up_blocks.0", "up_blocks.1", "conv_out"]
    shapes = {s.name: s.shape for s in stages}
    assert shapes["conv_in"] == (2, 32, 32, 32)
    assert shapes["down_blocks.0"] == (2, 32, 16, 16)
    assert shapes["mid_block"] == (2, 64, 16, 16)
    assert shapes["up_blocks.0"] == (2, 64, 32, 32)
    assert shapes["conv_out"] == sample.shape
    # every saved skip tensor is used exactly once, last saved first
    saved = [shape for s in stages for shape in s.skips_saved]
    used = [shape for s in stages for shape in s.skips_used]
    assert used == saved[::-1]
    rest = models.count_parameters(unet.time_embedding) + models.count_parameters(unet.conv_norm_out)
    assert sum(s.parameters for s in stages) + rest == models.count_parameters(unet)
    assert not unet._forward_hooks and not unet.conv_in._forward_hooks  # hooks removed


def test_trace_unet_on_meta_replica_walks_64_to_8_and_back(meta_replica):
    unet = meta_replica.unet
    sample, text = _inputs(unet, device="meta")
    stages = U.trace_unet(unet, sample, 500, text)
    res = [(s.name, s.resolution, s.channels) for s in stages]
    assert res[0] == ("sample", (64, 64), 4)
    assert ("mid_block", (8, 8), 1280) in res
    assert [r for n, r, c in res if n.startswith("down_blocks")] == [(32, 32), (16, 16), (8, 8), (8, 8)]
    assert [c for n, r, c in res if n.startswith("up_blocks")] == [1280, 1280, 640, 320]
    assert res[-1] == ("conv_out", (64, 64), 4)
    assert len([shape for s in stages for shape in s.skips_saved]) == 12
    by_block = models.parameters_by_block(unet)
    assert {s.name: s.parameters for s in stages if s.name in by_block} == {
        k: v for k, v in by_block.items() if k != "other"}
    table = U.format_stages(stages)
    assert "mid_block" in table and "8x8" in table and "1,280" not in table.splitlines()[0]


def test_trace_unet_rejects_wrong_inputs(tiny_components):
    unet = tiny_components.unet
    sample, text = _inputs(unet)
    with pytest.raises(ValueError, match="channels"):
        U.trace_unet(unet, torch.zeros(1, 3, 32, 32), 0, text)
    with pytest.raises(ValueError, match="cross_attention_dim"):
        U.trace_unet(unet, sample, 0, torch.zeros(1, 77, 16))
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        U.trace_unet(unet, sample[0], 0, text)
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        U.trace_unet(tiny_components.vae, sample, 0, text)


# --- conditioning -------------------------------------------------------------------------------


@pytest.mark.parametrize("flip", [True, False])
def test_timestep_embedding_matches_time_proj(tiny_components, flip):
    unet = tiny_components.unet
    t = torch.tensor([0, 1, 17, 500, 999])
    dim = unet.config.block_out_channels[0]
    ours = U.timestep_embedding(t, dim, flip_sin_to_cos=unet.config.flip_sin_to_cos,
                                freq_shift=unet.config.freq_shift)
    torch.testing.assert_close(ours, unet.time_proj(t))
    from diffusers.models.embeddings import Timesteps

    torch.testing.assert_close(U.timestep_embedding(t, 10, flip_sin_to_cos=flip, freq_shift=1),
                               Timesteps(10, flip, 1)(t))
    assert ours.shape == (5, dim)
    assert torch.equal(ours[0], torch.cat([torch.ones(dim // 2), torch.zeros(dim // 2)]))  # t = 0: cos 1, sin 0


def test_timestep_embedding_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        U.timestep_embedding(torch.zeros(2, 2), 8)
    with pytest.raises(ValueError, match="even"):
        U.timestep_embedding(torch.zeros(2), 7)
    with pytest.raises(TypeError, match="tensor"):
        U.timestep_embedding(5, 8)


def test_cross_attention_shapes_and_by_hand(tiny_components):
    unet = copy.deepcopy(tiny_components.unet)
    sample, text = _inputs(unet, batch=2, tokens=77)
    shapes = U.trace_cross_attention(unet, sample, 3, text)
    layers = U.cross_attention_layers(unet)
    assert [s.name for s in shapes] == [name for name, _ in layers] and len(shapes) > 0
    for s in shapes:
        assert s.key == s.value == (2, 77, s.query[2])
        assert s.query[0] == 2 and s.probs == (2, s.heads, s.query[1], 77)
    assert {s.query[1] for s in shapes} == {32 * 32, 16 * 16}  # full resolution, and the middle block

    name, attn = layers[0]
    captured = {}

    def hook(module, args, kwargs, output):
        captured["x"] = args[0] if args else kwargs["hidden_states"]
        captured["c"] = kwargs["encoder_hidden_states"]
        captured["out"] = output

    handle = attn.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        unet(sample, 3, encoder_hidden_states=text)
    handle.remove()
    with torch.no_grad():
        out, probs = U.cross_attention(attn, captured["x"], captured["c"])
    torch.testing.assert_close(out, captured["out"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


def test_cross_attention_shapes_on_meta_replica(meta_replica):
    unet = meta_replica.unet
    sample, text = _inputs(unet, device="meta")
    shapes = U.trace_cross_attention(unet, sample, 1, text)
    assert len(shapes) == 16
    assert shapes[0].query == (1, 64 * 64, 320) and shapes[0].key == (1, 77, 320) and shapes[0].heads == 8
    assert {s.query[1] for s in shapes} == {64 * 64, 32 * 32, 16 * 16, 8 * 8}
    names = [s.name for s in shapes]
    assert names[0].startswith("down_blocks.0") and names[6].startswith("mid_block")
    assert names[-1].startswith("up_blocks.3")


def test_named_modules_in_order(tiny_components):
    names = [name for name, _ in U.named_modules_in_order(tiny_components.unet)]
    assert sorted(names) == sorted(name for name, _ in tiny_components.unet.named_modules() if name)
    tops = [name.split(".")[0] for name in names]
    assert tops.index("mid_block") < tops.index("up_blocks") and tops[-1] == "conv_out"


# --- predictions --------------------------------------------------------------------------------


def test_predict_x0_inverts_add_noise_and_matches_scheduler_step():
    g = torch.Generator().manual_seed(1)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    x0 = torch.randn(3, 4, 8, 8, generator=g)
    eps = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 400, 990])
    x_t = scheduler.add_noise(x0, eps, t)
    torch.testing.assert_close(U.predict_x0(x_t, eps, t, scheduler.alphas_cumprod), x0, rtol=1e-4, atol=1e-3)
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(20)
    step = ddim.step(eps[:1], 400, x_t[1:2])
    torch.testing.assert_close(U.predict_x0(x_t[1:2], eps[:1], 400, scheduler.alphas_cumprod),
                               step.pred_original_sample)
    with pytest.raises(ValueError, match="out of range"):
        U.predict_x0(x_t, eps, 1000, scheduler.alphas_cumprod)
    with pytest.raises(ValueError, match="same shape"):
        U.predict_x0(x_t, eps[:1], 3, scheduler.alphas_cumprod)


def test_classifier_free_guidance():
    u, c = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    torch.testing.assert_close(U.classifier_free_guidance(u, c, 0.0), u)
    torch.testing.assert_close(U.classifier_free_guidance(u, c, 1.0), c)
    torch.testing.assert_close(U.classifier_free_guidance(u, c, 7.5), torch.full_like(c, 7.5))
    with pytest.raises(ValueError, match="chunk"):
        U.classifier_free_guidance(u, c[:, :2], 2.0)


def test_mse_by_timestep_matches_a_loop(tiny_components):
    unet, scheduler = tiny_components.unet, tiny_components.scheduler
    latents, text = _inputs(unet, batch=3, seed=2)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))
    ts = [0, 500, 999]
    errors = U.mse_by_timestep(unet, latents, text, noise, ts, scheduler.alphas_cumprod, batch_size=2)
    assert errors.shape == (3,)
    with torch.no_grad():
        for t, err in zip(ts, errors):
            x_t = scheduler.add_noise(latents, noise, torch.tensor([t]))
            pred = unet(x_t, t, encoder_hidden_states=text).sample
            torch.testing.assert_close(err, ((pred - noise) ** 2).mean(), rtol=1e-4, atol=1e-6)


def test_capture_unet_calls_sees_the_guided_batch(tiny_components):
    pipe = tiny_components.make_pipeline()
    with U.capture_unet_calls(pipe.unet) as calls:
        out = pipe("a red circle", num_inference_steps=2, guidance_scale=5.0, output_type="latent",
                   generator=torch.Generator().manual_seed(0))
    assert len(calls) == 2
    assert calls[0].sample.shape[0] == 2 and calls[0].encoder_hidden_states.shape[0] == 2
    assert calls[0].noise_pred.shape == calls[0].sample.shape
    assert out.images.shape == calls[0].sample[:1].shape
    assert not pipe.unet._forward_hooks
