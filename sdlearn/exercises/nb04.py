"""Notebook 04, CLIP text embeddings: the exercises' right answers and judges."""

from __future__ import annotations

import torch

from .. import images, text, world
from . import Verdict, _as_cpu_float64, exercise


def _ids(tokenizer, prompts) -> torch.Tensor:
    return text.tokenize(tokenizer, prompts)                     # [n, L], as the pipeline pads them


@exercise("04.1", "Count a prompt's padding positions", hints=(
        "The text encoder always gets L positions. Which of them hold the prompt, and what else does the "
        "tokenizer put in front and at the end?",
        "Count the prompt's ids without padding (tokenizer(prompt).input_ids: BOS, the tokens, EOS) and take "
        "that from L; or find the first EOS in the padded ids and count the positions after it."))
def _(tokenizer, prompt):
    return max(0, tokenizer.model_max_length - len(tokenizer(prompt).input_ids))


@exercise("04.2", "The pooled vector, picked out by hand", rtol=1e-3, atol=1e-4, hints=(
        "The pooled vector of a prompt is one row of its last_hidden_state: which position, and how do you find "
        "it when EOS also fills the padding?",
        "For each row of ex2_ids find the position of its first EOS (argmax over a boolean turned into ints "
        "returns the first maximum), then index ex2_hidden with the row numbers and those positions together."))
def _(text_encoder, input_ids):
    with torch.no_grad():
        return text_encoder(input_ids).pooler_output.float().cpu()


@exercise("04.3", "Positions two prompts share", hints=(
        "Position i of the text encoder only sees tokens 0 ... i (the causal mask). Up to where do the two "
        "prompts have the same tokens?",
        "Compare the two rows of ex3_ids position by position and find the first one where they differ; check "
        "it on ex3_hidden with torch.isclose(..., rtol=1e-3, atol=1e-3), all over the last dimension."))
def _(tokenizer, prompts):
    ids = _ids(tokenizer, prompts)
    return int((ids[0] != ids[1]).int().argmax())


def _shape_word(prompt: str) -> str | None:
    return next((w for w in prompt.lower().split() if w in world.SHAPES), None)


@exercise("04.4", "Change the shape without touching the shape word", behaviour=True, hints=(
        "The causal mask lets every position after a word read it. Which positions of EX4_PROMPT's embedding "
        "come after its shape word, and what could they carry instead?",
        "Start from a copy of EX4_PROMPT's embedding; keep every position up to and including the shape word, "
        "and take every later position (EOS and the padding) from EX4_TARGET's embedding. Look at the picture "
        "with generate(...)."))
def _(answer, pipe, prompt, target, latents, steps, guidance_scale):
    want = _shape_word(target)
    ids = _ids(pipe.tokenizer, [prompt, target]).to(pipe.device)
    differ = (ids[0] != ids[1]).nonzero().flatten().tolist()
    with torch.no_grad():
        embeds = pipe.text_encoder(ids).last_hidden_state                                   # [2, L, d]
        empty = pipe.text_encoder(_ids(pipe.tokenizer, [""]).to(pipe.device)).last_hidden_state
    mine = _as_cpu_float64(answer)
    if mine is None or mine.numel() != embeds[0].numel():
        return Verdict(False, f"the answer should be an embedding of shape {[1, *embeds.shape[1:]]}.")
    mine = mine.reshape(1, *embeds.shape[1:])
    word = differ[0]
    own = embeds[:1, :word + 1].double().cpu()
    if not torch.allclose(mine[:, :word + 1], own, rtol=1e-2, atol=1e-2):
        return Verdict(False, f"your embedding changes a position up to the shape word (position {word}); keep "
                              "those vectors exactly as EX4_PROMPT's own.")
    with torch.no_grad():
        picture = pipe(prompt_embeds=mine.to(pipe.device, pipe.unet.dtype),
                       negative_prompt_embeds=empty.to(pipe.unet.dtype), latents=latents.to(pipe.device, pipe.unet.dtype),
                       num_inference_steps=steps, guidance_scale=guidance_scale, output_type="pt").images
    image = images.to_numpy(picture.float().cpu() * 2 - 1)[0]                              # [H, W, 3] uint8
    if world.judge(image, [{"shape": want}])[0]["shape"]:
        return Verdict(True)
    found = world.analyse(image)
    return Verdict(False, f"the picture shows {'a ' + found[0].shape if found else 'no object'}, not a {want}: "
                          "the positions you kept still tell the U-Net the old shape.")
