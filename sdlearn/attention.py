"""Attention maps: which pixels of the picture listen to which word of the prompt, and to which other pixels.

Every cross-attention layer (``attn2``) of SD's U-Net computes, for each latent position
``i`` (a query, from the picture) and each of the ``L = 77`` text tokens ``j`` (keys, from
the prompt), ``A = softmax(Q K^T / sqrt(d_head))`` (Vaswani et al. 2017, eq. 1): row ``i`` is
a distribution over the tokens, ``sum_j A[i, j] = 1``. Column ``j``, laid out on the
latent grid, is a *heat map* of where token ``j`` is read. DAAM (Tang et al. 2023,
"What the DAAM: Interpreting Stable Diffusion Using Cross Attention") sums these maps
over heads, layers and denoising steps; this module keeps enough to also break them down
by resolution, by layer and by step.

- :class:`AttentionStore` receives the probabilities and keeps only running sums, already
  averaged over heads and shrunk, so memory does not grow with the image or the run length
  beyond the bound of :func:`memory_bound`.
- :class:`StoreAttnProcessor` is a diffusers attention processor that computes attention
  exactly as diffusers' ``AttnProcessor`` (or, under attention slicing, ``SlicedAttnProcessor``)
  does and hands the probabilities to the store; :func:`capture_attention` installs one per
  layer with the public ``unet.set_attn_processor`` and always puts the original processors
  back. No monkey-patching: a forward pre-hook on the U-Net (public PyTorch API) only counts
  the denoising steps.
- :func:`word_positions` (:func:`word_index` to look a word up) and :func:`heat_map` turn a word of the prompt into a map; :func:`show_heat_maps`
  overlays maps on the picture.
- How well words localise on the toy world (how often a word's map peaks inside that word's object) is
  measured in :mod:`sdlearn.evaluate` (:func:`sdlearn.evaluate.measure_localisation`).

Memory-saving settings a learner on a small GPU uses, and how capture treats them:
float16 weights (maps are summed in float32), ``pipe.enable_attention_slicing()`` (honoured:
attention is computed slice by slice with the same slice size), ``enable_xformers_memory_efficient_attention()``
and PyTorch's SDPA (self-attention layers that are not captured keep their processor; cross-attention,
with only 77 keys, is computed explicitly, which costs little), ``pipe.enable_vae_slicing()`` /
``enable_vae_tiling()`` (the VAE is untouched) and ``enable_model_cpu_offload()`` (its hooks move
modules; processors and the step-counting hook are unaffected). tests/test_attention.py checks float16, slicing
and SDPA on the CPU; xFormers and CPU offload need a GPU and are not tested there. Call these settings *before*
entering :func:`capture_attention`: a processor change inside the ``with`` block replaces the capture, and
the block's exit says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models import attention_processor as _ap
from matplotlib.figure import Figure

from sdlearn._checks import check_int, is_int, is_number, positive_int
from sdlearn.images import as_picture

KEEP_MODES = ("conditional", "all")

# Processors that compute plain softmax attention, so computing it explicitly here gives the same numbers.
PLAIN_PROCESSORS = tuple(
    cls for cls in (getattr(_ap, name, None) for name in (
        "AttnProcessor", "AttnProcessor2_0", "SlicedAttnProcessor", "XFormersAttnProcessor",
        "FusedAttnProcessor2_0", "AttnProcessorNPU", "XLAFlashAttnProcessor2_0"))
    if isinstance(cls, type)
)

Resolution = tuple[int, int]


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer as the store saw it.

    ``name``: its module path (``"up_blocks.1.attentions.0.transformer_blocks.0.attn2"``);
    ``kind``: ``"cross"`` (``attn2``: picture -> text) or ``"self"`` (``attn1``: picture -> picture);
    ``resolution``: ``(h, w)`` of its query grid; ``heads``: its number of heads; ``index``:
    its place in the order the U-Net calls the layers (data-flow order).
    """

    name: str
    kind: str
    resolution: Resolution
    heads: int
    index: int


def _is_side(value) -> bool:
    return is_int(value, 1)


def _shrink(maps: torch.Tensor, side: int) -> torch.Tensor:
    """``maps`` ``[..., h, w]`` average-pooled so neither side exceeds ``side`` (unchanged if already small)."""
    h, w = maps.shape[-2:]
    if h <= side and w <= side:
        return maps
    lead = maps.shape[:-2]
    pooled = F.adaptive_avg_pool2d(maps.reshape(-1, 1, h, w), (min(h, side), min(w, side)))
    return pooled.reshape(*lead, *pooled.shape[-2:])


def resize(maps: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """``maps`` ``[n, k, h, w]`` to ``[n, k, H, W]`` (``size``: ``(H, W)`` or one side): bilinear when growing,
    area averaging when shrinking.

    Both weight their inputs with non-negative weights that sum to 1, so maps that sum to 1 over
    the tokens at every position still do after resizing. (DAAM upsamples with bicubic interpolation,
    whose negative weights overshoot below 0; bilinear cannot.)
    """
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4:
        raise ValueError("maps must be a tensor [n, k, h, w]; add the missing axes with maps[None].")
    h, w = maps.shape[-2:]
    H, W = _as_size(size, None)
    if (h, w) == (H, W):
        return maps
    if H <= h and W <= w:
        return F.adaptive_avg_pool2d(maps, (H, W))
    return F.interpolate(maps, size=(H, W), mode="bilinear", align_corners=False, antialias=H < h or W < w)


def _as_size(size: int | Sequence[int] | None, default: Resolution | None) -> Resolution:
    if size is None:
        if default is None:
            raise ValueError("no size given and the store has seen no U-Net call to take the latent size from.")
        return default
    if _is_side(size):
        return (size, size)
    if isinstance(size, Sequence) and len(size) == 2 and all(_is_side(s) for s in size):
        return (int(size[0]), int(size[1]))
    raise ValueError(f"size must be an int >= 1 or a pair (height, width), got {size!r}.")


class AttentionStore:
    """Running sums of attention probabilities, averaged over heads and shrunk on the fly.

    Filled by :class:`StoreAttnProcessor` (through :func:`capture_attention`); read with
    :meth:`maps`, :meth:`self_attention` and :meth:`token_shares`. What it keeps, all float32, for the
    ``n`` kept samples of the batch and the ``L`` text tokens:

    - per cross-attention layer: the sum over steps of its map, mean over heads, ``[n, L, h, w]``
      at the layer's own resolution, average-pooled to at most ``max_side`` per side;
    - per step and per resolution: the sum over that resolution's layers, ``[n, L, h, w]``
      average-pooled to at most ``step_side`` (what the by-timestep breakdown needs);
    - per resolution of at most ``self_max_side`` per side: the sum over layers and steps of the
      full self-attention matrix, mean over heads, ``[n, h*w, h*w]`` (for "where does this pixel look").

    ``keep="conditional"`` keeps the second half of every batch: with classifier-free guidance the
    pipeline runs the U-Net on ``[unconditional, conditional]``, and only the conditional half reads
    the prompt. ``keep="all"`` keeps every sample (a U-Net run without guidance).
    The memory this takes is :func:`memory_bound`; :meth:`nbytes` measures it.
    """

    def __init__(self, *, keep: str = "conditional", max_side: int = 64, step_side: int = 16,
                 self_max_side: int = 32) -> None:
        if keep not in KEEP_MODES:
            raise ValueError(f"keep must be one of {KEEP_MODES}, got {keep!r}. 'conditional' for a pipeline run "
                             "with classifier-free guidance (the batch is [uncond, cond]), 'all' for a U-Net run "
                             "without it.")
        for name, value in (("max_side", max_side), ("step_side", step_side)):
            positive_int(name, value)
        check_int("self_max_side", self_max_side, low=0, expected="an int >= 0 (0: keep no self-attention)")
        self.keep, self.max_side, self.step_side, self.self_max_side = keep, max_side, step_side, self_max_side
        self.layers: dict[str, AttentionLayer] = {}
        self.timesteps: list[float | None] = []     # one per U-Net call; None where it could not be read (meta)
        self.latent_size: Resolution | None = None
        self.batch: int | None = None                # n, the kept samples
        self.tokens: int | None = None               # L
        self._layer_sum: dict[str, torch.Tensor] = {}
        self._layer_calls: dict[str, int] = {}
        self._step_sum: list[dict[Resolution, torch.Tensor]] = []
        self._step_count: list[dict[Resolution, int]] = []
        self._self_sum: dict[Resolution, torch.Tensor] = {}
        self._self_count: dict[Resolution, int] = {}

    # ---- filling -------------------------------------------------------------------------------------------

    def begin_step(self, latent_size: Resolution, timestep: float | None = None) -> None:
        """Start a new U-Net call (one denoising step): its latent ``(h, w)`` and timestep."""
        if self.latent_size is not None and tuple(latent_size) != self.latent_size:
            raise ValueError(f"this store holds maps for {self.latent_size[0]}x{self.latent_size[1]} latents, and the "
                             f"U-Net now runs on {latent_size[0]}x{latent_size[1]}. Use a fresh capture_attention "
                             "block for each image size.")
        self.latent_size = (int(latent_size[0]), int(latent_size[1]))
        self.timesteps.append(timestep)
        self._step_sum.append({})
        self._step_count.append({})

    def resolution_of(self, queries: int) -> Resolution:
        """The ``(h, w)`` grid of a layer with ``queries`` positions, from the latent size.

        The U-Net's stride-2 convolutions turn a side ``s`` into ``ceil(s / 2)``, so a layer ``k`` levels
        down has ``ceil(h / 2^k) x ceil(w / 2^k)`` positions.
        """
        if self.latent_size is not None:
            h, w = self.latent_size
            while True:
                if h * w == queries:
                    return (h, w)
                if h == 1 and w == 1:
                    break
                h, w = -(-h // 2), -(-w // 2)
        side = math.isqrt(queries)
        if side * side == queries:
            return (side, side)
        raise ValueError(f"cannot lay {queries} query positions on a grid: the latent size is {self.latent_size}. "
                         "Run the U-Net inside capture_attention so the store sees the latents.")

    def wants_self(self, resolution: Resolution) -> bool:
        """Whether self-attention at ``resolution`` is kept (both sides at most ``self_max_side``)."""
        return max(resolution) <= self.self_max_side

    def kept_rows(self, batch: int) -> int:
        """The first kept sample of a batch of ``batch``: ``batch // 2`` for ``keep="conditional"``, else 0."""
        if self.keep == "all":
            return 0
        if batch % 2:
            raise ValueError(
                f"keep='conditional' expects the pipeline's doubled batch [unconditional, conditional], but the U-Net "
                f"ran on a batch of {batch}, an odd number: it ran without classifier-free guidance "
                "(guidance_scale <= 1, or a direct U-Net call). Use capture_attention(unet, keep='all')."
            )
        return batch // 2

    def record(self, name: str, kind: str, heads: int, probs: torch.Tensor) -> None:
        """Add one layer call: ``probs`` ``[n, N, M]``, attention probabilities (mean over heads) of the kept
        samples, N queries, M keys (M = L tokens for cross-attention, N for self-attention)."""
        if not self._step_sum:
            self.begin_step(self.latent_size or self.resolution_of(probs.shape[1]))
        n, queries, keys = probs.shape
        resolution = self.resolution_of(queries)
        if name not in self.layers:
            self.layers[name] = AttentionLayer(name, kind, resolution, int(heads), len(self.layers))
        if self.batch is None:
            self.batch = n
        elif n != self.batch:
            raise ValueError(f"this store holds maps for a batch of {self.batch}, and {name} now sees {n}. Use a "
                             "fresh capture_attention block for each batch.")
        probs = probs.float()
        if kind == "self":
            self._self_sum[resolution] = self._self_sum.get(resolution, 0) + probs
            self._self_count[resolution] = self._self_count.get(resolution, 0) + 1
            return
        if self.tokens is None:
            self.tokens = keys
        elif keys != self.tokens:
            raise ValueError(f"this store holds maps for {self.tokens} text tokens, and {name} now sees {keys}.")
        maps = probs.transpose(1, 2).reshape(n, keys, *resolution)                      # [n, L, h, w]
        layer_map = _shrink(maps, self.max_side)
        self._layer_sum[name] = self._layer_sum[name] + layer_map if name in self._layer_sum else layer_map.clone()
        self._layer_calls[name] = self._layer_calls.get(name, 0) + 1
        step_map = _shrink(maps, self.step_side)
        sums, counts = self._step_sum[-1], self._step_count[-1]
        sums[resolution] = sums[resolution] + step_map if resolution in sums else step_map.clone()
        counts[resolution] = counts.get(resolution, 0) + 1

    # ---- reading -------------------------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """How many U-Net calls (denoising steps) the store has seen."""
        return len(self._step_sum)

    @property
    def cross_layers(self) -> list[AttentionLayer]:
        """The cross-attention layers seen, in data-flow order."""
        return [layer for layer in self.layers.values() if layer.kind == "cross"]

    @property
    def resolutions(self) -> list[Resolution]:
        """The cross-attention resolutions seen, finest first."""
        return sorted({layer.resolution for layer in self.cross_layers}, key=lambda r: -r[0] * r[1])

    @property
    def self_resolutions(self) -> list[Resolution]:
        """The resolutions whose self-attention is kept, finest first."""
        return sorted(self._self_sum, key=lambda r: -r[0] * r[1])

    def _check_filled(self) -> None:
        if not self._layer_sum:
            raise ValueError("the store is empty: no cross-attention was recorded. Run the pipeline or the U-Net "
                             "inside the `with capture_attention(unet) as store:` block, not after it.")

    def _resolution_filter(self, resolutions, available: Sequence[Resolution]) -> list[Resolution]:
        if resolutions is None:
            return list(available)
        if _is_side(resolutions) or (isinstance(resolutions, tuple) and len(resolutions) == 2
                                     and all(_is_side(r) for r in resolutions)):
            resolutions = [resolutions]
        chosen = []
        for r in resolutions:
            match = [a for a in available if (a[0] == r if _is_side(r) else tuple(a) == tuple(r))]
            if not match:
                raise ValueError(f"no stored maps at resolution {r!r}; the store has "
                                 f"{[f'{a[0]}x{a[1]}' for a in available]} (give the height, e.g. {available[0][0]}).")
            chosen += [m for m in match if m not in chosen]
        return chosen

    def _layer_filter(self, layers) -> list[AttentionLayer]:
        cross = self.cross_layers
        if layers is None:
            return cross
        if isinstance(layers, (str, int)):
            layers = [layers]
        chosen = []
        for item in layers:
            if not (isinstance(item, str) or is_int(item)):
                raise TypeError(f"layers must hold layer names or indices into store.cross_layers, got {item!r}.")
            if isinstance(item, int):
                if not -len(cross) <= item < len(cross):
                    raise ValueError(f"layer index {item} is out of range: the store has {len(cross)} "
                                     "cross-attention layers (store.cross_layers).")
                chosen.append(cross[item])
            else:
                found = [layer for layer in cross if layer.name == item.removesuffix(".processor")]
                if not found:
                    raise ValueError(f"no cross-attention layer named {item!r}; names are in store.cross_layers, "
                                     f"e.g. {cross[0].name!r}.")
                chosen.append(found[0])
        return chosen

    def _step_filter(self, steps) -> list[int]:
        if is_int(steps):
            steps = [steps]
        if isinstance(steps, slice):
            return list(range(self.steps))[steps]
        chosen = []
        for s in steps:
            if not is_int(s, -self.steps, self.steps - 1):
                raise ValueError(f"step {s!r} is out of range: the store has seen {self.steps} U-Net calls "
                                 f"(steps 0 ... {self.steps - 1}; negative indices count from the end).")
            chosen.append(s % self.steps)
        return chosen

    def maps(self, *, layers=None, resolutions=None, steps=None,
             size: int | Sequence[int] | None = None) -> torch.Tensor:
        """Per-token heat maps ``[n, L, H, W]``, float32, on the device the U-Net ran on.

        The mean over the chosen layers of each layer's map (mean over heads and steps), each resized
        to ``size`` (default: the latent size; bilinear up, area averaging down). At every position the
        values sum to 1 over the ``L`` tokens, since each is a weighted mean of softmax rows.

        ``layers``: names or indices into :attr:`cross_layers`; ``resolutions``: heights (``8``) or
        ``(h, w)`` pairs; ``steps``: step indices or a slice (then the per-step sums are used, kept per
        resolution at most ``step_side`` per side, so ``steps`` combines with ``resolutions``, not ``layers``).
        """
        self._check_filled()
        size = _as_size(size, self.latent_size)
        if steps is None:
            chosen = self._layer_filter(layers)
            if resolutions is not None:
                keep = set(self._resolution_filter(resolutions, self.resolutions))
                chosen = [layer for layer in chosen if layer.resolution in keep]
            if not chosen:
                raise ValueError("no cross-attention layer matches both layers= and resolutions=.")
            total = sum(resize(self._layer_sum[la.name] / self._layer_calls[la.name], size) for la in chosen)
            return total / len(chosen)
        if layers is not None:
            raise ValueError("per-step maps are kept per resolution, not per layer (that keeps memory bounded): "
                             "pass steps= with resolutions=, or layers= without steps=.")
        chosen_res = self._resolution_filter(resolutions, self.resolutions)
        total, count = 0, 0
        for s in self._step_filter(steps):
            for r in chosen_res:
                if r in self._step_sum[s]:
                    total = total + resize(self._step_sum[s][r], size)
                    count += self._step_count[s][r]
        if count == 0:
            raise ValueError("the chosen steps hold no cross-attention maps.")
        return total / count

    def token_shares(self, **selection) -> torch.Tensor:
        """``[n, L]``: the share of all cross-attention each token gets (mean of its map; sums to 1 over tokens).
        Takes the same ``layers``/``resolutions``/``steps`` selection as :meth:`maps`."""
        return self.maps(**selection).mean(dim=(-2, -1))

    def self_attention(self, point: tuple[float, float], *, resolutions=None,
                       size: int | Sequence[int] | None = None) -> torch.Tensor:
        """Where the picture position at ``point`` looks: ``[n, H, W]``, the mean over the kept resolutions' layers,
        heads and steps, resized to ``size`` (default the latent size) and scaled to sum to 1 over the positions.

        ``point``: ``(x, y)`` as fractions of the image width and height in [0, 1) (``(0.25, 0.5)`` is the middle
        of the left half, like ``sdlearn.world`` object centres). At each resolution the query is the grid cell
        that contains the point.
        """
        if not self._self_sum:
            raise ValueError("no self-attention was kept: it is kept for resolutions of at most self_max_side "
                             f"(= {self.self_max_side}) per side. Use capture_attention(unet, self_max_side=...) with "
                             "a larger value, or check that the U-Net ran inside the block.")
        if (not isinstance(point, Sequence) or len(point) != 2
                or not all(is_number(v) and 0 <= v < 1 for v in point)):
            raise ValueError(f"point must be (x, y), fractions of the image width and height in [0, 1), got {point!r}. "
                             "For pixel (row, col) of an H x W image use ((col + 0.5) / W, (row + 0.5) / H).")
        size = _as_size(size, self.latent_size)
        chosen = self._resolution_filter(resolutions, self.self_resolutions)
        total = 0
        for h, w in chosen:
            row, col = int(point[1] * h), int(point[0] * w)
            rows = self._self_sum[(h, w)][:, row * w + col]                           # [n, h*w]: its layer calls' sum
            total = total + resize(rows.reshape(-1, 1, h, w), size)[:, 0] * (h * w)  # every layer call weighs the same
        return total / total.sum(dim=(-2, -1), keepdim=True)                       # a distribution over H x W

    def nbytes(self) -> int:
        """Bytes held by the stored sums (works on the ``meta`` device, where nothing is allocated)."""
        tensors = [*self._layer_sum.values(), *self._self_sum.values(),
                   *(t for step in self._step_sum for t in step.values())]
        return sum(t.numel() * t.element_size() for t in tensors)


def memory_bound(layers: Iterable[AttentionLayer], *, steps: int, batch: int = 1, tokens: int = 77,
                 max_side: int = 64, step_side: int = 16, self_max_side: int = 32) -> int:
    """Bytes an :class:`AttentionStore` holds after ``steps`` U-Net calls, for these layers (float32, 4 bytes):

    ``4 n [ L sum_cross min(h, max_side) min(w, max_side)``
    ``+ steps L sum_res min(h, step_side) min(w, step_side)``
    ``+ sum_res (h w)^2 over self-attention resolutions with h, w <= self_max_side ]``

    with ``n = batch`` kept samples, ``L = tokens``. It grows linearly with ``steps`` and not with the number of
    heads or layers per resolution. For SD 1.5 at 512x512 (latents 64x64: 16 cross-attention layers at
    64, 32, 16 and 8), 50 steps, one prompt with guidance (n = 1): 8.3 MB per-layer sums + 12.8 MB per-step sums
    + 4.5 MB self-attention at 32, 16 and 8 = about 26 MB, under 32 MiB (checked in tests/test_attention.py).
    While a layer runs, capture also holds its probabilities, ``batch x heads x queries x keys`` in the
    model's dtype (SD 1.5, 64x64 cross-attention with guidance: 2 x 8 x 4096 x 77 x 2 bytes = 10 MB in float16),
    divided by the number of slices under attention slicing.
    """
    layers = list(layers)
    cross = [la for la in layers if la.kind == "cross"]
    per_layer = sum(min(la.resolution[0], max_side) * min(la.resolution[1], max_side) for la in cross)
    per_step = sum(min(h, step_side) * min(w, step_side) for h, w in {la.resolution for la in cross})
    self_res = {la.resolution for la in layers if la.kind == "self" and max(la.resolution) <= self_max_side}
    per_self = sum((h * w) ** 2 for h, w in self_res)
    return 4 * batch * (tokens * per_layer + steps * tokens * per_step + per_self)


def call_processor(processor, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs):
    """Hand an attention call to ``processor`` (a layer's own), as diffusers' ``Attention.forward`` calls it."""
    extra = dict(kwargs)
    if temb is not None:
        extra["temb"] = temb
    return processor(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                     attention_mask=attention_mask, **extra)


def project_qkv(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                attention_mask: torch.Tensor | None, temb: torch.Tensor | None):
    """diffusers' ``AttnProcessor`` up to the attention scores: ``(query, key, value, attention_mask, context)``.

    ``query`` ``[B*heads, N, d_head]``, ``key``/``value`` ``[B*heads, M, d_head]`` (self-attention: ``M = N``); the
    mask prepared for the scores; ``context`` what :func:`finish_attention` needs to finish the layer.
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    shape = hidden_states.shape
    if input_ndim == 4:
        batch_size, channel, height, width = shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
    batch_size, sequence_length, _ = (
        hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    )
    attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)                                      # [B, N, inner]
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)                                # [B, M, inner]
    value = attn.to_v(encoder_hidden_states)                              # [B, M, inner]
    query = attn.head_to_batch_dim(query)                                 # [B*heads, N, d_head]
    key = attn.head_to_batch_dim(key)                                     # [B*heads, M, d_head]
    value = attn.head_to_batch_dim(value)                                 # [B*heads, M, d_head]
    return query, key, value, attention_mask, (residual, input_ndim, shape)


def finish_attention(attn, hidden_states: torch.Tensor, context) -> torch.Tensor:
    """The rest of diffusers' ``AttnProcessor`` after ``A V`` (``hidden_states`` ``[B*heads, N, d_head]``): heads
    merged, the output projection, the input's shape, the residual and the rescaling."""
    residual, input_ndim, shape = context
    hidden_states = attn.batch_to_head_dim(hidden_states)                 # [B, N, inner]
    hidden_states = attn.to_out[0](hidden_states)                         # linear projection
    hidden_states = attn.to_out[1](hidden_states)                         # dropout
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(*shape)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


class StoreAttnProcessor:
    """An attention processor that computes attention exactly as diffusers' ``AttnProcessor`` does and hands the
    probabilities, averaged over heads, to an :class:`AttentionStore`.

    One per attention layer (``name``: the layer's path; ``original``: the processor it replaces). Under attention
    slicing (``original`` is a ``SlicedAttnProcessor``) it computes the same slices. A self-attention layer whose
    resolution the store does not keep is handed to ``original`` untouched (its SDPA, xFormers or sliced kernel:
    no extra memory). The computation, for queries ``Q = to_q(x)``, keys ``K = to_k(c)`` and values ``V = to_v(c)``
    split into heads, is ``A = softmax(Q K^T / sqrt(d_head))`` ``[B*heads, N, M]``, ``out = to_out(A V)``.
    """

    def __init__(self, store: AttentionStore, name: str, original, *, capture: bool = True) -> None:
        self.store, self.name, self.original, self.capture = store, name, original, capture
        sliced = getattr(_ap, "SlicedAttnProcessor", None)
        self.slice_size = original.slice_size if sliced is not None and isinstance(original, sliced) else None

    def _delegate(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs):
        return call_processor(self.original, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        kind = "self" if encoder_hidden_states is None else "cross"
        if not self.capture:
            return self._delegate(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)
        queries = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        if kind == "self" and not self.store.wants_self(self.store.resolution_of(queries)):
            return self._delegate(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)

        # From here on, diffusers' AttnProcessor line by line (SlicedAttnProcessor's loop when slicing).
        query, key, value, attention_mask, context = project_qkv(attn, hidden_states, encoder_hidden_states,
                                                                 attention_mask, temb)
        heads = attn.heads
        batch = query.shape[0] // heads
        first = self.store.kept_rows(batch) * heads                           # rows of the kept samples
        kept = torch.zeros(query.shape[0] - first, query.shape[1], key.shape[1],
                           dtype=torch.float32, device=query.device)          # [n*heads, N, M]
        if self.slice_size is None:
            attention_probs = attn.get_attention_scores(query, key, attention_mask)   # [B*heads, N, M]
            hidden_states = torch.bmm(attention_probs, value)
            kept.copy_(attention_probs[first:])
        else:
            hidden_states = torch.zeros((query.shape[0], query.shape[1], value.shape[-1]),
                                        device=query.device, dtype=query.dtype)
            for start in range(0, query.shape[0], self.slice_size):
                end = start + self.slice_size
                mask_slice = attention_mask[start:end] if attention_mask is not None else None
                probs_slice = attn.get_attention_scores(query[start:end], key[start:end], mask_slice)
                hidden_states[start:end] = torch.bmm(probs_slice, value[start:end])
                lo = max(start, first)
                if lo < min(end, query.shape[0]):
                    kept[lo - first:end - first] = probs_slice[lo - start:]
        hidden_states = finish_attention(attn, hidden_states, context)

        n = kept.shape[0] // heads
        self.store.record(self.name, kind, heads, kept.view(n, heads, *kept.shape[1:]).mean(dim=1))
        return hidden_states


def _check_unet(unet) -> None:
    if not isinstance(unet, torch.nn.Module) or not hasattr(unet, "attn_processors") \
            or not hasattr(unet, "set_attn_processor"):
        raise TypeError(f"expected a diffusers UNet2DConditionModel (with attn_processors and set_attn_processor), "
                        f"got {type(unet).__name__}. Pass pipe.unet or components.unet.")


@contextmanager
def capture_attention(unet, *, keep: str = "conditional", max_side: int = 64, step_side: int = 16,
                      self_max_side: int = 32) -> Iterator[AttentionStore]:
    """Record attention maps of every U-Net call inside the ``with`` block::

        with capture_attention(pipe.unet) as store:
            image = pipe(prompt, guidance_scale=7.5).images[0]
        maps = store.maps(size=512)                # [1, 77, 512, 512]

    Installs one :class:`StoreAttnProcessor` per attention layer with ``unet.set_attn_processor`` and a forward
    pre-hook that counts U-Net calls; on exit, even after an exception, puts back the very processor objects that
    were there (attention slicing, xFormers or a custom processor included) and removes the hook. The other
    arguments are :class:`AttentionStore`'s. Raises ``ValueError`` before changing anything if a cross-attention
    layer has a processor that does not compute plain softmax attention (IP-Adapter, for instance), or if capture
    is already on.
    """
    _check_unet(unet)
    store = AttentionStore(keep=keep, max_side=max_side, step_side=step_side, self_max_side=self_max_side)
    originals = dict(unet.attn_processors)
    if not originals:
        raise ValueError(f"{type(unet).__name__} has no attention layers to capture.")
    processors = {}
    for key, original in originals.items():
        name = key.removesuffix(".processor")
        if isinstance(original, StoreAttnProcessor):
            raise ValueError(f"attention capture is already on for {name}: leave the other capture_attention "
                             "block before starting a new one (they would overwrite each other's maps).")
        plain = isinstance(original, PLAIN_PROCESSORS)
        is_cross = bool(getattr(unet.get_submodule(name), "is_cross_attention", name.endswith("attn2")))
        if is_cross and not plain:
            raise ValueError(
                f"{name} uses {type(original).__name__}, which does not compute plain softmax attention, so its "
                "cross-attention maps cannot be read without changing what it computes. Supported: "
                f"{', '.join(c.__name__ for c in PLAIN_PROCESSORS)}. Unload adapters first "
                "(e.g. pipe.unload_ip_adapter()) or call unet.set_default_attn_processor()."
            )
        processors[key] = StoreAttnProcessor(store, name, original, capture=plain)

    def count_step(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        t = None
        if isinstance(timestep, torch.Tensor):
            if timestep.device.type != "meta" and timestep.numel() >= 1:
                t = float(timestep.reshape(-1)[0])
        elif isinstance(timestep, (int, float)):
            t = float(timestep)
        store.begin_step(tuple(sample.shape[-2:]), t)

    unet.set_attn_processor(dict(processors))         # set_attn_processor empties the dict it is given
    handle = unet.register_forward_pre_hook(count_step, with_kwargs=True)
    try:
        yield store
    finally:
        handle.remove()
        replaced = [k for k, p in unet.attn_processors.items() if p is not processors.get(k)]
        unet.set_attn_processor(dict(originals))
    if replaced:
        raise RuntimeError(
            f"{len(replaced)} attention processors were changed inside the capture_attention block (e.g. by "
            "enable_attention_slicing() or enable_xformers_memory_efficient_attention()), so those layers were not "
            "recorded; the processors from before the block are back. Call such settings before the block."
        )


# ---- words and heat maps ---------------------------------------------------------------------------------------


def word_positions(tokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """Each whitespace-separated word of ``prompt`` with the positions of its tokens in the encoded prompt
    (position 0 is the start token, so the first word starts at 1). A word the tokenizer splits (CLIP's BPE:
    "astronaut" -> "astro", "naut") has several positions; their maps add up to the word's map."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}.")
    ids = tokenizer(prompt, add_special_tokens=True).input_ids
    limit = tokenizer.model_max_length
    words, pos, parts = [], 1, []
    for word in prompt.split():
        piece = tokenizer(word, add_special_tokens=False).input_ids
        words.append((word, list(range(pos, pos + len(piece)))))
        parts += piece
        pos += len(piece)
    if pos + 1 > limit:
        raise ValueError(f"the prompt is {pos + 1} tokens long; the text encoder reads {limit}, so the end of it is "
                         "cut off and has no map. Shorten the prompt.")
    if ids[1:-1] != parts:
        raise ValueError("the tokenizer encodes this prompt differently from its words one by one (punctuation "
                         "glued to a word?), so words cannot be matched to token positions. Put spaces around "
                         "punctuation.")
    return words


class WordNotInPrompt(KeyError):
    """A word looked up in :func:`word_index` that the prompt does not contain."""

    def __str__(self) -> str:           # KeyError shows its argument's repr; this message is meant to be read
        return str(self.args[0])


class WordIndex(Mapping):
    """The token positions of each word of a prompt, from :func:`word_index`: ``index["circle"] -> [3]``.

    A word that occurs more than once ("a red circle on the left and a blue square on the right":
    "a", "on", "the") maps to the positions of every occurrence, so its heat map is the sum of them;
    :meth:`occurrences` gives them one by one. A word that is not in the prompt raises
    :class:`WordNotInPrompt` with the prompt's words.
    """

    def __init__(self, prompt: str, words: list[tuple[str, list[int]]]) -> None:
        self.prompt = prompt
        self._occurrences: dict[str, list[list[int]]] = {}
        for word, positions in words:
            self._occurrences.setdefault(word, []).append(positions)

    def __getitem__(self, word: str) -> list[int]:
        return [p for positions in self.occurrences(word) for p in positions]

    def occurrences(self, word: str) -> list[list[int]]:
        """The positions of each occurrence of ``word``, in prompt order."""
        if word not in self._occurrences:
            raise WordNotInPrompt(
                f"{word!r} is not a word of the prompt {self.prompt!r}: a heat map exists only for the prompt's own "
                f"words, which are {', '.join(self._occurrences)}. Look up one of them, or change the prompt.")
        return [list(p) for p in self._occurrences[word]]

    def __iter__(self):
        return iter(self._occurrences)

    def __len__(self) -> int:
        return len(self._occurrences)


def word_index(tokenizer, prompt: str) -> WordIndex:
    """:func:`word_positions` as a lookup by word: ``word_index(tokenizer, prompt)["red"]``."""
    return WordIndex(prompt, word_positions(tokenizer, prompt))


def token_labels(tokenizer, prompt: str) -> list[str]:
    """A label for every one of the ``L`` token positions: ``"<start>"``, each token's text, ``"<end>"``, then
    ``"<pad>"`` (SD pads with the end token; the padding positions still carry a summary of the prompt)."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    n_real = len(tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids)
    tokens = [t.replace("</w>", "") for t in tokenizer.convert_ids_to_tokens(ids[1:n_real - 1])]
    return ["<start>", *tokens, "<end>"] + ["<pad>"] * (len(ids) - n_real)


def heat_map(maps: torch.Tensor, positions: int | Sequence[int]) -> torch.Tensor:
    """The map of one word: ``maps`` ``[..., L, H, W]`` summed over the token ``positions`` -> ``[..., H, W]``."""
    if not isinstance(maps, torch.Tensor) or maps.ndim < 3:
        raise ValueError("maps must be a tensor [..., L, H, W] (AttentionStore.maps), got "
                         f"{tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__}.")
    if is_int(positions):
        positions = [positions]
    positions = list(positions)
    L = maps.shape[-3]
    if not positions or not all(is_int(p, 0, L - 1) for p in positions):
        raise ValueError(f"positions must be token positions in [0, {L}), got {positions!r}. Get a word's positions "
                         "from word_positions(tokenizer, prompt).")
    return maps[..., positions, :, :].sum(dim=-3)


def normalise(heat: torch.Tensor) -> torch.Tensor:
    """``heat`` ``[..., H, W]`` scaled to [0, 1] per map (divided by its maximum), as DAAM shows its maps."""
    peak = heat.amax(dim=(-2, -1), keepdim=True)
    return heat / peak.clamp_min(torch.finfo(heat.dtype).tiny)


def show_heat_maps(image, heats: torch.Tensor, titles: Sequence[str], *, size: float = 1.6, alpha: float = 0.6,
                   cmap: str = "jet", suptitle: str | None = None) -> Figure:
    """The picture, then each heat map over it: ``image`` ``[H, W, 3]``, ``heats`` ``[k, H, W]`` (each shown on its
    own scale, 0 to its maximum), one title per map."""
    arr = as_picture(image)
    if not isinstance(heats, torch.Tensor) or heats.ndim != 3:
        raise ValueError("heats must be a tensor [k, H, W]: one map per panel.")
    if len(titles) != heats.shape[0]:
        raise ValueError(f"got {len(titles)} titles for {heats.shape[0]} maps; give one title per map.")
    if tuple(heats.shape[1:]) != arr.shape[:2]:
        raise ValueError(f"maps are {tuple(heats.shape[1:])} but the image is {arr.shape[:2]}: get the maps at the "
                         "image size, store.maps(size=image.shape[:2]).")
    shown = normalise(heats.float()).cpu().numpy()
    fig = Figure(figsize=(size * (len(titles) + 1), size + (0.5 if suptitle else 0.3)), layout="constrained")
    axes = fig.subplots(1, len(titles) + 1, squeeze=False)[0]
    axes[0].imshow(arr)
    axes[0].set_title("image", fontsize=8)
    for ax, heat, title in zip(axes[1:], shown, titles):
        ax.imshow(arr)
        ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return fig
