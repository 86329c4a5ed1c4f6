import numpy as np
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


def test_tensors_of_other_dtypes_are_compared_in_float64(capsys):
    check("t", torch.tensor([0.5, 1.25], dtype=torch.float16), torch.tensor([0.5, 1.25]))      # float16 vs float32
    check("t", torch.tensor([1, 2, 3]), torch.tensor([1.0, 2.0, 3.0]))                          # int vs float
    check("t", torch.tensor(48), 48.0)                                                          # an int tensor vs a float
    check("t", torch.tensor([1.0, 2.0], dtype=torch.bfloat16), [1, 2])                           # a list as the expected value
    assert capsys.readouterr().out.count("correct") == 4
    with pytest.raises(AssertionError):                      # float16 rounding is within rtol, a real difference is not
        check("t", torch.tensor([0.5, 1.5], dtype=torch.float16), torch.tensor([0.5, 1.25]))


def test_lists_arrays_and_tensors_are_interchangeable(capsys):
    check("t", [1.0, 2.0], torch.tensor([1.0, 2.0]))                                            # a list vs a tensor
    check("t", [torch.tensor(1.0), torch.tensor(2.0)], torch.tensor([1.0, 2.0]))                 # a list of tensors
    check("t", np.array([1.0, 2.0], dtype=np.float32), torch.tensor([1.0, 2.0], dtype=torch.float64))
    check("t", torch.tensor([1.0, 2.0]), np.array([1.0, 2.0]))                                  # a tensor vs an array
    assert capsys.readouterr().out.count("correct") == 4
    with pytest.raises(AssertionError):
        check("t", [1.0, 2.0, 3.0], torch.tensor([1.0, 2.0]))                                   # wrong shape
    with pytest.raises(AssertionError):
        check("t", "abc", torch.tensor([1.0]))                                                  # not numbers: a verdict, not a crash


def test_a_tensor_that_needs_detach_and_cpu_gets_a_verdict(capsys):
    weight = torch.tensor([1.0, 2.0], requires_grad=True)
    check("t", weight * 2, torch.tensor([2.0, 4.0]))                                            # needs .detach()
    assert "correct" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_tensor_against_a_cpu_value(capsys):
    check("t", torch.tensor([0.5, 1.25], device="cuda", dtype=torch.float16), torch.tensor([0.5, 1.25]))
    check("t", torch.tensor([0.5, 1.25]), torch.tensor([0.5, 1.25], device="cuda"))
    assert capsys.readouterr().out.count("correct") == 2
    with pytest.raises(AssertionError, match="not quite"):
        check("t", torch.tensor([0.5, 2.0], device="cuda"), torch.tensor([0.5, 1.25]))


def test_a_tensor_on_another_device_gets_a_hint_not_a_device_error():
    # The meta device stands in for a device other than the CPU: comparing it with a CPU tensor used to raise
    # torch's "Tensor on device ... is not on the expected device" RuntimeError. A meta tensor has no values,
    # so the verdict is "wrong", with the hint and what to do about it.
    with pytest.raises(AssertionError, match="Exercise 2: not quite. Use the noise.*'meta' device"):
        check("Exercise 2", torch.ones(2, device="meta"), torch.ones(2), hint="Use the noise.")
    with pytest.raises(AssertionError, match="not quite"):
        check("t", torch.ones(2), torch.ones(2, device="meta"))


# --- registered exercises: the right answer computed in sdlearn.exercises, never in the notebook -------------

import sdlearn.exercises as ex  # noqa: E402


@pytest.fixture
def registered(monkeypatch, tmp_path):
    monkeypatch.setattr(ex, "REGISTRY", {})
    monkeypatch.setenv("SDLEARN_PROGRESS", "1")
    monkeypatch.setenv("SDLEARN_PROGRESS_FILE", str(tmp_path / "progress.json"))

    @ex.exercise("98.1", "count the latent numbers", hints=("A latent has 4 channels.", "Multiply 4 * h * w."))
    def latent_numbers(*, side):
        return 4 * (side // 8) ** 2

    @ex.exercise("98.2", "make it bluer", behaviour=True)
    def bluer(answer, *, before):
        return ex.Verdict(answer[2] > before[2], "the blue channel did not grow.")

    return tmp_path / "progress.json"


def test_a_registered_exercise_computes_its_answer_and_hints_in_steps(registered, capsys):
    assert ex.check("98.1", None, side=64) is None
    assert "no answer yet" in capsys.readouterr().out
    assert ex.check("98.1", 250, side=64) is False
    assert "Hint: A latent has 4 channels." in capsys.readouterr().out
    assert ex.check("98.1", 251, side=64) is False
    assert "Hint: Multiply 4 * h * w." in capsys.readouterr().out
    assert ex.check("98.1", torch.tensor([256.0]), side=64) is True          # a tensor of one number will do
    assert "right" in capsys.readouterr().out
    assert ex.check("98.1", 256, side=512) is False                            # computed from the inputs
    assert ex.read_progress() == {"98.1": "right"}                              # once right, stays right


def test_behaviour_checks_and_answers_that_break_the_checker_get_a_verdict(registered, capsys):
    assert ex.check("98.2", [0.1, 0.2, 0.9], before=[0.1, 0.2, 0.5]) is True
    assert ex.check("98.2", [0.1, 0.2, 0.1], before=[0.1, 0.2, 0.5]) is False
    assert "the blue channel did not grow" in capsys.readouterr().out
    assert ex.check("98.2", 5, before=[0.1, 0.2, 0.5]) is False                # the checker itself raises
    assert "could not be checked (TypeError" in capsys.readouterr().out
    assert ex.check("98.1", "sixty-four", side=64) is False                    # a string for a number
    out = capsys.readouterr().out
    assert "should be a number or numbers; you gave str" in out
    assert ex.check("98.1", torch.zeros(2, 2), side=64) is False
    assert "should have shape [] ; yours has [2, 2]".replace(" ;", ";") in capsys.readouterr().out
    assert ex.check("98.9", 1) is None and "no such exercise" in capsys.readouterr().out


def test_score_and_the_progress_table(registered, capsys):
    ex.check("98.1", 256, side=64)
    ex.check("98.2", [0, 0, 0], before=[0, 0, 1])
    capsys.readouterr()
    assert ex.score("98") == {"answered": 2, "right": 1, "total": 2}
    assert "Notebook 98: 2 of 2 exercises answered, 1 right." in capsys.readouterr().out
    assert ex.read_progress() == {"98.1": "right", "98.2": "wrong"}


def test_progress_is_off_when_asked(registered, monkeypatch):
    monkeypatch.setenv("SDLEARN_PROGRESS", "0")
    ex.check("98.1", 256, side=64)
    assert not registered.exists() and ex.read_progress() == {}
    assert "not recorded" in ex.progress_table()
