"""Figures for the course: image grids, latent channels, training and sampling curves.

Every function returns a ``matplotlib.figure.Figure`` and never calls ``plt.show()``:
a notebook displays the returned figure, a script can ``fig.savefig(path)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from sdlearn._checks import check_int, positive_int
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


# --------------------------------------------------------------------------------------
# Training curves (notebook 09)
# --------------------------------------------------------------------------------------

def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean: element i is the mean of ``values[max(0, i - window + 1) : i + 1]``. Shape [len(values)]."""
    check_int("window", window, expected="an int >= 1 (steps to average over)")
    v = np.asarray(values, dtype=np.float64).ravel()
    cumulative = np.concatenate([[0.0], np.cumsum(v)])
    end = np.arange(1, len(v) + 1)
    start = np.maximum(0, end - window)
    return (cumulative[end] - cumulative[start]) / (end - start)


def loss_curve(losses: Sequence[float], *, window: int = 25, steps: int | None = None, title: str | None = None,
               size: tuple[float, float] = (6.0, 3.0)) -> Figure:
    """A ``matplotlib.figure.Figure`` of a training run: every step's loss (light) and its moving average over
    ``window`` steps (dark), on a log y-axis. ``steps`` fixes the x-axis to 1 .. steps, so a curve
    drawn during training grows from left to right.
    """
    values = np.asarray(losses, dtype=np.float64).ravel()
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    x = np.arange(1, len(values) + 1)
    if len(values):
        ax.plot(x, values, color="tab:blue", alpha=0.3, lw=0.8, label="loss of each step")
        ax.plot(x, moving_average(values, window), color="tab:blue", lw=1.8, label=f"mean of the last {window}")
        if (values > 0).all():
            from matplotlib.ticker import FuncFormatter

            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "1235" else "")  # 0.2, 0.3, 0.5, 1 ...
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlim(0, steps if steps is not None else max(1, len(values)))
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


class LiveLoss:
    """A :func:`sdlearn.train.fit` callback that keeps every loss and redraws the loss curve every ``every`` steps.

    ``show(figure)`` receives each new :func:`loss_curve` figure (and the last one, at step
    ``steps``). In a notebook pass the ``update`` method of a display handle, so that one
    output cell redraws in place while the model trains::

        live = LiveLoss(None, steps=STEPS, every=10)
        live.show = display(live.figure(), display_id=True).update
        sdlearn.train.fit(model, loss_fn, steps=STEPS, ..., callback=live)

    It needs no screen: under nbval or in a script it records the same way. ``show=None`` only records.
    """

    def __init__(self, show: Callable | None = None, *, steps: int, every: int = 10, window: int = 25,
                 title: str | None = None):
        for name, value in (("steps", steps), ("every", every), ("window", window)):
            positive_int(name, value)
        self.show, self.steps, self.every, self.window, self.title = show, steps, every, window, title
        self.losses: list[float] = []

    def __call__(self, step: int, loss: float) -> None:
        self.losses.append(float(loss))
        if self.show is not None and ((step + 1) % self.every == 0 or step + 1 == self.steps):
            self.show(self.figure())

    def figure(self) -> Figure:
        """The curve of the losses so far (:func:`loss_curve`)."""
        return loss_curve(self.losses, window=self.window, steps=self.steps, title=self.title)
