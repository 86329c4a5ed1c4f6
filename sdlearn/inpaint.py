"""Inpainting by hand: repaint the masked part of a picture with an ordinary text-to-image U-Net.

An inpainting model (SD's 9-channel ``stable-diffusion-inpainting``) is trained to see the mask and
the masked picture. An ordinary 4-channel U-Net is not, but it can still inpaint by *blending*
(RePaint, Lugmayr et al. 2022; SDEdit's masked variant): after every denoising step the part we
keep is thrown away and replaced by the original picture's latents, noised to the level of the
next step, so the model only ever invents the masked part, and it does so around a picture that
looks, at every noise level, like the real one. With ``m`` the latent mask (1: repaint, 0: keep),
``z_0`` the image latents and ``eps`` the one noise draw of the run::

    x_{t_prev}  = scheduler.step(eps_hat(x_t), t, x_t)                       # an ordinary step
    z_{t_prev}  = scheduler.add_noise(z_0, eps, t_prev)                      # q(z_{t_prev} | z_0), DDPM eq. 4
    x_{t_prev} <- (1 - m) * z_{t_prev} + m * x_{t_prev}                      # the blend

and after the last step ``z`` is not noised at all, so outside the mask the final latents *are* the
image latents. This is what diffusers' ``StableDiffusionInpaintPipeline`` does for a U-Net whose
``in_channels`` is 4 (its "legacy" path), and :func:`inpaint` does it with the same names in the
same order, on the course's hand loop (:mod:`sdlearn.sampling`), so that with the same parts,
seed and settings the two give the same latents and pictures (``tests/test_inpaint.py``):

1. Encode the prompt; 2. set the timesteps, keeping the last ``strength`` of them;
3. encode the image (a draw from ``q(z|x)`` with the generator, times ``scaling_factor``), draw
   the noise, start from ``noise * init_noise_sigma`` (``strength == 1``) or the image noised to
   the first timestep (``strength < 1``); 4. prepare the mask: binarised at 0.5
   (:func:`prepare_mask`), shrunk to latent size by nearest-neighbour sampling
   (:func:`mask_to_latent`), and the masked image encoded (a 9-channel U-Net's input; the
   4-channel path does not use it, but it draws from the generator, so we draw it too);
5. the denoising loop with the blend; 6. decode. The pipeline pastes nothing back in pixel space
   by default (only with ``padding_mask_crop``, through ``apply_overlay``), so the kept pixels are
   the decoder's picture of latents that are exactly the image's outside the mask, but not inside
   it: the decoder's convolutions blur the mask's edge, and its mid-block self-attention (and its
   group norms) mix every latent into every pixel, so the kept region is a little less faithful
   than a plain VAE round trip everywhere, not only at the edge (:func:`measure_inpainting`
   measures both, and a latent swap with no diffusion at all, which costs as much).

:func:`measure_inpainting` measures it on the toy world: held-out two-object scenes, the second
object boxed out and a different object asked for there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from tqdm.auto import tqdm

import sdlearn.vae
from sdlearn import world
from sdlearn._checks import check_int, is_number
from sdlearn.evaluate import HELD_OUT_SEED
from sdlearn.images import psnr, to_model_range, to_numpy
from sdlearn.models import SD_GUIDANCE_SCALE, SDComponents, recommended_guidance_scale
from sdlearn.sampling import (GuidanceScale, SamplingResult, Step, begin, decode_latents, encode_prompt,
                              get_timesteps, guide, prepare_extra_step_kwargs, prepare_latents,
                              prepare_timestep_cond)

#: Held-out scenes for :func:`measure_inpainting` (the evaluation's other sets use HELD_OUT_SEED + 0..2).
INPAINT_SEED = HELD_OUT_SEED + 20
#: Pixels around the mask left out of the kept-region PSNR: the decoder's convolutions blur the mask's edge.
KEPT_MARGIN = 2


@dataclass
class InpaintResult(SamplingResult):
    """What :func:`inpaint` returns: a :class:`sdlearn.sampling.SamplingResult` and the masks and image latents.

    ``images``: ``[B, 3, H, W]`` in [-1, 1] (None with ``decode=False``); ``latents``: the final latents
    ``[B, 4, h, w]``, equal to ``image_latents`` wherever ``latent_mask`` is 0; ``mask``: the binarised
    pixel mask ``[B, 1, H, W]`` in {0, 1} (1: repainted); ``latent_mask``: it at latent size
    ``[B, 1, h, w]``; ``image_latents``: the encoded image ``[B, 4, h, w]``; ``steps``: with
    ``record=True``, one :class:`sdlearn.sampling.Step` per step, whose ``prev_latents`` are the
    latents *after* the blend.
    """

    mask: torch.Tensor | None = None
    latent_mask: torch.Tensor | None = None
    image_latents: torch.Tensor | None = None


# --------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------


def _mask_tensor(mask) -> torch.Tensor:
    """``mask`` as a float tensor ``[B, 1, H, W]``; a clear error for anything that is not a mask in [0, 1]."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"mask must be a torch.Tensor or numpy array [H, W], [B, H, W] or [B, 1, H, W] in [0, 1] (1: repaint), "
            f"got {type(mask).__name__}. Make one with sdlearn.inpaint.box_mask."
        )
    if mask.dtype == torch.bool:
        mask = mask.float()
    if not mask.is_floating_point():
        raise TypeError(f"mask has dtype {mask.dtype}; expected floats in [0, 1] or bools. For 0..255 use "
                        "mask.float() / 255.")
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}; expected one channel: [H, W], [B, H, W] or [B, 1, H, W]. "
            "For an RGB mask take one channel: mask[:, :1]."
        )
    if mask.numel() == 0 or torch.isnan(mask).any() or float(mask.min()) < 0 or float(mask.max()) > 1:
        lo, hi = (float(mask.min()), float(mask.max())) if mask.numel() else (float("nan"), float("nan"))
        hint = " It looks like 0..255: use mask / 255." if hi > 1 and lo >= 0 else ""
        raise ValueError(f"mask has values in [{lo:.3g}, {hi:.3g}]; expected [0, 1] (1: repaint, 0: keep), "
                         f"with no NaN.{hint}")
    return mask


def prepare_mask(mask, *, height: int, width: int, vae_scale_factor: int = 8) -> torch.Tensor:
    """A mask ``[H, W]`` / ``[B, H, W]`` / ``[B, 1, H, W]`` in [0, 1] -> ``[B, 1, H, W]`` in {0, 1} (1: repaint).

    The mask must be ``height`` x ``width``, the image's size. It goes through the pipeline's own
    ``mask_processor``, ``VaeImageProcessor(do_normalize=False, do_binarize=True,
    do_convert_grayscale=True)``: every value ``>= 0.5`` becomes 1, the rest 0.
    """
    mask = _mask_tensor(mask)
    if tuple(mask.shape[-2:]) != (height, width):
        raise ValueError(
            f"mask is {mask.shape[-1]}x{mask.shape[-2]} (width x height) but the image is {width}x{height}; "
            "give one mask value per pixel of the image (sdlearn.inpaint.box_mask(height, width, box))."
        )
    mask_processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor, do_normalize=False, do_binarize=True,
                                       do_convert_grayscale=True)
    return mask_processor.preprocess(mask, height=height, width=width)                 # [B, 1, H, W] in {0, 1}


def mask_to_latent(mask, vae) -> torch.Tensor:
    """A pixel mask ``[B, 1, H, W]`` (or ``[H, W]``, ``[B, H, W]``) in [0, 1] -> the latent mask ``[B, 1, H/f, W/f]``.

    Binarised (:func:`prepare_mask`), then shrunk by ``F.interpolate`` at its default,
    nearest-neighbour, as the pipeline's ``prepare_mask_latents`` does: latent cell ``(i, j)`` takes
    the pixel ``(f i, f j)``, the top-left corner of its ``f x f`` block (``f = 8`` for SD). So a
    mask edge that is not on the 8-pixel grid moves to it: draw masks on the grid
    (``box_mask(..., grid=8)``) and the latent mask repaints exactly the pixels the mask marks.
    """
    factor = sdlearn.vae.vae_scale_factor(vae)
    mask = _mask_tensor(mask)
    height, width = mask.shape[-2:]
    sdlearn.vae.latent_shape(vae, height, width)                                       # sizes: multiples of f
    mask = prepare_mask(mask, height=height, width=width, vae_scale_factor=factor)     # [B, 1, H, W] in {0, 1}
    return F.interpolate(mask, size=(height // factor, width // factor))               # [B, 1, H/f, W/f]


def box_mask(height: int, width: int, box: tuple[int, int, int, int], *, grid: int = 1) -> torch.Tensor:
    """A rectangle to repaint: ``[1, 1, height, width]`` float32, 1 inside ``box``, 0 outside.

    ``box = (left, top, right, bottom)`` in pixels, right and bottom excluded (PIL's convention).
    ``grid=8`` grows the box outward to multiples of 8, the latent grid of an SD VAE, so that the
    latent mask covers exactly the same pixels (:func:`mask_to_latent`).
    """
    for name, size in (("height", height), ("width", width)):
        check_int(name, size, expected="a positive int (pixels)")
    check_int("grid", grid, expected="an int >= 1 (pixels; 8 for the latent grid of SD's VAE)")
    if not (isinstance(box, Sequence) and len(box) == 4 and all(isinstance(v, int | np.integer) for v in box)):
        raise TypeError(f"box must be four ints (left, top, right, bottom) in pixels, got {box!r:.60}.")
    left, top, right, bottom = (int(v) for v in box)
    left, top = left // grid * grid, top // grid * grid
    right, bottom = -(-right // grid) * grid, -(-bottom // grid) * grid
    left, top, right, bottom = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if right <= left or bottom <= top:
        raise ValueError(f"box {tuple(box)} covers no pixel of a {width}x{height} image; expected "
                         "0 <= left < right <= width and 0 <= top < bottom <= height.")
    mask = torch.zeros(1, 1, height, width)
    mask[..., top:bottom, left:right] = 1.0
    return mask


def kept_region(mask, *, margin: int = KEPT_MARGIN) -> torch.Tensor:
    """The pixels inpainting should leave alone: ``[B, H, W]`` bool, outside the mask grown by ``margin`` pixels.

    ``mask``: ``[B, 1, H, W]`` (or ``[H, W]``, ``[B, H, W]``) in [0, 1], binarised at 0.5. The margin
    leaves out the mask's edge, where the decoder mixes kept and repainted latents (a ``3 x 3``
    max-pool per pixel of margin).
    """
    check_int("margin", margin, low=0, expected="an int >= 0 (pixels)")
    grown = (_mask_tensor(mask) >= 0.5).float()
    if margin:
        grown = F.max_pool2d(grown, kernel_size=2 * margin + 1, stride=1, padding=margin)
    return grown[:, 0] < 0.5


def kept_psnr(images: torch.Tensor, reference: torch.Tensor, mask, *, margin: int = KEPT_MARGIN) -> torch.Tensor:
    """PSNR (dB) of ``images`` against ``reference`` on the kept pixels only: ``[B]`` float64.

    ``images``, ``reference``: ``[B, 3, H, W]`` in [-1, 1]; ``mask``: ``[B or 1, 1, H, W]``, 1 where
    repainted. Each image's kept pixels (:func:`kept_region`) are compared with
    :func:`sdlearn.images.psnr`, ``10 log10(2^2 / MSE)``.
    """
    keep = kept_region(mask, margin=margin)
    if images.shape != reference.shape or images.ndim != 4 or keep.shape[-2:] != images.shape[-2:] \
            or keep.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"images {tuple(images.shape)}, reference {tuple(reference.shape)} and mask "
                         f"{tuple(keep.shape)} must be [B, 3, H, W], [B, 3, H, W] and [B or 1, 1, H, W].")
    keep = keep.expand(images.shape[0], -1, -1)
    if not bool(keep.flatten(1).any(1).all()):
        raise ValueError("the mask (grown by the margin) covers a whole image: no kept pixel to compare.")
    return torch.tensor([psnr(images[i][:, keep[i]], reference[i][:, keep[i]]) for i in range(images.shape[0])],
                        dtype=torch.float64)


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def _check_strength(strength) -> None:
    if not is_number(strength) or not 0 < strength <= 1:
        raise ValueError(
            f"strength must be a number in (0, 1], got {strength!r}: 1 repaints the masked region from pure "
            "noise, 0.5 starts from the image noised halfway and keeps more of what was there."
        )


def _check_batch(x: torch.Tensor, batch_size: int, what: str) -> None:
    if x.shape[0] not in (1, batch_size):
        raise ValueError(f"got {x.shape[0]} {what}s for {batch_size} prompts; pass one {what} for all prompts "
                         "or one per prompt.")


@torch.no_grad()
def inpaint(
    components: SDComponents,
    prompt: str | Sequence[str],
    image: torch.Tensor,
    mask,
    *,
    strength: float = 1.0,
    num_inference_steps: int = 50,
    guidance_scale: GuidanceScale = SD_GUIDANCE_SCALE,
    negative_prompt: str | Sequence[str] | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    scheduler=None,
    record: bool = False,
    progress: bool = False,
    decode: bool = True,
    upcast_vae: bool | None = None,
) -> InpaintResult:
    """Inpaint by blending (RePaint), as ``StableDiffusionInpaintPipeline`` does for a 4-channel U-Net.

    ``image``: ``[B, 3, H, W]`` (or ``[1, 3, H, W]`` for every prompt) in [-1, 1], sides multiples of
    the VAE's factor; ``mask``: ``[B or 1, 1, H, W]`` (or ``[H, W]``) in [0, 1], 1 where to repaint,
    binarised at 0.5 (:func:`prepare_mask`); ``strength`` in (0, 1]: 1 starts the masked region from
    pure noise, less starts from the image noised to the first of the last ``strength`` of the
    timesteps (:func:`sdlearn.sampling.get_timesteps`). After each step the latents outside the
    mask are replaced by the image latents noised to the next timestep:
    ``latents = (1 - mask) * init_latents_proper + mask * latents``. Other arguments as in
    :func:`sdlearn.sampling.text_to_image` (the bundled model is sampled at
    ``sdlearn.models.recommended_guidance_scale()``). Returns an :class:`InpaintResult`.
    """
    prompts, scheduler, do_classifier_free_guidance = begin(components, prompt, scheduler, num_inference_steps,
                                                            guidance_scale)
    _check_strength(strength)
    batch_size = len(prompts)
    unet, vae = components.unet, components.vae
    device = unet.device
    if unet.config.in_channels != vae.config.latent_channels:
        raise ValueError(
            f"this U-Net takes {unet.config.in_channels} input channels, not the VAE's {vae.config.latent_channels} "
            "latent channels: it is an inpainting U-Net (latents + mask + masked image), which inpaints without "
            "blending. Use diffusers' StableDiffusionInpaintPipeline for it; inpaint() is for ordinary U-Nets."
        )
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        got = f"shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise TypeError(f"image must be a tensor [B, 3, H, W] in [-1, 1], got {got}. One image [3, H, W]: "
                        "image[None]; PIL images and arrays: sdlearn.images.to_tensor.")
    height, width = image.shape[-2:]
    sdlearn.vae.latent_shape(vae, height, width)                          # sides: multiples of the VAE's factor
    mask_condition = prepare_mask(mask, height=height, width=width, vae_scale_factor=sdlearn.vae.vae_scale_factor(vae))
    mask_condition = mask_condition.to(image.device)                                  # [1 or B, 1, H, W] in {0, 1}
    for what, x in (("image", image), ("mask", mask_condition)):
        _check_batch(x, batch_size, what)

    # 1. Encode the prompt (and the negative or empty prompt, for guidance)
    prompt_embeds, negative_prompt_embeds = encode_prompt(
        components.tokenizer, components.text_encoder, prompts, negative_prompt=negative_prompt,
        do_classifier_free_guidance=do_classifier_free_guidance, device=device)         # [B, L, d] each
    dtype = prompt_embeds.dtype

    # 2. Set the timesteps, and keep the last ones: strength picks where to start
    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps, _ = get_timesteps(scheduler, num_inference_steps, strength)
    latent_timestep = timesteps[:1].repeat(batch_size)                                # [B], all the first t
    is_strength_max = strength == 1.0

    # 3. Prepare the latents: encode the image (a draw from q(z|x), times scaling_factor), draw the noise
    image_latents = sdlearn.vae.encode(vae, image, generator=generator).to(dtype)     # [1 or B, 4, h, w]
    image_latents = image_latents.repeat(batch_size // image_latents.shape[0], 1, 1, 1)  # [B, 4, h, w]
    noise = prepare_latents(image_latents.shape, init_noise_sigma=1.0, generator=generator, device=device,
                            dtype=dtype)                                              # eps ~ N(0, I)
    if is_strength_max:
        latents = noise * scheduler.init_noise_sigma                                  # x_T: pure noise
    else:
        latents = scheduler.add_noise(image_latents, noise, latent_timestep)          # the image noised to t_start

    # 4. Prepare the mask: at latent size, and the masked image (a 9-channel U-Net's input: unused here,
    #    but the pipeline encodes it with the generator, so we do too, to draw the same numbers after it)
    mask = F.interpolate(mask_condition, size=image_latents.shape[-2:]).to(device=device, dtype=dtype)
    mask = mask.repeat(batch_size // mask.shape[0], 1, 1, 1)                          # [B, 1, h, w]
    masked_image = image * (mask_condition < 0.5)                                     # [1 or B, 3, H, W], 0 = grey
    sdlearn.vae.encode(vae, masked_image, generator=generator)                        # masked_image_latents
    extra_step_kwargs = prepare_extra_step_kwargs(scheduler, generator, eta)
    timestep_cond = prepare_timestep_cond(unet, guidance_scale, batch_size, device=device, dtype=dtype)
    encoder_hidden_states = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_classifier_free_guidance \
        else prompt_embeds                                                            # [2B or B, L, d]

    # 5. The denoising loop, with the blend after every step
    steps: list[Step] = []
    for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="inpainting", leave=False)):
        # expand the latents for classifier-free guidance: [x_t; x_t], and predict the noise residual
        latent_model_input = torch.cat([latents] * 2) if do_classifier_free_guidance else latents
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)          # [2B, 4, h, w]
        noise_pred = unet(latent_model_input, t, encoder_hidden_states=encoder_hidden_states,
                          timestep_cond=timestep_cond, return_dict=False)[0]
        if do_classifier_free_guidance:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)                   # [B, 4, h, w] each
            noise_pred = guide(noise_pred_uncond, noise_pred_text, guidance_scale)
        else:
            noise_pred_uncond, noise_pred_text = None, noise_pred
        output = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=True)
        # the kept region: the image latents, noised to the next timestep (clean after the last step)
        init_latents_proper = image_latents
        if i < len(timesteps) - 1:
            noise_timestep = timesteps[i + 1]
            init_latents_proper = scheduler.add_noise(init_latents_proper, noise, noise_timestep[None])
        prev_latents = (1 - mask) * init_latents_proper + mask * output.prev_sample  # the blend
        if record:
            steps.append(Step(index=i, timestep=t.item(), latents=_cpu(latents), noise_pred=_cpu(noise_pred),
                              noise_pred_uncond=_cpu(noise_pred_uncond), noise_pred_text=_cpu(noise_pred_text),
                              pred_x0=_cpu(getattr(output, "pred_original_sample", None)),
                              prev_latents=_cpu(prev_latents)))
        latents = prev_latents

    # 6. Decode (nothing is pasted back in pixel space: the pipeline's default)
    images = decode_latents(vae, latents, upcast=upcast_vae).float() if decode else None  # [B, 3, H, W]
    return InpaintResult(images=images, latents=latents, timesteps=timesteps, steps=steps,
                         mask=mask_condition.repeat(batch_size // mask_condition.shape[0], 1, 1, 1),
                         latent_mask=mask, image_latents=image_latents)


def _cpu(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach().to("cpu", torch.float32, copy=True)


# --------------------------------------------------------------------------------------
# Measuring it on the toy world
# --------------------------------------------------------------------------------------

PROMPT_STYLES = ("scene", "object")


@dataclass
class InpaintCase:
    """One held-out inpainting task: a two-object scene, its second object boxed out, a new object asked for.

    ``image``: ``[1, 3, H, W]`` in [-1, 1]; ``mask``: ``[1, 1, H, W]``, 1 in ``box`` (pixels, on the 8-pixel
    grid, ``(left, top, right, bottom)``); ``prompt``: what to generate (``prompt_style`` "scene": the
    kept object and the new one, "a big red circle on the left and a small blue square on the right";
    "object": the new one alone); ``new``: the attributes of the new object, as :func:`sdlearn.world.judge`
    takes them; ``kept``: the kept object's; ``scene``: the original scene.
    """

    image: torch.Tensor
    mask: torch.Tensor
    box: tuple[int, int, int, int]
    prompt: str
    new: dict[str, str]
    kept: dict[str, str]
    scene: world.Scene = field(repr=False)


def inpainting_cases(count: int, *, seed: int = INPAINT_SEED, prompt_style: str = "object",
                     resolution: int = 64) -> list[InpaintCase]:
    """``count`` held-out cases (:class:`InpaintCase`), deterministic for ``seed``.

    Case ``i`` is ``world.sample(seed, i, two_object_prob=1)``: two objects, left/right or top/bottom.
    The second one (right or bottom) is boxed out: a box half the image wide and high, centred on its
    position's anchor (it holds a big object with its jitter and none of the other one). The new
    object there has a colour neither object has, another shape than the removed one's, and a random
    size (``numpy.random.default_rng([seed, i, 2])``).
    """
    check_int("count", count, expected="an int >= 1 (cases)")
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES} ('scene': both objects in the prompt, "
                         f"'object': the new one alone), got {prompt_style!r}.")
    cases = []
    for i in range(count):
        sample = world.sample(seed, i, resolution=resolution, two_object_prob=1.0)
        kept, removed = sample.scene.objects
        rng = np.random.default_rng([seed, i, 2])
        colour = str(rng.choice([c for c in world.COLOURS if c not in (kept.colour, removed.colour)]))
        shape = str(rng.choice([s for s in world.SHAPES if s != removed.shape]))
        size = str(rng.choice(list(world.SIZES)))
        new = world.Obj(colour, shape, size, removed.position, world.POSITIONS[removed.position][1],
                        world.SIZES[size])
        shown = world.Scene(sample.scene.background, (kept, new) if prompt_style == "scene" else (new,),
                            sample.scene.gradient)
        prompt, named = world.caption(shown, full=True)
        ax, ay = world.POSITIONS[removed.position][1]
        half = resolution // 4
        box = (round(ax * resolution) - half, round(ay * resolution) - half,
               round(ax * resolution) + half, round(ay * resolution) + half)
        image = to_model_range(torch.from_numpy(sample.image).permute(2, 0, 1)[None])    # [1, 3, H, W]
        cases.append(InpaintCase(image=image, mask=box_mask(resolution, resolution, box, grid=8), box=box,
                                 prompt=prompt, new=named[-1], kept={a: getattr(kept, a) for a in world.ATTRIBUTES},
                                 scene=sample.scene))
    return cases


def judge_case(picture: np.ndarray, case: InpaintCase) -> dict[str, bool]:
    """Which of the new object's attributes ``picture`` (``[H, W, 3]`` uint8) gets right, and whether the kept
    object is still there and right.

    The new object is the largest detection (:func:`sdlearn.world.analyse`) whose centroid lies in the
    box, the kept one the largest outside it. Returns ``{"found", "colour", "shape", "size", "position",
    "all", "kept"}``: ``all`` when every named attribute of the new object is right, ``kept`` when the
    kept object's four are.
    """
    h, w = picture.shape[:2]
    left, top, right, bottom = case.box
    inside, outside = [], []
    for d in world.analyse(picture):
        x, y = d.centroid[0] * w, d.centroid[1] * h
        (inside if left <= x < right and top <= y < bottom else outside).append(d)
    verdict = {"found": bool(inside)}
    verdict.update({a: bool(inside) and getattr(inside[0], a) == v for a, v in case.new.items()})
    verdict["all"] = all(verdict[a] for a in case.new)
    verdict["kept"] = bool(outside) and all(getattr(outside[0], a) == v for a, v in case.kept.items())
    return verdict


@torch.no_grad()
def measure_inpainting(components: SDComponents, *, count: int = 16, seed: int = INPAINT_SEED,
                       prompt_style: str = "object", num_inference_steps: int = 20,
                       guidance_scale: float | None = None, strength: float = 1.0, margin: int = KEPT_MARGIN,
                       batch_size: int = 16) -> dict:
    """Inpaint ``count`` held-out cases (:func:`inpainting_cases`) and score them; returns the figures.

    ``"repainted_right"``: the share of cases whose box holds the asked-for object with every named
    attribute right (:func:`judge_case`), and per attribute (``"colour"``, ``"shape"``, ``"size"``,
    ``"position"``, ``"found"``); ``"kept_right"``: the kept object still judged right;
    ``"kept_psnr"``: the mean PSNR (dB) of the output against the input outside the box grown by
    ``margin`` pixels (:func:`kept_psnr`), and ``"round_trip_psnr"``: the same for a plain VAE
    round trip (decode of the posterior mean), its upper bound; ``"swap_psnr"``: the same for the
    image's latents with the box's latents taken from the batch's previous scene (no diffusion at
    all: what any change of the box's latents costs the kept pixels, because the decoder's
    convolutions and its mid-block self-attention mix every latent into every pixel; with a batch
    of one it is the round trip); ``"seconds"``: the wall time.
    Batch ``k`` uses ``torch.Generator().manual_seed(seed + k * batch_size)``. ``guidance_scale``
    defaults to :func:`sdlearn.models.recommended_guidance_scale`.
    """
    check_int("batch_size", batch_size, expected="an int >= 1 (images per batch)")
    start_time = time.perf_counter()
    guidance_scale = recommended_guidance_scale(components) if guidance_scale is None else guidance_scale
    cases = inpainting_cases(count, seed=seed, prompt_style=prompt_style, resolution=components.image_size)
    verdicts, kept, round_trip, swap = [], [], [], []
    for start in range(0, count, batch_size):
        chunk = cases[start:start + batch_size]
        image = torch.cat([c.image for c in chunk])                                     # [b, 3, H, W]
        mask = torch.cat([c.mask for c in chunk])                                       # [b, 1, H, W]
        result = inpaint(components, [c.prompt for c in chunk], image, mask, strength=strength,
                         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                         generator=torch.Generator().manual_seed(seed + start))
        output = result.images.cpu()
        verdicts += [judge_case(picture, case) for picture, case in zip(to_numpy(output), chunk)]
        z = sdlearn.vae.encode(components.vae, image, sample=False)                    # posterior means
        latent_mask = mask_to_latent(mask, components.vae).to(z)
        swapped = (1 - latent_mask) * z + latent_mask * z.roll(1, dims=0)              # another scene in the box
        kept.append(kept_psnr(output, image, mask, margin=margin))
        round_trip.append(kept_psnr(sdlearn.vae.decode(components.vae, z).cpu(), image, mask, margin=margin))
        swap.append(kept_psnr(sdlearn.vae.decode(components.vae, swapped).cpu(), image, mask, margin=margin))
    rate = {key: float(np.mean([v[key] for v in verdicts])) for key in verdicts[0]}
    return {
        "n": count, "prompt_style": prompt_style, "num_inference_steps": num_inference_steps,
        "guidance_scale": float(guidance_scale), "strength": float(strength), "margin": margin,
        "repainted_right": rate.pop("all"), "kept_right": rate.pop("kept"), **rate,
        "kept_psnr": float(torch.cat(kept).mean()), "round_trip_psnr": float(torch.cat(round_trip).mean()),
        "swap_psnr": float(torch.cat(swap).mean()),
        "seconds": time.perf_counter() - start_time,
    }
