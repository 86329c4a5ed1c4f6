"""The hand-written loop against StableDiffusionPipeline on diffusers' own fast-test components.

diffusers tests its Stable Diffusion pipelines on tiny random parts (``get_dummy_components()`` in
``tests/pipelines/stable_diffusion/test_stable_diffusion.py``): a U-Net of widths (4, 8) with
cross-attention width 8, a VAE of widths (4, 8), a 2-layer CLIP text encoder, and a
``DDIMScheduler`` built with SD's betas but *without* ``steps_offset``, so it has the class
default 0, which the pipeline's ``__init__`` rewrites to 1. The configs are written out here
(the tokenizer is the bundled model's: the hub's tiny test tokenizer cannot be downloaded), and
``sdlearn.sampling`` must give the pipeline's latents to the last bit on them, for every scheduler
and setting a learner is likely to try.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler, StableDiffusionImg2ImgPipeline,
                       StableDiffusionPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdlearn import models, sampling, unet as sdunet

PROMPT = "a red circle on the left"
PIXEL_TOL = dict(rtol=0, atol=1e-6)   # the pipeline returns x / 2 + 1/2; mapped back with 2 y - 1


def dummy_components(*, time_cond_proj_dim: int | None = None) -> models.SDComponents:
    """diffusers' ``get_dummy_components()`` for StableDiffusionPipeline, as an ``SDComponents``."""
    cross_attention_dim = 8
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=32, time_cond_proj_dim=time_cond_proj_dim,
        in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        norm_num_groups=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, norm_num_groups=2)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=cross_attention_dim, intermediate_size=16, layer_norm_eps=1e-05,
        num_attention_heads=2, num_hidden_layers=2, pad_token_id=1, vocab_size=1000))
    tokenizer = CLIPTokenizer.from_pretrained(models.BUNDLED_MODEL_DIR / "tokenizer")
    return models.SDComponents(name="diffusers-dummy", tokenizer=tokenizer, text_encoder=text_encoder.eval(),
                               vae=vae.eval(), unet=unet.eval(), scheduler=scheduler, device=torch.device("cpu"),
                               dtype=torch.float32)


@pytest.fixture(scope="module")
def dummy():
    return dummy_components()


def _ddim(config, steps_offset):
    return DDIMScheduler.from_config(config, steps_offset=steps_offset)


SCHEDULERS = {   # each made from the dummy DDIM's config, as diffusers' tests make them
    "ddim-offset-0": lambda c: _ddim(c, 0),
    "ddim-offset-1": lambda c: _ddim(c, 1),
    "pndm": lambda c: PNDMScheduler.from_config(c, skip_prk_steps=True),
    "lms": lambda c: LMSDiscreteScheduler.from_config(c),
    "euler": lambda c: EulerDiscreteScheduler.from_config(c),
    "euler-ancestral": lambda c: EulerAncestralDiscreteScheduler.from_config(c),
    "dpm-solver": lambda c: DPMSolverMultistepScheduler.from_config(c),
}


def pipeline_run(comp, scheduler, prompt, *, cls=StableDiffusionPipeline, **kwargs):
    """The pipeline's final latents and images in [-1, 1], built the way diffusers' tests build it."""
    pipe = cls(vae=comp.vae, text_encoder=comp.text_encoder, tokenizer=comp.tokenizer, unet=comp.unet,
               scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    final = {}

    def keep(pipeline, i, t, callback_kwargs):
        final["latents"] = callback_kwargs["latents"]
        return callback_kwargs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)            # the pipeline's note on steps_offset 0
        images = pipe(prompt, output_type="pt", callback_on_step_end=keep, **kwargs).images
    return final["latents"], images * 2 - 1


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def hand_run(comp, scheduler, prompt, *, image=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)              # the loop's own note on steps_offset 0
        if image is None:
            return sampling.text_to_image(comp, prompt, scheduler=scheduler, **kwargs)
        return sampling.image_to_image(comp, prompt, image, scheduler=scheduler, **kwargs)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_equals_the_pipeline(dummy, name):
    settings = dict(num_inference_steps=2, guidance_scale=6.0)     # diffusers' get_dummy_inputs
    pipe_latents, pipe_images = pipeline_run(dummy, SCHEDULERS[name](dummy.scheduler.config), PROMPT,
                                             generator=gen(), **settings)
    result = hand_run(dummy, SCHEDULERS[name](dummy.scheduler.config), PROMPT, generator=gen(), **settings)
    assert torch.equal(result.latents, pipe_latents)
    torch.testing.assert_close(result.images, pipe_images, **PIXEL_TOL)
    assert result.images.shape == (1, 3, 64, 64)


CASES = {
    "no guidance (1.0)": dict(guidance_scale=1.0),
    "guidance below 1 (0.5)": dict(guidance_scale=0.5),
    "negative prompt": dict(guidance_scale=6.0, negative_prompt="a blue square"),
    "25 steps": dict(guidance_scale=6.0, num_inference_steps=25),
}


@pytest.mark.parametrize("scheduler_name", ["ddim-offset-0", "pndm", "euler-ancestral", "dpm-solver"])
@pytest.mark.parametrize("case", list(CASES))
def test_settings_equal_the_pipeline(dummy, case, scheduler_name):
    settings = {"num_inference_steps": 3, **CASES[case]}
    make = SCHEDULERS[scheduler_name]
    pipe_latents, pipe_images = pipeline_run(dummy, make(dummy.scheduler.config), PROMPT, generator=gen(1), **settings)
    result = hand_run(dummy, make(dummy.scheduler.config), PROMPT, generator=gen(1), **settings)
    assert torch.equal(result.latents, pipe_latents)
    torch.testing.assert_close(result.images, pipe_images, **PIXEL_TOL)


def test_a_batch_of_three_with_eta_one_equals_the_pipeline(dummy):
    prompts = [PROMPT, "a blue square", "a green triangle at the top"]
    settings = dict(num_inference_steps=4, guidance_scale=6.0, eta=1.0, negative_prompt=["green", "", "red"])
    for offset in (0, 1):
        pipe_latents, pipe_images = pipeline_run(dummy, _ddim(dummy.scheduler.config, offset), prompts,
                                                 generator=gen(2), **settings)
        result = hand_run(dummy, _ddim(dummy.scheduler.config, offset), prompts, generator=gen(2), **settings)
        assert result.latents.shape[0] == 3
        assert torch.equal(result.latents, pipe_latents)
        torch.testing.assert_close(result.images, pipe_images, **PIXEL_TOL)


@pytest.mark.parametrize("scheduler_name", ["ddim-offset-0", "ddim-offset-1", "lms", "euler", "dpm-solver"])
def test_image_to_image_equals_the_img2img_pipeline(dummy, scheduler_name):
    image = torch.rand(1, 3, 64, 64, generator=gen(3))                            # [0, 1], the pipeline's range
    settings = dict(num_inference_steps=10, strength=0.6, guidance_scale=6.0)
    make = SCHEDULERS[scheduler_name]
    pipe_latents, pipe_images = pipeline_run(dummy, make(dummy.scheduler.config), PROMPT, image=image,
                                             cls=StableDiffusionImg2ImgPipeline, generator=gen(4), **settings)
    result = hand_run(dummy, make(dummy.scheduler.config), PROMPT, image=2 * image - 1, generator=gen(4), **settings)
    assert torch.equal(result.latents, pipe_latents)
    torch.testing.assert_close(result.images, pipe_images, **PIXEL_TOL)


def test_steps_offset_zero_runs_the_pipelines_timesteps_and_says_so(dummy):
    old = _ddim(dummy.scheduler.config, 0)
    with pytest.warns(UserWarning, match=r"steps_offset=0.*StableDiffusionPipeline runs it with steps_offset=1"):
        result = sampling.text_to_image(dummy, PROMPT, num_inference_steps=2, guidance_scale=6.0, generator=gen(),
                                        scheduler=old, decode=False)
    assert result.timesteps.tolist() == [501, 1]                  # not [500, 0]
    assert old.config.steps_offset == 0                           # the scheduler passed in is left alone


def test_a_scheduler_that_went_through_the_pipeline_keeps_its_corrected_offset(dummy):
    scheduler = _ddim(dummy.scheduler.config, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe = StableDiffusionPipeline(vae=dummy.vae, text_encoder=dummy.text_encoder, tokenizer=dummy.tokenizer,
                                       unet=dummy.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    assert pipe.scheduler.config.steps_offset == 1
    fresh = sampling.fresh_scheduler(pipe.scheduler)
    assert fresh.config.steps_offset == 1
    fresh.set_timesteps(2)
    assert fresh.timesteps.tolist() == [501, 1]
    # keys that still hold their defaults stay defaults: another class built from it keeps its own
    assert LMSDiscreteScheduler.from_config(fresh.config).config.timestep_spacing == "linspace"


# --- a guidance-distilled U-Net (time_cond_proj_dim): no CFG, the scale as an input -----------------


def test_guidance_scale_embedding_equals_the_pipelines(dummy):
    pipe = StableDiffusionPipeline(vae=dummy.vae, text_encoder=dummy.text_encoder, tokenizer=dummy.tokenizer,
                                   unet=dummy.unet, scheduler=dummy.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    w = torch.tensor([0.0, 1.3 - 1, 6.5])
    for dim in (8, 32, 33):
        assert torch.equal(sdunet.guidance_scale_embedding(w, dim), pipe.get_guidance_scale_embedding(w, dim))


@pytest.mark.parametrize("scale", [1.0, 3.0, 7.5])
def test_a_guidance_distilled_unet_runs_as_the_pipeline_runs_it(scale):
    comp = dummy_components(time_cond_proj_dim=32)
    settings = dict(num_inference_steps=3, guidance_scale=scale)
    pipe_latents, _ = pipeline_run(comp, comp.scheduler, PROMPT, generator=gen(5), **settings)
    with sdunet.capture_unet_calls(comp.unet) as calls:
        result = hand_run(comp, comp.scheduler, PROMPT, generator=gen(5), decode=False, **settings)
    assert [c.sample.shape[0] for c in calls] == [1, 1, 1]       # one call a step: no doubled batch
    assert torch.equal(result.latents, pipe_latents)
    if scale != 1.0:   # the scale changes the picture through timestep_cond alone
        plain = hand_run(comp, comp.scheduler, PROMPT, generator=gen(5), decode=False,
                         num_inference_steps=3, guidance_scale=1.0)
        assert not torch.equal(plain.latents, result.latents)
