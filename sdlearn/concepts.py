"""Teach the model a new word: textual inversion and LoRA, on a colour it never saw (notebook 10).

The bundled model knows five colours. :data:`sdlearn.world.NEW_COLOURS` adds orange, which it
never saw in training, and this module teaches it two ways, both with Stable Diffusion's own
objective (:func:`sdlearn.train.diffusion_loss`, Ho et al. 2020 eq. 14) on rendered orange scenes
(:func:`concept_data`):

- **Textual inversion** (Gal et al. 2022, eq. 2): a new token ``<orange>`` gets one new row of the
  text encoder's token-embedding table, ``v* = argmin_v E || eps - eps_theta(z_t, t, c_theta(y; v)) ||^2``,
  and nothing else changes (:func:`train_textual_inversion`). The result is a 128-number file that
  diffusers' ``pipe.load_textual_inversion`` reads (:func:`save_textual_inversion`).
- **LoRA** (Hu et al. 2021, eq. 3): each attention projection ``W`` of the U-Net gets a low-rank
  update, ``W x + (alpha / r) B A x`` with ``A: [r, d_in]``, ``B: [d_out, r]`` (``B = 0`` at the start,
  so the model starts exactly as it was), and only ``A`` and ``B`` train (:func:`add_lora`,
  :func:`train_lora`), through peft; the weights go to a file ``pipe.load_lora_weights`` reads
  (:func:`save_lora`).

:func:`concept_following` judges a pipeline on held-out prompts that use the new word, with the
six-colour palette (:func:`sdlearn.world.palette`); :func:`concept_figures` runs the whole
comparison (before training, textual inversion, LoRA, and the base prompts with and without the
adapter) and returns the figures the notebook states.

What it found on the bundled model: the VAE, trained on five colours, snaps orange to yellow
(:func:`round_trip_colours`: 91% of orange scenes come back yellow, 6% orange), so the latents both
methods train on already decode to yellow, and neither learns to draw orange (0% after 100-150 steps
of either). The decoder can draw orange from other latents (optimising a latent against the picture
reaches 75%): training on such inverted latents, or tuning the VAE's decoder as well, is the way on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import evaluate, text, train, world
from ._checks import check_int, is_number
from .images import to_model_range, to_numpy

#: The placeholder token textual inversion adds, and the colour it stands for.
PLACEHOLDER = "<orange>"
CONCEPT_COLOUR = "orange"
#: The plain word LoRA trains on: not in the vocabulary, so the tokenizer spells it (o r an g e).
PLAIN_WORD = "orange"
#: Seeds: training scenes from CONCEPT_SEED, held-out prompts and generators from CONCEPT_EVAL_SEED up
#: (the held-out range of :mod:`sdlearn.evaluate`, offset so no held-out figure shares them).
CONCEPT_SEED = 0
CONCEPT_EVAL_SEED = evaluate.HELD_OUT_SEED + 500
#: The U-Net modules LoRA adapts: the query, key, value and output projections of every attention layer.
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


# --------------------------------------------------------------------------------------
# Data: orange scenes, encoded once by the VAE; optionally ordinary scenes to keep the prior.
# --------------------------------------------------------------------------------------


@dataclass
class ConceptData:
    """Training data for a new concept: VAE posteriors of rendered scenes (unscaled).

    ``mean``/``std``: [N, 4, h, w] of the concept's scenes (``scenes``); ``prior_mean``/``prior_std``:
    [M, 4, h, w] of ordinary world scenes (``prior_scenes``, M may be 0), for prior preservation.
    """

    mean: torch.Tensor
    std: torch.Tensor
    scenes: list[world.Scene]
    prior_mean: torch.Tensor
    prior_std: torch.Tensor
    prior_scenes: list[world.Scene]
    scaling_factor: float
    colour: str = CONCEPT_COLOUR


def concept_data(vae, *, count: int = 256, prior_count: int = 0, seed: int = CONCEPT_SEED,
                 colour: str = CONCEPT_COLOUR, device: torch.device | str = "cpu") -> ConceptData:
    """Render ``count`` one-object scenes of ``colour`` (:func:`sdlearn.world.concept_sample`) and
    ``prior_count`` ordinary scenes (:func:`sdlearn.train.render_pool`), and encode them with ``vae``
    (:func:`sdlearn.train.encode_pool`). Latents are later multiplied by ``vae.config.scaling_factor``."""
    check_int("count", count, expected="an int >= 1 (concept scenes to render)")
    check_int("prior_count", prior_count, low=0, expected="an int >= 0 (ordinary scenes to mix in)")
    samples = [world.concept_sample(seed, i, word=PLACEHOLDER, colour=colour) for i in range(count)]
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    mean, std = train.encode_pool(vae, train.WorldData(images, [s.scene for s in samples]), device=device)
    if prior_count:
        prior = train.render_pool(seed + 1, prior_count)
        prior_mean, prior_std = train.encode_pool(vae, prior, device=device)
        prior_scenes = prior.scenes
    else:
        prior_mean = prior_std = mean.new_zeros((0, *mean.shape[1:]))
        prior_scenes = []
    return ConceptData(mean, std, [s.scene for s in samples], prior_mean, prior_std, prior_scenes,
                       float(vae.config.scaling_factor), colour)


def draw_batch(data: ConceptData, generator: torch.Generator, *, word: str, batch_size: int,
               prior_fraction: float = 0.0) -> tuple[torch.Tensor, list[str]]:
    """One training batch: latents [B, 4, h, w] (sampled from the posteriors, times the scaling factor) and captions.

    ``round(prior_fraction * batch_size)`` items are ordinary scenes with ordinary captions
    (:func:`sdlearn.train.draw_captions`); the rest are concept scenes captioned with ``word``
    (:func:`sdlearn.world.concept_caption`). Every draw comes from ``generator``.
    """
    n_prior = int(round(prior_fraction * batch_size)) if data.prior_scenes else 0
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    idx = torch.randint(len(data.scenes), (batch_size - n_prior,), generator=generator)
    mean, std = data.mean[idx], data.std[idx]
    captions = [world.concept_caption(data.scenes[i], rng, word=word)[0] for i in idx.tolist()]
    if n_prior:
        pidx = torch.randint(len(data.prior_scenes), (n_prior,), generator=generator)
        mean, std = torch.cat([mean, data.prior_mean[pidx]]), torch.cat([std, data.prior_std[pidx]])
        captions += train.draw_captions([data.prior_scenes[i] for i in pidx.tolist()], rng)
    eps = torch.randn(mean.shape, generator=generator)
    return (mean + std * eps) * data.scaling_factor, captions                       # [B, 4, h, w]


def _noise_scheduler(scheduler):
    """The training noise schedule: a ``DDPMScheduler`` from the pipeline's scheduler config (same betas)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config)


@contextlib.contextmanager
def _frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """Switch off ``requires_grad`` on every parameter of ``modules``, and put each flag back afterwards."""
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _check_training(steps, lr, batch_size, prior_fraction) -> None:
    check_int("steps", steps, expected="an int >= 1 (optimizer steps)", hint="Pass e.g. steps=200.")
    check_int("batch_size", batch_size, expected="an int >= 1 (images per step)", hint="Pass e.g. batch_size=32.")
    if not is_number(lr, finite=True) or lr <= 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}. Pass e.g. lr=1e-2.")
    if not is_number(prior_fraction) or not 0 <= prior_fraction < 1:
        raise ValueError(f"prior_fraction must be a number in [0, 1), got {prior_fraction!r}: the share of each "
                         "batch taken from ordinary scenes.")


@dataclass
class TrainingResult:
    """What the training functions return: the loss of every step and the seconds it took."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


# --------------------------------------------------------------------------------------
# Textual inversion: one new row of the token-embedding table.
# --------------------------------------------------------------------------------------


@dataclass
class TextualInversion(TrainingResult):
    """A trained token: its text, its id in the tokenizer and its embedding [d]."""

    token: str = PLACEHOLDER
    token_id: int = -1
    embedding: torch.Tensor | None = None


def add_token(tokenizer, text_encoder, token: str, *, init_words: Sequence[str] = ("red",)) -> int:
    """Add ``token`` to the tokenizer and one row to ``text_encoder``'s token embeddings; return its id.

    The new row starts at the mean of ``init_words``' rows (each must be one token of the vocabulary),
    as Gal et al. initialise from a coarse descriptor of the concept. Every other row is left as it was.
    """
    if not isinstance(token, str) or not token or any(ch.isspace() for ch in token):
        raise ValueError(f"token must be one word without spaces, e.g. '<orange>', got {token!r}.")
    if token in tokenizer.get_vocab():
        raise ValueError(f"{token!r} is already in the tokenizer; pick a new placeholder, or load a fresh pipeline.")
    if isinstance(init_words, str) or not init_words:
        raise ValueError(f"init_words must be a non-empty list of words, e.g. ['red', 'yellow'], got {init_words!r}.")
    init_ids = []
    for word in init_words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"init word {word!r} is {len(ids)} tokens ({tokenizer.tokenize(word)}); use words of the "
                             "vocabulary, which are one token each (e.g. 'red', 'yellow').")
        init_ids.append(ids[0])
    tokenizer.add_tokens(token)
    token_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer))
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[token_id] = weight[init_ids].mean(dim=0)
    return token_id


def text_embeddings(tokenizer, text_encoder, captions: list[str], *, device: torch.device | str) -> torch.Tensor:
    """``last_hidden_state`` [B, L, d] of ``captions``, with gradients (:func:`sdlearn.text.encode` has none)."""
    input_ids = text.tokenize(tokenizer, captions, device=device, warn=False)       # [B, L]
    return text_encoder(input_ids).last_hidden_state                                # [B, L, d]


def train_textual_inversion(pipe, data: ConceptData, *, token: str = PLACEHOLDER,
                            init_words: Sequence[str] = ("red",), steps: int = 300, lr: float = 1e-2,
                            batch_size: int = 32, seed: int = 0, warmup: int = 20, prior_fraction: float = 0.0,
                            progress: bool = False) -> TextualInversion:
    """Learn one embedding row for ``token`` in ``pipe``'s text encoder (Gal et al. 2022, eq. 2).

    ``pipe``: anything with ``tokenizer``, ``text_encoder``, ``unet`` and ``scheduler`` (a
    ``StableDiffusionPipeline`` or :class:`sdlearn.models.SDComponents`); the token is added to it
    (:func:`add_token`) and trained in place. Everything else stays frozen: the U-Net and every other
    row of the table (their gradient is masked to 0, and AdamW without weight decay then leaves them
    exactly as they were). :func:`sdlearn.train.fit` runs the loop (AdamW, warm-up, cosine decay),
    seeded with ``seed``.
    """
    _check_training(steps, lr, batch_size, prior_fraction)
    tokenizer, text_encoder, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
    token_id = add_token(tokenizer, text_encoder, token, init_words=init_words)
    noise_scheduler = _noise_scheduler(pipe.scheduler)
    weight = text_encoder.get_input_embeddings().weight
    keep = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    keep[token_id] = 1

    def loss_fn(model, generator, device):
        latents, captions = draw_batch(data, generator, word=token, batch_size=batch_size,
                                       prior_fraction=prior_fraction)
        encoder_hidden_states = text_embeddings(tokenizer, model, captions, device=device)   # [B, L, d]
        return train.diffusion_loss(unet, noise_scheduler, latents.to(device), encoder_hidden_states,
                                    generator=generator)

    with _frozen(text_encoder, unet):
        weight.requires_grad_(True)
        hook = weight.register_hook(lambda grad: grad * keep)     # only the new row learns
        try:
            trained, result = train.fit(text_encoder, loss_fn, steps=steps, lr=lr, seed=seed,
                                        warmup=min(warmup, steps), desc="textual inversion", progress=progress)
        finally:
            hook.remove()
    return TextualInversion(result.losses, result.seconds, steps, token, token_id,
                            trained.get_input_embeddings().weight[token_id].detach().clone())


def save_textual_inversion(folder: str | Path, inversion: TextualInversion) -> Path:
    """Write ``{token: embedding [1, d]}`` to ``folder/learned_embeds.safetensors``, the file (and the layout)
    diffusers' textual-inversion training script writes and ``pipe.load_textual_inversion(folder)`` reads."""
    from diffusers.loaders.textual_inversion import TEXT_INVERSION_NAME_SAFE
    from safetensors.torch import save_file

    if inversion.embedding is None:
        raise ValueError("this TextualInversion has no embedding; train one with train_textual_inversion.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TEXT_INVERSION_NAME_SAFE
    save_file({inversion.token: inversion.embedding.detach().float().cpu()[None].contiguous()}, path)
    return path


# --------------------------------------------------------------------------------------
# LoRA: low-rank updates of the U-Net's attention projections, through peft.
# --------------------------------------------------------------------------------------


def add_lora(unet, *, rank: int = 4, alpha: float | None = None, target_modules: Sequence[str] = LORA_TARGETS,
             seed: int = 0) -> None:
    """Add a LoRA adapter to ``unet``'s attention (peft via ``unet.add_adapter``): ``W x + (alpha / r) B A x``.

    ``init_lora_weights="gaussian"``: A ~ N(0, 1/r), B = 0, so the adapted U-Net starts equal to the
    base one. A is drawn under ``torch.manual_seed(seed)`` inside a forked RNG, so the global RNG is
    untouched and the draw is reproducible. Afterwards only the LoRA parameters require gradients.
    """
    from peft import LoraConfig

    check_int("rank", rank, expected="an int >= 1 (the rank r of B A)")
    alpha = rank if alpha is None else alpha
    if not is_number(alpha, finite=True) or alpha <= 0:
        raise ValueError(f"alpha must be a number > 0 (the update is scaled by alpha / rank), got {alpha!r}.")
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules))
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config)


def lora_parameters(unet) -> list[torch.nn.Parameter]:
    """The parameters that train: those ``add_lora`` added (names with ``lora_``)."""
    return [p for name, p in unet.named_parameters() if "lora_" in name]


def train_lora(pipe, data: ConceptData, *, word: str = PLAIN_WORD, rank: int = 4, alpha: float | None = None,
               steps: int = 300, lr: float = 1e-3, batch_size: int = 32, seed: int = 0, warmup: int = 20,
               prior_fraction: float = 0.25, progress: bool = False) -> TrainingResult:
    """Add a LoRA adapter to ``pipe.unet`` (:func:`add_lora`) and train it on captions with ``word``.

    The text encoder and the U-Net's own weights stay frozen; only A and B train, with
    :func:`sdlearn.train.diffusion_loss` in :func:`sdlearn.train.fit` (seeded with ``seed``).
    ``prior_fraction`` of each batch is ordinary scenes with ordinary captions (if ``data`` has them),
    which keeps the base prompts working (prior preservation, as in DreamBooth).
    """
    _check_training(steps, lr, batch_size, prior_fraction)
    tokenizer, text_encoder, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
    noise_scheduler = _noise_scheduler(pipe.scheduler)
    add_lora(unet, rank=rank, alpha=alpha, seed=seed)

    def loss_fn(model, generator, device):
        latents, captions = draw_batch(data, generator, word=word, batch_size=batch_size,
                                       prior_fraction=prior_fraction)
        encoder_hidden_states = text.encode(tokenizer, text_encoder, captions, device=device, warn=False)
        return train.diffusion_loss(model, noise_scheduler, latents.to(device), encoder_hidden_states,
                                    generator=generator)

    with _frozen(text_encoder):
        _, result = train.fit(unet, loss_fn, steps=steps, lr=lr, seed=seed, warmup=min(warmup, steps),
                              desc="LoRA", progress=progress)
    return TrainingResult(result.losses, result.seconds, steps)


def save_lora(folder: str | Path, unet) -> Path:
    """Write ``unet``'s LoRA weights with ``StableDiffusionPipeline.save_lora_weights`` (safetensors), with the
    adapter's config as metadata (so alpha survives); ``pipe.load_lora_weights(folder)`` reads them back."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    if not getattr(unet, "peft_config", None):
        raise ValueError("this U-Net has no LoRA adapter; add and train one with train_lora first.")
    folder = Path(folder)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet),
                                              unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
                                              safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


# --------------------------------------------------------------------------------------
# Measuring: does the pipeline draw the new colour, and does it still draw the old ones?
# --------------------------------------------------------------------------------------


def concept_prompts(count: int, *, word: str, seed: int = CONCEPT_EVAL_SEED,
                    colour: str = CONCEPT_COLOUR) -> list[tuple[str, list[dict[str, str]]]]:
    """Held-out prompts naming every attribute, the colour with ``word``: ("a big <orange> circle on the left",
    named). The scenes come from a stream of their own, ``default_rng([seed, 10])``, not the training one."""
    check_int("count", count, expected="an int >= 1 (prompts to draw)")
    rng = np.random.default_rng([seed, 10])
    return [world.concept_caption(world.sample_concept_scene(rng, colour=colour), rng, word=word, full=True)
            for _ in range(count)]


@torch.no_grad()
def concept_following(pipe, *, word: str, count: int = 48, seed: int = CONCEPT_EVAL_SEED, steps: int = 20,
                      guidance_scale: float | None = None, batch_size: int = 48) -> dict:
    """Generate one image per :func:`concept_prompts` prompt and judge it with the six-colour palette.

    Image i uses ``torch.Generator().manual_seed(seed + i)``; ``guidance_scale`` defaults to the model's
    recommended one. A prompt counts as right when every attribute it names (colour included) is right.
    Returns ``{"n", "all_named_right", "colour", "shape", "size", "position"}`` (shares in [0, 1]).
    """
    from .models import recommended_guidance_scale

    guidance_scale = recommended_guidance_scale() if guidance_scale is None else guidance_scale
    colours = world.palette(with_new=True)
    prompts = concept_prompts(count, word=word, seed=seed)
    per_attr: dict[str, list[bool]] = {a: [] for a in world.ATTRIBUTES}
    all_right = []
    for start in range(0, count, batch_size):
        chunk = prompts[start:start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images = pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance_scale,
                      generator=generators, output_type="np").images
        for image, (_, named) in zip(images, chunk):
            verdict = world.judge(np.round(image * 255).astype(np.uint8), named, colours=colours)[0]
            for a, ok in verdict.items():
                per_attr[a].append(ok)
            all_right.append(all(verdict.values()))
    return {"n": count, "all_named_right": float(np.mean(all_right)),
            **{a: float(np.mean(v)) for a, v in per_attr.items()}}


def base_following(pipe, *, count: int = 48, steps: int = 20, guidance_scale: float | None = None) -> float:
    """The share of ``count`` ordinary held-out prompts (a third each full, partial and two-object:
    :func:`sdlearn.evaluate.prompt_following`) drawn with every named attribute right."""
    from .models import recommended_guidance_scale

    if count % 3:
        raise ValueError(f"count must be a multiple of 3 (a third of each prompt kind), got {count}.")
    guidance_scale = recommended_guidance_scale() if guidance_scale is None else guidance_scale
    result = evaluate.prompt_following(pipe, count=count // 3, steps=steps, guidance_scale=guidance_scale,
                                       batch_size=count // 3)
    return evaluate.all_prompts_rate(result)


def load_bundled_pipeline():
    """A fresh bundled ``StableDiffusionPipeline`` (float32, progress bar off), as plain diffusers loads it."""
    from diffusers import StableDiffusionPipeline

    from .models import BUNDLED_MODEL_DIR

    pipe = StableDiffusionPipeline.from_pretrained(BUNDLED_MODEL_DIR, dtype=torch.float32, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def concept_figures(*, ti_steps: int = 300, lora_steps: int = 300, count: int = 48, base_count: int = 48,
                    data_count: int = 256, prior_count: int = 256, ti_lr: float = 1e-2, lora_lr: float = 1e-3,
                    batch_size: int = 32, rank: int = 4, init_words: Sequence[str] = ("red",),
                    prior_fraction: float = 0.25, seed: int = 0,
                    log: Callable[[str], None] | None = None) -> dict:
    """Every figure of notebook 10, on fresh bundled pipelines: before training, after textual inversion,
    after LoRA, and the ordinary prompts with and without the adapter. Returns a dict of shares and seconds.

    ``count`` concept prompts and ``base_count`` ordinary ones (:func:`concept_following`,
    :func:`base_following`), guidance = the recommended scale, 20 steps.
    """
    log = log or (lambda message: None)
    figures: dict = {"ti_steps": ti_steps, "lora_steps": lora_steps, "count": count, "base_count": base_count}
    pipe = load_bundled_pipeline()
    data = concept_data(pipe.vae, count=data_count, prior_count=prior_count, seed=seed)
    figures["vae_round_trip"] = round_trip_colours(pipe.vae)
    figures["before_plain_word"] = concept_following(pipe, word=PLAIN_WORD, count=count)["all_named_right"]
    figures["before_placeholder"] = concept_following(pipe, word=PLACEHOLDER, count=count)["all_named_right"]
    log(f"before: {figures['before_plain_word']:.3f} ('orange'), {figures['before_placeholder']:.3f} ('<orange>')")

    figures["base_without_adapter"] = base_following(pipe, count=base_count)
    inversion = train_textual_inversion(pipe, data, init_words=init_words, steps=ti_steps, lr=ti_lr,
                                        batch_size=batch_size, seed=seed)
    figures["ti"] = concept_following(pipe, word=PLACEHOLDER, count=count)
    figures["ti_seconds"] = inversion.seconds
    figures["ti_final_loss"] = float(np.mean(inversion.losses[-20:]))
    log(f"textual inversion: {figures['ti']['all_named_right']:.3f} in {inversion.seconds:.0f} s")

    pipe = load_bundled_pipeline()
    lora = train_lora(pipe, data, steps=lora_steps, lr=lora_lr, batch_size=batch_size, rank=rank, seed=seed,
                      prior_fraction=prior_fraction)
    figures["lora"] = concept_following(pipe, word=PLAIN_WORD, count=count)
    figures["lora_seconds"] = lora.seconds
    figures["lora_final_loss"] = float(np.mean(lora.losses[-20:]))
    figures["base_with_adapter"] = base_following(pipe, count=base_count)
    log(f"LoRA: {figures['lora']['all_named_right']:.3f} in {lora.seconds:.0f} s; base prompts "
        f"{figures['base_without_adapter']:.3f} -> {figures['base_with_adapter']:.3f}")
    return figures


@torch.no_grad()
def round_trip_colours(vae, *, count: int = 32, seed: int = CONCEPT_SEED, colour: str = CONCEPT_COLOUR) -> dict[str, float]:
    """What the VAE makes of the new colour: encode ``count`` concept scenes (posterior mode), decode them, and
    return the share of images whose object the six-colour judge reads as each colour.

    The bundled VAE was trained on five colours only, and it snaps orange to yellow (or red): if this says
    orange is (almost) never kept, no U-Net or text-encoder training on its latents can draw orange, because
    the training latents themselves decode to another colour.
    """
    check_int("count", count, expected="an int >= 1 (scenes to round-trip)")
    samples = [world.concept_sample(seed, i, word=PLACEHOLDER, colour=colour) for i in range(count)]
    x = to_model_range(torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2))   # [N, 3, H, W]
    x = x.to(vae.device, vae.dtype)
    decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample.float().clamp(-1, 1)              # [N, 3, H, W]
    images = to_numpy(decoded.cpu())                                                                   # [N, H, W, 3] uint8
    six = world.palette(with_new=True)
    read = [(world.analyse(image, colours=six) or [None])[0] for image in images]
    names = [d.colour if d is not None else "none" for d in read]
    return {name: names.count(name) / count for name in [*six, "none"] if names.count(name)}
