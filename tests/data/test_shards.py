"""Token shards: round trip, and every documented failure names the file and the problem."""

from __future__ import annotations

import numpy as np
import pytest

from budgetlm.data.shards import (
    HEADER_SIZE,
    ShardError,
    ShardWriter,
    read_header,
    read_shard,
    write_shard,
)


@pytest.fixture()
def shard(tmp_path):
    path = tmp_path / "train.bin"
    tokens = np.random.default_rng(0).integers(0, 1000, size=5000)
    write_shard(path, tokens, vocab_size=1000)
    return path, tokens


def test_roundtrip_is_a_read_only_memmap(shard):
    path, tokens = shard
    out = read_shard(path, expected_vocab_size=1000)
    assert isinstance(out, np.memmap) and out.dtype == np.uint16
    np.testing.assert_array_equal(out, tokens)
    with pytest.raises(ValueError):
        out[0] = 1
    assert path.stat().st_size == HEADER_SIZE + 2 * len(tokens)


def test_large_vocab_uses_uint32(tmp_path):
    tokens = np.array([0, 65535, 65536, 99_999])
    write_shard(tmp_path / "big.bin", tokens, vocab_size=100_000)
    out = read_shard(tmp_path / "big.bin")
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, tokens)


def test_streaming_writer_equals_one_shot(tmp_path):
    tokens = np.arange(3000) % 700
    write_shard(tmp_path / "a.bin", tokens, 700)
    with ShardWriter(tmp_path / "b.bin", 700) as w:
        for part in np.array_split(tokens, 7):
            w.write(part)
        w.write([])
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert read_header(tmp_path / "b.bin")["count"] == 3000


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "e.bin", np.array([], dtype=np.int64), 10)
    assert len(read_shard(tmp_path / "e.bin")) == 0


def test_flipped_byte_is_a_checksum_error(shard):
    path, _ = shard
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 1234] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"train\.bin: checksum mismatch"):
        read_shard(path)
    assert len(read_shard(path, verify=False)) == 5000  # verify=False skips only the hash


def test_truncated(shard):
    path, _ = shard
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ShardError, match=r"train\.bin: truncated"):
        read_shard(path)


def test_trailing_bytes(shard):
    path, _ = shard
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(ShardError, match=r"train\.bin: 2 unexpected bytes"):
        read_shard(path)


def test_vocab_size_mismatch(shard):
    path, _ = shard
    with pytest.raises(ShardError, match=r"train\.bin: vocab size mismatch.*1000.*2048"):
        read_shard(path, expected_vocab_size=2048)


def test_not_a_shard_and_bad_version(tmp_path, shard):
    other = tmp_path / "notes.txt"
    other.write_text("definitely not tokens" * 10)
    with pytest.raises(ShardError, match=r"notes\.txt: not a budgetlm token shard"):
        read_shard(other)
    path, _ = shard
    data = bytearray(path.read_bytes())
    data[8] = 99  # format version field
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"train\.bin: unsupported shard format version 99"):
        read_shard(path)
    with pytest.raises(ShardError, match="no such shard"):
        read_shard(tmp_path / "missing.bin")


def test_out_of_vocab_token_on_write_leaves_no_file(tmp_path):
    path = tmp_path / "bad.bin"
    with pytest.raises(ShardError, match=r"bad\.bin: token id 50 is outside"):
        write_shard(path, np.array([1, 2, 50]), vocab_size=50)
    with pytest.raises(ShardError, match="token id -1"):
        write_shard(path, np.array([-1, 2]), vocab_size=50)
    assert list(tmp_path.iterdir()) == []  # atomic: no shard and no temporary file
