"""reveal.js slide decks for the 2-hour class path of TEACHING.md: ``python3 course.py slides``.

One deck per notebook of that path, made with nbconvert's slides exporter from the notebook's stored
outputs: every ``##`` section starts a slide and every ``###`` subsection a sub-slide (reveal.js's
down arrow); code and outputs stay on their section's slide; exercises' solutions are left out, and
widgets are stills, as on the website (site/make_site.py). Decks go to ``_build/slides/NN_name.slides.html``;
they load reveal.js from its CDN (nbconvert's default), so presenting them needs internet, or a local
reveal.js passed with ``--reveal-prefix``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _make_site():
    """site/make_site.py, beside this script (whether run as a script or imported by its path)."""
    spec = importlib.util.spec_from_file_location("make_site", Path(__file__).with_name("make_site.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def class_path() -> list[str]:
    """The notebooks of TEACHING.md's 2-hour class, in its order."""
    guide = (ROOT / "TEACHING.md").read_text()
    table = guide.split("## A 2-hour class", 1)[1].split("\n## ", 1)[0]
    return list(dict.fromkeys(re.findall(r"\]\(notebooks/(\d\d_\w+)\.ipynb", table)))


def slide_notebook(nb: dict) -> dict:
    """A copy of ``nb`` with reveal.js's slide types set: ## a slide, ### a sub-slide, solutions skipped."""
    nb = _make_site().prepare_notebook(nb)
    for i, cell in enumerate(nb["cells"]):
        source = "".join(cell["source"]).lstrip()
        if cell["cell_type"] == "markdown" and (i == 0 or source.startswith("## ")):
            kind = "slide"
        elif cell["cell_type"] == "markdown" and source.startswith("### "):
            kind = "subslide"
        elif cell["cell_type"] == "code" and source.startswith("# Solution"):
            kind = "skip"
        else:
            kind = "-"
        cell.setdefault("metadata", {})["slideshow"] = {"slide_type": kind}
    return nb


def build(out: Path, *, reveal_prefix: str | None = None) -> list[Path]:
    """One deck per notebook of the class path, into ``out``; returns their paths."""
    import nbformat
    from nbconvert import SlidesExporter

    out.mkdir(parents=True, exist_ok=True)
    exporter = SlidesExporter()
    if reveal_prefix:
        exporter.reveal_url_prefix = reveal_prefix
    decks = []
    for name in class_path():
        nb = slide_notebook(json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text()))
        body, _ = exporter.from_notebook_node(nbformat.reads(json.dumps(nb), as_version=4))
        deck = out / f"{name}.slides.html"
        deck.write_text(body)
        decks.append(deck)
    return decks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "slides", help="where the decks go")
    parser.add_argument("--reveal-prefix", help="where reveal.js is, for presenting offline")
    args = parser.parse_args(argv)
    for deck in build(args.out.resolve(), reveal_prefix=args.reveal_prefix):
        print(deck)
    return 0


if __name__ == "__main__":
    sys.exit(main())
