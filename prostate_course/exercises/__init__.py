"""Exercise checks for the notebooks: one module per notebook, one function per exercise.

The convention every notebook follows (docs/ARCHITECTURE.md "Exercises"):

1. A question cell (markdown) says what to do and which names to store.
2. An answer cell tagged ``solution`` assigns those names (or defines the function asked for).
   The student edition (:mod:`prostate_course.editions`) turns it into stubs:
   ``name = pc.exercises.UNANSWERED`` for each assigned name, and for a function its signature
   with ``return pc.exercises.UNANSWERED``.
3. A check cell reassigns the names from the check:
   ``name = pc.exercises.nb00.check_xxx(name, <data the check needs>)``. A check

   - prints ``correct: ...`` and returns the answer when it is right;
   - raises :class:`WrongAnswer` (an AssertionError) with a hint when it is wrong: every check
     is tested against a plausible wrong answer (tests/test_exercises.py);
   - prints ``unanswered: ...`` and returns the reference answer when the answer is
     :data:`UNANSWERED` (or a function that returns it), so that Run-All goes on and the
     cells that use the answer still run.

A check computes the right answer itself from the data it is given (never a stored constant),
so it stays right when a profile or the data change.
"""
from __future__ import annotations

import importlib

__all__ = ["UNANSWERED", "WrongAnswer", "is_unanswered", "unanswered", "correct", "wrong", "call_answer",
           "one_of", "number"]


class _Unanswered:
    """The stub value of an exercise the student has not answered yet (a singleton)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNANSWERED"

    def __reduce__(self):  # pickles (and deep-copies) to the same singleton
        return (_Unanswered, ())


#: What a student-edition stub assigns: the check reports the exercise as unanswered.
UNANSWERED = _Unanswered()


class WrongAnswer(AssertionError):
    """An exercise answer that the check found wrong; the message says why and hints."""


def is_unanswered(answer) -> bool:
    """True for :data:`UNANSWERED` (a function answer is tested by calling it: see call_answer)."""
    return answer is UNANSWERED


def unanswered(exercise: str, reference):
    """Report an unanswered exercise and return the reference answer for the cells after it."""
    print(f"unanswered: {exercise}. The notebook goes on with the reference answer; "
          f"replace the UNANSWERED stub with your own answer and run the check again.")
    return reference


def correct(exercise: str, message: str = "") -> None:
    print(f"correct: {exercise}" + (f". {message}" if message else ""))


def wrong(exercise: str, message: str) -> WrongAnswer:
    """The exception to raise for a wrong answer (``raise wrong(...)``)."""
    return WrongAnswer(f"{exercise}: not yet right. {message}")


def one_of(exercise: str, answers: dict, choices) -> None:
    """Each ``answers`` {name: value} must be one of ``choices`` (case and spaces ignored)."""
    for name, value in answers.items():
        if str(value).strip().lower() not in choices:
            raise wrong(exercise, f"{name} must be one of {choices}, got {value!r}")


def number(exercise: str, name: str, value) -> float:
    """``value`` as a float, or a WrongAnswer that names it."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise wrong(exercise, f"{name} must be a number, got {value!r}") from None


def call_answer(exercise: str, fn, *args, **kwargs):
    """Call a student's function; its exceptions become a WrongAnswer that names the exercise.

    Returns UNANSWERED when the function is the stub (it returns UNANSWERED).
    """
    if not callable(fn):
        raise wrong(exercise, f"expected a function, got {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # the student's code failed: say where
        raise wrong(exercise, f"your function raised {type(e).__name__}: {e}") from e


def __getattr__(name):  # pc.exercises.nb00 without importing every notebook's checks upfront
    if name.startswith("nb") and name[2:].isdigit():
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
