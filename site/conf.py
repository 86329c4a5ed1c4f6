"""Sphinx configuration of the course's website (``python3 course.py site``; see site/make_site.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))          # heading_ids.py, beside this file

project = "sdlearn: Stable Diffusion, opened up"
author = "the sdlearn authors"
copyright = "the sdlearn authors, Apache-2.0"

extensions = ["myst_nb"]
exclude_patterns = ["_build"]
root_doc = "index"

# the notebooks' stored outputs, as nbval checks them: nothing is executed to build the site
nb_execution_mode = "off"
nb_merge_streams = True
nb_ipywidgets_js = {}                    # widgets are stills (site/make_site.py): no widget manager to load

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 4


myst_heading_slug_func = "heading_ids.jupyterlab_heading_id"   # JupyterLab's ids, so notebook links work in both

# MathJax 3 from the site itself (the copy sphinx-mathjax-offline ships, put in _static by site/make_site.py), with
# its SVG output: no web fonts to fetch, and the pages need no internet
mathjax_path = "mathjax/tex-svg.js"

html_theme = "sphinx_book_theme"
html_title = "sdlearn"
html_static_path = ["_static"]
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
}
html_show_sourcelink = False
html_context = {"default_mode": "light"}      # the theme's light/dark switch starts from a known mode
html_favicon = "_static/favicon.png"          # drawn by site/make_site.py (a browser asks for one on every site)
