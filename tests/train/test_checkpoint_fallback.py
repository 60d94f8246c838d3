"""`--resume auto` falls back past broken checkpoints; a run folder with history is never
started from scratch without `--restart`; pruning keeps the newest checkpoint that verifies.

The runs are in this process, on one thread (bit-exactness must not depend on how many threads
a busy machine gives the process); the uninterrupted run and the one stopped at step 7 are made
once for the module and copied for each case."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from budgetlm.cli import main
from budgetlm.train.checkpoint import (
    checkpoint_dirs,
    complete_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from budgetlm.train.metrics import read_metrics

from .helpers import resume_run_args


def _args(run_dir, *extra):
    """test_resume's GPT run (12 steps, a checkpoint every 3), through `budgetlm train`."""
    return ["train", "--quiet", *resume_run_args("gpt", run_dir, *extra)]


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """(uninterrupted run, a run stopped after step 7 with checkpoints at steps 3, 6 and 7)."""
    base = tmp_path_factory.mktemp("fallback")
    straight, stopped = base / "straight", base / "stopped"
    assert main(_args(straight)) == 0
    assert main(_args(stopped, "--stop-after", "7")) == 0
    names = [p.name for p in checkpoint_dirs(stopped / "checkpoints")]
    assert names == ["step_000003", "step_000006", "step_000007"]
    return straight, stopped


def _copy(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def _final(run_dir):
    last = complete_checkpoints(run_dir / "checkpoints")[-1]
    assert last.name == "step_000012"
    return load_file(last / "model.safetensors"), load_file(last / "optimizer.safetensors")


def _curve(run_dir):
    """Training and held-out records without wall-clock fields."""
    return [
        (m["event"], m["step"], m.get("loss"), m.get("val_loss"), m.get("lr"), m.get("tokens"))
        for m in read_metrics(run_dir / "metrics.jsonl")
        if m["event"] in ("train", "eval")
    ]


def _assert_same_run(a, b):
    (wa, oa), (wb, ob) = _final(a), _final(b)
    assert wa.keys() == wb.keys() and oa.keys() == ob.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k
    assert _curve(a) == _curve(b)


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# (what is done to which checkpoint, what the warning says, the checkpoint resumed from)
BREAKAGES = {
    "flipped_byte": ([("step_000007", "flip")], ["checksum mismatch"], "step_000006"),
    "truncated": ([("step_000007", "truncate")], ["checksum mismatch"], "step_000006"),
    "no_manifest": ([("step_000007", "manifest")], ["no manifest.json"], "step_000006"),
    "two_broken": (
        [("step_000007", "flip"), ("step_000006", "manifest")],
        ["checksum mismatch", "no manifest.json"],
        "step_000003",
    ),
}


def _break(run, how):
    for name, what in how:
        folder = run / "checkpoints" / name
        if what == "flip":
            _flip(folder / "model.safetensors")
        elif what == "truncate":
            _truncate(folder / "model.safetensors")
        else:
            (folder / "manifest.json").unlink()


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_resume_auto_falls_back_to_the_newest_checkpoint_that_verifies(
    case, runs, tmp_path, capsys
):
    straight, stopped = runs
    run = _copy(stopped, tmp_path)
    how, reasons, resumed_from = BREAKAGES[case]
    _break(run, how)
    capsys.readouterr()
    assert main(_args(run, "--resume", "auto")) == 0
    err = capsys.readouterr().err
    # Each skipped checkpoint is named with what is wrong with it: printed, logged, summarised.
    warnings = json.loads((run / "summary.json").read_text())["warnings"]
    logged = [m["message"] for m in read_metrics(run / "metrics.jsonl") if m["event"] == "warning"]
    for (name, _), reason in zip(how, reasons, strict=True):
        for text in (err, "\n".join(warnings), "\n".join(logged)):
            assert f"skipped a checkpoint that does not verify: {run}/checkpoints/{name}" in text
            assert reason in text
            assert f"resumed from {resumed_from}" in text
    meta = json.loads((run / "meta.json").read_text())
    assert meta["attempts"][-1]["resumed_from"].endswith(resumed_from)
    # ... and the finished run is the uninterrupted one, bit for bit.
    _assert_same_run(straight, run)


@pytest.mark.parametrize("gone", ["checkpoints_deleted", "manifests_deleted"])
def test_history_without_a_usable_checkpoint_is_refused_then_restart_moves_it_aside(
    gone, runs, tmp_path, capsys
):
    straight, stopped = runs
    run = _copy(stopped, tmp_path)
    if gone == "checkpoints_deleted":
        shutil.rmtree(run / "checkpoints")
    else:
        for folder in checkpoint_dirs(run / "checkpoints"):
            (folder / "manifest.json").unlink()
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    metrics = (run / "metrics.jsonl").read_bytes()
    assert metrics.count(b"\n") > 7  # records up to step 7

    capsys.readouterr()
    assert main(_args(run)) == 2  # a plain start
    err = capsys.readouterr().err
    assert "already holds a run (metrics.jsonl with" in err
    assert "--resume auto" in err and "--restart" in err
    assert main(_args(run, "--resume", "auto")) == 2
    err = capsys.readouterr().err
    assert "no checkpoint that verifies" in err
    assert "--restart" in err and "--resume CHECKPOINT" in err
    if gone == "manifests_deleted":
        for name in ("step_000003", "step_000006", "step_000007"):
            assert f"{name}: no manifest.json" in err
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing deleted, nothing cut back, nothing written

    assert main(_args(run, "--restart")) == 0
    err = capsys.readouterr().err
    (previous,) = (run / "previous").iterdir()
    assert f"--restart: the previous run's files are in {previous}" in err
    assert (previous / "metrics.jsonl").read_bytes() == metrics
    if gone == "manifests_deleted":
        assert [p.name for p in checkpoint_dirs(previous / "checkpoints")] == [
            "step_000003",
            "step_000006",
            "step_000007",
        ]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["attempts"][-1]["previous_run_moved_to"] == str(previous)
    _assert_same_run(straight, run)  # a fresh start is the uninterrupted run


def test_restart_and_resume_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(_args(tmp_path / "run", "--restart", "--resume", "auto"))
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_failing_first_train_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "x"
    assert main(_args(run, "data.corpus=/nonexistent")) == 2
    assert "unknown corpus" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # A setting refused once the folder is locked: the folders made for it go too.
    assert main(_args(run, "method=layer_stacking+layer_drop")) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- pruning ------------------------------------------------------------------------------------


def test_pruning_counts_only_checkpoints_that_verify(tmp_path):
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.full((64,), float(step))}})
    _flip(tmp_path / "step_000004" / "model.safetensors")
    (tmp_path / "step_000003" / "manifest.json").unlink()
    prune_checkpoints(tmp_path, keep=1)
    # step 2 is the newest that verifies: kept; the broken newer ones are not counted (nor
    # deleted: they are older than no good one); step 1 goes.
    assert [p.name for p in checkpoint_dirs(tmp_path)] == [
        "step_000002",
        "step_000003",
        "step_000004",
    ]
    assert torch.equal(
        load_checkpoint(tmp_path / "step_000002")["model"]["w"], torch.full((64,), 2.0)
    )
    save_checkpoint(tmp_path, 5, {"model": {"w": torch.ones(64)}})
    prune_checkpoints(tmp_path, keep=1)  # now step 5 is the newest good one
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_000005"]


def test_loading_a_runs_model_falls_back_past_a_corrupt_newest_checkpoint(runs, tmp_path, capsys):
    # finetune, export, generate and eval load a run's model through load_run_model: a
    # corrupt newest checkpoint must not make them fail, nor be loaded.
    from budgetlm.train.checkpoint import CheckpointError, load_checkpoint
    from budgetlm.train.saved_run import load_run_model

    run = _copy(runs[1], tmp_path)
    _break(run, [("step_000007", "flip")])
    loaded = load_run_model(run)
    assert loaded.checkpoint.name == "step_000006"
    assert "checksum mismatch" in capsys.readouterr().err
    expected = load_checkpoint(run / "checkpoints" / "step_000006")["model"]
    state = loaded.model.state_dict()
    assert set(expected) <= set(state)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
    for name in ("step_000006", "step_000003"):
        (run / "checkpoints" / name / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint that verifies"):
        load_run_model(run)
