"""Run an experiment's grid of cells, each in its own process, resumably, `jobs` at a time.

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
import fcntl
import json
import os
import shutil
import signal
import subprocess
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
from budgetlm.compare.run.experiment import Cell, Experiment, ExperimentError
from budgetlm.config import Config, dump_yaml, resume_drift
from budgetlm.finetune.store import has_results

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
    # The random-init control (with `finetune:`): none, finished, skipped, failed, interrupted.
    control: str = "none"

    @property
    def stopped(self) -> bool:
        return bool(self.interrupted) or self.control == "interrupted"


@dataclass
class _Running:
    cell: Cell
    process: subprocess.Popen
    log: Any


class GridRunner:
    def __init__(
        self,
        exp: Experiment,
        out_dir: Path,
        *,
        jobs: int = 1,
        threads: int | None = None,
        progress: bool = True,
        retry_failed: bool = False,
        rerun_changed: bool = False,
        poll_seconds: float = 0.5,
    ) -> None:
        if jobs < 1:
            raise ExperimentError("--jobs must be at least 1")
        self.exp, self.out_dir, self.jobs = exp, Path(out_dir), jobs
        self.threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        self.progress, self.retry_failed, self.rerun_changed = progress, retry_failed, rerun_changed
        self.poll_seconds = poll_seconds
        self._stop_requests = 0

    # -- public -----------------------------------------------------------------------------
    def run(self) -> GridOutcome:
        from budgetlm.compare.run.shapes import check_rst_coverage

        # Before anything is written: a shape the RST table cannot price fails its cells.
        check_rst_coverage(self.exp, progress=self.progress)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self._exclusive(), self._signals():
            self._write_experiment()
            outcome = self._run_grid()
            if not self._stop_requests:
                outcome.control = self._run_control()
            return outcome

    # -- setup ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with open(self.out_dir / LOCK_FILE, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise GridBusy(
                    f"another `budgetlm compare` is running on {self.out_dir}; wait for it or "
                    "use another --out folder"
                ) from e
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

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

        running: list[_Running] = []
        bar = tqdm(
            total=len(known),
            initial=len(outcome.skipped) + len(outcome.failed),
            unit="cell",
            disable=None if self.progress else True,
            dynamic_ncols=True,
            desc=f"compare {self.exp.name}",
            bar_format="{l_bar}{bar}| {n:.1f}/{total} cells [{elapsed}<{remaining}{postfix}]",
        )
        stopping_sent = False
        try:
            while (queue and not self._stop_requests) or running:
                if self._stop_requests and not stopping_sent:
                    queue.clear()  # nothing new starts; running cells checkpoint and exit
                    for r in running:
                        with contextlib.suppress(ProcessLookupError):
                            r.process.send_signal(signal.SIGTERM)
                    stopping_sent = True
                while queue and len(running) < self.jobs and not self._stop_requests:
                    running.append(self._launch(queue.pop(0)))
                time.sleep(self.poll_seconds)
                for r in [r for r in running if r.process.poll() is not None]:
                    running.remove(r)
                    self._collect(r, outcome)
                    add(self._called_for())
                done = len(outcome.finished) + len(outcome.skipped) + len(outcome.failed)
                live = sum(read_cell(r.cell, self.out_dir, False).progress for r in running)
                bar.total = len(known)
                bar.n = round(done + live, 2)
                bar.set_postfix_str(
                    f"{len(running)} running, {len(outcome.failed)} failed", refresh=False
                )
                bar.refresh()
        except KeyboardInterrupt:
            for r in running:
                with contextlib.suppress(ProcessLookupError):
                    r.process.kill()
                r.process.wait()
                outcome.interrupted.append(r.cell)
            raise
        finally:
            bar.close()
        return outcome

    def _newly_judged(self) -> list[Cell]:
        cells: list[Cell] = []
        for judged in judged_cells(self.exp, self.out_dir).values():
            cells.extend(judged or [])
        return cells

    def _launch(self, cell: Cell) -> _Running:
        run_dir = self.out_dir / "cells" / cell.id
        log = open(run_dir / "cell.log", "a")  # noqa: SIM115 - closed when the cell ends
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} cell {cell.id}\n")
        log.flush()
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
            "PYTHONUNBUFFERED": "1",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "budgetlm.compare.run.cell", str(run_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own session: a Ctrl-C reaches the grid, which asks each cell to stop once.
            start_new_session=True,
        )
        return _Running(cell, process, log)

    def _collect(self, r: _Running, outcome: GridOutcome) -> None:
        r.log.close()
        code = r.process.returncode
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
                    RuntimeError(f"the cell process ended with {how}; see cell.log"),
                    user_error=False,
                )
            outcome.failed.append(r.cell)
            if self.progress:
                message = read_cell(r.cell, self.out_dir, False).error or {}
                tqdm.write(
                    f"cell {r.cell.id} failed: {message.get('type')}: {message.get('message')}",
                    file=sys.stderr,
                )
