"""Stable Diffusion 1.x code written the way the public tutorials write it, run on the bundled model.

The fast.ai "Stable Diffusion Deep Dive", the Hugging Face diffusion course and diffusers'
"deconstruct the pipeline" guide all load each part with a plain
``from_pretrained(repo, subfolder=...)`` and no dtype, hard-code SD's ``0.18215``, make other
schedulers with ``from_config``, write the loop with classifier-free guidance by hand, start
img2img part-way through the schedule, and push edited token embeddings through the text
encoder. Every test here is code of that kind (our own, in their style) with the bundled folder
where they write ``"CompVis/stable-diffusion-v1-4"``; it checks that the code runs unchanged,
that the pictures show what the prompts ask for (``sdlearn.world.judge``), and that the hand loop
equals ``StableDiffusionPipeline``. Nothing here passes a dtype or reads a constant from sdlearn.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextModel, CLIPTokenizer

from sdlearn import models, world

MODEL = str(models.BUNDLED_MODEL_DIR)      # where a tutorial writes "CompVis/stable-diffusion-v1-4"
HEIGHT = WIDTH = 64                        # the bundled model's pictures (SD 1.x: 512)
SEEDS = range(8)


@pytest.fixture(scope="module")
def parts():
    """The five parts, loaded as the Deep Dive loads them: no dtype, no sdlearn."""
    vae = AutoencoderKL.from_pretrained(MODEL, subfolder="vae")
    tokenizer = CLIPTokenizer.from_pretrained(MODEL, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(MODEL, subfolder="text_encoder")
    unet = UNet2DConditionModel.from_pretrained(MODEL, subfolder="unet")
    scheduler = LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                     num_train_timesteps=1000)
    return vae, tokenizer, text_encoder, unet, scheduler


def embed(tokenizer, text_encoder, prompts):
    text_input = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt")
    with torch.no_grad():
        text_embeddings = text_encoder(text_input.input_ids)[0]
    uncond_input = tokenizer([""] * len(prompts), padding="max_length", max_length=text_input.input_ids.shape[-1],
                             return_tensors="pt")
    with torch.no_grad():
        uncond_embeddings = text_encoder(uncond_input.input_ids)[0]
    return torch.cat([uncond_embeddings, text_embeddings])


def denoise(unet, scheduler, latents, text_embeddings, *, guidance_scale=7.5, start_step=0):
    for i, t in enumerate(scheduler.timesteps):
        if i < start_step:
            continue
        latent_model_input = torch.cat([latents] * 2)
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        with torch.no_grad():
            noise_pred = unet(latent_model_input, t, encoder_hidden_states=text_embeddings).sample
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    return latents


def latents_to_images(vae, latents):
    latents = 1 / 0.18215 * latents                    # SD's constant, hard-coded as the tutorials do
    with torch.no_grad():
        image = vae.decode(latents).sample
    image = (image / 2 + 0.5).clamp(0, 1)
    return (image.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")


def image_to_latents(vae, images_uint8, generator):
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    with torch.no_grad():
        return 0.18215 * vae.encode(x).latent_dist.sample(generator=generator)


def generate(parts, prompts, scheduler, *, steps, seed=0, guidance_scale=7.5):
    vae, tokenizer, text_encoder, unet, _ = parts
    text_embeddings = embed(tokenizer, text_encoder, prompts)
    scheduler.set_timesteps(steps)
    generator = torch.manual_seed(seed)
    latents = torch.randn((len(prompts), unet.config.in_channels, HEIGHT // 8, WIDTH // 8), generator=generator)
    latents = latents * scheduler.init_noise_sigma
    return latents_to_images(vae, denoise(unet, scheduler, latents, text_embeddings, guidance_scale=guidance_scale))


def right(image, named):
    return all(all(obj.values()) for obj in world.judge(image, named))


def test_the_parts_load_in_float32_with_no_dtype_given(parts):
    vae, _, text_encoder, unet, _ = parts
    assert vae.dtype == text_encoder.dtype == unet.dtype == torch.float32


# The loop with each scheduler SD's users sample with, at SD's guidance 7.5 and the tutorials'
# step counts: a blue circle (colour and shape named) in 7 of 8 seeds. Under LMS's 4th-order linear
# multistep update this model does not keep to the prompt at 7.5: the guided noise prediction is stiff
# where the object is being decided, and the multistep update amplifies it (the model card's sampler
# table measures it over all prompts: LMS and PNDM fall short there; PNDM at 50 steps still draws this
# one-object prompt). The LMS case is an expected failure, strict: a model that fixes it turns it into
# a failing test that asks for this list to be updated.
MULTISTEP_AT_7_5 = pytest.mark.xfail(strict=True, reason="sdlearn-tiny is unstable at guidance 7.5 under 4th-order "
                                                         "multistep samplers (issue #16; the card's sampler table)")
SCHEDULERS = {
    "LMS, 30 steps (the Deep Dive)": (lambda c: LMSDiscreteScheduler.from_config(c), 30, MULTISTEP_AT_7_5),
    "PNDM, 50 steps (SD 1.5's own)": (lambda c: PNDMScheduler.from_config(c, skip_prk_steps=True), 50, ()),
    "Euler, 30 steps": (lambda c: EulerDiscreteScheduler.from_config(c), 30, ()),
    "Euler ancestral, 30 steps": (lambda c: EulerAncestralDiscreteScheduler.from_config(c), 30, ()),
    "DPM-Solver++, 25 steps": (lambda c: DPMSolverMultistepScheduler.from_config(c), 25, ()),
    "DDIM, 50 steps": (lambda c: DDIMScheduler.from_config(c), 50, ()),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=marks) for name, (_, _, marks) in SCHEDULERS.items()])
def test_each_scheduler_draws_what_the_prompt_asks_at_guidance_7_5(parts, name):
    make, steps, _ = SCHEDULERS[name]
    config = DDIMScheduler.load_config(MODEL, subfolder="scheduler")     # the folder's own config
    prompt, named = "a blue circle", [{"colour": "blue", "shape": "circle"}]
    images = generate(parts, [prompt] * len(SEEDS), make(config), steps=steps, seed=0)   # 8 pictures, one batch
    drawn_right = sum(right(image, named) for image in images)
    assert drawn_right >= 7, f"{name}: {drawn_right} of {len(images)} right"


def test_the_hand_loop_equals_the_pipeline_loaded_with_no_dtype(parts):
    vae, tokenizer, text_encoder, unet, _ = parts
    pipe = StableDiffusionPipeline.from_pretrained(MODEL)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    prompts = ["a red square on the left and a yellow triangle on the right", "a big green circle at the top"]
    generator = torch.manual_seed(3)
    noise = torch.randn((2, unet.config.in_channels, HEIGHT // 8, WIDTH // 8), generator=generator)
    from_pipe = pipe(prompts, num_inference_steps=30, guidance_scale=7.5, latents=noise, output_type="np").images
    scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(30)
    by_hand = latents_to_images(vae, denoise(unet, scheduler, noise * scheduler.init_noise_sigma,
                                             embed(tokenizer, text_encoder, prompts)))
    np.testing.assert_allclose(by_hand / 255, from_pipe, atol=1 / 255 + 1e-6)   # a rounding apart at most


def test_init_noise_sigma_read_before_set_timesteps_is_the_one_sampling_uses():
    # Tutorials read scheduler.init_noise_sigma at any point; with SD 1.5's config every step count
    # starts at t = 999, so it is one number before and after set_timesteps.
    config = LMSDiscreteScheduler.load_config(MODEL, subfolder="scheduler")
    before = LMSDiscreteScheduler.from_config(config).init_noise_sigma
    for steps in (10, 30, 50):
        scheduler = LMSDiscreteScheduler.from_config(config)
        scheduler.set_timesteps(steps)
        assert float(scheduler.timesteps[0]) == 999.0
        assert float(scheduler.init_noise_sigma) == pytest.approx(float(before), rel=1e-6)


def test_schedulers_made_from_the_config_keep_their_own_timestep_spacing():
    config = DDIMScheduler.load_config(MODEL, subfolder="scheduler")
    assert "timestep_spacing" not in config                       # as in SD 1.5's scheduler_config.json
    for cls, first in ((LMSDiscreteScheduler, 999), (EulerDiscreteScheduler, 999), (DDIMScheduler, 981),
                       (PNDMScheduler, 981)):
        scheduler = cls.from_config(config)
        scheduler.set_timesteps(50)
        assert int(scheduler.timesteps[0]) == first, cls.__name__


def test_img2img_started_part_way_turns_a_red_square_blue(parts):
    # (the Deep Dive's img2img, with Euler: this model keeps to the prompt under first-order samplers)
    vae, tokenizer, text_encoder, unet, _ = parts
    source = world.render(world.Scene((236, 236, 232), (world.Obj("red", "square", "big", "middle", (0.5, 0.5), 13 / 64),)))[0]
    named = [{"colour": "blue", "shape": "square", "position": "middle"}]
    drawn_right = 0
    for seed in SEEDS:
        generator = torch.manual_seed(seed)
        encoded = image_to_latents(vae, source[None], generator)
        scheduler = EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(MODEL, subfolder="scheduler"))
        scheduler.set_timesteps(30)
        start_step = 10
        noise = torch.randn(encoded.shape, generator=generator)
        latents = scheduler.add_noise(encoded, noise, timesteps=torch.tensor([scheduler.timesteps[start_step]]))
        latents = denoise(unet, scheduler, latents, embed(tokenizer, text_encoder, ["a blue square in the middle"]),
                          start_step=start_step)
        drawn_right += right(latents_to_images(vae, latents)[0], named)
    assert drawn_right >= 7, f"{drawn_right} of {len(SEEDS)} right"


def test_a_red_image_encoded_with_sds_constant_decodes_red(parts):
    vae = parts[0]
    scene = world.Scene((236, 236, 232), (world.Obj("red", "circle", "big", "left", (0.25, 0.5), 13 / 64),))
    image = world.render(scene)[0]
    round_trip = latents_to_images(vae, image_to_latents(vae, image[None], torch.manual_seed(0)))[0]
    assert right(round_trip, [{"colour": "red", "shape": "circle", "size": "big", "position": "left"}])


def test_a_swapped_token_embedding_changes_the_picture(parts):
    # The Deep Dive's "swap one token's embedding" section, with public APIs only: a forward hook on the
    # text encoder's input embedding layer puts the embedding of "blue" where "red" was.
    vae, tokenizer, text_encoder, unet, _ = parts
    prompt = "a red circle"
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    red, blue = (tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))[0] for word in ("red", "blue"))
    position = ids[0].tolist().index(red)
    token_emb_layer = text_encoder.get_input_embeddings()
    blue_embedding = token_emb_layer(torch.tensor([blue]))[0].detach()

    def swap(module, inputs, output):
        if output.shape[1] == ids.shape[1] and inputs[0][0, position] == red:
            output = output.clone()
            output[:, position] = blue_embedding
        return output

    handle = token_emb_layer.register_forward_hook(swap)
    try:
        images = generate(parts, [prompt] * len(SEEDS), EulerDiscreteScheduler.from_config(
            EulerDiscreteScheduler.load_config(MODEL, subfolder="scheduler")), steps=30, seed=0)
    finally:
        handle.remove()
    blue_right = sum(right(image, [{"colour": "blue", "shape": "circle"}]) for image in images)
    assert blue_right >= 7, f"{blue_right} of {len(images)} came out blue"
    with torch.no_grad():                                   # the hook is gone: "red" means red again
        plain = text_encoder(ids)[0]
        assert not torch.equal(plain, text_encoder(tokenizer(
            "a blue circle", padding="max_length", max_length=77, return_tensors="pt").input_ids)[0])


def test_loading_in_float16_still_works():
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, torch_dtype=torch.float16)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16


@pytest.mark.slow                       # a fresh interpreter imports torch and diffusers again
def test_the_model_cards_snippet_runs_as_written_in_a_fresh_interpreter():
    card = (models.BUNDLED_MODEL_DIR / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "from_pretrained(\"sdlearn/bundled/sdlearn-tiny\")" in snippet and "dtype" not in snippet
    check = "\nimport numpy as np\nassert np.asarray(image).shape == (64, 64, 3)\nprint('ok')\n"
    done = subprocess.run([sys.executable, "-c", snippet + check], cwd=models.BUNDLED_MODEL_DIR.parents[2],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_config_files_say_float32_and_sd15s_scheduler_keys():
    for part in ("text_encoder", "clip"):
        assert json.loads((models.BUNDLED_MODEL_DIR / part / "config.json").read_text())["dtype"] == "float32"
    ours = json.loads((models.BUNDLED_MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())
    sd15 = models.load_sd15_configs()["scheduler"]
    differ = {k for k in set(ours) | set(sd15) if k != "_diffusers_version" and ours.get(k) != sd15.get(k)}
    assert differ == {"_class_name", "skip_prk_steps"}             # DDIM for PNDM: the card says why
