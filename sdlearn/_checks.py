"""Argument checks shared by the package: one place that says what a whole-number or a real-number argument must be.

``True`` is an ``int`` to Python (``isinstance(True, int)``), so every count, size and step the
package takes is checked here, where a bool is refused as well as a float or a string; every scale,
rate and fraction is checked with :func:`is_number`, which refuses a bool as well.
"""

from __future__ import annotations

import math
import numbers


def is_int(value, low: int | None = None, high: int | None = None) -> bool:
    """True when ``value`` is an int (not a bool) with ``low <= value <= high`` (either bound optional)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def is_number(value, *, finite: bool = False) -> bool:
    """True when ``value`` is a real number (an int, a float, a NumPy scalar), not a bool; finite if ``finite``.

    Each caller then checks its own range and says in its own words what was expected.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return not finite or math.isfinite(value)


def check_int(name: str, value, *, low: int | None = 1, high: int | None = None, expected: str | None = None,
              hint: str = "") -> int:
    """``value`` unchanged when it is an int in ``[low, high]``; otherwise a ValueError naming the argument.

    The message reads ``"{name} must be {expected}, got {value!r}. {hint}"``; ``expected`` defaults to
    ``"an int >= {low}"`` (or ``"an int in [low, high]"``), and ``hint`` says how to fix it.
    """
    if is_int(value, low, high):
        return value
    if expected is None:
        if high is not None:
            expected = f"an int in [{low}, {high}]" if low is not None else f"an int <= {high}"
        else:
            expected = f"an int >= {low}" if low is not None else "an int"
    message = f"{name} must be {expected}, got {value!r}."
    raise ValueError(f"{message} {hint}" if hint else message)


def positive_int(name: str, value, *, hint: str = "") -> int:
    """``value`` unchanged when it is an int >= 1 (not a bool); otherwise a ValueError naming ``name``."""
    return check_int(name, value, low=1, hint=hint)
