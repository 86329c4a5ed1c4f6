"""The bundled model's card (``README.md`` in its folder), written from measured figures."""

from __future__ import annotations

import json
from pathlib import Path


# Why the bundled folder's configs differ from SD 1.5's, key by key (``config_differences`` finds the
# differences; a test checks that each has a reason here and that no reason is left without one).
_SMALL = "small enough to train in about an hour and to sample in well under a second on a 2-core CPU"
DIFFERENCE_REASONS: dict[tuple[str, str], str] = {
    ("model_index", "safety_checker"): "no safety checker: SD 1.x's is a CLIP ViT-L/14 image classifier of real "
                                       "photographs (over 1 GB); the toy world has nothing for it to flag",
    ("model_index", "feature_extractor"): "only the safety checker uses it",
    ("model_index", "requires_safety_checker"): "there is no safety checker to require",
    ("scheduler", "_class_name"): "DDIM (SD 1.5: PNDM): at SD's guidance 7.5 this model keeps to the prompt under "
                                  "first-order samplers (DDIM, Euler) but not under PNDM's and LMS's multistep "
                                  "updates (the sampler table below), and the course teaches DDIM first",
    ("scheduler", "skip_prk_steps"): "a PNDM setting; a DDIM config that named it would warn on every load. "
                                     "`PNDMScheduler.from_config(...)` here needs `skip_prk_steps=True` to run as on SD 1.5",
    ("model_index", "scheduler"): "the scheduler above",
    ("unet", "block_out_channels"): f"3 levels of 64, 128, 128 channels (SD: 4 of 320 to 1280): {_SMALL}",
    ("unet", "down_block_types"): "3 levels, the deepest without cross-attention, as SD's deepest level",
    ("unet", "up_block_types"): "3 levels, the deepest without cross-attention, as SD's deepest level",
    ("unet", "layers_per_block"): f"1 ResNet (and transformer) per level (SD: 2): {_SMALL}",
    ("unet", "attention_head_dim"): "4 heads, as the text encoder has (SD: 8); diffusers reads this key as the "
                                    "number of heads in SD 1.x's U-Net",
    ("unet", "cross_attention_dim"): "the text encoder's width, 128 (SD: CLIP ViT-L/14's 768)",
    ("unet", "sample_size"): "8x8 latents for 64x64 pictures (SD: 64x64 latents for 512x512)",
    ("vae", "block_out_channels"): f"32, 32, 64, 64 channels (SD: 128 to 512), the same factor 8: {_SMALL}",
    ("vae", "layers_per_block"): f"1 ResNet per level (SD: 2): {_SMALL}",
    ("vae", "norm_num_groups"): "16 groups: GroupNorm's groups must divide the narrowest width, 32",
    ("vae", "sample_size"): "64x64 pictures (SD: 512x512)",
    ("text_encoder", "vocab_size"): "607 tokens, every word of the toy world one token (SD: CLIP's 49,408 BPE "
                                    "tokens, which cannot be downloaded here)",
    ("text_encoder", "bos_token_id"): "the tokenizer's own start token (SD 1.5's config says 0, a legacy value; its "
                                      "tokenizer's is 49406)",
    ("text_encoder", "eos_token_id"): "the tokenizer's own end token (SD 1.5's config says 2, a legacy value; its "
                                      "tokenizer's is 49407)",
    ("text_encoder", "pad_token_id"): "pads with the end token, as SD's tokenizer does",
    ("text_encoder", "hidden_size"): f"width 128 (SD: 768): {_SMALL}",
    ("text_encoder", "intermediate_size"): "4 x the width, as in SD",
    ("text_encoder", "num_attention_heads"): f"4 heads (SD: 12): {_SMALL}",
    ("text_encoder", "num_hidden_layers"): f"4 layers (SD: 12): {_SMALL}",
    ("text_encoder", "projection_dim"): "the width, as in SD (used only by CLIP's contrastive head)",
}


def _effective(cls, config: dict) -> dict:
    """A diffusers class's config as the class reads it: the file's values over the defaults of ``__init__``."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    values = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    values.update({k: v for k, v in config.items() if not k.startswith("_") and k in params})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def config_differences(folder: str | Path) -> list[tuple[str, str, object, object]]:
    """Every config value of the diffusers folder ``folder`` that differs from SD 1.5's: ``(part, key, ours, sd15)``.

    U-Net and VAE are compared as their classes read them (the file's keys over the class's
    defaults), the text encoder as ``CLIPTextConfig`` reads it, the scheduler key for key as
    its file says (``from_config`` of another scheduler inherits the keys the file has), and
    model_index.json's components. SD 1.5's configs are the replica's (``sdlearn/configs/sd15``).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from .models import load_sd15_configs

    folder = Path(folder)
    sd15 = load_sd15_configs()
    read = lambda part, name: json.loads((folder / part / name).read_text())  # noqa: E731
    # the keys CLIPTextConfig itself defines (not the dtype the weights were saved in, not legacy extras)
    text_keys = set(CLIPTextConfig().to_dict()) - {"transformers_version", "dtype", "torch_dtype"}
    pairs = {
        "unet": (_effective(UNet2DConditionModel, read("unet", "config.json")),
                 _effective(UNet2DConditionModel, sd15["unet"])),
        "vae": (_effective(AutoencoderKL, read("vae", "config.json")), _effective(AutoencoderKL, sd15["vae"])),
        "text_encoder": tuple(
            {k: v for k, v in CLIPTextConfig(**c).to_dict().items() if k in text_keys}
            for c in (read("text_encoder", "config.json"), sd15["text_encoder"])),
        "scheduler": ({k: v for k, v in read("scheduler", "scheduler_config.json").items() if k != "_diffusers_version"},
                      sd15["scheduler"]),
        "model_index": ({k: v for k, v in json.loads((folder / "model_index.json").read_text()).items()
                         if not k.startswith("_") and v != [None, None] or k in SD15_MODEL_INDEX},
                        SD15_MODEL_INDEX),
    }
    found = []
    for part, (ours, theirs) in pairs.items():
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key, "(absent)") != theirs.get(key, "(absent)"):
                found.append((part, key, ours.get(key, "(absent)"), theirs.get(key, "(absent)")))
    return found


#: SD 1.5's model_index.json, the components a pipeline folder lists.
SD15_MODEL_INDEX = {
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": True,
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _differences_table(folder: Path) -> str:
    rows = []
    for part, key, ours, theirs in config_differences(folder):
        reason = DIFFERENCE_REASONS.get((part, key), "NO REASON RECORDED")
        rows.append(f"| {part} | `{key}` | `{json.dumps(ours)}` | `{json.dumps(theirs)}` | {reason} |")
    return "| part | key | here | SD 1.5 | why |\n| --- | --- | --- | --- | --- |\n" + "\n".join(rows)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


_TABLE_HEAD = ("| prompts | generations | colour | shape | size | position | all named right |\n"
               "| --- | --- | --- | --- | --- | --- | --- |")


def _following_rows(following: dict) -> str:
    return "\n".join(
        f"| {kind} | {r['n']} | {_pct(r.get('colour', float('nan')))} | {_pct(r['shape'])} | "
        f"{_pct(r['size']) if 'size' in r else 'n/a'} | {_pct(r.get('position', float('nan')))} | "
        f"{_pct(r['all_named_right'])} |"
        for kind, r in following.items()
    )


def _spread(evaluation: dict) -> str:
    quartiles = evaluation.get("seconds_per_image_quartiles")
    if not quartiles:
        return ""
    return (f" (median of {evaluation.get('speed_repeats', 20)} runs; half of them between {quartiles[0]:.2f} and "
            f"{quartiles[1]:.2f} s: the machine is a shared virtual machine)")


def _parameters(folder: Path) -> dict[str, int]:
    from safetensors import safe_open

    counts = {}
    for part in ("text_encoder", "vae", "unet", "clip"):
        total = 0
        for f in sorted((folder / part).glob("*.safetensors")):
            with safe_open(f, "pt") as st:
                for key in st.keys():
                    total += _numel(st.get_slice(key).get_shape())
        counts[part] = total
    return counts


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def shortfall_sentence(samplers: dict[str, dict], goal: float = 0.90) -> str:
    """One sentence, from the sampler table, naming the samplers under ``goal`` at SD's guidance 7.5."""
    from .models import SD_GUIDANCE_SCALE

    short = [f"{name} ({100 * row['all']:.1f}%)" for name, row in samplers.items() if row["all"] < goal]
    if not short:
        return f"Every sampler above draws at least {100 * goal:.0f}% of the prompts right at guidance {SD_GUIDANCE_SCALE:g}."
    return (f"Below {100 * goal:.0f}% at guidance {SD_GUIDANCE_SCALE:g}: {', '.join(short)}. The folder's own settings, DDIM at the\n"
            "recommended guidance scale, are the figures above the table.")


def render_card(folder: str | Path, evaluation: dict) -> str:
    """The model card's Markdown for the diffusers folder ``folder`` and its evaluation report."""
    from .models import SD_GUIDANCE_SCALE

    folder = Path(folder)
    meta = json.loads((folder / "recipe.json").read_text())
    recipe, timings = meta["recipe"], meta.get("timings_s", {})
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    te_cfg = json.loads((folder / "text_encoder" / "config.json").read_text())
    sched_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    params = _parameters(folder)
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    pf = evaluation["prompt_following"]
    zs = evaluation["clip_zero_shot"]
    total_min = sum(v for v in timings.values()) / 60
    measured = meta.get("measured_scaling_factor")
    measured_text = f" = {measured:.4g}" if measured else ""
    samplers = evaluation.get("samplers_at_sd_default")
    sampler_text = ""
    if samplers:
        from .evaluate import format_sampler_table

        generations = 3 * evaluation["sampler_count"]           # full, partial and two-object prompts
        sampler_text = (
            f"\nAt guidance {SD_GUIDANCE_SCALE:g} under each sampler SD 1.x is usually run with, at its usual number of steps\n"
            "(each made `from_config(pipe.scheduler.config)`; the first of the same held-out prompts and seeds; the last column\n"
            f"is the share of all {generations} generations with every named attribute right):\n\n"
            f"{format_sampler_table(samplers)}\n\n{shortfall_sentence(samplers)}\n")
    rows = _following_rows(pf)
    default = evaluation.get("prompt_following_at_sd_default")
    default_table = ""
    if default:
        default_table = (
            f"\nAt Stable Diffusion's default guidance scale, {SD_GUIDANCE_SCALE:g}, on the same prompts and seeds:\n\n"
            f"{_TABLE_HEAD}\n{_following_rows(default)}\n"
        )
    sweep = evaluation.get("guidance_sweep")
    sweep_text = ""
    if sweep:
        sweep_rows = "\n".join(
            f"| {float(scale):g} | {_pct(r['full'])} | {_pct(r['partial'])} | {_pct(r['two'])} | {_pct(r['mean'])} |"
            for scale, r in sweep.items()
        )
        sweep_text = (
            "The guidance scale was chosen by `sdlearn.evaluate.guidance_sweep` on validation prompts and seeds\n"
            "(not the ones measured below): the share of generations with every named attribute right.\n\n"
            "| guidance scale | full | partial | two objects | mean |\n| --- | --- | --- | --- | --- |\n"
            f"{sweep_rows}\n\n"
        )
    return f"""# sdlearn-tiny: the course's teaching model

A tiny text-to-image latent diffusion model with the same parts, classes and folder
layout as Stable Diffusion 1.x, trained from scratch by `python -m sdlearn.recipe` on a
world of coloured shapes that `sdlearn.world` generates. It exists so that every
notebook of the sdlearn course runs offline, on a CPU, in seconds. It is a teaching
instrument, not an image generator: it knows only its toy world.

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("sdlearn/bundled/sdlearn-tiny")  # offline, plain diffusers
image = pipe("a big red circle on the left", num_inference_steps=20).images[0]  # 64x64
```

## Parts

| part | class | size | as in SD 1.x? |
| --- | --- | --- | --- |
| tokenizer | `CLIPTokenizer` | {te_cfg['vocab_size']} tokens (every word of the world is one token; other words fall back to letters), max length {te_cfg['max_position_embeddings']} | same class, special tokens and length; SD's vocabulary has 49,408 BPE tokens |
| text encoder | `CLIPTextModel` | {params['text_encoder']:,} parameters, {te_cfg['num_hidden_layers']} layers, width {te_cfg['hidden_size']} | same class; SD: 123 M, 12 layers, width 768 |
| VAE | `AutoencoderKL` | {params['vae']:,} parameters, 64x64x3 <-> 8x8x4 (factor 8, 4 channels), `scaling_factor` {vae_cfg['scaling_factor']}, SD's (see Recipe) | same class, factor, channels and scaling factor; SD: 84 M |
| UNet | `UNet2DConditionModel` | {params['unet']:,} parameters, channels {tuple(unet_cfg['block_out_channels'])}, cross-attention on the text encoder's last hidden state | same class and conditioning; SD: 860 M, 64x64x4 latents |
| scheduler | `{sched_cfg['_class_name']}` | 1000 training steps, scaled_linear betas 0.00085 to 0.012, epsilon prediction | SD 1.5's `scheduler_config.json`, key for key, with DDIM for PNDM (below) |
| clip/ | `CLIPModel` | {params['clip']:,} parameters: the text encoder above plus the vision tower it was trained with | not in SD; used by the CLIP notebook for text-image similarity |

All weights are fp16 safetensors, and every config says float32 (as SD 1.5's do), so plain
`from_pretrained` with no dtype loads every part in float32 and `torch_dtype=torch.float16`
loads them in float16; the folder is {size_mb:.1f} MB.

## Beside SD 1.5

Code written for SD 1.x runs on this folder unchanged: the same classes, SD 1.5's
scheduler keys and values (so `LMSDiscreteScheduler.from_config(pipe.scheduler.config)` and the
others keep their own defaults, as on SD 1.5), SD's `scaling_factor` 0.18215 (so a
hard-coded `1 / 0.18215` decodes right), float32 configs. Every config value that differs
from SD 1.5's, compared key by key with `sdlearn.model_card.config_differences`:

{_differences_table(folder)}

## Data

`sdlearn.world`: 64x64 images of one object (circle, square or triangle; red, green,
blue, yellow or purple; small or big; left, right, top, bottom or middle) or two
objects of different colours (left and right, or top and bottom), on light, slightly
tinted backgrounds. Captions name every attribute ("a big red circle on the left") or
leave some out ("a red circle", "a square at the top"); two-object captions read "a
red circle on the left and a blue square on the right", in either order. The training
pool is {recipe['pool_size']:,} rendered scenes with a fresh caption drawn for each use; evaluation
uses seeds the recipe never trains on.

## Recipe

One command, `python -m sdlearn.recipe`, rebuilds the folder from nothing (seed
{recipe['seed']}); it checkpoints every stage and resumes after an interruption. Each stage is
a call of `sdlearn.train.fit` (Hugging Face Accelerate, AdamW, warm-up then cosine decay):

1. CLIP, contrastive loss: {recipe['clip_steps']} steps of batch {recipe['clip_batch']}, lr {recipe['clip_lr']}. Then frozen.
2. VAE, MSE + {recipe['vae_kl_weight']} x KL: {recipe['vae_steps']} steps of batch {recipe['vae_batch']}, lr {recipe['vae_lr']}. Then frozen. The factor that gives the
   training latents unit variance is measured (1 / std{measured_text}), then folded into the VAE: with
   k = measured / 0.18215, `quant_conv`'s mean outputs are multiplied by k (its log-variance outputs
   raised by 2 log k) and `post_quant_conv`'s weights divided by k, so the raw latents are k times
   larger (std about 5.5, as SD's), the scaled ones and every decoded image are unchanged, and the
   config holds SD's 0.18215 (`sdlearn.vae.fold_scaling_factor`).
3. UNet, epsilon-prediction MSE (`sdlearn.train.diffusion_loss`), {_pct(recipe['empty_prompt_prob'])} empty captions for
   classifier-free guidance: {recipe['unet_steps']} steps of batch {recipe['unet_batch']}, lr {recipe['unet_lr']}, EMA {recipe['unet_ema']}.
   Latents and the embeddings of every possible caption are computed once beforehand.

Measured time of the last build ({evaluation.get('torch_threads', '?')} CPU threads): {', '.join(f'{k} {v / 60:.1f} min' for k, v in timings.items())};
{total_min:.0f} minutes in all.

## Measured quality

From `python -m sdlearn.evaluate` ({evaluation['steps']} steps of the folder's own scheduler, {evaluation.get('scheduler', 'DDIMScheduler')}, unless a table says otherwise). **Recommended guidance scale for this
model: {evaluation['guidance_scale']:g}** ({"SD 1.x's default too" if evaluation['guidance_scale'] == SD_GUIDANCE_SCALE else f"SD 1.x's is {SD_GUIDANCE_SCALE:g}"}; chosen on validation prompts and seeds).

- VAE reconstruction PSNR on held-out images: **{evaluation['vae_psnr_db']:.1f} dB**.
- CLIP zero-shot accuracy on held-out single-object images: colour {_pct(zs['colour'])}, shape {_pct(zs['shape'])},
  size {_pct(zs['size'])}, position {_pct(zs['position'])}.
- Prompt following, judged by `sdlearn.world.judge` (pixel analysis against the world's
  definitions, no model; itself tested to read back every attribute of rendered ground
  truth). Each column is the share of generations that get that attribute right, among
  prompts that name it; the last column, the share that get every named attribute right
  (for two objects: both objects entirely right).

{sweep_text}At guidance scale {evaluation['guidance_scale']:g}, on held-out prompts and seeds:

{_TABLE_HEAD}
{rows}
{default_table}{sampler_text}
- Speed: one 64x64 image, {evaluation['steps']} steps with guidance, batch 1, on this 2-core CPU:
  **{evaluation['seconds_per_image']:.2f} s**{_spread(evaluation)}.

## Limits

It knows five colours, three shapes, two sizes, five positions and at most two objects;
anything else gives shapes anyway, or noise. Words outside its vocabulary are spelled
letter by letter and mean nothing to it. Edges are soft and colours can drift at
64x64. Its CLIP is tiny and its text embeddings mean nothing outside the toy world.
Licence: Apache-2.0, like the rest of sdlearn.
"""


def write_card(folder: str | Path, evaluation: dict) -> Path:
    """Write ``README.md`` and ``evaluation.json`` into the model folder."""
    folder = Path(folder)
    (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    path = folder / "README.md"
    path.write_text(render_card(folder, evaluation))
    return path
