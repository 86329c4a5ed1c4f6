"""Notebook 09's exercises: the training objective, its targets and caption dropout."""

from __future__ import annotations

import math

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from . import Verdict, exercise
from ._legacy import _as_cpu_float64


class _ZeroUNet(torch.nn.Module):
    """A U-Net that gave up: it answers eps_hat = 0, whatever it is shown."""

    def forward(self, sample, timestep=None, encoder_hidden_states=None, *args, **kwargs):
        return UNet2DConditionOutput(sample=torch.zeros_like(sample))


def _zero_unet_loss(noise_scheduler, x0, *, n: int = 4096) -> float:
    """The loss :func:`sdlearn.train.diffusion_loss` gives the zero U-Net on ``n`` latents shaped like ``x0``'s."""
    from sdlearn import train

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(n, *x0.shape[1:], generator=generator)                # [n, C, h, w]
    with torch.no_grad():
        return train.diffusion_loss(_ZeroUNet(), noise_scheduler, latents, torch.zeros(n, 1, 1),
                                    generator=generator).item()


@exercise("09.1", "The loss of a U-Net that answers zero", rtol=0.01, hints=(
    "A nudge: with eps_hat = 0, the loss is the mean of eps^2 over every element. What distribution is eps drawn "
    "from?",
    "The method: the mean of many squares of standard normal numbers is close to their expected square, "
    "E[eps^2] = Var(eps) + E[eps]^2."))
def _(*, noise_scheduler, x0):
    return _zero_unet_loss(noise_scheduler, x0)


@exercise("09.2", "The v-prediction target", rtol=1e-3, atol=2e-3, hints=(
    "A nudge: v mixes the same two tensors as x_t, with the same two weights, but the roles of x0 and eps are "
    "swapped and one sign flips. Each pair has its own timestep, so its own weights.",
    "The method: index alphas_cumprod with t to get one abar per pair, reshape it to [N, 1, 1, 1] so that it "
    "broadcasts over channels and positions, and combine eps and x0 with the square roots of abar and 1 - abar "
    "(on the CPU, in float32)."))
def _(*, noise_scheduler, x0, eps, t):
    return noise_scheduler.get_velocity(x0.detach().float().cpu(), eps.detach().float().cpu(),
                                        torch.as_tensor(t).cpu())


@exercise("09.3", "A batch without an empty caption", hints=(
    "A nudge: take one caption of the batch. What is the probability that it is kept, not dropped? The captions "
    "are dropped independently of each other.",
    "The method: for independent events the probability that all of them happen is the product of their "
    "probabilities; here BATCH equal factors."))
def _(*, p, batch):
    return (1 - float(p)) ** int(batch)


class _Oracle(torch.nn.Module):
    """A U-Net that knows the clean latents ``x0``: it reads the noise back from ``x_t`` and the timestep,
    ``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``, times ``scale`` (a weight, so the loss has a gradient).
    It keeps the timesteps it is shown."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.x0, self.alphas_cumprod = x0.double(), alphas_cumprod.double().cpu()
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))
        self.timesteps: list[torch.Tensor] = []

    def forward(self, sample, timestep=None, encoder_hidden_states=None, *args, **kwargs):
        b = sample.shape[0]
        t = torch.as_tensor(timestep).detach().cpu().reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        if t.numel() != b:
            raise ValueError(f"the U-Net was given {t.numel()} timesteps for a batch of {b} latents")
        self.timesteps.append(t.clone())
        abar = self.alphas_cumprod[t.round().long().clamp(0, len(self.alphas_cumprod) - 1)]
        abar = abar.reshape(-1, *([1] * (sample.ndim - 1)))
        x0 = self.x0.to(sample.device)
        eps = (sample.double() - abar.sqrt().to(sample.device) * x0) / (1 - abar).sqrt().to(sample.device)
        return UNet2DConditionOutput(sample=(self.scale.to(sample.device) * eps.to(sample.dtype)))


def _one_number(loss) -> torch.Tensor:
    if loss is None:
        raise TypeError("your function returned None; it should return the loss, a tensor of one number")
    if torch.is_tensor(loss):
        if loss.numel() != 1:
            raise ValueError(f"the loss should be one number (the mean over every element); yours has shape "
                             f"{list(loss.shape)}")
        return loss.reshape(())
    value = _as_cpu_float64(loss)
    if value is None or value.numel() != 1:
        raise TypeError(f"the loss should be a tensor of one number; your function returned {type(loss).__name__}")
    return value.reshape(())


@exercise("09.4", "Write the training loss yourself", behaviour=True, hints=(
    "A nudge: four steps, as in section 1: one random timestep per latent, noise shaped like the latents, the "
    "forward process's x_t, and the U-Net's answer scored against the noise you drew. The U-Net returns an object; "
    "its prediction is .sample.",
    "The method: torch.randint over the scheduler's num_train_timesteps with one value per latent, torch.randn for "
    "the noise (pass the generator), abar_t from noise_scheduler.alphas_cumprod reshaped to [B, 1, 1, 1], then "
    "unet(x_t, t, encoder_hidden_states=...).sample, and the mean of the squared difference."))
def _(answer, *, noise_scheduler, x0):
    if not callable(answer):
        return Verdict(False, "the answer should be your function (its name, without calling it).")
    T = noise_scheduler.config.num_train_timesteps
    base = x0.detach().float().cpu()
    latents = base.repeat(-(-256 // len(base)), *([1] * (base.ndim - 1)))[:256]   # [256, C, h, w]
    text = torch.zeros(len(latents), 1, 1)
    generator = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        zero = _one_number(answer(_ZeroUNet(), noise_scheduler, latents.clone(), text, generator=generator))
        zero = float(zero.detach())
        if not math.isclose(zero, 1.0, abs_tol=0.05):
            return Verdict(False, f"a U-Net that always answers 0 should score about 1, the mean of eps^2 for "
                                  f"eps ~ N(0, I); with your loss it scores {zero:.3g}. Is it the mean of "
                                  f"the squared difference with noise drawn by torch.randn?")
        oracle = _Oracle(latents, noise_scheduler.alphas_cumprod)
        for _ in range(4):
            right = _one_number(answer(oracle, noise_scheduler, latents.clone(), text, generator=generator))
            if float(right.detach()) > 1e-4:
                return Verdict(False, f"a U-Net that reads the noise back exactly from x_t and t scores "
                                      f"{float(right.detach()):.3g} with your loss, not 0: your x_t is not "
                                      f"sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for the timestep t you give the "
                                      f"U-Net (abar_t is alphas_cumprod[t]), or the loss compares with something "
                                      f"other than that noise.")
        timesteps = torch.cat(oracle.timesteps).double()
        if not bool((timesteps == timesteps.round()).all()) or timesteps.min() < 0 or timesteps.max() > T - 1:
            return Verdict(False, f"the timesteps should be whole numbers from 0 to {T - 1}.")
        if any(len(ts.unique()) == 1 for ts in oracle.timesteps):
            return Verdict(False, "every latent of the batch should get its own random timestep, not one for all.")
        if timesteps.min() > 0.05 * T or timesteps.max() < 0.95 * T or abs(timesteps.mean() - (T - 1) / 2) > 0.1 * T:
            return Verdict(False, f"the timesteps should be drawn uniformly from 0 to {T - 1}; yours ranged from "
                                  f"{int(timesteps.min())} to {int(timesteps.max())}, mean {timesteps.mean():.0f}.")
        half = _Oracle(latents, noise_scheduler.alphas_cumprod, scale=0.5)
        loss = _one_number(answer(half, noise_scheduler, latents.clone(), text, generator=generator))
        if not loss.requires_grad:
            return Verdict(False, "the loss carries no gradient, so training could not learn from it: compute it "
                                  "from the U-Net's output with torch operations, outside torch.no_grad().")
        loss.backward()
    value, grad = float(loss.detach()), half.scale.grad
    if not math.isclose(value, 0.25, rel_tol=0.1) or grad is None or not math.isclose(float(grad), -1.0, rel_tol=0.1):
        return Verdict(False, f"a U-Net that answers half the true noise should score 0.25 (the mean of "
                              f"(eps - eps/2)^2), with gradient -1 for its scale; yours gives {value:.3g} and "
                              f"{None if grad is None else round(float(grad), 3)}.")
    return Verdict(True)
