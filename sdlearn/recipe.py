"""The recipe that builds the bundled teaching model from nothing.

    python -m sdlearn.recipe                # everything, in build/recipe, exported over the bundled model
    python -m sdlearn.recipe --scale 0.02   # a smoke run: 2% of every stage's steps, into build/recipe/export
    python -m sdlearn.recipe --out DIR      # export somewhere else

Stages: render the toy world, build the tokenizer, train CLIP, train the VAE, measure
the latent scaling factor, pre-encode latents and prompts, train the UNet, export a
standard diffusers folder in fp16 safetensors, evaluate. Every stage checkpoints into
the work folder and a second run resumes where the first stopped (with the same recipe: a
work folder that holds another recipe's run is refused, not mixed in). Same seed, same
model (up to the non-determinism of multithreaded CPU kernels).

The recipe runs through Hugging Face Accelerate: on a GPU it uses the GPU, and
``accelerate launch -m sdlearn.recipe`` spreads it over several.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import text, train, world
from .tokenizer import build_tokenizer, save_tokenizer_files
from .vae import fold_scaling_factor

ROOT = Path(__file__).resolve().parent
DEFAULT_EXPORT = ROOT / "bundled" / "sdlearn-tiny"


@dataclass
class Recipe:
    """Every number that decides the bundled model. Change one, rebuild, compare."""

    seed: int = 0
    resolution: int = 64
    pool_size: int = 24_000          # rendered training images (the world has far more)
    two_object_prob: float = 0.35    # share of two-object scenes
    max_length: int = 77             # tokens per prompt, as in CLIP
    # CLIP (text + vision towers), trained contrastively
    clip_hidden: int = 128
    clip_text_layers: int = 4
    clip_vision_layers: int = 3
    clip_heads: int = 4
    clip_patch: int = 8
    clip_steps: int = 1200
    clip_batch: int = 192
    clip_lr: float = 1e-3
    # VAE
    vae_channels: tuple[int, ...] = (32, 32, 64, 64)
    vae_steps: int = 2400
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # UNet
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_heads: int = 4
    unet_steps: int = 3200
    unet_batch: int = 64
    unet_lr: float = 1e-3
    unet_ema: float = 0.999
    empty_prompt_prob: float = 0.1   # caption dropout for classifier-free guidance

    def scaled(self, scale: float) -> "Recipe":
        """The same recipe with every stage's step count multiplied by ``scale`` (for smoke runs)."""
        r = Recipe(**asdict(self))
        for name in ("clip_steps", "vae_steps", "unet_steps"):
            setattr(r, name, max(2, int(round(getattr(self, name) * scale))))
        r.pool_size = max(256, int(self.pool_size * min(1.0, scale * 5)))
        return r


def noise_scheduler_config() -> dict:
    """SD 1.x's noise schedule: 1000 steps, scaled_linear betas from 0.00085 to 0.012."""
    return {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}


#: The sampler the exported folder ships. SD 1.5 ships PNDM; this model is sampled with DDIM (see
#: DIFFERENCE_REASONS in sdlearn.model_card: at SD's guidance it stays right only under first-order samplers).
SHIPPED_SCHEDULER = "DDIMScheduler"


def sampling_scheduler_config() -> dict:
    """The scheduler config the exported folder ships: SD 1.5's keys and values, with DDIM for PNDM.

    Only SD 1.5's keys, so that ``OtherScheduler.from_config(pipe.scheduler.config)`` gives each
    scheduler its own defaults (its timestep spacing above all), as it does on SD 1.5; PNDM's own
    ``skip_prk_steps`` is left out, since a DDIM config that named it would warn on every load.
    """
    from .models import load_sd15_configs

    config = {k: v for k, v in load_sd15_configs()["scheduler"].items() if k != "skip_prk_steps"}
    return {**config, "_class_name": SHIPPED_SCHEDULER}


def sd_scaling_factor() -> float:
    """SD 1.x's latent scaling factor (0.18215), read from SD 1.5's VAE config."""
    from .models import load_sd15_configs

    return float(load_sd15_configs()["vae"]["scaling_factor"])


def clip_config(r: Recipe, tokenizer):
    from transformers import CLIPConfig

    text = dict(vocab_size=len(tokenizer), hidden_size=r.clip_hidden, intermediate_size=4 * r.clip_hidden,
                num_hidden_layers=r.clip_text_layers, num_attention_heads=r.clip_heads,
                max_position_embeddings=r.max_length, hidden_act="quick_gelu", projection_dim=r.clip_hidden,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(image_size=r.resolution, patch_size=r.clip_patch, hidden_size=r.clip_hidden,
                  intermediate_size=4 * r.clip_hidden, num_hidden_layers=r.clip_vision_layers,
                  num_attention_heads=r.clip_heads, hidden_act="quick_gelu", projection_dim=r.clip_hidden)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=r.clip_hidden)


def vae_config(r: Recipe) -> dict:
    n = len(r.vae_channels)
    return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
                up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=list(r.vae_channels),
                layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=r.resolution,
                act_fn="silu")


def unet_config(r: Recipe) -> dict:
    """The bundled UNet's ``UNet2DConditionModel`` keyword arguments: :func:`sdlearn.train.small_unet_config`
    with the recipe's numbers (latent side ``resolution / 8``, the text encoder's width, the recipe's widths and heads)."""
    return train.small_unet_config(sample_size=r.resolution // 8, cross_attention_dim=r.clip_hidden,
                                   channels=r.unet_channels, heads=r.unet_heads)


def text_encoder_from_clip(clip):
    """The text tower of a trained ``CLIPModel`` as a standalone ``CLIPTextModel`` (what SD loads)."""
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(clip.config.text_config)
    missing, unexpected = text_encoder.load_state_dict(clip.text_model.state_dict(), strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise RuntimeError(f"CLIP text tower does not fit CLIPTextModel: missing={missing}, unexpected={unexpected}")
    return text_encoder.eval().requires_grad_(False)


def _stage_done(folder: Path) -> bool:
    return (folder / "DONE").exists()


def _check_same_recipe(recipe: Recipe, work: Path) -> None:
    """Refuse to resume in ``work`` a run that was started with a different recipe.

    A resumed stage is taken as it is, so a smoke run's 24-step CLIP would silently become part of
    a full build (or a full build's stages of a changed recipe): the mix would match neither.
    """
    recorded = work / "recipe.json"
    if not recorded.exists():
        return
    before = json.loads(recorded.read_text())
    now = json.loads(json.dumps(asdict(recipe)))                         # tuples as lists, like the file
    changed = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v}
    if changed:
        shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in list(changed.items())[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ValueError(f"the work folder {work} holds a run of a different recipe ({shown}{more}); resuming "
                         "would mix the two. Pass another work folder (--work DIR), or delete this one to start over.")


def run(recipe: Recipe, work: Path, out: Path, *, progress: bool = True, evaluate: bool = True) -> dict:
    """Run every stage (resuming finished or checkpointed ones) and export to ``out``.

    ``work`` keeps the checkpoints, the loss log and the timings; a second call with the same
    recipe resumes there, one with another recipe raises ``ValueError``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTokenizer

    from .models import build_pipeline

    work.mkdir(parents=True, exist_ok=True)
    _check_same_recipe(recipe, work)
    (work / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    log = work / "losses.csv"
    timings: dict[str, float] = json.loads((work / "timings.json").read_text()) if (work / "timings.json").exists() else {}

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        if name not in timings:
            timings[name] = round(time.perf_counter() - t0, 1)
            (work / "timings.json").write_text(json.dumps(timings, indent=2))
        return value

    torch.manual_seed(recipe.seed)
    data = timed("render", lambda: train.render_pool(recipe.seed, recipe.pool_size, resolution=recipe.resolution,
                                                     two_object_prob=recipe.two_object_prob, progress=progress))
    tokenizer = build_tokenizer(world.VOCABULARY, work / "tokenizer", max_length=recipe.max_length)

    # 1. CLIP
    clip_dir = work / "clip"
    if _stage_done(clip_dir):
        clip = CLIPModel.from_pretrained(clip_dir / "final")
    else:
        torch.manual_seed(recipe.seed)
        clip = CLIPModel(clip_config(recipe, tokenizer))
        clip, res = train.fit(clip, train.clip_loss_fn(data, tokenizer, batch_size=recipe.clip_batch),
                              steps=recipe.clip_steps, lr=recipe.clip_lr, seed=recipe.seed + 1,
                              warmup=min(50, recipe.clip_steps // 5 + 1), weight_decay=0.1,
                              checkpoint_dir=clip_dir / "checkpoint", log_file=log, desc="clip", progress=progress)
        clip.save_pretrained(clip_dir / "final")
        timings["clip"] = round(res.seconds, 1)
        (clip_dir / "DONE").touch()
    clip.eval().requires_grad_(False)
    text_encoder = text_encoder_from_clip(clip)

    # 2. VAE
    vae_dir = work / "vae"
    if _stage_done(vae_dir):
        vae = AutoencoderKL.from_pretrained(vae_dir / "final")
    else:
        torch.manual_seed(recipe.seed)
        vae = AutoencoderKL(**vae_config(recipe))
        vae, res = train.fit(vae, train.vae_loss_fn(data, batch_size=recipe.vae_batch, kl_weight=recipe.vae_kl_weight),
                             steps=recipe.vae_steps, lr=recipe.vae_lr, seed=recipe.seed + 2,
                             warmup=min(50, recipe.vae_steps // 5 + 1), checkpoint_dir=vae_dir / "checkpoint",
                             log_file=log, desc="vae", progress=progress)
        vae.save_pretrained(vae_dir / "final")
        timings["vae"] = round(res.seconds, 1)
        (vae_dir / "DONE").touch()
    vae.eval().requires_grad_(False)

    # 3. Latents, scaling factor, prompt table. The factor that gives the latents unit variance is
    # measured (1 / std), then folded into the VAE so that its config holds SD's 0.18215 and code
    # written for SD 1.x (which hard-codes 0.18215) decodes this model's latents right.
    mean, std = timed("encode", lambda: train.encode_pool(vae, data, progress=progress))
    measured = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=measured)
    k = fold_scaling_factor(vae, sd_scaling_factor())
    mean, std = mean * k, std * k                        # the pool's latents in the folded VAE's units
    captions = train.all_captions()
    table = timed("prompts", lambda: text.encode(tokenizer, text_encoder, captions, batch_size=256,
                                                          device="cpu", warn=False))
    latent_data = train.LatentData(mean, std, data.scenes, table, {c: i for i, c in enumerate(captions)},
                                   vae.config.scaling_factor)

    # 4. UNet
    unet_dir = work / "unet"
    if _stage_done(unet_dir):
        unet = UNet2DConditionModel.from_pretrained(unet_dir / "final")
    else:
        torch.manual_seed(recipe.seed)
        unet = UNet2DConditionModel(**unet_config(recipe))
        noise_scheduler = DDPMScheduler(**noise_scheduler_config())
        unet, res = train.fit(unet, train.unet_loss_fn(latent_data, noise_scheduler, batch_size=recipe.unet_batch,
                                                       empty_prob=recipe.empty_prompt_prob),
                              steps=recipe.unet_steps, lr=recipe.unet_lr, seed=recipe.seed + 3,
                              warmup=min(100, recipe.unet_steps // 5 + 1), ema_decay=recipe.unet_ema,
                              checkpoint_dir=unet_dir / "checkpoint", log_file=log, desc="unet", progress=progress)
        unet.save_pretrained(unet_dir / "final")
        timings["unet"] = round(res.seconds, 1)
        (unet_dir / "DONE").touch()
    unet.eval().requires_grad_(False)
    (work / "timings.json").write_text(json.dumps(timings, indent=2))

    # 5. Export: a standard diffusers folder, fp16 safetensors, plus the full CLIP in clip/
    pipe = build_pipeline(vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(work / "tokenizer"),
                          unet=unet, scheduler=DDIMScheduler.from_config(sampling_scheduler_config()))
    export(pipe, clip, out, recipe=recipe, timings=timings, measured_scaling_factor=measured)
    report = {"timings_s": timings}
    if evaluate:
        from . import evaluate as ev

        from .model_card import write_card

        report.update(ev.evaluate(out, progress=progress))
        write_card(out, report)
    return report


def export(pipe, clip, out: Path, *, recipe: Recipe, timings: dict, measured_scaling_factor: float | None = None) -> None:
    """Save ``pipe`` in fp16 safetensors as a standard diffusers folder, and ``clip`` in ``out/clip``.

    ``recipe.json`` records the recipe, the stages' timings and the latent scaling factor the VAE
    measured before it was folded to SD's (:func:`sdlearn.vae.fold_scaling_factor`).
    """
    out.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    # transformers 5 writes only tokenizer.json; SD 1.x folders also carry vocab.json and
    # merges.txt, which every transformers release (and other tools) can read.
    pipe.tokenizer.save_pretrained(out / "tokenizer")
    save_tokenizer_files(world.VOCABULARY, out / "tokenizer", max_length=pipe.tokenizer.model_max_length)
    clip.to(torch.float16).save_pretrained(out / "clip", safe_serialization=True)
    pipe.to(torch.float32)
    clip.to(torch.float32)
    write_sd_conventions(out)
    meta = {"recipe": asdict(recipe), "timings_s": timings}
    if measured_scaling_factor is not None:
        meta["measured_scaling_factor"] = round(float(measured_scaling_factor), 5)
    (out / "recipe.json").write_text(json.dumps(meta, indent=2) + "\n")


def write_sd_conventions(folder: Path) -> None:
    """Make the saved configs say what SD 1.5's say, where saving in fp16 or diffusers' defaults differ.

    - ``text_encoder/config.json`` and ``clip/config.json``: ``"dtype": "float32"``. transformers
      writes the dtype the weights were saved in (float16) and loads a model in its config's dtype,
      while diffusers loads the U-Net and VAE in float32: without this, code that loads the parts
      with no dtype (as SD tutorials do) mixes half and float and fails at the first U-Net call.
      The weights stay fp16 on disk; they are upcast on loading.
    - ``scheduler/scheduler_config.json``: SD 1.5's keys only (:func:`sampling_scheduler_config`),
      not every argument of the class, so that other schedulers made ``from_config`` keep their own defaults.
    - no ``_name_or_path``: where a part was loaded from before it was saved is not part of the model.
    """
    for path in [folder / "model_index.json", *folder.glob("*/config.json")]:
        config = json.loads(path.read_text())
        changed = config.pop("_name_or_path", None) is not None
        if path.parent.name in ("text_encoder", "clip"):
            config["dtype"], changed = "float32", True
        if changed:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    path = folder / "scheduler" / "scheduler_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({"_class_name": saved["_class_name"], "_diffusers_version": saved["_diffusers_version"],
                                **{k: v for k, v in sampling_scheduler_config().items() if k != "_class_name"}},
                               indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdlearn.recipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("build/recipe"), help="checkpoints and logs (default: build/recipe)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"export folder (default: the bundled model's, {DEFAULT_EXPORT}; with --scale, "
                             "WORK/export, so that a smoke run never replaces the bundled model)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps (0.02 = smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after export")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale must be > 0, got {args.scale}")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe(seed=args.seed)
    if args.scale != 1.0:
        recipe = recipe.scaled(args.scale)
    out = args.out or (DEFAULT_EXPORT if args.scale == 1.0 else args.work / "export")
    try:
        _check_same_recipe(recipe, args.work)
    except ValueError as err:
        parser.error(str(err))
    report = run(recipe, args.work, out, evaluate=not args.no_eval)
    print(json.dumps(report, indent=2))
    print(f"exported to {out}")


if __name__ == "__main__":
    main()
