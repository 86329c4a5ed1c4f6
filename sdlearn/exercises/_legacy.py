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


def _as_cpu_float64(value: Any) -> torch.Tensor | None:
    """``value`` as a float64 tensor on the CPU, or None when it holds no numbers to compare.

    ``value``: a tensor of any dtype on any device (CUDA, MPS, ...), a NumPy array, a number, or a
    (nested) list or tuple of these. A tensor on the ``meta`` device has a shape but no values: None.
    """
    try:
        if torch.is_tensor(value):
            return value.detach().to("cpu", torch.float64)
        if isinstance(value, (list, tuple)) and any(torch.is_tensor(v) for v in value):
            parts = [_as_cpu_float64(v) for v in value]
            if any(p is None for p in parts) or len({p.shape for p in parts}) != 1:
                return None
            return torch.stack(parts)
        return torch.from_numpy(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError, RuntimeError, NotImplementedError):
        return None


def _close(answer: Any, expected: Any, rtol: float, atol: float) -> bool:
    """Whether ``answer`` is ``expected``: numbers, arrays and tensors within ``rtol``/``atol``, compared in
    float64 on the CPU (so a float16 CUDA tensor can be checked against a float32 CPU one); anything else by ``==``."""
    if torch.is_tensor(expected) or torch.is_tensor(answer) or isinstance(expected, np.ndarray):
        a, e = _as_cpu_float64(answer), _as_cpu_float64(expected)
        return a is not None and e is not None and a.shape == e.shape and bool(torch.allclose(a, e, rtol=rtol, atol=atol))
    if isinstance(expected, (float, int, np.floating, np.integer)) and not isinstance(expected, bool):
        try:
            return bool(np.isclose(float(answer), float(expected), rtol=rtol, atol=atol))
        except (TypeError, ValueError):
            return False
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
        if torch.is_tensor(answer) and answer.is_meta:
            hint = (f"{hint} Your answer is a tensor on the 'meta' device, which has a shape but no values: "
                    "compute it from tensors that hold data.").strip()
        raise AssertionError(f"{name}: not quite. {hint}".strip())
    print(f"{name}: correct")
