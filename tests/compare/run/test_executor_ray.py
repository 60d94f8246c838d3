"""The Ray executor on a real local Ray runtime (one for the module): cells are real tiny runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from budgetlm.cli import main
from budgetlm.compare.run.executors.base import CellLaunch
from budgetlm.compare.run.experiment_file import load_experiment
from budgetlm.compare.run.grid import GridRunner
from budgetlm.errors import EXIT_FAILED, EXIT_INTERRUPTED, UserError
from budgetlm.train.checkpoint import complete_checkpoints

ray = pytest.importorskip("ray", reason="the Ray executor needs ray: pip install 'budgetlm[ray]'")

from budgetlm.compare.run.executors.ray import RayExecutor, check_shared_out_dir  # noqa: E402

from .tiny_grid import (  # noqa: E402
    ARMS,
    paused_env,
    small_gpt,
    summary_table,
    wait_for,
)

SMALL_GPT = small_gpt()


def experiment_file(folder: Path) -> Path:
    raw = {
        "name": "ray",
        "config": SMALL_GPT,
        "budgets": ["40steps"],
        "seeds": [1, 2],
        "arms": ARMS,
    }
    path = folder / "ray.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def final_loss(run_dir: Path) -> float:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    return summary["final_val_loss"]


@pytest.fixture(scope="module")
def ray_runtime():
    # A short folder of its own: Ray's socket paths must stay under 107 characters, and other
    # Ray sessions on this machine (in /tmp/ray) are none of this test's business.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def executor(out: Path, jobs: int = 2) -> RayExecutor:
    return RayExecutor(address=None, jobs=jobs, gpus_per_cell=0, cpus_per_cell=1, out_dir=out)


class Grid:
    """What the grid does before it starts a cell: the experiment's record, the cell's config."""

    def __init__(self, folder: Path, out: Path) -> None:
        self.exp = load_experiment(experiment_file(folder))
        self.runner = GridRunner(self.exp, out, jobs=2, threads=1, progress=False)
        out.mkdir(parents=True, exist_ok=True)
        self.runner._write_experiment()
        self.out = out

    def launch(self, cell_id: str, **env: str) -> CellLaunch:
        (cell,) = [c for c in self.exp.untuned_cells() if c.id == cell_id]
        assert self.runner._prepare_cell(cell) == "todo"
        return CellLaunch(cell_id, self.out / "cells" / cell_id, threads=1, env=env)


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory) -> Path:
    """The same grid run by `budgetlm compare` with local processes."""
    folder = tmp_path_factory.mktemp("local")
    out = folder / "out"
    command = ["compare", str(experiment_file(folder)), "--out", str(out)]
    assert main([*command, "--jobs", "2", "--threads", "1", "--quiet"]) == 0
    return out


@pytest.mark.slow
def test_a_grid_on_ray_gives_the_cells_and_report_of_local_processes(
    ray_runtime, local_grid, tmp_path
):
    out = tmp_path / "out"
    grid = Grid(tmp_path, out)
    ex = executor(out)
    assert "1 node" in ex.describe() and "up to 2 cells" in ex.describe()
    stopped_cell, paused = "lion/40steps/seed1", tmp_path / "paused"
    try:
        # One cell is stopped after its first checkpoint (as by Ctrl-C), then the grid runs.
        env = paused_env(out / "cells" / stopped_cell, paused)
        stopped = ex.start(grid.launch(stopped_cell, **env))
        wait_for(paused.exists, "the stopped cell's first checkpoint")
        wait_for(lambda: not stopped.where.startswith("ray ("), "the stopped cell's node")
        stopped.stop()
        stopped.stop()  # idempotent
        wait_for(lambda: stopped.poll() is not None, "the stopped cell to end")
        assert stopped.poll() == EXIT_INTERRUPTED
        stopped.close()
        for name in ("summary.json", "error.json"):
            assert not (out / "cells" / stopped_cell / name).exists()
    finally:
        ex.close()
    assert ray.is_initialized()  # a runtime the executor did not start is left running
    # The whole grid through the command line (it joins the runtime this process runs): the
    # stopped cell resumes, the others run.
    command = ["compare", str(tmp_path / "ray.yaml"), "--out", str(out), "--executor", "ray"]
    flags = ["--jobs", "2", "--cpus-per-cell", "1", "--gpus-per-cell", "0", "--threads", "1"]
    assert main([*command, *flags, "--quiet"]) == 0
    assert ray.is_initialized()
    cells = [c.id for c in grid.exp.untuned_cells()]
    attempts = json.loads((out / "cells" / stopped_cell / "meta.json").read_text())["attempts"]
    assert len(attempts) == 2 and attempts[1]["resumed_from"]  # resumed from its checkpoint
    for cell in cells:  # the same numbers, the stopped and resumed cell's too
        assert final_loss(out / "cells" / cell) == final_loss(local_grid / "cells" / cell)
        assert f"cell {cell} on " in (out / "cells" / cell / "cell.log").read_text()
    assert summary_table(out) == summary_table(local_grid)


@pytest.mark.slow
def test_a_dead_worker_fails_only_its_cell_and_a_killed_cell_resumes(
    ray_runtime, local_grid, tmp_path
):
    out = tmp_path / "out"
    grid = Grid(tmp_path, out)
    doomed, other = "baseline/40steps/seed1", "baseline/40steps/seed2"
    ex = executor(out)
    try:
        handles = {
            cell: ex.start(grid.launch(cell, **paused_env(out / "cells" / cell, tmp_path / name)))
            for cell, name in ((doomed, "doomed"), (other, "other"))
        }
        assert ex.free_slots() == 0
        victim, killed = handles[doomed], handles[other]
        for cell, name in ((doomed, "doomed"), (other, "other")):
            wait_for((tmp_path / name).exists, f"the first checkpoint of {cell}")
            wait_for(lambda h=handles[cell]: not h.where.startswith("ray ("), f"{cell}'s node")
        assert victim.where != "local"
        os.kill(ray.get(victim._actor.pid.remote()), signal.SIGKILL)  # its worker dies
        wait_for(lambda: victim.poll() is not None, "the dead worker's cell to end")
        assert victim.poll() == EXIT_FAILED and killed.poll() is None  # only that cell
        killed.kill()  # as by a second Ctrl-C: its last checkpoint is what remains
        wait_for(lambda: killed.poll() is not None, "the killed cell to end")
        assert killed.poll() == -signal.SIGKILL
        victim.close()
        killed.close()
        assert ex.free_slots() == 2
        again = ex.start(grid.launch(other))  # no pause this time
        wait_for(lambda: again.poll() is not None, "the killed cell to finish")
        assert again.poll() == 0
    finally:
        ex.close()
    error = json.loads((out / "cells" / doomed / "error.json").read_text())
    assert "Ray worker" in error["message"] and "died" in error["message"]
    # Orphaned, its process stopped by itself with a checkpoint, before the failure was written.
    assert complete_checkpoints(out / "cells" / doomed / "checkpoints")
    assert not (out / "cells" / doomed / "summary.json").exists()
    attempts = json.loads((out / "cells" / other / "meta.json").read_text())["attempts"]
    assert len(attempts) == 2 and attempts[1]["resumed_from"]
    assert final_loss(out / "cells" / other) == final_loss(local_grid / "cells" / other)


def test_a_cluster_refuses_cell_folders_other_nodes_cannot_see(monkeypatch, tmp_path):
    # No runtime needed: the executor joins the "initialised" one and asks it for its nodes.
    nodes = [{"Alive": alive, "Resources": {"CPU": 4.0}} for alive in (True, True, False)]
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    for out, why in [
        (Path("runs/grid"), "relative"),
        (Path("/tmp/grid"), "/tmp"),
        (Path("/dev/shm/grid"), "/dev/shm"),
        (tmp_path / "scratch" / "grid", str(tmp_path / "scratch")),
    ]:
        with pytest.raises(UserError, match="2 nodes") as refused:
            executor(out)
        assert why in str(refused.value) and "every node" in str(refused.value)
    shared = executor(Path("/nfs/experiments/grid"))
    assert shared.nodes == 2
    shared.close()  # it started nothing, so it stops nothing
    nodes[1]["Alive"] = False  # one node: a local folder is fine
    executor(tmp_path / "out").close()
    check_shared_out_dir(Path("relative"), nodes=1)


def test_a_cell_still_waiting_for_resources_stops_at_once(ray_runtime, tmp_path):
    # 4 CPUs per cell on a 2-CPU runtime: Ray never places it. Stopping must not wait for it.
    out = tmp_path / "out"
    grid = Grid(tmp_path, out)
    ex = RayExecutor(address=None, jobs=2, gpus_per_cell=0, cpus_per_cell=4, out_dir=out)
    try:
        waiting = ex.start(grid.launch("baseline/40steps/seed1"))
        assert waiting.poll() is None and waiting.where == "ray (waiting for resources)"
        assert ex.free_slots() == 1
        waiting.stop()
        wait_for(lambda: waiting.poll() is not None, "the stopped cell")
        assert waiting.poll() == EXIT_INTERRUPTED and ex.free_slots() == 2
        waiting.close()
    finally:
        ex.close()
    assert not (out / "cells" / "baseline/40steps/seed1" / "metrics.jsonl").exists()
    assert not (out / "cells" / "baseline/40steps/seed1" / "error.json").exists()


def test_a_runtime_started_here_refuses_cells_no_node_fits_and_is_shut_down(monkeypatch, tmp_path):
    # As if ray.init started a one-node runtime in this process (faked: no second runtime).
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(calls) and calls[-1] == "init")
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append("init"))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    monkeypatch.setattr(ray._private.worker, "_global_node", SimpleNamespace(head=True))
    with pytest.raises(UserError, match="1 GPUs one cell asks for") as refused:
        RayExecutor(address=None, jobs=1, gpus_per_cell=1, cpus_per_cell=1, out_dir=tmp_path)
    assert "--gpus-per-cell" in str(refused.value)
    assert calls == ["init", "shutdown"]  # what it started, it stopped
    fits = RayExecutor(address=None, jobs=1, gpus_per_cell=0, cpus_per_cell=2, out_dir=tmp_path)
    fits.close()
    # Not given: a GPU each where the cluster has GPUs, none on a CPU-only one.
    cpus_only = RayExecutor(
        address=None, jobs=1, gpus_per_cell=None, cpus_per_cell=1, out_dir=tmp_path
    )
    assert cpus_only.gpus_per_cell == 0 and cpus_only._env(CellLaunch("c", tmp_path, 1)) == {
        **{k: v for k, v in os.environ.items() if k.startswith(("BUDGETLM_", "HF_"))},
        "CUDA_VISIBLE_DEVICES": "",
    }
    cpus_only.close()
    assert calls == ["init", "shutdown"] * 3


def test_no_cluster_at_the_address_is_a_one_line_error(monkeypatch, tmp_path):
    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.\nmore")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(UserError, match="Ray cluster at auto: Could not find any running Ray"):
        RayExecutor(address="auto", jobs=1, gpus_per_cell=0, cpus_per_cell=1, out_dir=tmp_path)
