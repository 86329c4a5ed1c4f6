import pytest
import torch

from sdlearn.exercises import check


def test_not_attempted_passes_quietly(capsys):
    check("Exercise 1", None, 3.0)
    assert "not attempted" in capsys.readouterr().out


def test_right_and_wrong_numbers(capsys):
    check("Exercise 1", 48.0, 48)
    assert "correct" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="Exercise 1: not quite. Count elements"):
        check("Exercise 1", 47, 48, hint="Count elements.")


def test_tensors_and_predicates():
    check("t", torch.ones(2), torch.ones(2) + 1e-7)
    with pytest.raises(AssertionError):
        check("t", torch.ones(3), torch.ones(2))
    check("p", 5, lambda a: a > 3)
    with pytest.raises(AssertionError):
        check("p", "abc", 3.0)
