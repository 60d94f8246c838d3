"""One grid cell in its own process: `python -m budgetlm.compare.run.cell CELL_DIR`.

A cell is an ordinary run directory (train with the one loop, `--resume auto` semantics) plus
`cell.yaml`, the config the grid wants there. The process
- holds `CELL_DIR/.lock` while it works, so a leftover process of a killed grid and its
  re-run never train the same cell at once (the re-run waits for it);
- then, while it trains, the run lock of its run folder (train/run_lock.py: `.run.lock` in the
  same folder), the one every training process takes: a `budgetlm train --resume auto` by hand
  on the cell's folder meanwhile is refused (exit 4), and the cell's own `open_run` re-enters
  the lock its process holds. Two lock files, taken in this order (cell, then run) and never
  the other way round, so neither a cell nor a hand-started run can deadlock on the other;
- prepares a RHO-loss IL table first when the arm needs one (under a lock: cells of one seed
  share it);
- writes `shape.json` when the run finishes: the model shape it started and ended with, with
  their parameter and FLOP counts (compare/run/shapes.py; the report's shape columns);
- writes `error.json` (type, message, traceback) when the run fails, and exits 1 (2 for a bad
  config: retrying cannot help), 130 when stopped by a signal (its checkpoint is kept);
- stops like Ctrl-C when its parent grid process dies, so a killed grid leaves no orphans.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from budgetlm.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, exit_code_for

CELL_CONFIG = "cell.yaml"
ERROR_FILE = "error.json"
FINETUNE_SPEC = "cell-finetune.json"  # the experiment's `finetune:` section, when it has one
FINETUNE_ERROR = "finetune-error.json"
LOCK_FILE = ".lock"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, released by the OS when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stop_when_orphaned(poll_seconds: float = 0.2) -> None:
    """Ask the loop to stop (it checkpoints first) once the grid process that started us is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="orphan-watch").start()


def write_error(
    cell_dir: Path, error: BaseException, user_error: bool, name: str = ERROR_FILE
) -> None:
    record = {
        "type": type(error).__name__,
        "message": str(error),
        "user_error": user_error,
        "traceback": "".join(traceback.format_exception(error)),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tmp = cell_dir / f".{name}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, cell_dir / name)


def run_cell(cell_dir: Path) -> int:
    from budgetlm.config import load_config
    from budgetlm.errors import user_errors
    from budgetlm.registry import parse_method_spec
    from budgetlm.train.resume import nothing_to_resume
    from budgetlm.train.run_lock import acquire as run_lock
    from budgetlm.train.session import default_run_dir, finished_summary, open_run

    with file_lock(cell_dir / LOCK_FILE):
        cfg = load_config(cell_dir / CELL_CONFIG)
        if finished_summary(cfg) is not None:
            return finetune_cell(cell_dir)
        (cell_dir / ERROR_FILE).unlink(missing_ok=True)
        try:
            with run_lock(default_run_dir(cfg)):
                if "rho_loss" in parse_method_spec(cfg.method):
                    from budgetlm.train.irreducible import prepare_il_table

                    with file_lock(Path(cfg.run.out_dir) / "rho" / LOCK_FILE):
                        prepare_il_table(cfg, progress=False)
                # The grid owns the cell's folder: an attempt killed before its first complete
                # checkpoint (out of memory, SIGKILL) has nothing to resume and starts over,
                # its files moved to previous/ (a run by hand would be refused instead).
                restart = nothing_to_resume(default_run_dir(cfg))
                if restart:
                    print("cell: no checkpoint to resume; starting over", file=sys.stderr)
                trainer = open_run(
                    cfg, resume=None if restart else "auto", restart=restart, progress=False
                )
                try:
                    summary = trainer.run()
                finally:
                    trainer.log.close()
                if summary["status"] == "finished":
                    record_shape(cell_dir, cfg, trainer.state.model.shape)
        except Exception as e:
            if type(e).__name__ == "ILRunStopped":  # the IL model's run was asked to stop
                return EXIT_INTERRUPTED
            user_error = isinstance(e, user_errors())
            write_error(cell_dir, e, user_error)
            print(f"cell failed: {type(e).__name__}: {e}", file=sys.stderr)
            return exit_code_for(e) if user_error else EXIT_FAILED
        if summary["status"] != "finished":
            return EXIT_INTERRUPTED
        print(f"cell finished: held-out loss {summary['final_val_loss']}", file=sys.stderr)
        return finetune_cell(cell_dir)


def record_shape(cell_dir: Path, cfg: object, end: object) -> None:
    """shape.json for the report (compare/run/shapes.py); a run that trained is not failed
    for want of it: the report shows a dash instead."""
    from budgetlm.compare.run.shapes import write_shape_record

    try:
        write_shape_record(cell_dir, cfg, end)
    except Exception as e:  # noqa: BLE001
        print(f"cell: no shape record: {type(e).__name__}: {e}", file=sys.stderr)


def finetune_limits(spec: dict) -> dict[str, float]:
    """The experiment's `finetune.max_dropped`, when it sets one (the fine-tuning default
    otherwise: a split with more than 10% malformed rows is refused)."""
    return {"max_dropped": float(spec["max_dropped"])} if "max_dropped" in spec else {}


def finetune_cell(cell_dir: Path) -> int:
    """Fine-tune a finished cell as the experiment asks, unless its scores are already there."""
    from budgetlm.finetune.store import has_results, read_results

    spec_path = cell_dir / FINETUNE_SPEC
    if not spec_path.is_file():
        return 0
    spec = json.loads(spec_path.read_text())
    if has_results(read_results(cell_dir), spec["suite"], spec.get("tasks")):
        return 0
    from budgetlm.finetune.protocol import Protocol
    from budgetlm.finetune.run import finetune_run

    (cell_dir / FINETUNE_ERROR).unlink(missing_ok=True)
    protocol = Protocol.from_spec(spec)
    try:
        results = finetune_run(
            cell_dir,
            spec["suite"],
            tasks=spec.get("tasks"),
            seeds=spec.get("seeds", [1]),
            protocol=protocol,
            data_dir=spec.get("data_dir"),
            progress=False,
            **finetune_limits(spec),
        )
    except Exception as e:
        write_error(cell_dir, e, user_error=False, name=FINETUNE_ERROR)
        print(f"fine-tuning failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"fine-tuned: {spec['suite']} average {results['average']:.4f}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m budgetlm.compare.run.cell CELL_DIR", file=sys.stderr)
        return EXIT_USAGE
    _stop_when_orphaned()
    return run_cell(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
