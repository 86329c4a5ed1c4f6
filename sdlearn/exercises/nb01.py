"""Notebook 01's exercises: settings that give the latents a shape, SD 1.5's latents at 768 pixels, and ``conv_in``."""

from __future__ import annotations

import torch

from .. import models
from . import Verdict, exercise

# settings the check sets itself, or that would hand the pipeline its latents ready-made
_NOT_YOURS = ("prompt", "latents", "prompt_embeds", "negative_prompt_embeds", "output_type", "return_dict",
              "num_inference_steps", "generator")


@exercise("01.1", "Settings that give the latents a shape", behaviour=True, hints=(
        "A nudge: the pipeline's call has keyword arguments for the number of pictures per prompt and for the "
        "picture's size in pixels; the latents follow from them.",
        "The method: the latent's batch is the number of pictures, its sides are the picture's sides divided by "
        "the VAE's factor (pipe.vae_scale_factor); pass num_images_per_prompt, height and width in a dict and run "
        "pipe(PROMPT, **answer_1, output_type=\"latent\") to see the shape."))
def _(answer, pipe, prompt, target):
    """Runs ``pipe(prompt, **answer)`` for one step and compares the shape of the latents it returns with ``target``."""
    if not isinstance(answer, dict) or not all(isinstance(k, str) for k in answer):
        return Verdict(False, "the answer should be a dict of the pipeline's keyword arguments, "
                              "such as {\"guidance_scale\": 1.0}; you gave " + repr(answer)[:60] + ".")
    taken = [k for k in answer if k in _NOT_YOURS]
    if taken:
        return Verdict(False, f"leave {', '.join(taken)} out: the check passes the prompt, the steps, the generator "
                              "and the output type itself, and latents or embeddings made by hand would skip what "
                              "is asked (settings from which the pipeline makes them).")
    try:
        latents = pipe(prompt, **answer, num_inference_steps=1, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images
    except (TypeError, ValueError, RuntimeError) as err:
        return Verdict(False, f"the pipeline refused your settings: {type(err).__name__}: {str(err)[:200]}")
    got, want = tuple(latents.shape), tuple(int(n) for n in target)
    if got == want:
        return Verdict(True)
    return Verdict(False, f"with your settings the latents have shape {list(got)}; the target is {list(want)}.")


@exercise("01.2", "The latent of a 768-pixel picture", hints=(
        "A nudge: the VAE shrinks each side of the picture by the same factor and changes the number of channels.",
        "The method: each side is divided by sd15.vae_scale_factor, the 3 colour channels become "
        "sd15.latent_channels channels, and one picture is a batch of 1."))
def _(vae, side):
    image = torch.empty(1, 3, side, side, device=vae.device, dtype=vae.dtype)   # on meta: a shape, no values
    return list(vae.encode(image).latent_dist.mode().shape)


@exercise("01.3", "The parameters of the U-Net's first convolution", hints=(
        "A nudge: a convolution has a kernel for every pair of an input and an output channel, and a bias for "
        "each output channel.",
        "The method: read conv_in_kernel, in_channels and block_out_channels[0] from the U-Net's config; "
        "multiply the kernel's k x k by both channel counts and add the biases."))
def _(unet):
    return models.count_parameters(unet.conv_in)
