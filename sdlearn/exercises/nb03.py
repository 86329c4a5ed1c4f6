"""Notebook 03, the forward process: the exercises' right answers and judges."""

from __future__ import annotations

import torch

from .. import noise
from . import Verdict, _as_cpu_float64, exercise


@exercise("03.1", "The timestep where signal and noise are equal", atol=1.0, rtol=0.0, hints=(
        "SNR(t) = 1 means the signal part and the noise part of x_t have the same variance: what must abar_t be?",
        "Compute the SNR of every timestep with sdlearn.noise.snr and find the timestep whose SNR is closest to 1 "
        "(or where it first drops below 1); give it as a Python int."))
def _(alphas_cumprod):
    # the timestep nearest SNR = 1; the one just before or after the crossing is within atol = 1
    return int(torch.argmin(noise.snr(alphas_cumprod.double()).log().abs()))


@exercise("03.2", "The picture's trace in the last noisy latent", hints=(
        "Noise both latents to the last timestep with the same noise, then compare them: what is left of the noise "
        "in their difference?",
        "Use sdlearn.noise.add_noise(x0, noise, t, alphas_cumprod) once per latent, at t = T - 1, subtract "
        "the black one from the picture's and average over every element: one number."))
def _(x0_a, x0_b, noise_last, alphas_cumprod):
    last = alphas_cumprod.numel() - 1
    a = noise.add_noise(x0_a.float(), noise_last.float(), last, alphas_cumprod)
    b = noise.add_noise(x0_b.float(), noise_last.float(), last, alphas_cumprod)
    return (a - b).mean().item()


@exercise("03.3", "One timestep per sample, by broadcasting", hints=(
        "alphas_cumprod[EX3_T] holds one number per sample, shape [4]; the latents are [4, C, h, w]. Which shape "
        "lets each sample be multiplied by its own number?",
        "Index alphas_cumprod with the timesteps, add trailing dimensions of size 1 until it has as many "
        "dimensions as the latents, then write the closed form of section 3 with it."))
def _(x0, noise_batch, timesteps, alphas_cumprod):
    return noise.add_noise(x0.float(), noise_batch.float(), torch.as_tensor(timesteps), alphas_cumprod)


@exercise("03.4", "A schedule with zero terminal SNR", behaviour=True, hints=(
        "The trace survives because abar at the last timestep is not 0. Which betas make it 0, and how can the "
        "rest of the schedule stay as it was? diffusers' DDPMScheduler has an option for this (Lin et al. 2024).",
        "Either build a DDPMScheduler from this model's config with its zero-terminal-SNR rescaling switched on "
        "and take its betas, or shift sqrt(abar) so its last value is 0 and rescale it so its first value is "
        "unchanged, then turn abar back into betas (beta_t = 1 - abar_t / abar_(t-1))."))
def _(answer, betas, z_white, z_black, noise_last):
    new = _as_cpu_float64(answer)
    if new is None:
        return Verdict(False, "the answer should be the betas of your schedule, a tensor [T].")
    old = betas.double().cpu()
    if new.numel() == old.numel():
        new = new.reshape(-1)
    if new.shape != old.shape:
        return Verdict(False, f"the answer should be {old.numel()} betas, one per timestep; yours has shape "
                              f"{list(new.shape)}.")
    if not bool(((new >= 0) & (new <= 1)).all()):
        return Verdict(False, "each beta is the variance of the noise one step adds: it must lie in [0, 1].")
    abar_new, abar_old = torch.cumprod(1 - new, 0), torch.cumprod(1 - old, 0)
    last = old.numel() - 1
    white = noise.add_noise(z_white.double(), noise_last.double(), last, abar_new.clamp(0, 1))
    black = noise.add_noise(z_black.double(), noise_last.double(), last, abar_new.clamp(0, 1))
    trace = (white - black).abs().max().item()
    if abar_new[-1] > 1e-6 or trace > 1e-5:
        return Verdict(False, f"with your schedule abar at the last timestep is {abar_new[-1].item():.3g}, and the "
                              f"white and black latents still differ there by up to {trace:.3g}: the picture "
                              "still leaks into x_(T-1).")
    moved = (abar_new.sqrt() - abar_old.sqrt()).abs().max().item()
    allowed = 1.01 * abar_old[-1].sqrt().item() + 1e-6
    if moved > allowed:
        return Verdict(False, f"your schedule moves sqrt(abar_t) by up to {moved:.3g} at some timestep; zero "
                              f"terminal SNR needs no more than sqrt(abar_(T-1)) = {allowed:.3g}: keep the rest "
                              "of the model's schedule as it was.")
    return Verdict(True)
