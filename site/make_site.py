"""Build the course's website from the notebooks' stored outputs: ``python3 course.py site``.

Sphinx with MyST-NB (the engine under Jupyter Book 1, and the Sphinx world's standard for notebooks),
with the PyData-based Book theme: one page per notebook, rendered from its stored outputs (nothing is
executed: they are the outputs nbval checks), a home page, the teacher's guide and the glossary,
Sphinx's own full-text search, and the diagrams. Everything the pages load is local, MathJax included
(sphinx-mathjax-offline's copy of MathJax 3), so the site works with no internet, like the course.

The sources are prepared in ``_build/site-src`` (git-ignored) from copies of the notebooks:

- every widget output becomes a still picture: the ``Image`` widgets its stored state holds, with a
  note that the notebook makes it live (controls alone become the note);
- every solution cell (its first line ``# Solution``) is collapsed behind a "show" button;
- headings get JupyterLab's ids (the heading's text, spaces made ``-``), so the same
  ``notebook.ipynb#Section-title`` links work in JupyterLab and on the site.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(__file__).resolve().parent
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
STILL_NOTE = "A still of the live widget: run the notebook in JupyterLab to move it."
CONTROLS_NOTE = "Live controls (sliders, buttons) are here in the notebook: run it in JupyterLab to use them."


def _images_of(model_id: str, state: dict, seen: set[str] | None = None) -> list[str]:
    """The PNG values (base64) of every ``Image`` widget under widget ``model_id``, in order."""
    seen = set() if seen is None else seen
    if model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    model = state[model_id]
    if model.get("model_name") == "ImageModel":
        buffers = {tuple(b["path"]): b for b in model.get("buffers", [])}
        value = buffers.get(("value",))
        fmt = model.get("state", {}).get("format", "png")
        return [value["data"]] if value and value.get("encoding") == "base64" and fmt == "png" else []
    found = []
    for child in model.get("state", {}).get("children", []):
        if isinstance(child, str) and child.startswith("IPY_MODEL_"):
            found += _images_of(child[len("IPY_MODEL_"):], state, seen)
    return found


def still_outputs(output: dict, state: dict) -> list[dict]:
    """A widget output's still: its images as PNG outputs, or its text, then a note."""
    model_id = output["data"][WIDGET_VIEW]["model_id"]
    pngs = _images_of(model_id, state)
    shown = [{"output_type": "display_data", "metadata": {}, "data": {"image/png": png}} for png in pngs]
    note = STILL_NOTE if pngs else CONTROLS_NOTE
    return shown + [{"output_type": "display_data", "metadata": {}, "data": {"text/markdown": f"*{note}*"}}]


def prepare_notebook(nb: dict) -> dict:
    """A copy of notebook ``nb`` for the site: widgets as stills, solutions collapsed."""
    nb = json.loads(json.dumps(nb))
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            if WIDGET_VIEW in output.get("data", {}):
                outputs += still_outputs(output, state)
            else:
                outputs.append(output)
        cell["outputs"] = outputs
        if "".join(cell["source"]).lstrip().startswith("# Solution"):
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if "hide-cell" not in tags:
                tags.append("hide-cell")
    nb.get("metadata", {}).pop("widgets", None)          # the stills replace the live state
    return nb


def mathjax_dir() -> Path:
    """MathJax 3, as the ``sphinx-mathjax-offline`` package ships it (its module name has a hyphen)."""
    import importlib.util

    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or not spec.origin:
        raise SystemExit("the site needs MathJax from the sphinx-mathjax-offline package: "
                         "pip install -e '.[test]' (python3 course.py setup installs it)")
    return Path(spec.origin).parent / "static" / "mathjax"


def prepare_sources(src: Path) -> Path:
    """Copy and prepare everything Sphinx reads into ``src`` (made afresh)."""
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    for name in ("conf.py", "heading_ids.py", "index.md"):
        shutil.copy(SITE / name, src / name)
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        prepared = prepare_notebook(json.loads(notebook.read_text()))
        (src / "notebooks" / notebook.name).write_text(json.dumps(prepared, indent=1, ensure_ascii=False))
    for page in ("TEACHING.md", "GLOSSARY.md"):
        shutil.copy(ROOT / page, src / page)
    card = src / "sdlearn" / "bundled" / "sdlearn-tiny"
    card.mkdir(parents=True)
    shutil.copy(ROOT / "sdlearn" / "bundled" / "sdlearn-tiny" / "README.md", card / "README.md")
    shutil.copytree(ROOT / "images", src / "images", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shutil.copytree(mathjax_dir(), src / "_static" / "mathjax")
    draw_favicon(src / "_static" / "favicon.png")
    return src


def draw_favicon(path: Path) -> None:
    """A red circle on white, the toy world's first picture, as the site's icon."""
    from PIL import Image, ImageDraw

    icon = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(icon).ellipse((4, 4, 27, 27), fill=(220, 40, 40))
    icon.save(path)


def build(out: Path, *, src: Path | None = None, quiet: bool = True) -> Path:
    """Prepare the sources and run Sphinx into ``out``; warnings are errors (a broken link fails)."""
    src = prepare_sources(src or out.parent / "site-src")
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-E", str(src), str(out)]
    subprocess.run(command + (["-q"] if quiet else []), check=True, cwd=src)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "site", help="where the site goes")
    args = parser.parse_args(argv)
    out = build(args.out.resolve(), quiet=False)
    print(f"the site is in {out}; open {out / 'index.html'} in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
