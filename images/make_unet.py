"""Draw images/unet.svg: SD 1.5's U-Net, its levels, skip connections, and where the timestep and the text enter.

Run from anywhere: ``python images/make_unet.py``
(``--png PATH`` also writes a PNG preview, ``--out PATH`` writes the SVG elsewhere).
The resolutions and channel counts are computed from ``sdlearn/configs/sd15/unet_config.json``
(and, for the footnote, the bundled model's ``unet/config.json``), not typed in.
Shown by notebooks/05_unet_noise_prediction.ipynb.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import drawing  # images/drawing.py, beside this script: the shared helpers (it selects the Agg backend)
import matplotlib.pyplot as plt
from drawing import arrow

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).with_name("unet.svg")
SD15_CONFIG = ROOT / "sdlearn" / "configs" / "sd15" / "unet_config.json"
BUNDLED_CONFIG = ROOT / "sdlearn" / "bundled" / "sdlearn-tiny" / "unet" / "config.json"

DOWN_COLOUR = "#dbe9f6"
UP_COLOUR = "#fde3c8"
MID_COLOUR = "#e8dcf2"
TIME_COLOUR = "#fff4b8"
TEXT_COLOUR = "#d9f0d3"
TENSOR_COLOUR = "#f4f4f4"
SKIP_COLOUR = "#7a7a7a"


def levels(config: dict) -> dict:
    """Shapes along the U-Net, from its config: what each down / up block outputs, and the middle."""
    channels = list(config["block_out_channels"])
    side = int(config["sample_size"])
    n = len(channels)
    down, res = [], side
    for i, c in enumerate(channels):
        out = res // 2 if i < n - 1 else res  # every down block but the last ends with a stride-2 conv
        down.append((config["down_block_types"][i], c, res, out))
        res = out
    mid = (channels[-1], res)
    up = []
    for j, c in enumerate(reversed(channels)):
        out = res * 2 if j < n - 1 else res  # every up block but the last ends with an up-sampler
        up.append((config["up_block_types"][j], c, res, out))
        res = out
    skips_per_down = [config["layers_per_block"] + (1 if i < n - 1 else 0) for i in range(n)]
    skips_per_down[0] += 1  # conv_in's output is saved too
    return {"side": side, "in": config["in_channels"], "out": config["out_channels"], "first": channels[0],
            "down": down, "mid": mid, "up": up, "layers": config["layers_per_block"],
            "cross_dim": config["cross_attention_dim"], "skips": sum(skips_per_down)}


box = partial(drawing.box, lw=1.1)


def draw(config: dict, bundled: dict | None) -> plt.Figure:
    lv = levels(config)
    n = len(lv["down"])
    fig, ax = drawing.canvas((13, 7.6), (0, 26), (-0.6, 15.2))
    top, step = 12.2, 2.3
    xl, xr, w, h = 5.6, 20.4, 5.6, 1.45
    side = lv["side"]

    # input and conv_in (left), conv_out and output (right)
    box(ax, xl, top + 2.1, 4.2, 0.8, f"noisy latent x_t  [{lv['in']}, {side}, {side}]", colour=TENSOR_COLOUR,
        mono=True, size=8.5)
    box(ax, xl, top + 1.05, 3.2, 0.6, f"conv_in → {lv['first']} ch", colour="white", size=8.5)
    arrow(ax, (xl, top + 1.7), (xl, top + 1.35))
    arrow(ax, (xl, top + 0.75), (xl, top + h / 2))
    box(ax, xr, top + 2.1, 4.2, 0.8, f"predicted noise ε̂  [{lv['out']}, {side}, {side}]", colour=TENSOR_COLOUR,
        mono=True, size=8.5)
    box(ax, xr, top + 1.05, 3.2, 0.6, f"conv_out → {lv['out']} ch", colour="white", size=8.5)
    arrow(ax, (xr, top + h / 2), (xr, top + 0.75))
    arrow(ax, (xr, top + 1.35), (xr, top + 1.7))

    # the down path, top to bottom; the up path, bottom to top
    ys = [top - i * step for i in range(n)]
    for i, (kind, c, res, out) in enumerate(lv["down"]):
        y = ys[i]
        attn = "ResNet + attention" if "CrossAttn" in kind else "ResNet"
        box(ax, xl, y, w, h, f"down_blocks.{i}  {kind}\n{lv['layers']} × ({attn})"
            + (", stride-2 conv" if i < n - 1 else "") + f"\n{c} ch, {res}×{res} → {out}×{out}",
            colour=DOWN_COLOUR, size=8.3)
        if i < n - 1:
            arrow(ax, (xl, y - h / 2), (xl, ys[i + 1] + h / 2))
    for j, (kind, c, res, out) in enumerate(lv["up"]):
        y = ys[n - 1 - j]
        attn = "ResNet + attention" if "CrossAttn" in kind else "ResNet"
        box(ax, xr, y, w, h, f"up_blocks.{j}  {kind}\n{lv['layers'] + 1} × ({attn})"
            + (", up-sample" if j < n - 1 else "") + f"\n{c} ch, {res}×{res} → {out}×{out}",
            colour=UP_COLOUR, size=8.3)
        if j < n - 1:
            arrow(ax, (xr, y + h / 2), (xr, ys[n - 2 - j] - h / 2))
    ymid = ys[-1] - step
    c_mid, r_mid = lv["mid"]
    box(ax, (xl + xr) / 2, ymid, 6.4, h, f"mid_block  {config.get('mid_block_type') or 'UNetMidBlock2DCrossAttn'}"
        f"\nResNet, attention, ResNet\n{c_mid} ch × {r_mid}×{r_mid}", colour=MID_COLOUR, size=8.3)
    arrow(ax, (xl, ys[-1] - h / 2), ((xl + xr) / 2 - 3.2, ymid), rad=0.25)
    arrow(ax, ((xl + xr) / 2 + 3.2, ymid), (xr, ys[-1] - h / 2), rad=0.25)

    # skip connections, level by level
    for i in range(n):
        y = ys[i] + 0.25
        arrow(ax, (xl + w / 2, y), (xr - w / 2, y), colour=SKIP_COLOUR, dashed=True, lw=1.1)
    ax.text((xl + xr) / 2, ys[0] + 0.95, f"skip connections: {lv['skips']} saved tensors, concatenated on the way up",
            ha="center", va="center", fontsize=8.5, color="#555555")

    # where the timestep and the text come in
    box(ax, (xl + xr) / 2, top + 2.2, 6.6, 0.95,
        f"timestep t → sinusoidal emb [{lv['first']}] → MLP → temb [{4 * lv['first']}]\n"
        "added in every ResNet block (time_emb_proj)", colour=TIME_COLOUR, size=8.3)
    box(ax, (xl + xr) / 2, ymid - 1.9, 6.6, 0.95,
        f"text embeddings [77, {lv['cross_dim']}] from CLIP\n"
        "keys and values of every cross-attention (attn2)", colour=TEXT_COLOUR, size=8.3)
    arrow(ax, ((xl + xr) / 2, ymid - 1.42), ((xl + xr) / 2, ymid - h / 2), colour="#3b7d32")
    arrow(ax, ((xl + xr) / 2 - 3.3, top + 2.2), (xl + w / 2 - 0.4, top + h / 2), colour="#a08400", rad=0.2)
    arrow(ax, ((xl + xr) / 2 + 3.3, top + 2.2), (xr - w / 2 + 0.4, top + h / 2), colour="#a08400", rad=-0.2)
    for y in ys[: n - 1]:
        arrow(ax, ((xl + xr) / 2 - 3.0, ymid - 1.42), (xl + w / 2, y - 0.35), colour="#3b7d32", lw=0.8, rad=-0.1)
        arrow(ax, ((xl + xr) / 2 + 3.0, ymid - 1.42), (xr - w / 2, y - 0.35), colour="#3b7d32", lw=0.8, rad=0.1)

    ax.text(0.2, top + 2.95, "SD 1.5's U-Net (from sdlearn/configs/sd15/unet_config.json)", ha="left",
            fontsize=11, weight="bold", color="#333333")
    if bundled is not None:
        b = levels(bundled)
        chans = "/".join(str(c) for _, c, _, _ in b["down"])
        drawing.footnote(ax, 0.2, -0.35, f"The bundled model has the same design with {len(b['down'])} levels: "
                         f"{b['side']}×{b['side']} → {b['mid'][1]}×{b['mid'][1]}, {chans} channels, "
                         f"{b['layers']} ResNet per down block, text width {b['cross_dim']}.")
    fig.tight_layout(pad=0.2)
    return fig


def draw_from_configs() -> plt.Figure:
    config = json.loads(SD15_CONFIG.read_text(encoding="utf-8"))
    bundled = json.loads(BUNDLED_CONFIG.read_text(encoding="utf-8")) if BUNDLED_CONFIG.is_file() else None
    return draw(config, bundled)


if __name__ == "__main__":
    drawing.main(draw_from_configs, OUT, __doc__)
