"""The sampling loop by hand (sdlearn.sampling) against diffusers' pipelines and DDIMScheduler.step.

Equality tests compare the hand-written loop with StableDiffusionPipeline /
StableDiffusionImg2ImgPipeline on the same parts, scheduler config, seed and settings. In
float32 on a CPU both run the same operations in the same order, so the latents agree to
the last bit; images are compared with 1e-6 because the pipeline returns x / 2 + 1/2 and we
map it back with 2 y - 1 (a rounding or two, about 1e-7).
"""

import copy
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, PNDMScheduler, StableDiffusionImg2ImgPipeline,
                       StableDiffusionPipeline)
from diffusers.utils.torch_utils import randn_tensor

from sdlearn import models, sampling, unet as U, vae as sdvae

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle on the left"
SIZE = 32          # the tiny VAE halves once: 32x32 images, 16x16 latents
STEPS = 3
PIXEL_TOL = dict(rtol=0, atol=1e-6)

SCHEDULERS = {
    "ddim": lambda c: DDIMScheduler.from_config(c),
    "euler": lambda c: EulerDiscreteScheduler.from_config(c),
    "euler-ancestral": lambda c: EulerAncestralDiscreteScheduler.from_config(c),   # draws noise in step
    "dpm-solver++": lambda c: DPMSolverMultistepScheduler.from_config(c, algorithm_type="dpmsolver++"),
    "pndm": lambda c: PNDMScheduler.from_config(c, skip_prk_steps=True),
}


def make_pipeline(comp, scheduler, cls=StableDiffusionPipeline):
    pipe = cls(vae=comp.vae, text_encoder=comp.text_encoder, tokenizer=comp.tokenizer, unet=comp.unet,
               scheduler=sampling.fresh_scheduler(scheduler), safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pipeline_latents_and_images(pipe, prompt, **kwargs):
    """The pipeline's final latents (caught after its last step) and its images in [-1, 1]."""
    final = {}

    def keep(pipeline, i, t, callback_kwargs):
        final["latents"] = callback_kwargs["latents"]
        return callback_kwargs

    images = pipe(prompt, output_type="pt", callback_on_step_end=keep, **kwargs).images
    return final["latents"], images * 2 - 1


# --- text to image equals StableDiffusionPipeline -----------------------------------------------


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_text_to_image_equals_pipeline(tiny_components, name):
    scheduler = SCHEDULERS[name](tiny_components.scheduler.config)
    settings = dict(num_inference_steps=STEPS, guidance_scale=5.0, height=SIZE, width=SIZE)
    pipe_latents, pipe_images = pipeline_latents_and_images(make_pipeline(tiny_components, scheduler), PROMPT,
                                                            generator=gen(), **settings)
    result = sampling.text_to_image(tiny_components, PROMPT, generator=gen(), scheduler=scheduler, **settings)
    assert torch.equal(result.latents, pipe_latents)
    torch.testing.assert_close(result.images, pipe_images, **PIXEL_TOL)
    assert result.images.shape == (1, 3, SIZE, SIZE) and result.images.dtype == torch.float32
    assert -1 <= result.images.min() and result.images.max() <= 1
    assert result.steps == []


def test_negative_prompts_batch_and_eta_equal_pipeline(tiny_components):
    prompts = [PROMPT, "a blue square"]
    settings = dict(num_inference_steps=4, guidance_scale=3.0, height=SIZE, width=SIZE, eta=0.7,
                    negative_prompt=["green", "the left"])
    pipe_latents, pipe_images = pipeline_latents_and_images(
        make_pipeline(tiny_components, tiny_components.scheduler), prompts, generator=gen(5), **settings)
    result = sampling.text_to_image(tiny_components, prompts, generator=gen(5), **settings)
    assert torch.equal(result.latents, pipe_latents)          # eta > 0: the same z drawn in every step
    torch.testing.assert_close(result.images, pipe_images, **PIXEL_TOL)


def test_guidance_at_most_one_runs_the_prompt_alone_as_the_pipeline_does(tiny_components):
    settings = dict(num_inference_steps=2, guidance_scale=1.0, height=SIZE, width=SIZE)
    pipe_latents, _ = pipeline_latents_and_images(make_pipeline(tiny_components, tiny_components.scheduler),
                                                  PROMPT, generator=gen(), **settings)
    with U.capture_unet_calls(tiny_components.unet) as calls:
        result = sampling.text_to_image(tiny_components, PROMPT, generator=gen(), decode=False, **settings)
    assert [c.sample.shape[0] for c in calls] == [1, 1]       # no doubled batch
    assert torch.equal(result.latents, pipe_latents)
    assert result.images is None


def test_own_start_latents_are_scaled_by_init_noise_sigma_like_the_pipeline(tiny_components):
    euler = EulerDiscreteScheduler.from_config(tiny_components.scheduler.config)
    noise = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=gen(3))
    settings = dict(num_inference_steps=2, guidance_scale=4.0, height=SIZE, width=SIZE)
    pipe_latents, _ = pipeline_latents_and_images(make_pipeline(tiny_components, euler), PROMPT, latents=noise,
                                                  **settings)
    result = sampling.text_to_image(tiny_components, PROMPT, latents=noise, scheduler=euler, **settings)
    assert torch.equal(result.latents, pipe_latents)


def test_per_image_guidance_scales_equal_one_run_per_scale(tiny_components):
    scales = [0.0, 2.0, 6.0]
    noise = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=gen(1))
    common = dict(num_inference_steps=2, height=SIZE, width=SIZE, decode=False)
    sweep = sampling.text_to_image(tiny_components, [PROMPT] * 3, guidance_scale=scales,
                                   latents=noise.expand(3, -1, -1, -1), **common)
    # a batch of 3 and a batch of 1 go through different float32 kernels (and thread splits), so they agree
    # to rounding, not bit for bit: about 2e-5 here, on latents of size 1
    for i, s in enumerate(scales[1:], start=1):               # scales > 1: the pipeline's own rule applies
        single = sampling.text_to_image(tiny_components, PROMPT, guidance_scale=s, latents=noise, **common)
        torch.testing.assert_close(sweep.latents[i:i + 1], single.latents, rtol=1e-4, atol=1e-4)
    # s = 0 in a list is the formula's unconditional prediction, not the pipeline's "no guidance"
    uncond = sampling.text_to_image(tiny_components, "", guidance_scale=1.0, latents=noise, **common)
    torch.testing.assert_close(sweep.latents[:1], uncond.latents, rtol=1e-4, atol=1e-4)


def test_guide_applies_one_scale_per_image():
    g = gen(2)
    uncond, text = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    per_image = sampling.guide(uncond, text, [0.0, 1.0, 7.5])
    torch.testing.assert_close(per_image[0], uncond[0])
    torch.testing.assert_close(per_image[1], text[1])
    torch.testing.assert_close(per_image[2], uncond[2] + 7.5 * (text[2] - uncond[2]))
    torch.testing.assert_close(sampling.guide(uncond, text, 3.0), U.classifier_free_guidance(uncond, text, 3.0))
    torch.testing.assert_close(sampling.guide(uncond, text, torch.tensor([0.0, 1.0, 7.5])), per_image)


def test_text_to_image_leaves_the_given_scheduler_alone(tiny_components):
    euler = EulerDiscreteScheduler.from_config(tiny_components.scheduler.config)
    euler.set_timesteps(7)
    before = euler.timesteps.clone()
    sampling.text_to_image(tiny_components, PROMPT, num_inference_steps=2, height=SIZE, width=SIZE,
                           scheduler=euler, decode=False)
    assert torch.equal(euler.timesteps, before) and euler.step_index is None


def test_denoise_is_the_loop_of_text_to_image(tiny_components):
    c = tiny_components
    noise = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=gen(8))
    expected = sampling.text_to_image(c, PROMPT, num_inference_steps=3, guidance_scale=4.0, latents=noise,
                                      height=SIZE, width=SIZE, decode=False)
    scheduler = sampling.fresh_scheduler(c.scheduler)
    scheduler.set_timesteps(3)
    embeds, negative = sampling.encode_prompt(c.tokenizer, c.text_encoder, PROMPT)
    latents, steps = sampling.denoise(c.unet, scheduler, noise, embeds, timesteps=scheduler.timesteps,
                                      negative_prompt_embeds=negative, guidance_scale=4.0)
    assert torch.equal(latents, expected.latents) and steps == []
    with pytest.raises(ValueError, match="2 prompt embeddings for 1 latents"):
        sampling.denoise(c.unet, scheduler, noise, embeds.expand(2, -1, -1), timesteps=scheduler.timesteps)


# --- the record and the callback ---------------------------------------------------------------


def test_record_holds_every_step_and_pred_x0(tiny_components):
    seen = []
    result = sampling.text_to_image(tiny_components, PROMPT, num_inference_steps=4, guidance_scale=3.0,
                                    height=SIZE, width=SIZE, generator=gen(), record=True, callback=seen.append)
    steps = result.steps
    assert [s.index for s in steps] == [0, 1, 2, 3] and seen == steps
    assert [s.timestep for s in steps] == result.timesteps.tolist()
    for before, after in zip(steps, steps[1:]):
        assert torch.equal(before.prev_latents, after.latents)            # the chain x_T -> ... -> x_0
    assert torch.equal(steps[-1].prev_latents, result.latents)
    alphas = tiny_components.scheduler.alphas_cumprod
    for s in steps:
        assert s.latents.device.type == "cpu" and s.latents.dtype == torch.float32
        guided = U.classifier_free_guidance(s.noise_pred_uncond, s.noise_pred_text, 3.0)
        torch.testing.assert_close(s.noise_pred, guided)
        torch.testing.assert_close(s.pred_x0, U.predict_x0(s.latents, s.noise_pred, int(s.timestep), alphas),
                                   rtol=1e-4, atol=1e-5)


def test_record_computes_pred_x0_for_schedulers_that_do_not_return_it(tiny_components):
    dpm = DPMSolverMultistepScheduler.from_config(tiny_components.scheduler.config)
    result = sampling.text_to_image(tiny_components, PROMPT, num_inference_steps=2, guidance_scale=3.0,
                                    height=SIZE, width=SIZE, scheduler=dpm, record=True, decode=False)
    s = result.steps[0]
    torch.testing.assert_close(s.pred_x0, U.predict_x0(s.latents, s.noise_pred, int(s.timestep),
                                                       dpm.alphas_cumprod), rtol=1e-4, atol=1e-5)


# --- image to image equals StableDiffusionImg2ImgPipeline ----------------------------------------


@pytest.fixture(scope="module")
def source_image():
    """A 32x32 picture as the pipeline takes it, [1, 3, H, W] in [0, 1], and as we take it, in [-1, 1]."""
    pixels = torch.rand(1, 3, SIZE, SIZE, generator=gen(9))
    return pixels, 2.0 * pixels - 1.0                  # the pipeline's own normalisation: the same bits


@pytest.mark.parametrize("name", ["ddim", "euler"])   # Euler needs set_begin_index
def test_image_to_image_equals_img2img_pipeline(tiny_components, source_image, name):
    pixels, image = source_image
    scheduler = SCHEDULERS[name](tiny_components.scheduler.config)
    prompts = [PROMPT, "a green square"]
    settings = dict(strength=0.6, num_inference_steps=5, guidance_scale=4.0)
    pipe = make_pipeline(tiny_components, scheduler, cls=StableDiffusionImg2ImgPipeline)
    pipe_latents, pipe_images = pipeline_latents_and_images(pipe, prompts, image=pixels.expand(2, -1, -1, -1),
                                                            generator=gen(4), **settings)
    result = sampling.image_to_image(tiny_components, prompts, image.expand(2, -1, -1, -1), generator=gen(4),
                                     scheduler=scheduler, record=True, **settings)
    assert len(result.steps) == int(5 * 0.6)
    assert torch.equal(result.latents, pipe_latents)
    torch.testing.assert_close(result.images, pipe_images, **PIXEL_TOL)


def test_get_timesteps_equals_the_img2img_pipeline(tiny_components):
    pipe = make_pipeline(tiny_components, tiny_components.scheduler, cls=StableDiffusionImg2ImgPipeline)
    for steps, strength in [(10, 0.3), (20, 0.35), (7, 1.0), (50, 0.75)]:
        ours = sampling.fresh_scheduler(tiny_components.scheduler)
        ours.set_timesteps(steps)
        pipe.scheduler.set_timesteps(steps)
        expected = pipe.get_timesteps(steps, strength, "cpu")
        got = sampling.get_timesteps(ours, steps, strength)
        assert torch.equal(got[0], expected[0]) and got[1] == expected[1]


# --- the bundled model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled():
    comp = models.load("bundled", device="cpu", dtype=torch.float32)
    return comp, comp.make_pipeline()


def test_bundled_model_text_to_image_equals_pipeline(bundled):
    comp, pipe = bundled
    settings = dict(num_inference_steps=4, guidance_scale=models.recommended_guidance_scale(comp))
    pipe_latents, pipe_images = pipeline_latents_and_images(pipe, "a big red circle on the left", generator=gen(),
                                                            **settings)
    result = sampling.text_to_image(comp, "a big red circle on the left", generator=gen(), **settings)
    assert torch.equal(result.latents, pipe_latents)
    torch.testing.assert_close(result.images, pipe_images, **PIXEL_TOL)
    assert result.images.shape == (1, 3, comp.image_size, comp.image_size)


def test_bundled_model_image_to_image_equals_pipeline(bundled):
    comp, pipe = bundled
    pixels = torch.rand(1, 3, comp.image_size, comp.image_size, generator=gen(7))
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    settings = dict(strength=0.5, num_inference_steps=6, guidance_scale=4.0)
    pipe_latents, pipe_images = pipeline_latents_and_images(img2img, "a big blue square", image=pixels,
                                                            generator=gen(2), **settings)
    result = sampling.image_to_image(comp, "a big blue square", 2.0 * pixels - 1.0, generator=gen(2), **settings)
    assert torch.equal(result.latents, pipe_latents)
    torch.testing.assert_close(result.images, pipe_images, **PIXEL_TOL)


# --- float16: the GPU's number format, run on the CPU's float16 kernels ------------------------------
# Notebook 06 runs in float16 on a GPU. CI has no GPU, but a CPU runs float16 too (slowly), so the float16
# code paths and the notebook's float16 tolerances (latents 1e-2, pixels 3e-2) are checked here. On a CPU
# both loops run the same float16 operations in the same order: the latents agree exactly. The images do
# not: our decode upcasts the VAE to float32 (force_upcast), the SD 1.x pipeline decodes in float16.
FLOAT16_IMAGE_TOL = dict(rtol=0, atol=3e-2)


@pytest.fixture(scope="module")
def bundled16(bundled):
    comp, _ = bundled
    half = {name: copy.deepcopy(getattr(comp, name)).to(torch.float16) for name in ("unet", "vae", "text_encoder")}
    comp16 = dataclasses.replace(comp, dtype=torch.float16, pipeline=None, **half)
    return comp16, comp16.make_pipeline()


def test_float16_text_to_image_equals_pipeline(bundled16):
    comp, pipe = bundled16
    prompts = ["a big red circle on the left", "a small blue square on the right"]
    settings = dict(num_inference_steps=4, guidance_scale=models.recommended_guidance_scale(comp))
    pipe_latents, pipe_images = pipeline_latents_and_images(pipe, prompts, generator=gen(), **settings)
    result = sampling.text_to_image(comp, prompts, generator=gen(), **settings)
    assert result.latents.dtype == torch.float16 and comp.vae.dtype == torch.float16     # upcast, then put back
    assert torch.equal(result.latents, pipe_latents)
    torch.testing.assert_close(result.images, pipe_images.float(), **FLOAT16_IMAGE_TOL)
    assert (result.images - pipe_images.float()).abs().max() > 0    # the two decodes do differ: float32 / float16


def test_float16_image_to_image_equals_pipeline_built_with_from_pipe(bundled16):
    comp, pipe = bundled16
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe, dtype=pipe.dtype)      # as notebook 06 builds it
    img2img.set_progress_bar_config(disable=True)
    assert img2img.unet is comp.unet and comp.unet.dtype == comp.vae.dtype == torch.float16
    pixels = torch.rand(1, 3, comp.image_size, comp.image_size, generator=gen(7))
    settings = dict(strength=0.5, num_inference_steps=6, guidance_scale=4.0)
    pipe_latents, pipe_images = pipeline_latents_and_images(img2img, "a big blue square", image=pixels,
                                                            generator=gen(2), **settings)
    result = sampling.image_to_image(comp, "a big blue square", 2.0 * pixels - 1.0, generator=gen(2), **settings)
    assert torch.equal(result.latents, pipe_latents)
    torch.testing.assert_close(result.images, pipe_images.float(), **FLOAT16_IMAGE_TOL)


def test_from_pipe_without_a_dtype_converts_the_shared_parts_to_float32(bundled):
    """What notebook 06 says of diffusers' from_pipe (issue #12754). If this fails, diffusers changed: the
    notebook's explanation of `dtype=pipe.dtype` must change with it."""
    comp, _ = bundled
    parts = {name: copy.deepcopy(getattr(comp, name)).to(torch.float16) for name in ("unet", "vae", "text_encoder")}
    pipe = make_pipeline(dataclasses.replace(comp, dtype=torch.float16, pipeline=None, **parts), comp.scheduler)
    unet16 = parts["unet"]
    StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    assert unet16.dtype == torch.float32                        # the shared U-Net itself, not a copy
    unet16.to(torch.float16)
    StableDiffusionImg2ImgPipeline.from_pipe(pipe, dtype=torch.float16)
    assert unet16.dtype == torch.float16


# --- the pieces ----------------------------------------------------------------------------------


def test_encode_prompt_equals_the_pipelines(tiny_components):
    pipe = make_pipeline(tiny_components, tiny_components.scheduler)
    expected = pipe.encode_prompt([PROMPT, "a square"], torch.device("cpu"), 1, True, ["", "red"])
    got = sampling.encode_prompt(tiny_components.tokenizer, tiny_components.text_encoder, [PROMPT, "a square"],
                                 negative_prompt=["", "red"])
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    alone, none = sampling.encode_prompt(tiny_components.tokenizer, tiny_components.text_encoder, PROMPT,
                                         do_classifier_free_guidance=False)
    assert none is None and torch.equal(alone, expected[0][:1])
    _, one_for_all = sampling.encode_prompt(tiny_components.tokenizer, tiny_components.text_encoder,
                                            [PROMPT, "a square"], negative_prompt="red")
    assert torch.equal(one_for_all[1], expected[1][1])


def test_prepare_latents_draws_what_randn_tensor_draws():
    shape = (2, 4, 8, 8)
    expected = randn_tensor(shape, generator=gen(11), device=torch.device("cpu"), dtype=torch.float32) * 3.0
    torch.testing.assert_close(sampling.prepare_latents(shape, init_noise_sigma=3.0, generator=gen(11)), expected,
                               rtol=0, atol=0)
    mine = torch.ones(shape)
    torch.testing.assert_close(sampling.prepare_latents(shape, init_noise_sigma=2.0, latents=mine), 2 * mine)


def test_prepare_extra_step_kwargs_keeps_what_step_accepts(tiny_components):
    g = gen()
    ddim = DDIMScheduler.from_config(tiny_components.scheduler.config)
    assert sampling.prepare_extra_step_kwargs(ddim, g, 0.5) == {"eta": 0.5, "generator": g}
    assert sampling.prepare_extra_step_kwargs(PNDMScheduler.from_config(ddim.config), g, 0.5) == {}
    pipe = make_pipeline(tiny_components, EulerDiscreteScheduler.from_config(ddim.config))
    assert sampling.prepare_extra_step_kwargs(pipe.scheduler, g, 0.0) == pipe.prepare_extra_step_kwargs(g, 0.0)


def test_fresh_scheduler_has_the_config_and_none_of_the_state(tiny_components):
    dpm = DPMSolverMultistepScheduler.from_config(tiny_components.scheduler.config)
    dpm.set_timesteps(5)
    dpm.step(torch.zeros(1, 4, 2, 2), dpm.timesteps[0], torch.zeros(1, 4, 2, 2))
    fresh = sampling.fresh_scheduler(dpm)
    assert type(fresh) is DPMSolverMultistepScheduler and dict(fresh.config) == dict(dpm.config)
    assert fresh.step_index is None and fresh.num_inference_steps is None and dpm.step_index == 1


# --- DDIM written out ----------------------------------------------------------------------------


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.6, 1.0])
def test_ddim_step_equals_ddim_scheduler_step_by_step(set_alpha_to_one, eta):
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=set_alpha_to_one, steps_offset=1)
    scheduler.set_timesteps(10)
    g = gen(3)
    x_lib = x_hand = torch.randn(2, 4, 8, 8, generator=g)
    for t in scheduler.timesteps:
        eps = torch.randn(2, 4, 8, 8, generator=g)
        state = g.get_state()
        library = scheduler.step(eps, t, x_lib, eta=eta, generator=g)
        g.set_state(state)                                                  # the same z for both
        by_hand = sampling.ddim_step(eps, t, x_hand, alphas_cumprod=scheduler.alphas_cumprod,
                                     prev_timestep=int(t) - 1000 // 10,
                                     final_alpha_cumprod=scheduler.final_alpha_cumprod, eta=eta, generator=g)
        assert torch.equal(by_hand.prev_sample, library.prev_sample)
        assert torch.equal(by_hand.pred_original_sample, library.pred_original_sample)
        x_lib, x_hand = library.prev_sample, by_hand.prev_sample


def test_ddim_step_formula_and_variance_noise():
    alphas = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    g = gen(1)
    x, eps, z = (torch.randn(1, 4, 4, 4, generator=g) for _ in range(3))
    a_t, a_prev = alphas[500], alphas[400]
    out = sampling.ddim_step(eps, 500, x, alphas_cumprod=alphas, prev_timestep=400, final_alpha_cumprod=1.0,
                             eta=1.0, variance_noise=z)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()           # DDIM eq. 16, eta = 1
    expected = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps + sigma * z
    torch.testing.assert_close(out.pred_original_sample, x0)
    torch.testing.assert_close(out.prev_sample, expected)
    final = sampling.ddim_step(eps, 1, x, alphas_cumprod=alphas, prev_timestep=-99, final_alpha_cumprod=1.0)
    torch.testing.assert_close(final.prev_sample, final.pred_original_sample)      # a_prev = 1: x_prev = x0_hat


# --- schedulers keep state -------------------------------------------------------------------------


def _step_twice(scheduler, eps, x):
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[0]
    x = x * scheduler.init_noise_sigma
    once = scheduler.step(eps, t, x).prev_sample
    twice = scheduler.step(eps, t, x).prev_sample
    return once, twice


def test_calling_step_twice_for_one_timestep(tiny_components):
    config = tiny_components.scheduler.config
    g = gen(6)
    eps, x = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    once, twice = _step_twice(DDIMScheduler.from_config(config), eps, x)
    assert torch.equal(once, twice)                                          # DDIM: no state besides the schedule
    for multistep in (EulerDiscreteScheduler.from_config(config), DPMSolverMultistepScheduler.from_config(config)):
        once, twice = _step_twice(multistep, eps, x)
        assert multistep.step_index == 2                                     # it counted both calls
        assert (once - twice).abs().max() > 1e-3                             # and the second answer differs
    pndm = PNDMScheduler.from_config(config, skip_prk_steps=True)
    with pytest.raises(IndexError):                                          # its start-up looks past T - 1
        _step_twice(pndm, eps, x)
    assert pndm.counter == 1 and len(pndm.ets) == 1


# --- float16 decode --------------------------------------------------------------------------------


@pytest.fixture()
def vae16(tiny_components):
    return copy.deepcopy(tiny_components.vae).to(torch.float16)      # float16 runs on a CPU too, slowly


def test_decode_latents_float32_is_sdlearn_vae_decode(tiny_components):
    z = torch.randn(2, 4, 8, 8, generator=gen())
    torch.testing.assert_close(sampling.decode_latents(tiny_components.vae, z), sdvae.decode(tiny_components.vae, z))


def test_decode_latents_upcasts_a_float16_vae_that_asks_for_it(tiny_components, vae16):
    z = torch.randn(1, 4, 8, 8, generator=gen())
    assert vae16.config.force_upcast
    images = sampling.decode_latents(vae16, z)
    assert images.dtype == torch.float32 and vae16.dtype == torch.float16          # decoded in float32, put back
    torch.testing.assert_close(images, sdvae.decode(tiny_components.vae, z), rtol=0, atol=1e-2)
    assert sampling.decode_latents(vae16, z, upcast=False).dtype == torch.float16


def test_decode_latents_redoes_a_float16_overflow_in_float32(vae16):
    vae16.post_quant_conv.weight.data *= 3000           # activations beyond float16's 65504: inf, then NaN
    z = torch.randn(1, 4, 8, 8, generator=gen()) * 4
    with torch.no_grad():
        raw = vae16.decode(z.half() / vae16.config.scaling_factor).sample
    assert not torch.isfinite(raw).all()                                   # the failure being guarded against
    images = sampling.decode_latents(vae16, z, upcast=False)
    assert images.dtype == torch.float32 and torch.isfinite(images).all() and vae16.dtype == torch.float16


# --- bad input -------------------------------------------------------------------------------------


def test_bad_input_is_explained(tiny_components):
    c = tiny_components
    small = dict(height=SIZE, width=SIZE, num_inference_steps=1)
    with pytest.raises(TypeError, match="prompt must be a str or a non-empty list of str"):
        sampling.text_to_image(c, 42, **small)
    with pytest.raises(TypeError, match="SDComponents"):
        sampling.text_to_image(c.unet, PROMPT, **small)
    with pytest.raises(ValueError, match="2 negative prompts for 1 prompts"):
        sampling.text_to_image(c, PROMPT, negative_prompt=["a", "b"], **small)
    with pytest.raises(ValueError, match="2 guidance scales for a batch of 3 images"):
        sampling.text_to_image(c, [PROMPT] * 3, guidance_scale=[1.0, 2.0], **small)
    with pytest.raises(TypeError, match="not a bool"):
        sampling.text_to_image(c, PROMPT, guidance_scale=True, **small)
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        sampling.text_to_image(c, PROMPT, guidance_scale=float("inf"), **small)
    with pytest.raises(TypeError, match="one per image"):
        sampling.text_to_image(c, [PROMPT] * 2, guidance_scale=["high", "low"], **small)
    with pytest.raises(ValueError, match="num_inference_steps must be an int from 1 to 1000"):
        sampling.text_to_image(c, PROMPT, height=SIZE, width=SIZE, num_inference_steps=0)
    with pytest.raises(ValueError, match="not a multiple of 2"):
        sampling.text_to_image(c, PROMPT, height=33, width=SIZE, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"latents has shape \(1, 4, 3, 3\); expected \(1, 4, 16, 16\)"):
        sampling.text_to_image(c, PROMPT, latents=torch.zeros(1, 4, 3, 3), **small)
    with pytest.raises(ValueError, match="eta must be a number >= 0"):
        sampling.text_to_image(c, PROMPT, eta=-1.0, **small)
    with pytest.raises(TypeError, match="must be a diffusers scheduler"):
        sampling.text_to_image(c, PROMPT, scheduler="ddim", **small)


def test_meta_components_are_refused():
    with pytest.raises(ValueError, match="'meta' device: shapes but no weights"):
        sampling.text_to_image(models.sd15_replica(meta=True), PROMPT)


def test_bad_image_to_image_input_is_explained(tiny_components, source_image):
    _, image = source_image
    small = dict(num_inference_steps=4)
    with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\]"):
        sampling.image_to_image(tiny_components, PROMPT, image, strength=1.5, **small)
    with pytest.raises(ValueError, match="no denoising step would run. Raise strength to at least 0.25"):
        sampling.image_to_image(tiny_components, PROMPT, image, strength=0.2, **small)
    with pytest.raises(ValueError, match="got 2 images for 3 prompts"):
        sampling.image_to_image(tiny_components, [PROMPT] * 3, image.expand(2, -1, -1, -1), strength=0.5, **small)
    with pytest.raises(ValueError, match=r"expected \[-1, 1\]"):
        sampling.image_to_image(tiny_components, PROMPT, image * 127.5 + 127.5, strength=0.5, **small)


def test_bad_ddim_step_input_is_explained():
    alphas = DDIMScheduler().alphas_cumprod
    x = torch.zeros(1, 4, 2, 2)
    kw = dict(alphas_cumprod=alphas, final_alpha_cumprod=1.0)
    with pytest.raises(ValueError, match="same shape"):
        sampling.ddim_step(torch.zeros(1, 4, 3, 3), 500, x, prev_timestep=400, **kw)
    with pytest.raises(ValueError, match="prev_timestep 600 below it"):
        sampling.ddim_step(x, 500, x, prev_timestep=600, **kw)
    with pytest.raises(ValueError, match=r"timestep 1000 must be in \[0, 999\]"):
        sampling.ddim_step(x, 1000, x, prev_timestep=900, **kw)
    with pytest.raises(ValueError, match="eta must be a number >= 0"):
        sampling.ddim_step(x, 500, x, prev_timestep=400, eta=-0.1, **kw)
    with pytest.raises(ValueError, match="not both"):
        sampling.ddim_step(x, 500, x, prev_timestep=400, eta=1.0, generator=gen(), variance_noise=x, **kw)
    with pytest.raises(ValueError, match="1-D tensor"):
        sampling.ddim_step(x, 500, x, prev_timestep=400, alphas_cumprod=alphas[None], final_alpha_cumprod=1.0)


def test_bad_decode_and_latents_input_is_explained(tiny_components):
    with pytest.raises(ValueError, match="NaN or inf.*Sample in float32"):
        sampling.decode_latents(tiny_components.vae, torch.full((1, 4, 8, 8), float("nan")))
    with pytest.raises(TypeError, match="latents must be a tensor"):
        sampling.decode_latents(tiny_components.vae, np.zeros((1, 4, 8, 8)))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):   # a stand-in is refused first
        sampling.prepare_latents((1, 4, 2, 2), init_noise_sigma=1.0, generator=_FakeGenerator("meta"))


class _FakeGenerator:
    """Stands in for a generator on another device (a CUDA one, on a machine without CUDA)."""

    def __init__(self, device):
        self.device = torch.device(device)


# --- the benchmark script, on a tiny run -----------------------------------------------------------


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("benchmarks/sampling_speed.py")


@pytest.mark.parametrize("dtype", ["fp32", pytest.param("bf16", marks=pytest.mark.slow)])   # bfloat16: slow on a CPU
def test_benchmark_script_runs_on_cpu(bench, tiny_model_dir, capsys, dtype):
    """fp32 is the CPU's run; bf16 (which a CPU can run) takes the low-precision branches a GPU's fp16 run takes."""
    timings = bench.main(["--device", "cpu", "--model", str(tiny_model_dir), "--height", "32", "--width", "32",
                          "--steps", "2", "--warmup", "0", "--repeats", "2", "--guidance", "3", "--lesson",
                          "--memory", "--memory-size", "64", "--dtype", dtype])
    out = capsys.readouterr().out
    hand, pipe = timings["hand-written loop"], timings["StableDiffusionPipeline"]
    assert len(hand.seconds) == len(pipe.seconds) == 2 and hand.unet_calls == 2
    assert hand.peak_bytes > 0 and hand.per_image > 0
    if dtype == "fp32":
        torch.testing.assert_close(hand.image, pipe.image, **PIXEL_TOL)      # the same picture, timed
    else:   # the hand-written loop decodes in the VAE's dtype too (upcast_vae=False): one rounding of bfloat16
        torch.testing.assert_close(hand.image, pipe.image, rtol=0, atol=2 ** -7)
    for text in ("hand-written loop", "StableDiffusionPipeline", "ratio hand / pipeline", "Speed lesson", "vs first",
                 "classic attention (AttnProcessor)", "channels_last", "Memory lesson", "attention slicing",
                 "VAE tiling", "torch.compile not measured"):
        assert text in out, text
    assert ("float32 instead of bfloat16" in out) == (dtype == "bf16")
    assert "OUTSIDE tolerance" not in out
    assert re.search(r"^  channels_last: [0-9.]+ s / image, [0-9.]+x in turns, [0-9.]+x vs first; within$", out, re.M)
    assert torch.is_grad_enabled(), "the benchmark must leave the caller's grad mode as it found it"


def test_benchmark_ratio_pairs_the_runs_taken_side_by_side(bench):
    """A machine that slows down for the last two turns, and one hand-written run that alone caught a pause:
    the pairs say 1, the ratio of the medians says 2."""
    image = torch.zeros(1, 3, 2, 2)
    hand = bench.Timing("hand", [1.0, 1.0, 2.0, 2.0, 2.0], 0, image, unet_calls=1, batch=1)
    pipe = bench.Timing("pipe", [1.0, 1.0, 1.0, 2.0, 2.0], 0, image, unet_calls=1, batch=1)
    assert hand.median / pipe.median == 2.0 and bench.paired_ratio(hand, pipe) == 1.0
    slow = bench.Timing("slow", [1.1, 1.1, 2.2, 2.2, 2.2], 0, image, unet_calls=1, batch=1)
    assert bench.paired_ratio(slow, hand) == pytest.approx(1.1)
    with pytest.raises(ValueError):                               # unpaired runs are refused, not truncated
        bench.paired_ratio(hand, bench.Timing("short", [1.0], 0, image, unet_calls=1, batch=1))


def test_benchmark_script_refuses_impossible_settings(bench, tiny_model_dir):
    with pytest.raises(SystemExit, match="float16 was requested on the CPU"):
        bench.main(["--device", "cpu", "--dtype", "fp16", "--model", str(tiny_model_dir)])
    with pytest.raises(SystemExit):
        bench.main(["--steps", "0"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA is not available"):
            bench.main(["--device", "cuda", "--model", str(tiny_model_dir)])


# --- bad input, as a new user types it: a clear error that says what to do ------------------------------------


def test_bad_sizes_generators_and_latents_get_clear_errors(tiny_components):
    for size in (0, -8, "64"):
        with pytest.raises(ValueError, match=rf"height must be a positive int.*got {re.escape(repr(size))}"):
            sampling.text_to_image(tiny_components, PROMPT, height=size, num_inference_steps=1)
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator.*torch.Generator\(\).manual_seed\(0\)"):
        sampling.text_to_image(tiny_components, PROMPT, generator=0, num_inference_steps=1, height=SIZE, width=SIZE)
    with pytest.raises(TypeError, match=r"latents must be a torch.Tensor.*torch.from_numpy"):
        sampling.text_to_image(tiny_components, PROMPT, latents=np.zeros((1, 4, 16, 16), dtype=np.float32),
                               num_inference_steps=1, height=SIZE, width=SIZE)
    nan = torch.full((1, 4, 16, 16), float("nan"))
    with pytest.raises(ValueError, match="the latents you passed contain NaN"):
        sampling.text_to_image(tiny_components, PROMPT, latents=nan, num_inference_steps=1, height=SIZE, width=SIZE)


def test_a_half_precision_unet_beside_float32_parts_is_refused_with_the_fix(tiny_components):
    half = dataclasses.replace(tiny_components, unet=copy.deepcopy(tiny_components.unet).half())
    with pytest.raises(ValueError, match=r"the U-Net is float16 but the text encoder is float32.*unet.to\(torch.float32\)"):
        sampling.text_to_image(half, PROMPT, num_inference_steps=1, height=SIZE, width=SIZE)


def test_a_negative_guidance_scale_warns_that_it_is_no_guidance(tiny_components):
    with pytest.warns(UserWarning, match=r"guidance_scale -3 is negative.*exactly as with 1.0"):
        sampling.text_to_image(tiny_components, PROMPT, guidance_scale=-3.0, num_inference_steps=1, height=SIZE,
                               width=SIZE, decode=False)


@pytest.mark.parametrize("name", ["euler", "pndm"])
def test_denoise_twice_on_one_scheduler_says_to_set_the_timesteps_again(tiny_components, name):
    scheduler = SCHEDULERS[name](tiny_components.scheduler.config)
    scheduler.set_timesteps(2)
    latents = torch.randn(1, 4, 16, 16, generator=gen()) * scheduler.init_noise_sigma
    text = sampling.encode_prompt(tiny_components.tokenizer, tiny_components.text_encoder, PROMPT,
                                  do_classifier_free_guidance=False)[0]
    sampling.denoise(tiny_components.unet, scheduler, latents, text, timesteps=scheduler.timesteps)
    with pytest.raises(ValueError, match=r"has already stepped.*set_timesteps\(num_inference_steps\) again"):
        sampling.denoise(tiny_components.unet, scheduler, latents, text, timesteps=scheduler.timesteps)


def test_get_timesteps_before_set_timesteps_says_so(tiny_components):
    scheduler = sampling.fresh_scheduler(tiny_components.scheduler)
    with pytest.raises(ValueError, match=r"call scheduler.set_timesteps\(5\) first"):
        sampling.get_timesteps(scheduler, 5, 0.5)
