"""The VAE: images to latents and back, and the two formulas that make it a *variational* autoencoder.

Stable Diffusion does not denoise pixels. Its VAE (Kingma & Welling 2014, "Auto-Encoding
Variational Bayes") compresses an image ``[B, 3, H, W]`` in [-1, 1] into a latent
``[B, 4, H/8, W/8]``, the U-Net works there, and the VAE's decoder turns the final latent
back into pixels. For each image the encoder outputs a Gaussian ``q(z|x) = N(mu, sigma^2)``
per latent element (a mean and a log-variance), not a single point:

- :func:`reparameterise` draws ``z = mu + sigma * eps`` with ``eps ~ N(0, I)`` (the
  reparameterisation trick, Kingma & Welling eq. 10), as diffusers'
  ``latent_dist.sample(generator)`` does;
- :func:`kl_divergence` is ``KL(q(z|x) || N(0, I))``, the term of the VAE loss that keeps
  the latents near a standard normal, as diffusers' ``latent_dist.kl()`` computes it.

:func:`encode` and :func:`decode` are what the rest of the course calls: they check the
input, and apply ``vae.config.scaling_factor`` (0.18215 for SD 1.x) so the U-Net sees
latents with a standard deviation near 1, the scale of the N(0, I) noise it is trained with.
"""

from __future__ import annotations

import math

import torch

from sdlearn._checks import is_number
from sdlearn.device import draw_noise

# Inputs may exceed [-1, 1] by this much (rounding); beyond it the tensor is not an image in [-1, 1].
RANGE_TOLERANCE = 1e-3


def vae_scale_factor(vae) -> int:
    """How much the VAE shrinks each side: ``2 ** (len(block_out_channels) - 1)`` (8 for SD).

    The same number diffusers' pipelines store as ``pipe.vae_scale_factor``.
    """
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_shape(vae, height: int, width: int, *, batch_size: int = 1) -> tuple[int, int, int, int]:
    """Shape of the latents of ``batch_size`` images of ``height`` x ``width``: ``(B, 4, H/8, W/8)``."""
    factor = vae_scale_factor(vae)
    _check_multiple(height, width, factor, "image")
    return (batch_size, int(vae.config.latent_channels), height // factor, width // factor)


def _check_multiple(height: int, width: int, factor: int, what: str) -> None:
    bad = [f"{name} {size}" for name, size in (("height", height), ("width", width)) if size % factor]
    if bad:
        raise ValueError(
            f"{what} has {' and '.join(bad)}, which is not a multiple of {factor} (size {width}x{height}). "
            f"This VAE halves the size {factor.bit_length() - 1} times, so height and width must be "
            f"multiples of {factor}. Fix: sdlearn.images.fit_to_multiple_of_8(img, multiple={factor}) "
            "or sdlearn.images.center_crop(img, size) before sdlearn.images.to_tensor."
        )


def _check_images(vae, images: torch.Tensor) -> None:
    """Raise a ``ValueError`` / ``TypeError`` unless ``images`` is ``[B, C_in, H, W]`` in [-1, 1] fitting ``vae``."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images is a {type(images).__name__}; expected a torch.Tensor [B, 3, H, W] in [-1, 1]. "
            "For PIL images or arrays, use sdlearn.images.to_tensor first."
        )
    in_channels = int(vae.config.in_channels)
    if images.ndim != 4:
        hint = " One image [3, H, W]? Add the batch axis: images[None]." if images.ndim == 3 else ""
        raise ValueError(
            f"images has shape {tuple(images.shape)}; expected a batch [B, {in_channels}, H, W].{hint}"
        )
    if images.shape[1] != in_channels:
        hint = ""
        if images.shape[1] == vae.config.latent_channels:
            hint = (f" {images.shape[1]} channels: latents (decode them with sdlearn.vae.decode, not encode), "
                    "or an RGBA image (drop the alpha channel: images[:, :3]; for PIL, image.convert('RGB')).")
        elif images.shape[-1] == in_channels:
            hint = " It looks channels-last: use images.permute(0, 3, 1, 2)."
        raise ValueError(
            f"images has {images.shape[1]} channels (shape {tuple(images.shape)}); this VAE expects "
            f"{in_channels} (RGB), shape [B, {in_channels}, H, W].{hint}"
        )
    _check_multiple(images.shape[2], images.shape[3], vae_scale_factor(vae), "images")
    if not images.is_floating_point():
        raise ValueError(
            f"images has dtype {images.dtype}; expected floats in [-1, 1]. For 0..255 pixels use "
            "x.float() / 127.5 - 1 (sdlearn.images.to_model_range), or sdlearn.images.to_tensor."
        )
    if torch.isnan(images).any():
        raise ValueError("images contains NaN; expected finite values in [-1, 1].")
    lo, hi = float(images.min()), float(images.max())
    from sdlearn.images import warn_if_unit_range

    warn_if_unit_range(images, where="the VAE's input images", stacklevel=4)
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        hint = " It looks like 0..255 pixels: use x / 127.5 - 1." if lo >= 0 and hi > 2 else ""
        raise ValueError(
            f"images has values in [{lo:.3g}, {hi:.3g}]; expected [-1, 1], the range the VAE was "
            f"trained on (pixel p in 0..255 is p / 127.5 - 1).{hint} A decoder output that "
            "overshoots slightly can be clamped: images.clamp(-1, 1)."
        )


def _check_latents(vae, latents: torch.Tensor) -> None:
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"latents is a {type(latents).__name__}; expected a torch.Tensor [B, 4, h, w].")
    channels = int(vae.config.latent_channels)
    if latents.ndim != 4 or latents.shape[1] != channels:
        hint = ""
        if latents.ndim == 3 and latents.shape[0] == channels:
            hint = " One latent [4, h, w]? Add the batch axis: latents[None]."
        elif latents.ndim == 4 and latents.shape[1] == vae.config.in_channels:
            hint = " These look like images: encode them with sdlearn.vae.encode first."
        raise ValueError(
            f"latents has shape {tuple(latents.shape)}; this VAE decodes [B, {channels}, h, w].{hint}"
        )
    if not latents.is_floating_point():
        raise ValueError(f"latents has dtype {latents.dtype}; expected a floating-point tensor.")
    if torch.isnan(latents).any():
        raise ValueError("latents contains NaN; nothing sensible to decode. Check the step that produced them.")


def reparameterise(mean: torch.Tensor, logvar: torch.Tensor, *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A sample of ``N(mean, exp(logvar))`` by the reparameterisation trick: ``z = mu + sigma * eps``.

    ``mean``, ``logvar``: same shape, e.g. ``[B, 4, h, w]``; ``sigma = exp(logvar / 2)``;
    ``eps ~ N(0, I)`` is drawn by :func:`sdlearn.device.draw_noise` (diffusers' ``randn_tensor``, on a
    CPU generator's device and moved to ``mean``'s), so with the same generator state the result
    equals ``latent_dist.sample(generator=generator)``.
    ``z`` is a differentiable function of ``mean`` and ``logvar``: gradients flow through.
    """
    if not isinstance(mean, torch.Tensor) or not isinstance(logvar, torch.Tensor):
        raise TypeError("mean and logvar must be torch tensors (e.g. latent_dist.mean, latent_dist.logvar).")
    if mean.shape != logvar.shape:
        raise ValueError(
            f"mean has shape {tuple(mean.shape)} but logvar has {tuple(logvar.shape)}; one log-variance per "
            "mean is expected. Pass latent_dist.mean and latent_dist.logvar of the same posterior."
        )
    eps = draw_noise(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    std = torch.exp(0.5 * logvar)  # sigma = exp(log sigma^2 / 2)
    return mean + std * eps


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, I))`` per image: ``0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2)``.

    ``mean``, ``logvar``: ``[B, ...]`` (e.g. ``[B, 4, h, w]``); the sum runs over every axis but
    the first, so the result is ``[B]`` in nats, >= 0, and 0 only when mu = 0 and sigma = 1.
    Kingma & Welling (2014), appendix B; the same as diffusers' ``latent_dist.kl()``.
    """
    if not isinstance(mean, torch.Tensor) or not isinstance(logvar, torch.Tensor):
        raise TypeError("mean and logvar must be torch tensors (e.g. latent_dist.mean, latent_dist.logvar).")
    if mean.shape != logvar.shape or mean.ndim < 2:
        raise ValueError(
            f"mean has shape {tuple(mean.shape)} and logvar {tuple(logvar.shape)}; expected the same "
            "shape [B, ...] with a batch axis first (e.g. [B, 4, h, w])."
        )
    per_element = mean.pow(2) + logvar.exp() - 1.0 - logvar  # mu^2 + sigma^2 - 1 - log sigma^2
    return 0.5 * per_element.sum(dim=tuple(range(1, mean.ndim)))


@torch.no_grad()
def fold_scaling_factor(vae, scaling_factor: float) -> float:
    """Rescale ``vae``'s latent space in place so that ``scaling_factor`` becomes its scaling factor, exactly.

    The U-Net sees ``z * s`` (``s = vae.config.scaling_factor``). With ``k = s / scaling_factor``
    the encoder's Gaussian is multiplied by ``k`` (``quant_conv``'s mean outputs times ``k``, its
    log-variance outputs plus ``2 log k``) and the decoder divides by ``k`` first
    (``post_quant_conv``'s weights over ``k``), then ``scaling_factor`` is stored in the config.
    The raw latents are ``k`` times larger, the scaled ones ``z * scaling_factor`` are what they
    were, and decoding gives the same images: the same model, with SD's constant (0.18215) in
    its config. Returns ``k``. Needs ``quant_conv`` and ``post_quant_conv`` (SD's VAE has both).
    """
    if not is_number(scaling_factor, finite=True) or scaling_factor <= 0:
        raise ValueError(f"scaling_factor must be a positive number (SD 1.x: 0.18215), got {scaling_factor!r}.")
    quant, post_quant = getattr(vae, "quant_conv", None), getattr(vae, "post_quant_conv", None)
    if not isinstance(quant, torch.nn.Conv2d) or not isinstance(post_quant, torch.nn.Conv2d):
        raise ValueError(
            "this VAE has no quant_conv / post_quant_conv (use_quant_conv or use_post_quant_conv is False), "
            "so there is no 1x1 convolution to fold the factor into; keep its own scaling_factor."
        )
    k = float(vae.config.scaling_factor) / float(scaling_factor)
    channels = int(vae.config.latent_channels)
    quant.weight[:channels] *= k                 # mean: times k
    quant.bias[:channels] *= k
    quant.bias[channels:] += 2 * math.log(k)     # log-variance: sigma times k
    post_quant.weight /= k                       # the decoder's first layer undoes it
    vae.register_to_config(scaling_factor=float(scaling_factor))
    return k


def _shift(vae) -> float:
    """``vae.config.shift_factor`` (SD 3 / Flux VAEs), 0 when absent or None as in SD 1.x."""
    return float(getattr(vae.config, "shift_factor", None) or 0.0)


@torch.no_grad()
def encode(vae, images: torch.Tensor, *, generator: torch.Generator | None = None,
           sample: bool = True) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] -> scaled latents ``[B, 4, H/8, W/8]``, ready for the U-Net.

    ``z`` is a draw from the encoder's Gaussian ``q(z|x)`` (``sample=True``, using ``generator``)
    or its mean (``sample=False``, ``latent_dist.mode()``); the result is
    ``z * vae.config.scaling_factor`` (minus ``shift_factor`` first, for VAEs that have one).
    ``images`` are moved to the VAE's device and dtype; the latents come back there.
    Runs without gradients (for training, call ``vae.encode`` directly, see
    ``sdlearn.train.vae_loss``).
    """
    _check_images(vae, images)
    posterior = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
    z = posterior.sample(generator=generator) if sample else posterior.mode()  # [B, 4, H/8, W/8]
    return (z - _shift(vae)) * vae.config.scaling_factor


@torch.no_grad()
def decode(vae, latents: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
    """Scaled latents ``[B, 4, h, w]`` -> images ``[B, 3, 8h, 8w]`` in [-1, 1] (the inverse of :func:`encode`).

    Divides by ``vae.config.scaling_factor`` (and adds ``shift_factor`` back, if any), runs the
    decoder and, with ``clamp=True``, clamps its slight overshoot to [-1, 1]. ``latents`` are
    moved to the VAE's device and dtype; the images come back there.

    Precision: on a GPU the VAE is usually in float16. The SD 1.x VAE decodes fine in float16 at
    512 px, but some VAEs (SDXL's, and SD at large sizes) overflow to inf/NaN there: black or
    empty images. diffusers upcasts when ``vae.config.force_upcast`` says so; here a NaN output
    raises a ``ValueError`` that says to decode in float32 (``vae.to(torch.float32)``).
    """
    _check_latents(vae, latents)
    z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor + _shift(vae)
    images = vae.decode(z).sample  # [B, 3, H, W], about [-1, 1]
    if torch.isnan(images).any():
        raise ValueError(
            f"the decoder produced NaN (VAE dtype {vae.dtype}). In float16 the VAE's activations can "
            "overflow. Fix: decode in float32: vae.to(torch.float32), then decode again."
        )
    return images.clamp(-1.0, 1.0) if clamp else images
