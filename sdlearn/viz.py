"""Figures for the course: image grids, latent channels, training and sampling curves.

Every function returns a ``matplotlib.figure.Figure`` and never calls ``plt.show()``:
a notebook displays the returned figure, a script can ``fig.savefig(path)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from sdlearn._checks import check_int
from sdlearn.images import to_pil

DEFAULT_MAX_COLS = 6


def _as_pil_list(images) -> list[Image.Image]:
    """PIL list, tensor [B, 3, H, W] / [3, H, W] in [-1, 1], or a list mixing PIL and [3, H, W] tensors."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, torch.Tensor):
        return to_pil(images)
    if isinstance(images, (list, tuple)):
        out: list[Image.Image] = []
        for i, img in enumerate(images):
            if isinstance(img, Image.Image):
                out.append(img)
            elif isinstance(img, torch.Tensor):
                pils = to_pil(img)
                if len(pils) != 1:
                    raise ValueError(
                        f"images[{i}] is a batch of {len(pils)} images; in a list each tensor must "
                        "be one image [3, H, W]. Pass the batch tensor itself instead of a list."
                    )
                out.append(pils[0])
            else:
                raise TypeError(
                    f"images[{i}] is a {type(img).__name__}; expected a PIL image or a tensor "
                    "[3, H, W] in [-1, 1]."
                )
        return out
    raise TypeError(
        f"images is a {type(images).__name__}; expected a list of PIL images or a tensor "
        "[B, 3, H, W] in [-1, 1]."
    )


def _grid_shape(n: int, rows: int | None, cols: int | None) -> tuple[int, int]:
    for name, value in (("rows", rows), ("cols", cols)):
        if value is not None:
            check_int(name, value, expected="a positive int or None")
    if rows is None and cols is None:
        cols = min(n, DEFAULT_MAX_COLS)
    if cols is None:
        cols = math.ceil(n / rows)
    if rows is None:
        rows = math.ceil(n / cols)
    if rows * cols < n:
        raise ValueError(
            f"a {rows}x{cols} grid has {rows * cols} cells but there are {n} images. "
            "Give more rows or cols, or leave one of them as None to have it computed."
        )
    return rows, cols


def image_grid(
    images,
    *,
    rows: int | None = None,
    cols: int | None = None,
    titles: Sequence[str] | None = None,
    size: float = 2.0,
) -> Figure:
    """Show images in a grid, one axes per image, with an optional title over each.

    ``images``: a list of PIL images or a tensor ``[B, 3, H, W]`` in [-1, 1]. By default
    one row of up to 6 images, then more rows. ``size``: inches per cell.
    """
    pils = _as_pil_list(images)
    if not pils:
        raise ValueError("images is empty; expected at least one image.")
    if titles is not None and len(titles) != len(pils):
        raise ValueError(
            f"got {len(titles)} titles for {len(pils)} images; expected one title per image (or titles=None)."
        )
    rows, cols = _grid_shape(len(pils), rows, cols)
    fig = Figure(figsize=(size * cols, size * rows + (0.3 * rows if titles else 0.0)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= len(pils):
            fig.delaxes(ax)
            continue
        ax.imshow(pils[i])
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
    return fig


def show_latent_channels(latents, *, title: str | None = None, size: float = 2.0) -> Figure:
    """One panel per latent channel, on a shared symmetric colour scale, with a colour bar.

    ``latents``: ``[4, h, w]`` or ``[1, 4, h, w]`` (tensor or array; any channel count
    works). Blue is negative, red positive, white zero; the scale is ``[-m, m]`` with
    ``m`` the largest absolute value.
    """
    if isinstance(latents, torch.Tensor):
        arr = latents.detach().to("cpu", torch.float32).numpy()
    elif isinstance(latents, np.ndarray):
        arr = latents.astype(np.float32)
    else:
        raise TypeError(
            f"latents is a {type(latents).__name__}; expected a tensor [4, h, w] or [1, 4, h, w]."
        )
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(
                f"latents has shape {tuple(arr.shape)}, a batch of {arr.shape[0]}; expected one "
                "sample [1, 4, h, w] or [4, h, w]. Fix: pass latents[0] (or latents[i:i+1])."
            )
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(
            f"latents has shape {tuple(arr.shape)}; expected [4, h, w] or [1, 4, h, w] (channels first)."
        )
    if not np.isfinite(arr).all():
        raise ValueError("latents contain NaN or infinity; nothing sensible to show.")
    channels = arr.shape[0]
    vmax = float(np.abs(arr).max()) or 1.0
    fig = Figure(figsize=(size * channels + 0.8, size + (0.4 if title else 0.2)), layout="constrained")
    axes = fig.subplots(1, channels, squeeze=False)[0]
    image = None
    for c, ax in enumerate(axes):
        image = ax.imshow(arr[c], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(f"channel {c}", fontsize=9)
        ax.set_axis_off()
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(
    x: Sequence[float],
    ys: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    title: str | None = None,
) -> Figure:
    """Line plot of each ``ys[label]`` against ``x``, with a legend; ``logy`` for a log y-axis."""
    x_arr = np.asarray(x, dtype=np.float64)
    if x_arr.ndim != 1:
        raise ValueError(f"x has shape {x_arr.shape}; expected a 1-D sequence of numbers.")
    if not isinstance(ys, Mapping) or not ys:
        raise ValueError("ys must be a non-empty dict {label: values}, e.g. {'loss': losses}.")
    fig = Figure(figsize=(6.0, 3.5), layout="constrained")
    ax = fig.subplots()
    for label, values in ys.items():
        y_arr = np.asarray(values, dtype=np.float64)
        if y_arr.shape != x_arr.shape:
            raise ValueError(
                f"ys[{label!r}] has {y_arr.size} values (shape {y_arr.shape}) but x has "
                f"{x_arr.size}; expected one y per x."
            )
        if logy and (y_arr <= 0).any():
            raise ValueError(
                f"ys[{label!r}] has values <= 0, which a log y-axis cannot show. Use logy=False, "
                "or plot a positive quantity."
            )
        ax.plot(x_arr, y_arr, label=str(label))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(True, alpha=0.3)
    return fig
