"""prepare_dataset: contents, caching, completeness marker, and the errors it promises."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from budgetlm.data import prepare as prepare_mod
from budgetlm.data.prepare import load_prepared, prepare_dataset
from budgetlm.data.shards import ShardError, read_header
from budgetlm.data.tokenizer import train_tokenizer


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_fixture_prepares_for_each_tokenizer(tmp_path, kind):
    # No timing assertion: a test must not depend on how busy the machine is.
    path = prepare_dataset("fixture", kind, 2048, out_dir=tmp_path / kind, progress=False)
    ds = load_prepared(path)
    meta = ds.meta
    assert meta["tokenizer"] == kind and meta["vocab_size"] == ds.tokenizer.vocab_size == 2048
    assert meta["corpus"] == "fixture" and meta["val_fraction"] == 0.02
    sep = ds.tokenizer.doc_separator_id
    assert set(meta["splits"]) == {"train", "tune", "test"}
    for split in ("train", "tune", "test"):
        tokens = ds.tokens(split)
        stats = meta["splits"][split]
        assert len(tokens) == stats["n_tokens"] > 0
        # One separator after each document, and nowhere else.
        assert int((tokens == sep).sum()) == stats["n_documents"] > 0
        assert tokens[-1] == sep
    n_docs = sum(s["n_documents"] for s in meta["splits"].values())
    for split in ("tune", "test"):
        assert 4 <= meta["splits"][split]["n_documents"] < 0.1 * n_docs  # the floor: 4
    assert np.array_equal(ds.tokens("val"), ds.tokens("test"))  # the old name still reads
    text = ds.tokenizer.decode(ds.tokens("train")[:40])
    assert len(text) > 40


def test_session_fixture_lives_in_the_cache(prepared_dataset):
    path = prepared_dataset("gpt")
    assert path.parent.name == "datasets"
    assert path.name.startswith("fixture-bpe-2048-")
    assert path.parent.parent == prepare_mod.default_cache_root()


def test_second_call_reuses_without_work(tmp_path, monkeypatch):
    first = prepare_dataset("fixture", "bpe", 1024, cache_root=tmp_path, progress=False)
    stamp = (first / "meta.json").stat().st_mtime_ns, (first / "train.bin").stat().st_ino

    def no_training(*args, **kwargs):
        raise AssertionError("the cached dataset should have been reused")

    monkeypatch.setattr(prepare_mod, "train_tokenizer", no_training)
    again = prepare_dataset("fixture", "bpe", 1024, cache_root=tmp_path, progress=False)
    assert again == first
    assert ((first / "meta.json").stat().st_mtime_ns, (first / "train.bin").stat().st_ino) == stamp
    # Any setting change is a different dataset in a different directory.
    with pytest.raises(AssertionError, match="reused"):
        prepare_dataset("fixture", "bpe", 1024, cache_root=tmp_path, val_fraction=0.05)


def test_meta_is_written_last_and_incomplete_dirs_are_rebuilt(tmp_path, monkeypatch):
    done: list[str] = []
    real_replace = os.replace

    def recording_replace(src, dst):
        real_replace(src, dst)
        done.append(os.path.basename(dst))

    monkeypatch.setattr(os, "replace", recording_replace)
    path = prepare_dataset("fixture", "bpe", 1024, out_dir=tmp_path / "d", progress=False)
    assert done[-1] == "meta.json"
    assert set(done) == {"tokenizer.json", "train.bin", "tune.bin", "test.bin", "meta.json"}

    # Without meta.json a directory is incomplete: it is rebuilt, not trusted.
    (path / "meta.json").unlink()
    (path / "train.bin").write_bytes(b"half a file")
    done.clear()
    prepare_dataset("fixture", "bpe", 1024, out_dir=path, progress=False)
    assert done[-1] == "meta.json" and "train.bin" in done
    assert len(load_prepared(path).tokens("train")) > 0


def test_vocab_mismatch_is_caught_on_load(tmp_path):
    path = prepare_dataset("fixture", "bpe", 1024, out_dir=tmp_path / "d", progress=False)
    # Simulate a tokenizer swapped under the shards (e.g. a copied tokenizer.json).
    other = train_tokenizer("bpe", ["some other text"] * 20, 300)
    other.save(path / "tokenizer.json")
    ds = load_prepared(path)
    with pytest.raises(ShardError, match=r"train\.bin: vocab size mismatch"):
        ds.tokens("train")


def test_corrupted_shard_is_caught_on_load(tmp_path):
    path = prepare_dataset("fixture", "wordpiece", 1024, out_dir=tmp_path / "d", progress=False)
    data = bytearray((path / "test.bin").read_bytes())
    data[-3] ^= 0xFF
    (path / "test.bin").write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"test\.bin: checksum mismatch"):
        load_prepared(path).tokens("val")


def test_a_corpus_too_small_for_the_held_out_floor_says_what_to_lower(tmp_path):
    corpus = tmp_path / "tiny.jsonl"  # one document per line
    corpus.write_text("".join(json.dumps({"text": f"Document {i}."}) + "\n" for i in range(11)))
    with pytest.raises(ValueError, match=r"has 11 documents.*lower data.heldout_min_documents"):
        prepare_dataset(str(corpus), "bpe", 300, out_dir=tmp_path / "d", progress=False)
    assert not (tmp_path / "d" / "meta.json").exists()
    assert not (tmp_path / "d" / "train.bin").exists()  # no half-written shards either


def test_held_out_splits_get_the_floor_whatever_val_fraction_rounds_to(tmp_path):
    corpus = tmp_path / "small.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Document {i}."}) + "\n" for i in range(40)))
    for fraction in (0.01, 0.02, 0.05):
        path = prepare_dataset(
            str(corpus),
            "bpe",
            300,
            out_dir=tmp_path / str(fraction),
            val_fraction=fraction,
            heldout_min_documents=6,
            progress=False,
        )
        meta = load_prepared(path).meta
        counts = {name: s["n_documents"] for name, s in meta["splits"].items()}
        assert counts["tune"] >= 6 and counts["test"] >= 6 and sum(counts.values()) == 40
        assert meta["heldout_min_documents"] == 6


def test_default_cache_root_and_local_jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLM_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "My Corpus.jsonl"
    rows = [{"body": f"Document {i} talks about item {i * 7} at some length."} for i in range(200)]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = prepare_dataset(str(corpus), "wordpiece", 400, text_field="body", progress=False)
    assert path.parent == tmp_path / "cache" / "datasets"
    assert path.name.startswith("my-corpus-jsonl-wordpiece-400-")
    meta = load_prepared(path).meta
    assert meta["source_kwargs"] == {"text_field": "body"}
    assert sum(s["n_documents"] for s in meta["splits"].values()) == 200
    assert read_header(path / "train.bin")["vocab_size"] == meta["vocab_size"]


def test_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="did you mean 'text_field'"):
        prepare_dataset("fixture", "bpe", 512, cache_root=tmp_path, txt_field="x")
    with pytest.raises(ValueError, match="fixed vocabulary of 50257"):
        prepare_dataset("fixture", "gpt2", 8192, cache_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        load_prepared(tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        path = prepare_dataset("fixture", "bpe", 512, cache_root=tmp_path, progress=False)
        load_prepared(path).tokens("valid")


def test_prepared_streams_are_deterministic(tmp_path):
    a = prepare_dataset("fixture", "unigram", 1024, out_dir=tmp_path / "a", progress=False)
    b = prepare_dataset("fixture", "unigram", 1024, out_dir=tmp_path / "b", progress=False)
    for name in ("tokenizer.json", "train.bin", "tune.bin", "test.bin"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert np.array_equal(load_prepared(a).tokens("val"), load_prepared(b).tokens("val"))
