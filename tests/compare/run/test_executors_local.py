"""The local executor: GPUs shared out among cells, torchrun for a cell on several, the executor
options of the command line and of an experiment file, `compare --plan`, and the progress lines
a grid prints without a terminal.

GPUs are faked: the executor is told how many devices there are and starts fake processes that
record their command and environment, so the pool is checked without a GPU; one slow test runs
a real cell through torchrun on 2 CPU processes (gloo)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from budgetlm.cli import main
from budgetlm.cli.compare import executor_settings
from budgetlm.cli.main import build_parser
from budgetlm.compare.run.cell import GRID_PID_ENV, RANKS_EXIT_FILE
from budgetlm.compare.run.executors import ExecutorError, make_executor
from budgetlm.compare.run.executors import local as local_executor
from budgetlm.compare.run.executors.base import CellHandle, CellLaunch, Executor
from budgetlm.compare.run.executors.local import LocalExecutor, cell_command
from budgetlm.compare.run.experiment import Cell, ExperimentError
from budgetlm.compare.run.experiment_file import load_experiment
from budgetlm.compare.run.grid import GridRunner

from .test_grid import TUNING, experiment
from .test_grid_protocol import loss_at

ROOT = Path(__file__).resolve().parents[3]
PAUSE_HOOK = Path(__file__).resolve().with_name("pause_hook")


def protocol_experiment(tmp_path: Path, **extra) -> Path:
    """9 cells, none trained here: the baseline tuned (3 LRs, then up to 2 more), lion not."""
    raw = {
        "name": "pool",
        "base": str(ROOT / "configs" / "gpt-tiny.yaml"),
        "budgets": ["20steps"],
        "seeds": [1, 2],
        "tuning": {"max_extensions": 2},
        "arms": [{"name": "baseline"}, {"name": "lion", "optim": "lion", "tune": False}],
        **extra,
    }
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def plant_summary(run_dir: Path) -> None:
    """What a cell leaves when it finishes, with a loss that depends on its LR the way
    test_grid_protocol's does (so tuning asks for the same 9 cells)."""
    lr = yaml.safe_load((run_dir / "cell.yaml").read_text())["optim"]["lr"]
    summary = {"status": "finished", "steps": 20, "final_val_loss": loss_at(lr)}
    (run_dir / "summary.json").write_text(json.dumps(summary))


class FakeCells:
    """A stand-in for subprocess.Popen: each 'process' records its command and environment,
    stays alive for a set number of polls (the lifetimes, in turn), then writes its cell's
    summary.json (a planted loss) and exits 0. It checks, at every start, that the devices it
    was given are held by no live process."""

    LIFETIMES = (3, 1, 4, 2, 2, 5, 1, 3, 2, 1, 1, 2)

    def __init__(self) -> None:
        self.started: list[FakeProcess] = []
        self.most_at_once = 0

    def live(self) -> list[FakeProcess]:
        return [p for p in self.started if p.returncode is None]

    def __call__(self, argv, *, stdout, stderr, env, start_new_session):  # noqa: ANN001, ANN204
        assert start_new_session and stderr == subprocess.STDOUT and not stdout.closed
        process = FakeProcess(argv, env, self.LIFETIMES[len(self.started) % len(self.LIFETIMES)])
        for other in self.live():
            assert not set(other.devices) & set(process.devices), (other.devices, process.devices)
        self.started.append(process)
        self.most_at_once = max(self.most_at_once, len(self.live()))
        return process


class FakeProcess:
    def __init__(self, argv: list[str], env: dict[str, str], life: int) -> None:
        self.argv, self.env, self.life = argv, env, life
        self.devices = env.get("CUDA_VISIBLE_DEVICES", "").split(",")
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        if self.returncode is None:
            self.life -= 1
            if self.life <= 0:
                plant_summary(Path(self.argv[-1]))
                self.returncode = 0
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def kill(self) -> None:
        self.returncode = -9

    def wait(self) -> int:
        return self.returncode


class NoDataGrid(GridRunner):
    def _prepare_data(self, cells: list[Cell]) -> None:
        pass  # no cell trains here: nothing to tokenize


class GuardedExecutor(LocalExecutor):
    """A grid that waits forever for a slot (devices never given back) fails instead."""

    def free_slots(self) -> int:
        self.asked = getattr(self, "asked", 0) + 1
        assert self.asked < 100_000, "no slot came free: a device was never released?"
        return super().free_slots()


def test_gpu_cells_get_their_own_devices_through_torchrun_and_never_share_one(tmp_path):
    exp = load_experiment(protocol_experiment(tmp_path))
    fake = FakeCells()
    executor = GuardedExecutor(
        4, gpus="0,1,2,3", gpus_per_cell=2, device_count=4, popen=fake
    )  # --jobs 4, but 4 GPUs / 2 per cell: 2 at a time
    assert executor.describe() == (
        "local, GPUs 0,1,2,3, 2 per cell through torchrun: 2 cells at a time"
    )
    grid = NoDataGrid(exp, tmp_path / "out", executor=executor, poll_seconds=0, progress=False)
    outcome = grid.run()

    assert len(outcome.finished) == 9 and not outcome.failed
    assert len(fake.started) == 9 and fake.most_at_once == 2  # both pairs in use at once
    for process in fake.started:
        run_dir = process.argv[-1]
        assert process.argv == [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "budgetlm.compare.run.cell",
            run_dir,
        ]
        assert process.devices in (["0", "1"], ["2", "3"])
        assert process.env[GRID_PID_ENV] == str(os.getpid())
        assert process.env["OMP_NUM_THREADS"] == str(grid.threads)
        assert f"on cuda:{','.join(process.devices)}" in (Path(run_dir) / "cell.log").read_text()
    # Released when a cell ends: every device was used again by a later cell.
    assert {tuple(p.devices) for p in fake.started[2:]} == {("0", "1"), ("2", "3")}
    assert executor.free_slots() == 2


def test_one_gpu_per_cell_runs_each_cell_alone_on_its_gpu(tmp_path):
    exp = load_experiment(protocol_experiment(tmp_path))
    fake = FakeCells()
    executor = GuardedExecutor(None, gpus="all", device_count=3, popen=fake)  # as GPUs allow
    grid = NoDataGrid(exp, tmp_path / "out", executor=executor, poll_seconds=0, progress=False)
    assert len(grid.run().finished) == 9
    assert fake.most_at_once == 3 and executor.jobs == 3
    for process in fake.started:
        assert process.argv == cell_command(Path(process.argv[-1]))  # no torchrun
        assert len(process.devices) == 1 and GRID_PID_ENV not in process.env


def test_cuda_visible_devices_of_the_grid_are_what_is_shared_out(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    executor = LocalExecutor(2, gpus="1,3", popen=FakeCells())
    assert executor.devices == ["5", "7"]
    with pytest.raises(ExecutorError, match="no GPU 4 here"):
        LocalExecutor(2, gpus="0,4")


def test_without_gpus_nothing_changes(tmp_path):
    fake = FakeCells()
    executor = LocalExecutor(2, popen=fake)
    run_dir = tmp_path / "cells" / "a"
    run_dir.mkdir(parents=True)
    handle = executor.start(CellLaunch("a", run_dir, threads=3))
    (process,) = fake.started
    assert process.argv == [sys.executable, "-m", "budgetlm.compare.run.cell", str(run_dir)]
    assert process.env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
    assert process.env["OMP_NUM_THREADS"] == "3" and handle.where == "local"
    assert executor.free_slots() == 1
    handle.stop()
    assert process.signals == [15]  # SIGTERM: checkpoint and exit
    handle.kill()
    assert handle.poll() == -9
    handle.close()
    assert executor.free_slots() == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpus": "0,1", "gpus_per_cell": 4, "device_count": 4}, "--gpus-per-cell 4 but only 2"),
        ({"gpus": "all", "gpus_per_cell": 3, "device_count": 2}, "--gpus-per-cell 3 but only 2"),
        ({"gpus_per_cell": 2}, "needs --gpus"),
        ({"gpus": "0,5", "device_count": 4}, "no GPU 5 here"),
        ({"gpus": "all", "device_count": 0}, "no CUDA device"),
        ({"gpus": "0,0", "device_count": 4}, "distinct GPU indices"),
    ],
)
def test_a_cell_that_cannot_get_its_gpus_is_refused(kwargs, message):
    with pytest.raises(ExecutorError, match=message):
        LocalExecutor(2, **kwargs)


# -- the command line and the experiment file's executor: section -----------------------------


def parse(*argv: str):
    return build_parser().parse_args(["compare", *argv])


def test_executor_section_is_read_and_the_command_line_wins(tmp_path):
    path = protocol_experiment(
        tmp_path, executor={"name": "local", "jobs": 3, "gpus": [0, 1], "gpus_per_cell": 2}
    )
    exp = load_experiment(path)
    assert exp.executor == {"name": "local", "jobs": 3, "gpus": (0, 1), "gpus_per_cell": 2}
    assert executor_settings(parse(str(path)), exp) == (
        "local",
        3,
        {"gpus": (0, 1), "gpus_per_cell": 2},
    )
    args = parse(str(path), "--jobs", "1", "--gpus", "all", "--gpus-per-cell", "1")
    assert executor_settings(args, exp) == ("local", 1, {"gpus": "all", "gpus_per_cell": 1})
    # A file written for Slurm, run here: its Slurm options (and its jobs) are left out.
    slurm = protocol_experiment(
        tmp_path,
        executor={"name": "slurm", "jobs": 64, "partition": "gpu", "time_min": 30, "wait": False},
    )
    exp = load_experiment(slurm)
    assert executor_settings(parse(str(slurm)), exp) == (
        "slurm",
        64,
        {"partition": "gpu", "time_min": 30, "wait": False},
    )
    assert executor_settings(parse(str(slurm), "--executor", "local"), exp) == ("local", None, {})
    # No section: local, as before.
    plain = load_experiment(experiment(tmp_path, [{"name": "baseline"}]))
    assert plain.executor == {}
    assert executor_settings(parse("x.yaml"), plain) == ("local", None, {})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"partiton": "gpu"}, "did you mean 'executor.partition'"),
        ({"name": "slurn"}, "did you mean 'slurm'"),
        ({"name": "local", "partition": "gpu"}, "executor.partition is an option of the slurm"),
        ({"jobs": 0}, "executor.jobs: a whole number >= 1"),
        ({"gpus": "0,x"}, "executor.gpus"),
        ({"gpus_per_cell": 0.5}, "executor.gpus_per_cell: a whole number of GPUs"),
        ({"name": "slurm", "time_min": "soon"}, "executor.time_min"),
        ({"name": "slurm", "wait": "no"}, "executor.wait: true or false"),
        ({"name": "ray", "cpus_per_cell": -1}, "executor.cpus_per_cell: a number > 0"),
        ("local", "executor: must be a mapping"),
    ],
)
def test_a_bad_executor_section_is_refused_with_its_key(tmp_path, section, message):
    with pytest.raises(ExperimentError, match=message):
        load_experiment(protocol_experiment(tmp_path, executor=section))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--executor", "slurn"], "--executor: one of local, slurm, ray, got 'slurn'; did you"),
        (["--jobs", "0"], "--jobs: a whole number >= 1"),
        (["--jobs", "two"], "--jobs: a whole number >= 1"),
        (["--gpus", "0,0"], "--gpus: give distinct GPU indices"),
        (["--gpus", "first"], "--gpus: `all` or GPU indices"),
        (["--gpus-per-cell", "-1"], "--gpus-per-cell: a number >= 0"),
        (["--gpus-per-cell", "1.5"], "--gpus-per-cell: a whole number of GPUs"),
        (["--partition", "gpu"], "--partition is an option of the slurm executor, not of local"),
        (["--no-wait"], "--no-wait is an option of the slurm executor"),
        (["--executor", "slurm", "--time-min", "0"], "--time-min: a whole number >= 1"),
        (["--executor", "slurm", "--mem-gb", "lots"], "--mem-gb: a number"),
        (["--executor", "slurm", "--cluster", "k8s"], "--cluster: slurm or local"),
        (["--executor", "slurm", "--address", "x:1"], "--address is an option of the ray"),
        (["--gpus", "all", "--gpus-per-cell", "8"], "--gpus-per-cell 8 but only 2 GPUs"),
    ],
)
def test_a_bad_flag_is_one_line_and_exit_2_before_anything_is_written(
    tmp_path, capsys, monkeypatch, flags, message
):
    monkeypatch.setattr(local_executor, "_cuda_device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = tmp_path / "out"
    path = protocol_experiment(tmp_path)
    assert main(["compare", str(path), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize(("name", "package"), [("slurm", "submitit"), ("ray", "ray")])
def test_a_missing_extra_is_named(tmp_path, monkeypatch, name, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    with pytest.raises(ExecutorError, match=rf"pip install 'budgetlm\[{name}\]'"):
        make_executor(name, jobs=2, out_dir=tmp_path, options={})


def test_compare_help_does_not_import_torch():
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "budgetlm", "compare", "--help"],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a speed test
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--gpus-per-cell" in out.stdout and "--no-wait" in out.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()]
    assert "budgetlm.cli.main" in imported
    assert not [m for m in imported if m.split(".")[0] == "torch"]


# -- compare --plan ------------------------------------------------------------------------------


def test_plan_writes_every_known_cell_config_and_runs_nothing(tmp_path, capsys, monkeypatch):
    def no_process(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("--plan started a process")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    arms = [
        {"name": "baseline"},
        {"name": "lion", "optim": "lion", "set": {"optim.lr": 3e-4}, "tune": False},
    ]
    path = experiment(tmp_path, arms, tuning=TUNING)
    out = tmp_path / "out"
    assert main(["compare", str(path), "--out", str(out), "--plan", "--quiet"]) == 0
    printed = capsys.readouterr().out
    exp = load_experiment(path)
    tuning, untuned = exp.tuning_cells(), exp.untuned_cells()
    assert len(tuning) == 2 and len(untuned) == 2
    planned = sorted(p.parent.relative_to(out / "cells") for p in out.rglob("cell.yaml"))
    assert planned == sorted(Path(c.id) for c in [*tuning, *untuned])
    for cell in [*tuning, *untuned]:
        folder = out / "cells" / cell.id
        config = yaml.safe_load((folder / "cell.yaml").read_text())
        expected = exp.config_for(cell, out)
        assert config["run"]["dir"] == str(folder) and config["budget"] == "100steps"
        assert config["optim"]["lr"] == expected.optim.lr
        assert config["train"]["eval_split"] == ("tune" if cell in tuning else "test")
        assert sorted(p.name for p in folder.iterdir()) == ["cell.yaml"]  # nothing ran
        assert str(folder) in printed
    assert json.loads((out / "experiment.json").read_text())["name"] == exp.name
    lines = printed.splitlines()
    # Tuning cells first, each with its folder; then the command that runs one.
    tune_rows = [i for i, line in enumerate(lines) if " tune " in line]
    run_rows = [i for i, line in enumerate(lines) if line.startswith("  todo     run ")]
    assert len(tune_rows) == 2 and len(run_rows) == 2 and max(tune_rows) < min(run_rows)
    assert "  python -m budgetlm.compare.run.cell FOLDER" in lines
    assert "2 judged cells of tuned arms are not planned yet" in printed


# -- progress without a terminal ----------------------------------------------------------------


@pytest.mark.slow
def test_without_a_terminal_the_grid_prints_a_line_per_started_and_ended_cell(tmp_path, capsys):
    arms = [
        {"name": "baseline", "tune": False},
        {"name": "broken", "set": {"data.corpus": str(tmp_path / "missing.txt")}},
    ]
    raw = yaml.safe_load(experiment(tmp_path, arms, "lines").read_text())
    raw["seeds"], raw["budgets"] = [1], ["20steps"]
    path = tmp_path / "lines.yaml"
    path.write_text(yaml.safe_dump(raw))
    exp = load_experiment(path)
    grid = GridRunner(exp, tmp_path / "out", jobs=2, threads=1, poll_seconds=0.1)
    assert not sys.stderr.isatty()  # captured
    outcome = grid.run()
    assert [c.arm for c in outcome.finished] == ["baseline"]
    assert [c.arm for c in outcome.failed] == ["broken"]
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("compare lines [")]
    events = [line.split("] ", 1)[1] for line in lines]
    assert events[0] == "2 cells known now, 0 finished before, 2 to run on local, 2 cells at a time"
    assert sum(e.startswith("started baseline/20steps/seed1 on local (") for e in events) == 1
    assert sum(e.startswith("started broken/20steps/seed1 on local (") for e in events) == 1
    (finished,) = [e for e in events if e.startswith("finished ")]
    assert finished.startswith("finished baseline/20steps/seed1 on local after 0:")
    (failed,) = [e for e in events if e.startswith("failed ")]
    assert failed.startswith("failed broken/20steps/seed1 on local after 0:")
    assert "missing.txt" in failed
    assert events[-1].endswith("(2/2 done, 0 running, 0 queued)")
    assert "\r" not in err and "cells [" not in err  # no bar


def test_with_a_terminal_the_bar_says_where_cells_run(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    exp = load_experiment(protocol_experiment(tmp_path))
    executor = LocalExecutor(2, gpus="all", device_count=2, popen=FakeCells())
    NoDataGrid(exp, tmp_path / "out", executor=executor, poll_seconds=0).run()
    text = terminal.getvalue()
    assert "running (cuda:0; cuda:1)" in text or "running (cuda:1; cuda:0)" in text
    assert "started " not in text  # no lines: the bar


# -- executors that do not wait; stop requests and a second Ctrl-C ------------------------------


class ScriptedHandle(CellHandle):
    def __init__(self, run_dir: Path, events: list[str], life: int) -> None:
        self.run_dir, self.events, self.life, self.code = run_dir, events, life, None
        self.where = f"node{len(events)}"
        self.interrupt_at: int | None = None  # a second Ctrl-C arrives during this poll

    def poll(self) -> int | None:
        if self.interrupt_at is not None:
            self.interrupt_at -= 1
            if self.interrupt_at == 0:
                raise KeyboardInterrupt
        if self.code is None:
            self.life -= 1
            if self.life <= 0:
                plant_summary(self.run_dir)
                self.code = 0
        return self.code

    def stop(self) -> None:
        self.events.append(f"stop {self.run_dir.name}")
        self.code = 130

    def kill(self) -> None:
        self.events.append(f"kill {self.run_dir.name}")
        self.code = -9

    def close(self) -> None:
        self.events.append(f"close {self.run_dir.name}")

    def detach(self) -> None:
        self.events.append(f"detach {self.run_dir.name}")


class ScriptedExecutor(Executor):
    """Cells 'run' for `life` polls. `cluster` outlives the executor, as a cluster's queue
    outlives the grid process that submitted to it: with waits=False a cell goes on after
    the grid returned, and a later grid's start of a cell still in flight re-attaches to it."""

    name = "scripted"

    def __init__(
        self, slots: int, life: int = 2, waits: bool = True, cluster: dict | None = None
    ) -> None:
        self.slots, self.life, self.waits = slots, life, waits
        self.events: list[str] = []
        self.cluster: dict[Path, ScriptedHandle] = {} if cluster is None else cluster
        self.attached: list[ScriptedHandle] = []
        self.closed = 0

    def free_slots(self) -> int:
        return self.slots - sum(h.code is None for h in self.attached)

    def start(self, launch: CellLaunch) -> CellHandle:
        handle = self.cluster.get(launch.run_dir)
        if handle is not None and handle.code is None:
            self.events.append(f"attach {launch.cell_id}")
        else:
            self.events.append(f"start {launch.cell_id}")
            handle = ScriptedHandle(launch.run_dir, self.events, self.life)
            self.cluster[launch.run_dir] = handle
        handle.events = self.events
        self.attached.append(handle)
        return handle

    def close(self) -> None:
        self.closed += 1


def test_an_executor_that_does_not_wait_submits_a_wave_and_a_rerun_collects_it(tmp_path):
    exp = load_experiment(protocol_experiment(tmp_path))
    out = tmp_path / "out"
    executor = ScriptedExecutor(slots=4, life=10**9, waits=False)
    first = NoDataGrid(exp, out, executor=executor, poll_seconds=0, progress=False).run()
    # The first grid of 3 tuning cells and 1 of lion's fill the 4 slots; nothing has ended.
    assert len(first.submitted) == 4 and len(first.queued) == 1 and first.control == "none"
    assert [e.split()[0] for e in executor.events] == ["start"] * 4 + ["detach"] * 4
    assert executor.closed == 1 and not list(out.rglob("summary.json"))
    runs = 1
    outcome = first
    while outcome.submitted or outcome.queued:
        for handle in executor.cluster.values():
            handle.life = min(handle.life, 1)  # what was in flight finishes meanwhile
        executor = ScriptedExecutor(4, life=10**9, waits=False, cluster=executor.cluster)
        grid = NoDataGrid(exp, out, executor=executor, poll_seconds=0, progress=False)
        outcome = grid.run()
        runs += 1
        # Each re-run first re-attaches to what the last one left in flight, starting nothing
        # of it twice.
        attached = [e.split()[1] for e in executor.events if e.startswith("attach")]
        assert len(attached) == len(set(attached)) and attached
        assert runs < 10
    assert runs >= 3 and outcome.control == "none"
    assert len(list(out.rglob("summary.json"))) == 9 == len(executor.cluster)


def test_a_stop_request_asks_every_running_cell_and_starts_no_more(tmp_path):
    exp = load_experiment(protocol_experiment(tmp_path))
    executor = ScriptedExecutor(slots=2, life=10**9)
    grid = NoDataGrid(exp, tmp_path / "out", executor=executor, poll_seconds=0, progress=False)
    original = executor.start

    def start_then_stop(launch: CellLaunch) -> CellHandle:
        handle = original(launch)
        if len(executor.attached) == 2:
            grid._stop_requests = 1  # a first Ctrl-C
        return handle

    executor.start = start_then_stop
    outcome = grid.run()
    assert len(outcome.interrupted) == 2 and outcome.stopped and outcome.control == "none"
    assert [e.split()[0] for e in executor.events] == ["start"] * 2 + ["stop"] * 2 + ["close"] * 2
    assert executor.closed == 1


def test_a_second_ctrl_c_kills_every_running_cell(tmp_path):
    exp = load_experiment(protocol_experiment(tmp_path))
    executor = ScriptedExecutor(slots=2, life=10**9)
    grid = NoDataGrid(exp, tmp_path / "out", executor=executor, poll_seconds=0, progress=False)
    original = executor.start

    def start(launch: CellLaunch) -> CellHandle:
        handle = original(launch)
        if len(executor.attached) == 2:
            handle.interrupt_at = 3  # the grid's third poll of this cell
        return handle

    executor.start = start
    with pytest.raises(KeyboardInterrupt):
        grid.run()
    assert [e.split()[0] for e in executor.events[:2]] == ["start"] * 2
    assert sorted(e.split()[0] for e in executor.events[2:]) == ["close"] * 2 + ["kill"] * 2
    assert executor.closed == 1


# -- a real cell on 2 processes through torchrun (CPU, gloo) ------------------------------------


def wait_for(condition, what: str, timeout: float = 900) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout  # a hang guard, not a speed test
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_cell_on_two_ranks_stops_with_a_checkpoint_and_resumes(tmp_path, monkeypatch):
    from budgetlm.config import dump_yaml

    from ...train.helpers import tiny_config

    run_dir = tmp_path / "cells" / "a"
    run_dir.mkdir(parents=True)
    cfg = tiny_config(
        "gpt",
        run_dir,
        "budget=8steps",
        "train.threads=1",
        "train.eval_every=0.5",
        "train.checkpoint_every=0.25",
        f"run.out_dir={tmp_path}",
    )
    (run_dir / "cell.yaml").write_text(dump_yaml(cfg))
    # Rank 0 pauses after its first checkpoint until it is asked to stop (pause_hook/).
    paused = tmp_path / "paused"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PAUSE_HOOK), str(ROOT)]))
    monkeypatch.setenv("BUDGETLM_TEST_PAUSE_AT", str(run_dir / "checkpoints"))
    monkeypatch.setenv("BUDGETLM_TEST_PAUSE_MARKER", str(paused))
    # 2 "GPUs" on a machine without any: CUDA_VISIBLE_DEVICES names devices torch cannot
    # see, so the ranks train on the CPU, through torchrun exactly as on GPUs.
    executor = LocalExecutor(1, gpus="all", gpus_per_cell=2, device_count=2)
    launch = CellLaunch("a", run_dir, threads=1)

    handle = executor.start(launch)
    assert handle.where == "cuda:0,1"
    wait_for(lambda: paused.exists() or handle.poll() is not None, "the first checkpoint")
    assert handle.poll() is None, (run_dir / "cell.log").read_text()[-3000:]
    handle.stop()
    wait_for(lambda: handle.poll() is not None, "the stopped cell")
    log = (run_dir / "cell.log").read_text()
    assert handle.poll() == 130, log[-3000:]  # rank 0's own code, not torchrun's 1
    assert (run_dir / RANKS_EXIT_FILE).read_text().strip() == "130"
    assert not (run_dir / "summary.json").exists()
    handle.close()
    assert executor.free_slots() == 1

    handle = executor.start(launch)
    wait_for(lambda: handle.poll() is not None, "the resumed cell")
    log = (run_dir / "cell.log").read_text()
    assert handle.poll() == 0, log[-3000:]
    handle.close()
    summary = json.loads((run_dir / "summary.json").read_text())
    meta = json.loads((run_dir / "meta.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 8
    assert len(meta["attempts"]) == 2 and meta["attempts"][1]["resumed_from"]
    assert [a["parallel"] for a in meta["attempts"]] == [{"mode": "ddp", "world": 2}] * 2
    assert (run_dir / "shape.json").is_file() and not (run_dir / "error.json").exists()
