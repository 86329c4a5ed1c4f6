import pytest
import torch

from sdlearn import anatomy, models


@pytest.fixture(scope="module")
def meta_replica():
    return models.sd15_replica(meta=True)


# --- shapes -------------------------------------------------------------------------------------


def test_trace_matches_configs_on_tiny_components(tiny_components):
    traced = anatomy.trace_shapes(tiny_components, batch_size=2)
    assert traced == anatomy.config_shapes(tiny_components, batch_size=2)
    # the tiny VAE downsamples by 2: 16x16 latents decode to 32x32 images
    assert traced[-1].inputs["latents"] == (2, 4, 32, 32)
    assert traced[-1].outputs["image"] == (2, 3, 64, 64)
    assert traced[1].outputs["text_embeddings"] == (2, 77, 32)
    assert [s.part for s in traced] == [
        anatomy.TEXT_UNDERSTANDER,
        anatomy.TEXT_UNDERSTANDER,
        anatomy.IMAGE_INFORMATION_CREATOR,
        anatomy.IMAGE_INFORMATION_CREATOR,
        anatomy.IMAGE_DECODER,
    ]


def test_trace_on_meta_replica_gives_sd15_figures(meta_replica):
    traced = anatomy.trace_shapes(meta_replica)
    assert traced == anatomy.config_shapes(meta_replica)
    assert traced[1].outputs["text_embeddings"] == (1, 77, 768)
    assert traced[2].inputs["latent_model_input"] == (1, 4, 64, 64)
    assert traced[-1].outputs["image"] == (1, 3, 512, 512)


def test_trace_starts_from_the_noise_the_pipeline_draws(tiny_components):
    from diffusers.utils.torch_utils import randn_tensor

    seen = []
    hook = tiny_components.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        anatomy.trace_shapes(tiny_components, batch_size=2, generator=torch.Generator().manual_seed(3))
    finally:
        hook.remove()
    expected = randn_tensor((2, 4, 32, 32), generator=torch.Generator().manual_seed(3), device=torch.device("cpu"))
    scheduler = type(tiny_components.scheduler).from_config(tiny_components.scheduler.config)
    torch.testing.assert_close(seen[0], expected * scheduler.init_noise_sigma, rtol=0, atol=0)


def test_trace_leaves_the_scheduler_alone(tiny_components):
    scheduler = tiny_components.scheduler
    before = None if scheduler.num_inference_steps is None else list(scheduler.timesteps)
    anatomy.trace_shapes(tiny_components)
    after = None if scheduler.num_inference_steps is None else list(scheduler.timesteps)
    assert before == after


def test_trace_rejects_bad_arguments(tiny_components):
    with pytest.raises(TypeError, match="SDComponents"):
        anatomy.trace_shapes(tiny_components.unet)
    with pytest.raises(ValueError, match="batch_size"):
        anatomy.config_shapes(tiny_components, batch_size=0)


def test_format_shapes_puts_columns_side_by_side(tiny_components, meta_replica):
    text = anatomy.format_shapes(
        {"tiny": anatomy.trace_shapes(tiny_components), "SD 1.5": anatomy.config_shapes(meta_replica)}
    )
    line = next(line for line in text.splitlines() if "image" in line and "out" in line)
    assert "[1, 3, 64, 64]" in line and "[1, 3, 512, 512]" in line
    for part in anatomy.PARTS:
        assert part in text


def test_format_shapes_refuses_mismatched_columns(tiny_components):
    shapes = anatomy.config_shapes(tiny_components)
    with pytest.raises(ValueError, match="different stages"):
        anatomy.format_shapes({"a": shapes, "b": shapes[:-1]})


# --- parameters ---------------------------------------------------------------------------------


def test_breakdown_sums_to_the_component_counts(tiny_components, meta_replica):
    for comp in (tiny_components, meta_replica):
        breakdown = anatomy.parameter_breakdown(comp)
        assert {k: sum(v.values()) for k, v in breakdown.items()} == comp.parameter_counts()
    sd15 = anatomy.parameter_breakdown(meta_replica)
    assert {k: sum(v.values()) for k, v in sd15.items()} == models.SD15_PARAMETER_COUNTS
    assert set(sd15["vae"]) >= {"encoder", "decoder"}


def test_format_parameters_marks_missing_blocks(tiny_components, meta_replica):
    text = anatomy.format_parameters(
        {"tiny": anatomy.parameter_breakdown(tiny_components), "SD 1.5": anatomy.parameter_breakdown(meta_replica)}
    )
    lines = text.splitlines()
    down3 = next(line for line in lines if "down_blocks.3" in line)
    assert down3.split()[-2] == "-"  # the tiny UNet has 2 stages, SD 1.5 has 4
    assert lines.index(down3) < next(i for i, line in enumerate(lines) if "mid_block" in line)
    assert f"{sum(models.SD15_PARAMETER_COUNTS.values()):,}" in lines[-1]


def test_ordered_union_keeps_data_flow_order():
    merged = anatomy._ordered_union([["d0", "d1", "mid", "u0", "u1"], ["d0", "d1", "d2", "mid", "u0", "u1", "u2"]])
    assert merged == ["d0", "d1", "d2", "mid", "u0", "u1", "u2"]


# --- FLOPs --------------------------------------------------------------------------------------


def test_unet_flops_of_sd15_and_its_pixel_twin(meta_replica):
    config = meta_replica.unet.config
    latent = anatomy.unet_flops(config, sample_shape=(1, 4, 64, 64), text_shape=(1, 77, 768))
    assert latent["total"] == sum(v for k, v in latent.items() if k != "total")
    assert 7e11 < latent["total"] < 9e11  # SD 1.5: about 0.8 TFLOPs per UNet call at 512x512
    assert latent["attention"] > 0  # counted on meta, where attention is not a fused kernel
    pixel_config = {**config, "in_channels": 3, "out_channels": 3, "sample_size": 512}
    pixel = anatomy.unet_flops(pixel_config, sample_shape=(1, 3, 512, 512), text_shape=(1, 77, 768))
    # convolutions scale with the number of positions: 8x8 = 64 times more
    assert pixel["convolution"] / latent["convolution"] == pytest.approx(64, rel=0.01)
    # self-attention scales with positions squared (64^2), cross-attention linearly
    assert 64 < pixel["attention"] / latent["attention"] <= 64**2


def test_unet_flops_doubles_with_the_batch(tiny_components):
    config = tiny_components.unet.config
    one = anatomy.unet_flops(config, sample_shape=(1, 4, 32, 32), text_shape=(1, 77, 32))
    two = anatomy.unet_flops(config, sample_shape=(2, 4, 32, 32), text_shape=(2, 77, 32))
    assert two["total"] == 2 * one["total"]


def test_unet_flops_says_what_to_do_on_channel_mismatch(tiny_components):
    with pytest.raises(ValueError, match="in_channels"):
        anatomy.unet_flops(tiny_components.unet.config, sample_shape=(1, 3, 64, 64), text_shape=(1, 77, 32))
    with pytest.raises(ValueError, match="batch size"):
        anatomy.unet_flops(tiny_components.unet.config, sample_shape=(2, 4, 32, 32), text_shape=(1, 77, 32))


def _text_encoder_flops(text_encoder, tokens: int) -> int:
    """2 FLOPs per weight per token in every Linear layer, plus 4 L^2 d per layer for Q K^T and probs V."""
    cfg = text_encoder.config
    linear_weights = sum(m.weight.numel() for m in text_encoder.modules() if isinstance(m, torch.nn.Linear))
    return 2 * tokens * linear_weights + cfg.num_hidden_layers * 4 * tokens**2 * cfg.hidden_size


def test_flops_per_call_on_tiny_components(tiny_components):
    one = anatomy.flops_per_call(tiny_components)
    assert set(one) == {"text_encoder", "unet", "vae.decode"}
    assert one["unet"] == anatomy.unet_flops(
        tiny_components.unet.config, sample_shape=(1, 4, 32, 32), text_shape=(1, 77, 32)
    )["total"]
    assert one["text_encoder"] == _text_encoder_flops(tiny_components.text_encoder, 77)
    assert one["vae.decode"] > 0
    two = anatomy.flops_per_call(tiny_components, batch_size=2)
    assert two == {name: 2 * flops for name, flops in one.items()}


def test_flops_per_call_of_sd15(meta_replica):
    flops = anatomy.flops_per_call(meta_replica)
    assert flops["text_encoder"] == _text_encoder_flops(meta_replica.text_encoder, 77)
    # the decoder works at 512x512 pixels: one decode costs more than one UNet step at 64x64
    assert flops["vae.decode"] > flops["unet"] > flops["text_encoder"]


def test_flops_per_call_rejects_bad_arguments(tiny_components):
    with pytest.raises(TypeError, match="SDComponents"):
        anatomy.flops_per_call(tiny_components.vae)
    with pytest.raises(ValueError, match="batch_size"):
        anatomy.flops_per_call(tiny_components, batch_size=0)
