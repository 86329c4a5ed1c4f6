"""The text side of Stable Diffusion: tokens, the CLIP text encoder by hand, CLIP features.

Stable Diffusion 1.x turns a prompt into ``[B, 77, d]`` vectors in two steps: a CLIP
tokenizer maps it to 77 token ids (BOS, the words, EOS, padding), and CLIP's text
encoder, a causal transformer, maps the ids to one vector per position (its
``last_hidden_state``), which the U-Net reads through cross-attention.

This module keeps the pieces notebook 04 builds, written with public modules only
(``embeddings.token_embedding``, ``encoder.layers``, ``final_layer_norm``) so they do not
break when a library renames a private helper:

- :func:`tokenize`: prompts -> ids as the diffusers pipeline makes them, with a
  :class:`PromptTruncatedWarning` naming what did not fit; :func:`token_table` prints them.
- :func:`causal_mask`, :func:`run_encoder_layer`, :func:`encode_by_hand`: the text
  encoder's forward pass, equal to the library's ``last_hidden_state``.
- :func:`pooled_output`, :func:`cosine_similarity`: CLIP's sentence vector and the
  similarity between vectors.
- :func:`clip_text_features`, :func:`clip_image_features`, :func:`load_clip`: the full
  CLIP model (text and vision towers) that the bundled model ships in ``clip/``.

transformers 5 returns an output object from ``get_text_features`` and
``get_image_features`` (the embedding is its ``pooler_output``); earlier releases
return the tensor itself. The ``clip_*_features`` wrappers return the tensor either way.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from sdlearn._checks import check_int


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than the text encoder takes; the end was cut off."""


# --------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------


def _as_prompt_list(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence) and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    raise TypeError(
        f"prompts must be a str or a list of str, got {type(prompts).__name__}. "
        "Pass e.g. 'a red circle' or ['a red circle', 'a blue square']."
    )


def truncated_text(tokenizer, prompt: str) -> str:
    """The part of ``prompt`` that does not fit in ``tokenizer.model_max_length`` tokens ("" if it all fits).

    Like diffusers' pipeline, which logs the same text: the ids past the last position that
    fits (``model_max_length - 2`` content tokens, between BOS and EOS), decoded.
    """
    max_length = tokenizer.model_max_length
    ids = tokenizer(prompt, padding="longest", truncation=False).input_ids  # BOS ... EOS, any length
    if len(ids) <= max_length:
        return ""
    return tokenizer.decode(ids[max_length - 1 : -1], skip_special_tokens=True)


def tokenize(tokenizer, prompts: str | Sequence[str], *, device: str | torch.device = "cpu",
             warn: bool = True, padding: str = "max_length") -> torch.Tensor:
    """Prompts -> token ids ``[B, model_max_length]`` (int64), as Stable Diffusion's pipeline makes them.

    Each row is BOS, the prompt's tokens, EOS, then padding up to ``model_max_length``
    (77 for SD 1.x). A prompt with more than ``model_max_length - 2`` tokens is cut to fit
    (its row still ends with EOS); with ``warn=True`` a :class:`PromptTruncatedWarning`
    says which words were dropped, where diffusers only logs it.

    ``padding="longest"`` pads only to the longest prompt of the batch (``[B, L]``, ``L <=
    model_max_length``). CLIP's text encoder is causal and pools at the first EOS, so its
    pooled output is the same either way, for a fraction of the compute (contrastive training
    uses it); the U-Net's conditioning, the full ``last_hidden_state``, needs ``"max_length"``.
    """
    prompts = _as_prompt_list(prompts)
    if warn:
        for i, prompt in enumerate(prompts):
            dropped = truncated_text(tokenizer, prompt)
            if dropped:
                warnings.warn(
                    f"prompt {i} is longer than {tokenizer.model_max_length} tokens and was truncated; "
                    f"the text encoder never sees: {dropped!r}. Shorten the prompt, or put what matters first.",
                    PromptTruncatedWarning,
                    stacklevel=2,
                )
    return tokenizer(prompts, padding=padding, max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


@torch.no_grad()
def encode(tokenizer, text_encoder, prompts: str | Sequence[str], *, batch_size: int | None = None,
           device: str | torch.device | None = None, warn: bool = True) -> torch.Tensor:
    """Prompts -> the text embeddings the U-Net is conditioned on: ``last_hidden_state`` ``[B, L, d]``.

    Step 1 of Stable Diffusion's pipeline (its ``encode_prompt``): :func:`tokenize` to ``L =
    model_max_length`` ids, then one text-encoder call (``batch_size`` prompts per call; None:
    all at once). The embeddings come back in the text encoder's dtype, on ``device`` (default:
    the text encoder's), without gradients: they condition the U-Net, they are not trained here.
    """
    prompts = _as_prompt_list(prompts)
    if batch_size is not None:
        check_int("batch_size", batch_size, expected="an int >= 1 or None (prompts per text-encoder call)")
    encoder_device = text_encoder.device
    device = encoder_device if device is None else torch.device(device)
    embeds = []
    for start in range(0, len(prompts), batch_size or max(len(prompts), 1)):
        input_ids = tokenize(tokenizer, prompts[start:start + (batch_size or len(prompts))],
                             device=encoder_device, warn=warn)                                # [b, L]
        hidden = text_encoder(input_ids).last_hidden_state                                     # [b, L, d]
        embeds.append(hidden.to(device=device, dtype=text_encoder.dtype))
    if not embeds:
        raise ValueError("prompts is empty: pass at least one prompt, e.g. [''] for the empty prompt.")
    return embeds[0] if len(embeds) == 1 else torch.cat(embeds)                              # [B, L, d]


_WEIGHTED = re.compile(r"\(([^():]+):\s*([-+]?[0-9]*\.?[0-9]+)\s*\)")


def parse_weighted_prompt(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """``"a (red:1.5) circle"`` -> ``("a red circle", [("a", 1.0), ("red", 1.5), ("circle", 1.0)])``.

    The emphasis syntax of the popular web UIs: ``(words:w)`` gives each of ``words`` the weight ``w``;
    every other word weighs 1. Returns the plain prompt and each of its words with its weight.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}.")
    words: list[tuple[str, float]] = []
    pos = 0
    for m in _WEIGHTED.finditer(prompt):
        words += [(w, 1.0) for w in prompt[pos:m.start()].split()]
        words += [(w, float(m.group(2))) for w in m.group(1).split()]
        pos = m.end()
    rest = prompt[pos:]
    words += [(w, 1.0) for w in rest.split()]
    if any(ch in w for w, _ in words for ch in "():"):
        raise ValueError(f"could not read the weights in {prompt!r}: write emphasis as (word:1.3) or "
                         "(several words:0.8), a number after the colon, and no other brackets.")
    return " ".join(w for w, _ in words), words


def encode_weighted(tokenizer, text_encoder, prompt: str, *, device: str | torch.device | None = None,
                    keep_mean: bool = True) -> torch.Tensor:
    """A prompt with per-word emphasis -> text embeddings ``[1, L, d]`` (:func:`parse_weighted_prompt`'s syntax).

    The plain prompt goes through :func:`encode`; then each token's embedding is multiplied by its word's
    weight, ``z_i <- w_i z_i``, and with ``keep_mean`` the whole is rescaled so its mean is the plain one's,
    ``z <- z * mean(z_plain) / mean(z)``, as the popular web UIs do. Pass the result to the pipeline as
    ``prompt_embeds``.
    """
    from sdlearn.attention import word_positions

    plain, words = parse_weighted_prompt(prompt)
    embeds = encode(tokenizer, text_encoder, [plain], device=device)                      # [1, L, d]
    weights = torch.ones(embeds.shape[1], dtype=embeds.dtype, device=embeds.device)        # [L]
    for (_, weight), (_, positions) in zip(words, word_positions(tokenizer, plain)):
        weights[positions] = weight
    weighted = embeds * weights[None, :, None]
    if keep_mean:
        weighted = weighted * (embeds.mean() / weighted.mean())
    return weighted


def token_table(tokenizer, input_ids: torch.Tensor | Sequence[int], *, max_rows: int = 12) -> str:
    """One prompt's tokens as a table: position, id, token, and what the token is (BOS, EOS, padding).

    ``input_ids``: ``[L]`` or ``[1, L]``. Padding is the run of ``pad_token_id`` after the
    first EOS (SD 1.x pads with EOS itself); a long run is shown as its first row, a
    ``...`` line and its last row. At most ``max_rows`` rows of the prompt itself are shown.
    """
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(f"input_ids must be one prompt, [L] or [1, L]; got shape {tuple(ids.shape)}. "
                         "Pass input_ids[i] for prompt i of a batch.")
    ids = ids.tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    eos = ids.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in ids else len(ids)
    kinds = []
    for pos, token_id in enumerate(ids):
        if pos > eos:
            kinds.append("padding")
        elif token_id == tokenizer.bos_token_id and pos == 0:
            kinds.append("BOS (start)")
        elif pos == eos:
            kinds.append("EOS (end)")
        else:
            kinds.append("")
    rows = [(str(pos), str(token_id), token, kind) for pos, (token_id, token, kind) in enumerate(zip(ids, tokens, kinds))]
    content, padding = rows[: eos + 1], rows[eos + 1 :]
    shown = content if len(content) <= max_rows else content[: max_rows - 2] + [("...", "", "", "")] + content[-1:]
    if len(padding) > 2:
        shown += [padding[0], ("...", "", f"({len(padding)} padding positions)", ""), padding[-1]]
    else:
        shown += padding
    header = ("position", "id", "token", "")
    widths = [max(len(r[i]) for r in [header, *shown]) for i in range(4)]
    lines = ["  ".join(cell.rjust(w) if i < 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
             for r in [header, *shown]]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The text encoder by hand
# --------------------------------------------------------------------------------------


def _text_transformer(text_encoder) -> torch.nn.Module:
    """The module that holds ``embeddings``, ``encoder`` and ``final_layer_norm``.

    In transformers 5 that is ``CLIPTextModel`` itself. A ``CLIPModel`` (text and vision) or a
    ``CLIPTextModelWithProjection`` is accepted too: its ``.text_model`` is used.
    """
    module = text_encoder
    for _ in range(3):
        if all(hasattr(module, name) for name in ("embeddings", "encoder", "final_layer_norm")):
            return module
        module = getattr(module, "text_model", None)
        if module is None:
            break
    raise TypeError(
        f"expected a CLIP text encoder (transformers CLIPTextModel or CLIPModel), got "
        f"{type(text_encoder).__name__}: it has no embeddings / encoder / final_layer_norm."
    )


def causal_mask(length: int, *, dtype: torch.dtype = torch.float32,
                device: str | torch.device | None = None) -> torch.Tensor:
    """The additive causal attention mask ``[1, 1, length, length]``.

    ``mask[..., i, j] = 0`` where position ``i`` may look at position ``j`` (``j <= i``) and
    ``-inf`` where it may not (``j > i``), so that ``softmax(scores + mask)`` gives the
    future exactly zero weight. Broadcasts over the batch and the attention heads.
    """
    check_int("length", length, expected="an int >= 1 (the number of token positions)")
    mask = torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu(diagonal=1)
    return mask[None, None]


def run_encoder_layer(layer: torch.nn.Module, hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One ``CLIPEncoderLayer``: ``hidden_states [B, L, d]`` -> ``[B, L, d]``, with the additive ``mask``.

    transformers 5 (which the course requires) takes the causal mask as the layer's ``attention_mask``
    and returns the hidden states as a tensor.
    """
    return layer(hidden_states, attention_mask=mask)


def encode_by_hand(text_encoder, input_ids: torch.Tensor | None = None, *,
                   inputs_embeds: torch.Tensor | None = None, layers: int | None = None,
                   final_layer_norm: bool = True) -> torch.Tensor:
    """CLIP's text-encoder forward pass from public modules: ids ``[B, L]`` -> ``[B, L, d]``.

    ``h_0 = token_embedding(ids) + position_embedding(0 .. L-1)``; then each transformer
    layer with the :func:`causal_mask`; then ``final_layer_norm``. Equal to
    ``text_encoder(input_ids).last_hidden_state``. ``inputs_embeds`` ``[B, L, d]`` replaces the
    token embeddings (to feed vectors that are no token's); ``layers`` runs only the first
    that many layers (``layers = n_layers - k`` with the final norm is diffusers' ``clip_skip = k``).
    """
    model = _text_transformer(text_encoder)
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids [B, L] (token ids) or inputs_embeds [B, L, d].")
    if inputs_embeds is None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}; "
                             "add a batch dimension with input_ids[None].")
        inputs_embeds = model.embeddings.token_embedding(input_ids)        # [B, L, d]
    if inputs_embeds.dim() != 3:
        raise ValueError(f"inputs_embeds must be [B, L, d], got shape {tuple(inputs_embeds.shape)}.")
    length = inputs_embeds.shape[1]
    max_positions = model.embeddings.position_embedding.num_embeddings
    if length > max_positions:
        raise ValueError(f"{length} token positions, but the text encoder has only {max_positions} "
                         "position embeddings; tokenize with truncation (sdlearn.text.tokenize).")
    n_layers = len(model.encoder.layers)
    layers = n_layers if layers is None else layers
    check_int("layers", layers, low=0, high=n_layers, expected=f"an int in 0 .. {n_layers} (this encoder's layers)")
    positions = torch.arange(length, device=inputs_embeds.device)
    hidden = inputs_embeds + model.embeddings.position_embedding(positions)   # [B, L, d]
    mask = causal_mask(length, dtype=hidden.dtype, device=hidden.device)      # [1, 1, L, L]
    for layer in model.encoder.layers[:layers]:
        hidden = run_encoder_layer(layer, hidden, mask)
    return model.final_layer_norm(hidden) if final_layer_norm else hidden


def first_eos_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Index of the first EOS token of each row of ``input_ids [B, L]``: ``[B]`` (int64)."""
    is_eos = input_ids == eos_token_id
    if not bool(is_eos.any(dim=-1).all()):
        raise ValueError(f"every prompt needs an EOS token (id {eos_token_id}); tokenize with the tokenizer, "
                         "which adds it (and keeps it when it truncates).")
    return is_eos.int().argmax(dim=-1)


def pooled_output(last_hidden_state: torch.Tensor, input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """CLIP's pooled text vector: ``last_hidden_state [B, L, d]`` at each prompt's first EOS -> ``[B, d]``.

    The causal mask lets the EOS position see the whole prompt, so CLIP uses it as the
    sentence's summary (``pooler_output``); CLIPModel projects it to the shared
    text-image space with ``text_projection``.
    """
    rows = torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device)
    return last_hidden_state[rows, first_eos_positions(input_ids, eos_token_id).to(last_hidden_state.device)]


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All pairwise cosine similarities: ``a [N, d]``, ``b [M, d]`` -> ``[N, M]`` in [-1, 1].

    ``cos(u, v) = u . v / (|u| |v|)``, computed in float32 (or float64 if given).
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected a [N, d] and b [M, d] with the same d, got {tuple(a.shape)} and {tuple(b.shape)}.")
    a = a.double() if a.dtype == torch.float64 else a.float()
    b = b.to(a.dtype)
    return (a / a.norm(dim=-1, keepdim=True)) @ (b / b.norm(dim=-1, keepdim=True)).T


# --------------------------------------------------------------------------------------
# The full CLIP model (text and vision towers)
# --------------------------------------------------------------------------------------


def _tensor(out) -> torch.Tensor:
    return out if torch.is_tensor(out) else out.pooler_output


def clip_text_features(clip, input_ids: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """CLIP's projected text embedding, one per prompt: [B, projection_dim] (unit length if ``normalize``)."""
    features = _tensor(clip.get_text_features(input_ids=input_ids))
    return features / features.norm(dim=-1, keepdim=True) if normalize else features


def clip_image_features(clip, pixel_values: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """CLIP's projected image embedding: pixel_values [B, 3, H, W] in [-1, 1] -> [B, projection_dim]."""
    features = _tensor(clip.get_image_features(pixel_values=pixel_values))
    return features / features.norm(dim=-1, keepdim=True) if normalize else features


def clip_folder(model: str | os.PathLike | None = None) -> Path | None:
    """The folder of the full CLIP model shipped with ``model``, or None if it has none.

    The bundled model (and any model built by ``sdlearn.recipe``) keeps the CLIP it was
    trained with, text and vision towers, in ``<model folder>/clip``. Real SD 1.x folders
    and hub ids ship only the text tower (``text_encoder/``): None. ``model`` as in
    ``sdlearn.models.load`` (default ``$SDLEARN_MODEL``, else ``"bundled"``).
    """
    from sdlearn import models

    name = models.resolve_model_name(model)
    folder = models.BUNDLED_MODEL_DIR if name == models.BUNDLED else Path(name).expanduser()
    clip = folder / "clip"
    return clip if (clip / "config.json").is_file() else None


def load_clip(model: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32):
    """The full ``transformers.CLIPModel`` shipped with ``model`` (see :func:`clip_folder`), or None.

    Loaded in ``dtype`` on ``device``, in eval mode, without progress bars.
    """
    folder = clip_folder(model)
    if folder is None:
        return None
    from transformers import CLIPModel

    from sdlearn.models import _quiet_loading

    with _quiet_loading():
        clip = CLIPModel.from_pretrained(folder, dtype=dtype)
    return clip.to(device).eval()
