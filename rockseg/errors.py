"""The exceptions rockseg raises for problems a user can fix.

Every error a user can cause is a :class:`RocksegError`. The CLI prints its message as one line on stderr and
exits with :attr:`RocksegError.exit_code` (2 for bad usage or bad input, 1 for a run that did not complete),
without a traceback. Subclasses also inherit the matching built-in exception, so Python callers can catch
either (``except FileNotFoundError`` works for a missing input).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a misspelt ``value``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class RocksegError(Exception):
    """Base class of every error a user can cause or fix."""

    exit_code = 2


class InputError(RocksegError, ValueError):
    """An input file or option has a bad value (wrong shape, size, dtype, format...)."""


class MissingInputError(RocksegError, FileNotFoundError):
    """An input file or store does not exist."""


class OutputExistsError(RocksegError, FileExistsError):
    """The output exists already and ``--overwrite`` was not given."""


class IncompleteError(RocksegError):
    """A block-wise run is not complete (missing blocks); re-run the same command to finish it."""

    exit_code = 1


class OutputWriteError(RocksegError, OSError):
    """Writing an output failed (full disk, quota, permissions, I/O error); the partial output was removed."""
