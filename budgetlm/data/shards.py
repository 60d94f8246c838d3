"""Token shards: one flat array of token ids per file, with a header that lets us refuse bad data.

Format (all integers little-endian), version 1::

    offset  size  field
    0       8     magic b"BLMTOK\\x00\\x01"
    8       4     format version (uint32) = 1
    12      4     dtype code (uint32): 2 = uint16 (vocab <= 65536), 4 = uint32
    16      8     vocab_size (uint64): every token id is < vocab_size
    24      8     token count (uint64)
    32      32    sha256 of the payload bytes
    64      ...   payload: token count ids of the dtype, nothing after it

The 64-byte header keeps the payload aligned, so it is memory-mapped directly. Reading checks
the magic, version, length, checksum and (optionally) that the vocabulary matches the tokenizer
in use, so a truncated download, a flipped bit or a shard from another tokenizer fails loudly
instead of training on garbage. Writing is atomic (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from types import TracebackType

import numpy as np

from budgetlm.errors import UserError

MAGIC = b"BLMTOK\x00\x01"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQQ32s")
HEADER_SIZE = _HEADER.size  # 64
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


class ShardError(UserError, ValueError):
    """A token shard is missing, malformed, corrupted or does not fit the tokenizer."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest supported dtype that holds ids ``0 .. vocab_size - 1``."""
    if vocab_size <= 0 or vocab_size > 2**32:
        raise ValueError(f"vocab_size must be in [1, 2**32], got {vocab_size}")
    return _DTYPES[2] if vocab_size <= 2**16 else _DTYPES[4]


class ShardWriter:
    """Stream tokens into a shard without holding them all in memory.

    Use as a context manager; the shard appears at ``path`` only when the block exits cleanly.
    """

    def __init__(self, path: str | os.PathLike, vocab_size: int):
        self.path = Path(path)
        self.vocab_size = int(vocab_size)
        self.dtype = dtype_for_vocab(self.vocab_size)
        self.count = 0
        self._sha = hashlib.sha256()
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._file = None

    def __enter__(self) -> ShardWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp, "wb")
        self._file.write(b"\0" * HEADER_SIZE)  # filled in on close, once count and hash are known
        return self

    def write(self, tokens: np.ndarray | list[int]) -> None:
        arr = np.asarray(tokens)
        if arr.size == 0:
            return
        if arr.dtype.kind not in "iu":
            raise ShardError(f"{self.path}: token ids must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = hi if hi >= self.vocab_size else lo
            raise ShardError(
                f"{self.path}: token id {bad} is outside the vocabulary [0, {self.vocab_size})"
            )
        data = np.ascontiguousarray(arr.reshape(-1), dtype=self.dtype).tobytes()
        self._sha.update(data)
        self._file.write(data)
        self.count += arr.size

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        f, self._file = self._file, None
        try:
            if exc_type is None:
                header = _HEADER.pack(
                    MAGIC,
                    FORMAT_VERSION,
                    self.dtype.itemsize,
                    self.vocab_size,
                    self.count,
                    self._sha.digest(),
                )
                f.seek(0)
                f.write(header)
                f.flush()
                os.fsync(f.fileno())
        finally:
            f.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def write_shard(path: str | os.PathLike, tokens: np.ndarray, vocab_size: int) -> None:
    """Write ``tokens`` (any integer array, flattened) as a shard at ``path``, atomically."""
    with ShardWriter(path, vocab_size) as writer:
        writer.write(tokens)


def read_header(path: str | os.PathLike) -> dict:
    """Parse and check a shard's header; return its fields (no payload check)."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: no such shard file")
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE or raw[:8] != MAGIC:
        raise ShardError(f"{path}: not a budgetlm token shard (bad magic bytes or too short)")
    _, version, code, vocab_size, count, sha = _HEADER.unpack(raw)
    if version != FORMAT_VERSION:
        raise ShardError(
            f"{path}: unsupported shard format version {version} (this budgetlm reads "
            f"version {FORMAT_VERSION}); delete the dataset folder and prepare it again"
        )
    if code not in _DTYPES:
        raise ShardError(f"{path}: unknown dtype code {code} in header")
    return {
        "version": version,
        "dtype": _DTYPES[code],
        "vocab_size": vocab_size,
        "count": count,
        "sha256": sha.hex(),
    }


def read_shard(
    path: str | os.PathLike, *, expected_vocab_size: int | None = None, verify: bool = True
) -> np.ndarray:
    """Memory-map a shard's tokens read-only, after checking it is whole and fits the vocab.

    ``verify`` hashes the whole payload (about 1 GB/s); turn it off only for files just checked.
    """
    path = Path(path)
    head = read_header(path)
    dtype, count = head["dtype"], head["count"]
    expected = HEADER_SIZE + count * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise ShardError(
            f"{path}: truncated: header says {count} tokens ({expected} bytes) but the file has "
            f"{actual} bytes"
        )
    if actual > expected:
        raise ShardError(f"{path}: {actual - expected} unexpected bytes after the payload")
    if expected_vocab_size is not None and head["vocab_size"] != expected_vocab_size:
        raise ShardError(
            f"{path}: vocab size mismatch: shard was written for a vocabulary of "
            f"{head['vocab_size']} tokens, the tokenizer has {expected_vocab_size}"
        )
    if count == 0:
        # np.memmap cannot map zero bytes; an empty read-only array behaves the same.
        empty = np.empty(0, dtype=dtype)
        empty.flags.writeable = False
        return empty
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(count,))
    if verify:
        digest = hashlib.sha256()
        step = 1 << 24  # hash in 16M-token slices so huge shards need no extra memory
        for start in range(0, count, step):
            digest.update(tokens[start : start + step])
        if digest.hexdigest() != head["sha256"]:
            raise ShardError(
                f"{path}: checksum mismatch: the payload is corrupted (sha256 differs from the "
                "header); `budgetlm prepare` verifies the dataset and rebuilds it"
            )
    return tokens
