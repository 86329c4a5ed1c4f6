"""The bundled model's card (``README.md`` in its folder), written from measured figures."""

from __future__ import annotations

import json
from pathlib import Path


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


def render_card(folder: str | Path, evaluation: dict) -> str:
    """The model card's Markdown for the diffusers folder ``folder`` and its evaluation report."""
    folder = Path(folder)
    meta = json.loads((folder / "recipe.json").read_text())
    recipe, timings = meta["recipe"], meta.get("timings_s", {})
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    te_cfg = json.loads((folder / "text_encoder" / "config.json").read_text())
    params = _parameters(folder)
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    pf = evaluation["prompt_following"]
    zs = evaluation["clip_zero_shot"]
    total_min = sum(v for v in timings.values()) / 60
    rows = _following_rows(pf)
    default = evaluation.get("prompt_following_at_sd_default")
    default_table = ""
    if default:
        default_table = (
            f"\nAt Stable Diffusion's default guidance scale, 7.5, on the same prompts and seeds:\n\n"
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
| VAE | `AutoencoderKL` | {params['vae']:,} parameters, 64x64x3 <-> 8x8x4 (factor 8, 4 channels), `scaling_factor` {vae_cfg['scaling_factor']} measured as 1 / std of the training latents | same class, factor and channels; SD: 84 M, factor 0.18215 |
| UNet | `UNet2DConditionModel` | {params['unet']:,} parameters, channels {tuple(unet_cfg['block_out_channels'])}, cross-attention on the text encoder's last hidden state | same class and conditioning; SD: 860 M, 64x64x4 latents |
| scheduler | `DDIMScheduler` | 1000 training steps, scaled_linear betas 0.00085 to 0.012, epsilon prediction | SD's schedule; SD 1.x ships PNDM |
| clip/ | `CLIPModel` | {params['clip']:,} parameters: the text encoder above plus the vision tower it was trained with | not in SD; used by the CLIP notebook for text-image similarity |

All weights are fp16 safetensors; the folder is {size_mb:.1f} MB.

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
2. VAE, MSE + {recipe['vae_kl_weight']} x KL: {recipe['vae_steps']} steps of batch {recipe['vae_batch']}, lr {recipe['vae_lr']}. Then frozen; the scaling factor is measured.
3. UNet, epsilon-prediction MSE (`sdlearn.train.diffusion_loss`), {_pct(recipe['empty_prompt_prob'])} empty captions for
   classifier-free guidance: {recipe['unet_steps']} steps of batch {recipe['unet_batch']}, lr {recipe['unet_lr']}, EMA {recipe['unet_ema']}.
   Latents and the embeddings of every possible caption are computed once beforehand.

Measured time of the last build ({evaluation.get('torch_threads', '?')} CPU threads): {', '.join(f'{k} {v / 60:.1f} min' for k, v in timings.items())};
{total_min:.0f} minutes in all.

## Measured quality

From `python -m sdlearn.evaluate` ({evaluation['steps']} DDIM steps). **Recommended guidance scale for this
model: {evaluation['guidance_scale']:g}** (SD 1.x's is 7.5; a small model trained on a small world needs less push).

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
{default_table}
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
