"""Notebook 00's exercises: the model's size, a prompt that gets the picture you want, and the generator's state."""

from __future__ import annotations

import numpy as np

from .. import models, world
from ..device import make_generator
from . import Verdict, exercise


@exercise("00.1", "How many times bigger SD 1.5's U-Net is", hints=(
        "A nudge: both parameter counts are in the notebook already, one for each model.",
        "The method: divide SD 1.5's U-Net count (models.SD15_PARAMETER_COUNTS) by the loaded model's "
        "(comp.parameter_counts()), then round."))
def _(comp):
    return round(models.SD15_PARAMETER_COUNTS["unet"] / comp.parameter_counts()["unet"])


def _draw(pipe, prompt: str, *, steps: int, guidance_scale: float, generator) -> np.ndarray:
    """One picture of ``prompt`` as an [H, W, 3] uint8 array."""
    return np.asarray(pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale,
                           generator=generator).images[0].convert("RGB"))


def _words(want: dict[str, str]) -> list[str]:
    """The words a prompt needs to name what ``want`` describes (a position by its phrase's last word)."""
    return [world.POSITIONS[v][0].split()[-1] if a == "position" else v for a, v in want.items()]


@exercise("00.2", "Change the prompt, get the picture you want", behaviour=True, hints=(
        "A nudge: the bundled model knows only a few words, for colours, shapes, sizes and positions; "
        "look at how PROMPT is built.",
        "The method: start from PROMPT and replace the words for what you want to change, then draw your "
        "prompt with the pipeline (same steps, guidance scale and seed) and look at the picture."))
def _(answer, pipe, want, steps, guidance_scale, seed, model, tries=3):
    """Right when the prompt names what ``want`` asks for and, on the bundled model, when most of ``tries``
    pictures of it (seeds ``seed``, ``seed + 1``, ...) show it, read back from the pixels by ``world.judge``."""
    if not isinstance(answer, str) or not answer.strip():
        return Verdict(False, f"the answer should be a prompt, a string such as the one in PROMPT; you gave {answer!r:.60}.")
    words = answer.lower().replace(",", " ").split()
    missing = [w for w in _words(want) if w not in words]
    if missing:
        return Verdict(False, f"your prompt does not say {', '.join(repr(w) for w in missing)}; "
                              "a picture follows what its prompt names.")
    if model != "bundled":       # the pixel judge reads the toy world only; on other models the words decide
        return Verdict(True)
    generator = make_generator(seed)
    shown, seen = 0, []
    for i in range(tries):
        image = _draw(pipe, answer, steps=steps, guidance_scale=guidance_scale, generator=generator.manual_seed(seed + i))
        verdict = world.judge(image, [dict(want)])[0]
        shown += all(verdict.values())
        detected = world.analyse(image)
        seen.append(" ".join(getattr(detected[0], a) for a in want) if detected else "nothing")
    if 2 * shown > tries:
        return Verdict(True)
    return Verdict(False, f"with your prompt, {shown} of {tries} pictures (seeds {seed} to {seed + tries - 1}) show "
                          f"{' '.join(want.values())}; the pictures show: {'; '.join(seen)}.")


@exercise("00.3", "The generator's state moves on", hints=(
        "A nudge: a seed sets where the generator starts; every random draw moves it on from there.",
        "The method: call generator.manual_seed(SEED) once, then call the pipeline EX3_DRAWS times with "
        "generator=generator, keep each picture as np.asarray(image), and count the different ones."))
def _(pipe, prompt, steps, guidance_scale, seed, draws):
    generator = make_generator(seed)
    generator.manual_seed(seed)
    pictures = {_draw(pipe, prompt, steps=steps, guidance_scale=guidance_scale, generator=generator).tobytes()
                for _ in range(draws)}
    return len(pictures)
