"""The project's own files: dependencies declared once and mirrored, notebooks kept clean."""

import json
import re
import tomllib
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_NOTEBOOK_BYTES = 3_000_000
# conda-forge names that differ from PyPI's
CONDA_TO_PIP = {"pytorch": "torch"}


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    return dict(_split(r) for r in reqs)


def conda_requirements() -> dict[str, str]:
    deps = {}
    in_deps = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        # conda-forge packages, and the pip section's packages (those conda-forge does not have)
        m = re.match(r"^(?:  |      )- ([^:#\s-][^:#]*?)\s*(?:#.*)?$", line) if in_deps else None
        if m:
            name, spec = _split(m.group(1))
            if name not in {"python", "pip"}:
                deps[CONDA_TO_PIP.get(name, name)] = spec
    return deps


def test_environment_yml_mirrors_pyproject():
    assert conda_requirements() == pyproject_requirements()


def test_course_script_pins_the_torch_it_tests_with():
    text = (ROOT / "course.py").read_text()
    version = re.search(r'TORCH_VERSION = "([\d.]+)"', text).group(1)
    lower = pyproject_requirements()["torch"]
    assert lower.startswith(">=") and version.startswith(lower[2:])


def test_ci_runs_the_readme_test_command():
    assert "python3 course.py test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "python3 course.py test" in readme and "python3 course.py lab" in readme


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no notebooks"
    assert NOTEBOOKS[0].name.startswith("00_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_hygiene(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), \
        "execution counts are not 1..n: do Kernel > Restart & Run All, then save"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    # the display name of the kernel the course installs (ipykernel's), the one JupyterLab writes on save:
    # saving a notebook unchanged then leaves its metadata unchanged
    from ipykernel.kernelspec import get_kernel_dict
    assert nb["metadata"]["kernelspec"]["display_name"] == get_kernel_dict()["display_name"]
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name} is over {MAX_NOTEBOOK_BYTES} bytes"
    for cell in code:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"a stored output is an error: {out.get('ename')}"
            text = "".join(out.get("text", "")) if out["output_type"] == "stream" else ""
            assert "Successfully installed" not in text and "Requirement already satisfied" not in text, \
                "pip logs in stored outputs"
            assert "it/s]" not in text, "a progress bar was stored: disable it for stored outputs"


def stored_run_seconds(nb: dict) -> float:
    """How long the stored outputs took to make: from the first code cell's start to the last one's end.

    ``course.py execute`` runs the notebook with nbconvert, which records each cell's times in its
    metadata; this is the one measured source of the run times the README and the notebooks state.
    """
    times = [cell["metadata"].get("execution", {}) for cell in nb["cells"] if cell["cell_type"] == "code"]
    assert all("iopub.execute_input" in t and "shell.execute_reply" in t for t in times), \
        "a code cell has no recorded run time: re-run the notebook with python3 course.py execute"
    start, end = (datetime.fromisoformat(times[0]["iopub.execute_input"]),
                  datetime.fromisoformat(times[-1]["shell.execute_reply"]))
    return (end - start).total_seconds()


STATED_RUN_TIME = re.compile(r"\*\*Run time:\*\*[^*]*?about (\d+) s on a 2-core CPU")


def readme_run_times() -> dict[str, int]:
    rows = re.findall(r"^\| `(\d\d_\w+)` \|.*\| (\d+) s \|$", (ROOT / "README.md").read_text(), flags=re.M)
    return {name: int(seconds) for name, seconds in rows}


def test_the_readme_states_a_run_time_for_every_notebook():
    assert sorted(readme_run_times()) == [path.stem for path in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_run_times_stated_are_the_stored_runs(path):
    nb = json.loads(path.read_text())
    intro = "".join(nb["cells"][0]["source"])
    stated = STATED_RUN_TIME.search(intro)
    assert stated, f"{path.name}'s introduction has no '**Run time:** ... about N s on a 2-core CPU'"
    stated = int(stated.group(1))
    assert readme_run_times()[path.stem] == stated, "the README's table and the notebook state different run times"
    measured = stored_run_seconds(nb)
    assert abs(stated - measured) <= max(5, 0.25 * measured), \
        f"{path.name} states about {stated} s; its stored run took {measured:.0f} s: state the stored run's time"


def test_stored_run_seconds_reads_nbconverts_timing():
    cell = {"cell_type": "code", "metadata": {"execution": {"iopub.execute_input": "2026-12-03T12:00:01.5Z",
                                                            "shell.execute_reply": "2026-12-03T12:00:04Z"}}}
    late = {"cell_type": "code", "metadata": {"execution": {"iopub.execute_input": "2026-12-03T12:00:05Z",
                                                            "shell.execute_reply": "2026-12-03T12:00:31.5Z"}}}
    assert stored_run_seconds({"cells": [{"cell_type": "markdown", "metadata": {}}, cell, late]}) == 30.0
    with pytest.raises(AssertionError, match="course.py execute"):
        stored_run_seconds({"cells": [cell, {"cell_type": "code", "metadata": {}}]})
