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


INSTALL_DIFFUSERS = ("pip install -e '.[diffusers]' in a windowguide checkout, or pip install 'windowguide[diffusers]' "
                     "(diffusers>=0.42,<0.43 and transformers)")


def missing_module(what: str, exc: ImportError) -> WindowguideError:
    """The error for an optional dependency that does not import: it names the module that failed
    (which need not be the one imported first) and the extra that installs it."""
    name = getattr(exc, "name", None) or str(exc)
    return WindowguideError(f"{what} needs the module {name!r}, which does not import here ({exc}); "
                            f"install it with {INSTALL_DIFFUSERS}")


def require_module(name: str, what: str, install: str) -> None:
    """Refuse, before any work, a command whose optional dependency ``name`` does not import, naming the
    command to install it."""
    import importlib
    try:
        importlib.import_module(name)
    except ImportError as e:
        raise WindowguideError(f"{what}, and the module {name!r} does not import here ({e}); install it with "
                               f"{install}") from None


__all__ = ["WindowguideError", "require_module", "RunError", "NonFiniteError", "missing_module", "INSTALL_DIFFUSERS"]
