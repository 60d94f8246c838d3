"""The random-init control of an experiment with a `finetune:` section.

Does pre-training help downstream at all? The grid answers that once per experiment, after
its judged cells: the baseline arm's architecture (model and data sections, which no budget
changes) is fine-tuned from random initialisation with the experiment's fine-tuning protocol,
tasks and seeds (`budgetlm.finetune.control`). One control serves every arm that shares the
baseline's model section; the report says which arms do not.

Layout, `<out>/controls/random-init/`:
    control.yaml          the baseline's config (what the control builds its model from)
    control.json          the arm it stands for and the experiment's `finetune:` section
    finetune/<suite>.json its scores, in `budgetlm finetune`'s format
    error.json            why it failed, if it did; control.log its output; .lock

Like a cell it runs in its own process, `python -m budgetlm.compare.run.control DIR`, under
`DIR/.lock`, and is skipped once its results are there (a failed one stays failed unless the
grid runs with `retry_failed`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from budgetlm.compare.run.cell import (
    ERROR_FILE,
    LOCK_FILE,
    _stop_when_orphaned,
    file_lock,
    finetune_limits,
    write_error,
)
from budgetlm.compare.run.experiment import Cell, Experiment
from budgetlm.config import dump_yaml
from budgetlm.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, exit_code_for

CONTROL_DIR = Path("controls") / "random-init"
CONTROL_CONFIG = "control.yaml"
CONTROL_SPEC = "control.json"
CONTROL_LOG = "control.log"


def control_dir(out_dir: Path) -> Path:
    return Path(out_dir) / CONTROL_DIR


def control_cell(exp: Experiment) -> Cell:
    """A cell of the baseline arm: its config carries the architecture the control takes."""
    return Cell(exp.baseline, exp.budgets[0], exp.seeds[0])


def prepare_control(
    exp: Experiment, out_dir: Path, *, threads: int | None = None, retry_failed: bool = False
) -> str:
    """Write the control's folder; return its state: none (no `finetune:` section), finished,
    failed or todo."""
    if not exp.finetune:
        return "none"
    from budgetlm.finetune.store import read_results

    folder = control_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = exp.config_for(control_cell(exp), None, threads=threads)
    (folder / CONTROL_CONFIG).write_text(dump_yaml(cfg))
    spec = {"arm": exp.baseline, "finetune": exp.finetune}
    (folder / CONTROL_SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    if retry_failed:
        (folder / ERROR_FILE).unlink(missing_ok=True)
    if exp.finetune["suite"] in read_results(folder):
        return "finished"
    return "failed" if (folder / ERROR_FILE).is_file() else "todo"


def run_control_process(
    folder: Path,
    *,
    threads: int,
    stop_requested: Callable[[], bool],
    poll_seconds: float = 0.5,
) -> int:
    """Run the control in its own process and wait for it; a stop request ends it (its
    fine-tuning restarts from scratch next time). Returns its exit code."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    with open(folder / CONTROL_LOG, "a") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} random-init control\n")
        log.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "budgetlm.compare.run.control", str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C reaches the grid, which stops the control
        )
        try:
            while process.poll() is None:
                if stop_requested():
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
                    process.wait()
                    return EXIT_INTERRUPTED
                time.sleep(poll_seconds)
        except KeyboardInterrupt:
            process.kill()
            process.wait()
            raise
    code = process.returncode
    if code not in (0, EXIT_FAILED, EXIT_USAGE) and not (folder / ERROR_FILE).is_file():
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        write_error(folder, RuntimeError(f"the control ended with {how}; see {CONTROL_LOG}"), False)
    return code


def run_control(folder: Path) -> int:
    """Fine-tune the control in `folder` unless its scores are already there."""
    from budgetlm.errors import user_errors
    from budgetlm.finetune.store import read_results

    with file_lock(folder / LOCK_FILE):
        spec = json.loads((folder / CONTROL_SPEC).read_text())["finetune"]
        if spec["suite"] in read_results(folder):
            return 0
        from budgetlm.finetune.control import finetune_random_init
        from budgetlm.finetune.instructions.protocol import protocol_from_spec

        (folder / ERROR_FILE).unlink(missing_ok=True)
        try:
            results = finetune_random_init(
                folder / CONTROL_CONFIG,
                spec["suite"],
                out_dir=folder,
                tasks=spec.get("tasks"),
                seeds=spec.get("seeds", [1]),
                protocol=protocol_from_spec(spec),
                data_dir=spec.get("data_dir"),
                progress=False,
                **finetune_limits(spec),
            )
        except Exception as e:
            user_error = isinstance(e, user_errors())
            write_error(folder, e, user_error)
            print(f"control failed: {type(e).__name__}: {e}", file=sys.stderr)
            return exit_code_for(e) if user_error else EXIT_FAILED
    print(f"random-init control: {spec['suite']} average {results['average']:.4f}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m budgetlm.compare.run.control CONTROL_DIR", file=sys.stderr)
        return EXIT_USAGE
    _stop_when_orphaned()
    return run_control(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
