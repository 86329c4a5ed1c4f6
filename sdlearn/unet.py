"""The U-Net: how shapes flow through it, where the timestep and the text enter, and what its output means.

Stable Diffusion's U-Net (Ronneberger et al. 2015, adapted by Rombach et al. 2022) takes a
noisy latent ``x_t`` ``[B, 4, h, w]``, the timestep ``t`` and the prompt's text embeddings
``[B, 77, d]``, and predicts the noise ``eps`` that was added to make ``x_t``. Inside it, a
*down path* (``down_blocks``) halves the resolution and widens the channels, a *middle
block* works at the lowest resolution, and an *up path* (``up_blocks``) goes back up,
concatenating the tensors the down path saved (the *skip connections*).

- :func:`trace_unet` runs one forward pass with forward hooks and records every stage's
  output shape and the skip tensors it saves or uses; :func:`format_stages` prints them.
  Works on PyTorch's ``meta`` device too: SD 1.5's shapes with no weights and no memory.
- :func:`timestep_embedding` is the sinusoidal embedding of the timestep (DDPM, after
  Vaswani et al. 2017), as diffusers' ``unet.time_proj`` computes it.
- :func:`trace_cross_attention` records the query, key and value shapes of every
  cross-attention layer (``attn2``); :func:`cross_attention` recomputes one by hand,
  ``softmax(Q K^T / sqrt(d_head)) V``.
- :func:`predict_x0` turns a noise prediction into the predicted clean latent (DDPM eq. 15),
  :func:`classifier_free_guidance` combines the unconditional and the text-conditioned
  predictions, and :func:`mse_by_timestep` measures the noise-prediction error across timesteps.
- :func:`capture_unet_calls` records the inputs and outputs of every U-Net call a pipeline makes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from sdlearn._checks import check_int, is_int, is_number, positive_int
from sdlearn.models import count_parameters

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Stage:
    """One stage of the U-Net's forward pass.

    ``name``: ``"sample"`` (the input), ``"conv_in"``, ``"down_blocks.i"``, ``"mid_block"``,
    ``"up_blocks.i"`` or ``"conv_out"``; ``kind``: the module's class name; ``shape``: the output
    ``[B, C, H, W]``; ``skips_saved``: shapes of the tensors the stage hands to the up path
    (``conv_in`` and the down blocks); ``skips_used``: shapes of the saved tensors an up block
    concatenates to its input (the last saved one first); ``parameters``: the stage's parameter count.
    """

    name: str
    kind: str
    shape: Shape
    skips_saved: tuple[Shape, ...] = ()
    skips_used: tuple[Shape, ...] = ()
    parameters: int = 0

    @property
    def channels(self) -> int:
        return self.shape[1]

    @property
    def resolution(self) -> tuple[int, int]:
        return self.shape[2], self.shape[3]


@dataclass(frozen=True)
class CrossAttentionShapes:
    """Shapes inside one cross-attention layer (a transformer block's ``attn2``).

    ``query`` ``[B, h*w, inner]`` comes from the image features, ``key`` and ``value``
    ``[B, L, inner]`` from the text embeddings; ``probs`` ``[B, heads, h*w, L]`` is the
    attention map, one row per image position, summing to 1 over the ``L`` tokens.
    """

    name: str
    query: Shape
    key: Shape
    value: Shape
    heads: int

    @property
    def probs(self) -> Shape:
        return (self.query[0], self.heads, self.query[1], self.key[1])


def _check_unet(unet) -> None:
    missing = [a for a in ("conv_in", "down_blocks", "mid_block", "up_blocks", "conv_out") if not hasattr(unet, a)]
    if missing or not isinstance(unet, torch.nn.Module):
        raise TypeError(
            f"expected a diffusers UNet2DConditionModel, got {type(unet).__name__} (missing {', '.join(missing)}). "
            "Pass components.unet, e.g. sdlearn.models.load().unet."
        )


def _check_inputs(unet, sample: torch.Tensor, encoder_hidden_states: torch.Tensor) -> None:
    if not isinstance(sample, torch.Tensor) or sample.ndim != 4:
        shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
        raise ValueError(
            f"sample has shape {shape}; expected latents [B, C, h, w]. One latent [C, h, w]? Use sample[None]."
        )
    if sample.shape[1] != unet.config.in_channels:
        raise ValueError(
            f"sample has {sample.shape[1]} channels (shape {tuple(sample.shape)}); this U-Net takes "
            f"{unet.config.in_channels}. Pass latents from the VAE (sdlearn.vae.encode), not images."
        )
    if not isinstance(encoder_hidden_states, torch.Tensor) or encoder_hidden_states.ndim != 3:
        got = (tuple(encoder_hidden_states.shape) if isinstance(encoder_hidden_states, torch.Tensor)
               else type(encoder_hidden_states).__name__)
        raise ValueError(
            f"encoder_hidden_states must be text embeddings [B, L, d] (text_encoder(ids).last_hidden_state), got {got}."
        )
    if encoder_hidden_states.shape[-1] != unet.config.cross_attention_dim:
        raise ValueError(
            f"encoder_hidden_states has width {encoder_hidden_states.shape[-1]}; this U-Net's cross-attention "
            f"expects {unet.config.cross_attention_dim} (unet.config.cross_attention_dim). Use the text encoder "
            "that belongs to this U-Net."
        )


def _first(output):
    """The tensor a module returned: itself, or the first entry of a tuple / model output."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


@torch.no_grad()
def trace_unet(
    unet, sample: torch.Tensor, timestep: int | torch.Tensor, encoder_hidden_states: torch.Tensor
) -> list[Stage]:
    """Run ``unet`` once and record each stage's output shape with forward hooks.

    ``sample``: latents ``[B, C, h, w]``; ``timestep``: an int or a tensor of 1 or B timesteps;
    ``encoder_hidden_states``: ``[B, L, d]``. All on the U-Net's device (``meta`` works: shapes
    only). Returns, in data-flow order, ``sample``, ``conv_in``, every ``down_blocks.i``,
    ``mid_block``, every ``up_blocks.i`` and ``conv_out``. The hooks are removed afterwards.
    """
    _check_unet(unet)
    _check_inputs(unet, sample, encoder_hidden_states)
    stages: dict[str, Stage] = {}
    order = ["conv_in", *[f"down_blocks.{i}" for i in range(len(unet.down_blocks))], "mid_block",
             *[f"up_blocks.{i}" for i in range(len(unet.up_blocks))], "conv_out"]

    def hook_for(name: str):
        def hook(module, args, kwargs, output):
            out = _first(output)
            saved: tuple[Shape, ...] = ()
            used: tuple[Shape, ...] = ()
            if name == "conv_in":
                saved = (tuple(out.shape),)  # the U-Net keeps conv_in's output as the first skip tensor
            elif name.startswith("down_blocks"):
                saved = tuple(tuple(r.shape) for r in output[1])
            elif name.startswith("up_blocks"):
                used = tuple(tuple(r.shape) for r in reversed(kwargs["res_hidden_states_tuple"]))
            stages[name] = Stage(name, type(module).__name__, tuple(out.shape), saved, used,
                                 count_parameters(module))
        return hook

    handles = [unet.get_submodule(name).register_forward_hook(hook_for(name), with_kwargs=True) for name in order]
    try:
        unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
    finally:
        for handle in handles:
            handle.remove()
    return [Stage("sample", "input", tuple(sample.shape))] + [stages[name] for name in order]


def format_stages(stages: Sequence[Stage]) -> str:
    """A text table of :func:`trace_unet`'s stages: resolution, channels, skips saved/used, parameters."""
    if not stages:
        raise ValueError("stages is empty: pass the list trace_unet(...) returns.")
    rows = [("stage", "block", "resolution", "channels", "skips saved", "skips used", "parameters")]
    for s in stages:
        rows.append((
            s.name, s.kind, f"{s.shape[2]}x{s.shape[3]}", str(s.channels),
            str(len(s.skips_saved)) if s.skips_saved else "", str(len(s.skips_used)) if s.skips_used else "",
            f"{s.parameters:,}" if s.name != "sample" else "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
    max_period: float = 10_000.0,
) -> torch.Tensor:
    """The sinusoidal timestep embedding: ``timesteps`` ``[B]`` -> ``[B, dim]`` float32, values in [-1, 1].

    With ``half = dim // 2`` frequencies ``f_i = max_period ** (-i / (half - freq_shift))``,
    ``i = 0 ... half-1`` (from 1 down to about 1/max_period), the embedding is
    ``[cos(t f_0), ..., cos(t f_{half-1}), sin(t f_0), ..., sin(t f_{half-1})]``
    (``flip_sin_to_cos=True``, SD's setting; ``False`` puts the sines first). SD 1.x uses
    ``freq_shift = 0`` (``unet.config.freq_shift``) and ``dim = block_out_channels[0]``.
    The same numbers as diffusers' ``unet.time_proj(timesteps)``.
    """
    if not isinstance(timesteps, torch.Tensor):
        raise TypeError(f"timesteps must be a tensor [B], got {type(timesteps).__name__}. Fix: torch.tensor([t]).")
    if timesteps.ndim != 1:
        raise ValueError(
            f"timesteps has shape {tuple(timesteps.shape)}; expected a 1-D tensor [B]. Fix: timesteps.reshape(-1)."
        )
    if not is_int(dim, 2) or dim % 2:
        raise ValueError(f"dim must be an even int >= 2 (half cosines, half sines), got {dim!r}.")
    half = dim // 2
    if half - freq_shift <= 0:
        raise ValueError(f"freq_shift={freq_shift!r} must be below dim // 2 = {half}; SD uses 0.")
    i = torch.arange(half, dtype=torch.float32, device=timesteps.device)            # [half]
    freqs = torch.exp(-math.log(max_period) * i / (half - freq_shift))               # [half], 1 ... ~1/max_period
    angles = timesteps.float()[:, None] * freqs[None, :]                             # [B, half]
    sin, cos = torch.sin(angles), torch.cos(angles)
    return torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)          # [B, dim]


def guidance_scale_embedding(w: torch.Tensor, dim: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The guidance scale as an extra time input, for U-Nets distilled to do guidance in one call.

    A guidance-distilled U-Net (Meng et al. 2023; latent consistency models) has
    ``unet.config.time_cond_proj_dim`` set: it takes ``w = guidance_scale - 1`` ``[B]`` as a second
    sinusoidal embedding (``timestep_cond``), added to the timestep's, instead of two predictions
    mixed by classifier-free guidance. Returns ``[B, dim]``:
    ``[sin(1000 w f_0) ... sin(1000 w f_{h-1}), cos(...)]`` with ``h = dim // 2`` frequencies
    ``f_i = 10000 ** (-i / (h - 1))`` (a zero appended for odd ``dim``): the pipeline's
    ``get_guidance_scale_embedding(w, dim)``.
    """
    if not isinstance(w, torch.Tensor) or w.ndim != 1:
        raise ValueError("w must be a 1-D tensor [B] of guidance_scale - 1, e.g. torch.tensor([7.5 - 1]).")
    check_int("dim", dim, low=4, expected="an int >= 4 (unet.config.time_cond_proj_dim)")
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = (w * 1000.0).to(dtype)[:, None] * freqs[None, :]                        # [B, half]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb                  # [B, dim]


# The U-Net's top-level parts in the order its forward pass runs them (diffusers registers
# mid_block after up_blocks, so ``named_modules()`` alone lists it last).
FLOW_ORDER = ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block", "up_blocks",
              "conv_norm_out", "conv_act", "conv_out")


def named_modules_in_order(unet) -> list[tuple[str, torch.nn.Module]]:
    """``unet.named_modules()`` (without the root) sorted in data-flow order: down blocks, middle block, up blocks.

    Within a top-level part the order is PyTorch's registration order; parts not in :data:`FLOW_ORDER`
    come last.
    """
    _check_unet(unet)
    named = [(name, m) for name, m in unet.named_modules() if name]

    def rank(item: tuple[str, torch.nn.Module]) -> int:
        top = item[0].split(".", 1)[0]
        return FLOW_ORDER.index(top) if top in FLOW_ORDER else len(FLOW_ORDER)

    return sorted(named, key=rank)  # sorted() is stable: registration order within a part


def cross_attention_layers(unet) -> list[tuple[str, torch.nn.Module]]:
    """Every cross-attention layer of ``unet`` in data-flow order: ``(name, module)`` for each ``attn2``."""
    return [(name, m) for name, m in named_modules_in_order(unet)
            if name.endswith("attn2") and all(hasattr(m, a) for a in ("to_q", "to_k", "to_v", "heads"))]


@torch.no_grad()
def trace_cross_attention(
    unet, sample: torch.Tensor, timestep: int | torch.Tensor, encoder_hidden_states: torch.Tensor
) -> list[CrossAttentionShapes]:
    """Run ``unet`` once and record the query, key and value shapes of every ``attn2`` (forward hooks on
    ``to_q``, ``to_k``, ``to_v``). Same inputs as :func:`trace_unet`; works on the ``meta`` device."""
    _check_unet(unet)
    _check_inputs(unet, sample, encoder_hidden_states)
    layers = cross_attention_layers(unet)
    seen: dict[tuple[str, str], Shape] = {}
    handles = []
    for name, attn in layers:
        for part in ("to_q", "to_k", "to_v"):
            def hook(module, args, output, key=(name, part)):
                seen[key] = tuple(output.shape)
            handles.append(getattr(attn, part).register_forward_hook(hook))
    try:
        unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
    finally:
        for handle in handles:
            handle.remove()
    return [CrossAttentionShapes(name, seen[name, "to_q"], seen[name, "to_k"], seen[name, "to_v"], int(attn.heads))
            for name, attn in layers]


def cross_attention(
    attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One cross-attention layer by hand, as diffusers' ``Attention`` computes it (Vaswani et al. 2017, eq. 1).

    ``hidden_states`` ``[B, N, C]``: the image features, one row per latent position (N = h*w);
    ``encoder_hidden_states`` ``[B, L, d]``: the text embeddings. ``Q = to_q(x)``, ``K = to_k(c)``,
    ``V = to_v(c)``, split into ``attn.heads`` heads of ``d_head`` channels;
    ``probs = softmax(Q K^T / sqrt(d_head))`` ``[B, heads, N, L]``; ``out = to_out(probs V)`` ``[B, N, C]``.
    Returns ``(out, probs)``. Supports the plain layers SD 1.x uses (no norms, no residual inside).
    """
    for attr in ("group_norm", "spatial_norm", "norm_cross", "norm_q", "norm_k"):
        if getattr(attn, attr, None):
            raise ValueError(
                f"this attention layer has {attr} set; cross_attention implements the plain layer SD 1.x uses "
                "(no norms inside). Call the module itself for other architectures."
            )
    if getattr(attn, "residual_connection", False) or getattr(attn, "rescale_output_factor", 1.0) != 1.0:
        raise ValueError("this attention layer adds a residual or rescales its output; cross_attention implements "
                         "SD 1.x's plain layer only.")
    if hidden_states.ndim != 3 or encoder_hidden_states.ndim != 3:
        raise ValueError(
            f"hidden_states {tuple(hidden_states.shape)} and encoder_hidden_states "
            f"{tuple(encoder_hidden_states.shape)} must both be [B, tokens, channels] (image features [B, h*w, C], "
            "text [B, L, d])."
        )
    b, heads = hidden_states.shape[0], int(attn.heads)
    q = attn.to_q(hidden_states)                                  # [B, N, inner]
    k = attn.to_k(encoder_hidden_states)                          # [B, L, inner]
    v = attn.to_v(encoder_hidden_states)                          # [B, L, inner]
    d_head = q.shape[-1] // heads

    def split(x: torch.Tensor) -> torch.Tensor:                  # [B, n, inner] -> [B, heads, n, d_head]
        return x.reshape(b, -1, heads, d_head).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d_head)          # [B, heads, N, L]
    probs = scores.float().softmax(dim=-1).to(q.dtype)
    out = (probs @ v).transpose(1, 2).reshape(b, -1, heads * d_head)   # [B, N, inner]
    out = attn.to_out[0](out)                                     # [B, N, C]
    if len(attn.to_out) > 1:
        out = attn.to_out[1](out)                                 # dropout: does nothing in eval mode
    return out, probs


def _abar(timesteps: int | torch.Tensor, alphas_cumprod: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``alphas_cumprod[t]`` shaped ``[B, 1, 1, ...]`` to broadcast over ``like``, on its device and dtype."""
    if not isinstance(alphas_cumprod, torch.Tensor) or alphas_cumprod.ndim != 1:
        raise ValueError("alphas_cumprod must be a 1-D tensor [T], e.g. scheduler.alphas_cumprod.")
    if isinstance(timesteps, bool):
        raise TypeError("timesteps must be an int or an integer tensor, not a bool.")
    if isinstance(timesteps, numbers.Integral):
        timesteps = torch.tensor([int(timesteps)])
    if not isinstance(timesteps, torch.Tensor) or timesteps.is_floating_point():
        raise TypeError(f"timesteps must be an int or an integer tensor, got {timesteps!r}. Fix: timesteps.long().")
    t = timesteps.reshape(-1).long().cpu()
    if t.numel() not in (1, like.shape[0]):
        raise ValueError(f"got {t.numel()} timesteps for a batch of {like.shape[0]}; expected 1 or {like.shape[0]}.")
    if bool(((t < 0) | (t >= alphas_cumprod.numel())).any()):
        raise ValueError(
            f"timesteps {t.tolist()[:5]} out of range: expected integers in [0, {alphas_cumprod.numel() - 1}]."
        )
    abar = alphas_cumprod.cpu()[t].to(like.device, torch.float32)
    return abar.reshape(-1, *([1] * (like.ndim - 1)))


def predict_x0(
    noisy: torch.Tensor, noise_pred: torch.Tensor, timesteps: int | torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """The clean latent the predicted noise implies: the forward process's closed form solved for ``x_0``.

    ``x0_hat = (x_t - sqrt(1 - abar_t) * eps_hat) / sqrt(abar_t)`` (DDPM eq. 15), with
    ``abar_t = alphas_cumprod[t]``. ``noisy`` ``x_t`` and ``noise_pred`` ``eps_hat``: ``[B, C, h, w]``;
    ``timesteps``: an int or 1 or B integer timesteps. Computed in float32, returned in ``noisy``'s
    dtype. The same as diffusers' ``scheduler.step(...).pred_original_sample`` (DDPM/DDIM, epsilon
    prediction, no clipping).
    """
    if noisy.shape != noise_pred.shape:
        raise ValueError(f"noisy {tuple(noisy.shape)} and noise_pred {tuple(noise_pred.shape)} must have the same "
                         "shape: the U-Net predicts one noise value per latent element.")
    abar = _abar(timesteps, alphas_cumprod, noisy)
    x0 = (noisy.float() - (1 - abar).sqrt() * noise_pred.float()) / abar.sqrt()
    return x0.to(noisy.dtype)


def classifier_free_guidance(
    noise_pred_uncond: torch.Tensor, noise_pred_text: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ``uncond + s * (text - uncond)``.

    ``noise_pred_uncond``: the prediction for the empty prompt, ``noise_pred_text``: for the prompt,
    both ``[B, C, h, w]``; ``guidance_scale`` ``s``: 0 gives the unconditional prediction, 1 the
    conditional one, s > 1 goes past it, away from the unconditional one (SD's default is 7.5).
    The same line as in diffusers' ``StableDiffusionPipeline.__call__``.
    """
    if noise_pred_uncond.shape != noise_pred_text.shape:
        raise ValueError(f"noise_pred_uncond {tuple(noise_pred_uncond.shape)} and noise_pred_text "
                         f"{tuple(noise_pred_text.shape)} must have the same shape. From one U-Net call on a "
                         "doubled batch: noise_pred_uncond, noise_pred_text = noise_pred.chunk(2).")
    if not is_number(guidance_scale):
        raise TypeError(f"guidance_scale must be a number, got {type(guidance_scale).__name__}.")
    return noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)


@torch.no_grad()
def mse_by_timestep(
    unet,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    noise: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    batch_size: int = 8,
) -> torch.Tensor:
    """The U-Net's noise-prediction error at each timestep: ``[len(timesteps)]`` float32, on the CPU.

    For every ``t``: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with the same ``noise`` ``eps``,
    then ``mean((eps_theta(x_t, t, c) - eps)^2)`` over all elements of the batch. ``latents``
    ``[B, C, h, w]`` (scaled, as the U-Net sees them), ``encoder_hidden_states`` ``[B, L, d]``,
    ``noise`` ``[B, C, h, w]``. The U-Net runs on at most ``batch_size`` latents at a time.
    """
    _check_unet(unet)
    _check_inputs(unet, latents, encoder_hidden_states)
    if noise.shape != latents.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have the shape of latents {tuple(latents.shape)}.")
    positive_int("batch_size", batch_size)
    device, dtype = latents.device, latents.dtype
    noise = noise.to(device, dtype)
    errors = []
    for t in timesteps:
        abar = _abar(int(t), alphas_cumprod, latents)
        noisy = (abar.sqrt() * latents.float() + (1 - abar).sqrt() * noise.float()).to(dtype)   # [B, C, h, w]
        squared = 0.0
        for start in range(0, latents.shape[0], batch_size):
            part = slice(start, start + batch_size)
            pred = unet(noisy[part], int(t), encoder_hidden_states=encoder_hidden_states[part]).sample
            squared += float(((pred.float() - noise[part].float()) ** 2).sum())
        errors.append(squared / noise.numel())
    return torch.tensor(errors, dtype=torch.float32)


@dataclass
class UNetCall:
    """One recorded U-Net call: its inputs and its output (detached copies)."""

    sample: torch.Tensor
    timestep: torch.Tensor
    encoder_hidden_states: torch.Tensor
    noise_pred: torch.Tensor


@contextmanager
def capture_unet_calls(unet) -> Iterator[list[UNetCall]]:
    """Record every forward call of ``unet`` inside the ``with`` block, inputs and output.

    ``with capture_unet_calls(pipe.unet) as calls: pipe(...)``: afterwards ``calls[i]`` holds the
    ``sample`` (with classifier-free guidance the pipeline's doubled batch ``[2B, C, h, w]``,
    unconditional half first), ``timestep``, ``encoder_hidden_states`` and ``noise_pred`` of step ``i``.
    Uses a public ``register_forward_hook``; the hook is removed on exit.
    """
    _check_unet(unet)
    calls: list[UNetCall] = []

    def hook(module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        text = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        calls.append(UNetCall(sample.detach().clone(), torch.as_tensor(timestep).detach().clone(),
                              text.detach().clone(), _first(output).detach().clone()))

    handle = unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()
