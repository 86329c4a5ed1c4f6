"""The exercises, read as a learner sees them: the right answer is never in view.

For every notebook: at least three exercises, each defined in ``sdlearn/exercises/nbNN.py`` (which
computes the right answer from the inputs the learner has, or judges what the learner's change does),
each checked once in a visible cell with the learner's ``None`` and once in a hidden solution cell
(tagged ``solution``, source and outputs collapsed); no visible cell computes an expected value or
writes a solution, no check call carries the answer or a hint, and the notebook ends with its score.
That the notebook runs to the end with the solution cells removed, each check saying there is no
answer yet, is tested by the float16 rehearsal (``tests/test_notebooks_float16.py``), which runs
every notebook that way; nbval runs the solutions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from sdlearn import exercises

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
KEY = re.compile(r"^\d\d\.\d+$")
# what a lesson about Stable Diffusion has no reason to say (the course's upkeep)
UPKEEP = re.compile(r"nbval|tests/|test_\w+\.py|pytest|[Ii]ssue #?\d+|\bCI\b|\b[Tt]he tests\b")


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def is_solution(cell) -> bool:
    return "solution" in cell.metadata.get("tags", [])


def check_calls(source: str) -> list[ast.Call]:
    try:
        tree = ast.parse(re.sub(r"^[%!].*$", "", source, flags=re.M))
    except SyntaxError:
        return []
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and (getattr(node.func, "id", None) == "check" or getattr(node.func, "attr", None) == "check")]


def assigned_names(source: str) -> set[str]:
    try:
        tree = ast.parse(re.sub(r"^[%!].*$", "", source, flags=re.M))
    except SyntaxError:
        return set()
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}


def test_every_notebook_is_read():
    assert len(NOTEBOOKS) == 10, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_exercises_keep_the_answer_out_of_view(path):
    number = path.name[:2]
    nb = nbformat.read(path, as_version=4)
    defined = [e.key for e in exercises.exercises_of(number)]
    assert len(defined) >= 3, f"{path.name}: {len(defined)} exercises in sdlearn/exercises/nb{number}.py; at least 3"
    asked, solved = [], []
    for cell in code_cells(nb):
        for call in check_calls(cell.source):
            assert call.args and isinstance(call.args[0], ast.Constant) and KEY.match(str(call.args[0].value)), \
                f"{path.name}: a check call without an 'NN.k' key: {ast.unparse(call)}"
            key = call.args[0].value
            assert key.startswith(number + "."), f"{path.name}: check({key!r}) belongs to another notebook"
            assert len(call.args) == 2, f"{path.name}: check({key!r}) passes more than the answer: {ast.unparse(call)}"
            assert not {kw.arg for kw in call.keywords} & {"hint", "expected", "rtol", "atol"}, \
                f"{path.name}: check({key!r}) carries a hint or a tolerance; they belong in nb{number}.py"
            (solved if is_solution(cell) else asked).append(key)
        if not is_solution(cell):
            leaked = {n for n in assigned_names(cell.source) if n.startswith(("expected", "solution"))}
            assert not leaked, f"{path.name}: a visible cell computes {sorted(leaked)}:\n{cell.source[:300]}"
    assert sorted(set(asked)) == sorted(asked) == sorted(defined), \
        f"{path.name}: exercises asked {asked}, defined {defined} (each asked once, in a visible cell)"
    assert sorted(solved) == sorted(defined), f"{path.name}: solutions for {solved}, exercises {defined}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_solutions_are_tagged_collapsed_and_assert_their_check(path):
    nb = nbformat.read(path, as_version=4)
    solutions = [c for c in code_cells(nb) if is_solution(c)]
    assert solutions, f"{path.name} has no solution cells"
    for cell in solutions:
        hidden = cell.metadata.get("jupyter", {})
        assert hidden.get("source_hidden") and hidden.get("outputs_hidden"), \
            f"{path.name}: a solution cell is not collapsed:\n{cell.source[:200]}"
        for call in check_calls(cell.source):
            assert f"assert {ast.unparse(call)}" in ast.unparse(ast.parse(cell.source)), \
                f"{path.name}: a solution must assert its check (a wrong solution fails): {ast.unparse(call)}"
    for cell in code_cells(nb):
        if not is_solution(cell):
            assert not cell.source.lstrip().lower().startswith("# solution"), \
                f"{path.name}: a solution cell without the tag:\n{cell.source[:200]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_has_an_exercise_that_changes_the_model_or_the_pipeline(path):
    number = path.name[:2]
    behaviour = [e.key for e in exercises.exercises_of(number) if e.judge is not None]
    assert behaviour, f"{path.name}: no exercise judged by what the learner's change does (behaviour=True)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_ends_with_its_score(path):
    number = path.name[:2]
    last = code_cells(nbformat.read(path, as_version=4))[-1]
    assert f'score("{number}")' in last.source and not is_solution(last)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_lessons_speak_of_stable_diffusion_not_of_the_courses_upkeep(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            found = UPKEEP.findall(cell.source)
            assert not found, f"{path.name}: {found} in a lesson:\n{cell.source[:300]}"


def test_no_exercise_title_is_repeated_across_notebooks():
    titles = {}
    for number in exercises.NOTEBOOKS:
        for e in exercises.exercises_of(number):
            assert e.title.lower() not in titles, f"{e.key} repeats {titles[e.title.lower()]}: {e.title!r}"
            titles[e.title.lower()] = e.key
            assert len(e.hints) >= 2, f"{e.key}: hints come in steps, a nudge then the method"
