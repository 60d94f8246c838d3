"""What a conformance check concludes, and how results are printed (`budgetlm check-plugin`).

A check either passes (with a short note of what it looked at: the steps it resumed from, the
final loss) or fails with a message meant for the plug-in's author: what differed, where, with
the numbers. `CheckFailed` is how a check says "the plug-in is at fault", as opposed to a bug
of the suite itself, which surfaces as any other exception.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from budgetlm.conformance.cases import Case


class CheckFailed(AssertionError):
    """A check found the plug-in (or a built-in) at fault; the message says what and where."""


@dataclass(frozen=True)
class CheckResult:
    """One check of one case: whether it passed, how long it took, and its message (why it
    failed, or a note of what a passing check looked at)."""

    case: Case
    passed: bool
    seconds: float
    message: str = ""

    def __str__(self) -> str:
        return format_result(self)


def describe_error(error: BaseException) -> str:
    """`Type: message (at file:line in function)`: where a hook raised. Input errors and run
    faults (`budgetlm.errors.UserError`, `RunFault`: a refused setting, a divergence) are their
    message alone: it already says what happened, and where in the loop is not the point."""
    from budgetlm.errors import RunFault, UserError

    text = f"{type(error).__name__}: {error}"
    frames = traceback.extract_tb(error.__traceback__)
    if isinstance(error, UserError | RunFault) or not frames:
        return text
    last = frames[-1]
    return f"{text} (at {last.filename}:{last.lineno} in {last.name})"


def _marks(stream: TextIO | None) -> tuple[str, str]:
    """✓/✗ where the output can show them; a terminal or log file in another encoding gets
    plain words rather than an UnicodeEncodeError half-way through the suite."""
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        "✓✗".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "ok  ", "FAIL"
    return "✓", "✗"


def format_result(result: CheckResult, stream: TextIO | None = None, indent: str = "") -> str:
    """`✓ layer_drop/resumes[gpt]  1.3s  from steps 3, 6, 9`; a failure's further message lines
    are indented under it."""
    ok, bad = _marks(stream if stream is not None else sys.stdout)
    head = f"{indent}{ok if result.passed else bad} {result.case}  {result.seconds:.1f}s"
    if not result.message:
        return head
    first, *rest = result.message.splitlines() or [""]
    return "\n".join([f"{head}  {first}", *(f"{indent}    {line}" for line in rest)])


def summary_line(results: Sequence[CheckResult], seconds: float) -> str:
    """`14 checks: 13 passed, 1 failed (x/resumes[gpt]) in 9.8s`."""
    failed = [r for r in results if not r.passed]
    text = f"{len(results)} checks: {len(results) - len(failed)} passed, {len(failed)} failed"
    if failed:
        names = ", ".join(str(r.case) for r in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        text += f" ({names}{more})"
    return f"{text} in {seconds:.1f}s"
