#!/usr/bin/env python3
"""Set up the sdlearn course and open it, or set it up and run every test.

    python3 course.py lab      # set up (first time only) and open the course in JupyterLab
    python3 course.py test     # set up (first time only) and run the unit tests and every notebook
    python3 course.py test --quick   # the same without the slow tests (float16 rehearsal, browser, benchmark scripts): the inner loop

For authors and teachers who change a notebook:

    python3 course.py execute notebooks/02_vae.ipynb ...   # Restart & Run All, saved in place

For readers and teachers:

    python3 course.py site       # the course as a website, from the stored outputs, in _build/site/
    python3 course.py slides     # reveal.js decks of TEACHING.md's 2-hour class, in _build/slides/

For learners:

    python3 course.py progress   # every notebook's exercises, and which you have done

Set-up makes a virtual environment in .venv (override: SDLEARN_VENV=path), installs a
PyTorch build that fits the machine (see choose_torch below), then this project with its
test tools. It remembers what it installed and does nothing the second time unless
pyproject.toml changed. Extra arguments go to JupyterLab or pytest:

    python3 course.py test -k vae -x
    python3 course.py test -n 0          # in one process (the default runs two or more workers in parallel)
    python3 course.py lab --port 8899

Environment variables:
    SDLEARN_TORCH=cpu|cuda|skip   force the kind of PyTorch build (skip: keep what is there)
    SDLEARN_VENV=path             where the virtual environment lives (default .venv)
    SDLEARN_MODEL=...             which model the notebooks use (see README)
    SDLEARN_REQUIRE_BROWSER=1     fail, not skip, the browser test of the widgets when Chromium is missing (CI)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SDLEARN_VENV", ROOT / ".venv"))
TORCH_VERSION = "2.13.0"  # the release the course is tested with; a CPU wheel of it is the fast path
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def say(message: str) -> None:
    print(f"[course] {message}", flush=True)


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*args: str | Path, check: bool = True) -> int:
    return subprocess.run([str(a) for a in args], check=check).returncode


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def choose_torch() -> str:
    """'cuda', 'cpu' or 'skip', from SDLEARN_TORCH or the machine."""
    choice = os.environ.get("SDLEARN_TORCH", "").strip().lower()
    if choice:
        if choice not in {"cpu", "cuda", "skip"}:
            sys.exit(f"[course] SDLEARN_TORCH must be cpu, cuda or skip, got {choice!r}")
        return choice
    return "cuda" if has_nvidia_gpu() else "cpu"


def torch_installed(py: Path) -> str | None:
    out = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def install_torch(py: Path, kind: str) -> None:
    """Install PyTorch without pulling gigabytes of CUDA libraries onto a machine with no GPU.

    - An NVIDIA GPU (or SDLEARN_TORCH=cuda): the default wheel from PyPI, which on Linux is a CUDA build.
    - No GPU on Linux: first the CPU wheel of TORCH_VERSION if pip can find it without an index
      (a wheel house in PIP_FIND_LINKS, as on the course's CI machines); else PyTorch's own
      CPU-only index (about 200 MB instead of several GB).
    - macOS and Windows: PyPI's wheels have no CUDA libraries in them (Apple GPUs use MPS).
    """
    pip = [py, "-m", "pip", "install"]
    if kind == "skip":
        return
    present = torch_installed(py)
    if present and (kind == "cpu" or "+cpu" not in present):
        say(f"torch {present} already installed")
        return
    if kind == "cuda":
        if platform.system() == "Windows":
            say("installing a CUDA build of torch for Windows from PyTorch's index")
            run(*pip, "torch", "--index-url", "https://download.pytorch.org/whl/cu128")
        else:
            say("NVIDIA GPU found: installing torch from PyPI (a CUDA build)")
            run(*pip, f"torch>={TORCH_VERSION.rsplit('.', 1)[0]}")
        return
    if platform.system() == "Linux":
        # The "+cpu" local version pins the CPU build: pip takes it from a wheel house
        # (PIP_FIND_LINKS) or a configured index when one has it, and never a CUDA build.
        say(f"no NVIDIA GPU: looking for the CPU build torch=={TORCH_VERSION}+cpu where pip already looks")
        if run(*pip, f"torch=={TORCH_VERSION}+cpu", check=False) == 0:
            return
        say(f"installing the CPU-only build of torch from {TORCH_CPU_INDEX}")
        run(*pip, "torch", "--index-url", TORCH_CPU_INDEX)
    else:
        say("installing torch from PyPI (CPU/MPS build)")
        run(*pip, "torch")


def setup() -> Path:
    """Create the environment and install everything, once; return the environment's python."""
    if sys.version_info < (3, 10):
        sys.exit(f"[course] Python 3.10 or newer is needed, this is {platform.python_version()}: "
                 "run this script with a newer python3")
    py = venv_python()
    if not py.exists():
        say(f"creating a virtual environment in {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    kind = choose_torch()
    stamp = VENV / ".sdlearn-installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + kind.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and torch_installed(py):
        return py
    install_torch(py, kind)
    say("installing sdlearn and its dependencies (pyproject.toml)")
    run(py, "-m", "pip", "install", "--upgrade", "--upgrade-strategy", "only-if-needed", "-e", f"{ROOT}[test]")
    stamp.write_text(digest)
    return py


CHROMIUM = Path("/usr/bin/chromium")


def ensure_chromium() -> bool:
    """Make sure Debian's Chromium is there for the browser test of the widgets; True if it is.

    The test drives the system's Chromium with Playwright and never downloads a browser of
    its own. On Debian/Ubuntu as root, a missing Chromium is installed with apt-get (as on
    the course's CI machines); elsewhere this says how, and the test is skipped (or fails
    when SDLEARN_REQUIRE_BROWSER=1).
    """
    if CHROMIUM.exists():
        return True
    apt = shutil.which("apt-get")
    if platform.system() != "Linux" or apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        say(f"{CHROMIUM} not found: the browser test of the widgets will be skipped. "
            "Install Chromium (Debian/Ubuntu: sudo apt-get install chromium) to run it.")
        return False
    say("installing Debian's chromium for the browser test of the widgets (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ok = subprocess.run([apt, "-q", "update"], env=env).returncode == 0
    ok = ok and subprocess.run([apt, "-q", "install", "-y", "--no-install-recommends", "chromium"],
                               env=env).returncode == 0
    if not ok or not CHROMIUM.exists():
        say("could not install chromium with apt-get: the browser test will be skipped")
        return False
    return True


def env_for(py: Path) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(py.parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(VENV)
    return env


def execute_notebooks(py: Path, paths: list[str]) -> int:
    """Re-run notebooks from a fresh kernel and save them in place: the stored outputs nbval checks.

    Like Kernel > Restart & Run All, on the bundled model and the CPU whatever the machine
    has, so that the stored outputs are the ones CI reproduces.
    """
    if not paths:
        say("name the notebooks to execute, e.g. python3 course.py execute notebooks/*.ipynb")
        return 2
    env = env_for(py)
    env.pop("SDLEARN_MODEL", None)          # stored outputs come from the bundled model
    env["SDLEARN_DEVICE"] = "cpu"           # ... on a CPU, as CI runs them
    env["HF_HUB_OFFLINE"] = "1"
    env["SDLEARN_PROGRESS"] = "0"           # the solutions' checks are not the author's progress
    env.setdefault("MPLBACKEND", "Agg")
    for path in paths:
        say(f"executing {path}")
        code = subprocess.call([str(py), "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                                "--ExecutePreprocessor.timeout=1200", "--ExecutePreprocessor.kernel_name=python3",
                                path], env=env, cwd=ROOT)
        if code:
            return code
    return 0


FIRST_NOTEBOOK = "notebooks/00_start_here.ipynb"
# JupyterLab's settings for the course's lab: no "Would you like to get notified about official Jupyter
# news?" popup over the first notebook, and no update checks (the course runs offline too).
LAB_SETTINGS = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}


def quiet_lab_settings(py: Path) -> Path:
    """Write LAB_SETTINGS into the environment's JupyterLab overrides (``<env>/share/jupyter/lab/settings/
    overrides.json``), keeping any other overrides there. Returns the file."""
    path = py.parent.parent / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError):
        settings = {}
    for plugin, values in LAB_SETTINGS.items():
        settings.setdefault(plugin, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


def free_port(preferred: int = 8888) -> int:
    """``preferred`` if nothing listens there, else a port the system picks."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise SystemExit("no free TCP port for JupyterLab; pass one with --port N")


def _option(extra: list[str], name: str) -> str | None:
    """The value of ``--name N`` or ``--name=N`` (or ``--ServerApp.name=N``) in JupyterLab's arguments."""
    for i, arg in enumerate(extra):
        for flag in (f"--{name}", f"--ServerApp.{name}"):
            if arg == flag and i + 1 < len(extra):
                return extra[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def lab(py: Path, extra: list[str]) -> int:
    """JupyterLab on the course, opened at notebook 00, with the address of notebook 00 printed first
    (with ``--no-browser``, paste it into a browser: it opens the notebook, not the Launcher)."""
    quiet_lab_settings(py)
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in extra:
        extra = ["--allow-root", *extra]  # containers and cloud notebooks often run as root
    port = _option(extra, "port")
    if port is None:
        port = str(free_port())
        extra = [f"--ServerApp.port={port}", "--ServerApp.port_retries=0", *extra]
    token = _option(extra, "IdentityProvider.token") or _option(extra, "token")
    if token is None:
        token = secrets.token_hex(24)
        extra = [f"--IdentityProvider.token={token}", *extra]
    url = f"http://localhost:{port}/lab/tree/{FIRST_NOTEBOOK}" + (f"?token={token}" if token else "")
    say("opening the course in JupyterLab (Ctrl+C to stop); the first notebook is at")
    print(f"    {url}", flush=True)
    # root_dir: the repository, not notebooks/ (JupyterLab's default for a file argument),
    # so that the notebooks' diagrams in ../images/ are served too.
    return subprocess.call([str(py), "-m", "jupyter", "lab", str(ROOT / FIRST_NOTEBOOK), f"--ServerApp.root_dir={ROOT}",
                            *extra], env=env_for(py), cwd=ROOT)


def parallel_args(extra: list[str], env: dict[str, str]) -> list[str]:
    """Run the tests in parallel, one pytest-xdist worker per two cores, each worker (and the notebook
    kernels it starts) on its share of the cores.

    Two processes that each start as many torch threads as there are cores slow each other down
    several times over (the threads spin while they wait), so each worker gets ``cores // workers``
    threads through OMP_NUM_THREADS. The cells of one notebook share a kernel and run in order, so
    each file's tests stay together on one worker (``--dist loadfile``). Pass ``-n 0`` to run in one
    process, or your own ``-n N``.
    """
    if any(a == "-n" or a.startswith(("-n=", "--numprocesses")) or (a.startswith("-n") and a[2:].isdigit())
           for a in extra):
        return extra
    cores = os.cpu_count() or 1
    workers = max(1, min(cores // 2, 8)) if cores >= 4 else min(cores, 2)
    if workers < 2:
        return extra
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))
    return ["-n", str(workers), "--dist", "loadfile", *extra]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"lab", "test", "setup", "execute", "progress", "site", "slides"}:
        print(__doc__)
        return 2
    command, extra = argv[0], argv[1:]
    py = setup()
    if command == "setup":
        return 0
    if command == "execute":
        return execute_notebooks(py, extra)
    if command == "progress":
        return subprocess.call([str(py), "-m", "sdlearn.exercises"], env=env_for(py), cwd=ROOT)
    if command == "lab":
        return lab(py, extra)
    if command in ("site", "slides"):                 # site/make_site.py, site/make_slides.py: --help says more
        return subprocess.call([str(py), str(ROOT / "site" / f"make_{command}.py"), *extra], env=env_for(py), cwd=ROOT)
    quick = "--quick" in extra
    if quick:
        extra = [a for a in extra if a != "--quick"] + ["-m", "not slow"]
        say("quick run: the slow tests (float16 rehearsal of every notebook, the browser test, the benchmark "
            "scripts end to end) are left out")
    else:
        ensure_chromium()
    env = env_for(py)
    extra = parallel_args(extra, env)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a model hub
    env["SDLEARN_PROGRESS"] = "0"           # nor write a learner's progress record
    env.setdefault("MPLBACKEND", "Agg")
    return subprocess.call([str(py), "-m", "pytest", *extra], env=env, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
