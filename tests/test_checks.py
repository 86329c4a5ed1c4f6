"""sdlearn._checks: the one home of the package's whole-number and real-number argument checks."""

import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from sdlearn._checks import check_int, is_int, is_number, positive_int

PACKAGE = Path(__file__).resolve().parents[1] / "sdlearn"


def test_is_int_refuses_bools_floats_and_strings_and_keeps_to_its_bounds():
    assert is_int(3) and is_int(0) and is_int(-2) and is_int(5, 1, 5) and is_int(1, low=1)
    for value in (True, False, 3.0, "3", None):
        assert not is_int(value), value
    assert not is_int(0, low=1) and not is_int(6, high=5)


def test_check_int_messages_name_the_argument_and_the_fix():
    assert check_int("steps", 4) == 4
    with pytest.raises(ValueError, match=re.escape("steps must be an int >= 1, got 0.")):
        check_int("steps", 0)
    with pytest.raises(ValueError, match=re.escape("t must be an int in [0, 9], got 10.")):
        check_int("t", 10, low=0, high=9)
    with pytest.raises(ValueError, match=re.escape("n must be an int <= 3, got '2'.")):
        check_int("n", "2", low=None, high=3)
    with pytest.raises(ValueError, match=re.escape("k must be an int, got True.")):
        check_int("k", True, low=None)
    with pytest.raises(ValueError, match=re.escape("size must be a side in pixels, got 0. Pass e.g. 64.")):
        check_int("size", 0, expected="a side in pixels", hint="Pass e.g. 64.")
    with pytest.raises(ValueError, match=re.escape("batch_size must be an int >= 1, got 2.5. Pass e.g. 4.")):
        positive_int("batch_size", 2.5, hint="Pass e.g. 4.")


def test_is_number_takes_reals_but_not_bools():
    for value in (1, 0.5, -3.0, np.float32(0.25), np.int64(2), Fraction(1, 3), float("inf")):
        assert is_number(value), value
    for value in (True, False, "1", None, [1.0], 1j):
        assert not is_number(value), value
    assert not is_number(float("nan"), finite=True) and not is_number(float("inf"), finite=True)
    assert is_number(7.5, finite=True)


def test_the_package_writes_no_bool_guard_of_its_own():
    """``isinstance(x, bool) or not isinstance(x, ...)``: one owner, this module (issue #19)."""
    guard = re.compile(r"isinstance\(\s*[\w.]+\s*,\s*bool\s*\)\s*or\s+not\s+isinstance")
    found = [f"{path.relative_to(PACKAGE)}:{n}" for path in sorted(PACKAGE.rglob("*.py")) if path.name != "_checks.py"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if guard.search(line)]
    assert not found, f"use sdlearn._checks (is_int, check_int, is_number) instead: {found}"
