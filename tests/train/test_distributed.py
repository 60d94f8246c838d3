"""Data-parallel training through torchrun on CPU (gloo, 2 processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from budgetlm.config import dump_yaml
from budgetlm.train.checkpoint import complete_checkpoints, load_checkpoint
from budgetlm.train.distributed import Dist, DistributedConfigError, check_supported

from .helpers import tiny_config

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, run_dir: Path, *overrides: str) -> Path:
    cfg = tiny_config(
        "gpt",
        run_dir,
        "budget=8steps",
        "train.log_every=1",
        "train.eval_every=0.5",
        "train.checkpoint_every=0.5",
        "train.threads=1",
        *overrides,
    )
    path.write_text(dump_yaml(cfg))
    return path


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # timeout: a hang guard, not a speed test
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def one_and_two_ranks(tmp_path: Path, *overrides: str) -> dict[int, Path]:
    """The same config trained on 1 and on 2 ranks: {nproc: run directory}."""
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        out.mkdir()
        config = write_config(out / "cfg.yaml", out / "run", *overrides)
        torchrun(nproc, "-m", "budgetlm", "train", str(config), "--quiet")
        runs[nproc] = out / "run"
    return runs


def train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "train"]


def eval_records(run_dir: Path) -> list[tuple[float, int]]:
    """(held-out loss, target tokens) of every evaluation."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["val_loss"], r["val_tokens"]) for r in records if r["event"] == "eval"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(complete_checkpoints(run_dir / "checkpoints")[-1])["model"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> Path:
    """The reference: the same config on one process (global batch 8)."""
    tmp = tmp_path_factory.mktemp("one")
    config = write_config(tmp / "cfg.yaml", tmp / "run")
    torchrun(1, "-m", "budgetlm", "train", str(config), "--quiet")
    return tmp / "run"


@pytest.mark.slow
def test_two_ddp_ranks_match_one_rank(one_rank, tmp_path):
    config = write_config(tmp_path / "cfg.yaml", tmp_path / "run")
    torchrun(2, "-m", "budgetlm", "train", str(config), "--quiet")  # 4 sequences per rank
    assert train_losses(tmp_path / "run") == pytest.approx(train_losses(one_rank), rel=1e-5)
    ours, reference = final_weights(tmp_path / "run"), final_weights(one_rank)
    for name, tensor in reference.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-4, atol=1e-5)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["attempts"][0]["parallel"] == {"mode": "ddp", "world": 2}
    # Each rank scored half of the held-out batches; the sums give the one-rank figures.
    ours, reference = eval_records(tmp_path / "run"), eval_records(one_rank)
    assert [t for _, t in ours] == [t for _, t in reference]
    assert [v for v, _ in ours] == pytest.approx([v for v, _ in reference], rel=1e-6)


@pytest.mark.slow
def test_ddp_checkpoint_resumes_on_one_rank(one_rank, tmp_path):
    config = write_config(tmp_path / "cfg.yaml", tmp_path / "run")
    torchrun(2, "-m", "budgetlm", "train", str(config), "--quiet", "--stop-after", "3")
    assert not (tmp_path / "run" / "summary.json").exists()
    torchrun(1, "-m", "budgetlm", "train", str(config), "--quiet", "--resume", "auto")
    assert train_losses(tmp_path / "run") == pytest.approx(train_losses(one_rank), rel=1e-5)


@pytest.mark.slow
def test_fsdp2_trains_checkpoints_and_resumes(one_rank, tmp_path):
    config = write_config(tmp_path / "cfg.yaml", tmp_path / "run", "train.parallel=fsdp")
    torchrun(2, "-m", "budgetlm", "train", str(config), "--quiet", "--stop-after", "3")
    checkpoint = complete_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert json.loads((checkpoint / "trainer.json").read_text())  # a full, consolidated state
    torchrun(2, "-m", "budgetlm", "train", str(config), "--quiet", "--resume", "auto")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 8
    assert train_losses(tmp_path / "run") == pytest.approx(train_losses(one_rank), rel=1e-5)


@pytest.mark.slow
def test_layer_drop_and_the_stop_step_are_identical_on_every_rank(tmp_path):
    config = write_config(
        tmp_path / "cfg.yaml",
        tmp_path / "run",
        "method=layer_drop",
        "model.n_layers=4",
        "budget=3s",  # wall clock: each rank measures its own time; they must still agree
        "train.checkpoint_every=0",
        "train.eval_every=0",
    )
    # Planted wall clocks (not this machine's, whose load would decide the step count): rank 1's
    # steps take longer, and the ranks agree on the slower one (MAX), 0.3 s: 10 steps of 3 s.
    torchrun(2, str(WORKER), str(config), str(tmp_path), "--step-seconds", "0.2,0.3")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["status"] == ranks[1]["status"] == "finished"
    assert ranks[0]["steps"] == ranks[1]["steps"] == 10
    assert ranks[0]["spent"] == ranks[1]["spent"]  # every unit, wall seconds included
    assert ranks[0]["spent"]["seconds"] == pytest.approx(3.0)
    assert ranks[0]["active"] == ranks[1]["active"]
    dropped = [a for a in ranks[0]["active"].values() if a and len(a["decoder"]) < 4]
    assert dropped, "layer drop never dropped a layer: the comparison would prove nothing"


def test_what_is_not_supported_is_refused():
    two = Dist(rank=0, world=2, mode="ddp")
    check_supported(two, ["selective_backprop"], "adamw", 8)  # DDP: shared selection
    check_supported(two, [], "sophia", 8)  # DDP: every rank computes the same Hessian
    with pytest.raises(DistributedConfigError, match="not divisible"):
        check_supported(two, [], "adamw", 7)
    fsdp = Dist(rank=0, world=2, mode="fsdp")
    with pytest.raises(DistributedConfigError, match="muon"):
        check_supported(fsdp, [], "muon", 8)
    with pytest.raises(DistributedConfigError, match="sophia"):
        check_supported(fsdp, [], "sophia", 8)
    with pytest.raises(DistributedConfigError, match="rho_loss"):
        check_supported(fsdp, ["rho_loss"], "adamw", 8)
    check_supported(Dist(), ["selective_backprop"], "sophia", 7)  # one process: anything goes
    check_supported(two, ["layer_drop", "layer_stacking"], "lion", 8)


def test_nproc_launches_torchrun_with_the_other_arguments(monkeypatch):
    from budgetlm import cli

    seen = {}
    monkeypatch.setattr(subprocess, "call", lambda cmd: seen.setdefault("cmd", cmd) and 0)
    cli.main(["train", "cfg.yaml", "optim.lr=1e-3", "--nproc", "2", "--quiet"])
    cmd = seen["cmd"]
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:] == ["-m", "budgetlm", "train", "cfg.yaml", "optim.lr=1e-3", "--quiet"]


@pytest.mark.slow
def test_layer_stacking_rewraps_ddp_when_the_model_grows(tmp_path):
    """Stacking adds blocks mid-run: DDP is rebuilt around the new parameters and the two ranks
    still match one rank step for step."""
    stacking = ("method=layer_stacking", "model.n_layers=4", "budget=12steps")
    runs = one_and_two_ranks(tmp_path, *stacking)
    assert len(final_weights(runs[2])) == len(final_weights(runs[1]))
    assert train_losses(runs[2]) == pytest.approx(train_losses(runs[1]), rel=1e-5)
    summary = json.loads((runs[2] / "summary.json").read_text())
    assert summary["methods"]["layer_stacking"]["stage"] == 2  # it stacked twice, 1 -> 2 -> 4


@pytest.mark.slow
def test_sophia_on_two_ddp_ranks_matches_one_rank(tmp_path):
    """Each rank estimates the Hessian on the same examples: no divergence between ranks."""
    sophia = ("optim.name=sophia", "optim.lr=1e-3", "optim.options.hessian_interval=2")
    runs = one_and_two_ranks(tmp_path, *sophia)
    # Sophia's clipped sign update turns reduction-order noise into slightly larger differences
    # than AdamW's (1.1e-5 seen); a diverging rank would be off by orders of magnitude more.
    assert train_losses(runs[2]) == pytest.approx(train_losses(runs[1]), rel=5e-5)
    summary = json.loads((runs[2] / "summary.json").read_text())
    assert summary["methods"]["sophia_hessian"]["hessian_refreshes"] == 4


@pytest.mark.parametrize("rows", [7, 8])
def test_each_rank_takes_a_share_and_the_shares_tile_the_rows(rows):
    shares = [Dist(rank=r, world=3, mode="ddp").share(rows) for r in range(3)]
    assert [s.start for s in shares] == [0, shares[0].stop, shares[1].stop]
    assert shares[-1].stop == rows
    assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["selective_backprop", "rho_loss"])
def test_selection_methods_on_two_ddp_ranks_match_one_rank(method, tmp_path):
    """Each rank forwards half of the candidates; the gathered losses give every rank the same
    selection, of which each trains on its half: the run is the one-rank run."""
    extra = [f"method={method}", "budget=6steps"]
    if method == "rho_loss":
        from budgetlm.config import load_config
        from budgetlm.train.irreducible import prepare_il_table

        table = tmp_path / "il"
        extra += [f"methods.rho_loss.table={table}", "methods.rho_loss.il.budget=2steps"]
        config = write_config(tmp_path / "il.yaml", tmp_path / "il-run", *extra)
        prepare_il_table(load_config(str(config)), progress=False)
    runs = one_and_two_ranks(tmp_path, *extra)
    assert train_losses(runs[2]) == pytest.approx(train_losses(runs[1]), rel=1e-5)
    one, two = (json.loads((runs[n] / "summary.json").read_text()) for n in (1, 2))
    stats = [
        {k: v for k, v in s["methods"][method].items() if isinstance(v, float)} for s in (one, two)
    ]
    assert stats[0] and stats[1] == pytest.approx(stats[0], rel=1e-5)  # keep rates, mean losses
    assert two["spent_by_purpose"] == one["spent_by_purpose"]  # the global work, charged once


def test_on_main_runs_on_rank_0_only_and_reraises_its_error():
    from budgetlm.train.distributed import Dist

    cpu = torch.device("cpu")
    assert Dist().on_main(lambda: 5, cpu, "count") == 5
    calls = []
    assert Dist(rank=1, world=1).on_main(lambda: calls.append(1), cpu, "count") is None
    assert calls == []  # not rank 0: fn never runs

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        Dist().on_main(fail, cpu, "write the checkpoint")
