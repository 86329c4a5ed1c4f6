"""The latent space: following a latent through the denoising steps, and walking between latents.

Stable Diffusion draws a picture by starting from Gaussian noise ``x_T`` ``[B, 4, h, w]`` and
removing noise step by step; everything happens on these latents, and the VAE turns the last
one into pixels. This module records that walk and makes new ones:

- :func:`sample_trajectory` runs notebook 06's denoising loop (``sdlearn.sampling.denoise``, the
  same steps in the same order and with the same names as diffusers' ``StableDiffusionPipeline``)
  and keeps, at every step, the latent, the guided noise prediction and the predicted clean
  latent ``x0_hat``: a :class:`Trajectory`.
- :func:`slerp` and :func:`lerp` interpolate between two latents (or any two tensors);
  :func:`lerp_std` says why a straight line between two noise draws is the wrong path: its
  midpoint is too small to be noise the U-Net has seen.
- :func:`interpolate_embeddings` walks between two prompts' text embeddings.
- :func:`animation_png` turns frames into an animated PNG a notebook can show.
- :class:`LatentExplorer` caches text embeddings, trajectories and decoded frames so that
  notebook sliders (interpolation weights, guidance scale, timestep) redraw in well under a
  second on a CPU with the bundled model.
"""

from __future__ import annotations

import io
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from PIL import Image, ImageDraw, ImageFont

from sdlearn import sampling
from sdlearn._checks import check_int, is_number, positive_int
from sdlearn.images import to_numpy
from sdlearn.models import SD_GUIDANCE_SCALE

Weights = float | Sequence[float] | torch.Tensor

# Above this cosine the two vectors are parallel to float precision and slerp's sin(theta) in
# the denominator loses its digits; the straight line is then the same path (the usual choice,
# e.g. in the Stable Diffusion interpolation scripts that popularised slerp for noise).
DOT_THRESHOLD = 0.9995


# --------------------------------------------------------------------------------------
# Interpolation
# --------------------------------------------------------------------------------------

def _weights(weights: Weights) -> tuple[torch.Tensor, bool]:
    """``weights`` as a float64 1-D tensor on the CPU, and whether a single number was given."""
    if isinstance(weights, bool):
        raise TypeError("weights must be a number in [0, 1] or a 1-D sequence of them, not a bool.")
    try:
        w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"weights must be a number in [0, 1] or a 1-D sequence of them, got {type(weights).__name__}. "
            "Example: weights=0.5 or weights=torch.linspace(0, 1, 7)."
        ) from err
    scalar = w.ndim == 0
    if w.ndim > 1 or w.numel() == 0:
        raise ValueError(
            f"weights has shape {tuple(w.shape)}; expected one number or a non-empty 1-D sequence, "
            "e.g. torch.linspace(0, 1, 7)."
        )
    w = w.reshape(-1)
    if not bool(torch.isfinite(w).all()) or bool(((w < 0) | (w > 1)).any()):
        raise ValueError(
            f"weights must lie in [0, 1] (0 gives the first end, 1 the second), got {w.tolist()[:8]}. "
            "Clamp or rescale them, e.g. torch.linspace(0, 1, n)."
        )
    return w, scalar


def _check_pair(v0: torch.Tensor, v1: torch.Tensor, names: tuple[str, str] = ("v0", "v1")) -> None:
    a, b = names
    if not isinstance(v0, torch.Tensor) or not isinstance(v1, torch.Tensor):
        raise TypeError(f"{a} and {b} must be torch tensors, got {type(v0).__name__} and {type(v1).__name__}.")
    if v0.shape != v1.shape:
        raise ValueError(
            f"{a} has shape {tuple(v0.shape)} but {b} has {tuple(v1.shape)}; interpolation needs two tensors of "
            f"the same shape (e.g. two latents [1, 4, h, w] drawn with the same shape)."
        )
    if not (v0.is_floating_point() and v1.is_floating_point()):
        raise TypeError(f"{a} and {b} must be floating-point tensors, got {v0.dtype} and {v1.dtype}.")
    if v0.device != v1.device:
        raise ValueError(f"{a} is on {v0.device} but {b} on {v1.device}; move them together with .to(device).")


def _stack(out: torch.Tensor, scalar: bool) -> torch.Tensor:
    return out[0] if scalar else out


def lerp(v0: torch.Tensor, v1: torch.Tensor, weights: Weights) -> torch.Tensor:
    """Linear interpolation ``(1 - w) v0 + w v1``: the straight line between two tensors.

    ``v0``, ``v1``: the same shape ``S`` (e.g. a latent ``[4, h, w]``); ``weights``: one number in
    [0, 1] (returns ``S``) or ``n`` of them (returns ``[n, *S]``, one interpolant per weight).
    Computed in float32 (or float64 for float64 inputs), returned in ``v0``'s dtype.
    """
    _check_pair(v0, v1)
    w, scalar = _weights(weights)
    work = torch.float64 if v0.dtype == torch.float64 else torch.float32
    w = w.to(v0.device, work).reshape(-1, *([1] * v0.ndim))              # [n, 1, ...]
    out = (1 - w) * v0.to(work) + w * v1.to(work)                         # [n, *S]
    return _stack(out.to(v0.dtype), scalar)


def lerp_std(weights: Weights) -> torch.Tensor:
    """The standard deviation of ``(1 - w) x + w y`` for independent ``x, y ~ N(0, 1)``: ``sqrt((1-w)^2 + w^2)``.

    Variances of independent variables add, ``Var((1-w)x + wy) = (1-w)^2 + w^2``, which is 1 at the
    ends and only 1/2 at ``w = 1/2``: the midpoint of two noise draws has ``1/sqrt(2) = 0.707`` of
    their standard deviation (and norm), so it is not a draw from ``N(0, I)`` any more.
    Returns a float64 tensor: ``[]`` for one weight, ``[n]`` for ``n``.
    """
    w, scalar = _weights(weights)
    out = ((1 - w) ** 2 + w**2).sqrt()
    return _stack(out, scalar)


def slerp(
    v0: torch.Tensor, v1: torch.Tensor, weights: Weights, *, dim: int | None = None,
    dot_threshold: float = DOT_THRESHOLD,
) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985): along the great circle from ``v0`` to ``v1``.

    With ``theta`` the angle between them, ``cos theta = <v0, v1> / (|v0| |v1|)``:

        slerp(v0, v1; w) = sin((1 - w) theta) / sin(theta) * v0 + sin(w theta) / sin(theta) * v1

    For two independent noise draws in many dimensions ``theta`` is close to 90 degrees, so
    ``slerp = cos(w pi/2) v0 + sin(w pi/2) v1`` and its variance ``cos^2 + sin^2 = 1``: every
    interpolant is still shaped like ``N(0, I)`` noise, unlike :func:`lerp`'s (see :func:`lerp_std`).

    ``v0``, ``v1``: the same shape ``S``. ``dim=None`` treats each whole tensor as one vector (use
    it for latents: ``[4, h, w]`` or ``[1, 4, h, w]``); an int treats every slice along ``dim`` as its
    own vector (``dim=-1`` on text embeddings ``[L, d]``: one angle per token). ``weights``: one
    number in [0, 1] (returns ``S``) or ``n`` of them (returns ``[n, *S]``). Where the vectors are
    nearly parallel (``cos theta > dot_threshold``) the formula divides by almost zero and the
    straight line is the same path, so :func:`lerp` is used there. Opposite vectors have no single
    great circle between them: a ``ValueError``. Computed in float64, returned in ``v0``'s dtype.
    """
    _check_pair(v0, v1)
    w, scalar = _weights(weights)
    if not (is_number(dot_threshold) and 0 < dot_threshold < 1):
        raise ValueError(
            f"dot_threshold must be a number in (0, 1), got {dot_threshold!r}; the default is {DOT_THRESHOLD}."
        )
    a, b = v0.double(), v1.double()
    if dim is None:
        a, b = a.reshape(1, -1), b.reshape(1, -1)                         # one vector each
        axis = -1
    else:
        check_int("dim", dim, low=-v0.ndim, high=v0.ndim - 1,
                  expected=f"None or an axis of the {v0.ndim}-D inputs (-{v0.ndim} ... {v0.ndim - 1})")
        axis = dim
    norm_a, norm_b = a.norm(dim=axis, keepdim=True), b.norm(dim=axis, keepdim=True)
    if bool((norm_a == 0).any()) or bool((norm_b == 0).any()):
        raise ValueError("slerp needs non-zero vectors: a zero vector has no direction, so the angle between "
                         "v0 and v1 is undefined. Interpolate noise draws or embeddings, not zeros (or use lerp).")
    cos = ((a * b).sum(dim=axis, keepdim=True) / (norm_a * norm_b)).clamp(-1, 1)   # [..., 1]
    if bool((cos < -dot_threshold).any()):
        raise ValueError(
            f"v0 and v1 point in opposite directions (cos theta = {float(cos.min()):.6f}): every great circle "
            "joins them, so slerp has no single answer. Use another pair (e.g. a different seed) or lerp."
        )
    theta = torch.arccos(cos)
    sin_theta = torch.sin(theta)
    parallel = cos > dot_threshold
    safe_sin = torch.where(parallel, torch.ones_like(sin_theta), sin_theta)
    shape = (-1, *([1] * a.ndim))
    ww = w.to(a.device).reshape(shape)                                     # [n, 1, ...]
    c0 = torch.where(parallel, 1 - ww, torch.sin((1 - ww) * theta) / safe_sin)   # [n, ..., 1]
    c1 = torch.where(parallel, ww, torch.sin(ww * theta) / safe_sin)
    out = c0 * a + c1 * b                                                  # [n, ...]
    out = out.reshape(-1, *v0.shape).to(v0.dtype)                          # [n, *S]
    return _stack(out, scalar)


def interpolate_embeddings(
    embeds_a: torch.Tensor, embeds_b: torch.Tensor, weights: Weights, *, method: str = "linear"
) -> torch.Tensor:
    """Walk between two prompts' text embeddings: ``[1, L, d]`` (or ``[L, d]``) each -> ``[n, L, d]``.

    The U-Net reads a prompt only through its embeddings (the text encoder's last hidden state,
    one ``d``-vector per token position), so a mixture of two prompts' embeddings is a "prompt"
    between them. ``method="linear"``: ``(1 - w) a + w b`` (what diffusers' community
    interpolation pipelines do); ``"spherical"``: :func:`slerp` per token position (``dim=-1``),
    which keeps each token vector's length. ``weights``: one number in [0, 1] (returns
    ``[1, L, d]``) or ``n`` (returns ``[n, L, d]``, a batch the U-Net takes as it is).
    """
    _check_pair(embeds_a, embeds_b, ("embeds_a", "embeds_b"))
    if embeds_a.ndim == 3 and embeds_a.shape[0] == 1:
        embeds_a, embeds_b = embeds_a[0], embeds_b[0]
    if embeds_a.ndim != 2:
        raise ValueError(
            f"embeds_a has shape {tuple(embeds_a.shape)}; expected one prompt's embeddings [1, L, d] or [L, d] "
            "(e.g. text_encoder(ids).last_hidden_state for a single prompt). For a batch, call once per pair."
        )
    if method == "linear":
        out = lerp(embeds_a, embeds_b, weights)
    elif method == "spherical":
        out = slerp(embeds_a, embeds_b, weights, dim=-1)
    else:
        raise ValueError(f"method must be 'linear' or 'spherical', got {method!r}.")
    return out[None] if out.ndim == 2 else out


# --------------------------------------------------------------------------------------
# The denoising trajectory
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trajectory:
    """One run of the denoising loop, recorded at every step (float32 tensors on the CPU).

    ``timesteps`` ``[S]``: the scheduler's timesteps, from noisy to clean. ``latents``
    ``[S + 1, B, C, h, w]``: ``latents[0]`` is the start ``x_T`` (times the scheduler's
    ``init_noise_sigma``), ``latents[i + 1]`` the latent after step ``i``, ``latents[-1]`` the
    final latent the VAE decodes. ``noise_preds`` ``[S, B, C, h, w]``: the guided noise prediction
    of step ``i``. ``x0_preds`` ``[S, B, C, h, w]``: the clean latent it implies,
    ``x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)`` (DDPM eq. 15).
    ``guidance_scale``: the scale used.
    """

    timesteps: torch.Tensor
    latents: torch.Tensor
    noise_preds: torch.Tensor
    x0_preds: torch.Tensor
    guidance_scale: float

    @property
    def num_steps(self) -> int:
        """``S``, the number of denoising steps (U-Net evaluations, each on a doubled batch)."""
        return int(self.timesteps.numel())


def _check_embeds(name: str, embeds: torch.Tensor, unet, batch: int) -> None:
    width = unet.config.cross_attention_dim
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[-1] != width:
        shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise ValueError(
            f"{name} has shape {shape}; this U-Net reads text embeddings [B, L, {width}] "
            "(cross_attention_dim). Make them with text_encoder(ids).last_hidden_state, "
            "e.g. sdlearn.text.encode(tokenizer, text_encoder, [prompt])."
        )
    if embeds.shape[0] not in (1, batch):
        raise ValueError(
            f"{name} has a batch of {embeds.shape[0]} for {batch} latents; expected 1 (shared) or {batch}."
        )


@torch.no_grad()
def sample_trajectory(
    unet,
    scheduler,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = SD_GUIDANCE_SCALE,
    generator: torch.Generator | None = None,
) -> Trajectory:
    """Denoise ``latents`` with classifier-free guidance and record every step.

    The loop of diffusers' ``StableDiffusionPipeline.__call__`` (``sdlearn.sampling.denoise``) with
    the prompt already encoded:
    a fresh copy of ``scheduler`` (the caller's is left untouched) is set to
    ``num_inference_steps``; the start ``latents`` ``[B, C, h, w]`` (pure noise ``x_T`` ~ N(0, I))
    are multiplied by ``init_noise_sigma``; at each timestep the U-Net predicts the noise for the
    doubled batch ``[negative_prompt_embeds; prompt_embeds]`` (``[1 or B, L, d]`` each), the two
    halves are combined, ``eps = uncond + s (text - uncond)``, and ``scheduler.step`` makes the
    next latent. For ``guidance_scale > 1`` the result equals the pipeline's with
    ``latents=...`` and ``output_type="latent"``; ``s <= 1`` still uses the formula (the pipeline
    then skips the unconditional half, which for ``s = 1`` gives the same result).

    Works with schedulers that keep latents in the variance-preserving form
    ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` and predict ``eps`` (DDIM, DDPM, PNDM,
    DPM-Solver...), because ``x0_hat`` is computed from that formula. ``generator``: for
    schedulers whose step draws noise (DDPM, DDIM with eta > 0). Runs on the U-Net's device and
    dtype; the record is float32 on the CPU.
    """
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != unet.config.in_channels:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(
            f"latents has shape {shape}; this U-Net denoises [B, {unet.config.in_channels}, h, w]. "
            "Draw them with torch.randn((1, unet.config.in_channels, side, side), generator=generator)."
        )
    batch = latents.shape[0]
    _check_embeds("prompt_embeds", prompt_embeds, unet, batch)
    _check_embeds("negative_prompt_embeds", negative_prompt_embeds, unet, batch)
    positive_int("num_inference_steps", num_inference_steps, hint="SD's default is 50.")
    if not is_number(guidance_scale, finite=True):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r} (SD's default is {SD_GUIDANCE_SCALE}).")
    if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(
            f"the scheduler's prediction_type is {scheduler.config.prediction_type!r}; sample_trajectory reads the "
            "U-Net's output as predicted noise (prediction_type 'epsilon', as in SD 1.x). Use an SD 1.x model."
        )
    device, dtype = unet.device, unet.dtype
    # 2. Set the timesteps (on a fresh copy: the caller's scheduler keeps its state)
    scheduler = sampling.fresh_scheduler(scheduler)
    scheduler.set_timesteps(num_inference_steps, device=device)
    if float(scheduler.init_noise_sigma) != 1.0:
        raise ValueError(
            f"{type(scheduler).__name__} scales latents by sigma "
            f"(init_noise_sigma = {float(scheduler.init_noise_sigma):.4g}), "
            "so its latents are not sqrt(abar) x0 + sqrt(1 - abar) eps and x0_hat cannot be read off them. "
            "Fix: use a variance-preserving scheduler, e.g. DDIMScheduler.from_config(scheduler.config)."
        )
    # 3. Prepare the latents, 4. the extra step arguments, 5. the denoising loop: notebook 06's, recorded
    latents = sampling.prepare_latents(latents.shape, init_noise_sigma=scheduler.init_noise_sigma,
                                       device=device, dtype=dtype, latents=latents)   # [B, C, h, w]
    _, steps = sampling.denoise(
        unet, scheduler, latents, prompt_embeds.to(device, dtype).expand(batch, -1, -1),
        timesteps=scheduler.timesteps,
        negative_prompt_embeds=negative_prompt_embeds.to(device, dtype).expand(batch, -1, -1),
        guidance_scale=float(guidance_scale),
        extra_step_kwargs=sampling.prepare_extra_step_kwargs(scheduler, generator, 0.0), record=True)
    return Trajectory(
        timesteps=scheduler.timesteps.detach().cpu().long(),
        latents=torch.stack([steps[0].latents] + [step.prev_latents for step in steps]),   # [S + 1, B, C, h, w]
        noise_preds=torch.stack([step.noise_pred for step in steps]),                       # [S, B, C, h, w]
        x0_preds=torch.stack([step.pred_x0 for step in steps]),                             # [S, B, C, h, w]
        guidance_scale=float(guidance_scale),
    )


# --------------------------------------------------------------------------------------
# Pictures: animations and the widgets' frames
# --------------------------------------------------------------------------------------

def _resize(img: Image.Image, side: int) -> Image.Image:
    if img.width == side and img.height == side:
        return img
    upscale = side >= img.width and side % img.width == 0
    return img.resize((side, side), Image.Resampling.NEAREST if upscale else Image.Resampling.LANCZOS)


def animation_png(frames: torch.Tensor, *, duration_ms: int = 200, size: int | None = None, loop: int = 0) -> bytes:
    """An animated PNG (APNG) of ``frames`` ``[n, 3, H, W]`` in [-1, 1], as bytes.

    Every browser (and JupyterLab's image output) plays APNG; viewers that do not show the first
    frame. Show it with ``IPython.display.Image(data=..., format="png")``. ``duration_ms``: how
    long each frame stays; ``size``: the side in pixels to scale each frame to (nearest
    neighbour for whole-number enlargements, so small images stay crisp); ``loop``: 0 plays
    forever. A few dozen 64-pixel frames take tens of kilobytes.
    """
    arrays = to_numpy(frames)                                   # [n, H, W, 3] uint8
    check_int("duration_ms", duration_ms, expected="an int >= 1 (milliseconds per frame)")
    if size is not None:
        check_int("size", size, expected="None or an int >= 1 (pixels per side)")
    pils = [Image.fromarray(a) for a in arrays]
    if size is not None:
        pils = [_resize(p, size) for p in pils]
    buffer = io.BytesIO()
    pils[0].save(buffer, format="PNG", save_all=True, append_images=pils[1:], duration=duration_ms, loop=loop,
                 disposal=0, blend=0)
    return buffer.getvalue()


def _panel_strip(images: torch.Tensor, titles: Sequence[str], side: int) -> Image.Image:
    """Images ``[n, 3, H, W]`` side by side, each scaled to ``side`` pixels, titled above."""
    arrays = to_numpy(images)                                   # [n, H, W, 3] uint8
    band, gap = 16, 4
    strip = Image.new("RGB", (len(arrays) * side + (len(arrays) - 1) * gap, side + band), "white")
    draw = ImageDraw.Draw(strip)
    try:
        font = ImageFont.load_default(size=12)      # Pillow's built-in scalable font (needs FreeType)
    except (AttributeError, TypeError, OSError):
        font = ImageFont.load_default()
    for i, (arr, title) in enumerate(zip(arrays, titles)):
        x = i * (side + gap)
        strip.paste(_resize(Image.fromarray(arr), side), (x, band))
        draw.text((x + 2, 1), title, fill="black", font=font)
    return strip


class LatentExplorer:
    """Everything a set of live sliders needs, computed once and cached: for notebook widgets.

    The sliders choose a point between two start noises (``seed_weight``, by :func:`slerp`), a
    point between two prompts (``prompt_weight``, by linear :func:`interpolate_embeddings`), the
    ``guidance_scale``, and a denoising ``step``. What does not depend on the sliders is computed
    once when the explorer is made (text embeddings come in precomputed; the empty prompt's
    too). What depends on the first three is one :func:`sample_trajectory` run, kept in a
    least-recently-used cache (:func:`functools.lru_cache`, ``max_trajectories`` runs) keyed by the
    rounded settings; a step's decoded pictures are cached the same way (``max_frames``). So moving the step slider costs at most two VAE decodes, and returning to
    settings already seen costs nothing.

    ``noise_a``, ``noise_b``: start latents ``[1, C, h, w]``; ``prompt_embeds_a``/``_b`` and
    ``negative_prompt_embeds``: ``[1, L, d]``; ``num_inference_steps``: steps of each run (fewer
    steps, faster sliders); ``panel_size``: pixels per side of each picture in :meth:`render`.
    """

    def __init__(
        self, unet, vae, scheduler, *, noise_a: torch.Tensor, noise_b: torch.Tensor,
        prompt_embeds_a: torch.Tensor, prompt_embeds_b: torch.Tensor, negative_prompt_embeds: torch.Tensor,
        num_inference_steps: int = 10, panel_size: int = 192, max_trajectories: int = 64, max_frames: int = 512,
    ) -> None:
        _check_pair(noise_a, noise_b, ("noise_a", "noise_b"))
        if noise_a.ndim != 4 or noise_a.shape[0] != 1:
            raise ValueError(f"noise_a has shape {tuple(noise_a.shape)}; expected one start latent [1, C, h, w].")
        for name, embeds in (("prompt_embeds_a", prompt_embeds_a), ("prompt_embeds_b", prompt_embeds_b),
                             ("negative_prompt_embeds", negative_prompt_embeds)):
            _check_embeds(name, embeds, unet, 1)
        for name, value, low in (("num_inference_steps", num_inference_steps, 1), ("panel_size", panel_size, 8),
                                 ("max_trajectories", max_trajectories, 1), ("max_frames", max_frames, 1)):
            check_int(name, value, low=low)
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.noise_a, self.noise_b = noise_a, noise_b
        self.prompt_embeds_a, self.prompt_embeds_b = prompt_embeds_a, prompt_embeds_b
        self.negative_prompt_embeds = negative_prompt_embeds
        self.num_inference_steps = num_inference_steps
        self.panel_size = panel_size
        self.max_trajectories, self.max_frames = max_trajectories, max_frames
        self._runs = lru_cache(maxsize=max_trajectories)(self._sample)      # settings -> Trajectory
        self._decoded = lru_cache(maxsize=max_frames)(self._decode)         # (settings, step) -> pictures

    @staticmethod
    def key(seed_weight: float, prompt_weight: float, guidance_scale: float) -> tuple[float, float, float]:
        """The cache key: the settings rounded to 6 decimals (slider values like 0.30000000000000004)."""
        values = (seed_weight, prompt_weight, guidance_scale)
        if not all(is_number(v, finite=True) for v in values):
            raise ValueError(f"seed_weight, prompt_weight and guidance_scale must be finite numbers, got {values!r}.")
        return tuple(round(float(v), 6) for v in values)

    def trajectory(self, seed_weight: float, prompt_weight: float, guidance_scale: float) -> Trajectory:
        """The :class:`Trajectory` for these settings (computed on the first request, then cached)."""
        return self._runs(self.key(seed_weight, prompt_weight, guidance_scale))

    def _sample(self, key: tuple[float, float, float]) -> Trajectory:
        start = slerp(self.noise_a, self.noise_b, key[0])                                    # [1, C, h, w]
        embeds = interpolate_embeddings(self.prompt_embeds_a, self.prompt_embeds_b, key[1])  # [1, L, d]
        return sample_trajectory(self.unet, self.scheduler, start, embeds, self.negative_prompt_embeds,
                                 num_inference_steps=self.num_inference_steps, guidance_scale=key[2])

    def frames(self, seed_weight: float, prompt_weight: float, guidance_scale: float, step: int) -> torch.Tensor:
        """Decoded pictures ``[3, 3, H, W]`` in [-1, 1] (CPU): the latent ``x_t`` at ``step``, its
        predicted ``x0_hat``, and the final picture. ``step`` in ``0 ... num_inference_steps - 1``."""
        traj = self.trajectory(seed_weight, prompt_weight, guidance_scale)
        if isinstance(step, numbers.Integral) and not isinstance(step, bool):   # int, or a NumPy integer
            step = int(step)
        check_int("step", step, low=0, high=traj.num_steps - 1,
                  expected=f"an int in [0, {traj.num_steps - 1}] (one per denoising step)")
        return self._decoded(self.key(seed_weight, prompt_weight, guidance_scale), step)

    def _decode(self, key: tuple[float, float, float], step: int) -> torch.Tensor:
        # deferred import: sdlearn.vae imports nothing from here, but keep this module light to import
        from sdlearn.vae import decode

        traj = self._runs(key)                        # cached: frames() has just asked for it

        latents = torch.cat([traj.latents[step], traj.x0_preds[step], traj.latents[-1]])   # [3, C, h, w]
        return decode(self.vae, latents).float().cpu()                                    # [3, 3, H, W]

    def render(self, seed_weight: float, prompt_weight: float, guidance_scale: float, step: int) -> bytes:
        """PNG bytes of the three pictures of :meth:`frames`, side by side and titled: an
        ``ipywidgets.Image`` value. This is all a slider move has to do."""
        traj = self.trajectory(seed_weight, prompt_weight, guidance_scale)
        images = self.frames(seed_weight, prompt_weight, guidance_scale, step)
        t = int(traj.timesteps[step])
        strip = _panel_strip(images, [f"latent x_t (t = {t})", f"predicted x0 (t = {t})", "final picture"],
                             self.panel_size)
        buffer = io.BytesIO()
        strip.save(buffer, format="PNG")
        return buffer.getvalue()

    def cache_info(self) -> dict[str, int]:
        """``{"trajectories": cached runs, "frames": cached decoded steps, "hits": ..., "misses": ...}`` (hits
        and misses of the sampling-run cache, which a frame that is not cached yet asks too), from the two
        caches' ``cache_info()``."""
        runs, frames = self._runs.cache_info(), self._decoded.cache_info()
        return {"trajectories": runs.currsize, "frames": frames.currsize, "hits": runs.hits, "misses": runs.misses}
