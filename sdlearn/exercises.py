"""Checks for the notebooks' exercises.

Each exercise leaves a variable for the learner to fill in (``None`` until then) and
a check cell calls :func:`check`. Until the learner answers, the check says so and
passes; a wrong answer fails with a hint; a right one says so. Each notebook also runs
the check on its own (hidden) solution, so the checks themselves are tested by nbval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def _close(answer: Any, expected: Any, rtol: float, atol: float) -> bool:
    if torch.is_tensor(expected) or torch.is_tensor(answer):
        a = torch.as_tensor(answer).double()
        e = torch.as_tensor(expected).double()
        return a.shape == e.shape and bool(torch.allclose(a, e, rtol=rtol, atol=atol))
    if isinstance(expected, (float, int, np.floating, np.integer)) and not isinstance(expected, bool):
        try:
            return bool(np.isclose(float(answer), float(expected), rtol=rtol, atol=atol))
        except (TypeError, ValueError):
            return False
    if isinstance(expected, np.ndarray):
        a = np.asarray(answer)
        return a.shape == expected.shape and bool(np.allclose(a, expected, rtol=rtol, atol=atol))
    return answer == expected


def check(name: str, answer: Any, expected: Any | Callable[[Any], bool], *, hint: str = "",
          rtol: float = 1e-3, atol: float = 1e-6) -> None:
    """Check a learner's ``answer`` for exercise ``name``.

    ``expected`` is the right value (numbers and tensors compared with ``rtol``/``atol``),
    or a function that returns True for a right answer. Prints whether the answer is
    right or not attempted yet (``answer is None``); raises ``AssertionError`` with
    ``hint`` when it is wrong. Returns nothing, so a notebook cell shows only the message.
    """
    if answer is None:
        print(f"{name}: not attempted yet (replace None with your answer and run the check again)")
        return
    right = expected(answer) if callable(expected) else _close(answer, expected, rtol, atol)
    if not right:
        raise AssertionError(f"{name}: not quite. {hint}".strip())
    print(f"{name}: correct")
