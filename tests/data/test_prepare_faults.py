"""Data faults: bad corpora are one-line errors that leave nothing behind, and a corrupted
prepared dataset is found and rebuilt by `budgetlm prepare` (issue 15)."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pytest

from budgetlm.cli import main
from budgetlm.data import prepare as prepare_mod
from budgetlm.data.prepare import (
    DatasetCorrupt,
    DatasetError,
    load_prepared,
    prepare_dataset,
    verify_dataset,
)
from budgetlm.data.sources import CorpusError

FILES = ("tokenizer.json", "train.bin", "tune.bin", "test.bin")
VOCAB = "300"


def _text_corpus(path: Path, n: int = 60) -> Path:
    """`n` documents: paragraphs too long (~800 characters) to be merged into one."""
    paragraphs = [
        " ".join(
            f"Paragraph {i} tells of the {(i * 7 + j) % 13}th lantern by the river and its keeper."
            for j in range(10)
        )
        for i in range(n)
    ]
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def _bad_corpus(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "no" / "such.txt"
    path = tmp_path / {"shard": "train.bin", "gzip": "corpus.txt.gz"}.get(kind, f"{kind}.txt")
    if kind == "empty":
        path.write_text("")
    elif kind == "blank":
        path.write_text("  \n\n \t\n")
    elif kind == "binary":  # a binary file renamed .txt: NUL bytes early on
        path.write_bytes(b"\x80\x02}q\x00(X\x05\x00\x00\x00model" + bytes(range(256)) * 4)
    elif kind == "latin1":
        path.write_bytes(
            "Caf\u00e9 cr\u00e8me, \u00e0 la fran\u00e7aise.\n\n".encode("latin-1") * 50
        )
    elif kind == "gzip":
        path.write_bytes(gzip.compress(b"hello world\n\n" * 100))
    elif kind == "shard":
        path.write_bytes(b"BLMTOK\x00\x01" + b"\x00" * 100)
    return path


BAD = {
    "missing": "unknown corpus",
    "empty": "holds no text",
    "blank": "holds no text",
    "binary": "is binary, not text",
    "latin1": "is not UTF-8 text",
    "gzip": r"unsupported corpus file|compressed",
    "shard": "unsupported corpus file",
}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.is_dir() else []


@pytest.mark.parametrize("kind", sorted(BAD))
def test_prepare_refuses_a_bad_corpus_in_one_line_and_leaves_nothing(
    tmp_path, capsys, monkeypatch, kind
):
    monkeypatch.setenv("BUDGETLM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "src").mkdir()
    corpus = _bad_corpus(tmp_path / "src", kind)
    before = _leftovers(tmp_path / "src")
    assert main(["prepare", "--corpus", str(corpus), "--vocab-size", VOCAB]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.search(BAD[kind], err), err
    assert _leftovers(tmp_path / "cache" / "datasets") == []  # no partial or hidden folder
    # With an explicit output folder too: nothing is made there or next to the corpus.
    out = tmp_path / "src" / "out"
    assert main(["prepare", "--corpus", str(corpus), "--vocab-size", VOCAB, "--out", str(out)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert _leftovers(tmp_path / "src") == before


@pytest.mark.parametrize("kind", ["missing", "empty", "binary"])
def test_train_refuses_a_bad_corpus_with_exit_2_and_no_dataset_folder(
    tmp_path, capsys, monkeypatch, kind
):
    monkeypatch.setenv("BUDGETLM_CACHE", str(tmp_path / "cache"))
    corpus = _bad_corpus(tmp_path, kind)
    args = ["train", "--quiet", f"data.corpus={corpus}", f"run.out_dir={tmp_path / 'runs'}"]
    assert main([*args, "budget=2steps", "data.vocab_size=300", "model.seq_len=16"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(BAD[kind], err), err
    assert _leftovers(tmp_path / "cache" / "datasets") == []


def test_a_failed_build_removes_its_temporary_folder_and_keeps_the_old_dataset(
    tmp_path, monkeypatch
):
    corpus = _text_corpus(tmp_path / "c.txt")
    out = tmp_path / "ds"
    prepare_dataset(str(corpus), "bpe", 300, out_dir=out, progress=False)
    original = {name: (out / name).read_bytes() for name in FILES}
    (out / "train.bin").write_bytes(b"garbage")  # corrupted: the next prepare rebuilds it

    def broken(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the rebuild

    monkeypatch.setattr(prepare_mod, "train_tokenizer", broken)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(str(corpus), "bpe", 300, out_dir=out, progress=False)
    assert _leftovers(tmp_path) == ["c.txt", "ds"]  # no .ds.tmp-* folder
    monkeypatch.undo()
    prepare_dataset(str(corpus), "bpe", 300, out_dir=out, progress=False)
    assert {name: (out / name).read_bytes() for name in FILES} == original


def test_a_dead_builds_temporary_folder_is_swept(tmp_path):
    corpus = _text_corpus(tmp_path / "c.txt")
    dead = tmp_path / f".ds.tmp-{prepare_mod._host()}-999999999-abcd"
    dead.mkdir()
    (dead / "train.bin").write_bytes(b"half")
    prepare_dataset(str(corpus), "bpe", 300, out_dir=tmp_path / "ds", progress=False)
    assert not dead.exists()


def _prepare_cli(corpus: Path, out: Path) -> list[str]:
    return ["prepare", "--corpus", str(corpus), "--vocab-size", VOCAB, "--out", str(out)]


def _flip_keeping_mtime(path: Path, offset: int) -> None:
    """Bit rot: one byte changes, size and mtime stay (stat cannot see it)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("name", ["train.bin", "test.bin", "tokenizer.json"])
def test_budgetlm_prepare_finds_and_rebuilds_a_corrupted_file(tmp_path, capsys, name):
    corpus = _text_corpus(tmp_path / "c.txt")
    out = tmp_path / "ds"
    assert main(_prepare_cli(corpus, out)) == 0
    original = {n: (out / n).read_bytes() for n in FILES}
    offset = original[name].index(b"lantern") if name == "tokenizer.json" else -3
    _flip_keeping_mtime(out / name, offset)
    assert (out / name).read_bytes() != original[name]
    capsys.readouterr()

    assert main(_prepare_cli(corpus, out)) == 0
    err = capsys.readouterr().err
    assert f"{out} is corrupted ({name}" in err and "rebuilding it" in err, err
    assert "identical to the dataset it replaced" in err
    assert {n: (out / n).read_bytes() for n in FILES} == original
    verify_dataset(out, full=True)
    assert len(load_prepared(out).tokens("test")) > 0


def test_the_cheap_check_of_every_start_catches_a_rewritten_file(tmp_path):
    corpus = _text_corpus(tmp_path / "c.txt")
    out = prepare_dataset(str(corpus), "bpe", 300, out_dir=tmp_path / "ds", progress=False)
    data = bytearray((out / "tune.bin").read_bytes())
    data[-2] ^= 0x01
    (out / "tune.bin").write_bytes(bytes(data))  # a write: mtime changes
    with pytest.raises(DatasetCorrupt, match=r"tune\.bin: checksum mismatch") as caught:
        verify_dataset(out)
    assert "budgetlm prepare" in str(caught.value) and f"delete {out}" in str(caught.value)
    # A training start reuses the dataset through the same check, so it rebuilds it too.
    again = prepare_dataset(str(corpus), "bpe", 300, out_dir=out, progress=False)
    verify_dataset(again, full=True)


def test_a_changed_tokenizer_is_caught_on_load_even_at_the_same_size(tmp_path):
    corpus = _text_corpus(tmp_path / "c.txt")
    out = prepare_dataset(str(corpus), "bpe", 300, out_dir=tmp_path / "ds", progress=False)
    text = (out / "tokenizer.json").read_text()
    flag = '"add_prefix_space": false'
    assert flag in text
    # Another tokenizer that still loads, in a file of the same size.
    (out / "tokenizer.json").write_text(text.replace(flag, '"add_prefix_space": true ', 1))
    ds = load_prepared(out)
    with pytest.raises(DatasetCorrupt, match=r"tokenizer\.json: checksum mismatch"):
        ds.tokens("train")


def test_an_unchanged_shard_is_not_hashed_again_at_start(tmp_path, monkeypatch):
    corpus = _text_corpus(tmp_path / "c.txt")
    out = prepare_dataset(str(corpus), "bpe", 300, out_dir=tmp_path / "ds", progress=False)
    hashed: list[bool] = []
    real = prepare_mod.read_shard

    def spy(path, **kwargs):
        hashed.append(kwargs.get("verify", True))
        return real(path, **kwargs)

    monkeypatch.setattr(prepare_mod, "read_shard", spy)
    verify_dataset(out)
    load_prepared(out).tokens("train")
    assert hashed and not any(hashed)
    hashed.clear()
    verify_dataset(out, full=True)  # what `budgetlm prepare` does
    assert hashed == [True, True, True]


def test_prepare_by_config_rebuilds_a_corrupted_data_path_and_refuses_a_changed_corpus(
    tmp_path, capsys
):
    corpus = _text_corpus(tmp_path / "c.txt")
    out = prepare_dataset(str(corpus), "bpe", 300, out_dir=tmp_path / "ds", progress=False)
    original = (out / "train.bin").read_bytes()
    _flip_keeping_mtime(out / "train.bin", -5)
    assert main(["prepare", f"data.path={out}", "model.seq_len=16"]) == 0
    assert "rebuilding it" in capsys.readouterr().err
    assert (out / "train.bin").read_bytes() == original

    _flip_keeping_mtime(out / "train.bin", -5)
    corpus.write_text(corpus.read_text() + "\n\nA new paragraph.\n")  # not the same data now
    assert main(["prepare", f"data.path={out}", "model.seq_len=16"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"Delete {out}" in err, err
    assert (out / "meta.json").is_file()  # refused: left as it was, for the user to decide


def test_an_output_folder_holding_other_files_is_never_replaced(tmp_path, capsys):
    corpus = _text_corpus(tmp_path / "c.txt")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.md").write_text("keep me")
    assert main(_prepare_cli(corpus, out)) == 2
    assert "not part of a prepared dataset" in capsys.readouterr().err
    assert _leftovers(out) == ["notes.md"] and _leftovers(tmp_path) == ["c.txt", "mine"]


def test_a_dataset_from_before_manifests_loads_and_gets_one_from_prepare(tmp_path):
    corpus = _text_corpus(tmp_path / "c.txt")
    out = prepare_dataset(str(corpus), "bpe", 300, out_dir=tmp_path / "ds", progress=False)
    meta = json.loads((out / "meta.json").read_text())
    files, key = meta.pop("files"), meta["key"]
    (out / "meta.json").write_text(json.dumps(meta))
    (out / ".verified.json").unlink()
    assert len(load_prepared(out).tokens("train")) > 0  # still readable as before
    assert prepare_dataset(str(corpus), "bpe", 300, out_dir=out, progress=False, verify=True)
    upgraded = json.loads((out / "meta.json").read_text())
    assert upgraded["files"] == files and upgraded["key"] == key  # same dataset, same key


def test_errors_are_user_errors():
    assert issubclass(DatasetError, ValueError) and issubclass(CorpusError, ValueError)
    from budgetlm.errors import UserError

    assert issubclass(DatasetCorrupt, UserError) and issubclass(CorpusError, UserError)
