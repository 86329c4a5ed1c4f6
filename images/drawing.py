"""Shared helpers for the diagram scripts ``images/make_*.py``: canvas, boxes, arrows, groups, footnotes,
and ``main``.

The scripts import this file as a sibling module (``import drawing``). That works because Python
puts the folder of the script it runs first on ``sys.path``: ``python images/make_unet.py`` finds
``images/drawing.py`` from any working directory, with no path set-up in the scripts. (Code that
imports a script some other way, e.g. a notebook, must put ``images/`` on ``sys.path`` itself.)

Every helper draws in data coordinates on a matplotlib ``Axes``. The defaults are the common look;
a script passes only what differs (``size=``, ``rounding=``, ``lw=``, ...), often once, with
``functools.partial``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402


def canvas(figsize, xlim, ylim) -> tuple[Figure, Axes]:
    """A figure of ``figsize`` inches with one axes drawn in diagram units: x over ``xlim``, y over
    ``ylim`` (both ``(low, high)``), with no axis lines, ticks or labels."""
    fig, ax = plt.subplots(figsize=figsize)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.axis("off")
    return fig, ax


def box(ax, x, y, w, h, text, *, colour, dashed=False, mono=False, size=10, weight="normal",
        edge="#444444", lw=1.2, rounding=0.2) -> None:
    """A rounded box of size ``w`` x ``h`` centred on ``(x, y)``, with ``text`` centred in it.

    ``dashed`` draws a dashed outline and greyer text (an optional part); ``mono`` sets the text
    in a monospace font (tensors, code); ``edge``, ``lw`` and ``rounding`` style the outline.
    """
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle=f"round,pad=0.02,rounding_size={rounding}",
                                facecolor=colour, edgecolor=edge, linewidth=lw, linestyle="--" if dashed else "-"))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, weight=weight,
            family="monospace" if mono else "sans-serif", color="#555555" if dashed else "#222222")


def arrow(ax, start, end, *, text=None, text_at=None, colour="#333333", dashed=False, rad=0.0, lw=1.3,
          size=8.5) -> None:
    """An arrow from ``start`` to ``end``, bent by ``rad`` (0: straight), with an optional label.

    ``text`` is written in monospace, in the arrow's colour, at ``text_at`` (default: a little
    above the middle of the arrow).
    """
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>", color=colour, lw=lw, linestyle="--" if dashed else "-",
                                shrinkA=0, shrinkB=0, connectionstyle=f"arc3,rad={rad}"))
    if text:
        x, y = text_at or ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.3)
        ax.text(x, y, text, ha="center", va="center", fontsize=size, color=colour, family="monospace")


def group(ax, x0, y0, x1, y1, label, colour, *, alpha=0.35, rounding=0.35, size=10.5) -> None:
    """A pale rounded area from ``(x0, y0)`` to ``(x1, y1)`` behind boxes that belong together,
    with a bold ``label`` in its upper left corner."""
    ax.add_patch(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle=f"round,pad=0.02,rounding_size={rounding}",
                                facecolor=colour, alpha=alpha, edgecolor=colour, linewidth=0))
    ax.text(x0 + 0.2, y1 - 0.3, label, ha="left", va="center", fontsize=size, weight="bold", color="#333333")


def footnote(ax, x, y, text, *, linespacing=1.2) -> None:
    """A small grey note, left-aligned at ``(x, y)``: the line under a diagram that gives SD 1.5's sizes
    or says what a dashed or grey part means."""
    ax.text(x, y, text, ha="left", va="center", fontsize=8.5, color="#444444", linespacing=linespacing)


def main(draw: Callable[[], Figure], out: Path, description: str, *, fonttype: str = "none",
         image_inline: bool = True, rc: dict | None = None, argv: Sequence[str] | None = None) -> Path:
    """Draw a diagram and write it as a reproducible SVG: a script's whole command line.

    Command line: ``--out PATH`` writes the SVG there instead of to ``out`` (the tests use it);
    ``--png PATH`` also writes a PNG preview. ``description`` is the script's docstring: its first
    line is the ``--help`` text.

    ``draw`` is called after the settings below are made, so they apply while the figure is built.
    ``fonttype="none"`` keeps text as SVG text (small and searchable); ``"path"`` (matplotlib's
    default) draws it as outlines. ``image_inline`` embeds raster images (from ``imshow``) in the
    SVG instead of writing PNG files next to it. ``rc`` holds any other rcParams, e.g.
    ``{"font.size": 11}``. A fixed ``svg.hashsalt`` and no date make the SVG the same on every
    run. Returns the path written.
    """
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=out, help=f"where to write the SVG (default: {out})")
    parser.add_argument("--png", type=Path, help="also write a PNG preview here")
    args = parser.parse_args(argv)
    plt.rcParams["svg.fonttype"] = fonttype
    plt.rcParams["svg.hashsalt"] = "sdlearn"  # stable ids: the same SVG on every run
    plt.rcParams["svg.image_inline"] = image_inline
    plt.rcParams.update(rc or {})
    fig = draw()
    fig.savefig(args.out, format="svg", metadata={"Date": None})
    if args.png:
        fig.savefig(args.png, dpi=100)
    print(f"wrote {args.out}")
    return args.out
