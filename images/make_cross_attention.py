"""Draw images/cross_attention.svg: how a cross-attention layer's weights become one heat map per word.

Run from anywhere: ``python images/make_cross_attention.py``
(``--png PATH`` also writes a PNG preview, ``--out PATH`` writes the SVG elsewhere).
Shown by notebooks/07_cross_attention.ipynb.
"""

from __future__ import annotations

from pathlib import Path

import drawing  # images/drawing.py, beside this script: the shared helpers (it selects the Agg backend)
import matplotlib.pyplot as plt
import numpy as np
from drawing import arrow, box
from matplotlib.patches import Circle, Rectangle

OUT = Path(__file__).with_name("cross_attention.svg")

TEXT_COLOUR = "#dbe9f6"  # the text side (as in pipeline.svg and clip_text_encoder.svg)
UNET_COLOUR = "#fde3c8"  # the picture side
TENSOR_COLOUR = "#f4f4f4"
HIGHLIGHT = "#d62728"
GREY = "#8a8a8a"

TOKENS = ["<start>", "a", "red", "circle", "…", "<end>", "<pad>"]
GRID = 4            # the latent grid drawn: 4 x 4 positions
COLUMN = 3          # the token whose column is followed: "circle"
ROW = 9             # the position whose row is followed (row 2, column 1 of the grid)


def weights() -> np.ndarray:
    """A made-up attention matrix [GRID*GRID, len(TOKENS)]: rows are distributions over the tokens, and the
    "circle" column is high where a circle would be (the lower left of the grid)."""
    yy, xx = np.mgrid[0:GRID, 0:GRID]
    bump = np.exp(-((xx - 1.0) ** 2 + (yy - 2.0) ** 2) / 1.2).ravel()            # [16]
    logits = np.zeros((GRID * GRID, len(TOKENS)))
    logits[:, 0] = 2.0                                                             # the start token: a sink
    logits[:, 2] = 0.3 + 1.2 * bump                                                # "red"
    logits[:, COLUMN] = 3.0 * bump                                                 # "circle"
    logits[:, 6] = 1.2                                                             # padding
    a = np.exp(logits)
    return a / a.sum(axis=1, keepdims=True)


def grid(ax, x0, y0, cell, values=None, *, cmap=None, highlight=None, edge="#666666"):
    """A GRID x GRID grid of cells from (x0, y0) (lower left); values [GRID*GRID] shade the cells."""
    for r in range(GRID):
        for c in range(GRID):
            i = r * GRID + c
            colour = "white" if values is None else cmap(values[i])
            ax.add_patch(Rectangle((x0 + c * cell, y0 + (GRID - 1 - r) * cell), cell, cell, facecolor=colour,
                                   edgecolor=HIGHLIGHT if i == highlight else edge,
                                   linewidth=2.0 if i == highlight else 0.8, zorder=3 if i == highlight else 2))


def draw() -> plt.Figure:
    fig, ax = drawing.canvas((12.5, 5.6), (0, 25), (0, 11.2))
    a = weights()
    cmap = plt.get_cmap("magma_r")

    # the picture side: latent positions -> queries
    cell = 0.6
    grid(ax, 0.6, 6.2, cell, highlight=ROW)
    ax.text(1.8, 9.0, "latent features x\nh × w positions", ha="center", va="center", fontsize=9)
    ax.text(1.8, 5.75, "(SD 1.5: 64×64 … 8×8)", ha="center", va="center", fontsize=7.5, color="#555555")
    box(ax, 5.3, 7.4, 2.2, 0.9, "Q = to_q(x)\n[h·w × d]", colour=UNET_COLOUR, mono=True, size=8)
    arrow(ax, (3.15, 7.4), (4.15, 7.4))

    # the text side: tokens -> keys and values
    x_tok, y_tok, wt = 0.4, 2.2, 0.95
    for i, token in enumerate(TOKENS):
        ax.add_patch(Rectangle((x_tok + i * wt, y_tok - 0.32), wt, 0.64,
                               facecolor="white" if i in (1, 2, 3) else "#eeeeee",
                               edgecolor=HIGHLIGHT if i == COLUMN else "#444444", linewidth=2.0 if i == COLUMN else 1))
        ax.text(x_tok + (i + 0.5) * wt, y_tok, token, ha="center", va="center", fontsize=7.5, family="monospace")
    ax.text(x_tok + 3.5 * wt, 1.35, "prompt_embeds: 77 text vectors (notebook 04)", ha="center", va="center",
            fontsize=8)
    box(ax, 8.3, 2.2, 2.2, 0.9, "K = to_k(c)\n[77 × d]", colour=TEXT_COLOUR, mono=True, size=8)
    box(ax, 8.3, 0.75, 2.2, 0.8, "V = to_v(c)", colour=TEXT_COLOUR, mono=True, size=8)
    arrow(ax, (7.05, 2.2), (7.2, 2.2))
    arrow(ax, (6.6, 1.9), (7.2, 0.9), rad=0.2)

    # the attention matrix
    x_a, y_a, ca_w, ca_h = 11.2, 4.2, 0.55, 0.33
    n = GRID * GRID
    for i in range(n):
        for j in range(len(TOKENS)):
            ax.add_patch(Rectangle((x_a + j * ca_w, y_a + (n - 1 - i) * ca_h), ca_w, ca_h,
                                   facecolor=cmap(a[i, j] / a.max()), edgecolor="white", linewidth=0.4))
    ax.add_patch(Rectangle((x_a, y_a + (n - 1 - ROW) * ca_h), len(TOKENS) * ca_w, ca_h, fill=False,
                           edgecolor=HIGHLIGHT, linewidth=2.0, zorder=4))
    ax.add_patch(Rectangle((x_a + COLUMN * ca_w, y_a), ca_w, n * ca_h, fill=False, edgecolor=HIGHLIGHT,
                           linewidth=2.0, zorder=4, linestyle="--"))
    ax.text(x_a + len(TOKENS) * ca_w / 2, y_a + n * ca_h + 0.75, "A = softmax(Q Kᵀ / √d)", ha="center", va="center",
            fontsize=10, weight="bold", family="monospace")
    ax.text(x_a + len(TOKENS) * ca_w / 2, y_a + n * ca_h + 0.3, "[h·w positions × 77 tokens], per head", ha="center",
            va="center", fontsize=8)
    ax.text(x_a - 0.15, y_a + (n - 0.5 - ROW) * ca_h, "row i: one position,\nsums to 1 over the tokens",
            ha="right", va="center", fontsize=7.5, color=HIGHLIGHT)
    ax.text(x_a + (COLUMN + 0.5) * ca_w, y_a - 0.35, 'column j: "circle"', ha="center", va="center", fontsize=7.5,
            color=HIGHLIGHT)
    arrow(ax, (6.45, 7.4), (x_a - 0.1, 7.4))
    arrow(ax, (9.45, 2.3), (x_a + 1.0, y_a - 0.6), rad=-0.15)
    box(ax, 13.1, 0.75, 3.2, 0.8, "out = to_out(A V)", colour=UNET_COLOUR, mono=True, size=8)
    arrow(ax, (9.45, 0.75), (11.45, 0.75))
    arrow(ax, (x_a + 2.6, y_a - 0.6), (13.1, 1.2))
    ax.text(15.0, 1.45, "what the layer passes on:\nunchanged by capture", ha="left", va="center", fontsize=7.5,
            color="#555555")

    # one column laid out on the grid: the token's heat map
    x_h = 17.2
    grid(ax, x_h, 6.2, cell, a[:, COLUMN] / a[:, COLUMN].max(), cmap=cmap, edge="white")
    ax.text(x_h + 1.2, 9.0, 'column "circle"\non the h × w grid', ha="center", va="center", fontsize=9)
    arrow(ax, (x_a + (COLUMN + 1) * ca_w + 0.1, 6.5), (x_h - 0.15, 7.3), rad=-0.2)

    box(ax, 22.4, 7.4, 3.8, 1.6, "mean over heads,\nlayers (resized) and steps\n= the word's heat map",
        colour=TENSOR_COLOUR, size=8.5)
    arrow(ax, (x_h + GRID * cell + 0.1, 7.4), (20.45, 7.4))

    # the heat map over the picture
    x_p, y_p, side = 21.0, 2.0, 2.8
    ax.add_patch(Rectangle((x_p, y_p), side, side, facecolor="#e8e8e4", edgecolor="#444444", linewidth=1))
    ax.add_patch(Circle((x_p + side * 0.36, y_p + side * 0.42), side * 0.2, facecolor="#d62828", edgecolor="none"))
    yy, xx = np.mgrid[0:40, 0:40] / 40
    heat = np.exp(-((xx - 0.36) ** 2 + (yy - 0.58) ** 2) / 0.03)
    ax.imshow(np.ma.masked_less(heat, 0.1), extent=(x_p, x_p + side, y_p, y_p + side), cmap="jet", alpha=0.5,
              vmin=0, vmax=1, zorder=3)
    arrow(ax, (22.4, 6.55), (22.4, y_p + side + 0.15))
    ax.text(x_p + side / 2, y_p - 0.4, "over the image:\nwhere the word is read", ha="center", va="center",
            fontsize=8)
    ax.set_xlim(0, 25)
    ax.set_ylim(0, 11.2)
    fig.tight_layout(pad=0.2)
    return fig


if __name__ == "__main__":
    drawing.main(draw, OUT, __doc__, image_inline=True)  # the heat map over the picture is a raster image
