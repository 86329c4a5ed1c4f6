"""benchmarks/gpu_kit.py: the wheels a GPU machine without internet needs, and the checklist run there in a
time budget, rehearsed here on the CPU (no download: ``wheels`` is tested up to the pip command it would run)."""

import importlib.metadata as md
import re
import sys
import time
import zipfile

import pytest
from packaging.requirements import Requirement


@pytest.fixture(scope="module")
def kit(load_script):
    return load_script("benchmarks/gpu_kit.py")


def test_wheel_file_names_give_name_and_version(kit):
    assert kit.wheel_pin("jupyter_client-8.10.0-py3-none-any.whl") == ("jupyter-client", "8.10.0")
    assert kit.wheel_pin("tornado-6.6.1-cp311-abi3-manylinux1_x86_64.manylinux_2_28_x86_64.whl") == ("tornado", "6.6.1")
    with pytest.raises(ValueError, match="not a wheel's file name"):
        kit.wheel_pin("diffusers-0.42.1.tar.gz")


def test_the_target_list_reads_names_and_pip_freeze(kit, tmp_path):
    have = tmp_path / "have.txt"
    have.write_text("# a comment\nNumPy==2.5.2\njupyter_core\n\ntorch==2.11.0+cu130  # the machine's own\n")
    assert kit.read_have(have) == {"numpy": "2.5.2", "jupyter-core": None, "torch": "2.11.0+cu130"}
    have.write_text("numpy>=2\n")
    with pytest.raises(SystemExit, match="'numpy>=2' is not 'name' or 'name==version'"):
        kit.read_have(have)
    committed = kit.read_have(kit.DEFAULT_HAVE)
    assert {"torch", "numpy", "matplotlib", "transformers"} <= committed.keys() and "diffusers" not in committed


def _requirements(kit, name):
    reqs = [Requirement(t) for t in md.distribution(name).requires or []]
    return {kit.canonical(r.name) for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})}


def test_the_plan_carries_what_the_target_lacks_and_everything_that_needs(kit):
    roots = [*kit.project_requirements(), *kit.RUNNERS]
    have = kit.read_have(kit.DEFAULT_HAVE)
    carry, looked_at = kit.plan(roots, have, skip=kit.NOT_CARRIED)
    assert carry["diffusers"] == md.version("diffusers") and carry["nbclient"] == md.version("nbclient")
    assert "torch" not in carry and "jupyterlab" not in carry           # the machine's own torch; nbclient runs notebooks
    assert "numpy" not in carry and "huggingface-hub" not in carry       # the target has them
    assert carry["transformers"] == md.version("transformers") != have["transformers"]   # MATCH, another version there
    for name in carry:                                 # closed: what a carried distribution needs is carried or there
        missing = _requirements(kit, name) - carry.keys() - have.keys() - kit.NOT_CARRIED
        assert not missing, f"{name} needs {missing}, neither carried nor on the target"
    assert looked_at > len(carry)

    everything, _ = kit.plan(roots, {}, skip=kit.NOT_CARRIED)           # a bare target: the whole closure
    assert {"numpy", "huggingface-hub", "diffusers", "ipykernel"} <= everything.keys() and "torch" not in everything
    assert carry.keys() < everything.keys()


def test_the_download_asks_for_binary_wheels_for_the_targets_python(kit, tmp_path):
    command = kit.pip_download_command(["diffusers==0.42.1"], tmp_path, "3.12")
    text = " ".join(command)
    assert "download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp" in text
    assert "--abi cp312" in text and "--platform manylinux_2_28_x86_64" in text and command[-1] == "diffusers==0.42.1"
    with pytest.raises(SystemExit):
        kit.parse_args(["wheels", "--python-version", "twelve"])


def test_a_step_is_stopped_at_its_limit_and_keeps_what_it_printed(kit, tmp_path):
    child = "import subprocess, sys, time; print('measured so far', flush=True); " \
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    began = time.monotonic()
    with open(tmp_path / "step.log", "w") as log:
        status = kit.stream([sys.executable, "-c", child], log, env={}, timeout=3)
    assert status == "STOPPED at its time limit" and time.monotonic() - began < 20
    text = (tmp_path / "step.log").read_text()
    assert "measured so far" in text and "stopped after 3 s, its time limit" in text
    with open(tmp_path / "other.log", "w") as log:
        assert kit.stream([sys.executable, "-c", "raise SystemExit(3)"], log, env={}, timeout=30) == "FAILED (exit 3)"


@pytest.mark.slow                       # the whole checklist, end to end: a minute of CPU time
def test_the_checklist_runs_on_the_cpu_and_leaves_at_most_eight_files(kit, tiny_model_dir, tmp_path):
    out, wheels = tmp_path / "out", tmp_path / "no_wheels"
    wheels.mkdir()
    bench = f"--device cpu --model {tiny_model_dir} --height 32 --width 32 --steps 2 --warmup 0 --repeats 1"
    code = kit.main(["check", "--out", str(out), "--wheels", str(wheels), "--work", str(tmp_path / "work"),
                     "--steps", "setup,benchmark,notebooks", "--notebooks", "00", "--benchmark-args", bench])
    summary = (out / "summary.md").read_text()
    assert code == 0, summary
    files = sorted(p.name for p in out.iterdir())
    assert files == ["benchmark.log", "notebooks.log", "notebooks.zip", "setup.log", "summary.md"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files) and all(p.is_file() for p in out.iterdir())
    for step in ("setup", "benchmark", "notebooks"):
        assert re.search(rf"^\| {step} \| \d+ \| ok", summary, re.MULTILINE), summary
    assert "| `00_start_here` |" in summary and "ran to the end" in summary
    setup = (out / "setup.log").read_text()
    assert "no wheels in" in setup and "FAILED" not in setup
    assert re.search(r"^import diffusers +ok", setup, re.MULTILINE) and re.search(r"^import sdlearn +ok", setup, re.M)
    assert "ratio hand / pipeline" in (out / "benchmark.log").read_text()
    with zipfile.ZipFile(out / "notebooks.zip") as z:
        assert sorted(z.namelist()) == ["notebooks/00_start_here.ipynb", "notebooks/report.md"]


def test_a_budget_too_small_skips_every_step_and_says_so(kit, tmp_path):
    code = kit.main(["check", "--out", str(tmp_path / "out"), "--budget", "15", "--work", str(tmp_path / "work")])
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert code == 1
    for step in kit.STEPS:
        assert re.search(rf"^\| {step} \| 0 \| skipped: \d+ s of the budget left \|", summary, re.MULTILINE), summary
    with pytest.raises(SystemExit, match="unknown step"):
        kit.main(["check", "--out", str(tmp_path / "out"), "--steps", "setup,nvidia"])
