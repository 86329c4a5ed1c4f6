"""Guidance by a loss: steer each sampling step towards pictures a differentiable function scores well.

Classifier guidance (Dhariwal & Nichol 2021, eq. 14) turns the gradient of a classifier's
``log p(y | x_t)`` into a change of the predicted noise,
``eps_hat = eps - sqrt(1 - abar_t) * grad_{x_t} log p(y | x_t)``. Any differentiable loss ``L`` of the
picture can stand in for ``-log p(y | x_t)`` ("universal guidance", Bansal et al. 2023; the loss
guidance of the fast.ai Stable Diffusion Deep Dive): decode the predicted clean picture

    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t),    image = D(x0_hat / scaling_factor),

score it with ``L(image)``, and move the noise prediction along the gradient:

    eps_hat = eps + s * sqrt(1 - abar_t) * grad_{x_t} L(image),

with ``eps`` held fixed while differentiating (no gradient through the U-Net, only through the VAE's
decoder: cheap). The scheduler then steps with ``eps_hat`` as if the U-Net had predicted it, so any
scheduler that predicts noise on SD's variance-preserving latents (DDIM, PNDM, DDPM, DPM-Solver, UniPC)
can be steered. :func:`blue_loss`, :func:`top_brightness_loss` and :func:`clip_loss` are three such
losses; :func:`loss_guided` is the sampling loop with the extra term.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sdlearn import evaluate, sampling, world
from sdlearn._checks import check_int, is_number
from sdlearn.images import to_numpy
from sdlearn.models import SDComponents
from sdlearn.text import clip_image_features, clip_text_features, tokenize

Loss = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------
# Losses on pictures: images [B, 3, H, W] in [-1, 1] -> one loss per picture [B]
# --------------------------------------------------------------------------------------


def blue_loss(images: torch.Tensor, *, target: float = 0.9) -> torch.Tensor:
    """How far the blue channel is from ``target`` (in [0, 1]), per picture: the Deep Dive's "bluer" loss.

    ``images``: [B, 3, H, W] in [-1, 1]. Returns [B], the mean ``|blue - target|``.
    """
    blue = (images[:, 2] + 1) / 2                                                  # [B, H, W] in [0, 1]
    return (blue - target).abs().mean(dim=(1, 2))


def top_brightness_loss(images: torch.Tensor) -> torch.Tensor:
    """Minus the brightness of the top half, per picture: lower when the top is brighter.

    ``images``: [B, 3, H, W] in [-1, 1]. Returns [B], ``-mean over the top half`` of the pixels in [0, 1].
    """
    top = (images[:, :, : images.shape[2] // 2] + 1) / 2                            # [B, 3, H/2, W]
    return -top.mean(dim=(1, 2, 3))


def clip_loss(clip, tokenizer, text: str | Sequence[str]) -> Loss:
    """The CLIP guidance loss: ``1 - cos(CLIP_image(picture), CLIP_text(text))`` per picture.

    ``clip``: a ``transformers.CLIPModel`` whose vision tower reads [-1, 1] pictures at the model's size
    (the bundled model's ``clip/``: ``sdlearn.text.load_clip()``). One text for every picture, or one each.
    """
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"clip_loss needs a non-empty text (or a list of them) to steer towards, got {text!r}.")
    device = next(clip.parameters()).device
    with torch.no_grad():
        text_features = clip_text_features(clip, tokenize(tokenizer, texts, device=device))   # [1 or B, p]

    def loss(images: torch.Tensor) -> torch.Tensor:
        if text_features.shape[0] not in (1, images.shape[0]):
            raise ValueError(f"clip_loss was made for {text_features.shape[0]} texts and got "
                             f"{images.shape[0]} pictures: give one text, or one per picture.")
        image_features = clip_image_features(clip, images.to(next(clip.parameters()).dtype))  # [B, p], unit length
        return 1 - (image_features * text_features).sum(dim=-1)                            # [B]

    return loss


def clip_score(clip, tokenizer, images: torch.Tensor, text: str | Sequence[str]) -> torch.Tensor:
    """``cos(CLIP_image, CLIP_text)`` per picture: ``1 - clip_loss``. ``images``: [B, 3, H, W] in [-1, 1]."""
    with torch.no_grad():
        return 1 - clip_loss(clip, tokenizer, text)(images)


# --------------------------------------------------------------------------------------
# The steered loop
# --------------------------------------------------------------------------------------


def predicted_picture(vae, latents: torch.Tensor, noise_pred: torch.Tensor,
                      alpha_prod_t: torch.Tensor) -> torch.Tensor:
    """The picture the step predicts: ``D(x0_hat / scaling_factor)`` in [-1, 1], ``[B, 3, H, W]``.

    ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (DDPM, eq. 15), then the VAE's decoder.
    Differentiable in ``latents``.
    """
    pred_original_sample = (latents - (1 - alpha_prod_t).sqrt() * noise_pred) / alpha_prod_t.sqrt()
    return vae.decode(pred_original_sample / vae.config.scaling_factor).sample.clamp(-1, 1)


def loss_gradient(vae, latents: torch.Tensor, noise_pred: torch.Tensor, alpha_prod_t: torch.Tensor,
                  loss_fn: Loss) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_{x_t} sum_b L(picture_b), L per picture)``, with the noise prediction held fixed.

    ``latents``, ``noise_pred``: [B, C, h, w]; returns the gradient [B, C, h, w] and the losses [B].
    Each picture's loss depends only on its own latent, so the gradient of the sum is each one's own.
    """
    with torch.enable_grad():
        x_t = latents.detach().requires_grad_(True)
        loss = loss_fn(predicted_picture(vae, x_t, noise_pred.detach(), alpha_prod_t))     # [B]
        if loss.shape != (latents.shape[0],):
            raise ValueError(f"the loss must give one number per picture, shape [{latents.shape[0]}]; it gave "
                             f"{tuple(loss.shape)}. Average over every dimension but the first.")
        (grad,) = torch.autograd.grad(loss.sum(), x_t)
    return grad, loss.detach()


@dataclass
class GuidedResult:
    """What :func:`loss_guided` returns: the pictures, the final latents and the loss at each guided step."""

    images: torch.Tensor | None      # [B, 3, H, W] in [-1, 1]
    latents: torch.Tensor            # [B, C, h, w]
    losses: list[torch.Tensor]       # one [B] per guided step: L(picture predicted at that step)


def _check_vp_scheduler(scheduler) -> None:
    if float(scheduler.init_noise_sigma) != 1.0 or not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(
            f"loss guidance reads x0_hat from abar_t, on latents of unit scale; {type(scheduler).__name__} keeps "
            f"its latents at scale init_noise_sigma = {float(scheduler.init_noise_sigma):.3g} (a sigma-space "
            "scheduler such as Euler or LMS). Use DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler or "
            "UniPCMultistepScheduler (scheduler=DDIMScheduler.from_config(components.scheduler.config))."
        )
    if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"loss guidance here corrects a noise prediction; this scheduler's prediction_type is "
                         f"{scheduler.config.prediction_type!r}. Use an epsilon-prediction model (SD 1.x).")


def loss_guided(
    components: SDComponents,
    prompt: str | Sequence[str],
    loss_fn: Loss | None,
    *,
    loss_scale: float = 0.0,
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    every: int = 1,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    scheduler=None,
    decode: bool = True,
) -> GuidedResult:
    """Text to image with loss guidance: ``eps_hat = eps_cfg + loss_scale sqrt(1 - abar_t) grad_{x_t} L``.

    The loop of :func:`sdlearn.sampling.text_to_image` (same names, same random draws: with ``loss_scale=0``
    it gives the same pictures), with the loss term added to the guided noise prediction at every ``every``-th
    step. ``loss_fn``: pictures [B, 3, H, W] in [-1, 1] -> losses [B] (:func:`blue_loss`, :func:`clip_loss`, ...).
    ``scheduler``: one on unit-scale latents (DDIM, PNDM, DPM-Solver; default the model's).
    """
    if not is_number(loss_scale, finite=True) or loss_scale < 0:
        raise ValueError(f"loss_scale must be a number >= 0 (0: no loss guidance), got {loss_scale!r}.")
    if loss_scale > 0 and not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function from pictures [B, 3, H, W] to losses [B], got {loss_fn!r}.")
    check_int("every", every, expected="an int >= 1 (guide every n-th step)")
    prompts, scheduler, do_classifier_free_guidance = sampling.begin(components, prompt, scheduler,
                                                                      num_inference_steps, guidance_scale)
    _check_vp_scheduler(scheduler)
    unet, vae = components.unet, components.vae
    device = unet.device

    # 1. Encode the prompt
    prompt_embeds, negative_prompt_embeds = sampling.encode_prompt(
        components.tokenizer, components.text_encoder, prompts,
        do_classifier_free_guidance=do_classifier_free_guidance, device=device)             # [B, L, d] each
    encoder_hidden_states = (torch.cat([negative_prompt_embeds, prompt_embeds]) if do_classifier_free_guidance
                             else prompt_embeds)
    # 2. Set the timesteps
    scheduler.set_timesteps(num_inference_steps, device=device)
    # 3. Prepare the latents
    size = components.image_size // components.vae_scale_factor
    shape = (len(prompts), int(unet.config.in_channels), size, size)
    latents = sampling.prepare_latents(shape, init_noise_sigma=scheduler.init_noise_sigma, generator=generator,
                                       device=device, dtype=prompt_embeds.dtype, latents=latents)  # [B, C, h, w]
    # 4. Prepare the extra step arguments
    extra_step_kwargs = sampling.prepare_extra_step_kwargs(scheduler, generator, 0.0)
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=latents.dtype)
    timestep_cond = sampling.prepare_timestep_cond(unet, guidance_scale, len(prompts), device=device,
                                                   dtype=latents.dtype)     # None but for guidance-distilled U-Nets

    # 5. The denoising loop, with the loss's term
    losses: list[torch.Tensor] = []
    for i, t in enumerate(scheduler.timesteps):
        latent_model_input = torch.cat([latents] * 2) if do_classifier_free_guidance else latents
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        with torch.no_grad():
            noise_pred = unet(latent_model_input, t, encoder_hidden_states=encoder_hidden_states,
                              timestep_cond=timestep_cond, return_dict=False)[0]            # [2B, C, h, w]
        if do_classifier_free_guidance:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = sampling.guide(noise_pred_uncond, noise_pred_text, guidance_scale)  # [B, C, h, w]
        if loss_scale > 0 and i % every == 0:
            alpha_prod_t = alphas_cumprod[int(t)]
            grad, loss = loss_gradient(vae, latents, noise_pred, alpha_prod_t, loss_fn)
            noise_pred = noise_pred + loss_scale * (1 - alpha_prod_t).sqrt() * grad          # eps_hat
            losses.append(loss.cpu())
        latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

    # 6. Decode
    with torch.no_grad():
        images = sampling.decode_latents(vae, latents).float() if decode else None
    return GuidedResult(images=images, latents=latents, losses=losses)


# --------------------------------------------------------------------------------------
# Measured: the loss falls, and the picture still shows what the prompt asks for
# --------------------------------------------------------------------------------------


def with_and_without(components: SDComponents, prompts: Sequence[str], loss_fn: Loss, *, loss_scale: float,
                     seed: int, num_inference_steps: int = 20, guidance_scale: float = 4.0,
                     every: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The same prompts from the same noise (:func:`sdlearn.evaluate.held_out_noise`) without and with loss guidance:
    ``(plain, guided)`` pictures, [B, 3, H, W] in [-1, 1] each."""
    noise = evaluate.held_out_noise(components.unet, len(prompts), seed=seed)
    runs = [loss_guided(components, list(prompts), loss_fn, loss_scale=scale, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, latents=noise, every=every).images
            for scale in (0.0, loss_scale)]
    return runs[0], runs[1]


def share_right(images: torch.Tensor, named: Sequence[list[dict[str, str]]], attributes: Sequence[str]) -> float:
    """The judge's share of pictures that get every one of ``attributes`` that ``named`` names right."""
    right = []
    for image, want in zip(to_numpy(images), named):
        wanted = [{a: v for a, v in obj.items() if a in attributes} for obj in want]
        right.append(all(all(o.values()) for o in world.judge(image, wanted)))
    return float(np.mean(right))


def measure_loss_guidance(components: SDComponents, loss_fn: Loss, *, loss_scale: float, count: int = 16,
                          seed: int = 1000, num_inference_steps: int = 20, guidance_scale: float = 4.0,
                          every: int = 1) -> dict[str, float]:
    """Held-out prompts (every attribute named) drawn with and without loss guidance from the same noise.

    Returns the mean loss of the final pictures without and with guidance (``loss_plain``, ``loss_guided``),
    the share of pictures whose loss fell (``loss_fell``), and the judge's share of pictures that draw the
    prompt's shape and position right (``object_plain``, ``object_guided``): guidance should change the
    picture's look, not what it shows.
    """

    check_int("count", count, expected="an int >= 1 (prompts to draw)")
    prompts = evaluate.eval_prompts("full", count, seed=seed)
    plain, guided = with_and_without(components, [p for p, _ in prompts], loss_fn, loss_scale=loss_scale, seed=seed,
                                     num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                     every=every)
    with torch.no_grad():
        loss_plain, loss_after = loss_fn(plain), loss_fn(guided)
    named = [n for _, n in prompts]
    return {"n": count, "loss_plain": float(loss_plain.mean()), "loss_guided": float(loss_after.mean()),
            "loss_fell": float((loss_after < loss_plain).float().mean()),
            "object_plain": share_right(plain, named, ("shape", "position")),
            "object_guided": share_right(guided, named, ("shape", "position"))}


def _uncoloured_prompts(count: int, seed: int) -> tuple[list[str], list[dict[str, str]]]:
    """Held-out one-object prompts that name size, shape and position but no colour, and the objects' named
    attributes."""

    prompts, objects = [], []
    for _, want in evaluate.eval_prompts("full", count, seed=seed):
        obj = {a: v for a, v in want[0].items() if a != "colour"}
        prompts.append(f"a {obj['size']} {obj['shape']} {world.POSITIONS[obj['position']][0]}")
        objects.append(obj)
    return prompts, objects


def measure_clip_guidance(components: SDComponents, clip, *, colour: str = "blue", loss_scale: float,
                          count: int = 16, seed: int = 1000, num_inference_steps: int = 20,
                          guidance_scale: float = 4.0, every: int = 1) -> dict[str, float]:
    """CLIP guidance towards a colour the prompt does not name: "a big circle on the left", steered by CLIP
    towards "a big {colour} circle on the left".

    Returns the mean CLIP score (cosine with the steering text) without and with guidance (``clip_plain``,
    ``clip_guided``), the judge's share of pictures in ``colour`` (``colour_plain``, ``colour_guided``), and
    its share that draw the prompt's shape, size and position right (``object_plain``, ``object_guided``).
    """

    if colour not in world.COLOURS:
        raise ValueError(f"colour must be one of the world's colours {', '.join(world.COLOURS)}, got {colour!r}.")
    check_int("count", count, expected="an int >= 1 (prompts to draw)")
    prompts, objects = _uncoloured_prompts(count, seed)
    steer = [f"a {o['size']} {colour} {o['shape']} {world.POSITIONS[o['position']][0]}" for o in objects]
    named = [[{**o, "colour": colour}] for o in objects]
    loss_fn = clip_loss(clip, components.tokenizer, steer)
    plain, guided = with_and_without(components, prompts, loss_fn, loss_scale=loss_scale, seed=seed,
                                     num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                     every=every)
    with torch.no_grad():
        score_plain, score_guided = 1 - loss_fn(plain), 1 - loss_fn(guided)
    return {"n": count, "clip_plain": float(score_plain.mean()), "clip_guided": float(score_guided.mean()),
            "colour_plain": share_right(plain, named, ("colour",)),
            "colour_guided": share_right(guided, named, ("colour",)),
            "object_plain": share_right(plain, named, ("shape", "size", "position")),
            "object_guided": share_right(guided, named, ("shape", "size", "position"))}


# --------------------------------------------------------------------------------------
# Weighted and negative prompts: steering through the text embeddings
# --------------------------------------------------------------------------------------


def measure_word_weight(components: SDComponents, *, weights: Sequence[float] = (0.0, 0.5, 1.0, 1.5),
                        count: int = 16, seed: int = 1000, num_inference_steps: int = 20,
                        guidance_scale: float = 4.0) -> dict[float, float]:
    """How often the colour word is drawn when it is weighted ``w``: "a big (red:w) circle on the left".

    Held-out prompts with every attribute named, each drawn from the same noise at every weight
    (:func:`sdlearn.text.encode_weighted`, the mean kept); returns ``{w: the judge's share of pictures in the
    prompt's colour}``. Weight 1 is the plain prompt; weight 0 zeroes the word's own token, but the
    tokens after it have read it (CLIP's text encoder is causal), so the colour is not silenced.
    """
    from sdlearn.text import encode, encode_weighted

    check_int("count", count, expected="an int >= 1 (prompts to draw)")
    prompts = evaluate.eval_prompts("full", count, seed=seed)
    pipe = components.make_pipeline()
    noise = evaluate.held_out_noise(components.unet, count, seed=seed)
    empty = encode(components.tokenizer, components.text_encoder, [""] * count)
    shares = {}
    for w in weights:
        if not is_number(w, finite=True):
            raise ValueError(f"weights must be numbers, got {w!r}.")
        embeds = torch.cat([encode_weighted(components.tokenizer, components.text_encoder,
                                            p.replace(f" {n[0]['colour']} ", f" ({n[0]['colour']}:{w}) ", 1))
                            for p, n in prompts])
        images = pipe(prompt_embeds=embeds, negative_prompt_embeds=empty, latents=noise.clone(),
                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, output_type="pt").images
        shares[float(w)] = share_right(images * 2 - 1, [n for _, n in prompts], ("colour",))
    return shares


def measure_negative_prompt(components: SDComponents, *, colour: str = "red", count: int = 16, seed: int = 1000,
                            num_inference_steps: int = 20, guidance_scale: float = 4.0) -> dict[str, float]:
    """Prompts that name no colour ("a big circle on the left"), drawn with the empty negative prompt and with
    ``negative_prompt=colour``, from the same noise.

    Classifier-free guidance moves away from the negative prompt's prediction, ``eps_neg + s (eps_text -
    eps_neg)``. Returns the judge's share of pictures in ``colour`` (``colour_plain``, ``colour_negative``) and
    of pictures with the prompt's shape, size and position right (``object_plain``, ``object_negative``).
    """
    if colour not in world.COLOURS:
        raise ValueError(f"colour must be one of the world's colours {', '.join(world.COLOURS)}, got {colour!r}.")
    check_int("count", count, expected="an int >= 1 (prompts to draw)")
    prompts, objects = _uncoloured_prompts(count, seed)
    pipe = components.make_pipeline()
    noise = evaluate.held_out_noise(components.unet, count, seed=seed)
    figures: dict[str, float] = {"n": count}
    for name, negative in (("plain", None), ("negative", colour)):
        images = pipe(prompts, negative_prompt=None if negative is None else [negative] * count,
                      latents=noise.clone(), num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, output_type="pt").images * 2 - 1
        figures[f"colour_{name}"] = share_right(images, [[{"colour": colour}] for _ in objects], ("colour",))
        figures[f"object_{name}"] = share_right(images, [[o] for o in objects], ("shape", "size", "position"))
    return figures
