"""Text side of Stable Diffusion: CLIP features, version-proof.

transformers 5 returns an output object from ``get_text_features`` and
``get_image_features`` (the embedding is its ``pooler_output``); earlier releases
return the tensor itself. These wrappers return the tensor either way.
"""

from __future__ import annotations

import torch


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
