"""Notebook 05, the U-Net: the exercises' right answers and judges."""

from __future__ import annotations

import torch

from .. import unet as unet_lib
from . import Verdict, _as_cpu_float64, exercise


@exercise("05.1", "Input channels where a skip comes back", hints=(
        "An up block's first ResNet gets two tensors side by side: what comes up from the block below, and one "
        "skip tensor saved on the way down. How many channels does each have?",
        "In the trace of SD 1.5 (r_stages), read the channels of up_blocks.2's output and the channels of the "
        "first skip tensor that up_blocks.3 uses, and add them (C_in = C_below + C_skip)."))
def _(unet):
    return unet.up_blocks[-1].resnets[0].conv1.in_channels


@exercise("05.2", "Recover the noise from the noisy latent", rtol=1e-3, atol=1e-3, hints=(
        "The closed form x_t = sqrt(abar) x0 + sqrt(1 - abar) eps has one unknown left when you know x_t and x0.",
        "Take abar at T_SHOW from alphas_cumprod, remove the signal part from x_t and divide what is left by the "
        "noise's factor."))
def _(x_t, x0, t, alphas_cumprod):
    abar = alphas_cumprod[t].double()
    return (x_t.double().cpu() - abar.sqrt() * x0.double().cpu()) / (1 - abar).sqrt()


@exercise("05.3", "Guidance away from a negative prompt", rtol=1e-2, atol=1e-2, hints=(
        "The negative prompt takes the place of the empty prompt in the guidance formula of section 5. Which half "
        "of the doubled batch is which?",
        "Split ex3_calls[0].noise_pred into its two halves along the batch (negative first), then apply "
        "classifier-free guidance with GUIDANCE, the negative prediction where the unconditional one was."))
def _(calls, guidance_scale):
    negative, positive = calls[0].noise_pred.double().cpu().chunk(2)
    return unet_lib.classifier_free_guidance(negative, positive, guidance_scale)


def _std(x: torch.Tensor) -> torch.Tensor:                       # per sample, over channels and positions: [B]
    return x.flatten(1).std(dim=1)


@exercise("05.4", "Guidance that keeps the noise's size", behaviour=True, hints=(
        "The guided prediction points the right way but grows with the scale. Keep its direction and change only "
        "its size: to what size?",
        "Compute the ordinary guided prediction, then multiply it by the standard deviation of the conditional "
        "prediction divided by its own (each taken per sample, over channels and positions)."))
def _(answer, noise_pred_uncond, noise_pred_text, scales):
    if not callable(answer):
        return Verdict(False, "the answer should be a function guide(noise_pred_uncond, noise_pred_text, "
                              "guidance_scale) that returns a guided prediction.")
    g = torch.Generator().manual_seed(0)
    fake_uncond = torch.randn(2, *noise_pred_uncond.shape[1:], generator=g)                  # a second, made-up pair
    fake_text = fake_uncond + 0.2 * torch.randn(fake_uncond.shape, generator=g)
    pairs = [(noise_pred_uncond.float().cpu(), noise_pred_text.float().cpu()), (fake_uncond, fake_text)]
    for uncond, text in pairs:
        for s in sorted({*map(float, scales), 15.0}):
            out = _as_cpu_float64(answer(uncond.clone(), text.clone(), s))
            if out is None or out.shape != uncond.shape:
                return Verdict(False, f"guide(...) should return a tensor of shape {list(uncond.shape)}, like its "
                                      "inputs.")
            plain = unet_lib.classifier_free_guidance(uncond.double(), text.double(), s)
            cos = torch.nn.functional.cosine_similarity(out.flatten(1), plain.flatten(1), dim=1)
            if bool((cos < 0.999).any()):
                return Verdict(False, f"at scale {s:g} your prediction no longer points along the guided one "
                                      f"(cosine {cos.min().item():.3f}): change its size, not its direction.")
            ratio = _std(out) / _std(text.double())
            if bool(((ratio - 1).abs() > 0.02).any()):
                return Verdict(False, f"at scale {s:g} your prediction's standard deviation is "
                                      f"{ratio.max().item():.3g} times the conditional prediction's; it should be "
                                      "the same.")
    return Verdict(True)
