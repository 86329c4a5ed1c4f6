"""Draw images/training_step.svg: one training step of Stable Diffusion's UNet.

A picture and its caption go through the frozen VAE encoder and the frozen text encoder; a
random timestep and random noise make the noisy latent; the UNet predicts the noise; the loss
is the mean squared error, and only the UNet's weights move. This is what
``sdlearn.train.unet_loss_fn`` and ``sdlearn.train.diffusion_loss`` compute.

Run from anywhere: ``python images/make_training_step.py``
(``--png PATH`` also writes a PNG preview, ``--out PATH`` writes the SVG elsewhere).
Shown by notebooks/09_training.ipynb.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import drawing  # images/drawing.py, beside this script: the shared helpers (it selects the Agg backend)
import matplotlib.pyplot as plt

OUT = Path(__file__).with_name("training_step.svg")

FROZEN_COLOUR = "#e3e8ef"   # trained earlier, not changed here
TEXT_COLOUR = "#dbe9f6"
UNET_COLOUR = "#fde3c8"     # the only network that learns in this step
TENSOR_COLOUR = "#f4f4f4"
RANDOM_COLOUR = "#efe3f7"
LOSS_COLOUR = "#f8d7d7"
GREY = "#8a8a8a"
RED = "#b03030"


box = partial(drawing.box, rounding=0.22)
arrow = partial(drawing.arrow, size=8)


def draw() -> plt.Figure:
    fig, ax = drawing.canvas((12.5, 5.0), (0, 25), (0.3, 10.0))

    # the text path: caption (sometimes dropped) -> frozen text encoder -> c
    yt = 8.3
    box(ax, 2.0, yt, 3.4, 1.5, "caption\n“a big red circle\non the left”", colour="white", size=8.5)
    box(ax, 6.3, yt, 3.0, 1.1, "caption dropout\n“” with probability p", colour=RANDOM_COLOUR, size=8.5)
    box(ax, 10.6, yt, 3.4, 1.1, "tokenizer +\nCLIP text encoder", colour=FROZEN_COLOUR, weight="bold", size=9)
    box(ax, 14.6, yt, 2.4, 1.1, "c\n[77 × d]", colour=TENSOR_COLOUR, mono=True, size=9)
    arrow(ax, (3.7, yt), (4.8, yt))
    arrow(ax, (7.8, yt), (8.9, yt))
    arrow(ax, (12.3, yt), (13.4, yt))

    # the image path: picture -> frozen VAE encoder -> x0 -> noised -> x_t
    yi = 4.9
    box(ax, 2.0, yi, 3.4, 1.1, "picture x\n[3 × H × W]", colour="white", mono=True, size=9)
    box(ax, 6.3, yi, 3.0, 1.3, "VAE encoder\nz ~ q(z|x), × s", colour=FROZEN_COLOUR, weight="bold", size=9)
    box(ax, 10.6, yi, 2.6, 1.1, "x₀\n[4 × h × w]", colour=TENSOR_COLOUR, mono=True, size=9)
    box(ax, 10.6, 2.2, 4.4, 1.4, "t ~ U{0, …, T−1}\nε ~ N(0, I)  [4 × h × w]", colour=RANDOM_COLOUR, size=9)
    box(ax, 14.6, yi, 3.6, 1.5, "add noise\nx_t = √ᾱ_t x₀\n    + √(1−ᾱ_t) ε", colour="white", size=8.5)
    arrow(ax, (3.7, yi), (4.8, yi))
    arrow(ax, (7.8, yi), (9.3, yi))
    arrow(ax, (11.9, yi), (12.8, yi))
    arrow(ax, (12.2, 2.6), (13.6, 4.15))

    # the UNet and the loss
    box(ax, 19.0, 6.4, 3.2, 1.6, "UNet\nε̂ = ε_θ(x_t, t, c)", colour=UNET_COLOUR, weight="bold", size=9.5)
    arrow(ax, (15.8, yt - 0.2), (17.4, 7.0), text="c", text_at=(16.9, 7.9))
    arrow(ax, (16.4, yi + 0.2), (17.4, 5.9), text="x_t, t", text_at=(16.2, 6.2))
    box(ax, 23.0, 6.4, 3.2, 1.4, "loss\nmean (ε̂ − ε)²", colour=LOSS_COLOUR, weight="bold", size=9.5)
    arrow(ax, (20.6, 6.4), (21.4, 6.4), text="ε̂", text_at=(21.0, 6.8), size=9)
    arrow(ax, (12.8, 2.2), (23.0, 5.7), text="ε: the target", text_at=(19.8, 3.55), rad=0.12)
    arrow(ax, (23.0, 7.1), (19.4, 7.2), colour=RED, dashed=True, rad=0.45)
    ax.text(21.3, 9.1, "gradient → AdamW step\non the UNet's weights only", ha="center", va="center",
            fontsize=8.5, color=RED)

    drawing.footnote(ax, 0.3, 0.8, "Grey boxes are frozen: CLIP and the VAE were trained before, so their outputs "
                     "can be computed once for the whole data set.\nEach step draws a fresh batch, fresh timesteps, "
                     "fresh noise and fresh dropped captions; SD 1.5: x [3 × 512 × 512], x₀ [4 × 64 × 64], "
                     "c [77 × 768], T = 1000.", linespacing=1.5)
    fig.tight_layout(pad=0.2)
    return fig


if __name__ == "__main__":
    drawing.main(draw, OUT, __doc__)
