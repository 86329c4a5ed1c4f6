"""Draw images/pipeline.svg: Stable Diffusion's three parts and the tensors between them.

Run from anywhere: ``python images/make_pipeline.py``
(``--png PATH`` also writes a PNG preview, ``--out PATH`` writes the SVG elsewhere).
Shown by notebooks/01_pipeline_at_a_glance.ipynb.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import drawing  # images/drawing.py, beside this script: the shared helpers (it selects the Agg backend)
import matplotlib.pyplot as plt
from drawing import arrow, group

OUT = Path(__file__).with_name("pipeline.svg")

TEXT_COLOUR = "#dbe9f6"  # part 1
UNET_COLOUR = "#fde3c8"  # part 2
VAE_COLOUR = "#d9f0d3"  # part 3
TENSOR_COLOUR = "#f4f4f4"
GREY = "#8a8a8a"


box = partial(drawing.box, rounding=0.25)


def draw() -> plt.Figure:
    fig, ax = drawing.canvas((12.5, 5.2), (0, 25), (0.4, 10.2))

    # the three parts
    group(ax, 3.0, 5.0, 10.0, 9.9, "1 · text understander", TEXT_COLOUR)
    group(ax, 13.0, 2.1, 18.4, 7.6, "2 · image information creator", UNET_COLOUR)
    group(ax, 18.9, 2.1, 22.1, 4.6, "3 · image decoder", VAE_COLOUR)

    # main path: prompt -> tokenizer -> text encoder -> embeddings
    y = 6.2
    box(ax, 1.5, y, 2.6, 1.1, "prompt\n“a red circle”", colour="white")
    box(ax, 4.6, y, 2.4, 1.0, "tokenizer", colour=TEXT_COLOUR, weight="bold")
    box(ax, 8.3, y, 2.8, 1.0, "CLIP text\nencoder", colour=TEXT_COLOUR, weight="bold")
    box(ax, 11.6, y, 2.5, 1.2, "[77 × d]\nembeddings", colour=TENSOR_COLOUR, mono=True, size=9)
    arrow(ax, (2.8, y), (3.4, y))
    arrow(ax, (5.8, y), (6.9, y), text="[77] ids", text_at=(6.35, y + 0.75), size=7.5)
    arrow(ax, (9.7, y), (10.35, y))
    arrow(ax, (12.85, y), (14.1, y))

    # classifier-free guidance: the same two modules on the empty prompt
    yc = 8.6
    box(ax, 1.5, yc, 2.6, 0.9, "empty prompt “”", colour="white", dashed=True, size=9)
    box(ax, 4.6, yc, 2.4, 0.8, "tokenizer", colour=TEXT_COLOUR, dashed=True, size=9)
    box(ax, 8.3, yc, 2.8, 0.8, "CLIP text encoder", colour=TEXT_COLOUR, dashed=True, size=9)
    box(ax, 11.6, yc, 2.5, 1.0, "[77 × d]\nunconditional", colour=TENSOR_COLOUR, dashed=True, mono=True, size=8.5)
    arrow(ax, (2.8, yc), (3.4, yc), colour=GREY, dashed=True)
    arrow(ax, (5.8, yc), (6.9, yc), colour=GREY, dashed=True)
    arrow(ax, (9.7, yc), (10.35, yc), colour=GREY, dashed=True)
    arrow(ax, (12.85, yc - 0.2), (15.0, 6.85), colour=GREY, dashed=True)
    ax.text(19.0, 8.7, "classifier-free guidance (dashed):\nthe UNet sees both embeddings,\n"
            "noise = uncond + s · (text − uncond)",
            ha="left", va="center", fontsize=8.5, color="#555555")

    # the denoising loop in latent space
    box(ax, 15.7, y, 3.2, 1.2, "UNet\npredicts the noise", colour=UNET_COLOUR, weight="bold", size=9)
    box(ax, 15.7, 3.3, 3.2, 1.2, "scheduler\nremoves some noise", colour=UNET_COLOUR, weight="bold", size=9)
    arrow(ax, (16.6, y - 0.6), (16.6, 3.9), text="noise_pred", text_at=(17.45, 4.75), size=8)
    arrow(ax, (14.8, 3.9), (14.8, y - 0.6), text="$x_{t-1}$", text_at=(14.25, 4.75), size=9)
    ax.text(15.7, 4.75, "loop\nt = T … 1", ha="center", va="center", fontsize=8.5, weight="bold", color="#8a4b00")
    box(ax, 11.6, 4.0, 2.5, 1.3, "random latents\n[4 × h × w]\n~ N(0, I)", colour=TENSOR_COLOUR, mono=True, size=8.5)
    arrow(ax, (12.85, 4.3), (14.1, 5.8), text="$x_T$", text_at=(13.25, 5.3), size=9)

    # decode
    box(ax, 20.5, 3.3, 2.6, 1.0, "VAE decoder", colour=VAE_COLOUR, weight="bold")
    arrow(ax, (17.3, 3.3), (19.2, 3.3), text="$x_0$", text_at=(18.2, 2.9), size=9)
    box(ax, 23.5, 3.3, 2.3, 1.3, "image\n[3 × H × W]", colour="white", mono=True, size=9)
    arrow(ax, (21.8, 3.3), (22.35, 3.3))

    drawing.footnote(ax, 0.2, 1.0, "SD 1.5: d = 768, latents 4 × 64 × 64, image 3 × 512 × 512 (H = 8h, W = 8w).   "
                     "The VAE encoder is only needed for training and image-to-image.")
    fig.tight_layout(pad=0.2)
    return fig


if __name__ == "__main__":
    drawing.main(draw, OUT, __doc__)
