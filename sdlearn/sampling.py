"""The sampling loop by hand: Stable Diffusion's text-to-image and image-to-image, step by step.

diffusers' ``StableDiffusionPipeline.__call__`` turns a prompt into a picture in six steps,
and this module writes them out with the same names and in the same order, so that
``pipeline_stable_diffusion.py`` reads like a longer copy of :func:`text_to_image`:

1. **Encode the prompt** (:func:`encode_prompt`): the prompt and the empty (or negative)
   prompt through the tokenizer and the text encoder, ``[B, L, d]`` each.
2. **Set the timesteps**: ``scheduler.set_timesteps(num_inference_steps)`` picks the
   ``num_inference_steps`` of the ``T = 1000`` training timesteps the loop visits.
3. **Prepare the latents** (:func:`prepare_latents`): ``x_T ~ N(0, I)`` drawn from the
   generator, times ``scheduler.init_noise_sigma``.
4. **Prepare the extra step arguments** (:func:`prepare_extra_step_kwargs`): ``eta`` and
   ``generator`` for the schedulers whose ``step`` takes them.
5. **The denoising loop** (:func:`denoise`): for every timestep ``t``,
   ``scheduler.scale_model_input``, one U-Net call on the doubled batch
   ``latent_model_input = [x_t; x_t]`` with the embeddings ``[negative; prompt]``, split into
   ``noise_pred_uncond`` and ``noise_pred_text``, classifier-free guidance with
   ``guidance_scale`` (:func:`guide`), and ``scheduler.step`` to ``x_{t-1}``.
6. **Decode** (:func:`decode_latents`): ``vae.decode(latents / vae.config.scaling_factor)``,
   in float32 when a float16 VAE asks for it (``vae.config.force_upcast``) or overflows.

With the same components, scheduler config, generator seed and settings,
:func:`text_to_image` gives the image ``StableDiffusionPipeline`` gives and
:func:`image_to_image` the one ``StableDiffusionImg2ImgPipeline`` gives
(``tests/test_sampling.py``). Both can record every step (:class:`Step`: the latent, the
noise predictions and the predicted clean latent) or call a function after each step.

:func:`ddim_step` is one scheduler written out: the DDIM update (Song, Meng & Ermon 2021,
eq. 12 and 16), deterministic for ``eta = 0``, equal to ``DDIMScheduler.step``.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

import sdlearn.unet
import sdlearn.vae
from sdlearn._checks import check_int, is_number
from sdlearn.device import check_generator, draw_noise
from sdlearn.models import SD_GUIDANCE_SCALE, SDComponents
from sdlearn.text import encode

GuidanceScale = float | Sequence[float]


# --------------------------------------------------------------------------------------
# What a run returns
# --------------------------------------------------------------------------------------


@dataclass
class Step:
    """One recorded step of the denoising loop (copies on the CPU, float32).

    ``index``: 0 for the first step; ``timestep``: the ``t`` of this step;
    ``latents``: ``x_t`` ``[B, C, h, w]`` as the scheduler holds it before the step;
    ``noise_pred``: the noise prediction the scheduler stepped with (guided, if guidance ran);
    ``noise_pred_uncond`` / ``noise_pred_text``: the two halves of the U-Net's output (``uncond``
    is None without guidance); ``pred_x0``: the clean latent the step aims at,
    ``x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)`` (None where it cannot be
    computed); ``prev_latents``: ``x_{t-1}``, what ``scheduler.step`` returned.
    """

    index: int
    timestep: int | float
    latents: torch.Tensor
    noise_pred: torch.Tensor
    noise_pred_uncond: torch.Tensor | None
    noise_pred_text: torch.Tensor
    pred_x0: torch.Tensor | None
    prev_latents: torch.Tensor


@dataclass
class SamplingResult:
    """What :func:`text_to_image` and :func:`image_to_image` return.

    ``images``: ``[B, 3, H, W]`` float32 in [-1, 1] on the model's device (None with
    ``decode=False``); ``latents``: the final latents ``[B, C, H/f, W/f]``; ``timesteps``: the
    timesteps the loop visited, in order; ``steps``: one :class:`Step` per loop iteration with
    ``record=True``, else empty.
    """

    images: torch.Tensor | None
    latents: torch.Tensor
    timesteps: torch.Tensor
    steps: list[Step] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def _prompt_list(prompt, name: str = "prompt") -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise TypeError(
        f"{name} must be a str or a non-empty list of str, got {type(prompt).__name__} {prompt!r:.80}. "
        "Pass e.g. 'a red circle' or ['a red circle', 'a blue square']."
    )


def _check_components(components) -> None:
    if not isinstance(components, SDComponents):
        raise TypeError(
            f"expected an sdlearn.models.SDComponents, got {type(components).__name__}. "
            "Get one with sdlearn.models.load() (or sdlearn.models.sd15_replica())."
        )
    if components.unet.device.type == "meta":
        raise ValueError(
            f"model {components.name!r} lives on the 'meta' device: shapes but no weights, nothing to sample. "
            "Use models.load('sd15-replica') for random weights or models.load('bundled') for a trained model."
        )
    unet_dtype, text_dtype = components.unet.dtype, components.text_encoder.dtype
    if unet_dtype != text_dtype:
        raise ValueError(
            f"the U-Net is {str(unet_dtype).removeprefix('torch.')} but the text encoder is "
            f"{str(text_dtype).removeprefix('torch.')}: the U-Net's cross-attention would multiply the two and fail. "
            "Load every part in one dtype (sdlearn.models.load(dtype=...), or plain from_pretrained with the same "
            "torch_dtype), or cast one: components.unet.to(torch.float32). (The VAE may differ: it decodes in "
            "float32 when it needs to.)"
        )


def _check_steps(num_inference_steps, scheduler) -> None:
    limit = int(scheduler.config.num_train_timesteps)
    check_int("num_inference_steps", num_inference_steps, low=1, high=limit,
              expected=f"an int from 1 to {limit} (the scheduler's num_train_timesteps)",
              hint="SD 1.x is usually sampled with 20 to 50 steps.")


def _check_guidance(guidance_scale, batch_size: int) -> bool:
    """Validate ``guidance_scale``; True when it is one scale per image."""
    if isinstance(guidance_scale, bool):
        raise TypeError("guidance_scale must be a number (e.g. 7.5) or one number per image, not a bool.")
    if isinstance(guidance_scale, numbers.Real):
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}.")
        if guidance_scale < 0:
            warnings.warn(
                f"guidance_scale {guidance_scale:g} is negative. As in diffusers, a scale <= 1 turns guidance off: the "
                "prompt runs alone, exactly as with 1.0, and is not pushed away from. To steer away from something, use "
                "a negative prompt; to apply uncond + s (text - uncond) literally, pass one scale per image as a list.",
                UserWarning, stacklevel=4)
        return False
    if isinstance(guidance_scale, torch.Tensor):
        guidance_scale = guidance_scale.reshape(-1).tolist()
    if not isinstance(guidance_scale, Sequence) or not all(is_number(s) for s in guidance_scale):
        raise TypeError(
            f"guidance_scale must be a number or a list of numbers (one per image), got {guidance_scale!r:.80}."
        )
    if len(guidance_scale) != batch_size:
        raise ValueError(
            f"got {len(guidance_scale)} guidance scales for a batch of {batch_size} images; pass one scale for "
            "all images, or exactly one per image (repeat the prompt to compare scales on one prompt)."
        )
    return True


def _check_scheduler(scheduler) -> None:
    if not all(callable(getattr(scheduler, name, None)) for name in ("set_timesteps", "step", "scale_model_input")) \
            or not hasattr(scheduler, "config"):
        raise TypeError(
            f"scheduler must be a diffusers scheduler (with set_timesteps, scale_model_input and step), got "
            f"{type(scheduler).__name__}. E.g. DDIMScheduler.from_config(components.scheduler.config)."
        )


def fresh_scheduler(scheduler):
    """A new scheduler of the same class built from ``scheduler.config``: same settings, no state.

    The loop calls ``set_timesteps`` and ``step`` on it, which change a scheduler's state
    (its timesteps, its step index, a multistep scheduler's history of model outputs), so
    :func:`text_to_image` never touches the scheduler it is given.
    """
    _check_scheduler(scheduler)
    config = dict(scheduler.config)
    # ``from_config`` re-derives the keys listed in ``_use_default_values`` from the class's defaults.
    # A key changed after construction (StableDiffusionPipeline sets an old config's steps_offset 0
    # to 1) stays on that list, so keep on it only the keys that still hold their default.
    defaults = {name: p.default for name, p in inspect.signature(type(scheduler).__init__).parameters.items()}
    config["_use_default_values"] = [k for k in config.get("_use_default_values", [])
                                     if k in defaults and _same(config.get(k), defaults[k])]
    return type(scheduler).from_config(config)


def _same(a, b) -> bool:
    """Config values equal (a list read from JSON equals the tuple default it came from)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def as_the_pipeline_reads_it(scheduler):
    """``scheduler`` with the two corrections ``StableDiffusionPipeline.__init__`` makes to old configs.

    Early SD checkpoints shipped scheduler configs with ``steps_offset: 0`` (timesteps 980, 960,
    ... 0 instead of 981, ... 1) or ``clip_sample: true`` (x0_hat clipped to [-1, 1], wrong for
    latents). The pipeline rewrites them to 1 and False, with a deprecation warning, and the
    loop here does the same, so both visit the same timesteps. Returns ``scheduler`` itself
    when there is nothing to correct, else a new one (with a warning that says what changed).
    """
    fixes = {}
    if scheduler.config.get("steps_offset", 1) != 1:
        fixes["steps_offset"] = 1
    if scheduler.config.get("clip_sample", False) is True:
        fixes["clip_sample"] = False
    if not fixes:
        return scheduler
    was = ", ".join(f"{k}={scheduler.config.get(k)!r}" for k in fixes)
    now = ", ".join(f"{k}={v!r}" for k, v in fixes.items())
    warnings.warn(
        f"this {type(scheduler).__name__}'s config is outdated ({was}); StableDiffusionPipeline runs it with "
        f"{now}, and so does this loop. To silence this, fix the config: "
        f"{type(scheduler).__name__}.from_config(scheduler.config, {now}).",
        UserWarning, stacklevel=3)
    return type(scheduler).from_config(dict(scheduler.config), **fixes)


# --------------------------------------------------------------------------------------
# 1. Encode the prompt
# --------------------------------------------------------------------------------------


@torch.no_grad()
def encode_prompt(
    tokenizer,
    text_encoder,
    prompt: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None = None,
    do_classifier_free_guidance: bool = True,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts -> ``(prompt_embeds, negative_prompt_embeds)``, each ``[B, L, d]``, as the pipeline makes them.

    Each prompt is tokenized to ``L = tokenizer.model_max_length`` ids and encoded by the text
    encoder (its ``last_hidden_state``): :func:`sdlearn.text.encode`. With guidance, the negative
    prompts (the empty prompt ``""`` by default; a single str applies to every prompt) are
    encoded the same way, in a second call, as diffusers does; without it the second result
    is None. The embeddings come back in the text encoder's dtype, on ``device`` (default:
    the text encoder's).
    """
    prompts = _prompt_list(prompt)
    prompt_embeds = encode(tokenizer, text_encoder, prompts, device=device)                  # [B, L, d]
    if not do_classifier_free_guidance:
        return prompt_embeds, None
    if negative_prompt is None:
        negatives = [""] * len(prompts)
    elif isinstance(negative_prompt, str):
        negatives = [negative_prompt] * len(prompts)
    else:
        negatives = _prompt_list(negative_prompt, "negative_prompt")
        if len(negatives) != len(prompts):
            raise ValueError(
                f"got {len(negatives)} negative prompts for {len(prompts)} prompts; pass one str for all, "
                "or one negative prompt per prompt."
            )
    negative_prompt_embeds = encode(tokenizer, text_encoder, negatives, device=device)       # [B, L, d]
    return prompt_embeds, negative_prompt_embeds


# --------------------------------------------------------------------------------------
# 3. Prepare the latents, 4. the extra step arguments
# --------------------------------------------------------------------------------------


def prepare_latents(
    shape: Sequence[int],
    *,
    init_noise_sigma: float | torch.Tensor,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """The start of sampling: ``x_T = eps * init_noise_sigma``, ``eps ~ N(0, I)`` of ``shape`` ``[B, C, h, w]``.

    The noise is drawn by :func:`sdlearn.device.draw_noise` (diffusers' ``randn_tensor``: on a CPU
    generator's device, then moved to ``device``), so the same seed gives the pipeline's numbers.
    Pass ``latents`` to start from your own noise (it is still multiplied by ``init_noise_sigma``,
    like the pipeline's ``latents=`` argument). ``init_noise_sigma``
    is 1 for DDIM/DDPM/PNDM/DPM-Solver, ``sqrt(sigma_max^2 + 1)`` for Euler (its latents live
    at a larger scale).
    """
    device = torch.device(device)
    shape = tuple(int(s) for s in shape)
    check_generator(generator)
    if latents is None:
        latents = draw_noise(shape, generator=generator, device=device, dtype=dtype)
    else:
        if not isinstance(latents, torch.Tensor):
            hint = " Fix: torch.from_numpy(latents)." if type(latents).__module__.startswith("numpy") else ""
            raise TypeError(f"latents must be a torch.Tensor {list(shape)}, got {type(latents).__name__}.{hint}")
        if not torch.isfinite(latents).all():
            raise ValueError(
                "the latents you passed contain NaN or inf, so every step would too. Draw them again, e.g. "
                "torch.randn(shape, generator=generator), or find the step that produced them."
            )
        if tuple(latents.shape) != shape:
            raise ValueError(
                f"latents has shape {tuple(latents.shape)}; expected {shape} ([batch, latent channels, "
                "height / f, width / f]). Draw them with that shape, or leave latents=None."
            )
        latents = latents.to(device=device, dtype=dtype)
    return latents * init_noise_sigma


def prepare_extra_step_kwargs(scheduler, generator: torch.Generator | None, eta: float) -> dict:
    """``{"eta": ..., "generator": ...}``, keeping only what ``scheduler.step`` accepts (as the pipeline does).

    ``eta`` only means something to DDIM (0: deterministic DDIM, 1: as random as DDPM);
    ``generator`` feeds schedulers that add fresh noise in ``step`` (DDIM with eta > 0, Euler
    ancestral, DDPM).
    """
    if not is_number(eta) or eta < 0:
        raise ValueError(f"eta must be a number >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta!r}.")
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


# --------------------------------------------------------------------------------------
# 5. The denoising loop
# --------------------------------------------------------------------------------------


def guide(noise_pred_uncond: torch.Tensor, noise_pred_text: torch.Tensor,
          guidance_scale: GuidanceScale) -> torch.Tensor:
    """Classifier-free guidance, ``uncond + s (text - uncond)``, with one scale or one scale per image.

    ``noise_pred_uncond``, ``noise_pred_text``: ``[B, C, h, w]``. One number ``s`` is
    ``sdlearn.unet.classifier_free_guidance``; a list of ``B`` numbers applies scale ``i`` to
    image ``i`` (a guidance sweep in one batch).
    """
    if not _check_guidance(guidance_scale, noise_pred_text.shape[0]):
        return sdlearn.unet.classifier_free_guidance(noise_pred_uncond, noise_pred_text, guidance_scale)
    scales = guidance_scale.reshape(-1).tolist() if isinstance(guidance_scale, torch.Tensor) else list(guidance_scale)
    return torch.cat([
        sdlearn.unet.classifier_free_guidance(noise_pred_uncond[i:i + 1], noise_pred_text[i:i + 1], float(s))
        for i, s in enumerate(scales)
    ])


def _pred_x0(scheduler, output, model_input: torch.Tensor, noise_pred: torch.Tensor, t) -> torch.Tensor | None:
    """The step's predicted clean latent: the scheduler's own, else DDPM eq. 15 on what the U-Net saw."""
    pred = getattr(output, "pred_original_sample", None)
    if pred is not None:
        return pred
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    t_value = float(t)
    if (alphas_cumprod is None or scheduler.config.get("prediction_type", "epsilon") != "epsilon"
            or not t_value.is_integer()):
        return None
    return sdlearn.unet.predict_x0(model_input, noise_pred, int(t_value), alphas_cumprod)


def _cpu(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach().to("cpu", torch.float32, copy=True)


@torch.no_grad()
def denoise(
    unet,
    scheduler,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    *,
    timesteps: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    guidance_scale: GuidanceScale = SD_GUIDANCE_SCALE,
    extra_step_kwargs: dict | None = None,
    timestep_cond: torch.Tensor | None = None,
    record: bool = False,
    callback: Callable[[Step], None] | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, list[Step]]:
    """Step 5, the denoising loop: ``latents`` ``x_T`` ``[B, C, h, w]`` -> ``x_0``, over ``timesteps``.

    For each ``t``: ``latent_model_input = scale_model_input([x_t; x_t], t)`` (just ``x_t``
    without guidance), one U-Net call with ``[negative_prompt_embeds; prompt_embeds]``,
    ``noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)``, guidance
    ``uncond + s (text - uncond)`` (:func:`guide`), then ``x_{t-1} = scheduler.step(...)``.
    Guidance runs when ``negative_prompt_embeds`` is given. ``scheduler`` must have had
    ``set_timesteps`` called; it is stepped in place. With ``record`` (or a ``callback``) each
    step is kept as a :class:`Step` (or passed to ``callback(step)``); ``progress`` shows a tqdm bar.
    ``timestep_cond``: the guidance input of a guidance-distilled U-Net (:func:`prepare_timestep_cond`).
    Returns ``(final latents, recorded steps)``.
    """
    extra_step_kwargs = extra_step_kwargs or {}
    stepped = getattr(scheduler, "step_index", None)
    if stepped is None and getattr(scheduler, "counter", 0):       # PNDM counts its steps instead
        stepped = scheduler.counter
    if stepped is not None:
        raise ValueError(
            f"this {type(scheduler).__name__} has already stepped (step {stepped}): it keeps its "
            "place in the schedule, so a second run would start where the first ended. Call "
            "scheduler.set_timesteps(num_inference_steps) again first, or use sampling.fresh_scheduler(scheduler)."
        )
    do_classifier_free_guidance = negative_prompt_embeds is not None
    batch_size = latents.shape[0]
    if do_classifier_free_guidance:
        _check_guidance(guidance_scale, batch_size)
        encoder_hidden_states = torch.cat([negative_prompt_embeds, prompt_embeds])             # [2B, L, d]
    else:
        encoder_hidden_states = prompt_embeds                                                  # [B, L, d]
    if encoder_hidden_states.shape[0] != (2 if do_classifier_free_guidance else 1) * batch_size:
        raise ValueError(
            f"{prompt_embeds.shape[0]} prompt embeddings for {batch_size} latents; expected one per latent "
            "(and as many negative ones)."
        )
    steps: list[Step] = []
    for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="denoising", leave=False)):
        # expand the latents for classifier-free guidance: [x_t; x_t]
        latent_model_input = torch.cat([latents] * 2) if do_classifier_free_guidance else latents  # [2B, C, h, w]
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        # predict the noise residual: one U-Net call for both halves
        noise_pred = unet(latent_model_input, t, encoder_hidden_states=encoder_hidden_states,
                          timestep_cond=timestep_cond, return_dict=False)[0]                   # [2B, C, h, w]
        # perform guidance
        if do_classifier_free_guidance:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)                           # [B, C, h, w] each
            noise_pred = guide(noise_pred_uncond, noise_pred_text, guidance_scale)
        else:
            noise_pred_uncond, noise_pred_text = None, noise_pred
        # compute the previous noisy sample x_t -> x_t-1
        output = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=True)
        if record or callback is not None:
            seen = latent_model_input[batch_size:] if do_classifier_free_guidance else latent_model_input
            step = Step(
                index=i, timestep=t.item() if isinstance(t, torch.Tensor) else float(t), latents=_cpu(latents),
                noise_pred=_cpu(noise_pred), noise_pred_uncond=_cpu(noise_pred_uncond),
                noise_pred_text=_cpu(noise_pred_text), pred_x0=_cpu(_pred_x0(scheduler, output, seen, noise_pred, t)),
                prev_latents=_cpu(output.prev_sample),
            )
            if record:
                steps.append(step)
            if callback is not None:
                callback(step)
        latents = output.prev_sample
    return latents, steps


# --------------------------------------------------------------------------------------
# 6. Decode
# --------------------------------------------------------------------------------------


@contextmanager
def _float32(vae) -> Iterator[None]:
    """Run ``vae`` in float32 inside the block and put its dtype back afterwards (as diffusers' upcast does)."""
    dtype = vae.dtype
    vae.to(torch.float32)
    try:
        yield
    finally:
        vae.to(dtype)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, *, upcast: bool | None = None) -> torch.Tensor:
    """Step 6: latents ``[B, C, h, w]`` -> images ``[B, 3, f h, f w]`` in [-1, 1], safe in float16.

    ``sdlearn.vae.decode``: divide by ``vae.config.scaling_factor``, run the decoder, clamp.
    A float16 VAE can overflow (inf, then NaN: a black image). As diffusers' SDXL pipeline does,
    a float16 VAE decodes in float32 when ``vae.config.force_upcast`` is set (``upcast=None``)
    or when ``upcast=True``; and whatever ``upcast`` says, a float16 decode that produces NaN is
    redone in float32. The VAE is put back in float16 afterwards. Float32 and bfloat16 VAEs
    (bfloat16 has float32's range) decode as they are. Returns the VAE's dtype, or float32 if
    it upcast.
    """
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"latents must be a tensor [B, C, h, w], got {type(latents).__name__}.")
    if not torch.isfinite(latents).all():
        raise ValueError(
            "the latents contain NaN or inf, so there is nothing to decode: the loop itself went wrong "
            "(in float16, the U-Net overflowed). Sample in float32 (dtype=torch.float32) to check, or lower "
            "the guidance scale."
        )
    if vae.dtype != torch.float16:
        return sdlearn.vae.decode(vae, latents)
    wanted = bool(vae.config.get("force_upcast", False)) if upcast is None else bool(upcast)
    if not wanted:
        try:
            images = sdlearn.vae.decode(vae, latents, clamp=False)   # float16; raises ValueError on NaN
        except ValueError:
            images = None      # the latents are finite, so the decoder overflowed (or the input is wrong,
        if images is not None and torch.isfinite(images).all():      # which the float32 decode reports)
            return images.clamp(-1.0, 1.0)
    with _float32(vae):
        return sdlearn.vae.decode(vae, latents.float())


# --------------------------------------------------------------------------------------
# The whole loop: text to image
# --------------------------------------------------------------------------------------


def begin(components, prompt, scheduler, num_inference_steps, guidance_scale) -> tuple[list[str], object, bool]:
    """The checks both loops begin with: ``(prompts, a fresh scheduler, whether guidance runs)``.

    Guidance runs, as in diffusers, for a scale above 1, and always for a list of per-image scales;
    never for a guidance-distilled U-Net (``unet.config.time_cond_proj_dim``), which takes the scale
    as an input instead (:func:`prepare_timestep_cond`).
    """
    _check_components(components)
    prompts = _prompt_list(prompt)
    scheduler = as_the_pipeline_reads_it(fresh_scheduler(components.scheduler if scheduler is None else scheduler))
    _check_steps(num_inference_steps, scheduler)
    per_image_scales = _check_guidance(guidance_scale, len(prompts))
    distilled = components.unet.config.get("time_cond_proj_dim") is not None
    return prompts, scheduler, (per_image_scales or guidance_scale > 1.0) and not distilled


def prepare_timestep_cond(unet, guidance_scale: GuidanceScale, batch_size: int, *, device=None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The guidance input of a guidance-distilled U-Net, ``[B, time_cond_proj_dim]``; None for SD's U-Net.

    A U-Net with ``unet.config.time_cond_proj_dim`` (latent consistency models and other
    guidance-distilled models) was trained to give the guided prediction in one call, told the
    scale through ``timestep_cond`` (:func:`sdlearn.unet.guidance_scale_embedding` of
    ``guidance_scale - 1``). As in ``StableDiffusionPipeline``, such a U-Net is called once per
    step on the prompt alone, and classifier-free guidance does not run.
    """
    dim = unet.config.get("time_cond_proj_dim")
    if dim is None:
        return None
    scales = [float(guidance_scale)] * batch_size if isinstance(guidance_scale, numbers.Real) else \
        [float(x) for x in (guidance_scale.reshape(-1).tolist() if isinstance(guidance_scale, torch.Tensor)
                            else guidance_scale)]
    w = torch.tensor([x - 1 for x in scales])                                          # [B], as the pipeline makes it
    return sdlearn.unet.guidance_scale_embedding(w, int(dim)).to(device=device, dtype=dtype)   # [B, dim]


@torch.no_grad()
def text_to_image(
    components: SDComponents,
    prompt: str | Sequence[str],
    *,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int = 50,
    guidance_scale: GuidanceScale = SD_GUIDANCE_SCALE,
    negative_prompt: str | Sequence[str] | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    scheduler=None,
    record: bool = False,
    callback: Callable[[Step], None] | None = None,
    progress: bool = False,
    decode: bool = True,
    upcast_vae: bool | None = None,
) -> SamplingResult:
    """Stable Diffusion's sampling loop, by hand: the same steps as ``StableDiffusionPipeline.__call__``.

    ``prompt``: one str or a list (one image each); ``height``/``width``: multiples of the VAE's
    factor (default: the model's image size, ``components.image_size``); ``guidance_scale``: as
    in diffusers, guidance runs only for ``s > 1`` (``s <= 1`` runs the conditional prediction
    alone); a list of scales, one per image, always runs guidance and applies
    ``uncond + s_i (text - uncond)`` literally, so ``s_i = 0`` is the unconditional prediction.
    ``scheduler``: any diffusers scheduler (default ``components.scheduler``); the loop uses a
    fresh copy (:func:`fresh_scheduler`), the one passed in is not changed. ``latents``: your
    own ``x_T`` noise ``[B, C, h, w]`` instead of a draw from ``generator``. See :func:`denoise`
    for ``record``, ``callback`` and ``progress``, :func:`decode_latents` for ``upcast_vae``;
    ``decode=False`` skips step 6. Returns a :class:`SamplingResult`.
    """
    prompts, scheduler, do_classifier_free_guidance = begin(components, prompt, scheduler, num_inference_steps,
                                                             guidance_scale)
    batch_size = len(prompts)
    unet, vae = components.unet, components.vae
    device = unet.device
    height = components.image_size if height is None else height
    width = components.image_size if width is None else width
    for name, size in (("height", height), ("width", width)):
        check_int(name, size, expected=f"a positive int, a multiple of {sdlearn.vae.vae_scale_factor(vae)} (pixels)",
                  hint=f"Leave it out for the model's own size ({components.image_size}).")
    _, _, latent_height, latent_width = sdlearn.vae.latent_shape(vae, height, width)   # checks the sizes

    # 1. Encode the prompt (and the negative or empty prompt, for guidance)
    prompt_embeds, negative_prompt_embeds = encode_prompt(
        components.tokenizer, components.text_encoder, prompts, negative_prompt=negative_prompt,
        do_classifier_free_guidance=do_classifier_free_guidance, device=device)         # [B, L, d] each

    # 2. Set the timesteps
    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = scheduler.timesteps

    # 3. Prepare the latents: x_T ~ N(0, I), times init_noise_sigma
    shape = (batch_size, int(unet.config.in_channels), latent_height, latent_width)
    latents = prepare_latents(shape, init_noise_sigma=scheduler.init_noise_sigma, generator=generator,
                              device=device, dtype=prompt_embeds.dtype, latents=latents)  # [B, C, h, w]

    # 4. Prepare the extra step arguments
    extra_step_kwargs = prepare_extra_step_kwargs(scheduler, generator, eta)

    # 5. The denoising loop
    latents, steps = denoise(unet, scheduler, latents, prompt_embeds, timesteps=timesteps,
                             negative_prompt_embeds=negative_prompt_embeds, guidance_scale=guidance_scale,
                             extra_step_kwargs=extra_step_kwargs, record=record, callback=callback,
                             progress=progress, timestep_cond=prepare_timestep_cond(
                                 unet, guidance_scale, batch_size, device=device, dtype=latents.dtype))

    # 6. Decode
    images = decode_latents(vae, latents, upcast=upcast_vae).float() if decode else None  # [B, 3, H, W]
    return SamplingResult(images=images, latents=latents, timesteps=timesteps, steps=steps)


# --------------------------------------------------------------------------------------
# Image to image
# --------------------------------------------------------------------------------------


def get_timesteps(scheduler, num_inference_steps: int, strength: float) -> tuple[torch.Tensor, int]:
    """The timesteps image-to-image runs: the last ``int(num_inference_steps * strength)`` of the schedule.

    ``scheduler`` must have had ``set_timesteps(num_inference_steps)`` called. ``strength`` in
    [0, 1] says how much noise to add: 1 starts from (almost) pure noise and runs every step,
    0.5 noises the image to the middle of the schedule and runs the second half. Like the
    img2img pipeline's ``get_timesteps``, it tells the scheduler where it starts
    (``set_begin_index``), for the schedulers that count their steps. Returns
    ``(timesteps, number of steps)``.
    """
    if not is_number(strength) or not 0 <= strength <= 1:
        raise ValueError(
            f"strength must be a number in [0, 1] (0: keep the image, 1: start from noise), got {strength!r}."
        )
    if getattr(scheduler, "num_inference_steps", None) != num_inference_steps:
        raise ValueError(
            f"call scheduler.set_timesteps({num_inference_steps}) first: the scheduler holds "
            f"{getattr(scheduler, 'num_inference_steps', None)!r} inference steps, and get_timesteps picks the last "
            f"strength x {num_inference_steps} of them."
        )
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    if init_timestep < 1:
        raise ValueError(
            f"strength {strength} x num_inference_steps {num_inference_steps} < 1: no denoising step would run. "
            f"Raise strength to at least {1 / num_inference_steps:.3g} or use more steps."
        )
    t_start = max(num_inference_steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps, num_inference_steps - t_start


@torch.no_grad()
def image_to_image(
    components: SDComponents,
    prompt: str | Sequence[str],
    image: torch.Tensor,
    *,
    strength: float = 0.8,
    num_inference_steps: int = 50,
    guidance_scale: GuidanceScale = SD_GUIDANCE_SCALE,
    negative_prompt: str | Sequence[str] | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    scheduler=None,
    record: bool = False,
    callback: Callable[[Step], None] | None = None,
    progress: bool = False,
    decode: bool = True,
    upcast_vae: bool | None = None,
) -> SamplingResult:
    """Image-to-image by hand (SDEdit, Meng et al. 2022), as ``StableDiffusionImg2ImgPipeline`` does it.

    ``image``: ``[B, 3, H, W]`` (or ``[1, 3, H, W]`` for every prompt) in [-1, 1], sides multiples
    of the VAE's factor. The image is encoded to latents (a draw from ``q(z|x)``, times
    ``scaling_factor``, with ``generator``), noised with the scheduler's ``add_noise`` to the
    first timestep that ``strength`` picks (:func:`get_timesteps`), and the rest of the loop
    runs from there. Other arguments as in :func:`text_to_image`.
    """
    prompts, scheduler, do_classifier_free_guidance = begin(components, prompt, scheduler, num_inference_steps,
                                                             guidance_scale)
    batch_size = len(prompts)
    unet, vae = components.unet, components.vae
    device = unet.device
    if isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[0] not in (1, batch_size):
        raise ValueError(
            f"got {image.shape[0]} images for {batch_size} prompts; pass one image for all prompts or one per prompt."
        )

    # 1. Encode the prompt (and the negative or empty prompt, for guidance)
    prompt_embeds, negative_prompt_embeds = encode_prompt(
        components.tokenizer, components.text_encoder, prompts, negative_prompt=negative_prompt,
        do_classifier_free_guidance=do_classifier_free_guidance, device=device)         # [B, L, d] each

    # 2. Set the timesteps, and keep the last ones: strength picks where to start
    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps, _ = get_timesteps(scheduler, num_inference_steps, strength)
    latent_timestep = timesteps[:1].repeat(batch_size)                                # [B], all the first t

    # 3. Encode the image: a draw from q(z|x), times scaling_factor
    image_latents = sdlearn.vae.encode(vae, image, generator=generator)               # [1 or B, C, h, w]
    if image_latents.shape[0] != batch_size:
        image_latents = torch.cat([image_latents] * batch_size)                       # [B, C, h, w]

    # 4. Noise the image latents to the first timestep
    noise = prepare_latents(image_latents.shape, init_noise_sigma=1.0, generator=generator, device=device,
                            dtype=prompt_embeds.dtype)                                # eps ~ N(0, I)
    latents = scheduler.add_noise(image_latents.to(prompt_embeds.dtype), noise, latent_timestep)

    # 5. The denoising loop, from there
    extra_step_kwargs = prepare_extra_step_kwargs(scheduler, generator, eta)
    latents, steps = denoise(unet, scheduler, latents, prompt_embeds, timesteps=timesteps,
                             negative_prompt_embeds=negative_prompt_embeds, guidance_scale=guidance_scale,
                             extra_step_kwargs=extra_step_kwargs, record=record, callback=callback,
                             progress=progress, timestep_cond=prepare_timestep_cond(
                                 unet, guidance_scale, batch_size, device=device, dtype=latents.dtype))

    # 6. Decode
    images = decode_latents(vae, latents, upcast=upcast_vae).float() if decode else None  # [B, 3, H, W]
    return SamplingResult(images=images, latents=latents, timesteps=timesteps, steps=steps)


# --------------------------------------------------------------------------------------
# One scheduler written out: DDIM
# --------------------------------------------------------------------------------------


@dataclass
class DDIMStepOutput:
    """``prev_sample``: ``x_{t_prev}`` ``[B, C, h, w]``; ``pred_original_sample``: the predicted ``x_0``."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _check_step_inputs(noise_pred, latents, alphas_cumprod) -> None:
    """The arguments every hand-written scheduler step shares (:func:`ddim_step`, :func:`ddpm_step`)."""
    if not isinstance(noise_pred, torch.Tensor) or not isinstance(latents, torch.Tensor) \
            or noise_pred.shape != latents.shape:
        raise ValueError(
            f"noise_pred {tuple(getattr(noise_pred, 'shape', ()))} and latents {tuple(getattr(latents, 'shape', ()))} "
            "must be tensors of the same shape [B, C, h, w]: one predicted noise value per latent element."
        )
    if not isinstance(alphas_cumprod, torch.Tensor) or alphas_cumprod.ndim != 1:
        raise ValueError("alphas_cumprod must be a 1-D tensor [T], e.g. scheduler.alphas_cumprod.")


def ddim_step(
    noise_pred: torch.Tensor,
    timestep: int | torch.Tensor,
    latents: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    prev_timestep: int | torch.Tensor,
    final_alpha_cumprod: float | torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    variance_noise: torch.Tensor | None = None,
) -> DDIMStepOutput:
    """One DDIM step (Song, Meng & Ermon 2021, eq. 12 and 16), for epsilon prediction, without clipping.

    With ``a_t = alphas_cumprod[timestep]`` and ``a_prev = alphas_cumprod[prev_timestep]``
    (``final_alpha_cumprod`` when ``prev_timestep < 0``; the scheduler's ``final_alpha_cumprod``)::

        x0_hat  = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)                              # the predicted x_0
        sigma_t = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)          # eq. 16
        x_prev  = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma_t^2) eps + sigma_t z,  z ~ N(0, I)

    ``eta = 0`` adds no noise: deterministic DDIM. ``eta = 1`` gives DDPM's amount of noise.
    ``z`` is drawn from ``generator`` (or given as ``variance_noise``) only when ``eta > 0``.
    ``noise_pred`` (eps) and ``latents`` (x_t): ``[B, C, h, w]``. The operations are
    ``DDIMScheduler.step``'s, in its order, so the results are equal to the last bit.
    """
    _check_step_inputs(noise_pred, latents, alphas_cumprod)
    if not is_number(eta) or eta < 0:
        raise ValueError(f"eta must be a number >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta!r}.")
    if variance_noise is not None and generator is not None:
        raise ValueError("pass either generator (to draw z) or variance_noise (z itself), not both.")
    t, t_prev = int(timestep), int(prev_timestep)
    if not 0 <= t < alphas_cumprod.numel() or t_prev >= t:
        raise ValueError(
            f"timestep {t} must be in [0, {alphas_cumprod.numel() - 1}] and prev_timestep {t_prev} below it: "
            "sampling runs from noisy (large t) to clean (small t). For a DDIM schedule of N steps, "
            "prev_timestep = timestep - num_train_timesteps // N."
        )

    # the cumulative products of the alphas at t and at the previous timestep
    alpha_prod_t = alphas_cumprod[t]
    alpha_prod_t_prev = alphas_cumprod[t_prev] if t_prev >= 0 else final_alpha_cumprod
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev

    # x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    pred_original_sample = (latents - beta_prod_t ** (0.5) * noise_pred) / alpha_prod_t ** (0.5)

    # sigma_t = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)
    variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = eta * variance ** (0.5)

    # x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma_t^2) eps  (+ sigma_t z)
    pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * noise_pred
    prev_sample = alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction
    if eta > 0:
        if variance_noise is None:
            variance_noise = prepare_latents(noise_pred.shape, init_noise_sigma=1.0, generator=generator,
                                             device=noise_pred.device, dtype=noise_pred.dtype)   # z ~ N(0, I)
        prev_sample = prev_sample + std_dev_t * variance_noise
    return DDIMStepOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


# --------------------------------------------------------------------------------------
# The reverse chain itself: DDPM's ancestral step
# --------------------------------------------------------------------------------------


@dataclass
class DDPMStepOutput:
    """``prev_sample``: ``x_{t_prev}`` ``[B, C, h, w]``, a draw from ``p(x_{t_prev} | x_t)``;
    ``pred_original_sample``: the predicted ``x_0``."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


VARIANCE_TYPES = ("fixed_small", "fixed_large")


def posterior_mean_coefficients(alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The two weights of the DDPM posterior mean (Ho et al. 2020, eq. 7), between any two timesteps.

    ``mu~ = c0 x_0 + ct x_t`` with ``alpha_t = a_t / a_prev``, ``beta_t = 1 - alpha_t``:
    ``c0 = sqrt(a_prev) beta_t / (1 - a_t)`` and ``ct = sqrt(alpha_t) (1 - a_prev) / (1 - a_t)``.
    Returns ``(c0, ct)``, computed in ``DDPMScheduler.step``'s order.
    """
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    return (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t, current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t


def posterior_variance(alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor, *,
                       variance_type: str = "fixed_small") -> torch.Tensor:
    """The variance of the reverse step (Ho et al. 2020, section 3.2).

    ``"fixed_small"``: the posterior's own, ``beta~_t = (1 - a_prev) / (1 - a_t) beta_t`` (eq. 7),
    right when x_0 is known exactly, kept above 1e-20 as diffusers keeps it (it is 0 at the last
    step); ``"fixed_large"``: ``beta_t`` itself, right when x_0 is pure N(0, I) noise. DDPM found the
    two give similar samples; ``DDPMScheduler`` defaults to ``"fixed_small"``.
    """
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"variance_type must be one of {VARIANCE_TYPES} (DDPM's two fixed variances), "
                         f"got {variance_type!r}.")
    current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
    if variance_type == "fixed_large":
        return current_beta_t
    variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t
    return torch.clamp(variance, min=1e-20)


def ddpm_step(
    noise_pred: torch.Tensor,
    timestep: int | torch.Tensor,
    latents: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    prev_timestep: int | torch.Tensor,
    variance_type: str = "fixed_small",
    generator: torch.Generator | None = None,
    variance_noise: torch.Tensor | None = None,
) -> DDPMStepOutput:
    """One step of the reverse chain, ``x_{t_prev} ~ p_theta(x_{t_prev} | x_t)`` (DDPM's Algorithm 2).

    The model's noise estimate gives ``x0_hat``; the step draws from the forward process's
    posterior ``q(x_{t_prev} | x_t, x_0)`` with ``x0_hat`` in place of ``x_0``::

        x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)                       # eq. 15
        mu     = c0 x0_hat + ct x_t                                          # eq. 7, posterior_mean_coefficients
        x_prev = mu + sqrt(var) z,  z ~ N(0, I)                              # var: posterior_variance

    ``a_prev`` is 1 when ``prev_timestep < 0`` (the step to x_0). With ``timestep > 0`` a ``z`` is
    drawn from ``generator`` (or taken from ``variance_noise``), as ``DDPMScheduler.step`` draws it;
    at ``timestep == 0`` nothing is added. At SD's last timestep (1) the fixed-small variance is 0 and
    only ``1e-10 z`` is added; fixed-large adds ``beta_1`` worth. Returns a :class:`DDPMStepOutput`
    equal, to the last bit, to ``DDPMScheduler.step`` with the same noise.
    """
    _check_step_inputs(noise_pred, latents, alphas_cumprod)
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}.")
    if variance_noise is not None and generator is not None:
        raise ValueError("pass either generator (to draw z) or variance_noise (z itself), not both.")
    if variance_noise is not None and variance_noise.shape != latents.shape:
        raise ValueError(f"variance_noise has shape {tuple(variance_noise.shape)}; expected {tuple(latents.shape)}.")
    t, t_prev = int(timestep), int(prev_timestep)
    if not 0 <= t < alphas_cumprod.numel() or t_prev >= t:
        raise ValueError(
            f"timestep {t} must be in [0, {alphas_cumprod.numel() - 1}] and prev_timestep {t_prev} below it "
            "(-1 for the last step): the reverse chain runs from noisy (large t) to clean (small t)."
        )

    alpha_prod_t = alphas_cumprod[t]
    alpha_prod_t_prev = alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)

    # x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    pred_original_sample = (latents - (1 - alpha_prod_t) ** (0.5) * noise_pred) / alpha_prod_t ** (0.5)

    # mu~ = c0 x0_hat + ct x_t, the mean of q(x_prev | x_t, x0_hat)
    c0, ct = posterior_mean_coefficients(alpha_prod_t, alpha_prod_t_prev)
    prev_sample = c0 * pred_original_sample + ct * latents

    # + sqrt(var) z, for every step but the one from t = 0
    if t > 0:
        if variance_noise is None:
            variance_noise = prepare_latents(noise_pred.shape, init_noise_sigma=1.0, generator=generator,
                                             device=noise_pred.device, dtype=noise_pred.dtype)   # z ~ N(0, I)
        std = posterior_variance(alpha_prod_t, alpha_prod_t_prev, variance_type=variance_type) ** 0.5
        prev_sample = prev_sample + std * variance_noise
    return DDPMStepOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
