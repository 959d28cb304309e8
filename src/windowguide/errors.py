"""The project's error types: every refusal of bad input is a ``WindowguideError`` with one line that
names the value and what is accepted.

- ``WindowguideError`` (a ``ValueError``): the input is wrong (an argument, a SPEC, a file given);
  the command line exits with status 2.
- ``RunError``: the input was accepted but the run failed (a non-finite prediction or loss, an
  unusable device mid-run); the command line exits with status 1.
"""
from __future__ import annotations


class WindowguideError(ValueError):
    """Bad input: the message names the value and what would be accepted."""


class RunError(WindowguideError):
    """A run that started and could not finish correctly (e.g. a non-finite prediction)."""


class NonFiniteError(RunError):
    """A prediction, a loss or a weight became NaN or infinite."""


__all__ = ["WindowguideError", "RunError", "NonFiniteError"]
