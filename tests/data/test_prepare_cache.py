"""A cache hit is cheap (issue 19): an unchanged corpus is recognised by `stat` alone, so a start
opens no corpus file and hashes no shard; a changed corpus is still rebuilt; building reads and
parses the corpus once. Counted with spies, never timed (bench/prepare_cache.py times it)."""

from __future__ import annotations

import builtins
import io
import json
import os
from pathlib import Path

import pytest

from budgetlm.data import prepare as prepare_mod
from budgetlm.data import shards as shards_mod
from budgetlm.data import sources as sources_mod
from budgetlm.data.prepare import DatasetCorrupt, load_prepared, prepare_dataset, verify_dataset

VOCAB = 300


def _paragraphs(n: int, word: str = "lantern") -> str:
    return "\n\n".join(
        " ".join(
            f"Paragraph {i} tells of the {(i * 7 + j) % 13}th {word} by the river."
            for j in range(10)
        )
        for i in range(n)
    )


def _corpus_dir(root: Path) -> Path:
    """A directory corpus: a .txt file and a .jsonl file."""
    root.mkdir()
    (root / "a.txt").write_text(_paragraphs(40) + "\n")
    rows = [{"text": f"Row {i} speaks of the keeper and the {i % 5}th bridge."} for i in range(30)]
    (root / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


class Spies:
    """Counts what a prepare does: files opened, corpus hashes and parses, shard hashes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.opened: list[Path] = []
        self.calls = {"corpus_fingerprint": 0, "iter_documents": 0, "chunk_paragraphs": 0}
        self.shard_verify: list[bool] = []
        self.sha256 = 0
        real_open, real_io_open = builtins.open, io.open

        def recording(real):
            def spy(file, *args, **kwargs):
                if isinstance(file, str | os.PathLike):
                    self.opened.append(Path(file).resolve())
                return real(file, *args, **kwargs)

            return spy

        monkeypatch.setattr(builtins, "open", recording(real_open))
        monkeypatch.setattr(io, "open", recording(real_io_open))
        for module, name in (
            (prepare_mod, "corpus_fingerprint"),
            (prepare_mod, "iter_documents"),
            (sources_mod, "chunk_paragraphs"),
        ):
            monkeypatch.setattr(module, name, self._counting(name, getattr(module, name)))
        real_read_shard = prepare_mod.read_shard

        def read_shard(path, **kwargs):
            self.shard_verify.append(kwargs.get("verify", True))
            return real_read_shard(path, **kwargs)

        monkeypatch.setattr(prepare_mod, "read_shard", read_shard)
        real_hashlib = shards_mod.hashlib

        class CountingHashlib:  # the shards module's sha256: the payload hash of read_shard
            def __getattr__(_, name):
                return getattr(real_hashlib, name)

            def sha256(_, *args):
                self.sha256 += 1
                return real_hashlib.sha256(*args)

        monkeypatch.setattr(shards_mod, "hashlib", CountingHashlib())

    def _counting(self, name, real):
        def spy(*args, **kwargs):
            self.calls[name] += 1
            return real(*args, **kwargs)

        return spy

    def opened_under(self, folder: Path) -> list[Path]:
        folder = folder.resolve()
        return [p for p in self.opened if p.is_relative_to(folder)]


@pytest.mark.parametrize("where", ["cache", "out_dir"])
def test_a_second_prepare_of_an_unchanged_corpus_reads_no_corpus_file_and_hashes_no_shard(
    tmp_path, monkeypatch, where
):
    corpus = _corpus_dir(tmp_path / "corpus")
    place = {"cache_root": tmp_path / "cache"} if where == "cache" else {"out_dir": tmp_path / "ds"}
    first = prepare_dataset(str(corpus), "bpe", VOCAB, progress=False, **place)
    spies = Spies(monkeypatch)
    again = prepare_dataset(str(corpus), "bpe", VOCAB, progress=False, **place)
    assert again == first
    assert spies.opened_under(corpus) == []  # not even the 8 KB text sniff
    assert spies.calls == {"corpus_fingerprint": 0, "iter_documents": 0, "chunk_paragraphs": 0}
    assert spies.shard_verify == [False, False, False] and spies.sha256 == 0
    # What a training start does next: load and read the splits, still without hashing.
    assert len(load_prepared(again).tokens("train")) > 0
    assert spies.sha256 == 0 and spies.opened_under(corpus) == []


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new-mtime", "mtime-put-back"])
@pytest.mark.parametrize("where", ["cache", "out_dir"])
def test_a_corpus_changed_in_content_at_the_same_size_is_rebuilt(
    tmp_path, monkeypatch, where, keep_mtime
):
    corpus = _corpus_dir(tmp_path / "corpus")
    place = {"cache_root": tmp_path / "cache"} if where == "cache" else {"out_dir": tmp_path / "ds"}
    first = prepare_dataset(str(corpus), "bpe", VOCAB, progress=False, **place)
    old_meta = load_prepared(first).meta
    old_train = bytes(load_prepared(first).tokens("train"))
    text_file = corpus / "a.txt"
    st = text_file.stat()
    text_file.write_text(_paragraphs(40, word="lanterm") + "\n")  # same size, other words
    assert text_file.stat().st_size == st.st_size
    if keep_mtime:  # even a write that puts the old mtime back changes the ctime
        os.utime(text_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.utime(text_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    spies = Spies(monkeypatch)
    again = prepare_dataset(str(corpus), "bpe", VOCAB, progress=False, **place)
    assert spies.calls["corpus_fingerprint"] == 1 and spies.calls["iter_documents"] == 1
    meta = load_prepared(again).meta
    assert meta["fingerprint"] != old_meta["fingerprint"] and meta["key"] != old_meta["key"]
    assert bytes(load_prepared(again).tokens("train")) != old_train
    assert (again != first) if where == "cache" else (again == first)
    verify_dataset(again, full=True)


def test_a_touched_but_unchanged_corpus_is_hashed_once_and_keeps_its_dataset(tmp_path, monkeypatch):
    corpus = _corpus_dir(tmp_path / "corpus")
    first = prepare_dataset(
        str(corpus), "bpe", VOCAB, cache_root=tmp_path / "cache", progress=False
    )
    st = (corpus / "a.txt").stat()
    os.utime(corpus / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # `touch`
    spies = Spies(monkeypatch)
    again = prepare_dataset(
        str(corpus), "bpe", VOCAB, cache_root=tmp_path / "cache", progress=False
    )
    assert again == first  # the key hashes contents: the same dataset, not rebuilt
    assert spies.calls["corpus_fingerprint"] == 1 and spies.calls["iter_documents"] == 0
    spies.calls["corpus_fingerprint"] = 0
    spies.opened.clear()
    prepare_dataset(str(corpus), "bpe", VOCAB, cache_root=tmp_path / "cache", progress=False)
    assert spies.calls["corpus_fingerprint"] == 0 and spies.opened_under(corpus) == []


def test_a_file_added_to_a_corpus_folder_is_a_new_dataset(tmp_path):
    corpus = _corpus_dir(tmp_path / "corpus")
    first = prepare_dataset(
        str(corpus), "bpe", VOCAB, cache_root=tmp_path / "cache", progress=False
    )
    (corpus / "c.txt").write_text(_paragraphs(10, word="boatman") + "\n")
    again = prepare_dataset(
        str(corpus), "bpe", VOCAB, cache_root=tmp_path / "cache", progress=False
    )
    assert again != first
    assert load_prepared(again).meta["fingerprint"] != load_prepared(first).meta["fingerprint"]


def test_verify_still_hashes_the_corpus_and_every_shard(tmp_path, monkeypatch):
    corpus = _corpus_dir(tmp_path / "corpus")
    out = prepare_dataset(str(corpus), "bpe", VOCAB, out_dir=tmp_path / "ds", progress=False)
    spies = Spies(monkeypatch)
    assert prepare_dataset(str(corpus), "bpe", VOCAB, out_dir=out, progress=False, verify=True)
    assert spies.calls["corpus_fingerprint"] == 1 and spies.calls["iter_documents"] == 0
    assert spies.shard_verify == [True, True, True]


def test_building_reads_and_parses_the_corpus_once(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text(_paragraphs(60) + "\n")
    n_documents = len(sources_mod.chunk_paragraphs(corpus.read_text()))
    spies = Spies(monkeypatch)
    out = prepare_dataset(str(corpus), "bpe", VOCAB, out_dir=tmp_path / "ds", progress=False)
    # One parse (one iteration of the source, one chunking of the file); the fingerprint reads
    # the bytes once more to hash them, without parsing.
    assert spies.calls == {"corpus_fingerprint": 1, "iter_documents": 1, "chunk_paragraphs": 1}
    assert sorted(p.name for p in out.iterdir()) == [
        ".verified.json",
        "meta.json",
        "test.bin",
        "tokenizer.json",
        "train.bin",
        "tune.bin",
    ]  # the documents' spill file is gone
    stats = load_prepared(out).meta["splits"]
    assert sum(s["n_documents"] for s in stats.values()) == n_documents


def test_the_cheap_start_check_catches_a_shard_rewritten_with_its_old_mtime(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(_paragraphs(60) + "\n")
    out = prepare_dataset(str(corpus), "bpe", VOCAB, out_dir=tmp_path / "ds", progress=False)
    shard = out / "train.bin"
    st = shard.stat()
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x20
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as they were
    with pytest.raises(DatasetCorrupt, match=r"train\.bin: checksum mismatch"):
        verify_dataset(out)  # what every start runs: the ctime changed, so it hashes the shard
    again = prepare_dataset(str(corpus), "bpe", VOCAB, out_dir=out, progress=False)
    verify_dataset(again, full=True)  # a start rebuilt it
