"""One grid cell in its own process: `python -m budgetlm.compare.run.cell CELL_DIR`.

A cell is an ordinary run directory (train with the one loop, `--resume auto` semantics) plus
`cell.yaml`, the config the grid wants there. The process
- holds `CELL_DIR/.lock` while it works (a lock file that works on shared file systems:
  train/shared_lock.py), so a leftover process of a killed grid and its re-run never train the
  same cell at once (the re-run waits for it, on any host);
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

A cell on several devices runs the same module under torchrun, one process per device
(`python -m torch.distributed.run --standalone --nproc-per-node K -m budgetlm.compare.run.cell
CELL_DIR`; executors/local.py with `--gpus-per-cell K`), DDP or FSDP2 as its `train.parallel`
says. Rank 0 alone does all of the above that is not training (the locks, the IL table, the
files, the fine-tuning) and tells the other ranks whether to train; it records its exit code in
`.ranks-exit` (torchrun's own is 1 whatever the ranks returned), and every rank also stops when
the grid process (BUDGETLM_GRID_PID) is gone, since their parent, the torchrun agent, outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from budgetlm.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, exit_code_for
from budgetlm.train.shared_lock import SharedLock, pid_alive

CELL_CONFIG = "cell.yaml"
ERROR_FILE = "error.json"
FINETUNE_SPEC = "cell-finetune.json"  # the experiment's `finetune:` section, when it has one
FINETUNE_ERROR = "finetune-error.json"
LOCK_FILE = ".lock"
# Under torchrun (a cell on several devices): rank 0's exit code, since torchrun's own is 1
# whatever the ranks returned (executors/local.py reads it), and the grid's pid, which the ranks
# watch (their parent, the torchrun agent, outlives a killed grid).
RANKS_EXIT_FILE = ".ranks-exit"
GRID_PID_ENV = "BUDGETLM_GRID_PID"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock that works on a shared file system (train/shared_lock.py): waits while
    a live process holds it; takes over one whose process died on this machine, or whose
    heartbeat stopped on any host (a killed cell's lock goes stale by itself)."""

    def waiting(owner: str) -> None:
        print(f"waiting for the lock {path}, held by {owner}", file=sys.stderr)

    with SharedLock(path).acquire(on_wait=waiting) as lock:
        if lock.took_over:
            print(f"warning: took over the lock {path} from {lock.took_over}", file=sys.stderr)
        yield


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
    from budgetlm.train.session import finished_summary

    with file_lock(cell_dir / LOCK_FILE):
        cfg = load_config(cell_dir / CELL_CONFIG)
        if finished_summary(cfg) is not None:
            return finetune_cell(cell_dir)
        (cell_dir / ERROR_FILE).unlink(missing_ok=True)
        try:
            with _run_lock(cfg):
                _prepare_il_table(cfg)
                summary = _train(cell_dir, cfg, restart=_nothing_to_resume(cfg))
        except Exception as e:
            return _failed(cell_dir, e)
        return _trained(summary, cell_dir)


def run_cell_ranks(cell_dir: Path, rank: int) -> int:
    """A cell on several processes, under torchrun (`budgetlm compare --gpus-per-cell K`,
    executors/local.py). Rank 0 does what a single cell process does before and after training:
    takes the cell and run locks, prepares the RHO-loss IL table (on its own device, as one
    process: the other ranks wait to join, within the 30 minutes the process group allows),
    decides between resuming and starting over, writes error.json and shape.json, fine-tunes.
    It then tells the other ranks whether to train; they resume from the checkpoint rank 0
    resumes from (`--resume auto`, once rank 0 has tidied the folder) and write nothing."""
    from budgetlm.config import load_config
    from budgetlm.train.session import finished_summary

    cfg = load_config(cell_dir / CELL_CONFIG)
    if rank != 0:
        return _follow(cell_dir, cfg)
    with file_lock(cell_dir / LOCK_FILE):
        if finished_summary(cfg) is not None:
            _share(cfg, "done")
            _leave()
            return finetune_cell(cell_dir)
        (cell_dir / ERROR_FILE).unlink(missing_ok=True)
        try:
            with _run_lock(cfg):
                try:
                    with _single_process():
                        _prepare_il_table(cfg)
                    restart = _nothing_to_resume(cfg)
                except Exception:
                    _share(cfg, "done")
                    raise
                _share(cfg, "train")
                summary = _train(cell_dir, cfg, restart=restart)
        except Exception as e:
            return _failed(cell_dir, e)
        finally:
            _leave()
        return _trained(summary, cell_dir)


def _follow(cell_dir: Path, cfg: Any) -> int:
    """A rank other than 0: train if rank 0 says so; write nothing."""
    from budgetlm.errors import user_errors

    try:
        if _share(cfg, None) != "train":
            return 0  # finished, or rank 0 failed before training and says why
        summary = _train(cell_dir, cfg, restart=False)
    except Exception as e:
        print(f"cell rank failed: {type(e).__name__}: {e}", file=sys.stderr)
        return exit_code_for(e) if isinstance(e, user_errors()) else EXIT_FAILED
    finally:
        _leave()
    return EXIT_INTERRUPTED if summary["status"] != "finished" else 0


def _share(cfg: Any, decision: str | None) -> str:
    """Join torchrun's process group (open_run finds it joined) and learn rank 0's decision."""
    import torch.distributed as torch_dist

    from budgetlm.train.runtime import setup_runtime

    setup_runtime(cfg.train)
    box = [decision]
    torch_dist.broadcast_object_list(box, src=0)
    return str(box[0])


def _leave() -> None:
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


@contextlib.contextmanager
def _single_process() -> Iterator[None]:
    """Hide torchrun's variables: what runs inside (the IL model's run) is one process."""
    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    os.environ.update({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_lock(cfg: Any) -> contextlib.AbstractContextManager:
    from budgetlm.train.run_lock import acquire
    from budgetlm.train.session import default_run_dir

    return acquire(default_run_dir(cfg))


def _prepare_il_table(cfg: Any) -> None:
    """The RHO-loss IL table, when the arm needs one (under a lock: cells of a seed share it)."""
    from budgetlm.registry import parse_method_spec

    if "rho_loss" in parse_method_spec(cfg.method):
        from budgetlm.train.irreducible import prepare_il_table

        with file_lock(Path(cfg.run.out_dir) / "rho" / LOCK_FILE):
            prepare_il_table(cfg, progress=False)


def _nothing_to_resume(cfg: Any) -> bool:
    """The grid owns the cell's folder: an attempt killed before its first complete checkpoint
    (out of memory, SIGKILL) has nothing to resume and starts over, its files moved to
    previous/ (a run by hand would be refused instead)."""
    from budgetlm.train.resume import nothing_to_resume
    from budgetlm.train.session import default_run_dir

    return nothing_to_resume(default_run_dir(cfg))


def _train(cell_dir: Path, cfg: Any, restart: bool) -> dict:
    from budgetlm.train.session import open_run

    if restart:
        print("cell: no checkpoint to resume; starting over", file=sys.stderr)
    trainer = open_run(cfg, resume=None if restart else "auto", restart=restart, progress=False)
    try:
        summary = trainer.run()
        # Under torchrun every rank is done before any tears its connections down.
        trainer.dist.barrier()
    finally:
        if trainer.log is not None:
            trainer.log.close()
    if summary["status"] == "finished" and trainer.dist.is_main:
        record_shape(cell_dir, cfg, trainer.state.model.shape)
    return summary


def _failed(cell_dir: Path, e: Exception) -> int:
    from budgetlm.errors import user_errors

    if type(e).__name__ == "ILRunStopped":  # the IL model's run was asked to stop
        return EXIT_INTERRUPTED
    user_error = isinstance(e, user_errors())
    write_error(cell_dir, e, user_error)
    print(f"cell failed: {type(e).__name__}: {e}", file=sys.stderr)
    return exit_code_for(e) if user_error else EXIT_FAILED


def _trained(summary: dict, cell_dir: Path) -> int:
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
    from budgetlm.finetune.instructions.protocol import protocol_from_spec
    from budgetlm.finetune.run import finetune_run

    (cell_dir / FINETUNE_ERROR).unlink(missing_ok=True)
    protocol = protocol_from_spec(spec)
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


def _place() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) for a cell on one process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _stop_when_gone(pid: int, poll_seconds: float = 0.2) -> None:
    """Under torchrun a rank's parent is the torchrun agent, which outlives a killed grid: stop
    too (with a checkpoint) once the grid process `pid` is gone."""

    def watch() -> None:
        while pid_alive(pid):
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="grid-watch").start()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m budgetlm.compare.run.cell CELL_DIR", file=sys.stderr)
        return EXIT_USAGE
    cell_dir = Path(args[0])
    _stop_when_orphaned()
    rank, world = _place()
    if world == 1:
        return run_cell(cell_dir)
    # Under torchrun (a cell on several devices): every rank runs this; rank 0 decides.
    if grid := os.environ.get(GRID_PID_ENV):
        _stop_when_gone(int(grid))
    code = run_cell_ranks(cell_dir, rank)
    if rank == 0:  # torchrun exits 1 whatever the ranks return: the grid reads this instead
        tmp = cell_dir / f".{RANKS_EXIT_FILE}.tmp"
        tmp.write_text(f"{code}\n")
        os.replace(tmp, cell_dir / RANKS_EXIT_FILE)
    return code


if __name__ == "__main__":
    sys.exit(main())
