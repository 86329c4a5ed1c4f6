"""Notebook 08's exercises: the latent space, the walks between start noises and between prompts."""

from __future__ import annotations

import math

import torch

from . import Verdict, exercise
from ._legacy import _as_cpu_float64


@exercise("08.1", "The straight line's std at another weight", rtol=0.01, hints=(
    "A nudge: each entry of the interpolant is a weighted sum of two independent standard normal numbers. "
    "What happens to variances when independent variables are added, and when one is multiplied by a constant?",
    "The method: Var(c x) = c^2 Var(x), and variances of independent variables add. Write the variance for the "
    "weight EX1_W, with Var(a) = Var(b) = 1, and take the square root at the end."))
def _(*, w):
    w = float(w)
    return math.sqrt((1 - w) ** 2 + w**2)


def _walk_point(walk, v0: torch.Tensor, v1: torch.Tensor, w: float) -> torch.Tensor:
    out = walk(v0, v1, w)
    out = _as_cpu_float64(out)
    if out is None:
        raise TypeError("the function should return a tensor shaped like v0")
    if out.numel() != v0.numel():
        raise ValueError(f"the function should return a tensor shaped like v0, {list(v0.shape)}; "
                         f"at w = {w:g} it returned {list(out.shape)}")
    return out.reshape(-1)


@exercise("08.2", "A walk between noises that keeps their size", behaviour=True, hints=(
    "A nudge: the straight line cuts through the inside of the shell where noise lives. Which path from a to b "
    "stays on it? Section 2 draws one, and writes down its formula.",
    "The method: measure the angle theta between v0 and v1 (arccos of their cosine similarity over all entries), "
    "then weight v0 and v1 by the two sines of section 2's formula, divided by sin(theta). A point's size is its "
    "norm, or its std over all entries."))
def _(answer, *, noise_a, noise_b):
    if not callable(answer):
        return Verdict(False, "the answer should be your function (its name, without calling it), "
                              "which takes (v0, v1, w) and returns the point at weight w.")
    a = noise_a.detach().float().cpu()
    b = noise_b.detach().float().cpu()
    fa, fb = a.reshape(-1).double(), b.reshape(-1).double()
    weights = (0.0, 0.25, 0.5, 0.75, 1.0)
    points = [_walk_point(answer, a.clone(), b.clone(), w) for w in weights]
    scale = max(fa.norm().item(), fb.norm().item())
    if (points[0] - fa).norm() > 1e-3 * scale:
        return Verdict(False, "at w = 0 the walk should be v0 itself, and it is not.")
    if (points[-1] - fb).norm() > 1e-3 * scale:
        return Verdict(False, "at w = 1 the walk should be v1 itself, and it is not.")
    cos_a = [torch.nn.functional.cosine_similarity(p, fa, dim=0).item() for p in points]
    cos_b = [torch.nn.functional.cosine_similarity(p, fb, dim=0).item() for p in points]
    if not all(x > y for x, y in zip(cos_a, cos_a[1:])) or not all(x < y for x, y in zip(cos_b, cos_b[1:])):
        return Verdict(False, "the walk should turn steadily from v0 towards v1: as w grows, its points should "
                              "point less like v0 and more like v1 (compare their cosine similarities).")
    d = fa.numel()
    low, high = min(fa.norm(), fb.norm()).item(), max(fa.norm(), fb.norm()).item()
    for w, p in zip(weights[1:-1], points[1:-1]):
        size = p.norm().item()
        if not 0.93 * low <= size <= 1.07 * high:          # the straight line: 0.71 at the middle
            line = ((1 - w) * fa + w * fb).norm().item()
            return Verdict(False, f"at w = {w:g} the point has size |x|/sqrt(d) = {size / d**0.5:.3f}, the ends "
                                  f"{fa.norm().item() / d**0.5:.3f} and {fb.norm().item() / d**0.5:.3f} (the straight "
                                  f"line: {line / d**0.5:.3f}). Noise of that size is not what the U-Net starts from.")
    return Verdict(True)


@exercise("08.3", "How much the linear prompt walk shortens token vectors", hints=(
    "A nudge: work per token position. Each position has one d-vector in each prompt's embeddings; the norm over "
    "the last axis gives one length per position.",
    "The method: take [L, d] embeddings (index away the batch axis), form the midpoint, compute its length at every "
    "position and divide by the mean of the two ends' lengths there; then average the L ratios into one number."))
def _(*, embeds_a, embeds_b):
    a = embeds_a.detach().double().cpu().reshape(-1, embeds_a.shape[-1])        # [L, d]
    b = embeds_b.detach().double().cpu().reshape(-1, embeds_b.shape[-1])
    ends = (a.norm(dim=-1) + b.norm(dim=-1)) / 2                                 # [L]
    return ((a + b) / 2).norm(dim=-1).div(ends).mean().item()
