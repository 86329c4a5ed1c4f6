"""Notebook 06, the sampling loop: the exercises' right answers and judges."""

from __future__ import annotations

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from .. import sampling
from .. import unet as unet_lib
from . import Verdict, exercise


@exercise("06.1", "Leading timesteps from the config", rtol=0, atol=0, hints=(
        "Everything you need is in the config: how many training timesteps there are, and the offset. With "
        "'leading' spacing the steps are evenly spaced, counted up from 0.",
        "Take the step size T // N, make the N multiples of it starting at 0, shift each by steps_offset, and list "
        "them from the largest (noisiest) down."))
def _(scheduler, steps):
    fresh = sampling.fresh_scheduler(scheduler)
    fresh.set_timesteps(int(steps))
    return [int(t) for t in fresh.timesteps]


@exercise("06.2", "DDIM inversion, for real", rtol=1e-2, atol=1e-2, hints=(
        "Walk the schedule the other way: from the clean latent up to the noisiest timestep, one U-Net call per "
        "step, each at the point you know. Where does the first step start, in terms of abar?",
        "Loop over the timesteps from clean to noisy; at each, predict the noise at your current x (telling the "
        "U-Net the timestep you step to), get x0_hat with the abar you are at, then rebuild x with that "
        "timestep's abar; start from final_alpha_cumprod, and carry the abar along."))
def _(unet, scheduler, latents, prompt_embeds, steps):
    inverse = DDIMInverseScheduler.from_config(scheduler.config)      # diffusers' DDIM inversion
    inverse.set_timesteps(int(steps), device=latents.device)
    x_T, _ = sampling.denoise(unet, inverse, latents, prompt_embeds, timesteps=inverse.timesteps)
    return x_T


@exercise("06.3", "Euler's starting scale on leading timesteps", rtol=1e-4, hints=(
        "Euler's latents are x / sqrt(abar), so they start at the scale of the first timestep's noise level. "
        "Which timestep is first, and what is abar there?",
        "Read abar at the scheduler's first timestep from ddim.alphas_cumprod, turn it into the noise level "
        "sigma of section 5, and apply the formula of the question."))
def _(scheduler, steps):
    fresh = sampling.fresh_scheduler(scheduler)
    fresh.set_timesteps(int(steps))
    return float(fresh.init_noise_sigma)


@exercise("06.4", "U-Net calls times batch in image-to-image", rtol=0, atol=0, hints=(
        "Image-to-image skips the first part of the schedule: how many of the steps does strength leave? And what "
        "does guidance do to each call's batch?",
        "The number of calls is the number of timesteps left after strength cuts the schedule (section 8, "
        "sampling.get_timesteps); with guidance each call holds the latent twice, for the empty prompt and the "
        "prompt."))
def _(pipe, image, prompt, steps, strength, guidance_scale):
    with unet_lib.capture_unet_calls(pipe.unet) as calls:
        pipe(prompt, image=image, strength=strength, num_inference_steps=int(steps), guidance_scale=guidance_scale,
             generator=torch.Generator().manual_seed(0), output_type="latent")
    return (len(calls), int(calls[0].sample.shape[0]))


def _rms(a: torch.Tensor) -> float:
    return a.float().pow(2).mean().sqrt().item()


@exercise("06.5", "Trailing timesteps at two steps", behaviour=True, hints=(
        "Which setting of the scheduler config decides where the schedule starts? Section 7 names the fix Lin "
        "et al. proposed. Then run both schedulers for two steps from the same x_T and measure.",
        "Make a DDIMScheduler from ddim.config with the other timestep_spacing, check that its 2-step timesteps "
        "start at T - 1, run sampling.text_to_image with each scheduler (latents=noise_T, decode=False) and "
        "compare each run's final latents with run.latents by their rms difference."))
def _(answer, components, scheduler, prompt, latents, guidance_scale, steps, reference):
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return Verdict(False, "the answer should be a pair: (your scheduler, \"leading\" or \"trailing\").")
    mine, nearer = answer
    if not all(hasattr(mine, name) for name in ("set_timesteps", "step", "config")):
        return Verdict(False, f"the first item should be a diffusers scheduler; it is a {type(mine).__name__}.")
    if not isinstance(nearer, str) or nearer.strip().lower() not in ("leading", "trailing"):
        return Verdict(False, "the second item should be the word \"leading\" or \"trailing\": which short run "
                              "came nearer the full run.")
    steps = int(steps)
    T = scheduler.config.num_train_timesteps
    fresh = sampling.fresh_scheduler(mine)
    fresh.set_timesteps(steps)
    schedule = [int(t) for t in fresh.timesteps]
    if not torch.allclose(fresh.alphas_cumprod.double(), scheduler.alphas_cumprod.double()):
        return Verdict(False, "your scheduler has other betas than the model's: build it from ddim.config.")
    if schedule[0] != T - 1:
        return Verdict(False, f"your scheduler's {steps}-step schedule is {schedule}: it starts at t = {schedule[0]}, "
                              f"not at the noisiest training timestep T - 1 = {T - 1}, the level of pure noise.")
    runs = {}
    for name, recipe in (("leading", DDIMScheduler.from_config(scheduler.config, timestep_spacing="leading")),
                         ("yours", mine)):
        runs[name] = sampling.text_to_image(components, prompt, num_inference_steps=steps,
                                            guidance_scale=guidance_scale, latents=latents, scheduler=recipe,
                                            decode=False).latents
    ref = reference.to(runs["yours"].device, runs["yours"].dtype)
    measured = "trailing" if _rms(runs["yours"] - ref) < _rms(runs["leading"] - ref) else "leading"
    if nearer.strip().lower() != measured:
        return Verdict(False, f"your scheduler starts at T - 1, right; but measured, the {measured} run ends nearer "
                              "the final latents of the full run. Compare the rms differences again.")
    return Verdict(True)
