"""The exercise conventions (unanswered stubs, wrong-answer errors) in one place for the
checks of notebooks 05 and 06; uses the package's own helpers when it has them."""
from __future__ import annotations

try:  # the exercises package's shared helpers (UNANSWERED stubs of the student edition)
    from . import UNANSWERED, WrongAnswer, is_unanswered  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - a package without them: no stubs to recognise
    UNANSWERED = object()

    class WrongAnswer(AssertionError):
        """An exercise answer that the check found wrong; the message says why."""

    def is_unanswered(answer) -> bool:
        return answer is UNANSWERED


def wrong(exercise: str, message: str) -> WrongAnswer:
    return WrongAnswer(f"{exercise}: not yet right. {message}")


def correct(exercise: str, message: str = "") -> str:
    text = f"correct: {exercise}" + (f". {message}" if message else "")
    print(text)
    return text


def unanswered(exercise: str, reference):
    print(f"unanswered: {exercise}. The notebook goes on with the reference answer; replace the "
          "stub with your own answer and run the check again.")
    return reference


def call(exercise: str, fn, *args):
    if not callable(fn):
        raise wrong(exercise, f"expected a function, got {type(fn).__name__}")
    try:
        return fn(*args)
    except Exception as e:  # the student's code failed: say where
        raise wrong(exercise, f"your function raised {type(e).__name__}: {e}") from e
