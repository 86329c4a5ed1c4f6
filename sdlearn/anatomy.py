"""Stable Diffusion at a glance: its three parts, the shapes that flow between them, what each costs.

Jay Alammar's *The Illustrated Stable Diffusion* splits the pipeline into three parts:

1. the **text understander**: tokenizer + CLIP text encoder, prompt -> ``[B, 77, d]`` vectors;
2. the **image information creator**: UNet + scheduler, a loop over timesteps t = T..1 in
   latent space, from random latents ``[B, 4, H/8, W/8]`` to clean ones;
3. the **image decoder**: the VAE decoder, latents -> image ``[B, 3, H, W]`` in [-1, 1].

This module runs each part once and reports the shapes (:func:`trace_shapes`), derives the
same shapes from the configs alone (:func:`config_shapes`), counts parameters per block
(:func:`parameter_breakdown`), FLOPs per UNet step (:func:`unet_flops`) and FLOPs per call
of each network (:func:`flops_per_call`). Everything works on PyTorch's ``meta`` device
too, so SD 1.5's architecture can be measured without downloading it. (To record the UNet
calls a pipeline makes, use :func:`sdlearn.unet.capture_unet_calls`.)
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from sdlearn._checks import positive_int
from sdlearn.device import draw_noise
from sdlearn.models import SDComponents, count_parameters, parameters_by_block
from sdlearn.text import tokenize

TEXT_UNDERSTANDER = "text understander"
IMAGE_INFORMATION_CREATOR = "image information creator"
IMAGE_DECODER = "image decoder"
PARTS = (TEXT_UNDERSTANDER, IMAGE_INFORMATION_CREATOR, IMAGE_DECODER)

# Scheduler steps used for the one-step trace; shapes do not depend on it.
_TRACE_STEPS = 10

Shape = tuple[int, ...]


@dataclass(frozen=True)
class StageShapes:
    """One component's run: the shapes of what went in and what came out.

    ``part`` is one of :data:`PARTS`; ``component`` names the call (``"tokenizer"``,
    ``"text_encoder"``, ``"unet"``, ``"scheduler.step"``, ``"vae.decode"``); ``inputs`` and
    ``outputs`` map tensor names to shapes (the prompts' "shape" is ``(B,)``, B strings; a
    scalar timestep's is ``()``).
    """

    part: str
    component: str
    inputs: dict[str, Shape]
    outputs: dict[str, Shape]


def _check_components(components: Any) -> None:
    if not isinstance(components, SDComponents):
        raise TypeError(
            f"expected an sdlearn.models.SDComponents, got {type(components).__name__}. "
            "Get one with sdlearn.models.load() or sdlearn.models.sd15_replica(meta=True)."
        )


def _check_batch_size(batch_size: Any) -> None:
    positive_int("batch_size", batch_size)


def config_shapes(components: SDComponents, *, batch_size: int = 1) -> list[StageShapes]:
    """The shapes at every stage, derived from the configs alone (nothing runs).

    tokens = ``tokenizer.model_max_length``; d = ``text_encoder.config.hidden_size``;
    latents ``[B, unet.in_channels, s, s]`` with s = ``unet.config.sample_size``;
    image ``[B, vae.out_channels, s*f, s*f]`` with f = ``components.vae_scale_factor``.
    Same list layout as :func:`trace_shapes`.
    """
    _check_components(components)
    _check_batch_size(batch_size)
    b = batch_size
    n_tokens = int(components.tokenizer.model_max_length)
    width = int(components.text_encoder.config.hidden_size)
    side = int(components.unet.config.sample_size)
    latents = (b, int(components.unet.config.in_channels), side, side)
    noise = (b, int(components.unet.config.out_channels), side, side)
    image_side = side * components.vae_scale_factor
    image = (b, int(components.vae.config.out_channels), image_side, image_side)
    ids, text = (b, n_tokens), (b, n_tokens, width)
    return [
        StageShapes(TEXT_UNDERSTANDER, "tokenizer", {"prompts": (b,)}, {"input_ids": ids}),
        StageShapes(TEXT_UNDERSTANDER, "text_encoder", {"input_ids": ids}, {"text_embeddings": text}),
        StageShapes(
            IMAGE_INFORMATION_CREATOR,
            "unet",
            {"latent_model_input": latents, "t": (), "text_embeddings": text},
            {"noise_pred": noise},
        ),
        StageShapes(
            IMAGE_INFORMATION_CREATOR,
            "scheduler.step",
            {"noise_pred": noise, "latents": latents},
            {"latents (t-1)": latents},
        ),
        StageShapes(IMAGE_DECODER, "vae.decode", {"latents": latents}, {"image": image}),
    ]


@torch.no_grad()
def trace_shapes(
    components: SDComponents,
    *,
    prompt: str = "a photo",
    batch_size: int = 1,
    generator: torch.Generator | None = None,
) -> list[StageShapes]:
    """Run each part of the pipeline once, without guidance, and record the tensor shapes.

    1. tokenizer: ``B`` prompts -> ``input_ids [B, 77]``;
    2. text_encoder: ids -> ``text_embeddings [B, 77, d]``;
    3. unet: ``latents [B, 4, h, w]`` (random, from ``generator``), the first timestep and
       the embeddings -> ``noise_pred [B, 4, h, w]``;
    4. scheduler.step: noise_pred, latents -> the latents one step less noisy;
    5. vae.decode: ``latents / scaling_factor`` -> ``image [B, 3, 8h, 8w]``.

    Works on any device, ``meta`` included (shapes only, nothing computed). The
    components are not changed: the scheduler is copied before ``set_timesteps``. With
    classifier-free guidance the pipeline feeds the UNet a batch of ``2B`` instead.
    """
    _check_components(components)
    _check_batch_size(batch_size)
    device, dtype = components.device, components.dtype
    prompts = [prompt] * batch_size
    tokenizer, text_encoder, unet, vae = (
        components.tokenizer, components.text_encoder, components.unet, components.vae
    )
    scheduler = type(components.scheduler).from_config(components.scheduler.config)
    if generator is None:
        generator = torch.Generator().manual_seed(0)

    # 1. Encode the prompt
    input_ids = tokenize(tokenizer, prompts, device=device, warn=False)  # [B, 77]
    text_embeddings = text_encoder(input_ids).last_hidden_state  # [B, 77, d]
    # 2. Prepare the timesteps and the latents
    scheduler.set_timesteps(_TRACE_STEPS)
    t = scheduler.timesteps[0]
    side = int(unet.config.sample_size)
    shape = (batch_size, int(unet.config.in_channels), side, side)
    latents = draw_noise(shape, generator=generator, device=device)  # [B, 4, h, w] float32
    latents = latents.to(dtype) * scheduler.init_noise_sigma  # [B, 4, h, w]
    # 3. One denoising step
    latent_model_input = scheduler.scale_model_input(latents, t)
    noise_pred = unet(latent_model_input, t, encoder_hidden_states=text_embeddings).sample
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    prev = scheduler.step(noise_pred, t, latents, **extra).prev_sample  # [B, 4, h, w]
    # 4. Decode
    image = vae.decode(prev / vae.config.scaling_factor).sample  # [B, 3, H, W]

    ids_shape, text_shape = tuple(input_ids.shape), tuple(text_embeddings.shape)
    return [
        StageShapes(TEXT_UNDERSTANDER, "tokenizer", {"prompts": (len(prompts),)}, {"input_ids": ids_shape}),
        StageShapes(TEXT_UNDERSTANDER, "text_encoder", {"input_ids": ids_shape}, {"text_embeddings": text_shape}),
        StageShapes(
            IMAGE_INFORMATION_CREATOR,
            "unet",
            {
                "latent_model_input": tuple(latent_model_input.shape),
                "t": tuple(torch.as_tensor(t).shape),
                "text_embeddings": text_shape,
            },
            {"noise_pred": tuple(noise_pred.shape)},
        ),
        StageShapes(
            IMAGE_INFORMATION_CREATOR,
            "scheduler.step",
            {"noise_pred": tuple(noise_pred.shape), "latents": tuple(latents.shape)},
            {"latents (t-1)": tuple(prev.shape)},
        ),
        StageShapes(IMAGE_DECODER, "vae.decode", {"latents": tuple(prev.shape)}, {"image": tuple(image.shape)}),
    ]


def _fmt_shape(shape: Shape) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def format_shapes(columns: Mapping[str, list[StageShapes]]) -> str:
    """A text table of one or more shape traces side by side, one row per tensor.

    ``columns`` maps a column title (e.g. ``"this model"``, ``"SD 1.5"``) to a list from
    :func:`trace_shapes` or :func:`config_shapes`; all lists must have the same stages.
    """
    if not columns:
        raise ValueError("columns is empty: pass e.g. {'this model': trace_shapes(components)}.")
    titles, traces = list(columns), list(columns.values())
    layout = [(s.part, s.component, list(s.inputs), list(s.outputs)) for s in traces[0]]
    for title, trace in zip(titles, traces):
        if [(s.part, s.component, list(s.inputs), list(s.outputs)) for s in trace] != layout:
            raise ValueError(
                f"column {title!r} has different stages than column {titles[0]!r}; all columns "
                "must come from trace_shapes or config_shapes (the same stages in the same order)."
            )
    rows = [("part", "component", "", "tensor", *titles)]
    last_part = None
    for i, (part, component, in_names, out_names) in enumerate(layout):
        first = True
        for direction, names, key in (("in", in_names, "inputs"), ("out", out_names, "outputs")):
            for name in names:
                shapes = [_fmt_shape(getattr(trace[i], key)[name]) for trace in traces]
                rows.append((
                    part if part != last_part else "",
                    component if first else "",
                    direction,
                    name,
                    *shapes,
                ))
                last_part, first = part, False
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def _children_counts(module: torch.nn.Module) -> dict[str, int]:
    """Parameters of each direct child; a wrapper with one child (CLIPTextModel.text_model) is opened."""
    prefix = ""
    children = [(n, c) for n, c in module.named_children() if count_parameters(c) > 0]
    while len(children) == 1:
        name, only = children[0]
        prefix += name + "."
        module = only
        children = [(n, c) for n, c in module.named_children() if count_parameters(c) > 0]
    counts = {f"{prefix}{name}": count_parameters(child) for name, child in children}
    rest = count_parameters(module) - sum(counts.values())
    if rest:
        counts[f"{prefix}(own parameters)"] = rest
    return counts


def parameter_breakdown(components: SDComponents) -> dict[str, dict[str, int]]:
    """Parameters per component and per block: ``{"text_encoder": {...}, "unet": {...}, "vae": {...}}``.

    The text encoder and the VAE are split into their direct sub-modules (embeddings,
    encoder layers, final norm; encoder, decoder, quant convs); the UNet into its stages
    with :func:`sdlearn.models.parameters_by_block`. Each component's values sum to
    ``components.parameter_counts()[component]``. Works on the ``meta`` device.
    """
    _check_components(components)
    return {
        "text_encoder": _children_counts(components.text_encoder),
        "unet": parameters_by_block(components.unet),
        "vae": _children_counts(components.vae),
    }


def _ordered_union(key_lists: list[list[str]]) -> list[str]:
    """All keys, each list's order kept: a key missing so far goes right after its predecessor."""
    merged: list[str] = []
    for keys in key_lists:
        previous = None
        for key in keys:
            if key not in merged:
                merged.insert(merged.index(previous) + 1 if previous is not None else 0, key)
            previous = key
    return merged


def format_parameters(columns: Mapping[str, Mapping[str, Mapping[str, int]]]) -> str:
    """A text table of :func:`parameter_breakdown` results side by side ("-" where a block is absent).

    ``columns`` maps a column title to a breakdown; one row per block, a total row per
    component, and a grand total.
    """
    if not columns:
        raise ValueError("columns is empty: pass e.g. {'this model': parameter_breakdown(components)}.")
    titles, tables = list(columns), list(columns.values())
    components = _ordered_union([list(t) for t in tables])
    rows = [("component", "block", *titles)]
    grand = [0] * len(tables)
    for comp in components:
        blocks = _ordered_union([list(t.get(comp, {})) for t in tables])
        for i, block in enumerate(blocks):
            cells = [f"{t[comp][block]:,}" if block in t.get(comp, {}) else "-" for t in tables]
            rows.append((comp if i == 0 else "", block, *cells))
        totals = [sum(t.get(comp, {}).values()) for t in tables]
        grand = [g + n for g, n in zip(grand, totals)]
        rows.append(("", "= total", *(f"{n:,}" for n in totals)))
    rows.append(("all", "= total", *(f"{n:,}" for n in grand)))
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    lines = [
        "  ".join(cell.rjust(w) if j >= 2 else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def _flop_group(op_name: str) -> str:
    name = op_name.split(".")[-1] if "." in op_name else op_name
    if "convolution" in name:
        return "convolution"
    if "bmm" in name or "attention" in name:
        return "attention"
    if name in ("mm", "addmm", "linear"):
        return "linear"
    return "other"


def unet_flops(
    config: Mapping[str, Any],
    *,
    sample_shape: Shape,
    text_shape: Shape,
) -> dict[str, int]:
    """FLOPs of one UNet forward pass (one denoising step, one model call), counted, not estimated.

    Builds a ``UNet2DConditionModel`` from ``config`` on the ``meta`` device (no memory, no
    weights) and runs it on a ``sample`` of ``sample_shape`` ``[B, C, h, w]`` with text
    embeddings of ``text_shape`` ``[B, tokens, cross_attention_dim]`` under
    ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as 2 FLOPs.
    Returns ``{"convolution", "attention" (the batched matmuls q·kᵀ and attn·v), "linear"
    (projections and feed-forward), "other", "total"}``.

    Counting on ``meta`` is deliberate: on a real CPU, PyTorch runs attention in a fused
    kernel whose FLOPs the counter does not see. To measure a pixel-space UNet, pass the
    same config with ``in_channels``/``out_channels`` 3 and a ``[B, 3, H, W]`` sample.
    """
    sample_shape, text_shape = tuple(sample_shape), tuple(text_shape)
    if len(sample_shape) != 4:
        raise ValueError(f"sample_shape must be [B, C, h, w] (4 numbers), got {list(sample_shape)}.")
    if len(text_shape) != 3 or text_shape[0] != sample_shape[0]:
        raise ValueError(
            f"text_shape must be [B, tokens, width] with the sample's batch size {sample_shape[0]}, "
            f"got {list(text_shape)}."
        )
    if sample_shape[1] != config.get("in_channels"):
        raise ValueError(
            f"sample_shape has {sample_shape[1]} channels but the config's in_channels is "
            f"{config.get('in_channels')}; pass {{**config, 'in_channels': {sample_shape[1]}, "
            f"'out_channels': {sample_shape[1]}}} to measure a UNet with that many channels."
        )
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(config))
        sample = torch.empty(sample_shape)
        text = torch.empty(text_shape)
        timestep = torch.tensor(1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(sample, timestep, encoder_hidden_states=text)
    groups = {"convolution": 0, "attention": 0, "linear": 0, "other": 0}
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        groups[_flop_group(str(op))] += int(flops)
    groups["total"] = int(counter.get_total_flops())
    return groups


def flops_per_call(components: SDComponents, *, batch_size: int = 1) -> dict[str, int]:
    """FLOPs of one call of each network, counted on the ``meta`` device.

    Returns ``{"text_encoder": ..., "unet": ..., "vae.decode": ...}``, the shapes those of
    :func:`config_shapes`: the text encoder on ``batch_size`` prompts of ``[L]`` token ids;
    the UNet on one denoising step of latents ``[batch_size, C, h, w]`` (:func:`unet_flops`);
    the VAE decoder from those latents to images ``[batch_size, 3, H, W]``. Counted with
    ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is 2 FLOPs; matrix products,
    convolutions and attention only, element-wise work is not counted). For the text encoder
    that is exactly ``2 * L * (weights of its nn.Linear layers) + layers * 4 * L**2 * d`` per
    prompt: every weight does one multiply-add per token, and attention's ``Q K^T`` and
    ``probs V`` each cost ``2 L^2 d``.

    The networks are rebuilt from their configs on ``meta`` (no memory, no weights touched),
    so a pipeline's cost per picture follows: with classifier-free guidance,
    ``2 * text_encoder + 2 * (UNet calls) * unet + vae.decode``.
    """
    _check_components(components)
    _check_batch_size(batch_size)
    stages = {stage.component: stage for stage in config_shapes(components, batch_size=batch_size)}
    ids_shape = stages["text_encoder"].inputs["input_ids"]                  # [B, L]
    latents_shape = stages["unet"].inputs["latent_model_input"]             # [B, C, h, w]
    text_shape = stages["unet"].inputs["text_embeddings"]                   # [B, L, d]
    with torch.device("meta"):
        text_encoder = type(components.text_encoder)(components.text_encoder.config).eval()
        vae = type(components.vae).from_config(components.vae.config).eval()
        input_ids = torch.zeros(ids_shape, dtype=torch.long)
        latents = torch.empty(latents_shape)

    def count(run) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
        return int(counter.get_total_flops())

    return {
        "text_encoder": count(lambda: text_encoder(input_ids)),
        "unet": unet_flops(components.unet.config, sample_shape=latents_shape, text_shape=text_shape)["total"],
        "vae.decode": count(lambda: vae.decode(latents)),
    }
