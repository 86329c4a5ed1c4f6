#!/usr/bin/env python3
"""Take the course to a GPU machine that has no internet, and run the GPU checklist there in a time budget.

Many GPU machines cannot reach PyPI: a university cluster's compute nodes, a lent cloud
box, the course's own lent GPU. They usually have PyTorch with CUDA and much of the
scientific stack, but not diffusers, nor Jupyter's kernel machinery. Two steps:

    # 1. here, in the course's environment (python3 course.py setup), with internet:
    .venv/bin/python benchmarks/gpu_kit.py wheels --python-version 3.12
    # 2. there, in the repository copied over with its .whl folder:
    python3 benchmarks/gpu_kit.py check --out results --budget 560

``wheels`` works out which distributions the notebooks and benchmarks need (the closure of
``pyproject.toml``'s dependencies, with ``nbclient`` and ``ipykernel`` to run notebooks, less
PyTorch and JupyterLab), drops those the target machine already has (``--have``: a list of
names, or ``pip freeze`` output; by default ``gpu_machine_packages.txt`` beside this script,
the course's lent GPU machine), and downloads the rest as wheels, at the versions installed
here, the ones the test suite passed on, for the target's Python into ``.whl/``. A few
distributions are always carried unless the target has the very same version (``MATCH``):
the libraries whose behaviour the lessons depend on.

``check`` uses only the standard library until it has installed those wheels. Then it runs,
in order of what matters most, each step with its output streamed to a log in ``--out``:

    setup      install the wheels; the GPU, the versions, ``pip check``, each module imported
    benchmark  sampling_speed.py: hand-written loop against the pipeline (+ the memory lesson)
    notebook06 notebook 06 from a fresh kernel (on CUDA: its SD 1.5 replica run at 512x512, float16)
    lesson     sampling_speed.py --lesson: float32, attention, channels_last, torch.compile
    notebooks  every other notebook, from fresh kernels, timed (the README's GPU column)

Each step gets at most its share of what is left of ``--budget`` seconds, and is stopped
when that runs out; what it printed until then is kept. ``--out`` ends up with at most
eight files: ``summary.md`` (every step's status and time, and the notebooks' report),
one log per step, and ``notebooks.zip`` (the executed notebooks and run_course.py's report).
On a machine with no CUDA GPU the same steps run on the CPU, with the CPU settings
(``--benchmark-args`` and ``--lesson-args`` change them): that is how the tests rehearse it.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run_course  # noqa: E402 - beside this script; the standard library only at import

DEFAULT_HAVE = HERE / "gpu_machine_packages.txt"
DEFAULT_WHEELS = ROOT / ".whl"

# To run notebooks and benchmarks (no JupyterLab: nbclient runs them); PyTorch is the machine's own.
RUNNERS = ("nbclient", "nbformat", "ipykernel")
NOT_CARRIED = {"torch", "jupyterlab"}
# Carried unless the target has exactly the version tested here: what the lessons' numbers depend on.
MATCH = {"diffusers", "transformers", "accelerate", "safetensors"}

STEPS = ("setup", "benchmark", "notebook06", "lesson", "notebooks")
# The most seconds each step may take (it gets less when less of the budget is left).
STEP_CAPS = {"setup": 150, "benchmark": 240, "notebook06": 180, "lesson": 420, "notebooks": 600}
RESERVE_S = 10          # kept back from the budget for the summary and the zip
MIN_STEP_S = 20         # a step with less time than this left is skipped, not started
GPU_BENCHMARK = [a for a in run_course.GPU_BENCHMARK if a not in {"--lesson", "--memory"}]   # each step adds its own
CPU_BENCHMARK = list(run_course.CPU_BENCHMARK)
OTHER_NOTEBOOKS = [p.name[:2] for p in sorted(run_course.NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
                   if not p.name.startswith("06")]
IMPORTS = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "PIL", "matplotlib",
           "skimage", "ipywidgets", "nbclient", "nbformat", "ipykernel", "sdlearn")


def canonical(name: str) -> str:
    """PEP 503's normal form of a distribution name: ``Jupyter_Client`` -> ``jupyter-client``."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ----------------------------------------------------------------------------------------------------------------
# wheels: run here, in the course's environment


def read_have(path: Path) -> dict[str, str | None]:
    """What the target machine has: one distribution a line, ``name`` or ``name==version``
    (``pip freeze`` output works); ``#`` starts a comment."""
    have: dict[str, str | None] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name.strip()):
            raise SystemExit(f"gpu_kit.py: {path}: {raw!r} is not 'name' or 'name==version'")
        have[canonical(name)] = version.strip() or None
    return have


def project_requirements() -> list[str]:
    """The names in pyproject.toml's ``dependencies``."""
    try:
        import tomllib
    except ModuleNotFoundError:
        raise SystemExit("gpu_kit.py wheels needs Python 3.11 or newer (tomllib), in the course's environment")
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [Requirement(d).name for d in deps]


def plan(roots: list[str], have: dict[str, str | None], skip: set[str]) -> tuple[dict[str, str], int]:
    """What to carry: the installed distributions that ``roots`` need (requirements that apply here,
    without extras), at their installed versions, less those the target ``have``s. A distribution the
    target has is not followed further (its own requirements are met there), unless it is one of
    ``MATCH`` in another version, which is carried. ``skip``: neither carried nor followed.
    Returns (name -> version to carry, how many distributions were looked at)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    carry: dict[str, str] = {}
    seen: set[str] = set()
    todo = [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in skip:
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"gpu_kit.py: {name} is needed but not installed here. Run this with the course's "
                             "environment: python3 course.py setup, then .venv/bin/python benchmarks/gpu_kit.py wheels")
        if name in have and not (name in MATCH and have[name] != dist.version):
            continue
        carry[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonical(req.name))
    return dict(sorted(carry.items())), len(seen)


def pip_download_command(pins: list[str], dest: Path, python_version: str) -> list[str]:
    """``pip download`` of exactly ``pins``, as binary wheels for CPython ``python_version`` on x86-64 Linux."""
    major, minor = python_version.split(".")
    platforms = [f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)] + ["manylinux2014_x86_64",
                                                                                         "manylinux1_x86_64"]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", f"{major}.{minor}", "--implementation", "cp",
               "--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none", "-d", str(dest)]
    for p in platforms:
        command += ["--platform", p]
    return command + pins


def tree_bytes() -> int:
    """The size of what a copy of this repository takes along: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / os.fsdecode(p)).stat().st_size for p in listed if p and (ROOT / os.fsdecode(p)).is_file())


def wheels(args: argparse.Namespace) -> int:
    have = read_have(args.have)
    carry, looked_at = plan([*project_requirements(), *RUNNERS], have, skip=NOT_CARRIED)
    dest = args.dest
    dest.mkdir(parents=True, exist_ok=True)
    for w in dest.glob("*.whl"):                  # one version of each: two would stop the install there
        name, version = wheel_pin(w.name)
        if carry.get(name) != version:
            w.unlink()
    print(f"needed: {looked_at} distributions; the target has {looked_at - len(carry)} of them; "
          f"carrying {len(carry)} as wheels for CPython {args.python_version} into {dest}")
    pins = [f"{name}=={version}" for name, version in carry.items()]
    done = subprocess.run(pip_download_command(pins, dest, args.python_version))
    if done.returncode:
        print("gpu_kit.py: pip download failed (above). Without internet here, fetch these on a machine that "
              "has it:\n  " + " ".join(pins), file=sys.stderr)
        return done.returncode
    got = sorted(dest.glob("*.whl"))
    missing = set(carry) - {wheel_pin(w.name)[0] for w in got}
    if missing:
        print(f"gpu_kit.py: no wheel came for {sorted(missing)}", file=sys.stderr)
        return 1
    size = sum(w.stat().st_size for w in got)
    tree = tree_bytes()
    print(f"wheels: {len(got)} files, {size / 2**20:.1f} MiB; with the repository ({tree / 2**20:.1f} MiB) "
          f"{(size + tree) / 2**20:.1f} MiB to copy")
    if args.limit_mib and size + tree > args.limit_mib * 2**20:
        print(f"gpu_kit.py: that is over --limit-mib {args.limit_mib}: list more of the target's packages in --have",
              file=sys.stderr)
        return 1
    return 0


def wheel_pin(filename: str) -> tuple[str, str]:
    """(canonical name, version) from a wheel's file name (PEP 427: name-version-...-tags.whl)."""
    parts = filename[:-len(".whl")].split("-")
    if not filename.endswith(".whl") or len(parts) < 5:
        raise ValueError(f"{filename!r} is not a wheel's file name (name-version-python-abi-platform.whl)")
    return canonical(parts[0]), parts[1]


# ----------------------------------------------------------------------------------------------------------------
# check: run there, with the standard library only until the wheels are in


@dataclass
class Step:
    name: str
    status: str = "not run"
    seconds: float = 0.0


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S


def stream(command: list[str], log, *, env: dict[str, str], timeout: float, cwd: Path = ROOT,
           label: str | None = None) -> str:
    """Run ``command``, copying its output line by line to ``log`` and to stdout; stop it (and every process
    it started) after ``timeout`` seconds. Returns 'ok', 'FAILED (exit N)' or 'STOPPED at its time limit'.
    The log says what ran: ``label``, or the command."""
    log.write(f"$ {label or shlex.join(command)}\n")
    log.flush()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", start_new_session=True)

    def copy() -> None:
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            log.flush()

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=max(timeout, 0))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)   # the notebook kernels and benchmark children too
        process.wait()
        reader.join(timeout=5)
        log.write(f"\n[gpu_kit] stopped after {timeout:.0f} s, its time limit\n")
        return "STOPPED at its time limit"
    reader.join(timeout=5)
    return "ok" if code == 0 else f"FAILED (exit {code})"


def install_wheels(folder: Path, log, env: dict[str, str], timeout: float) -> tuple[str, dict[str, str]]:
    """Install the carried wheels into this Python; returns (status, env for the steps after it).

    First with pip's resolver over what is installed (no index: only these wheels may come in);
    if that cannot be satisfied, exactly these wheels with no resolution; if this Python's
    environment cannot be written, into a folder put on PYTHONPATH."""
    found = sorted(glob.glob(str(folder / "*.whl")))
    if not found:
        log.write(f"[gpu_kit] no wheels in {folder}: using what is installed\n")
        return "ok (no wheels to install)", env
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-cache-dir", "--no-compile",
           "--disable-pip-version-check"]
    pins = ["{}=={}".format(*wheel_pin(Path(w).name)) for w in found]
    began = time.monotonic()
    status = stream([*pip, "--find-links", str(folder), *pins], log, env=env, timeout=timeout)
    if status == "ok":
        return "ok (resolved against what is installed)", env
    log.write("[gpu_kit] the resolver could not take them: installing exactly these wheels, no resolution\n")
    status = stream([*pip, "--no-deps", *found], log, env=env, timeout=timeout - (time.monotonic() - began))
    if status == "ok":
        return "ok (exact wheels, no resolution: see pip check below)", env
    if status.startswith("STOPPED"):
        return status, env
    site = Path("/tmp/sdlearn_site")
    log.write(f"[gpu_kit] this environment could not be written: installing into {site} on PYTHONPATH\n")
    status = stream([*pip, "--no-deps", "--target", str(site), *found], log, env=env,
                    timeout=timeout - (time.monotonic() - began))
    env = {**env, "PYTHONPATH": os.pathsep.join([str(site), env.get("PYTHONPATH", "")])}
    return (f"ok (into {site})" if status == "ok" else status), env


PROBE = """
import importlib, platform, sys
print("python  :", platform.python_version(), sys.executable)
for name in {names!r}:
    try:
        module = importlib.import_module(name)
        print(f"import {{name:<12}} ok  {{getattr(module, '__version__', '')}}")
    except Exception as err:
        print(f"import {{name:<12}} FAILED  {{type(err).__name__}}: {{err}}")
import torch
print("cuda    :", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
"""


def zip_notebooks(folders: list[Path], target: Path) -> int:
    """Zip every executed notebook and report under ``folders`` into ``target``; returns how many files went in."""
    files = [f for folder in folders if folder.is_dir() for f in sorted(folder.iterdir())
             if f.suffix in {".ipynb", ".md"}]
    if not files:
        return 0
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, f"{f.parent.name}/{f.name}")
    return len(files)


def check(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    budget = Budget(args.budget)
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STEPS]
    if unknown:
        raise SystemExit(f"gpu_kit.py: unknown step(s) {unknown}; the steps are {', '.join(STEPS)}")
    steps = [Step(name) for name in STEPS if name in wanted]
    cuda: bool | None = None
    course = [sys.executable, "-u", str(HERE / "run_course.py")]

    def is_cuda() -> bool:
        probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"], env=env,
                               capture_output=True, text=True)
        return probe.stdout.strip() == "True"

    for step in steps:
        left = min(STEP_CAPS[step.name], budget.left())
        if left < MIN_STEP_S:
            step.status = f"skipped: {max(budget.left(), 0):.0f} s of the budget left"
            continue
        print(f"\n[gpu_kit] {step.name}: up to {left:.0f} s", flush=True)
        began = time.monotonic()
        with open(out / f"{step.name}.log", "w") as log:
            if step.name == "setup":
                step.status, env = install_wheels(args.wheels, log, env, left * 0.8)
                if shutil.which("nvidia-smi"):
                    stream(["nvidia-smi", "-L"], log, env=env, timeout=15)
                stream([sys.executable, "-c", PROBE.format(names=IMPORTS)], log, env=env,
                       timeout=left - (time.monotonic() - began), label="python: the GPU, and each module imported")
                stream([sys.executable, "-m", "pip", "check"], log, env=env, timeout=30)
            else:
                if cuda is None:
                    cuda = is_cuda()
                if step.name in {"benchmark", "lesson"}:
                    extra = args.benchmark_args if step.name == "benchmark" else args.lesson_args
                    default = (GPU_BENCHMARK if cuda else CPU_BENCHMARK)
                    bench = shlex.split(extra) if extra is not None else (
                        default + (["--memory"] if step.name == "benchmark" else ["--lesson", "--compile", "yes"]))
                    step.status = stream([sys.executable, "-u", str(HERE / "sampling_speed.py"), *bench], log,
                                         env=env, timeout=left)
                else:
                    names = ["06"] if step.name == "notebook06" else (args.notebooks or OTHER_NOTEBOOKS)
                    folder = work / step.name
                    step.status = stream([*course, *names, "--out", str(folder), "--timeout", str(int(left))],
                                         log, env=env, timeout=left)
        step.seconds = time.monotonic() - began

    zipped = zip_notebooks([work / "notebook06", work / "notebooks"], out / "notebooks.zip")
    table = ["| step | seconds | status | log |", "| --- | --- | --- | --- |"]
    table += [f"| {s.name} | {s.seconds:.0f} | {s.status} | {s.name + '.log' if s.seconds else ''} |" for s in steps]
    summary = ["# The GPU checklist, run by benchmarks/gpu_kit.py check", "",
               f"budget {args.budget:.0f} s, CUDA {'yes' if cuda else 'no' if cuda is not None else 'not asked'}", "",
               *table]
    for name in ("notebook06", "notebooks"):
        report = work / name / "report.md"
        if report.is_file():                      # its title becomes a section of the summary
            summary += ["", f"## {name}: run_course.py's report", *report.read_text().splitlines()[1:]]
    summary += ["", f"notebooks.zip: {zipped} executed notebooks and reports" if zipped else ""]
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    print("\n" + "\n".join(table), flush=True)
    return 0 if all(s.status.startswith("ok") for s in steps) else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wheels", help="here: download the wheels the target machine lacks")
    w.add_argument("--python-version", default="3.12", help="the target's Python, MAJOR.MINOR (default 3.12)")
    w.add_argument("--have", type=Path, default=DEFAULT_HAVE,
                   help="what the target has: names or pip freeze output (default: gpu_machine_packages.txt)")
    w.add_argument("--dest", type=Path, default=DEFAULT_WHEELS, help="folder for the wheels (default .whl)")
    w.add_argument("--limit-mib", type=float, default=64,
                   help="fail if wheels + repository exceed this many MiB (default 64; 0: no limit)")
    c = sub.add_parser("check", help="there: install the wheels and run the GPU checklist in a time budget")
    c.add_argument("--out", type=Path, required=True, help="folder for summary.md, the logs and notebooks.zip")
    c.add_argument("--budget", type=float, default=560, help="seconds for everything (default 560)")
    c.add_argument("--steps", default=",".join(STEPS), help=f"which steps, in this order: {','.join(STEPS)}")
    c.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="the carried wheels (default .whl)")
    c.add_argument("--work", default="/tmp/sdlearn_gpu_kit", help="folder for the executed notebooks")
    c.add_argument("--notebooks", nargs="*", default=None, help="the notebooks step's notebooks (default: all but 06)")
    c.add_argument("--benchmark-args", default=None, help="sampling_speed.py's arguments for the benchmark step")
    c.add_argument("--lesson-args", default=None, help="sampling_speed.py's arguments for the lesson step")
    args = p.parse_args(argv)
    if args.command == "wheels" and not re.fullmatch(r"3\.\d+", args.python_version):
        p.error(f"--python-version must look like 3.12, got {args.python_version!r}")
    if args.command == "check" and args.budget <= 0:
        p.error(f"--budget must be positive seconds, got {args.budget}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return wheels(args) if args.command == "wheels" else check(args)


if __name__ == "__main__":
    sys.exit(main())
