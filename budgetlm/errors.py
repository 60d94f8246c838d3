"""Errors a user can fix, and the exit codes every command shares.

A `UserError` is a mistake in the input (a config key, a budget, a missing file, a table that does
not cover a shape): every command prints its message on one line and exits with its `exit_code`
(`EXIT_USAGE` unless a subclass says otherwise) instead of a traceback. The other classes here are
faults of the run rather than of its input (divergence, a busy run folder, a full disk); they carry
their own exit codes so that a scheduler can tell "retry later" from "fix the config".

The classes that raise these errors live in their own layers and subclass the ones here, so this
module sits at the bottom of the package and imports nothing from it (a grid cell and the command
line recognise the same errors without importing each other). The codes are documented in
docs/training.md ("Exit codes"); a test keeps that table and these constants in step.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the work ran and something in it failed (e.g. a grid cell); see its message
EXIT_USAGE = 2  # bad config or input: nothing was written
EXIT_DIVERGED = 3  # loss, gradient or held-out loss went non-finite; no non-finite weights saved
EXIT_BUSY = 4  # another live process holds the run folder's lock; retry when it is done
EXIT_STORAGE = 5  # the disk is full or not writable; the previous checkpoint is intact
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: a checkpoint was written; rerun to continue


class UserError(Exception):
    """Base of every error caused by the input rather than by a bug."""

    exit_code: int = EXIT_USAGE


class RunFault(Exception):
    """Base of the faults of a run that are neither bad input nor a bug (each has its own code)."""

    exit_code: int = EXIT_FAILED


class DivergedError(RunFault):
    """The loss, a gradient or the held-out loss became NaN or infinite."""

    exit_code = EXIT_DIVERGED


class RunBusy(RunFault):
    """Another live process holds the lock of the run folder."""

    exit_code = EXIT_BUSY


class StorageError(RunFault):
    """A write failed because the disk is full or not writable."""

    exit_code = EXIT_STORAGE


def user_errors() -> tuple[type[BaseException], ...]:
    """What a command reports as a one-line message: user errors, run faults and missing files."""
    return (UserError, RunFault, FileNotFoundError)


def exit_code_for(error: BaseException) -> int:
    """The documented exit code of an error that `user_errors()` covers."""
    return getattr(error, "exit_code", EXIT_USAGE)
