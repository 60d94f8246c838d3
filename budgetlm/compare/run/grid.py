"""Run an experiment's grid of cells, each in its own process, resumably, `jobs` at a time.

The grid decides what runs and in which order (tuning cells first, extensions of a search as
its results ask for them, then the judged seeds of tuned arms); an executor (executors/)
decides where: local processes by default (each with its own GPUs with `--gpus`), Slurm jobs,
Ray tasks. The random-init control (control.py) always runs here, as a local process, once the
cells are done.

Layout of the output folder:
    experiment.json         the experiment as resolved (what `budgetlm report` reads)
    cells/<arm>/<budget>/[lr<x>/]seed<k>/   one ordinary run directory per cell (+ cell.yaml)
    rho/                    RHO-loss IL tables, shared by the cells of a seed
    controls/random-init/   with `finetune:`, the baseline's architecture fine-tuned from
                            random weights once the cells are done (compare/run/control.py)
    report.html, report.md, summary.csv, cells.csv

Re-running skips finished cells, resumes interrupted ones from their last checkpoint, and keeps
failed ones failed (`retry_failed` runs them again). A cell whose config no longer matches the
experiment is refused unless `rerun_changed` discards it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from budgetlm.compare.analysis.results import judged_cells, planned_tuning_cells, read_cell
from budgetlm.compare.run.cell import (
    CELL_CONFIG,
    ERROR_FILE,
    EXIT_INTERRUPTED,
    FINETUNE_ERROR,
    FINETUNE_SPEC,
    write_error,
)
from budgetlm.compare.run.control import control_dir, prepare_control, run_control_process
from budgetlm.compare.run.executors.base import CellHandle, CellLaunch, Executor
from budgetlm.compare.run.executors.local import LocalExecutor, LocalHandle
from budgetlm.compare.run.experiment import Cell, Experiment, ExperimentError
from budgetlm.config import Config, dump_yaml, resume_drift
from budgetlm.finetune.store import has_results
from budgetlm.train.shared_lock import LockBusy, SharedLock

LOCK_FILE = ".compare.lock"
EXPERIMENT_FILE = "experiment.json"


class GridBusy(ExperimentError):
    """Another `budgetlm compare` is running on the same folder."""


@dataclass
class GridOutcome:
    finished: list[Cell] = field(default_factory=list)
    failed: list[Cell] = field(default_factory=list)
    interrupted: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)  # finished before this invocation
    # An executor that does not wait (Slurm --no-wait): cells still queued or running when the
    # grid returned, and cells it has yet to start; a re-run collects and starts them.
    submitted: list[Cell] = field(default_factory=list)
    queued: list[Cell] = field(default_factory=list)
    # The random-init control (with `finetune:`): none, finished, skipped, failed, interrupted.
    control: str = "none"

    @property
    def stopped(self) -> bool:
        return bool(self.interrupted) or self.control == "interrupted"


class _Running:
    """A started cell. `handle` is the executor's CellHandle; a process-like object (poll,
    send_signal, kill, wait) is wrapped in a LocalHandle with its log."""

    def __init__(self, cell: Cell, handle: Any, log: Any = None) -> None:
        self.cell = cell
        self.handle: CellHandle = (
            handle if isinstance(handle, CellHandle) else LocalHandle(handle, log)
        )
        self.started = time.monotonic()


class GridRunner:
    def __init__(
        self,
        exp: Experiment,
        out_dir: Path,
        *,
        jobs: int | None = None,
        threads: int | None = None,
        progress: bool = True,
        retry_failed: bool = False,
        rerun_changed: bool = False,
        poll_seconds: float = 0.5,
        executor: Executor | None = None,
    ) -> None:
        """`jobs`: cells at a time (default 1; with an `executor` given, its own limit alone
        unless `jobs` is given too). `executor`: where cells run (default: local processes)."""
        if jobs is not None and jobs < 1:
            raise ExperimentError("--jobs must be at least 1")
        if executor is None:
            jobs = jobs or 1
            executor = LocalExecutor(jobs)
        self.exp, self.out_dir, self.jobs, self.executor = exp, Path(out_dir), jobs, executor
        self.threads = threads or max(1, (os.cpu_count() or 1) // (jobs or 1))
        self.progress, self.retry_failed, self.rerun_changed = progress, retry_failed, rerun_changed
        self.poll_seconds = poll_seconds
        self._stop_requests = 0
        self._started = time.monotonic()
        self._lines = False  # progress as lines (stderr is no terminal), set when the grid runs

    # -- public -----------------------------------------------------------------------------
    def run(self) -> GridOutcome:
        from budgetlm.compare.run.shapes import check_rst_coverage

        # Before anything is written: a shape the RST table cannot price fails its cells.
        check_rst_coverage(self.exp, progress=self.progress)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self._exclusive(), self._signals():
                self._write_experiment()
                outcome = self._run_grid()
                if not self._stop_requests and not (outcome.submitted or outcome.queued):
                    outcome.control = self._run_control()
                return outcome
        finally:
            self.executor.close()

    def plan(self) -> list[tuple[Cell, str]]:
        """Write the config of every cell known now (cell.yaml, and experiment.json), prepare
        their data, and run nothing; return each cell with its state (todo, finished, failed),
        tuning cells first. Known now: every tuning cell (and an extension its search's results
        on disk ask for) and every untuned arm's cell; the judged seeds of a tuned arm only
        once its tuning cells have finished and chosen its LR."""
        from budgetlm.compare.run.shapes import check_rst_coverage

        check_rst_coverage(self.exp, progress=self.progress)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            self._write_experiment()
            known = [*self.exp.tuning_cells(), *self.exp.untuned_cells(), *self._called_for()]
            cells = sorted(dict.fromkeys(known), key=lambda c: not self.exp.is_tuning_cell(c))
            planned = [(cell, self._prepare_cell(cell)) for cell in cells]
            todo = [cell for cell, state in planned if state == "todo"]
            if todo:
                self._prepare_data(todo)
        return planned

    # -- setup ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """`.compare.lock`, a lock that works on shared file systems (train/shared_lock.py)."""
        try:
            lock = SharedLock(self.out_dir / LOCK_FILE).acquire(blocking=False)
        except LockBusy as e:
            raise GridBusy(
                f"another `budgetlm compare` is running on {self.out_dir}: {e.description}; "
                "wait for it or use another --out folder"
            ) from e
        if lock.took_over:
            print(
                f"warning: took over {self.out_dir / LOCK_FILE} from {lock.took_over}",
                file=sys.stderr,
            )
        with lock:
            yield

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def handle(signum: int, frame: Any) -> None:
            self._stop_requests += 1
            if self._stop_requests > 1:  # a second Ctrl-C: stop now, checkpoints or not
                raise KeyboardInterrupt

        old = {}
        with contextlib.suppress(ValueError):  # not the main thread: no signal handling
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, handle)
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _write_experiment(self) -> None:
        record = {
            **self.exp.to_dict(),
            "command": " ".join(sys.argv),
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        tmp = self.out_dir / f".{EXPERIMENT_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        os.replace(tmp, self.out_dir / EXPERIMENT_FILE)

    def _config(self, cell: Cell) -> Config:
        return self.exp.config_for(cell, self.out_dir, threads=self.threads)

    def _prepare_cell(self, cell: Cell) -> str:
        """Write the cell's config; return its state (finished, failed or todo)."""
        cfg = self._config(cell)
        run_dir = Path(cfg.run.dir)
        saved = run_dir / "config.yaml"
        if saved.is_file():
            changed = resume_drift(yaml.safe_load(saved.read_text()), cfg.to_dict())
            if changed and not self.rerun_changed:
                raise ExperimentError(
                    f"cell {cell.id} ran with a different config ({', '.join(changed)}); "
                    "re-run with --rerun-changed to discard it, or use another --out folder"
                )
            if changed:
                self._refuse_if_in_flight(cell, run_dir)
                shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CELL_CONFIG).write_text(dump_yaml(cfg))
        spec = run_dir / FINETUNE_SPEC
        if self.exp.finetune:
            spec.write_text(json.dumps(self.exp.finetune, indent=2) + "\n")
        else:
            spec.unlink(missing_ok=True)
        result = read_cell(cell, self.out_dir, with_curve=False)
        if self.retry_failed:
            for name in (ERROR_FILE, FINETUNE_ERROR):
                (run_dir / name).unlink(missing_ok=True)
            result = read_cell(cell, self.out_dir, with_curve=False)
        if result.status == "finished" and self._finetune_pending(result):
            return "todo"  # trained; its fine-tuning is still to do
        return result.status if result.status in ("finished", "failed") else "todo"

    def _refuse_if_in_flight(self, cell: Cell, run_dir: Path) -> None:
        """--rerun-changed never deletes the folder of a cell a cluster job still trains in
        (an executor that re-attaches to jobs, Slurm's, knows)."""
        attach = getattr(self.executor, "attach", None)
        handle = attach(run_dir) if attach is not None else None
        if handle is not None and handle.poll() is None:
            handle.detach()
            raise ExperimentError(
                f"cell {cell.id} is still running ({handle.where}); wait for it or stop it "
                "before --rerun-changed discards it"
            )

    def _finetune_pending(self, result: Any) -> bool:
        if not self.exp.finetune or result.error is not None:
            return False
        spec = self.exp.finetune
        return not has_results(result.downstream, spec["suite"], spec.get("tasks"))

    def _prepare_data(self, cells: list[Cell]) -> None:
        """Tokenize each distinct dataset once, here, rather than in several cells at once."""
        from budgetlm.train.run_data import resolve_data

        seen: set[str] = set()
        for cell in cells:
            cfg = self._config(cell)
            key = json.dumps([cfg.to_dict()["data"], cfg.to_dict()["model"]], sort_keys=True)
            if key not in seen:
                seen.add(key)
                try:
                    resolve_data(cfg, progress=self.progress)
                except Exception:  # noqa: BLE001 - the cell fails on its own and records why
                    continue

    def _run_control(self) -> str:
        """The random-init control, once every cell is done (compare/run/control.py)."""
        state = prepare_control(
            self.exp, self.out_dir, threads=self.threads, retry_failed=self.retry_failed
        )
        if state != "todo":
            return "skipped" if state == "finished" else state
        if self.progress:
            tqdm.write("fine-tuning the random-init control", file=sys.stderr)
        code = run_control_process(
            control_dir(self.out_dir),
            threads=self.threads,  # as a cell's fine-tuning: the same numbers whatever --jobs
            stop_requested=lambda: bool(self._stop_requests),
            poll_seconds=self.poll_seconds,
        )
        if code == 0:
            return "finished"
        return "interrupted" if code == EXIT_INTERRUPTED else "failed"

    # -- the grid ---------------------------------------------------------------------------
    def _add(
        self, cells: list[Cell], queue: list[Cell], known: set[Cell], outcome: GridOutcome
    ) -> None:
        """Prepare each new cell; queue it unless it is already finished or failed."""
        for cell in cells:
            if cell in known:
                continue
            known.add(cell)
            state = self._prepare_cell(cell)
            if state == "finished":
                outcome.skipped.append(cell)
            elif state == "failed":
                outcome.failed.append(cell)
            elif self.exp.is_tuning_cell(cell):
                # Tuning cells go first, extensions too: the sooner an LR is chosen, the
                # sooner its judged seeds can start.
                queue.insert(sum(map(self.exp.is_tuning_cell, queue)), cell)
            else:
                queue.append(cell)

    def _called_for(self) -> list[Cell]:
        """Cells the results on disk now call for: every tuning cell (a search whose cells
        finished with the best LR at an edge asks for one more LR) and the judged seeds of
        every chosen LR."""
        return [*planned_tuning_cells(self.exp, self.out_dir), *self._newly_judged()]

    def _run_grid(self) -> GridOutcome:
        outcome = GridOutcome()
        queue: list[Cell] = []
        known: set[Cell] = set()

        def add(cells: list[Cell]) -> None:
            self._add(cells, queue, known, outcome)

        add(self.exp.tuning_cells())
        add(self.exp.untuned_cells())
        add(self._called_for())
        if queue:
            self._prepare_data(queue)

        self._started = time.monotonic()
        running: list[_Running] = []
        # With a terminal: a bar. Without one (CI, nohup, a Slurm log): a line per event.
        self._lines = self.progress and not _is_terminal(sys.stderr)
        bar = tqdm(
            total=len(known),
            initial=len(outcome.skipped) + len(outcome.failed),
            unit="cell",
            disable=None if self.progress and not self._lines else True,
            dynamic_ncols=True,
            desc=f"compare {self.exp.name}",
            bar_format="{l_bar}{bar}| {n:.1f}/{total} cells [{elapsed}<{remaining}{postfix}]",
        )
        if self._lines:
            self._say(
                f"{len(known)} cells known now, {len(outcome.skipped)} finished before, "
                f"{len(queue)} to run on {self.executor.describe()}"
            )
        stopping_sent = False
        try:
            while (queue and not self._stop_requests) or running:
                if self._stop_requests and not stopping_sent:
                    queue.clear()  # nothing new starts; running cells checkpoint and exit
                    for r in running:
                        r.handle.stop()
                    stopping_sent = True
                while queue and not self._stop_requests and self._may_start(running):
                    r = self._launch(queue.pop(0))
                    running.append(r)
                    self._event("started", r, outcome, known, running, queue)
                time.sleep(self.poll_seconds)
                ended = [r for r in running if r.handle.poll() is not None]
                for r in ended:
                    running.remove(r)
                    self._collect(r, outcome)
                    self._event(self._state_of(r, outcome), r, outcome, known, running, queue)
                    add(self._called_for())
                if not ended and self._leave_running(running, queue):
                    # An executor that does not wait, and nothing more to do now: the cells
                    # go on without us; a re-run collects them.
                    for r in running:
                        r.handle.detach()
                    outcome.submitted = [r.cell for r in running]
                    outcome.queued = list(queue)
                    running.clear()
                    break
                done = len(outcome.finished) + len(outcome.skipped) + len(outcome.failed)
                live = sum(read_cell(r.cell, self.out_dir, False).progress for r in running)
                bar.total = len(known)
                bar.n = round(done + live, 2)
                where = "; ".join(dict.fromkeys(r.handle.where for r in running))
                bar.set_postfix_str(
                    f"{len(running)} running{f' ({where})' if where else ''}, "
                    f"{len(outcome.failed)} failed",
                    refresh=False,
                )
                bar.refresh()
        except KeyboardInterrupt:
            for r in running:
                r.handle.kill()
                r.handle.close()
                outcome.interrupted.append(r.cell)
            raise
        finally:
            bar.close()
        return outcome

    def _leave_running(self, running: list[_Running], queue: list[Cell]) -> bool:
        if self.executor.waits or self._stop_requests or not running:
            return False
        return not (queue and self._may_start(running))

    def _may_start(self, running: list[_Running]) -> bool:
        if self.jobs is not None and len(running) >= self.jobs:
            return False
        return self.executor.free_slots() > 0

    def _newly_judged(self) -> list[Cell]:
        cells: list[Cell] = []
        for judged in judged_cells(self.exp, self.out_dir).values():
            cells.extend(judged or [])
        return cells

    def _launch(self, cell: Cell) -> _Running:
        launch = CellLaunch(cell.id, self.out_dir / "cells" / cell.id, self.threads)
        return _Running(cell, self.executor.start(launch))

    def _collect(self, r: _Running, outcome: GridOutcome) -> None:
        code = r.handle.poll()
        r.handle.close()
        code = 1 if code is None else code
        result = read_cell(r.cell, self.out_dir, with_curve=False)
        state = result.status
        if state == "finished" and result.error is None:
            outcome.finished.append(r.cell)
        elif state == "finished":  # trained, but its fine-tuning failed
            outcome.failed.append(r.cell)
        elif code == EXIT_INTERRUPTED or (self._stop_requests and code != 0):
            outcome.interrupted.append(r.cell)
        else:
            if state != "failed":  # killed before it could write its own error (OOM, signal)
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                write_error(
                    self.out_dir / "cells" / r.cell.id,
                    RuntimeError(f"the cell ended with {how} on {r.handle.where}; see cell.log"),
                    user_error=False,
                )
            outcome.failed.append(r.cell)
            if self.progress and not self._lines:
                message = read_cell(r.cell, self.out_dir, False).error or {}
                tqdm.write(
                    f"cell {r.cell.id} failed: {message.get('type')}: {message.get('message')}",
                    file=sys.stderr,
                )

    # -- progress lines (stderr is no terminal) ---------------------------------------------
    @staticmethod
    def _state_of(r: _Running, outcome: GridOutcome) -> str:
        if r.cell in outcome.interrupted:
            return "stopped"
        return "failed" if r.cell in outcome.failed else "finished"

    def _event(
        self,
        what: str,
        r: _Running,
        outcome: GridOutcome,
        known: set[Cell],
        running: list[_Running],
        queue: list[Cell],
    ) -> None:
        """One line: what happened to which cell, where, and how far the grid is."""
        if not self._lines:
            return
        line = f"{what} {r.cell.id} on {r.handle.where}"
        if what != "started":
            line += f" after {_clock(time.monotonic() - r.started)}"
        if what == "failed":
            error = read_cell(r.cell, self.out_dir, False).error or {}
            message = " ".join(str(error.get("message")).split())  # one line, whatever it holds
            line += f": {error.get('type')}: {message}"
        done = len(outcome.finished) + len(outcome.skipped) + len(outcome.failed)
        self._say(f"{line} ({done}/{len(known)} done, {len(running)} running, {len(queue)} queued)")

    def _say(self, text: str) -> None:
        elapsed = _clock(time.monotonic() - self._started)
        print(f"compare {self.exp.name} [{elapsed}] {text}", file=sys.stderr, flush=True)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _clock(seconds: float) -> str:
    """H:MM:SS."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
