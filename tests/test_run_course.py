"""benchmarks/run_course.py, the GPU checklist in one command, run here on the CPU."""

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_course(load_script):
    return load_script("benchmarks/run_course.py")


@pytest.mark.slow                       # a notebook and the benchmark, end to end, in subprocesses
def test_runs_a_notebook_and_the_benchmark_and_writes_the_report(run_course, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    bench = f"--device cpu --model {tiny_model_dir} --height 32 --width 32 --steps 2 --warmup 0 --repeats 1"
    assert run_course.main(["00", "--device", "cpu", "--out", str(out), "--benchmark", "--benchmark-args", bench]) == 0
    report = (out / "report.md").read_text()
    assert "| `00_start_here` |" in report and "ran to the end" in report and "FAILED" not in report
    assert "SDLEARN_DEVICE=cpu" in report and "SDLEARN_MODEL=(unset: bundled)" in report
    assert "## The sampling benchmark" in report and "ratio hand / pipeline" in report
    executed = nbformat.read(out / "00_start_here.ipynb", as_version=4)
    assert all(c.execution_count for c in executed.cells if c.cell_type == "code" and c.source.strip())
    assert (ROOT / "notebooks" / "00_start_here.ipynb").read_bytes() != (out / "00_start_here.ipynb").read_bytes()


def test_a_failing_notebook_is_reported_and_the_run_goes_on(run_course, tmp_path):
    failing = tmp_path / "planted.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('print("SD 1.5 replica, 512x512: what notebook 06 prints on a GPU")'),
                nbformat.v4.new_code_cell('raise ValueError("a planted failure")')]
    nbformat.write(nb, failing)
    out = tmp_path / "run"
    assert run_course.main([str(failing), str(failing), "--device", "cpu", "--out", str(out)]) == 1
    report = (out / "report.md").read_text()
    assert report.count("FAILED: ValueError: a planted failure") == 2              # both ran, both failed
    assert "planted: SD 1.5 replica, 512x512: what notebook 06 prints on a GPU" in report


def test_names_that_are_not_one_notebook_are_refused(run_course):
    with pytest.raises(SystemExit, match="'42' names 0 notebooks"):
        run_course.main(["42"])
    with pytest.raises(SystemExit, match="'0' names 10 notebooks"):
        run_course.main(["0"])
    with pytest.raises(SystemExit, match="does not exist"):
        run_course.main(["no_such.ipynb"])


def test_the_report_is_written_after_each_notebook(run_course, tmp_path):
    """A run stopped half way (a time limit on a lent GPU) keeps the report of what it ran so far."""
    out = tmp_path / "run"
    first, second = tmp_path / "first.ipynb", tmp_path / "second.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), first)
    check = ("from pathlib import Path\n"
             "report = Path('run/report.md').read_text()\n"
             "assert '| `first` |' in report and 'Not run (yet): second' in report, report")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(check)]), second)
    assert run_course.main([str(first), str(second), "--device", "cpu", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| `second` |" in report and "Not run" not in report
