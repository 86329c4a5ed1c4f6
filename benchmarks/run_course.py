#!/usr/bin/env python3
"""Run the course's notebooks on this machine, time each one, and write a report.

    python benchmarks/run_course.py                         # every notebook, on the best device here
    python benchmarks/run_course.py 06 --benchmark          # notebook 06, then the sampling benchmark
    python benchmarks/run_course.py --device cpu            # force the CPU (sets SDLEARN_DEVICE)

This is the GPU checklist in one command. On a machine with a CUDA GPU, the notebooks pick
the GPU and float16 by themselves (``sdlearn.device.resolve``); each one runs from a fresh
kernel, as Kernel > Restart & Run All does, and the script records, per notebook, the wall
time (kernel start included) and whether every cell ran. Notebook 06's section 9 runs the loop
on the SD 1.5 replica at 512x512 in float16 against the pipeline only on CUDA; the line it
prints is copied into the report. ``--benchmark`` then runs ``sampling_speed.py``: on CUDA with
the settings ``benchmarks/README.md`` asks for (SD 1.5 replica, 512x512, 50 steps, float16,
``--lesson --memory``), elsewhere on the bundled model.

The executed notebooks go to ``--out`` (default: a new folder under the system's temporary
folder), never over the committed ones: their stored outputs come from the CPU, and nbval
checks those. The report, ``report.md`` in the same folder, holds the machine, the versions,
the table of times (the README's run-time column) and the benchmark's whole output.

A machine without internet (like the course's lent GPU machines) needs the course's packages
carried to it as wheels: ``gpu_kit.py`` beside this script makes them, and runs this script and
the benchmark there step by step in a fixed time.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
GPU_BENCHMARK = ["--device", "cuda", "--model", "sd15-replica", "--height", "512", "--width", "512", "--steps", "50",
                 "--dtype", "fp16", "--lesson", "--memory"]
CPU_BENCHMARK = ["--device", "cpu", "--model", "bundled"]
REPORTED_LINE = re.compile(r"^SD 1\.5 replica, .*$|^no CUDA GPU here .*$", re.MULTILINE)   # notebook 06, section 9


def find_notebooks(names: list[str]) -> list[Path]:
    """``names``: notebook paths, or number prefixes such as ``06``; none means every notebook."""
    every = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    found = []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb":
            if not path.is_file():
                raise SystemExit(f"run_course.py: notebook {name!r} does not exist")
            found.append(path.resolve())
            continue
        matches = [p for p in every if p.name.startswith(name)]
        if len(matches) != 1:
            raise SystemExit(f"run_course.py: {name!r} names {len(matches)} notebooks; give a notebook's number "
                             f"(00 to {every[-1].name[:2]}) or its path")
        found.append(matches[0])
    return found


def kernel_env(device: str | None, model: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("MPLBACKEND", "Agg")
    for name, value in (("SDLEARN_DEVICE", device), ("SDLEARN_MODEL", model)):
        if value is not None:
            env[name] = value
    return env


def execute(path: Path, out_dir: Path, env: dict[str, str], timeout: int) -> tuple[float, str | None, str]:
    """Run ``path`` from a fresh kernel in its own folder; save the result to ``out_dir``.

    Returns (seconds, the error or None, everything the cells printed to stdout).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    began = time.perf_counter()
    error = None
    try:
        client.execute(env=env)
    except CellExecutionError as err:
        error = _first_line(str(err), prefix=r"^\w*(Error|Exception)\b")
    except Exception as err:      # a kernel that died or timed out: say so, go on with the next notebook
        error = f"{type(err).__name__}: {err}".splitlines()[0]
    seconds = time.perf_counter() - began
    nbformat.write(nb, out_dir / path.name)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if o.get("output_type") == "stream" and o.get("name") == "stdout")
    return seconds, error, printed


def _first_line(text: str, prefix: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)            # tracebacks come coloured
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    wanted = [line for line in lines if re.match(prefix, line)]
    return (wanted or lines or ["(no message)"])[-1]


def machine_lines() -> list[str]:
    """The machine, the versions and the GPU: ``sdlearn.device.machine_lines`` (the notebooks run in their own
    kernels, so this process's torch threads are left out)."""
    if str(ROOT) not in sys.path:        # run from a checkout without installing sdlearn
        sys.path.insert(0, str(ROOT))
    from sdlearn.device import machine_lines as lines

    return lines(torch_threads=False)


def run_benchmark(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run sampling_speed.py; its lines are printed as they come (a run stopped half way has shown what it
    measured) and returned with its exit code."""
    command = [sys.executable, "-u", str(ROOT / "benchmarks" / "sampling_speed.py"), *args]
    lines = [f"$ python benchmarks/sampling_speed.py {shlex.join(args)}\n"]
    print(lines[0], end="", flush=True)
    with subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    return process.returncode, "".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", help="notebook numbers (06) or paths; default: every notebook")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps for the notebooks (sets SDLEARN_DEVICE)")
    p.add_argument("--model", default=None, help="the notebooks' model (sets SDLEARN_MODEL; default: bundled)")
    p.add_argument("--out", type=Path, default=None, help="folder for the executed notebooks and report.md")
    p.add_argument("--timeout", type=int, default=1800, help="seconds a cell may take (default 1800)")
    p.add_argument("--benchmark", action="store_true", help="then run benchmarks/sampling_speed.py")
    p.add_argument("--benchmark-args", default=None,
                   help="arguments for sampling_speed.py, in one string (default: the GPU settings of "
                        "benchmarks/README.md on CUDA, the bundled model on a CPU)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Returns 0 when every notebook (and the benchmark, if asked for) ran to the end, else 1."""
    args = parse_args(argv)
    notebooks = find_notebooks(args.notebooks)
    out = args.out or Path(tempfile.mkdtemp(prefix="sdlearn_course_run_"))
    out.mkdir(parents=True, exist_ok=True)
    env = kernel_env(args.device, args.model)
    header = machine_lines()
    print("\n".join(header), flush=True)

    rows, reported, failed = [], [], 0          # failed: notebooks that did not run to the end

    def report_so_far() -> list[str]:
        lines = ["# The course, run on this machine", "", "```", *header,
                 f"notebooks: SDLEARN_DEVICE={env.get('SDLEARN_DEVICE', '(unset: the best device)')}, "
                 f"SDLEARN_MODEL={env.get('SDLEARN_MODEL', '(unset: bundled)')}", "```", "",
                 "| notebook | wall time (kernel start included) | result |", "| --- | --- | --- |", *rows, ""]
        if len(rows) < len(notebooks):
            lines += [f"Not run (yet): {', '.join(p.stem for p in notebooks[len(rows):])}", ""]
        if reported:
            lines += ["What the notebooks report of the GPU run:", "", "```", *reported, "```", ""]
        return lines

    for path in notebooks:
        print(f"running {path.name} ...", flush=True)
        seconds, error, printed = execute(path, out, env, args.timeout)
        failed += error is not None
        rows.append(f"| `{path.stem}` | {seconds:.0f} s | {'ran to the end' if error is None else 'FAILED: ' + error} |")
        reported += [f"{path.stem}: {line}" for line in REPORTED_LINE.findall(printed)]
        print(rows[-1], flush=True)
        (out / "report.md").write_text("\n".join(report_so_far()))    # after each notebook: a run cut short keeps it

    report = report_so_far()
    bench_code = 0
    if args.benchmark:
        import torch

        bench_args = (shlex.split(args.benchmark_args) if args.benchmark_args is not None
                      else GPU_BENCHMARK if torch.cuda.is_available() else CPU_BENCHMARK)
        print(f"running sampling_speed.py {shlex.join(bench_args)} ...", flush=True)
        bench_code, text = run_benchmark(bench_args, env)
        report += ["## The sampling benchmark" + ("" if bench_code == 0 else f" (FAILED, exit code {bench_code})"), "",
                   "```", text.rstrip(), "```", ""]
    (out / "report.md").write_text("\n".join(report))
    print(f"\n{len(notebooks) - failed} of {len(notebooks)} notebooks ran to the end"
          f"{'; the benchmark ' + ('ran' if bench_code == 0 else 'FAILED') if args.benchmark else ''}. "
          f"Report and executed notebooks: {out}")
    return 1 if failed or bench_code else 0


if __name__ == "__main__":
    sys.exit(main())
