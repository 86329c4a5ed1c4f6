"""The forward process: how diffusion destroys an image, one small Gaussian step at a time.

Training a diffusion model (Ho et al. 2020, "Denoising Diffusion Probabilistic Models")
needs noisy versions of clean data ``x_0``. The forward process makes them with a Markov
chain of ``T`` steps, each adding a little Gaussian noise (DDPM eq. 2):

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)

Because a sum of Gaussians is Gaussian, any step can be reached from ``x_0`` in one jump
(DDPM eq. 4), with ``abar_t = prod_{s<=t} (1 - beta_s)``:

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),  i.e.  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps

- :func:`betas_for` gives the betas of diffusers' ``linear``, ``scaled_linear`` (Stable
  Diffusion's) and ``squaredcos_cap_v2`` (cosine) schedules;
- :func:`markov_chain` runs the chain step by step;
- :func:`add_noise` takes the one jump, as diffusers' ``scheduler.add_noise`` does;
- :func:`snr` is the signal-to-noise ratio ``abar_t / (1 - abar_t)`` of each timestep.

Timesteps count from 0, as in diffusers: ``betas[t]`` and ``alphas_cumprod[t]`` belong to
timestep ``t`` in ``0 ... T-1``, which is the paper's step ``t + 1``. So timestep 0 is
already one (tiny) noise step away from the clean ``x_0``, and timestep ``T - 1`` is the last.
"""

from __future__ import annotations

import math
import numbers

import torch

from sdlearn._checks import check_int
from sdlearn.device import draw_noise

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# The cosine schedule clips each beta here, so the last steps do not divide by ~0 (Nichol & Dhariwal 2021, sec. 3.2).
MAX_BETA = 0.999
# The cosine schedule's small offset s, so beta_0 is not vanishingly small (Nichol & Dhariwal 2021, eq. 17).
COSINE_OFFSET = 0.008


def betas_for(
    schedule: str,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
) -> torch.Tensor:
    """The noise schedule ``betas``: ``[num_train_timesteps]`` float32, each in (0, 1).

    The same numbers as ``DDPMScheduler(beta_schedule=schedule, ...).betas``:

    - ``"linear"``: evenly spaced from ``beta_start`` to ``beta_end`` (DDPM used 1e-4 to 0.02);
    - ``"scaled_linear"``: evenly spaced in sqrt(beta), then squared; Stable Diffusion's
      schedule, with its defaults ``beta_start=0.00085``, ``beta_end=0.012``;
    - ``"squaredcos_cap_v2"``: the cosine schedule (Nichol & Dhariwal 2021, eq. 17), which
      defines ``abar(u) = cos((u + s) / (1 + s) * pi / 2) ** 2`` for ``u = t / T`` and sets
      ``beta_t = 1 - abar((t+1)/T) / abar(t/T)``, clipped at 0.999. It ignores
      ``beta_start`` and ``beta_end``.
    """
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(
            f"unknown beta schedule {schedule!r}. Allowed: {', '.join(repr(s) for s in SCHEDULES)} "
            "('squaredcos_cap_v2' is the cosine schedule; Stable Diffusion uses 'scaled_linear')."
        )
    check_int("num_train_timesteps", num_train_timesteps, expected="a positive int", hint="Stable Diffusion uses 1000.")
    if schedule == "squaredcos_cap_v2":
        def abar(u: float) -> float:
            return math.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

        n = num_train_timesteps
        betas = [min(1 - abar((t + 1) / n) / abar(t / n), MAX_BETA) for t in range(n)]
        return torch.tensor(betas, dtype=torch.float32)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(
            f"beta_start={beta_start!r} and beta_end={beta_end!r} must satisfy 0 < beta_start <= beta_end < 1: "
            "each beta is the variance of the noise one step adds. Stable Diffusion uses 0.00085 and 0.012."
        )
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2


def _check_schedule(values: torch.Tensor, name: str, *, low: float = 0.0, high: float = 1.0) -> None:
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}. "
                        f"Use e.g. scheduler.{name} or sdlearn.noise.betas_for('scaled_linear').")
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"{name} has shape {tuple(values.shape)}; expected a non-empty 1-D tensor [T], "
                         f"one value per timestep (e.g. scheduler.{name}).")
    if not values.is_floating_point() or not bool(((values >= low) & (values <= high)).all()):
        raise ValueError(f"{name} must hold floating-point values in [{low:g}, {high:g}], got values from "
                         f"{values.min().item():.3g} to {values.max().item():.3g}.")


def _check_timesteps(timesteps: int | torch.Tensor, num_train_timesteps: int, batch: int) -> torch.Tensor:
    """``timesteps`` as a 1-D long tensor of length 1 or ``batch``, each in [0, T)."""
    if isinstance(timesteps, bool):
        raise TypeError(f"timesteps must be an int or an integer tensor, got the bool {timesteps!r}.")
    if isinstance(timesteps, numbers.Integral):  # int, or a NumPy integer
        timesteps = torch.tensor([int(timesteps)])
    if not isinstance(timesteps, torch.Tensor):
        raise TypeError(f"timesteps must be an int or an integer tensor, got {type(timesteps).__name__}. "
                        "Fix: torch.tensor(timesteps).")
    if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
        raise TypeError(f"timesteps has dtype {timesteps.dtype}; expected an integer tensor (they index "
                        "alphas_cumprod). Fix: timesteps.long().")
    timesteps = timesteps.reshape(-1)
    if timesteps.numel() not in (1, batch):
        raise ValueError(f"got {timesteps.numel()} timesteps for a batch of {batch}; expected one timestep "
                         f"for the whole batch or one per sample ({batch}).")
    bad = timesteps[(timesteps < 0) | (timesteps >= num_train_timesteps)]
    if bad.numel():
        raise ValueError(f"timesteps {bad.tolist()[:5]} are out of range: expected integers in "
                         f"[0, {num_train_timesteps - 1}] (0-based, one per entry of alphas_cumprod). "
                         f"Fix: clamp them, or draw with torch.randint(0, {num_train_timesteps}, (B,)).")
    return timesteps.long()


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Jump straight from clean ``x0`` to timestep ``t``: the closed form of the forward process (DDPM eq. 4).

    ``x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise``, with ``abar_t = alphas_cumprod[t]``.

    ``x0``: ``[B, ...]`` clean samples (e.g. latents ``[B, 4, H/8, W/8]``), any range.
    ``noise``: same shape as ``x0``, normally ``eps ~ N(0, I)``; cast to ``x0``'s device and dtype.
    ``timesteps``: an int, or an integer tensor of 1 or ``B`` timesteps in ``[0, T)``.
    ``alphas_cumprod``: ``[T]`` in [0, 1], e.g. ``scheduler.alphas_cumprod``.
    Returns ``x_t``, same shape and dtype as ``x0``; equal to diffusers' ``scheduler.add_noise``.
    """
    if not isinstance(x0, torch.Tensor) or not isinstance(noise, torch.Tensor):
        raise TypeError(f"x0 and noise must be tensors, got {type(x0).__name__} and {type(noise).__name__}.")
    if x0.shape != noise.shape:
        raise ValueError(f"x0 has shape {tuple(x0.shape)} but noise has shape {tuple(noise.shape)}; expected "
                         "the same shape (one noise value per element). Fix: noise = torch.randn(x0.shape, "
                         "generator=generator).")
    if x0.ndim == 0:
        raise ValueError("x0 is a 0-d tensor; expected a batch [B, ...]. Fix: x0.reshape(1).")
    if not x0.is_floating_point() or not noise.is_floating_point():
        raise TypeError(f"x0 and noise must be floating-point tensors, got {x0.dtype} and {noise.dtype}. "
                        "Fix: x0.float() (images as floats in [-1, 1], or latents).")
    _check_schedule(alphas_cumprod, "alphas_cumprod")
    t = _check_timesteps(timesteps, alphas_cumprod.numel(), x0.shape[0]).to(alphas_cumprod.device)
    abar = alphas_cumprod[t].to(x0.device, x0.dtype)  # [B] or [1]
    abar = abar.reshape(-1, *([1] * (x0.ndim - 1)))  # [B, 1, 1, 1]: broadcasts over each sample
    return abar**0.5 * x0 + (1 - abar) ** 0.5 * noise.to(x0.device, x0.dtype)


def markov_chain(
    x0: torch.Tensor,
    betas: torch.Tensor,
    t: int,
    *,
    generator: torch.Generator | None = None,
    return_all: bool = False,
) -> torch.Tensor:
    """Noise ``x0`` step by step up to timestep ``t``, drawing fresh noise at every step (DDPM eq. 2).

    Each step samples ``q(x_s | x_{s-1}) = N(sqrt(1 - beta_s) x_{s-1}, beta_s I)``:
    ``x_s = sqrt(1 - betas[s]) * x_{s-1} + sqrt(betas[s]) * eps_s`` for ``s = 0 ... t``, so
    timestep ``t`` (0-based, as in diffusers) is ``t + 1`` steps from ``x0``. In distribution
    the result equals :func:`add_noise` at timestep ``t`` with ``alphas_cumprod = cumprod(1 - betas)``.

    ``x0``: any shape, e.g. ``[N, ...]`` for N independent chains. ``betas``: ``[T]`` in [0, 1].
    ``t``: int in ``[0, T)``. The noise is drawn in float32 by :func:`sdlearn.device.draw_noise`
    (diffusers' ``randn_tensor``: on a CPU generator's device, then moved to ``x0``'s).
    Returns ``x_t``, shape and dtype of ``x0``; with ``return_all=True`` every state
    ``[t + 1, *x0.shape]``, where entry ``s`` is the sample at timestep ``s``.
    """
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor, got {type(x0).__name__}"
                        f"{' of dtype ' + str(x0.dtype) if isinstance(x0, torch.Tensor) else ''}.")
    _check_schedule(betas, "betas")
    if isinstance(t, torch.Tensor) and t.numel() == 1 and not (t.is_floating_point() or t.dtype == torch.bool):
        t = int(t)
    if isinstance(t, numbers.Integral) and not isinstance(t, bool):  # int, or a NumPy integer
        t = int(t)
    check_int("t", t, low=0, high=betas.numel() - 1,
              expected=f"an int in [0, {betas.numel() - 1}] (a 0-based timestep, one per beta)")
    betas = betas.to(x0.device, torch.float32)
    x = x0.float()
    states = [] if return_all else None
    for s in range(t + 1):
        eps = draw_noise(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        x = (1 - betas[s]) ** 0.5 * x + betas[s] ** 0.5 * eps
        if states is not None:
            states.append(x)
    if states is not None:
        return torch.stack(states).to(x0.dtype)
    return x.to(x0.dtype)


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio of each timestep: ``abar_t / (1 - abar_t)``, same shape as the input.

    ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` has signal variance ``abar_t`` (for unit-variance
    ``x_0``) and noise variance ``1 - abar_t``; SNR = 1 where the two are equal (Kingma et al. 2021,
    "Variational Diffusion Models", eq. 2). ``alphas_cumprod`` in [0, 1]; SNR is infinite where it is 1.
    """
    if not isinstance(alphas_cumprod, torch.Tensor):
        raise TypeError(f"alphas_cumprod must be a torch.Tensor, got {type(alphas_cumprod).__name__}. "
                        "Use e.g. scheduler.alphas_cumprod.")
    if not alphas_cumprod.is_floating_point() or not bool(((alphas_cumprod >= 0) & (alphas_cumprod <= 1)).all()):
        raise ValueError("alphas_cumprod must hold floating-point values in [0, 1] (each is a product of "
                         "(1 - beta)); did you pass betas or alphas instead? alphas_cumprod = "
                         "torch.cumprod(1 - betas, dim=0).")
    return alphas_cumprod / (1 - alphas_cumprod)
