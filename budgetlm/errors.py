"""Errors a user can fix, and the exit codes every command shares.

A `UserError` is a mistake in the input (a config key, a budget, a missing file, a table that does
not cover a shape): every command prints its message on one line and exits with `EXIT_USAGE`
instead of a traceback. The classes that raise it live in their own layers and subclass it, so
this module sits at the bottom of the package and imports nothing from it (a grid cell and the
command line recognise the same errors without importing each other).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the work ran and something in it failed (e.g. a grid cell); see its message
EXIT_USAGE = 2  # bad config or input: nothing was written
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: a checkpoint was written; rerun to continue


class UserError(Exception):
    """Base of every error caused by the input rather than by a bug."""


def user_errors() -> tuple[type[BaseException], ...]:
    """What a command reports as a one-line message: user errors and missing files."""
    return (UserError, FileNotFoundError)
