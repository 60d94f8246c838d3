import pytest
import torch

from budgetlm.train.checkpoint import (
    CheckpointError,
    complete_checkpoints,
    decode_tree,
    encode_tree,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    unsynced_checkpoints,
)


def _optimizer_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return opt.state_dict()


def test_tree_codec_preserves_int_keys_tuples_and_tensors():
    state = _optimizer_state()
    tensors = {}
    back = decode_tree(encode_tree(state, tensors), tensors)
    assert set(back["state"]) == set(state["state"])  # int keys survive
    assert back["param_groups"][0]["betas"] == (0.9, 0.98)
    for k, v in state["state"][0].items():
        assert torch.equal(back["state"][0][k], v)


def test_save_load_roundtrip(tmp_path):
    parts = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "trainer": {"step": 7, "x": [1.5]}}
    path = save_checkpoint(tmp_path, 7, parts)
    assert path.name == "step_000007" and (path / "manifest.json").is_file()
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], parts["model"]["w"])
    assert loaded["trainer"] == {"step": 7, "x": [1.5]}


def test_checkpoints_are_synced_unless_asked_and_nothing_else_changes(tmp_path, monkeypatch):
    import os

    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    save_checkpoint(tmp_path, 1, {"a": {"x": torch.ones(2)}})
    assert synced  # the files, the manifest and the folders
    synced.clear()
    with unsynced_checkpoints():
        path = save_checkpoint(tmp_path, 2, {"a": {"x": torch.ones(2)}})
        os.fsync(0)  # anything else still syncs: only checkpoint writes are left unsynced
    assert synced == [0]
    assert torch.equal(load_checkpoint(path)["a"]["x"], torch.ones(2))
    save_checkpoint(tmp_path, 3, {"a": {"x": 1}})
    assert len(synced) > 1  # synced again once the block ends


def test_incomplete_checkpoint_is_ignored(tmp_path):
    save_checkpoint(tmp_path, 1, {"a": {"x": 1}})
    newer = save_checkpoint(tmp_path, 2, {"a": {"x": 2}})
    (newer / "manifest.json").unlink()  # as if the process died before the manifest
    (tmp_path / "step_000003.tmp").mkdir()  # and a write that never finished
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_000001"]


def test_flipped_byte_is_detected(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(64)}})
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupted"):
        load_checkpoint(path)


def test_prune_keeps_newest(tmp_path):
    for step in range(5):
        save_checkpoint(tmp_path, step, {"a": {"x": step}})
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_000003", "step_000004"]
