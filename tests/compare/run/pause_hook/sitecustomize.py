"""Put on PYTHONPATH by test_grid's kill test, so that killing the grid is not a race.

A process that starts with BUDGETLM_TEST_PAUSE_AT set (a cell's checkpoint folder) pauses right
after its first complete checkpoint in that folder: it touches BUDGETLM_TEST_PAUSE_MARKER and
waits until it receives SIGTERM (the cell's orphan watch sends one once the grid is gone), then
carries on, so the loop stops the way it does for a killed grid. Without the pause the test
polled for the checkpoint and killed the grid, and under load the cell could finish first.
"""

from __future__ import annotations

import os

_TARGET = os.environ.get("BUDGETLM_TEST_PAUSE_AT")


def _install(target: str, marker: str) -> None:
    import signal
    import threading
    import time
    from pathlib import Path

    import budgetlm.train.checkpoint as checkpoint

    save = checkpoint.save_checkpoint

    def pause_after_first(directory, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        saved = save(directory, *args, **kwargs)
        if Path(directory).resolve() != Path(target).resolve() or Path(marker).exists():
            return saved
        terminated = threading.Event()
        handler = signal.getsignal(signal.SIGTERM)

        def note(signum, frame):  # noqa: ANN001, ANN202
            terminated.set()
            if callable(handler):
                handler(signum, frame)
            else:  # no handler of the loop's: terminate as the default would
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, note)
        Path(marker).touch()
        deadline = time.monotonic() + 600  # a hang guard only
        while not terminated.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        signal.signal(signal.SIGTERM, handler)
        return saved

    checkpoint.save_checkpoint = pause_after_first


if _TARGET:
    _install(_TARGET, os.environ["BUDGETLM_TEST_PAUSE_MARKER"])
