"""The one base of user-facing failures, and how a failure is cut to one line.

Every error a user can fix (a bad file, a bad setting, a case that cannot be used) is a
``LatupError``: the CLI prints its message as the one sentence it is and exits 1, and a batch
records it against the case. Anything else is unexpected (a bug), and is shown with its type.

>>> first_line(RuntimeError("Exception from src/core.cpp:42:\\n[ GENERAL_ERROR ] ..."))
'Exception from src/core.cpp:42:'
"""

from __future__ import annotations


class LatupError(ValueError):
    """A user-facing failure: its message is one sentence that says what, which file and what to do."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none.

    OpenVINO's messages run to many lines of C++ context: the first says what is wrong.
    """
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def user_errors() -> tuple[type[BaseException], ...]:
    """The failures a command reports as their own sentence: LatupError and OSError."""
    return (LatupError, OSError)
