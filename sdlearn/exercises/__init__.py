"""The notebooks' exercises: the questions' right answers, the checks, the hints and your progress.

A notebook's exercise cell holds the question and ``answer = None`` for you to fill in, then a
check::

    answer_1 = None          # your answer
    exercises.check("04.1", answer_1, tokenizer=tokenizer, prompt=EX1_PROMPT)

The right answer is never in the notebook: it is computed here, from the same inputs you have
(so it stays right on real SD weights too), by the exercise's definition in
``sdlearn/exercises/nbNN.py``. :func:`check` always answers with a verdict, never a traceback:
"no answer yet", "right", or "not yet" with a hint; the hints come in steps (a nudge on the first
wrong try, then the method). An exercise that asks you to change something and watch (a schedule,
a scale, a loss) is checked by what your change does, not by a number.

Each notebook ends with :func:`score` (answered and right, out of how many). Your results are kept
in a small local file (``~/.sdlearn/progress.json``, or ``$SDLEARN_PROGRESS_FILE``), which
``python3 course.py progress`` lists; ``SDLEARN_PROGRESS=0`` turns that off (tests and CI do).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._legacy import _as_cpu_float64, _close  # noqa: F401  (the comparison rules, kept in one place)
from ._legacy import check as _legacy_check

NOTEBOOKS = ("00", "01", "02", "03", "04", "05", "06", "07", "08", "09")


@dataclass(frozen=True)
class Verdict:
    """What a check concluded: ``right``, and a sentence saying what was wrong (empty when right)."""

    right: bool
    detail: str = ""


@dataclass
class Exercise:
    """One exercise: ``key`` "NN.k" (notebook NN, exercise k), a short ``title``, and how to judge an answer.

    ``expected(**inputs)`` computes the right answer from the inputs the notebook passes to
    :func:`check`, and answers are compared with :func:`same` (``rtol``/``atol``); or
    ``judge(answer, **inputs)`` decides itself (for behaviour checks) and returns a :class:`Verdict`
    or a bool. ``hints``: a nudge first, then the method (never the answer).
    """

    key: str
    title: str
    expected: Callable[..., Any] | None = None
    judge: Callable[..., Any] | None = None
    hints: tuple[str, ...] = ()
    rtol: float = 1e-3
    atol: float = 1e-6
    attempts: int = field(default=0, compare=False)
    result: str = field(default="open", compare=False)   # "open", "wrong" or "right"

    def verdict(self, answer: Any, inputs: dict) -> Verdict:
        if self.judge is not None:
            v = self.judge(answer, **inputs)
            return v if isinstance(v, Verdict) else Verdict(bool(v))
        return same(answer, self.expected(**inputs), rtol=self.rtol, atol=self.atol)


REGISTRY: dict[str, Exercise] = {}


def exercise(key: str, title: str, *, hints: Sequence[str] = (), rtol: float = 1e-3, atol: float = 1e-6,
             behaviour: bool = False):
    """Decorator for a notebook module's exercise definitions.

    ``@exercise("04.1", "...")`` on ``def f(**inputs)`` registers ``f`` as the computation of the
    right answer; with ``behaviour=True``, ``f(answer, **inputs)`` judges the answer itself and
    returns a :class:`Verdict` (or a bool).
    """
    def register(fn: Callable) -> Callable:
        REGISTRY[key] = Exercise(key, title, expected=None if behaviour else fn, judge=fn if behaviour else None,
                                 hints=tuple(hints), rtol=rtol, atol=atol)
        return fn

    return register


def _load(notebook: str) -> None:
    importlib.import_module(f"sdlearn.exercises.nb{notebook}")


def exercises_of(notebook: str) -> list[Exercise]:
    """The exercises of notebook ``notebook`` ("04"), in order."""
    try:
        _load(notebook)
    except ModuleNotFoundError:
        pass
    return [REGISTRY[k] for k in sorted((k for k in REGISTRY if k.split(".")[0] == notebook),
                                        key=lambda k: int(k.split(".")[1]))]


def _describe(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a tensor of shape {list(value.shape)} ({str(value.dtype).removeprefix('torch.')})"
    if isinstance(value, np.ndarray):
        return f"an array of shape {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"{type(value).__name__} {value!r:.60}"


def same(answer: Any, expected: Any, *, rtol: float = 1e-3, atol: float = 1e-6) -> Verdict:
    """Whether ``answer`` equals ``expected``: numbers, lists, arrays and tensors (any device, any dtype)
    within ``rtol``/``atol``, compared in float64 on the CPU; strings, bools and the rest by ``==``.
    The detail says what kind of thing was expected when the kinds or shapes differ."""
    numeric = (torch.is_tensor(expected) or isinstance(expected, np.ndarray)
               or (isinstance(expected, (int, float, np.integer, np.floating)) and not isinstance(expected, bool))
               or (isinstance(expected, (list, tuple)) and expected and all(
                   isinstance(v, (int, float)) and not isinstance(v, bool) for v in expected)))
    if not numeric:
        if isinstance(expected, str) and isinstance(answer, str):
            return Verdict(answer.strip().lower() == expected.strip().lower())
        return Verdict(answer == expected, "" if answer == expected else "")
    a, e = _as_cpu_float64(answer), _as_cpu_float64(expected)
    if a is None:
        return Verdict(False, f"the answer should be a number or numbers; you gave {_describe(answer)}.")
    if a.numel() == 1 and e.numel() == 1:
        a, e = a.reshape(()), e.reshape(())
    if a.shape != e.shape:
        return Verdict(False, f"the answer should have shape {list(e.shape)}; yours has {list(a.shape)}.")
    return Verdict(bool(torch.allclose(a, e, rtol=rtol, atol=atol)))


# --------------------------------------------------------------------------------------
# Progress: this kernel's results, and the local record
# --------------------------------------------------------------------------------------


def _progress_file() -> Path | None:
    if os.environ.get("SDLEARN_PROGRESS", "1").strip().lower() in {"0", "off", "no", "false"}:
        return None
    return Path(os.environ.get("SDLEARN_PROGRESS_FILE", Path.home() / ".sdlearn" / "progress.json"))


def read_progress() -> dict[str, str]:
    """The local record: ``{"04.1": "right", "04.2": "wrong", ...}`` (empty when off or absent)."""
    path = _progress_file()
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.get("results", {}).items() if v in ("right", "wrong")}


def _record(key: str, result: str) -> None:
    path = _progress_file()
    if path is None:
        return
    results = read_progress()
    if results.get(key) == "right" and result != "right":      # once right, a later try does not undo it
        return
    results[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"results": dict(sorted(results.items()))}, indent=1), encoding="utf-8")
    except OSError:
        pass                                                    # a read-only home: progress is not kept, no error


# --------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------


def check(key: str, answer: Any, *args, **inputs) -> bool | None:
    """Check your ``answer`` to exercise ``key`` ("04.1"), given the ``inputs`` the question names.

    Prints one verdict and returns True (right), False (not yet) or None (no answer yet); never
    raises because of what the answer is. A wrong answer gets the exercise's first hint, a second
    wrong try the next one. (The form ``check(name, answer, expected, hint=...)`` of earlier notebooks
    is still accepted.)
    """
    if args or key not in REGISTRY and "." not in str(key):
        return _legacy_check(key, answer, *args, **inputs)
    notebook = str(key).split(".")[0]
    if key not in REGISTRY:
        try:
            _load(notebook)
        except ModuleNotFoundError:
            pass
    if key not in REGISTRY:
        known = ", ".join(e.key for e in exercises_of(notebook)) or "none"
        print(f"Exercise {key}: there is no such exercise (notebook {notebook} has {known}). Check the name.")
        return None
    ex = REGISTRY[key]
    if answer is None:
        print(f"Exercise {key} ({ex.title}): no answer yet. Replace None with your answer and run this cell again.")
        return None
    ex.attempts += 1
    try:
        verdict = ex.verdict(answer, inputs)
    except Exception as err:       # a checker that cannot read the answer: still a verdict and a hint
        verdict = Verdict(False, f"your answer could not be checked ({type(err).__name__}: {str(err)[:160]}); "
                                 f"it is {_describe(answer)}.")
    if verdict.right:
        ex.result = "right"
        _record(key, "right")
        print(f"Exercise {key} ({ex.title}): right.")
        return True
    ex.result = "wrong" if ex.result != "right" else "right"
    _record(key, "wrong")
    hint = ex.hints[min(ex.attempts, len(ex.hints)) - 1] if ex.hints else ""
    print(f"Exercise {key} ({ex.title}): not yet. " + " ".join(p for p in (verdict.detail, f"Hint: {hint}" if hint
                                                                             else "") if p))
    return False


def score(notebook: str) -> dict[str, int]:
    """Print and return this notebook's score in this session: answered, right, out of how many."""
    items = exercises_of(notebook)
    answered = sum(e.result != "open" for e in items)
    right = sum(e.result == "right" for e in items)
    print(f"Notebook {notebook}: {answered} of {len(items)} exercises answered, {right} right.")
    return {"answered": answered, "right": right, "total": len(items)}


def progress_table() -> str:
    """Every notebook's exercises and which are done, from the local record (``course.py progress``)."""
    results = read_progress()
    lines = []
    for notebook in NOTEBOOKS:
        items = exercises_of(notebook)
        if not items:
            continue
        done = sum(results.get(e.key) == "right" for e in items)
        lines.append(f"Notebook {notebook}: {done} of {len(items)} right")
        for e in items:
            mark = {"right": "right", "wrong": "tried, not yet right"}.get(results.get(e.key), "not answered")
            lines.append(f"  {e.key:6} {e.title:60.60}  {mark}")
    path = _progress_file()
    where = "progress is not recorded (SDLEARN_PROGRESS=0)" if path is None else f"record: {path}"
    return "\n".join(lines + [where])


def main() -> None:
    print(progress_table())


if __name__ == "__main__":
    main()
