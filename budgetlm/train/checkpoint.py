"""Checkpoints: safetensors for tensors, JSON for everything else, never pickle.

A checkpoint is a directory `step_000123/` written as `step_000123.tmp/` and renamed into place
once complete; its last file is `manifest.json`, holding the sha256 of every other file. A
directory without a manifest is incomplete (a crash mid-write); a file whose hash differs from
the manifest is corrupted. `--resume auto` (resume.py) takes the newest checkpoint that
verifies and names each one it skipped; pruning counts only checkpoints that verify, so it never
deletes the newest good one. A save that finds the disk full (or over quota, or read-only)
removes its temporary folder and raises `StorageError` with the space it needed and the space
free; the previous checkpoint is untouched. Temporary folders of a save that was killed are
removed when the run next starts (`remove_partial`).

Nested state (optimizer state dicts, method state, the clock) goes through one codec: tensors are
stored in a safetensors file and replaced by references, int dict keys and tuples are preserved,
so `torch.optim.Optimizer.load_state_dict` gets back exactly what `state_dict` gave.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from budgetlm.errors import StorageError, UserError

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


# -- a full disk ----------------------------------------------------------------------------------

# The write failures that retrying cannot fix until someone frees space or remounts.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} bytes"


def free_space(path: Path) -> int | None:
    """Bytes free on the file system of `path` (or its nearest existing parent)."""
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(p).free
    return None


def storage_error(error: OSError, path: Path, what: str, needed: int | None = None) -> StorageError:
    """A StorageError for a failed write: the path, why, the space needed and the space free."""
    free = free_space(path)
    parts = [f"cannot write {what} {path}: {error.strerror or error}"]
    if needed is not None:
        parts.append(f"it needs about {_size(needed)}")
    if free is not None:
        parts.append(f"{_size(free)} free on that disk")
    return StorageError("; ".join(parts))


@contextlib.contextmanager
def storage_guard(path: Path, what: str, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk, an exceeded quota or a read-only file system into a StorageError."""
    try:
        yield
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise storage_error(e, path, what, needed) from e
        raise


def _tree_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested state (what a checkpoint of it writes, roughly)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tree_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tree_bytes(v) for v in obj)
    return 0


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


# -- writing ------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Checkpoints are synced to disk before their manifest names them complete. Only a caller whose
# checkpoints are thrown away (the conformance suite, which stops and resumes runs at many
# steps) turns that off, for checkpoint writes alone (`unsynced_checkpoints`).
_SYNC = True


@contextlib.contextmanager
def unsynced_checkpoints() -> Iterator[None]:
    """Inside: checkpoints are written without fsync (no durability against a power cut)."""
    global _SYNC
    before, _SYNC = _SYNC, False
    try:
        yield
    finally:
        _SYNC = before


def _fsync(fd: int) -> None:
    if _SYNC:
        os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: Path, step: int, parts: Mapping[str, Any]) -> Path:
    """Write `parts` (name -> nested state) atomically as `directory/step_XXXXXX`.

    On any failure the temporary folder is removed; a full disk (or quota, or read-only file
    system) is a StorageError saying how much the checkpoint needs and how much is free."""
    final = directory / f"step_{step:06d}"
    tmp = directory / f"step_{step:06d}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_parts(tmp, step, parts)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            previous = complete_checkpoints(directory)
            needed = max(_tree_bytes(parts), checkpoint_bytes(previous[-1]) if previous else 0)
            raise storage_error(e, final, "checkpoint", needed) from e
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(directory)
    return final


def _write_parts(tmp: Path, step: int, parts: Mapping[str, Any]) -> None:
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
            _fsync(fh.fileno())
    with open(tmp / MANIFEST, "w") as fh:
        fh.write(json.dumps(manifest, indent=1))
        fh.flush()
        _fsync(fh.fileno())
    _fsync_dir(tmp)


# -- finding and reading ------------------------------------------------------------------------


def checkpoint_dirs(directory: Path) -> list[Path]:
    """Every checkpoint directory, complete or not, oldest first (not the temporary ones)."""
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if p.is_dir() and p.name.startswith("step_") and not p.name.endswith(".tmp")
    ]
    return sorted(found, key=lambda p: p.name)


def complete_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint directories with a manifest, oldest first (incomplete ones are ignored)."""
    return [p for p in checkpoint_dirs(directory) if (p / MANIFEST).is_file()]


def partial_checkpoints(directory: Path) -> list[Path]:
    """Temporary folders of saves that never finished (the process died mid-write)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("step_*.tmp") if p.is_dir())


def remove_partial(directory: Path) -> list[Path]:
    """Remove the half-written temporary folders of interrupted saves; return them. Only
    under the run lock: another process's save in progress looks just the same."""
    found = partial_checkpoints(directory)
    for tmp in found:
        shutil.rmtree(tmp, ignore_errors=True)
    return found


def verify_checkpoint(path: Path) -> dict:
    """Check every file against the manifest; return the manifest (CheckpointError if not)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST}; the checkpoint is incomplete")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({e})") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {manifest.get('format_version')}, "
            f"this budgetlm reads {FORMAT_VERSION}"
        )
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: listed in the manifest but missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f}: checksum mismatch, the file is corrupted")
    return manifest


def is_valid(path: Path) -> bool:
    try:
        verify_checkpoint(path)
    except (CheckpointError, OSError):
        return False
    return True


def newest_valid(directory: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint in `directory` that verifies, and what is wrong with each newer
    one (what `finetune`, `export` and `grow` fall back past, as `--resume auto` does)."""
    problems: list[str] = []
    for path in reversed(checkpoint_dirs(directory)):
        try:
            verify_checkpoint(path)
        except (CheckpointError, OSError) as e:
            problems.append(str(e))
            continue
        return path, problems
    return None, problems


def newest_to_load(run_dir: Path) -> Path:
    """The checkpoint `finetune`, `export`, `eval`, `generate` and `grow` read from a run
    folder: the newest that verifies, each newer broken one named in a warning on stderr;
    CheckpointError when none verifies."""
    newest, problems = newest_valid(run_dir / "checkpoints")
    if newest is None:
        why = f" ({'; '.join(problems)})" if problems else ""
        raise CheckpointError(f"{run_dir}: no checkpoint that verifies{why}")
    for problem in problems:
        print(f"warning: skipped a checkpoint that does not verify: {problem}", file=sys.stderr)
    return newest


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
    """Keep the newest `keep` checkpoints that verify (0: all); delete every checkpoint older
    than the oldest of them, and stale temporary folders. Checkpoints that do not verify do not
    count, so the newest good one always stays (a broken one newer than it stays too, until it
    is older than `keep` good ones). Verifying reads the kept checkpoints again after each save:
    checkpoint I/O is not charged to the budget, and a cached verdict could miss a corruption."""
    remove_partial(directory)
    if keep <= 0:
        return
    found = checkpoint_dirs(directory)
    good = 0
    for i in range(len(found) - 1, -1, -1):
        if is_valid(found[i]):
            good += 1
            if good == keep:
                for old in found[:i]:
                    shutil.rmtree(old, ignore_errors=True)
                return
