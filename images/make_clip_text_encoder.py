"""Draw images/clip_text_encoder.svg: from a prompt to the vectors the U-Net reads, inside CLIP's text encoder.

Run from anywhere: ``python images/make_clip_text_encoder.py``
(``--png PATH`` also writes a PNG preview, ``--out PATH`` writes the SVG elsewhere).
Shown by notebooks/04_clip_text_embeddings.ipynb.
"""

from __future__ import annotations

from pathlib import Path

import drawing  # images/drawing.py, beside this script: the shared helpers (it selects the Agg backend)
import matplotlib.pyplot as plt
from drawing import arrow, box
from matplotlib.patches import FancyBboxPatch, Rectangle

OUT = Path(__file__).with_name("clip_text_encoder.svg")

TEXT_COLOUR = "#dbe9f6"  # the text side (as in pipeline.svg)
LAYER_COLOUR = "#c6dbef"
TENSOR_COLOUR = "#f4f4f4"
UNET_COLOUR = "#fde3c8"
VISION_COLOUR = "#e5dcf0"
GREY = "#8a8a8a"

TOKENS = ["<BOS>", "a", "red", "circle", "<EOS>", "<pad>", "…", "<pad>"]
POSITIONS = ["0", "1", "2", "3", "4", "5", "", "76"]


def token_row(ax, x0, y, width=1.05):
    """The tokenized prompt: one cell per position, the token in it and its position below."""
    for i, (token, pos) in enumerate(zip(TOKENS, POSITIONS)):
        special = token.startswith("<")
        ax.add_patch(Rectangle((x0 + i * width, y - 0.35), width, 0.7, facecolor="white" if not special else "#eeeeee",
                               edgecolor="#444444" if token != "…" else "none", linewidth=1))
        ax.text(x0 + (i + 0.5) * width, y, token, ha="center", va="center", fontsize=8.5, family="monospace")
        ax.text(x0 + (i + 0.5) * width, y - 0.6, pos, ha="center", va="center", fontsize=7.5, color="#555555")
    return x0 + len(TOKENS) * width


def causal_mask_icon(ax, x0, y0, n=5, cell=0.22):
    """A small n x n grid: filled where position i may look at position j (j <= i)."""
    for i in range(n):
        for j in range(n):
            ax.add_patch(Rectangle((x0 + j * cell, y0 + (n - 1 - i) * cell), cell, cell,
                                   facecolor="#3b6fb6" if j <= i else "white", edgecolor="#999999", linewidth=0.5))
    ax.text(x0 + n * cell / 2, y0 - 0.22, "causal mask", ha="center", va="center", fontsize=7.5, color="#333333")


def draw() -> plt.Figure:
    fig, ax = drawing.canvas((12.5, 6.4), (0, 25), (0.0, 12.8))

    # 1. tokenizer: prompt -> 77 ids
    y1 = 11.4
    box(ax, 1.7, y1, 3.0, 1.0, "prompt\n“a red circle”", colour="white")
    box(ax, 5.3, y1, 2.4, 0.9, "tokenizer", colour=TEXT_COLOUR, weight="bold")
    arrow(ax, (3.2, y1), (4.1, y1))
    arrow(ax, (6.5, y1), (7.3, y1))
    end = token_row(ax, 7.4, y1)
    ax.text(end + 0.3, y1, "77 token ids\n(BOS, words, EOS,\npadding to 77)", ha="left", va="center", fontsize=8.5,
            color="#333333")

    # 2. embeddings: token + position
    y2 = 8.5
    box(ax, 4.0, y2, 3.6, 1.0, "token_embedding(id)\nlookup table [V × d]", colour=TEXT_COLOUR, size=8.5)
    box(ax, 4.0, y2 - 1.6, 3.6, 1.0, "position_embedding(pos)\nlookup table [77 × d]", colour=TEXT_COLOUR, size=8.5)
    arrow(ax, (8.0, y1 - 0.95), (5.2, y2 + 0.55))
    ax.add_patch(plt.Circle((7.3, y2 - 0.8), 0.35, facecolor="white", edgecolor="#333333", linewidth=1.2))
    ax.text(7.3, y2 - 0.8, "+", ha="center", va="center", fontsize=13)
    arrow(ax, (5.8, y2), (7.0, y2 - 0.6))
    arrow(ax, (5.8, y2 - 1.6), (7.0, y2 - 1.0))
    box(ax, 9.4, y2 - 0.8, 2.3, 1.0, "h₀\n[77 × d]", colour=TENSOR_COLOUR, mono=True, size=9)
    arrow(ax, (7.65, y2 - 0.8), (8.25, y2 - 0.8))

    # 3. the transformer layers: pre-norm attention and MLP, each with a residual connection
    ax.add_patch(FancyBboxPatch((11.9, 5.35), 12.7, 4.25, boxstyle="round,pad=0.02,rounding_size=0.3",
                                facecolor=LAYER_COLOUR, alpha=0.5, edgecolor="#6a8fb8", linewidth=1.2))
    ax.text(12.1, 9.25, "transformer layer  × N  (SD 1.5: N = 12)", ha="left", va="center",
            fontsize=9.5, weight="bold", color="#333333")
    ya = 7.3
    box(ax, 13.5, ya, 1.5, 0.7, "LayerNorm", colour="white", size=8)
    box(ax, 15.9, ya, 2.3, 0.7, "self-attention", colour="white", size=8.5, weight="bold")
    box(ax, 17.75, ya, 0.55, 0.55, "+", colour="white", size=11)
    box(ax, 19.5, ya, 1.5, 0.7, "LayerNorm", colour="white", size=8)
    box(ax, 21.4, ya, 1.2, 0.7, "MLP", colour="white", size=8.5, weight="bold")
    box(ax, 22.85, ya, 0.55, 0.55, "+", colour="white", size=11)
    arrow(ax, (10.55, y2 - 0.8), (12.75, ya))
    for a, b in [(14.25, 14.75), (17.05, 17.47), (18.03, 18.75), (20.25, 20.8), (22.0, 22.57)]:
        arrow(ax, (a, ya), (b, ya))
    arrow(ax, (23.13, ya), (23.9, ya))
    for x_from, x_to in [(12.45, 17.75), (18.3, 22.85)]:  # residual connections: around each block
        ax.plot([x_from, x_from, x_to], [ya, 8.45, 8.45], color="#555555", lw=1.1)
        arrow(ax, (x_to, 8.45), (x_to, ya + 0.3), colour="#555555")
    ax.text(15.1, 8.7, "residual: x + attention(LayerNorm(x))", ha="center", va="center", fontsize=7.5,
            color="#555555")
    ax.text(20.55, 8.7, "residual: x + MLP(LayerNorm(x))", ha="center", va="center", fontsize=7.5,
            color="#555555")
    causal_mask_icon(ax, 15.45, 5.9, cell=0.18)
    ax.text(17.0, 6.3, "position i looks only at\npositions 0 … i", ha="left", va="center", fontsize=7.5,
            color="#333333")

    # 4. final norm -> last_hidden_state -> U-Net
    y4 = 4.3
    box(ax, 21.5, y4, 2.4, 0.8, "final_layer_norm", colour=TEXT_COLOUR, size=8.5)
    arrow(ax, (23.9, ya), (22.2, y4 + 0.42), rad=-0.25)
    box(ax, 16.5, y4, 4.0, 1.1, "last_hidden_state\n[77 × d]  (SD 1.5: d = 768)", colour=TENSOR_COLOUR, mono=True,
        size=8.5)
    arrow(ax, (20.3, y4), (18.55, y4))
    box(ax, 10.5, y4, 4.4, 1.1, "U-Net cross-attention\none key/value per position", colour=UNET_COLOUR, size=8.5,
        weight="bold")
    arrow(ax, (14.45, y4), (12.75, y4), text="prompt_embeds", text_at=(13.6, y4 + 0.35), size=7.5)

    # 5. CLIP: the pooled EOS vector, projected, against an image (bundled model only)
    y5 = 1.6
    arrow(ax, (16.5, y4 - 0.6), (16.5, y5 + 0.5), text="row at the\nfirst EOS", text_at=(17.45, 2.95), size=7.5)
    box(ax, 16.5, y5, 4.2, 0.9, "pooled [d] → text_projection", colour=TEXT_COLOUR, size=8.5)
    box(ax, 11.2, y5, 2.7, 0.9, "cos(text, image)", colour="white", size=8.5, weight="bold")
    arrow(ax, (14.35, y5), (12.6, y5))
    box(ax, 6.0, y5, 4.8, 0.9, "vision tower → visual_projection", colour=VISION_COLOUR, dashed=True, edge=GREY,
        size=8.5)
    box(ax, 1.6, y5, 2.0, 0.9, "image", colour="white", dashed=True, edge=GREY, size=9)
    arrow(ax, (2.65, y5), (3.55, y5), colour=GREY, dashed=True)
    arrow(ax, (8.45, y5), (9.8, y5), colour=GREY, dashed=True)
    drawing.footnote(ax, 0.3, 0.35, "Dashed: CLIP's vision tower, shipped with the bundled model only (in its clip/ "
                     "folder); Stable Diffusion itself uses just the text tower and its last_hidden_state.")
    fig.tight_layout(pad=0.2)
    return fig


if __name__ == "__main__":
    drawing.main(draw, OUT, __doc__)
