"""Prompt-to-prompt: edit one word of a prompt and keep the rest of the picture, by steering cross-attention.

Change "a small red circle" to "a small blue circle" and generate again from the same
noise ``x_T``: the circle usually comes back blue, but often also moved, resized or reshaped, because every
denoising step sees a different prompt and the small differences grow. Prompt-to-prompt (Hertz et al. 2022,
"Prompt-to-Prompt Image Editing with Cross Attention Control") notices that the *layout* of a picture is
decided by its cross-attention maps, ``A = softmax(Q K^T / sqrt(d_head))`` (which picture positions read
which word), and the *content* by the values ``V`` of the words. So it generates the source and the edited
prompt in one batch from the same ``x_T`` and, for the first steps, gives the edited prompt the source's
maps (the paper's eq. for a word swap, section 3.2)::

    Edit(M_t, M*_t, t) = M_t    if t > tau   (the first round(cross_replace_steps * steps) steps)
                         M*_t   otherwise

    attention output of the edit = Edit(M_t, M*_t, t) V*,

with ``M_t`` the source's maps, ``M*_t`` and ``V*`` the edited prompt's own maps and values. A word swap
keeps the token count, so token ``j`` of one prompt maps onto token ``j`` of the other, and the swapped
word ("blue") is read where the source read "red". Optionally the self-attention maps (picture -> picture)
are injected too, for the first ``self_replace_steps`` of the steps (the paper's code does this on layers of
at most 16 x 16 positions: :data:`SELF_REPLACE_MAX_SIDE`).

How it is built, with diffusers' public attention-processor API (as :mod:`sdlearn.attention` is):

- :class:`AttentionReplace` is the controller: how many steps, which fraction is replaced, where the source
  and edited samples sit in the batch; it counts the denoising steps.
- :class:`ReplaceAttnProcessor` computes attention exactly as diffusers' ``AttnProcessor`` does, but writes
  the source's probabilities into the edited rows before multiplying with the values; where nothing is
  replaced it hands the call to the layer's own processor, untouched.
- :func:`controlled_attention` installs one per layer with ``unet.set_attn_processor`` and always puts the
  original processor objects back, on an exception too. It works around ``StableDiffusionPipeline`` and
  around the course's hand loop :func:`sdlearn.sampling.text_to_image` alike.
- :func:`prompt_to_prompt` does one edit; :func:`measure_word_swap` measures, on held-out prompts, how often
  the edit draws the new colour and how well it keeps the layout (IoU of the object masks) against plain
  re-generation with the edited prompt from the same noise.

The batch. Prompts ``[source, target]`` (or pairs ``[s1, t1, s2, t2, ...]``) with classifier-free guidance
make the U-Net batch ``[uncond_s, uncond_t, cond_s, cond_t]``. Only the conditional half is replaced, as in
the paper's code: the unconditional half reads the same empty prompt for both images, and at the first step
the two images have the same ``x_t``, so their unconditional maps are equal anyway; later they differ only
because the pictures differ, and forcing them equal too did not keep the layout better on the bundled model
(``replace_unconditional=True`` does it: mask IoU 0.712 against 0.713, 32 swaps).

What it does on the bundled model (:func:`measure_word_swap`, colour swaps of held-out captions that leave the
position to the noise, e.g. "a small red circle" -> "a small blue circle", 20 DDIM steps, guidance 4): the new
colour is drawn as often as by plain re-generation (0.969 of 96), and the object stays where it was more
often: mean mask IoU with the source image 0.70 against 0.64 for plain re-generation (16 swaps), 0.701 against
0.641 (96 swaps; same shape, size and position as the source 73 % against 67 %). The gain grows with the share
of replaced steps up to 0.8 and then stops (96 swaps: 0.4: 0.667, 0.6: 0.689, 0.8: 0.701, 1.0: 0.702, where
the new colour also drops from 0.969 to 0.958), hence :data:`CROSS_REPLACE_STEPS` = 0.8; at 32 swaps it is
larger at guidance 7.5 (0.61 against 0.45) and vanishes at 2 (0.80 against 0.81: weak guidance hardly lets the
prompt move the layout). Self-attention injection adds a little (``self_replace_steps`` 0.4: 0.72, 1.0: 0.74),
at the cost of an occasional edit that keeps the old colour (32 swaps), so it is off by default. The gain is
smaller than in the paper: even with every map of every step the source's, the IoU stays near 0.72 (32 swaps).
The likely reason (not measured here): the edited prompt's *values* differ beyond the swapped word (CLIP's
text encoder is causal, so every token after "blue", the end token and the padding read it), and on an 8 x 8
latent those values, not only the maps, place the object.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from sdlearn import sampling, world
from sdlearn._checks import check_int, is_number
from sdlearn.attention import PLAIN_PROCESSORS, AttentionStore, call_processor, finish_attention, project_qkv
from sdlearn.device import draw_noise
from sdlearn.evaluate import HELD_OUT_SEED, eval_prompts, held_out_noise
from sdlearn.images import as_picture, to_numpy
from sdlearn.models import SD_GUIDANCE_SCALE, SDComponents, recommended_guidance_scale
from sdlearn.vae import vae_scale_factor

#: Self-attention is replaced only on layers whose query grid is at most this many positions per side (the
#: paper's code: ``16 ** 2`` queries; on SD 1.5 at 512 px that leaves the 64x64 and 32x32 layers alone, on the
#: bundled model's 8x8 latents it is every layer).
SELF_REPLACE_MAX_SIDE = 16
#: Prompts and seeds of :func:`measure_word_swap`: held out from training (>= HELD_OUT_SEED), and not the ones
#: ``sdlearn.evaluate`` measures prompt following on.
EDIT_SEED = HELD_OUT_SEED + 7
SWAP_ATTRIBUTES = ("colour", "shape")
#: Default share of the steps whose cross-attention is replaced; chosen by measurement (see
#: :func:`measure_word_swap`; the paper's default for word swaps is 0.8).
CROSS_REPLACE_STEPS = 0.8

Model = SDComponents | StableDiffusionPipeline


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def _check_fraction(name: str, value) -> float:
    if not is_number(value, finite=True) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1] (the share of the denoising steps, from the first, "
                         f"whose attention is replaced; 0: none, 1: all), got {value!r}.")
    return float(value)


def _check_prompt(name: str, prompt) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"{name} must be a str, got {type(prompt).__name__} {prompt!r:.80}. Pass one prompt, e.g. "
                        "'a big red circle on the left'.")
    if not prompt.strip():
        raise ValueError(f"{name} is empty; pass a prompt such as 'a big red circle on the left'.")
    return prompt


def _check_unet(unet) -> None:
    if not isinstance(unet, torch.nn.Module) or not hasattr(unet, "attn_processors") \
            or not hasattr(unet, "set_attn_processor"):
        raise TypeError(f"expected a diffusers UNet2DConditionModel (with attn_processors and set_attn_processor), "
                        f"got {type(unet).__name__}. Pass pipe.unet or components.unet.")


def _check_model(model) -> None:
    if not isinstance(model, (SDComponents, StableDiffusionPipeline)):
        raise TypeError(f"model must be an sdlearn.models.SDComponents (sdlearn.models.load()) or a diffusers "
                        f"StableDiffusionPipeline, got {type(model).__name__}.")


def check_word_swap(tokenizer, source: str, target: str) -> None:
    """Raise ``ValueError`` unless ``source`` and ``target`` tokenize to the same number of tokens, so that the
    maps of token ``j`` of one can stand for token ``j`` of the other (a word swap). The message shows both
    tokenizations."""
    _check_prompt("source", source)
    _check_prompt("target", target)
    limit = tokenizer.model_max_length
    ids = [tokenizer(p, truncation=True, max_length=limit).input_ids for p in (source, target)]
    if len(ids[0]) != len(ids[1]):
        shown = [[t.replace("</w>", "") for t in tokenizer.convert_ids_to_tokens(i[1:-1])] for i in ids]
        raise ValueError(
            f"prompt-to-prompt swaps words of the same token count, but source {source!r} is {len(ids[0]) - 2} tokens "
            f"{shown[0]} and target {target!r} is {len(ids[1]) - 2} tokens {shown[1]}. Swap a word for one that "
            "tokenizes to as many tokens (on the bundled model: a word of the toy world's vocabulary; others are "
            "spelled letter by letter)."
        )


# --------------------------------------------------------------------------------------
# The controller and the processor
# --------------------------------------------------------------------------------------


class AttentionReplace:
    """What to replace, and when: the controller of a word-swap edit (the paper's code calls it the same).

    ``num_inference_steps``: the steps of the run it will control (one U-Net call each);
    ``cross_replace_steps``: the share of them, from the first, in which each edited sample's cross-attention
    probabilities are the source's, ``round(cross_replace_steps * num_inference_steps)`` steps;
    ``self_replace_steps``: the same for self-attention (on layers of at most :data:`SELF_REPLACE_MAX_SIDE`
    positions per side); ``pairs``: how many (source, target) pairs the batch holds, laid out as the prompt list
    ``[s1, t1, s2, t2, ...]``; ``replace_unconditional``: also replace in the unconditional half of a
    classifier-free-guidance batch (default False, as the paper's code); ``store``: an
    :class:`sdlearn.attention.AttentionStore` that receives the probabilities the layers really used (after
    replacement), e.g. to check that they are the source's.
    """

    def __init__(self, num_inference_steps: int, *, cross_replace_steps: float = CROSS_REPLACE_STEPS,
                 self_replace_steps: float = 0.0, pairs: int = 1, replace_unconditional: bool = False,
                 store: AttentionStore | None = None) -> None:
        self.num_inference_steps = check_int("num_inference_steps", num_inference_steps,
                                             hint="Pass the num_inference_steps of the run this controls.")
        self.cross_replace_steps = _check_fraction("cross_replace_steps", cross_replace_steps)
        self.self_replace_steps = _check_fraction("self_replace_steps", self_replace_steps)
        self.pairs = check_int("pairs", pairs, hint="One pair per (source, target) prompt pair in the batch.")
        if not isinstance(replace_unconditional, bool):
            raise TypeError(f"replace_unconditional must be True or False, got {replace_unconditional!r}.")
        self.replace_unconditional = replace_unconditional
        if store is not None and not isinstance(store, AttentionStore):
            raise TypeError(f"store must be an sdlearn.attention.AttentionStore or None, got {type(store).__name__}.")
        self.store = store
        self.step = -1                     # index of the current U-Net call; -1 before the first

    @property
    def cross_steps(self) -> int:
        """How many steps, from the first, get the source's cross-attention: ``round(fraction * steps)``."""
        return round(self.cross_replace_steps * self.num_inference_steps)

    @property
    def self_steps(self) -> int:
        """How many steps, from the first, get the source's self-attention."""
        return round(self.self_replace_steps * self.num_inference_steps)

    def reset(self) -> None:
        """Forget the steps counted so far (:func:`controlled_attention` calls it on entry)."""
        self.step = -1

    def begin_step(self) -> None:
        """Count one U-Net call; raises ``RuntimeError`` past ``num_inference_steps`` (the cut would be wrong)."""
        self.step += 1
        if self.step >= self.num_inference_steps:
            raise RuntimeError(
                f"the U-Net ran more than the {self.num_inference_steps} steps this AttentionReplace was set up for. "
                "Run one generation per controlled_attention block, with the same num_inference_steps.")

    def replaces(self, kind: str) -> bool:
        """Whether the current step replaces ``kind`` (``"cross"`` or ``"self"``) attention."""
        return 0 <= self.step < (self.cross_steps if kind == "cross" else self.self_steps)

    def rows(self, batch: int) -> tuple[list[int], list[int]]:
        """``(source_rows, edited_rows)`` of a U-Net batch of ``batch`` samples: with guidance (``batch == 4 *
        pairs``) the conditional half ``[cond_s1, cond_t1, ...]`` (and the unconditional half too with
        ``replace_unconditional``), without it (``batch == 2 * pairs``) every row."""
        if batch == 4 * self.pairs:
            halves = [0, batch // 2] if self.replace_unconditional else [batch // 2]
        elif batch == 2 * self.pairs:
            halves = [0]
        else:
            raise ValueError(
                f"the U-Net ran on a batch of {batch}, but {self.pairs} (source, target) pair(s) make a batch of "
                f"{2 * self.pairs} (no guidance) or {4 * self.pairs} (classifier-free guidance). Pass the prompts as "
                "[source, target, ...] with one image per prompt (num_images_per_prompt=1).")
        sources = [h + 2 * i for h in halves for i in range(self.pairs)]
        return sources, [s + 1 for s in sources]


class ReplaceAttnProcessor:
    """An attention processor that gives the edited samples the source's attention probabilities.

    One per attention layer (``name``: its path; ``original``: the processor it replaces, which must compute
    plain softmax attention). When the controller replaces this layer's kind at this step (or a store records
    it), it computes, as diffusers' ``AttnProcessor``, ``A = softmax(Q K^T / sqrt(d_head))`` ``[B*heads, N, M]``,
    copies ``A[source]`` into ``A[edited]`` and returns ``to_out(A V)``, with each sample's own ``V``. Otherwise
    it calls ``original`` unchanged, so the steps after the cut run exactly as without the edit.
    """

    def __init__(self, controller: AttentionReplace, name: str, original) -> None:
        self.controller, self.name, self.original = controller, name, original

    def _delegate(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs):
        return call_processor(self.original, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        kind = "self" if encoder_hidden_states is None else "cross"
        control, store = self.controller, self.controller.store
        queries = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        replace = control.replaces(kind) and (kind == "cross" or queries <= SELF_REPLACE_MAX_SIDE ** 2)
        record = store is not None and (kind == "cross" or store.wants_self(store.resolution_of(queries)))
        if not (replace or record):
            return self._delegate(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)

        # diffusers' AttnProcessor, with the replacement between the softmax and the values
        query, key, value, attention_mask, context = project_qkv(attn, hidden_states, encoder_hidden_states,
                                                                 attention_mask, temb)
        attention_probs = attn.get_attention_scores(query, key, attention_mask)   # [B*heads, N, M], rows sum to 1
        heads = attn.heads
        batch = attention_probs.shape[0] // heads
        probs = attention_probs.view(batch, heads, *attention_probs.shape[1:])    # [B, heads, N, M]
        if replace:
            sources, edited = control.rows(batch)
            probs[edited] = probs[sources]                                        # Edit(M_t, M*_t, t) = M_t
        if record:
            first = store.kept_rows(batch)
            store.record(self.name, kind, heads, probs[first:].mean(dim=1))      # [n, N, M]
        hidden_states = torch.bmm(attention_probs, value)                      # A V*: [B*heads, N, d_head]
        return finish_attention(attn, hidden_states, context)


@contextmanager
def controlled_attention(unet, controller: AttentionReplace) -> Iterator[AttentionReplace]:
    """Run the U-Net under ``controller`` inside the ``with`` block::

        controller = AttentionReplace(20, cross_replace_steps=0.8)
        with controlled_attention(pipe.unet, controller):
            images = pipe([source, target], latents=x_T.repeat(2, 1, 1, 1), num_inference_steps=20).images

    Installs one :class:`ReplaceAttnProcessor` per attention layer with ``unet.set_attn_processor`` and a forward
    pre-hook that counts the steps; on exit, even after an exception, puts back the very processor objects that
    were there and removes the hook. Raises ``ValueError`` before changing anything if a layer's processor does
    not compute plain softmax attention (an IP-Adapter's, or :func:`sdlearn.attention.capture_attention`'s:
    pass an ``AttentionStore`` as ``controller.store`` instead of nesting the two), and ``RuntimeError`` after
    restoring if the U-Net did not run ``controller.num_inference_steps`` times (the cut would be misplaced).
    """
    _check_unet(unet)
    if not isinstance(controller, AttentionReplace):
        raise TypeError(f"controller must be an AttentionReplace, got {type(controller).__name__}.")
    originals = dict(unet.attn_processors)
    if not originals:
        raise ValueError(f"{type(unet).__name__} has no attention layers to control.")
    processors = {}
    for key, original in originals.items():
        name = key.removesuffix(".processor")
        if isinstance(original, ReplaceAttnProcessor):
            raise ValueError(f"attention control is already on for {name}: leave the other controlled_attention "
                             "block first.")
        if not isinstance(original, PLAIN_PROCESSORS):
            raise ValueError(
                f"{name} uses {type(original).__name__}, which does not compute plain softmax attention, so its "
                f"probabilities cannot be replaced without changing what it computes. Supported: "
                f"{', '.join(c.__name__ for c in PLAIN_PROCESSORS)}. Unload adapters, leave capture_attention blocks "
                "(use AttentionReplace(store=...) to record maps), or call unet.set_default_attn_processor().")
        processors[key] = ReplaceAttnProcessor(controller, name, original)

    def count_step(module, args, kwargs):
        controller.begin_step()
        if controller.store is not None:
            sample = args[0] if args else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
            t = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else timestep
            controller.store.begin_step(tuple(sample.shape[-2:]), None if t is None else float(t))

    controller.reset()
    unet.set_attn_processor(dict(processors))         # set_attn_processor empties the dict it is given
    handle = unet.register_forward_pre_hook(count_step, with_kwargs=True)
    try:
        yield controller
    finally:
        handle.remove()
        unet.set_attn_processor(dict(originals))
    ran = controller.step + 1
    if ran != controller.num_inference_steps:
        raise RuntimeError(
            f"the U-Net ran {ran} times inside controlled_attention, but the AttentionReplace was set up for "
            f"{controller.num_inference_steps} steps, so its cut (after {controller.cross_steps} steps) was not where "
            "you asked. Pass the run's num_inference_steps to AttentionReplace, and run one generation per block.")


# --------------------------------------------------------------------------------------
# One edit
# --------------------------------------------------------------------------------------


@dataclass
class EditResult:
    """What :func:`prompt_to_prompt` returns; images ``[3, H, W]`` float32 in [-1, 1] on the CPU.

    ``source_image``: the source prompt; ``edited_image``: the target prompt with the source's attention for the
    first steps; ``plain_image``: the target prompt generated plainly from the same noise (None if not asked);
    ``latents``: the shared ``x_T`` ``[1, C, h, w]``.
    """

    source: str
    target: str
    source_image: torch.Tensor
    edited_image: torch.Tensor
    plain_image: torch.Tensor | None
    latents: torch.Tensor


def default_guidance_scale(model: Model) -> float:
    """The guidance scale to sample ``model`` with: :func:`sdlearn.models.recommended_guidance_scale` (4 for the
    bundled model), for a pipeline loaded from a folder that folder's, else diffusers' 7.5."""
    if isinstance(model, SDComponents):
        return recommended_guidance_scale(model)
    folder = getattr(model, "name_or_path", None)
    if isinstance(folder, (str, os.PathLike)) and os.fspath(folder):
        return recommended_guidance_scale(os.fspath(folder))
    return SD_GUIDANCE_SCALE


def generate(model: Model, prompts: Sequence[str], latents: torch.Tensor, *, num_inference_steps: int,
             guidance_scale: float) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` float32 in [-1, 1] on the CPU for ``prompts`` from ``latents`` ``x_T`` ``[B, C, h, w]``
    (``H = f h``, ``W = f w`` with the VAE's factor ``f``), by the course's hand loop (an ``SDComponents``) or by
    the diffusers pipeline (a ``StableDiffusionPipeline``), DDIM with eta 0 as the model's scheduler is set up.
    Inside :func:`controlled_attention` the edit applies to either."""
    unet = model.unet
    latents = latents.to(unet.device, unet.dtype)
    factor = vae_scale_factor(model.vae)
    size = {"height": int(latents.shape[-2]) * factor, "width": int(latents.shape[-1]) * factor}
    if isinstance(model, SDComponents):
        out = sampling.text_to_image(model, list(prompts), num_inference_steps=num_inference_steps,
                                     guidance_scale=guidance_scale, latents=latents, **size)
        return out.images.float().cpu()
    images = model(list(prompts), num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   latents=latents, output_type="pt", **size).images          # [B, 3, H, W] in [0, 1]
    return (images.float().cpu() * 2 - 1).clamp(-1, 1)


def _side(unet) -> int:
    return int(unet.config.sample_size)


def draw_latents(model: Model, count: int = 1, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` starting noises ``x_T`` ``[count, C, h, w]`` at the model's latent size, float32 on the CPU, drawn
    as the pipeline draws them (:func:`sdlearn.device.draw_noise`)."""
    unet = model.unet
    side = _side(unet)
    return draw_noise((count, int(unet.config.in_channels), side, side), generator=generator, device="cpu")


@torch.no_grad()
def prompt_to_prompt(model: Model, source: str, target: str, *, num_inference_steps: int = 20,
                     guidance_scale: float | None = None, cross_replace_steps: float = CROSS_REPLACE_STEPS,
                     self_replace_steps: float = 0.0, replace_unconditional: bool = False,
                     generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                     plain: bool = True) -> EditResult:
    """Edit ``source`` into ``target`` (a word swap) by prompt-to-prompt; see the module docstring.

    ``model``: ``SDComponents`` (the course's hand loop) or a ``StableDiffusionPipeline`` (diffusers'); both give
    the same images. ``guidance_scale``: default :func:`default_guidance_scale`. ``latents``: the shared ``x_T``
    ``[1, C, h, w]`` (else drawn from ``generator`` at the model's size); both prompts start from it, and its size
    sets the image's. ``plain``: also generate the
    target plainly from the same noise (the baseline the edit is compared with). The other arguments are
    :class:`AttentionReplace`'s.
    """
    _check_model(model)
    check_word_swap(model.tokenizer, source, target)
    controller = AttentionReplace(num_inference_steps, cross_replace_steps=cross_replace_steps,
                                  self_replace_steps=self_replace_steps, replace_unconditional=replace_unconditional)
    guidance_scale = default_guidance_scale(model) if guidance_scale is None else guidance_scale
    if not is_number(guidance_scale, finite=True) or guidance_scale <= 1:
        raise ValueError(f"guidance_scale must be a number > 1 (classifier-free guidance), got {guidance_scale!r}.")
    if latents is None:
        latents = draw_latents(model, generator=generator)
    elif not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[0] != 1:
        raise ValueError(f"latents must be one x_T, a tensor [1, C, h, w], got "
                         f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}; "
                         "both prompts start from it.")
    with controlled_attention(model.unet, controller):
        images = generate(model, [source, target], latents.repeat(2, 1, 1, 1),
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)    # [2, 3, H, W]
    plain_image = generate(model, [target], latents, num_inference_steps=num_inference_steps,
                           guidance_scale=guidance_scale)[0] if plain else None
    return EditResult(source, target, images[0], images[1], plain_image, latents.detach().cpu())


# --------------------------------------------------------------------------------------
# Measuring it
# --------------------------------------------------------------------------------------


def swap_word(prompt: str, old: str, new: str) -> str:
    """``prompt`` with its one word ``old`` replaced by ``new`` (whole words only)."""
    words = prompt.split()
    if words.count(old) != 1:
        raise ValueError(f"{old!r} must be a word of {prompt!r} exactly once to be swapped, found "
                         f"{words.count(old)} times.")
    return " ".join(new if w == old else w for w in words)


SWAP_KINDS = ("free", "full")


def word_swaps(count: int, *, seed: int = EDIT_SEED, attribute: str = "colour", kind: str = "free") -> list[dict]:
    """``count`` held-out word swaps: each ``{"source", "target", "named", "new"}``: a held-out caption, what it
    names, the caption with its ``attribute`` ("colour" or "shape") word swapped for ``new`` (another value, drawn
    at random), and that value.

    ``kind="free"``: captions that name the attribute but not the position
    (``sdlearn.evaluate.eval_prompts("partial", ...)``, e.g. "a small red circle"), so the layout is left to the
    noise and can move when a word changes; ``kind="full"``: full captions ("a big red circle on the left"),
    whose words pin the layout already.
    """
    if attribute not in SWAP_ATTRIBUTES:
        raise ValueError(f"attribute must be one of {SWAP_ATTRIBUTES}, got {attribute!r}.")
    if kind not in SWAP_KINDS:
        raise ValueError(f"kind must be one of {SWAP_KINDS} ('free': the position is not named; 'full': every "
                         f"attribute is), got {kind!r}.")
    check_int("count", count, hint="The number of word swaps.")
    values = list(world.COLOURS) if attribute == "colour" else list(world.SHAPES)
    drawn = 4 * count
    while True:
        if kind == "full":
            chosen = eval_prompts("full", count, seed=seed)
        else:
            chosen = [(p, n) for p, n in eval_prompts("partial", drawn, seed=seed)
                      if attribute in n[0] and "position" not in n[0]]
        if len(chosen) >= count:
            break
        drawn *= 2
    rng = np.random.default_rng([seed, SWAP_ATTRIBUTES.index(attribute), SWAP_KINDS.index(kind)])
    swaps = []
    for source, named in chosen[:count]:
        old = named[0][attribute]
        new = str(rng.choice([v for v in values if v != old]))
        swaps.append({"source": source, "target": swap_word(source, old, new), "named": named, "new": new})
    return swaps


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of the largest object's mask in two images ``[H, W, 3]`` uint8 (or [-1, 1]
    tensors): ``|A and B| / |A or B|``, from :func:`sdlearn.world.analyse`; 0 when either has no object."""
    found = [world.analyse(as_picture(x, uint8=True)) for x in (a, b)]
    if not found[0] or not found[1]:
        return 0.0
    ma, mb = found[0][0].mask, found[1][0].mask
    return float((ma & mb).sum() / (ma | mb).sum())


@torch.no_grad()
def measure_word_swap(model: Model, *, count: int = 16, seed: int = EDIT_SEED, attribute: str = "colour",
                      kind: str = "free",
                      num_inference_steps: int = 20, guidance_scale: float | None = None,
                      cross_replace_steps: float | Sequence[float] = CROSS_REPLACE_STEPS,
                      self_replace_steps: float = 0.0, replace_unconditional: bool = False,
                      batch_size: int = 16) -> dict:
    """Prompt-to-prompt against plain re-generation on ``count`` held-out word swaps (:func:`word_swaps`).

    Swap ``i`` starts from ``x_T`` drawn with ``torch.Generator().manual_seed(seed + i)``, for the source, the
    edit and the plain re-generation alike. Judged from pixels with :func:`sdlearn.world.analyse`, each image's
    largest object (the one :func:`sdlearn.world.judge` compares with a one-object prompt):

    - ``source_right``: the source image has its caption's ``attribute``; ``source_all_right``: every attribute;
    - ``"p2p"``: ``new``, the share of edited images whose object has the new value; ``kept``, those whose object
      has the source image's other three attributes (same shape, size and position for a colour swap); ``iou``, the
      mean mask IoU between the source image and the edited one (:func:`mask_iou`), and ``ious``, one per swap;
    - ``"plain"``: the same for the target generated plainly from the same noise (the baseline).

    ``kind``: :func:`word_swaps`'s (default "free": the position is not named, so the layout can move).
    ``cross_replace_steps`` may be a list: then ``"p2p"`` maps each fraction to its figures (the source and plain
    images are generated once). Returns a dict with those figures, the settings and ``seconds`` (wall time).
    """
    _check_model(model)
    check_int("count", count, hint="The number of word swaps to measure.")
    check_int("batch_size", batch_size, hint="Pairs per U-Net batch.")
    fractions = [cross_replace_steps] if is_number(cross_replace_steps) else list(cross_replace_steps)
    for f in fractions:
        _check_fraction("cross_replace_steps", f)
    guidance_scale = default_guidance_scale(model) if guidance_scale is None else guidance_scale
    start = time.perf_counter()
    swaps = word_swaps(count, seed=seed, attribute=attribute, kind=kind)
    for s in swaps:
        check_word_swap(model.tokenizer, s["source"], s["target"])
    x_t = held_out_noise(model.unet, count, seed=seed)                      # [count, C, h, w], seed + i each
    kw = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
    others = [a for a in world.ATTRIBUTES if a != attribute]

    def run_edits(fraction: float) -> tuple[np.ndarray, np.ndarray]:
        sources, edits = [], []
        for lo in range(0, count, batch_size):
            chunk = swaps[lo:lo + batch_size]
            controller = AttentionReplace(num_inference_steps, cross_replace_steps=fraction,
                                          self_replace_steps=self_replace_steps, pairs=len(chunk),
                                          replace_unconditional=replace_unconditional)
            prompts = [p for s in chunk for p in (s["source"], s["target"])]
            with controlled_attention(model.unet, controller):
                images = generate(model, prompts, x_t[lo:lo + len(chunk)].repeat_interleave(2, dim=0), **kw)
            sources.append(images[0::2])
            edits.append(images[1::2])
        return to_numpy(torch.cat(sources)), to_numpy(torch.cat(edits))

    def scores(images: np.ndarray, source_images: np.ndarray) -> dict:
        found = [world.analyse(im) for im in images]
        was = [world.analyse(im) for im in source_images]
        new = [bool(f) and getattr(f[0], attribute) == s["new"] for f, s in zip(found, swaps)]
        kept = [bool(f) and bool(w) and all(getattr(f[0], a) == getattr(w[0], a) for a in others)
                for f, w in zip(found, was)]
        iou = [mask_iou(a, b) for a, b in zip(source_images, images)]
        return {"new": float(np.mean(new)), "kept": float(np.mean(kept)), "iou": float(np.mean(iou)),
                "ious": [round(x, 4) for x in iou]}

    p2p, source_images = {}, None
    for f in fractions:
        src, edited = run_edits(float(f))
        source_images = src if source_images is None else source_images
        p2p[float(f)] = scores(edited, source_images)
    plain = np.concatenate([to_numpy(generate(model, [s["target"] for s in swaps[lo:lo + batch_size]],
                                            x_t[lo:lo + batch_size], **kw)) for lo in range(0, count, batch_size)])
    verdicts = [world.judge(im, s["named"])[0] for im, s in zip(source_images, swaps)]
    return {
        "n": count, "attribute": attribute, "kind": kind, "seed": seed, "num_inference_steps": num_inference_steps,
        "guidance_scale": float(guidance_scale), "self_replace_steps": float(self_replace_steps),
        "replace_unconditional": replace_unconditional,
        "source_right": float(np.mean([v[attribute] for v in verdicts])),
        "source_all_right": float(np.mean([all(v.values()) for v in verdicts])),
        "p2p": p2p[float(fractions[0])] if is_number(cross_replace_steps) else p2p,
        "plain": scores(plain, source_images),
        "seconds": time.perf_counter() - start,
    }
