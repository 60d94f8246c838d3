"""Checkpoints: safetensors for tensors, JSON for everything else, never pickle.

A checkpoint is a directory `step_000123/` written as `step_000123.tmp/` and renamed into place
once complete; its last file is `manifest.json`, holding the sha256 of every other file. A
directory without a manifest is incomplete (a crash mid-write) and is ignored; a file whose hash
differs from the manifest is reported as corrupted.

Nested state (optimizer state dicts, method state, the clock) goes through one codec: tensors are
stored in a safetensors file and replaced by references, int dict keys and tuples are preserved,
so `torch.optim.Optimizer.load_state_dict` gets back exactly what `state_dict` gave.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from budgetlm.errors import UserError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, incomplete, corrupted or does not fit this run."""


# -- the tree codec -----------------------------------------------------------------------------


def encode_tree(obj: Any, tensors: dict[str, torch.Tensor], path: str = "t") -> Any:
    """JSON-able copy of `obj`; tensors move into `tensors` under unique keys."""
    if isinstance(obj, torch.Tensor):
        key = path if path not in tensors else f"{path}#{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: encode_tree(v, tensors, f"{path}.{k}") for k, v in obj.items()}}
        return {
            "__items__": [
                [encode_tree(k, tensors, f"{path}.k{i}"), encode_tree(v, tensors, f"{path}.{i}")]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {path}")


def decode_tree(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [decode_tree(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: decode_tree(v, tensors) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {decode_tree(k, tensors): decode_tree(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(decode_tree(v, tensors) for v in obj["__tuple__"])
        raise CheckpointError(f"unknown encoded node {sorted(obj)}")
    return obj


# -- writing ------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: Path, step: int, parts: Mapping[str, Any]) -> Path:
    """Write `parts` (name -> nested state) atomically as `directory/step_XXXXXX`."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:06d}"
    tmp = directory / f"step_{step:06d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {}
    for name, state in parts.items():
        tensors: dict[str, torch.Tensor] = {}
        tree = encode_tree(state, tensors, name)
        if tensors:
            save_file(tensors, tmp / f"{name}.safetensors")
            files[f"{name}.safetensors"] = None
        (tmp / f"{name}.json").write_text(json.dumps(tree))
        files[f"{name}.json"] = None
    manifest = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "files": {f: _sha256(tmp / f) for f in sorted(files)},
    }
    for f in files:
        with open(tmp / f, "rb+") as fh:
            os.fsync(fh.fileno())
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(directory)
    return final


# -- finding and reading ------------------------------------------------------------------------


def complete_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint directories with a manifest, oldest first (incomplete ones are ignored)."""
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if p.is_dir()
        and p.name.startswith("step_")
        and not p.name.endswith(".tmp")
        and (p / MANIFEST).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def verify_checkpoint(path: Path) -> dict:
    """Check every file against the manifest; return the manifest."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST}; the checkpoint is incomplete")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {manifest.get('format_version')}, "
            f"this budgetlm reads {FORMAT_VERSION}"
        )
    for name, digest in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: listed in the manifest but missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f}: checksum mismatch, the file is corrupted")
    return manifest


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Verify, then decode every part of a checkpoint (name -> nested state)."""
    manifest = verify_checkpoint(path)
    parts = {}
    for name in manifest["files"]:
        if not name.endswith(".json"):
            continue
        part = name[: -len(".json")]
        tensor_file = path / f"{part}.safetensors"
        tensors = load_file(tensor_file) if tensor_file.is_file() else {}
        parts[part] = decode_tree(json.loads((path / name).read_text()), tensors)
    return parts


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints, and stale temp directories."""
    for tmp in directory.glob("step_*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in complete_checkpoints(directory)[: -keep or None] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
