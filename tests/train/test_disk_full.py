"""A full disk (or quota, or read-only file system) is a StorageError, exit 5, with the space
needed and free; the previous checkpoint stays intact and loadable, no half-written checkpoint
folder or torn metrics line is left, and the run continues once there is room again."""

import errno
import json
import os

import pytest
import torch

from budgetlm.cli import main
from budgetlm.errors import EXIT_STORAGE, StorageError
from budgetlm.train import checkpoint as ckpt
from budgetlm.train.checkpoint import (
    checkpoint_dirs,
    load_checkpoint,
    partial_checkpoints,
    save_checkpoint,
)
from budgetlm.train.metrics import MetricsLog, read_metrics, truncate_after

from .helpers import tiny_overrides


def _train(run_dir, *extra):
    # Checkpoints at steps 2 and 4 (and at a stop).
    return [
        "train",
        "--quiet",
        *tiny_overrides("gpt", run_dir),
        "budget=4steps",
        "train.checkpoint_every=0.5",
        "train.keep_checkpoints=2",
        *extra,
    ]


def _no_space(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _half_written_then_full(tensors, path, *args, **kwargs):
    """safetensors' save_file on a disk that fills up halfway through the file."""
    with open(path, "wb") as f:
        f.write(b"\0" * 1000)
    raise _no_space(path)


def _records_are_whole_and_unique(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # no torn line
    keys = [(r["event"], r["step"]) for r in records if r["event"] in ("train", "eval")]
    assert len(keys) == len(set(keys))  # no record twice
    return records


def test_a_full_disk_while_checkpointing_is_exit_5_and_keeps_the_previous_one(
    tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    assert main(_train(run, "--stop-after", "2")) == 0
    previous = run / "checkpoints" / "step_000002"
    before = load_checkpoint(previous)
    size = ckpt.checkpoint_bytes(previous)
    capsys.readouterr()

    monkeypatch.setattr(ckpt, "save_file", _half_written_then_full)
    assert main(_train(run, "--resume", "auto")) == EXIT_STORAGE
    err = capsys.readouterr().err
    assert f"cannot write checkpoint {run}/checkpoints/step_000004: No space left on device" in err
    assert "it needs about" in err and "free on that disk" in err
    assert "Traceback" not in err
    number, unit = err.split("it needs about ")[1].split(";")[0].split()
    needed = float(number.replace(",", "")) * {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    assert needed >= size * 0.95  # at least what the previous checkpoint took (rounded)
    assert [p.name for p in checkpoint_dirs(run / "checkpoints")] == ["step_000002"]
    assert partial_checkpoints(run / "checkpoints") == []  # its own temporary folder is gone
    after = load_checkpoint(previous)  # intact: verifies and loads
    assert after["model"].keys() == before["model"].keys()
    assert all(torch.equal(after["model"][k], v) for k, v in before["model"].items())
    assert not (run / "summary.json").exists()

    monkeypatch.undo()  # room again: the run continues from step 2 and finishes
    assert main(_train(run, "--resume", "auto")) == 0
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert [p.name for p in checkpoint_dirs(run / "checkpoints")] == ["step_000002", "step_000004"]
    _records_are_whole_and_unique(run)


def test_a_save_killed_midway_leaves_no_folder_after_the_next_start(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train(run, "--stop-after", "2")) == 0
    # What a process killed (SIGKILL, power loss) while writing step 3 leaves behind.
    tmp = run / "checkpoints" / "step_000003.tmp"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"\0" * 100)
    capsys.readouterr()
    assert main(_train(run, "--resume", "auto")) == 0
    assert f"removed {tmp}: a checkpoint save that never finished" in capsys.readouterr().err
    assert partial_checkpoints(run / "checkpoints") == []


def test_a_full_disk_while_logging_is_exit_5_without_a_torn_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(_train(run, "--stop-after", "2")) == 0
    capsys.readouterr()
    append = MetricsLog._append
    calls = []

    def fills_up(self, data):
        calls.append(data)
        if len(calls) < 2:
            return append(self, data)
        append(self, data[: len(data) // 2])  # half the line reached the disk
        raise _no_space(self.path)

    monkeypatch.setattr(MetricsLog, "_append", fills_up)
    assert main(_train(run, "--resume", "auto")) == EXIT_STORAGE
    err = capsys.readouterr().err
    assert f"cannot write a record to {run}/metrics.jsonl: No space left on device" in err
    assert "Traceback" not in err
    records = _records_are_whole_and_unique(run)
    assert records[-1] == json.loads(calls[0])  # the last whole record is the last line
    load_checkpoint(run / "checkpoints" / "step_000002")

    monkeypatch.undo()
    assert main(_train(run, "--resume", "auto")) == 0
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    _records_are_whole_and_unique(run)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_storage_errors_say_what_was_needed_and_clean_up(code, tmp_path, monkeypatch):
    first = save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(1000)}})

    def fails(tensors, path, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(ckpt, "save_file", fails)
    with pytest.raises(StorageError) as info:
        save_checkpoint(tmp_path, 2, {"model": {"w": torch.ones(2000)}})
    assert info.value.exit_code == EXIT_STORAGE
    message = str(info.value)
    assert f"cannot write checkpoint {tmp_path}/step_000002: {os.strerror(code)}" in message
    assert "it needs about 8.0 kB" in message  # 2000 float32: more than the previous one
    assert "free on that disk" in message
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_000001"]
    assert partial_checkpoints(tmp_path) == []
    assert torch.equal(load_checkpoint(first)["model"]["w"], torch.ones(1000))


def test_other_write_errors_are_not_storage_errors_but_still_clean_up(tmp_path, monkeypatch):
    def fails(tensors, path, *args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(ckpt, "save_file", fails)
    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path, 2, {"model": {"w": torch.ones(2)}})
    assert not isinstance(info.value, StorageError)
    assert partial_checkpoints(tmp_path) == [] and checkpoint_dirs(tmp_path) == []


def test_truncating_the_log_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "train", "step": 1}\n{"event": "train", "step": 2}\n{"event": "tr')
    truncate_after(path, 5)
    assert read_metrics(path) == [{"event": "train", "step": 1}, {"event": "train", "step": 2}]
