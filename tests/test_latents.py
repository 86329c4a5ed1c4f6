import io
import math

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler
from PIL import Image

from sdlearn import latents as L
from sdlearn import models
from sdlearn.text import encode


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- lerp, lerp_std ------------------------------------------------------------------------------


def test_lerp_is_the_straight_line_with_a_batch_of_weights():
    a, b = _randn(4, 3, 3, seed=1), _randn(4, 3, 3, seed=2)
    torch.testing.assert_close(L.lerp(a, b, 0.0), a)
    torch.testing.assert_close(L.lerp(a, b, 1.0), b)
    torch.testing.assert_close(L.lerp(a, b, 0.25), 0.75 * a + 0.25 * b)
    out = L.lerp(a, b, [0.0, 0.5, 1.0])
    assert out.shape == (3, 4, 3, 3) and out.dtype == a.dtype
    torch.testing.assert_close(out[1], (a + b) / 2)
    assert L.lerp(a, b, torch.tensor(0.5)).shape == a.shape            # a 0-d tensor is one weight


def test_lerp_std_matches_the_variance_rule_and_a_measurement():
    w = torch.linspace(0, 1, 5)
    expected = ((1 - w.double()) ** 2 + w.double() ** 2).sqrt()
    torch.testing.assert_close(L.lerp_std(w), expected)
    assert math.isclose(float(L.lerp_std(0.5)), 2**-0.5, rel_tol=1e-12)
    assert float(L.lerp_std(0.0)) == 1.0 and L.lerp_std(0.3).ndim == 0
    a, b = _randn(200_000, seed=3), _randn(200_000, seed=4)
    measured = torch.stack([L.lerp(a, b, float(x)).std() for x in w]).double()
    torch.testing.assert_close(measured, expected, rtol=0.01, atol=0)   # 200k draws: std known to ~0.2%


@pytest.mark.parametrize(
    "weights, error, match",
    [
        (1.5, ValueError, r"lie in \[0, 1\]"),
        (-0.1, ValueError, r"lie in \[0, 1\]"),
        (float("nan"), ValueError, r"lie in \[0, 1\]"),
        ([[0.1, 0.2]], ValueError, "expected one number or a non-empty 1-D"),
        ([], ValueError, "expected one number or a non-empty 1-D"),
        (True, TypeError, "not a bool"),
        ("half", TypeError, "weights must be a number"),
    ],
)
def test_bad_weights_are_refused(weights, error, match):
    a, b = _randn(3, seed=1), _randn(3, seed=2)
    with pytest.raises(error, match=match):
        L.lerp(a, b, weights)
    with pytest.raises(error, match=match):
        L.slerp(a, b, weights)
    if error is ValueError:
        with pytest.raises(error, match=match):
            L.lerp_std(weights)


def test_bad_pairs_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        L.lerp(torch.zeros(3), torch.zeros(4), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        L.slerp(torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long), 0.5)
    with pytest.raises(TypeError, match="must be torch tensors"):
        L.lerp([1.0, 2.0], torch.zeros(2), 0.5)


# --- slerp ---------------------------------------------------------------------------------------


def test_slerp_ends_and_the_formula():
    a, b = _randn(2, 4, 4, seed=5), _randn(2, 4, 4, seed=6)
    torch.testing.assert_close(L.slerp(a, b, 0.0), a)
    torch.testing.assert_close(L.slerp(a, b, 1.0), b)
    va, vb = a.flatten().double(), b.flatten().double()
    theta = torch.arccos(va @ vb / (va.norm() * vb.norm()))
    for w in (0.2, 0.5, 0.9):
        by_hand = (torch.sin((1 - w) * theta) * va + torch.sin(w * theta) * vb) / torch.sin(theta)
        torch.testing.assert_close(L.slerp(a, b, w).flatten().double(), by_hand, rtol=1e-6, atol=1e-6)


def test_slerp_on_orthogonal_unit_vectors_is_cos_and_sin():
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    w = torch.linspace(0, 1, 9)
    out = L.slerp(e1, e2, w)                                            # [9, 3]
    expected = torch.stack([torch.cos(w * math.pi / 2), torch.sin(w * math.pi / 2), torch.zeros(9)], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(9))          # stays on the unit circle


def test_slerp_keeps_the_norm_of_equal_length_vectors_and_lerp_does_not():
    a = _randn(256, seed=7)
    b = _randn(256, seed=8)
    b = b / b.norm() * a.norm()
    w = torch.linspace(0, 1, 11)
    torch.testing.assert_close(L.slerp(a, b, w).norm(dim=1), a.norm().expand(11), rtol=1e-5, atol=0)
    assert L.lerp(a, b, 0.5).norm() < 0.8 * a.norm()                   # nearly orthogonal: about 1/sqrt(2)


def test_slerp_falls_back_to_lerp_for_parallel_vectors():
    a = _randn(8, seed=9)
    out = L.slerp(a, 2 * a, torch.linspace(0, 1, 5))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, L.lerp(a, 2 * a, torch.linspace(0, 1, 5)))
    near = a + 1e-6 * _randn(8, seed=10)                               # cos theta = 1 to float precision
    torch.testing.assert_close(L.slerp(a, near, 0.5), (a + near) / 2, rtol=1e-6, atol=1e-6)


def test_slerp_per_row_with_dim():
    a, b = _randn(5, 16, seed=11), _randn(5, 16, seed=12)
    a[0] = b[0]                                                         # one identical row: the lerp fallback
    out = L.slerp(a, b, [0.3, 0.7], dim=-1)                             # [2, 5, 16]
    assert out.shape == (2, 5, 16)
    for i in range(5):
        torch.testing.assert_close(out[:, i], L.slerp(a[i], b[i], [0.3, 0.7]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(L.slerp(a, b, 0.5, dim=0), L.slerp(a.T, b.T, 0.5, dim=1).T)


def test_slerp_keeps_dtype_and_device():
    a, b = _randn(4, 4, seed=13, dtype=torch.float64), _randn(4, 4, seed=14, dtype=torch.float64)
    assert L.slerp(a, b, 0.5).dtype == torch.float64
    assert L.slerp(a.half(), b.half(), 0.5).dtype == torch.float16


def test_slerp_refuses_what_has_no_answer():
    a = _randn(6, seed=15)
    with pytest.raises(ValueError, match="opposite directions"):
        L.slerp(a, -a, 0.5)
    with pytest.raises(ValueError, match="non-zero vectors"):
        L.slerp(torch.zeros(6), a, 0.5)
    with pytest.raises(ValueError, match="dim must be None or an axis"):
        L.slerp(a, a + 1, 0.5, dim=3)
    with pytest.raises(ValueError, match="dot_threshold must be a number in"):
        L.slerp(a, a + 1, 0.5, dot_threshold=1.5)


# --- interpolate_embeddings ----------------------------------------------------------------------


def test_interpolate_embeddings_shapes_and_methods():
    ea, eb = _randn(1, 77, 32, seed=16), _randn(1, 77, 32, seed=17)
    lin = L.interpolate_embeddings(ea, eb, torch.linspace(0, 1, 4))
    assert lin.shape == (4, 77, 32)
    torch.testing.assert_close(lin[0], ea[0])
    torch.testing.assert_close(lin[-1], eb[0])
    torch.testing.assert_close(L.interpolate_embeddings(ea, eb, 0.5), (ea + eb) / 2)   # one weight: [1, L, d]
    sph = L.interpolate_embeddings(ea[0], eb[0], [0.5], method="spherical")            # [L, d] in, [1, L, d] out
    assert sph.shape == (1, 77, 32)
    torch.testing.assert_close(sph[0], L.slerp(ea[0], eb[0], 0.5, dim=-1))
    # per token, the spherical midpoint (a+b) / (2 cos(theta/2)) is longer than the linear one, which cuts the corner
    linear_mid = L.interpolate_embeddings(ea, eb, 0.5)[0]
    assert bool((sph[0].norm(dim=-1) > linear_mid.norm(dim=-1)).all())


def test_interpolate_embeddings_refuses_bad_input():
    ea = _randn(2, 77, 32, seed=18)
    with pytest.raises(ValueError, match=r"expected one prompt's embeddings \[1, L, d\]"):
        L.interpolate_embeddings(ea, ea + 1, 0.5)
    with pytest.raises(ValueError, match="method must be 'linear' or 'spherical'"):
        L.interpolate_embeddings(ea[:1], ea[1:], 0.5, method="cubic")
    with pytest.raises(ValueError, match="same shape"):
        L.interpolate_embeddings(ea[:1], ea[:1, :10], 0.5)


# --- sample_trajectory ---------------------------------------------------------------------------


def _text(components, prompts):
    return encode(components.tokenizer, components.text_encoder, prompts)


def _start(components, batch=1, seed=0):
    side = components.unet.config.sample_size
    return _randn(batch, components.unet.config.in_channels, side, side, seed=seed)


def _pipeline_latents(components, scheduler, start, prompt_embeds, negative, steps, guidance):
    pipe = components.make_pipeline()
    pipe.scheduler = scheduler
    seen = []

    def keep(pipeline, i, t, kwargs):
        seen.append(kwargs["latents"].clone())
        return kwargs

    final = pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative, latents=start,
                 num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                 callback_on_step_end=keep).images
    return torch.stack(seen), final


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, PNDMScheduler])
def test_sample_trajectory_is_the_pipelines_loop(tiny_components, scheduler_cls):
    c = tiny_components
    text, empty = _text(c, ["a red circle", ""]).split(1)
    start = _start(c, batch=2)
    scheduler = scheduler_cls.from_config(c.scheduler.config)
    traj = L.sample_trajectory(c.unet, scheduler, start, text, empty, num_inference_steps=4, guidance_scale=5.0)
    steps = traj.num_steps
    assert steps == len(traj.timesteps) >= 4
    assert traj.latents.shape == (steps + 1, 2, 4, 32, 32)
    assert traj.noise_preds.shape == traj.x0_preds.shape == (steps, 2, 4, 32, 32)
    assert traj.latents.dtype == torch.float32 and traj.latents.device.type == "cpu"
    assert traj.guidance_scale == 5.0
    fresh = scheduler_cls.from_config(c.scheduler.config)
    seen, final = _pipeline_latents(c, fresh, start, text.expand(2, -1, -1), empty.expand(2, -1, -1), 4, 5.0)
    torch.testing.assert_close(seen, traj.latents[1:], rtol=1e-5, atol=1e-5)   # same ops, same order
    torch.testing.assert_close(final, traj.latents[-1], rtol=1e-5, atol=1e-5)
    assert scheduler.num_inference_steps is None                              # the caller's scheduler untouched


def test_sample_trajectory_x0_is_ddims_pred_original_sample(tiny_components):
    c = tiny_components
    text, empty = _text(c, ["a blue square", ""]).split(1)
    traj = L.sample_trajectory(c.unet, c.scheduler, _start(c, seed=1), text, empty, num_inference_steps=3,
                               guidance_scale=3.0)
    ddim = DDIMScheduler.from_config(c.scheduler.config)
    ddim.set_timesteps(3)
    for i, t in enumerate(traj.timesteps):
        out = ddim.step(traj.noise_preds[i], t, traj.latents[i])
        torch.testing.assert_close(traj.x0_preds[i], out.pred_original_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(traj.latents[i + 1], out.prev_sample, rtol=1e-5, atol=1e-5)


def test_sample_trajectory_guidance_one_is_the_conditional_prediction(tiny_components):
    c = tiny_components
    text, empty = _text(c, ["a green circle", ""]).split(1)
    start = _start(c, seed=2)
    traj = L.sample_trajectory(c.unet, c.scheduler, start, text, empty, num_inference_steps=2, guidance_scale=1.0)
    t0 = traj.timesteps[0]
    direct = c.unet(start, t0, encoder_hidden_states=text).sample
    torch.testing.assert_close(traj.noise_preds[0], direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(latents=torch.zeros(1, 3, 32, 32)), r"this U-Net denoises \[B, 4, h, w\]"),
        (dict(latents=torch.zeros(4, 32, 32)), r"this U-Net denoises \[B, 4, h, w\]"),
        (dict(prompt_embeds=torch.zeros(1, 77, 16)), r"text embeddings \[B, L, 32\]"),
        (dict(negative_prompt_embeds=torch.zeros(3, 77, 32)), "a batch of 3 for 1 latents"),
        (dict(num_inference_steps=0), "num_inference_steps must be an int >= 1"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    ],
)
def test_sample_trajectory_refuses_bad_input(tiny_components, change, match):
    c = tiny_components
    args = dict(latents=_start(c), prompt_embeds=torch.zeros(1, 77, 32), negative_prompt_embeds=torch.zeros(1, 77, 32),
                num_inference_steps=2, guidance_scale=2.0)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        L.sample_trajectory(c.unet, c.scheduler, args.pop("latents"), args.pop("prompt_embeds"),
                            args.pop("negative_prompt_embeds"), **args)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")      # diffusers' Euler scheduler on numpy 2, not ours
def test_sample_trajectory_refuses_schedulers_it_cannot_read(tiny_components):
    c = tiny_components
    start, text = _start(c), torch.zeros(1, 77, 32)
    with pytest.raises(ValueError, match="prediction_type 'epsilon'"):
        L.sample_trajectory(c.unet, DDIMScheduler.from_config(c.scheduler.config, prediction_type="v_prediction"),
                            start, text, text, num_inference_steps=2)
    with pytest.raises(ValueError, match="scales latents by sigma.*DDIMScheduler.from_config"):
        L.sample_trajectory(c.unet, EulerDiscreteScheduler.from_config(c.scheduler.config), start, text, text,
                            num_inference_steps=2)


# --- animation_png -------------------------------------------------------------------------------


def test_animation_png_is_an_animated_png_of_every_frame():
    frames = torch.linspace(-1, 1, 5).reshape(5, 1, 1, 1).expand(5, 3, 8, 8)   # 5 grey levels
    data = L.animation_png(frames, duration_ms=120, size=32)
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.is_animated and img.n_frames == 5 and img.size == (32, 32)
    levels = []
    for i in range(5):
        img.seek(i)
        levels.append(img.convert("RGB").getpixel((0, 0))[0])
    assert levels == [0, 64, 128, 191, 255]                            # (x + 1) / 2 * 255, rounded
    assert Image.open(io.BytesIO(L.animation_png(frames[:1]))).size == (8, 8)


def test_animation_png_refuses_bad_input():
    with pytest.raises(ValueError, match=r"4 channels: latents \[B, 4, h, w\] \(decode them with the VAE first\)"):
        L.animation_png(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"no images. Pass at least one"):
        L.animation_png(torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match="duration_ms must be an int >= 1"):
        L.animation_png(torch.zeros(2, 3, 8, 8), duration_ms=0)
    with pytest.raises(ValueError, match="size must be None or an int >= 1"):
        L.animation_png(torch.zeros(2, 3, 8, 8), size=0)


# --- LatentExplorer ------------------------------------------------------------------------------


def _explorer(c, **kwargs):
    text_a, text_b, empty = _text(c, ["a red circle", "a blue square", ""]).split(1)
    return L.LatentExplorer(c.unet, c.vae, c.scheduler, noise_a=_start(c, seed=3), noise_b=_start(c, seed=4),
                            prompt_embeds_a=text_a, prompt_embeds_b=text_b, negative_prompt_embeds=empty,
                            num_inference_steps=kwargs.pop("num_inference_steps", 2), **kwargs)


def test_explorer_runs_the_interpolated_settings_and_caches_them(tiny_components):
    c = tiny_components
    ex = _explorer(c)
    first = ex.trajectory(0.0, 0.0, 2.0)
    direct = L.sample_trajectory(c.unet, c.scheduler, ex.noise_a, ex.prompt_embeds_a, ex.negative_prompt_embeds,
                                 num_inference_steps=2, guidance_scale=2.0)
    torch.testing.assert_close(first.latents, direct.latents)
    assert ex.trajectory(0.1 + 0.2 - 0.3, 0.0, 2.0) is first             # rounded settings: the same cache entry
    mid = ex.trajectory(0.5, 0.25, 3.0)
    expected = L.sample_trajectory(c.unet, c.scheduler, L.slerp(ex.noise_a, ex.noise_b, 0.5),
                                   L.interpolate_embeddings(ex.prompt_embeds_a, ex.prompt_embeds_b, 0.25),
                                   ex.negative_prompt_embeds, num_inference_steps=2, guidance_scale=3.0)
    torch.testing.assert_close(mid.latents, expected.latents)
    assert ex.cache_info() == {"trajectories": 2, "frames": 0, "hits": 1, "misses": 2}


def test_explorer_frames_and_render(tiny_components):
    c = tiny_components
    ex = _explorer(c, panel_size=48)
    traj = ex.trajectory(1.0, 1.0, 2.0)
    images = ex.frames(1.0, 1.0, 2.0, 1)
    assert images.shape == (3, 3, 64, 64) and images.min() >= -1 and images.max() <= 1
    from sdlearn.vae import decode

    torch.testing.assert_close(images[1:2], decode(c.vae, traj.x0_preds[1]))
    assert ex.frames(1.0, 1.0, 2.0, 1) is images                        # cached
    png = ex.render(1.0, 1.0, 2.0, 0)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (3 * 48 + 2 * 4, 48 + 16)
    assert png != ex.render(1.0, 1.0, 2.0, 1)                            # another step, another picture


def test_explorer_forgets_the_least_recently_used(tiny_components):
    ex = _explorer(tiny_components, max_trajectories=2, max_frames=1)
    ex.trajectory(0.0, 0.0, 1.0)
    ex.trajectory(0.5, 0.0, 1.0)
    ex.trajectory(0.0, 0.0, 1.0)                                        # a hit: now the most recent
    ex.trajectory(1.0, 0.0, 1.0)                                        # evicts (0.5, 0, 1)
    assert ex.cache_info() == {"trajectories": 2, "frames": 0, "hits": 1, "misses": 3}
    ex.trajectory(0.0, 0.0, 1.0)                                        # still cached: a hit
    assert ex.cache_info()["misses"] == 3
    ex.trajectory(0.5, 0.0, 1.0)                                        # forgotten: computed again
    assert ex.cache_info()["misses"] == 4
    ex.frames(0.0, 0.0, 1.0, 0)
    ex.frames(0.0, 0.0, 1.0, 1)
    assert ex.cache_info()["frames"] == 1


def test_explorer_refuses_bad_input(tiny_components):
    c = tiny_components
    ex = _explorer(c)
    with pytest.raises(ValueError, match=r"step must be an int in \[0, 1\]"):
        ex.frames(0.0, 0.0, 2.0, 2)
    with pytest.raises(ValueError, match="must be finite numbers"):
        ex.trajectory(float("nan"), 0.0, 2.0)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        ex.trajectory(1.5, 0.0, 2.0)
    text = torch.zeros(1, 77, 32)
    with pytest.raises(ValueError, match=r"expected one start latent \[1, C, h, w\]"):
        L.LatentExplorer(c.unet, c.vae, c.scheduler, noise_a=_start(c, 2), noise_b=_start(c, 2),
                         prompt_embeds_a=text, prompt_embeds_b=text, negative_prompt_embeds=text)
    with pytest.raises(ValueError, match=r"text embeddings \[B, L, 32\]"):
        L.LatentExplorer(c.unet, c.vae, c.scheduler, noise_a=_start(c), noise_b=_start(c),
                         prompt_embeds_a=torch.zeros(1, 77, 8), prompt_embeds_b=text, negative_prompt_embeds=text)
    with pytest.raises(ValueError, match="num_inference_steps must be an int >= 1"):
        L.LatentExplorer(c.unet, c.vae, c.scheduler, noise_a=_start(c), noise_b=_start(c), prompt_embeds_a=text,
                         prompt_embeds_b=text, negative_prompt_embeds=text, num_inference_steps=0)


# --- the sliders on the bundled model ----------------------------------------------------------------

MOVES = 3


@pytest.fixture(scope="module")
def bundled():
    return models.load("bundled", device="cpu", dtype=torch.float32)


def test_a_guidance_move_samples_anew_and_a_timestep_move_reuses_the_run(bundled):
    """What the notebook's sliders do on the bundled model: every guidance move is a cache miss (a new
    sampling run), a timestep move reuses it. How long a move takes is measured by
    benchmarks/slider_redraw.py, not asserted here (a wall-clock limit fails on a busy machine)."""
    c = bundled
    with torch.no_grad():
        prompts = ["a big red circle on the left", "a small blue square on the right", ""]
        text_a, text_b, empty = _text(c, prompts).split(1)
    ex = L.LatentExplorer(c.unet, c.vae, c.scheduler, noise_a=_start(c, seed=5), noise_b=_start(c, seed=6),
                          prompt_embeds_a=text_a, prompt_embeds_b=text_b, negative_prompt_embeds=empty,
                          num_inference_steps=10)
    guidance = models.recommended_guidance_scale(c)
    assert ex.render(0.0, 0.0, guidance, 5).startswith(b"\x89PNG")
    for i in range(MOVES):
        assert ex.render(0.3, 0.5, guidance + 0.5 * (i + 1), 5).startswith(b"\x89PNG")     # guidance moves
    for step in range(MOVES):
        assert ex.render(0.3, 0.5, guidance + 0.5 * MOVES, step).startswith(b"\x89PNG")    # timestep moves
    assert ex.cache_info()["misses"] == 1 + MOVES
