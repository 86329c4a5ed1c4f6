"""Notebook 07, cross-attention maps: the exercises' right answers and judges."""

from __future__ import annotations

import numpy as np
import torch

from .. import attention
from . import Verdict, _as_cpu_float64, exercise


@exercise("07.1", "Padding's share of the attention", rtol=1e-3, atol=1e-4, hints=(
        "A token's share of the attention is what its map holds on average over the picture (section 2). Which "
        "positions are padding?",
        "Average each padding position's map (from n_real on) over the pixels, then add those averages up."))
def _(maps, n_real):
    return float(_as_cpu_float64(maps)[int(n_real):].mean(dim=(1, 2)).sum())


@exercise("07.2", "A word's map mass on its object", rtol=1e-3, atol=1e-4, hints=(
        "The mass inside is the part of the map's total that falls on the mask's pixels: a fraction, not a peak.",
        "Build the word's map from its token positions with attention.heat_map, add it up over the pixels where the "
        "mask is True, and divide by its sum over the whole picture."))
def _(maps, positions, mask):
    heat = attention.heat_map(_as_cpu_float64(maps), [int(p) for p in positions])        # [H, W]
    inside = torch.as_tensor(np.asarray(mask, dtype=bool))
    return float(heat[inside].sum() / heat.sum())


@exercise("07.3", "Token positions of a repeated word", rtol=0, atol=0, hints=(
        "A word that occurs twice has two sets of positions, and words[...] adds both maps up. Position 0 is the "
        "start token; after it each word takes as many positions as the tokenizer makes of it.",
        "List a label for every position (attention.token_labels) and find where the word occurs; keep the "
        "positions of the occurrence asked for."))
def _(tokenizer, prompt, word, occurrence):
    return attention.word_index(tokenizer, prompt).occurrences(word)[int(occurrence) - 1]


@exercise("07.4", "Move a word's map with the prompt", behaviour=True, hints=(
        "The toy world draws objects where the prompt puts them: which words of section 2's prompt say where the "
        "square goes?",
        "Swap the position words of the two objects (or the objects' descriptions), keeping every word one the "
        "model knows (world.VOCABULARY); the check draws it from section 2's starting noise and weighs the word's "
        "map on each half of the picture."))
def _(answer, pipe, latents, word, steps, guidance_scale):
    if not isinstance(answer, str) or not answer.strip():
        return Verdict(False, f"the answer should be a prompt, a str; you gave {type(answer).__name__} {answer!r:.40}.")
    try:
        positions = attention.word_index(pipe.tokenizer, answer)[word]
    except (KeyError, ValueError) as err:
        return Verdict(False, f"the prompt must name the word {word!r} itself, so that it has a map: {err}")
    with attention.capture_attention(pipe.unet) as store:
        pipe(answer, num_inference_steps=int(steps), guidance_scale=guidance_scale, latents=latents.clone(),
             output_type="latent")
    factor = pipe.vae_scale_factor
    H, W = latents.shape[-2] * factor, latents.shape[-1] * factor
    heat = attention.heat_map(store.maps(size=(H, W))[0], positions).float().cpu()          # [H, W]
    left = float(heat[:, : W // 2].sum() / heat.sum())
    if left <= 0.5:
        return Verdict(False, f"the map of {word!r} holds {left:.0%} of its mass on the left half of the picture, so "
                              "it did not move there. Did the prompt put that object on the left?")
    return Verdict(True)
