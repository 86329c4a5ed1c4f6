"""Inpainting by hand (sdlearn.inpaint) against diffusers' StableDiffusionInpaintPipeline, and on the toy world.

The equality tests run the hand loop and the pipeline (its 4-channel, blending path) on the same parts,
scheduler config, seed and settings. In float32 on a CPU both run the same operations in the same order,
so the latents agree to the last bit; the pictures are compared with 1e-6, because the pipeline returns
x / 2 + 1/2 and we map it back with 2 y - 1 (a rounding or two, about 1e-7).
"""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       StableDiffusionInpaintPipeline)

from sdlearn import images, inpaint, models, sampling, world

SIZE = 32          # the tiny VAE halves once: 32x32 images, 16x16 latents
STEPS = 4
PIXEL_TOL = dict(rtol=0, atol=1e-6)
PROMPTS = ["a red circle on the left", "a blue square on the right"]

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-ancestral": EulerAncestralDiscreteScheduler,   # draws noise in every step
}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def inpaint_pipeline(comp, scheduler):
    pipe = StableDiffusionInpaintPipeline(vae=comp.vae, text_encoder=comp.text_encoder, tokenizer=comp.tokenizer,
                                          unet=comp.unet, scheduler=sampling.fresh_scheduler(scheduler),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_latents_and_images(pipe, prompt, image, mask, **kwargs):
    """The pipeline's final latents (caught after its last step, after the blend) and its images in [-1, 1]."""
    final = {}

    def keep(pipeline, i, t, callback_kwargs):
        final["latents"] = callback_kwargs["latents"]
        return callback_kwargs

    height, width = image.shape[-2:]
    out = pipe(prompt, image=image, mask_image=mask, height=height, width=width, output_type="pt",
               callback_on_step_end=keep, **kwargs).images
    return final["latents"], out * 2 - 1


@pytest.fixture(scope="module")
def source():
    """A 32x32 picture as the pipeline takes it, in [0, 1], and as we take it, in [-1, 1], and a mask."""
    pixels = torch.rand(1, 3, SIZE, SIZE, generator=gen(9))
    mask = inpaint.box_mask(SIZE, SIZE, (16, 4, 30, 26))
    return pixels, 2.0 * pixels - 1.0, mask            # the pipeline's own normalisation: the same bits


# --- the hand loop equals StableDiffusionInpaintPipeline -------------------------------------------


@pytest.mark.parametrize("name, strength, guidance_scale", [    # each setting with each scheduler
    ("ddim", 1.0, 1.0), ("ddim", 0.75, 4.0), ("euler", 1.0, 4.0), ("euler", 0.75, 1.0)])
def test_inpaint_equals_the_inpaint_pipeline(tiny_components, source, name, strength, guidance_scale):
    pixels, image, mask = source
    scheduler = SCHEDULERS[name].from_config(tiny_components.scheduler.config)
    settings = dict(strength=strength, num_inference_steps=STEPS, guidance_scale=guidance_scale)
    pipe_latents, pipe_images = pipeline_latents_and_images(inpaint_pipeline(tiny_components, scheduler), PROMPTS,
                                                            pixels, mask, generator=gen(4), **settings)
    result = inpaint.inpaint(tiny_components, PROMPTS, image, mask, generator=gen(4), scheduler=scheduler,
                             record=True, **settings)
    assert len(result.steps) == int(STEPS * strength)
    assert torch.equal(result.latents, pipe_latents)
    torch.testing.assert_close(result.images, pipe_images, **PIXEL_TOL)


@pytest.mark.parametrize("name, eta", [("ddim", 0.7), ("euler-ancestral", 0.0)])
def test_random_draws_come_in_the_pipelines_order(tiny_components, source, name, eta):
    """Schedulers that draw noise in ``step`` see the generator after every draw before the loop: the image's
    posterior, the start noise and the masked image's posterior (which a 4-channel U-Net never uses).
    Two images and two masks, one per prompt."""
    pixels, image, mask = source
    pixels2 = torch.cat([pixels, pixels.flip(-1)])
    masks = torch.cat([mask, 1 - mask])
    scheduler = SCHEDULERS[name].from_config(tiny_components.scheduler.config)
    settings = dict(strength=0.75, num_inference_steps=STEPS, guidance_scale=3.0, eta=eta)
    pipe_latents, pipe_images = pipeline_latents_and_images(inpaint_pipeline(tiny_components, scheduler), PROMPTS,
                                                            pixels2, masks, generator=gen(5), **settings)
    result = inpaint.inpaint(tiny_components, PROMPTS, 2.0 * pixels2 - 1.0, masks, generator=gen(5),
                             scheduler=scheduler, **settings)
    assert torch.equal(result.latents, pipe_latents)
    torch.testing.assert_close(result.images, pipe_images, **PIXEL_TOL)


def test_the_mask_and_masked_image_are_the_pipelines(tiny_components, source):
    """Our latent mask is the one ``prepare_mask_latents`` makes: each latent cell takes its block's top-left pixel."""
    _, image, _ = source
    mask = torch.rand(2, 1, SIZE, SIZE, generator=gen(3))                               # not binary, off the grid
    pipe = inpaint_pipeline(tiny_components, tiny_components.scheduler)
    mask_condition = pipe.mask_processor.preprocess(mask, height=SIZE, width=SIZE)
    pipe_mask, _ = pipe.prepare_mask_latents(mask_condition, image * (mask_condition < 0.5), 2, SIZE, SIZE,
                                             torch.float32, "cpu", gen(), False)
    ours = inpaint.prepare_mask(mask, height=SIZE, width=SIZE, vae_scale_factor=2)
    assert torch.equal(ours, (mask >= 0.5).float())                                     # binarised at 0.5
    latent_mask = inpaint.mask_to_latent(mask, tiny_components.vae)
    assert torch.equal(latent_mask, pipe_mask)
    assert torch.equal(latent_mask, ours[..., ::2, ::2])                                # the top-left pixel


def test_outside_the_mask_the_final_latents_are_the_image_latents(tiny_components, source):
    _, image, mask = source
    result = inpaint.inpaint(tiny_components, PROMPTS[0], image, mask, num_inference_steps=STEPS,
                             guidance_scale=4.0, generator=gen(1), record=True)
    keep = result.latent_mask == 0
    assert keep.any() and (~keep).any()
    kept = keep.expand_as(result.latents)
    assert torch.equal(result.latents[kept], result.image_latents[kept])
    assert not torch.equal(result.latents[~kept], result.image_latents[~kept])          # the box was repainted
    # before the last step the kept region is the image noised to the next timestep, not the clean image
    before_last = result.steps[-2].prev_latents
    assert (before_last[kept] - result.image_latents[kept]).abs().max() > 1e-3
    assert result.mask.shape == (1, 1, SIZE, SIZE) and result.latent_mask.shape == (1, 1, SIZE // 2, SIZE // 2)


@pytest.fixture(scope="module")
def bundled():
    comp = models.load("bundled", device="cpu", dtype=torch.float32)
    return comp, StableDiffusionInpaintPipeline(**comp.make_pipeline().components)


def test_bundled_model_inpaint_equals_the_pipeline_built_from_its_components(bundled):
    comp, pipe = bundled
    pipe.set_progress_bar_config(disable=True)
    case = inpaint.inpainting_cases(1, prompt_style="scene")[0]
    settings = dict(strength=1.0, num_inference_steps=5, guidance_scale=models.recommended_guidance_scale(comp))
    prompts = [case.prompt, "a big blue square on the right"]
    pipe_latents, pipe_images = pipeline_latents_and_images(pipe, prompts, (case.image + 1) / 2, case.mask,
                                                            generator=gen(2), **settings)
    result = inpaint.inpaint(comp, prompts, case.image, case.mask, generator=gen(2), **settings)
    torch.testing.assert_close(result.latents, pipe_latents, rtol=0, atol=1e-5)
    torch.testing.assert_close(result.images, pipe_images, rtol=0, atol=1e-5)


# --- masks and the kept region ----------------------------------------------------------------------


def test_box_mask_and_its_grid():
    mask = inpaint.box_mask(64, 64, (33, 17, 60, 47))
    assert mask.shape == (1, 1, 64, 64) and mask.sum() == (60 - 33) * (47 - 17)
    on_grid = inpaint.box_mask(64, 64, (33, 17, 60, 47), grid=8)
    assert torch.equal(on_grid, inpaint.box_mask(64, 64, (32, 16, 64, 48)))


def test_a_mask_on_the_latent_grid_repaints_exactly_its_pixels(tiny_components):
    mask = inpaint.box_mask(SIZE, SIZE, (5, 3, 20, 11), grid=2)
    latent_mask = inpaint.mask_to_latent(mask, tiny_components.vae)
    assert torch.equal(latent_mask.repeat_interleave(2, -1).repeat_interleave(2, -2), mask)


def test_kept_region_leaves_out_the_mask_and_a_margin():
    mask = inpaint.box_mask(16, 16, (4, 5, 10, 9))                                      # 6 x 4 pixels
    assert inpaint.kept_region(mask, margin=0).sum() == 16 * 16 - 6 * 4
    assert inpaint.kept_region(mask, margin=1).sum() == 16 * 16 - 8 * 6
    assert inpaint.kept_region(mask, margin=2).sum() == 16 * 16 - 10 * 8


def test_kept_psnr_is_psnr_on_the_kept_pixels():
    a = torch.rand(2, 3, 16, 16, generator=gen(1)) * 2 - 1
    b = (a + 0.1 * torch.randn(2, 3, 16, 16, generator=gen(2))).clamp(-1, 1)
    mask = inpaint.box_mask(16, 16, (0, 0, 8, 8))
    keep = inpaint.kept_region(mask, margin=1)[0]
    b_inside = b.clone()
    b_inside[..., :9, :9] = -a[..., :9, :9]                                             # changes inside: ignored
    got = inpaint.kept_psnr(b_inside, a, mask, margin=1)
    for i in range(2):
        assert got[i] == pytest.approx(images.psnr(b[i][:, keep], a[i][:, keep]))
    assert torch.isinf(inpaint.kept_psnr(a, a, mask)).all()


# --- the toy-world cases and the judge ----------------------------------------------------------------


def test_cases_box_out_the_second_object_and_ask_for_a_different_one():
    cases = inpaint.inpainting_cases(12, seed=inpaint.INPAINT_SEED, prompt_style="scene")
    for i, case in enumerate(cases):
        sample = world.sample(inpaint.INPAINT_SEED, i, two_object_prob=1.0)
        kept, removed = sample.masks
        box = case.mask[0, 0].numpy() > 0
        assert box[removed].all() and not box[kept].any()
        assert case.new["colour"] not in {o.colour for o in sample.scene.objects}
        assert case.new["shape"] != sample.scene.objects[1].shape
        assert case.new["position"] == sample.scene.objects[1].position
        assert case.prompt.startswith("a ") and " and " in case.prompt
    again = inpaint.inpainting_cases(3, seed=inpaint.INPAINT_SEED, prompt_style="object")
    assert [c.new for c in again] == [c.new for c in cases[:3]] and " and " not in again[0].prompt


def test_judge_case_reads_the_box_and_the_kept_object():
    case = inpaint.inpainting_cases(1)[0]
    picture = world.sample(inpaint.INPAINT_SEED, 0, two_object_prob=1.0).image
    removed = case.scene.objects[1]
    as_it_was = inpaint.InpaintCase(case.image, case.mask, case.box, case.prompt,
                                    {a: getattr(removed, a) for a in world.ATTRIBUTES}, case.kept, case.scene)
    verdict = inpaint.judge_case(picture, as_it_was)
    assert verdict["found"] and verdict["all"] and verdict["kept"]
    verdict = inpaint.judge_case(picture, case)                                          # the new object isn't there
    assert verdict["found"] and not verdict["colour"] and not verdict["all"] and verdict["kept"]
    blank = np.full_like(picture, 235)
    assert inpaint.judge_case(blank, case) == dict.fromkeys(["found", *case.new, "all", "kept"], False)


# --- behaviour on the bundled model ---------------------------------------------------------------------


def test_the_box_follows_the_prompt_and_the_rest_is_kept(bundled):
    """Measured with measure_inpainting(comp, count=96): the box right in 72% of cases, the kept region at
    27.4 dB against the VAE round trip's 32.7 dB. 8 cases here, with margin."""
    comp, _ = bundled
    figures = inpaint.measure_inpainting(comp, count=8, batch_size=8)
    assert figures["repainted_right"] >= 0.375 and figures["found"] >= 0.75
    assert figures["kept_psnr"] >= 24.0
    assert figures["round_trip_psnr"] > figures["kept_psnr"]


# --- bad input ---------------------------------------------------------------------------------------------


def test_bad_input_is_explained(tiny_components, source):
    _, image, mask = source
    run = dict(num_inference_steps=2, guidance_scale=1.0)
    with pytest.raises(ValueError, match="the image is 32x32"):
        inpaint.inpaint(tiny_components, "a red circle", image, mask[..., :16], **run)
    with pytest.raises(ValueError, match=r"expected \[0, 1\].*mask / 255"):
        inpaint.inpaint(tiny_components, "a red circle", image, mask * 255, **run)
    with pytest.raises(ValueError, match="NaN"):
        inpaint.inpaint(tiny_components, "a red circle", image, mask * float("nan"), **run)
    with pytest.raises(ValueError, match="one channel"):
        inpaint.inpaint(tiny_components, "a red circle", image, mask.expand(1, 3, -1, -1), **run)
    with pytest.raises(TypeError, match="box_mask"):
        inpaint.inpaint(tiny_components, "a red circle", image, [[0, 1]], **run)
    with pytest.raises(ValueError, match="not a multiple of 2"):
        inpaint.inpaint(tiny_components, "a red circle", image[..., :31, :31], mask[..., :31, :31], **run)
    with pytest.raises(TypeError, match=r"image\[None\]"):
        inpaint.inpaint(tiny_components, "a red circle", image[0], mask, **run)
    with pytest.raises(ValueError, match="3 masks for 2 prompts"):
        inpaint.inpaint(tiny_components, PROMPTS, image, mask.expand(3, -1, -1, -1), **run)
    for strength in (0, 0.0, -0.5, 1.5, True, "1"):
        with pytest.raises(ValueError, match=r"strength must be a number in \(0, 1\]"):
            inpaint.inpaint(tiny_components, "a red circle", image, mask, strength=strength, **run)
    with pytest.raises(ValueError, match="no denoising step"):
        inpaint.inpaint(tiny_components, "a red circle", image, mask, strength=0.2, **run)
    with pytest.raises(ValueError, match="expected \\[-1, 1\\]"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inpaint.inpaint(tiny_components, "a red circle", image * 200, mask, **run)


def test_an_inpainting_unet_is_sent_to_the_pipeline(tiny_components, source):
    from diffusers import UNet2DConditionModel

    _, image, mask = source
    nine = dataclasses.replace(tiny_components, unet=UNet2DConditionModel.from_config(
        {**tiny_components.unet.config, "in_channels": 9}))
    with pytest.raises(ValueError, match="9 input channels.*StableDiffusionInpaintPipeline"):
        inpaint.inpaint(nine, "a red circle", image, mask, num_inference_steps=2)


def test_bad_mask_helper_input_is_explained(tiny_components):
    with pytest.raises(ValueError, match="covers no pixel"):
        inpaint.box_mask(32, 32, (40, 0, 50, 10))
    with pytest.raises(TypeError, match="four ints"):
        inpaint.box_mask(32, 32, (0.5, 0, 10, 10))
    with pytest.raises(ValueError, match="grid must be"):
        inpaint.box_mask(32, 32, (0, 0, 10, 10), grid=0)
    with pytest.raises(ValueError, match="not a multiple of 2"):
        inpaint.mask_to_latent(torch.ones(1, 1, 31, 31), tiny_components.vae)
    with pytest.raises(ValueError, match="margin must be"):
        inpaint.kept_region(torch.ones(1, 1, 8, 8), margin=-1)
    with pytest.raises(ValueError, match="no kept pixel"):
        inpaint.kept_psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="prompt_style must be"):
        inpaint.inpainting_cases(2, prompt_style="caption")
