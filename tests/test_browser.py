"""The widgets of notebook 08 in a real browser: JupyterLab on localhost, driven by headless Chromium.

nbval runs the notebooks headless, so it can only check that the widgets are built and that their
update function draws once. This test checks what a learner sees: it starts JupyterLab (no token,
a throw-away config, runtime and settings folder, on a free port), opens
``notebooks/08_latent_space.ipynb`` in Debian's Chromium (``/usr/bin/chromium``) through
Playwright's Python API (it never downloads a browser), runs the cells the sliders need, moves the
guidance slider with the keyboard, and checks that the picture changed: its ``src`` and its pixels.

It needs ``/usr/bin/chromium`` (``apt-get install chromium``) and ``playwright`` (the ``test``
extra). Without Chromium it is skipped, unless ``SDLEARN_REQUIRE_BROWSER=1`` (set in CI), where a
missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/08_latent_space.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
REQUIRED = os.environ.get("SDLEARN_REQUIRE_BROWSER", "").strip() == "1"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# The code cells the sliders need, in order, each found by a line only it contains: the set-up, the
# settings, the model, the two start noises, the two prompts' embeddings, the explorer and sliders,
# and the update function that draws and displays them. The heavy cells in between are not run.
NEEDED_CELLS = (
    "generator = make_generator(SEED)",
    "CHUNK = ",
    "comp = models.load(",
    "noise_a = torch.randn(",
    "embeds_a, embeds_b = encode_prompts(",
    "explorer = sdlearn.latents.LatentExplorer(",
    "def update(change=None):",
)
SERVER_TIMEOUT_S = 60
CELL_TIMEOUT_S = 120
REDRAW_TIMEOUT_S = 60


def _why_not() -> str | None:
    """Why the test cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -e '.[test]' (or pip install playwright)"
    return None


def require_browser(what: str) -> None:
    """Skip the calling test when Chromium or Playwright is missing; fail instead under SDLEARN_REQUIRE_BROWSER=1."""
    why = _why_not()
    if why:
        if REQUIRED:
            pytest.fail(f"SDLEARN_REQUIRE_BROWSER=1 but {what} cannot run: {why}")
        pytest.skip(why)


def _needed_cell_indices() -> list[int]:
    cells = json.loads((ROOT / NOTEBOOK).read_text(encoding="utf-8"))["cells"]
    indices = []
    for needle in NEEDED_CELLS:
        found = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and needle in "".join(c["source"])]
        if len(found) != 1:
            raise AssertionError(
                f"expected exactly one code cell of {NOTEBOOK} containing {needle!r}, found {len(found)}. "
                "The notebook changed: update NEEDED_CELLS in tests/test_browser.py."
            )
        indices.append(found[0])
    assert indices == sorted(indices), f"NEEDED_CELLS are out of notebook order: {indices}"
    return indices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_jupyterlab(tmp: Path, port: int) -> subprocess.Popen:
    config, runtime, data = tmp / "config", tmp / "runtime", tmp / "data"
    # Render every cell (JupyterLab 4 otherwise only renders the cells in view), so cells can be found by index.
    settings = config / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    for folder in (runtime, data):
        folder.mkdir()
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(runtime),
               JUPYTERLAB_SETTINGS_DIR=str(config / "lab" / "user-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"), IPYTHONDIR=str(tmp / "ipython"),
               PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""), HF_HUB_OFFLINE="1",
               SDLEARN_DEVICE="cpu", MPLBACKEND="Agg")
    env.pop("SDLEARN_MODEL", None)                      # the bundled model, as in CI
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={ROOT}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp / "jupyterlab.log", "wb")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_server(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"JupyterLab exited with code {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not answer on {url} within {SERVER_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    """Stop JupyterLab and its kernels (its own process group, started by this test)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def _run_cell(page, cell, index: int) -> None:
    """Run one code cell as a learner would (select it, Shift+Enter) and wait until it has finished."""
    prompt = cell.locator(".jp-InputArea-prompt")
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    deadline = time.monotonic() + CELL_TIMEOUT_S
    while time.monotonic() < deadline:
        if re.fullmatch(r"\[\d+\]:", prompt.inner_text().strip()):
            break
        page.wait_for_timeout(250)
    else:
        raise AssertionError(f"cell {index} did not finish within {CELL_TIMEOUT_S} s (prompt {prompt.inner_text()!r})")
    stderr = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    for i in range(stderr.count()):
        text = stderr.nth(i).inner_text()
        if "Traceback" in text or "Error" in text:
            raise AssertionError(f"cell {index} raised an error:\n{text[-2000:]}")


@pytest.mark.slow
def test_moving_a_slider_redraws_the_picture_in_jupyterlab(tmp_path):
    require_browser("the browser test")
    from playwright.sync_api import sync_playwright

    indices = _needed_cell_indices()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start_jupyterlab(tmp_path, port)
    try:
        _wait_for_server(server, url, tmp_path / "jupyterlab.log")
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.set_default_timeout(SERVER_TIMEOUT_S * 1000)
                page.goto(f"{url}/lab/tree/{NOTEBOOK}")
                notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
                notebook.locator(".jp-Cell").first.wait_for()
                # the kernel must be up before the first Shift+Enter: the status bar says "<kernel> | Idle"
                page.wait_for_function(
                    "() => { const bar = document.querySelector('#jp-main-statusbar');"
                    " const text = bar ? bar.innerText : '';"
                    " return /[|]\\s*Idle/.test(text) && !/No Kernel/.test(text); }",
                    timeout=SERVER_TIMEOUT_S * 1000)
                cells = notebook.locator(".jp-Cell")
                for index in indices:
                    _run_cell(page, cells.nth(index), index)

                widget_cell = cells.nth(indices[-1])
                image = widget_cell.locator(".jp-OutputArea-output img.widget-image")
                image.wait_for(timeout=REDRAW_TIMEOUT_S * 1000)
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
                before_src, before_png = image.get_attribute("src"), image.screenshot()

                slider = widget_cell.locator(".widget-slider", has=page.locator(".widget-label", has_text="guidance"))
                readout = slider.locator(".widget-readout")
                before_value = readout.inner_text().strip()
                slider.locator(".noUi-handle").focus()
                page.keyboard.press("ArrowRight")                     # one step up: a new sampling run
                page.wait_for_function(
                    "([img, src]) => img.getAttribute('src') !== src && img.complete && img.naturalWidth > 0",
                    arg=[image.element_handle(), before_src], timeout=REDRAW_TIMEOUT_S * 1000)
                after_value = readout.inner_text().strip()
                after_png = image.screenshot()
            finally:
                context.close()
        assert float(after_value) > float(before_value), (before_value, after_value)
        assert after_png != before_png, "the slider moved and the image's src changed, but its pixels did not"
    finally:
        _stop(server)
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
