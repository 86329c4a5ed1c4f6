"""Measure the bundled model (or any model built by the recipe) against the toy world.

    python -m sdlearn.evaluate                       # the bundled model
    python -m sdlearn.evaluate --model DIR --n 240   # another folder, more generations

Prints, and returns as a dict:
- VAE reconstruction PSNR on held-out images;
- CLIP zero-shot accuracy on held-out single-object images, per attribute;
- the guidance scale: prompt following at several classifier-free guidance scales on
  *validation* prompts and seeds, and the scale that does best (:func:`guidance_sweep`);
- prompt following of generated images, judged by :func:`sdlearn.world.judge` (pixel
  analysis against the world's definitions; no model involved), for full captions,
  partial captions and two-object captions, on *held-out* prompts and seeds, at the chosen
  scale and at Stable Diffusion's default 7.5;
- the same at guidance 7.5 under each sampler SD 1.x is commonly run with, at the step counts
  its users and tutorials use (:data:`SD_SAMPLERS`, :func:`sampler_table`);
- seconds for one image (20 steps, classifier-free guidance) on this machine.

And how well the words of a prompt localise in the cross-attention maps, on the toy world
(:func:`measure_localisation`, notebook 07): how often a word's map peaks inside the object it names.

Held-out data comes from seeds the recipe never trains on (1000 and up); the guidance
scale is chosen on other prompts and seeds (11000 and up) than the ones it is then measured on.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import models, train, world
from ._checks import check_int, is_number, positive_int
from .attention import capture_attention, heat_map, resize, word_positions
from .images import as_picture, psnr, to_model_range
from .models import SD_GUIDANCE_SCALE
from .text import clip_image_features, clip_text_features, tokenize

HELD_OUT_SEED = 1000
VALIDATION_SEED = HELD_OUT_SEED + 10_000   # prompts and seeds for choosing the guidance scale
SWEEP_SCALES = (2.0, 3.0, 4.0, 5.0, 6.0, SD_GUIDANCE_SCALE)
PROMPT_KINDS = ("full", "partial", "two")
#: The samplers SD 1.x users and tutorials run, each at its usual number of steps: (name, diffusers
#: class, steps). Each is made ``from_config`` of the model's own scheduler config, as tutorials make it.
#: PNDM gets SD 1.5's ``skip_prk_steps=True``, which the folder's DDIM config does not carry.
SD_SAMPLERS = (
    ("PNDM", "PNDMScheduler", 50),                   # SD 1.5's own scheduler and step count
    ("LMS", "LMSDiscreteScheduler", 30),             # the fast.ai Deep Dive's
    ("Euler", "EulerDiscreteScheduler", 30),
    ("Euler ancestral", "EulerAncestralDiscreteScheduler", 30),
    ("DPM-Solver++", "DPMSolverMultistepScheduler", 25),
    ("DDIM", "DDIMScheduler", 50),
)
SAMPLER_SETTINGS = {"PNDMScheduler": {"skip_prk_steps": True}}


@torch.no_grad()
def vae_psnr(vae, *, count: int = 256, seed: int = HELD_OUT_SEED) -> float:
    """Mean reconstruction PSNR (dB) of held-out images through ``vae`` (posterior mode)."""
    data = train.render_pool(seed, count)
    x = to_model_range(data.images)
    dtype = next(vae.parameters()).dtype
    recon = torch.cat([vae.decode(vae.encode(x[i:i + 64].to(dtype)).latent_dist.mode()).sample.float()
                       for i in range(0, count, 64)])
    return float(psnr(recon.clamp(-1, 1), x, per_image=True).mean())


def zero_shot_prompts(obj: world.Obj, attribute: str) -> tuple[list[str], list[str]]:
    """Candidate prompts for classifying one attribute of ``obj``, and the class each names.

    Only the attribute under test varies; the shape is named (every caption of the world
    names it), so colour is asked as "a red circle" / "a blue circle" / ...
    """
    if attribute == "shape":
        classes = list(world.SHAPES)
        return [f"a {s}" for s in classes], classes
    if attribute == "colour":
        classes = list(world.COLOURS)
        return [f"a {c} {obj.shape}" for c in classes], classes
    if attribute == "size":
        classes = list(world.SIZES)
        return [f"a {z} {obj.shape}" for z in classes], classes
    classes = list(world.POSITIONS)
    return [f"a {obj.shape} {world.POSITIONS[p][0]}" for p in classes], classes


@torch.no_grad()
def clip_zero_shot(clip, tokenizer, *, count: int = 400, seed: int = HELD_OUT_SEED + 1) -> dict[str, float]:
    """Zero-shot accuracy per attribute on held-out single-object images."""
    data = train.render_pool(seed, count, two_object_prob=0.0)
    dtype = next(clip.parameters()).dtype
    image_emb = clip_image_features(clip, to_model_range(data.images).to(dtype))
    cache: dict[str, torch.Tensor] = {}

    def text_emb(prompts: list[str]) -> torch.Tensor:
        missing = [p for p in prompts if p not in cache]
        if missing:
            out = clip_text_features(clip, tokenize(tokenizer, missing, warn=False))
            for p, e in zip(missing, out):
                cache[p] = e
        return torch.stack([cache[p] for p in prompts])

    accuracy = {}
    for attribute in world.ATTRIBUTES:
        right = 0
        for i, scene in enumerate(data.scenes):
            obj = scene.objects[0]
            prompts, classes = zero_shot_prompts(obj, attribute)
            guess = classes[int((text_emb(prompts) @ image_emb[i]).argmax())]
            right += guess == getattr(obj, attribute)
        accuracy[attribute] = right / count
    return accuracy


def held_out_noise(unet, count: int, *, seed: int) -> torch.Tensor:
    """``x_T`` for ``count`` held-out pictures at ``unet``'s latent size, picture ``i`` drawn from
    ``torch.Generator().manual_seed(seed + i)`` as the pipeline draws it (:func:`sdlearn.device.draw_noise`):
    ``[count, C, h, w]`` float32 on the CPU. Each picture keeps its noise whatever batch it is drawn in."""
    from .device import draw_noise

    check_int("count", count, expected="an int >= 1 (pictures)")
    side = int(unet.config.sample_size)
    shape = (1, int(unet.config.in_channels), side, side)
    return torch.cat([draw_noise(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(count)])


def eval_prompts(kind: str, count: int, *, seed: int) -> list[tuple[str, list[dict[str, str]]]]:
    """Held-out prompts with what they name: ``kind`` is "full", "partial" or "two"."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt set {kind!r}; the evaluation has {', '.join(map(repr, PROMPT_KINDS))} "
                         "(every attribute named, some left out, two objects).")
    check_int("count", count, expected="an int >= 1 (prompts to draw)")
    rng = np.random.default_rng([seed, {"full": 0, "partial": 1, "two": 2}[kind]])
    prompts = []
    while len(prompts) < count:
        scene = world.sample_scene(rng, two_object_prob=1.0 if kind == "two" else 0.0)
        if kind == "full":
            prompts.append(world.caption(scene, rng, full=True))
        elif kind == "partial":
            text, named = world.caption(scene, rng, full_prob=0.0)
            if len(named[0]) < len(world.ATTRIBUTES):
                prompts.append((text, named))
        else:
            prompts.append(world.caption(scene, rng))
    return prompts


@torch.no_grad()
def prompt_following(pipe, *, count: int = 240, steps: int = 20, guidance_scale: float = SD_GUIDANCE_SCALE,
                     seed: int = HELD_OUT_SEED + 2, batch_size: int = 60, progress: bool = False) -> dict:
    """Generate ``count`` images per prompt kind and judge them with :func:`sdlearn.world.judge`.

    Image i of a kind uses ``torch.Generator().manual_seed(seed + i)``.
    """
    from tqdm.auto import tqdm

    results: dict[str, dict] = {}
    for kind in PROMPT_KINDS:
        prompts = eval_prompts(kind, count, seed=seed)
        per_attr: dict[str, list[bool]] = {a: [] for a in world.ATTRIBUTES}
        all_right: list[bool] = []
        for start in tqdm(range(0, count, batch_size), desc=f"generate {kind}", disable=not progress):
            chunk = prompts[start:start + batch_size]
            gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
            images = pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance_scale,
                          generator=gens, output_type="np").images
            for image, (_, named) in zip(images, chunk):
                verdict = world.judge(np.round(image * 255).astype(np.uint8), named)
                for obj in verdict:
                    for a, ok in obj.items():
                        per_attr[a].append(ok)
                all_right.append(all(all(obj.values()) for obj in verdict))
        results[kind] = {
            "n": count,
            "all_named_right": float(np.mean(all_right)),
            **{a: float(np.mean(v)) for a, v in per_attr.items() if v},
        }
    return results


def all_prompts_rate(following: dict) -> float:
    """The card's headline figure: the share of all generations (full, partial, two) with every named
    attribute right. The kinds have equal counts, so it is the mean of their rates."""
    return float(np.mean([r["all_named_right"] for r in following.values()]))


def sampler_table(pipe, *, guidance_scale: float = SD_GUIDANCE_SCALE, count: int = 240,
                  seed: int = HELD_OUT_SEED + 2, samplers=SD_SAMPLERS, progress: bool = False) -> dict[str, dict]:
    """Prompt following (:func:`prompt_following`) under each sampler of :data:`SD_SAMPLERS`.

    Each scheduler is built with ``from_config(pipe.scheduler.config)`` (and :data:`SAMPLER_SETTINGS`); the pipeline's own
    scheduler is put back afterwards. Returns ``{name: {"steps", "full", "partial", "two", "all"}}``.
    """
    import diffusers

    own = pipe.scheduler
    table = {}
    try:
        for name, class_name, steps in samplers:
            pipe.scheduler = getattr(diffusers, class_name).from_config(own.config, **SAMPLER_SETTINGS.get(class_name, {}))
            result = prompt_following(pipe, count=count, steps=steps, guidance_scale=guidance_scale, seed=seed,
                                      progress=progress)
            table[name] = {"steps": steps, **{kind: r["all_named_right"] for kind, r in result.items()},
                           "all": all_prompts_rate(result)}
    finally:
        pipe.scheduler = own
    return table


def format_sampler_table(table: dict[str, dict]) -> str:
    """:func:`sampler_table` as a Markdown table: sampler, steps, the three kinds and all prompts, in %."""
    lines = ["| sampler | steps | full | partial | two objects | all prompts |", "| --- | --- | --- | --- | --- | --- |"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['steps']} | " + " | ".join(f"{100 * row[k]:.1f}%" for k in
                                                                ("full", "partial", "two", "all")) + " |")
    return "\n".join(lines)


def guidance_sweep(pipe, *, scales=SWEEP_SCALES, count: int = 180, steps: int = 20,
                   seed: int = VALIDATION_SEED, progress: bool = False) -> dict[float, dict[str, float]]:
    """Prompt following at each guidance scale, on validation prompts and seeds.

    Returns ``{scale: {"full": rate, "partial": rate, "two": rate, "mean": mean of the three}}``,
    each rate the share of generations with every named attribute right.
    """
    sweep = {}
    for scale in scales:
        result = prompt_following(pipe, count=count, steps=steps, guidance_scale=scale, seed=seed, progress=progress)
        rates = {kind: r["all_named_right"] for kind, r in result.items()}
        sweep[float(scale)] = {**rates, "mean": float(np.mean(list(rates.values())))}
    return sweep


def best_guidance(sweep: dict[float, dict[str, float]]) -> float:
    """The scale of :func:`guidance_sweep` with the best mean rate (the smaller scale on a tie)."""
    return max(sorted(sweep), key=lambda scale: (sweep[scale]["mean"], -scale))


def seconds_per_image(pipe, *, steps: int = 20, guidance_scale: float = SD_GUIDANCE_SCALE, repeats: int = 20) -> dict[str, float]:
    """Wall-clock seconds for one image (batch 1) on the pipeline's device, after one warm-up run.

    Returns the median and the quartiles of ``repeats`` runs: on a shared machine single runs
    vary by tens of percent, and the spread says how much.
    """
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        pipe("a red circle", num_inference_steps=steps, guidance_scale=guidance_scale,
             generator=torch.Generator().manual_seed(i), output_type="np")
        times.append(time.perf_counter() - t0)
    q1, median, q3 = np.percentile(times[1:], [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "repeats": repeats}


def _rounded(following: dict) -> dict:
    return {k: {a: round(v, 4) if isinstance(v, float) else v for a, v in r.items()} for k, r in following.items()}


def evaluate(model_dir: str | Path, *, count: int = 240, steps: int = 20, guidance_scale: float | None = None,
             sampler_count: int = 60, progress: bool = False) -> dict:
    """Every measurement above, for the diffusers folder ``model_dir`` (fp32, CPU).

    ``guidance_scale=None`` chooses it with :func:`guidance_sweep` on validation seeds; a
    number skips the sweep. ``sampler_count``: generations per prompt kind for each row of the
    sampler table (six samplers at 25 to 50 steps cost about as much as the rest together at 60).
    """
    from transformers import CLIPModel

    model_dir = Path(model_dir)
    missing = [name for name in ("model_index.json", "clip") if not (model_dir / name).exists()]
    if missing:
        raise ValueError(
            f"{model_dir} is not a model folder the evaluation can measure: it has no {' and no '.join(missing)}. "
            "Pass a folder written by `python -m sdlearn.recipe` (a diffusers folder plus the CLIP model in clip/), "
            "e.g. the bundled sdlearn/bundled/sdlearn-tiny.")
    pipe = models.load(str(model_dir), device="cpu", dtype=torch.float32).make_pipeline()
    report: dict = {"model": str(model_dir), "steps": steps}
    report["vae_psnr_db"] = round(vae_psnr(pipe.vae), 2)
    clip = CLIPModel.from_pretrained(model_dir / "clip", dtype=torch.float32).eval()
    report["clip_zero_shot"] = {k: round(v, 4) for k, v in clip_zero_shot(clip, pipe.tokenizer).items()}
    if guidance_scale is None:
        sweep = guidance_sweep(pipe, steps=steps, progress=progress)
        report["guidance_sweep"] = {str(k): {a: round(v, 4) for a, v in r.items()} for k, r in sweep.items()}
        guidance_scale = best_guidance(sweep)
    report["guidance_scale"] = guidance_scale
    report["prompt_following"] = _rounded(
        prompt_following(pipe, count=count, steps=steps, guidance_scale=guidance_scale, progress=progress))
    if guidance_scale != SD_GUIDANCE_SCALE:
        report["prompt_following_at_sd_default"] = _rounded(
            prompt_following(pipe, count=count, steps=steps, guidance_scale=SD_GUIDANCE_SCALE, progress=progress))
    report["scheduler"] = type(pipe.scheduler).__name__
    report["samplers_at_sd_default"] = {
        name: {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        for name, row in sampler_table(pipe, count=sampler_count, progress=progress).items()}
    report["sampler_count"] = sampler_count
    speed = seconds_per_image(pipe, steps=steps, guidance_scale=guidance_scale)
    report["seconds_per_image"] = round(speed["median"], 3)
    report["seconds_per_image_quartiles"] = [round(speed["q1"], 3), round(speed["q3"], 3)]
    report["speed_repeats"] = speed["repeats"]
    report["torch_threads"] = torch.get_num_threads()
    return report


# ---- how well words localise: cross-attention on the toy world (notebook 07) -----------------------------------------------------------------------------

WORD_KINDS = ("colour", "shape", "size")


def match_objects(image: np.ndarray, named: Sequence[dict[str, str]]) -> list[world.Detection | None]:
    """For each object a prompt names, the detection of :func:`sdlearn.world.analyse` that :func:`sdlearn.world.judge`
    compares it with (:func:`sdlearn.world.match`: one object, the largest; two, the one at its named position among
    the largest ``len(named) + 1``, else the next largest unused). None where nothing is left."""
    return world.match(world.analyse(image), list(named))


@dataclass(frozen=True)
class WordScore:
    """Where one word's heat map peaks, for one object of one generated image.

    ``kind``: ``"colour"``, ``"shape"`` or ``"size"``; ``peak``: ``(row, col)`` of the map's maximum in the image;
    ``inside``: the peak lies in this object's mask; ``in_other``: in another object's mask; ``mask_share``: the
    object's mask as a share of the image (the chance that a random peak is inside); ``own_heat`` and
    ``other_heat``: the map's mean over this object's mask and over the other object's (None with one object).
    """

    prompt: int
    obj: int
    word: str
    kind: str
    peak: tuple[int, int]
    inside: bool
    in_other: bool
    mask_share: float
    own_heat: float
    other_heat: float | None


def object_word_positions(tokenizer, prompt: str, named: Sequence[dict[str, str]], kind: str) -> list[list[int] | None]:
    """For each object, the token positions of the word naming its ``kind`` (``"colour"``, ``"shape"``, ``"size"``)
    in its own phrase of ``prompt`` ("a red circle on the left and a blue square on the right": phrases split at
    " and "); None where the prompt does not name it."""
    if kind not in WORD_KINDS:
        raise ValueError(f"kind must be one of {list(WORD_KINDS)}, got {kind!r}.")
    phrases = prompt.split(" and ")
    if len(phrases) != len(named):
        raise ValueError(f"the prompt has {len(phrases)} phrase(s) joined by ' and ' but named describes {len(named)} "
                         "object(s); pass the caption and the named list that sdlearn.world.caption returned together.")
    words = word_positions(tokenizer, prompt)
    out, start = [], 0
    for phrase, want in zip(phrases, named):
        phrase_words = phrase.split()
        value = want.get(kind)
        index = phrase_words.index(value) if value in phrase_words else None
        out.append(words[start + index][1] if index is not None else None)
        start += len(phrase_words) + 1                       # the phrase, then "and"
    return out


def score_words(image: np.ndarray, prompt: str, named: Sequence[dict[str, str]], maps: torch.Tensor, tokenizer, *,
                kinds: Sequence[str] = ("colour", "shape"), prompt_index: int = 0,
                matched: Sequence[world.Detection | None] | None = None,
                verdict: Sequence[dict[str, bool]] | None = None) -> list[WordScore]:
    """Score the words of one generated image: ``image`` ``[H, W, 3]`` uint8, its ``prompt`` and ``named`` (as
    ``sdlearn.world.caption`` returns them), its ``maps`` ``[L, h, w]`` (any size; resized to the image, bilinear).

    Only objects that :func:`sdlearn.world.judge` finds entirely right (every named attribute) are scored: for the
    others the object the prompt asked for is not there to be found. ``matched`` and ``verdict`` (from
    :func:`match_objects` and ``world.judge``) can be passed to avoid analysing the image again.
    Returns one :class:`WordScore` per scored object and kind.
    """
    image = as_picture(image, uint8=True)
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        raise ValueError("maps must be a tensor [L, h, w], the maps of this one image (Localisation.maps['all'][i] "
                         "or store.maps()[i]).")
    heat_all = resize(maps[None].float().cpu(), image.shape[:2])[0]                   # [L, H, W]
    verdict = list(verdict) if verdict is not None else world.judge(image, list(named))
    matched = list(matched) if matched is not None else match_objects(image, named)
    scores = []
    for kind in kinds:
        for obj, positions in enumerate(object_word_positions(tokenizer, prompt, named, kind)):
            det = matched[obj]
            if positions is None or det is None or not all(verdict[obj].values()):
                continue
            heat = heat_map(heat_all, positions)                                      # [H, W]
            row, col = divmod(int(torch.argmax(heat)), heat.shape[1])
            others = [d for i, d in enumerate(matched) if i != obj and d is not None]
            heat_np = heat.numpy()
            other_heat = float(np.mean([heat_np[d.mask].mean() for d in others])) if others else None
            scores.append(WordScore(prompt_index, obj, named[obj][kind], kind, (row, col), bool(det.mask[row, col]),
                                    any(bool(d.mask[row, col]) for d in others), float(det.mask.mean()),
                                    float(heat_np[det.mask].mean()), other_heat))
    return scores


def summarise_scores(scores: Sequence[WordScore]) -> dict[str, dict[str, float]]:
    """Per word kind: ``n`` scored words; ``inside``, the share whose map peaks in its own object; ``other``, the
    share that peaks in the other object; ``chance``, the mean mask share (what a peak at a random pixel would
    score); ``hotter``, the share whose map is hotter on average over its own object than over the other (chance
    0.5; among words whose prompt has a second object found)."""
    summary = {}
    for kind in dict.fromkeys(s.kind for s in scores):
        chosen = [s for s in scores if s.kind == kind]
        pairs = [s for s in chosen if s.other_heat is not None]
        hotter = float(np.mean([s.own_heat > s.other_heat for s in pairs])) if pairs else float("nan")
        summary[kind] = {"n": len(chosen), "inside": float(np.mean([s.inside for s in chosen])),
                         "other": float(np.mean([s.in_other for s in chosen])),
                         "chance": float(np.mean([s.mask_share for s in chosen])), "hotter": hotter}
    return summary


@dataclass
class Localisation:
    """What :func:`measure_localisation` found.

    ``images`` ``[P, H, W, 3]`` uint8; ``maps``: name -> ``[P, L, h, w]`` float32 maps at the latent size on the CPU,
    for ``"all"`` (mean over every layer, head and step, as DAAM) and the breakdowns: one per resolution
    (``"8x8"``, ...) and per half of the steps (``"early steps"``, ``"late steps"``); ``scores``: name -> the
    :class:`WordScore` list of those maps; ``objects``: objects the prompts name; ``scored_objects``: those the judge
    found entirely right, which are the ones scored.
    """

    prompts: list[tuple[str, list[dict[str, str]]]]
    images: np.ndarray
    maps: dict[str, torch.Tensor]
    scores: dict[str, list[WordScore]]
    objects: int
    scored_objects: int

    def summary(self, name: str = "all") -> dict[str, dict[str, float]]:
        """:func:`summarise_scores` of the maps called ``name`` (a key of :attr:`maps`)."""
        if name not in self.scores:
            raise ValueError(f"no maps called {name!r}; there are {list(self.scores)}.")
        return summarise_scores(self.scores[name])


@torch.no_grad()
def measure_localisation(pipe, prompts: Sequence[tuple[str, list[dict[str, str]]]], *, steps: int = 20,
                         guidance_scale: float = SD_GUIDANCE_SCALE, generator: torch.Generator | None = None, batch_size: int = 32,
                         kinds: Sequence[str] = ("colour", "shape")) -> Localisation:
    """Generate one image per prompt with ``pipe`` (classifier-free guidance, so ``guidance_scale > 1``), capture
    its cross-attention maps, and score the words with :func:`score_words`: for the DAAM aggregate (mean over all
    layers, heads and steps), for each resolution alone and for the early and the late half of the steps.

    ``prompts``: ``(caption, named)`` pairs, e.g. ``sdlearn.evaluate.eval_prompts("two", 48, seed=...)``. The starting
    noise of every image is drawn up front from ``generator`` (on the CPU), so the result does not depend on
    ``batch_size``, the prompts per pipeline call.
    """
    if not prompts:
        raise ValueError("prompts is empty: pass (caption, named) pairs, e.g. "
                         "sdlearn.evaluate.eval_prompts('two', 48, seed=0).")
    if not is_number(guidance_scale) or not guidance_scale > 1:
        raise ValueError(f"guidance_scale must be a number > 1 (classifier-free guidance), got {guidance_scale!r}: "
                         "capture keeps the conditional half of the pipeline's doubled batch.")
    positive_int("batch_size", batch_size)
    check_int("steps", steps, low=2, expected="an int >= 2 (early and late halves are compared)")
    unet = pipe.unet
    side = int(unet.config.sample_size)
    latents = torch.randn((len(prompts), int(unet.config.in_channels), side, side), generator=generator)  # [P, C, h, w]
    images, maps = [], {}
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        with capture_attention(unet, keep="conditional", self_max_side=0) as store:
            out = pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance_scale,
                       latents=latents[start:start + len(chunk)].to(unet.device, unet.dtype), output_type="np").images
        images.append(np.round(out * 255).astype(np.uint8))                            # [b, H, W, 3]
        half = store.steps // 2
        views = {"all": store.maps(),
                 **{f"{h}x{w}": store.maps(resolutions=[(h, w)]) for h, w in store.resolutions},
                 "early steps": store.maps(steps=slice(0, half)), "late steps": store.maps(steps=slice(half, None))}
        for name, view in views.items():
            maps.setdefault(name, []).append(view.cpu())                                # [b, L, h, w]
    images_all = np.concatenate(images)
    maps_all = {name: torch.cat(parts) for name, parts in maps.items()}
    scores: dict[str, list[WordScore]] = {name: [] for name in maps_all}
    objects, scored = 0, set()
    for i, ((prompt, named), image) in enumerate(zip(prompts, images_all)):
        matched, verdict = match_objects(image, named), world.judge(image, list(named))
        objects += len(named)
        for name, view in maps_all.items():
            found = score_words(image, prompt, named, view[i], pipe.tokenizer, kinds=kinds, prompt_index=i,
                                matched=matched, verdict=verdict)
            scores[name] += found
            scored |= {(i, s.obj) for s in found}
    return Localisation(list(prompts), images_all, maps_all, scores, objects, len(scored))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdlearn.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=models.BUNDLED_MODEL_DIR)
    parser.add_argument("--n", type=int, default=240, help="generations per prompt kind (default 240)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler-n", type=int, default=60,
                        help="generations per prompt kind for each sampler of the sampler table (default 60)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="guidance scale (default: the best of a sweep on validation seeds)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--write-card", action="store_true",
                        help="write evaluation.json and the model card README.md into the model folder")
    args = parser.parse_args(argv)
    if not (args.model / "model_index.json").exists():
        parser.error(f"{args.model} is not a diffusers folder (no model_index.json); build one with "
                     "`python -m sdlearn.recipe` or pass --model")
    report = evaluate(args.model, count=args.n, steps=args.steps, guidance_scale=args.guidance,
                      sampler_count=args.sampler_n, progress=True)
    text = json.dumps(report, indent=2)
    print(text)
    print(f"\nPrompt following at guidance {SD_GUIDANCE_SCALE} (every named attribute right, held-out prompts "
          "and seeds):\n")
    print(format_sampler_table(report["samplers_at_sd_default"]))
    if args.json:
        args.json.write_text(text + "\n")
    if args.write_card:
        from .model_card import write_card

        print(f"model card written to {write_card(args.model, report)}")


if __name__ == "__main__":
    main()
