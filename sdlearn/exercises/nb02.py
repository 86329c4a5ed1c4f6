"""Notebook 02's exercises: how much smaller a latent is, the brightness channel, PSNR by hand, and the
scaling factor of a VAE whose latent space was stretched."""

from __future__ import annotations

import math

import torch

from .. import vae as vae_lib
from . import Verdict, _as_cpu_float64, exercise


@exercise("02.1", "How many times fewer numbers a latent holds", hints=(
        "A nudge: count the numbers on both sides: channels times height times width.",
        "The method: the image has 3 channels at full size; the latent has C channels, each side divided by f. "
        "Divide the first count by the second."))
def _(vae, height, width):
    image = torch.zeros(1, 3, height, width)                     # mid-grey: any image has the latent's shape
    return image.numel() / vae_lib.encode(vae, image, sample=False).numel()


@exercise("02.2", "The latent channel that carries the brightness", hints=(
        "A nudge: you need one brightness and one mean per channel for every image, then one correlation per channel.",
        "The method: brightness = each image's mean over its channels and pixels, channel means = each latent's "
        "mean over its height and width; correlate each channel's column with the brightness (np.corrcoef) and "
        "take the index of the largest absolute value."))
def _(images, latents):
    brightness = images.detach().double().cpu().mean(dim=(1, 2, 3))                # [B]
    channel_means = latents.detach().double().cpu().mean(dim=(2, 3))                # [B, C]
    correlations = torch.corrcoef(torch.cat([brightness[None], channel_means.T]))[0, 1:]   # [C]
    return int(correlations.abs().argmax())


@exercise("02.3", "PSNR by hand", hints=(
        "A nudge: PSNR comes from the mean squared error and the range the pixel values span.",
        "The method: average the squared differences over every pixel value; these images span [-1, 1], so R is "
        "the width of that range; then apply section 3's formula with a base-10 logarithm."))
def _(original, reconstruction):
    mse = (original.detach().double().cpu() - reconstruction.detach().double().cpu()).pow(2).mean().item()
    return 10 * math.log10(2.0**2 / mse)


@exercise("02.4", "The scaling factor of a stretched VAE", behaviour=True, hints=(
        "A nudge: the factor is chosen so that the latents the U-Net sees have a standard deviation of 1; "
        "what are the standard deviations of this VAE's latents now?",
        "The method: encode the images with this VAE's encoder (latent_dist.mode(), no scaling), measure the "
        "standard deviation of those raw latents over the batch, and take 1 over it, as section 6 did."))
def _(answer, vae, images, tolerance):
    """Right when the raw latents of ``images``, multiplied by ``answer``, have a standard deviation within
    ``tolerance`` of 1 (the property the scaling factor exists for)."""
    if isinstance(answer, str):                              # "0.06" will do
        try:
            answer = float(answer.strip())
        except ValueError:
            pass
    number = None if isinstance(answer, (str, bool)) else _as_cpu_float64(answer)
    if number is None or number.numel() != 1:
        return Verdict(False, f"the answer should be one number, a scaling factor; you gave {answer!r:.60}.")
    factor = number.item()
    if not math.isfinite(factor) or factor <= 0:
        return Verdict(False, f"a scaling factor is a positive number; you gave {factor:g}.")
    with torch.no_grad():
        raw = torch.cat([vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist.mode().float().cpu()
                         for chunk in images.split(8)])                             # [B, C, H/f, W/f], unscaled
    std = (raw * factor).std().item()
    if abs(std - 1) < tolerance:
        return Verdict(True)
    return Verdict(False, f"with your factor the latents have standard deviation {std:.3g}, not 1 "
                          f"+- {tolerance:g}: {'smaller' if std > 1 else 'larger'} factor needed.")
