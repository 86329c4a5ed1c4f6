"""The course's website (site/make_site.py, ``python3 course.py site``): built from the stored outputs, then
opened page by page in headless Chromium: no console error, every image loaded, no broken internal link,
search finds the course's words."""

from __future__ import annotations

import functools
import html
import json
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

from test_browser import CHROMIUM, CHROMIUM_FLAGS, require_browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def builder(load_script):
    return load_script("site/make_site.py")


@pytest.fixture(scope="module")
def site(builder, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("site")
    return builder.build(work / "site", src=work / "site-src")


def pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.parts)


@pytest.mark.slow                       # builds the site (or the decks): about 20 s
def test_every_notebook_has_a_page_and_the_home_page_links_them(site):
    home = (site / "index.html").read_text()
    for notebook in NOTEBOOKS:
        assert (site / "notebooks" / f"{notebook.stem}.html").is_file()
        assert f'href="notebooks/{notebook.stem}.html"' in home
    for page in ("TEACHING.html", "GLOSSARY.html", "search.html"):
        assert (site / page).is_file()


@pytest.mark.slow                       # builds the site (or the decks): about 20 s
def test_solutions_are_collapsed_and_widgets_are_stills(site, builder):
    for notebook in NOTEBOOKS:
        nb = json.loads(notebook.read_text())
        solutions = sum("".join(c["source"]).lstrip().startswith("# Solution") for c in nb["cells"] if c["cell_type"] == "code")
        page = (site / "notebooks" / f"{notebook.stem}.html").read_text()
        assert len(re.findall(r'<details class="[^"]*\bhide\b[^"]*">', page)) == solutions, notebook.name
        widgets = sum(builder.WIDGET_VIEW in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
        assert page.count(builder.STILL_NOTE) + page.count(builder.CONTROLS_NOTE) == widgets, notebook.name
        assert builder.WIDGET_VIEW not in page
    # notebook 08's sliders drive a picture: its still is the picture the stored widget state holds
    prepared = builder.prepare_notebook(json.loads((ROOT / "notebooks" / "08_latent_space.ipynb").read_text()))
    stills = [o for c in prepared["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})
              and any(builder.STILL_NOTE in x.get("data", {}).get("text/markdown", "") for x in c["outputs"])]
    assert len(stills) == 1 and len(stills[0]["data"]["image/png"]) > 1000


def test_a_widget_without_pictures_becomes_the_note_and_images_are_found_in_nested_boxes(builder):
    state = {"box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_slider", "IPY_MODEL_img"]}},
             "slider": {"model_name": "FloatSliderModel", "state": {}},
             "img": {"model_name": "ImageModel", "state": {"format": "png"},
                     "buffers": [{"path": ["value"], "encoding": "base64", "data": "iVBORw0KGgo="}]}}
    view = {"output_type": "display_data", "data": {builder.WIDGET_VIEW: {"model_id": "box"}, "text/plain": "VBox()"}}
    out = builder.still_outputs(view, state)
    assert out[0]["data"] == {"image/png": "iVBORw0KGgo="} and builder.STILL_NOTE in out[1]["data"]["text/markdown"]
    alone = builder.still_outputs({"data": {builder.WIDGET_VIEW: {"model_id": "slider"}}}, state)
    assert len(alone) == 1 and builder.CONTROLS_NOTE in alone[0]["data"]["text/markdown"]


@pytest.mark.slow                       # builds the site (or the decks): about 20 s
def test_the_pages_load_nothing_from_the_internet(site):
    for page in pages(site):
        text = page.read_text()
        for url in re.findall(r'(?:src|href)="(https?://[^"]+)"', text):
            assert not re.search(r"\.(js|css)(\?|$)", url), f"{page.name} loads {url} from the internet"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_every_page_opens_in_a_browser_without_errors_broken_images_or_broken_links(site):
    require_browser("the site's browser test")
    from playwright.sync_api import sync_playwright

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    problems, links = [], set()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.on("console", lambda m: m.type == "error" and problems.append(f"{page.url}: console: {m.text}"))
            page.on("pageerror", lambda e: problems.append(f"{page.url}: error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"{page.url}: failed request {r.url}"))
            for path in pages(site):
                url = urljoin(base, path.relative_to(site).as_posix())
                page.goto(url, wait_until="load")
                broken = page.evaluate("""async () => {
                    const images = [...document.images];
                    images.forEach(i => { i.loading = 'eager'; });
                    await Promise.all(images.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
                    return images.filter(i => !(i.naturalWidth > 0)).map(i => i.src);
                }""")
                problems += [f"{url}: image not loaded: {src}" for src in broken]
                links |= {(url, href) for href in page.eval_on_selector_all("a[href]", "els => els.map(a => a.href)")}
            page.goto(urljoin(base, "notebooks/03_forward_noising.html"), wait_until="load")
            page.wait_for_selector("mjx-container svg", state="attached", timeout=30_000)   # MathJax typeset them
            assert page.locator("mjx-container").count() > 20
            page.goto(urljoin(base, "search.html?q=latent"), wait_until="load")
            page.wait_for_selector("ul.search li", timeout=30_000)
            found = page.eval_on_selector_all("ul.search li a", "els => els.map(a => a.getAttribute('href'))")
            assert any("02_vae" in href for href in found), found
            browser.close()
    finally:
        server.shutdown()
    for source, href in sorted(links):
        target = urlparse(href)
        if not href.startswith(base):
            continue                                                   # other sites: not checked here
        file = site / unquote(target.path[len(urlparse(base).path):] or "index.html")
        if file.is_dir():
            file = file / "index.html"
        if not file.is_file():
            problems.append(f"{source}: broken link {href}")
        elif target.fragment and file.suffix == ".html":
            ids = {html.unescape(i) for i in re.findall(r'id="([^"]+)"', file.read_text())}
            if unquote(target.fragment) not in ids:
                problems.append(f"{source}: link to a missing section {href}")
    assert not problems, "\n".join(problems[:30])


# ---- the slides ---------------------------------------------------------------------------------------------------


@pytest.mark.slow                       # builds the site (or the decks): about 20 s
def test_slides_of_the_two_hour_class_are_built_a_slide_per_section(load_script, tmp_path):
    slides = load_script("site/make_slides.py")
    path = slides.class_path()
    teaching = (ROOT / "TEACHING.md").read_text().split("## A 2-hour class", 1)[1].split("\n## ", 1)[0]
    assert path[0] == "00_start_here" and all(f"notebooks/{name}.ipynb" in teaching for name in path)
    decks = slides.build(tmp_path)
    assert [d.name for d in decks] == [f"{name}.slides.html" for name in path]
    for name, deck in zip(path, decks):
        nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
        heads = ["title" if i == 0 else "".join(c["source"]).lstrip()[:4] for i, c in enumerate(nb["cells"])
                 if c["cell_type"] == "markdown"]
        slides_, subslides = sum(h == "title" or h.startswith("## ") for h in heads), sum(h.startswith("### ") for h in heads)
        text = deck.read_text()
        # reveal.js nests them: a slide is a <section> around its first sub-slide's <section>
        assert text.count("<section") == 2 * slides_ + subslides, name
        assert "reveal" in text and "# Solution" not in text
