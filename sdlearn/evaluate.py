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

Held-out data comes from seeds the recipe never trains on (1000 and up); the guidance
scale is chosen on other prompts and seeds (11000 and up) than the ones it is then measured on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from . import train, world
from ._checks import check_int
from .images import psnr
from . import models
from .models import SD_GUIDANCE_SCALE
from .text import clip_image_features, clip_text_features

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
    x = train.to_model_range(data.images)
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
    image_emb = clip_image_features(clip, train.to_model_range(data.images).to(dtype))
    cache: dict[str, torch.Tensor] = {}

    def text_emb(prompts: list[str]) -> torch.Tensor:
        missing = [p for p in prompts if p not in cache]
        if missing:
            out = clip_text_features(clip, train.tokenize(tokenizer, missing))
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
