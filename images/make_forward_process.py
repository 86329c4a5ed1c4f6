"""Draw images/forward_process.svg: the forward process as a chain of noisier and noisier pictures.

The pictures are real: a picture from ``sdlearn.world`` noised in pixel space with Stable
Diffusion's schedule by ``sdlearn.noise.add_noise``. Run from the repository root:

    python images/make_forward_process.py

(``--png PATH`` also writes a PNG preview, ``--out PATH`` writes the SVG elsewhere).
"""

from __future__ import annotations

from pathlib import Path

import drawing  # images/drawing.py, beside this script: the shared main (it selects the Agg backend)
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from sdlearn import world
from sdlearn.images import to_numpy, to_tensor
from sdlearn.noise import add_noise, betas_for

OUT = Path(__file__).resolve().parent / "forward_process.svg"
# (label, 0-based timestep; None for the clean picture), left to right
STATES = [(r"$x_0$ (clean)", None), (r"$x_1$", 0), (r"$x_{t-1}$", 399), (r"$x_t$", 400), (r"$x_T$", 999)]
LEFTS = [0.03, 0.22, 0.45, 0.64, 0.85]  # left edge of each picture, in figure coordinates
SIZE = 0.12  # picture width, in figure coordinates


def noised_pictures() -> list[tuple[np.ndarray, float]]:
    """Each state's picture (``[32, 32, 3]`` uint8) and its ``abar_t`` (1 for the clean picture)."""
    image = to_tensor(world.sample(0, 3, resolution=32).image)  # [1, 3, 32, 32] in [-1, 1]
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    alphas_cumprod = torch.cumprod(1 - betas_for("scaled_linear"), dim=0)  # [1000]
    pictures = []
    for _, t in STATES:
        x = image if t is None else add_noise(image, noise, t, alphas_cumprod)
        abar = 1.0 if t is None else alphas_cumprod[t].item()
        pictures.append((to_numpy(x.clamp(-1, 1))[0], abar))
    return pictures


def arrow(fig: Figure, start, end, **kwargs) -> None:
    """An arrow between two points given in figure coordinates (0 to 1)."""
    fig.add_artist(FancyArrowPatch(start, end, transform=fig.transFigure, arrowstyle="-|>",
                                   mutation_scale=14, **kwargs))


def draw() -> Figure:
    width, height = 9.0, 3.8
    fig = Figure(figsize=(width, height))
    bottom, side = 0.40, SIZE * width / height  # square pictures
    for (label, _), left, (picture, abar) in zip(STATES, LEFTS, noised_pictures()):
        ax = fig.add_axes((left, bottom, SIZE, side))
        ax.imshow(picture, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(label + "\n" + (r"$\bar\alpha_t = 1$" if abar == 1 else rf"$\bar\alpha_t = {abar:.3g}$"),
                      linespacing=1.6)
    mid = bottom + side / 2
    for i in range(len(LEFTS) - 1):
        dotted = i in (1, 3)  # many steps hidden between these two
        arrow(fig, (LEFTS[i] + SIZE + 0.01, mid), (LEFTS[i + 1] - 0.01, mid), color="#333",
              linestyle=(0, (1, 3)) if dotted else "-", linewidth=1.5)
    fig.text(LEFTS[2] + SIZE + 0.035, mid + 0.04, "+ noise", ha="center", fontsize=9)
    fig.text(LEFTS[0] + SIZE + 0.035, mid + 0.04, "+ noise", ha="center", fontsize=9)
    # the one jump
    blue = "#1f5fbf"
    arrow(fig, (LEFTS[0] + SIZE / 2, bottom + side + 0.02), (LEFTS[3] + SIZE / 2, bottom + side + 0.02),
          color=blue, linewidth=1.8, connectionstyle="arc3,rad=-0.18")
    fig.text(0.39, 0.95, r"closed form, one jump: $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$",
             ha="center", va="top", color=blue)
    fig.text(0.5, 0.165, r"each step: $q(x_t \mid x_{t-1}) = \mathcal{N}(\sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I)$,"
             r"   $\bar\alpha_t = \prod_{s \leq t} (1-\beta_s)$", ha="center")
    grey = "#777"
    arrow(fig, (LEFTS[-1] + SIZE / 2, 0.1), (LEFTS[0] + SIZE / 2, 0.1), color=grey, linestyle="--", linewidth=1.5)
    fig.text(0.5, 0.025, "reverse: the UNet learns to undo the noise, one step at a time (later notebooks)",
             ha="center", color=grey)
    return fig


if __name__ == "__main__":
    # text as outlines (matplotlib's default) and a larger font: as this diagram was always drawn
    drawing.main(draw, OUT, __doc__, fonttype="path", rc={"font.size": 11})
