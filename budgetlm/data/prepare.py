"""Turn a corpus into a prepared dataset: tokenizer + checksummed train/tune/test token shards.

A prepared dataset is a directory::

    tokenizer.json   the tokenizer (Hugging Face format)
    train.bin        token shards (see shards.py); every document is followed by the
    tune.bin         tokenizer's doc_separator_id. tune and test are the held-out documents:
    test.bin         tune for choosing hyper-parameters, test for judging (docs/data.md)
    meta.json        what was built and from what; written last, so its presence means complete

The held-out documents are those the old single validation split held (`val_fraction`, by a
hash of the text), each sent to tune or test by other bits of the same hash; on a small corpus
the lowest-ranked documents of each side are added until each held-out split has
`heldout_min_documents`. `val` is kept as a name for the test split (`PreparedDataset.tokens`).

By default it lives in ``<cache_root>/datasets/<corpus>-<tokenizer>-<vocab>-<key[:12]>`` where
``key`` hashes the corpus fingerprint and every setting: asking twice for the same thing reuses
the directory, and changing the data or any setting builds a new one. The cache root is
``$BUDGETLM_CACHE`` or ``~/.cache/budgetlm``. Building is deterministic, so two processes
racing to build the same directory write identical files (each file is replaced atomically).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .shards import FORMAT_VERSION, ShardWriter, read_shard
from .sources import (
    HELDOUT_SPLITS,
    NAMED_CORPORA,
    corpus_fingerprint,
    heldout_cuts,
    iter_documents,
    split_of,
)
from .tokenizer import Tokenizer, train_tokenizer

# 2: the held-out documents are split into tune and test (was one val split).
META_VERSION = 2
SPLITS = ("train", *HELDOUT_SPLITS)
# The name plain runs and `budgetlm eval --split val` used before tune and test existed.
SPLIT_ALIASES = {"val": "test"}
HELDOUT_MIN_DOCUMENTS = 4  # the default floor per held-out split (DataConfig.heldout_min_documents)
SOURCE_KWARGS = ("text_field", "hf_split", "data_files")
GPT2_VOCAB = 50257
_ENCODE_DOCS = 1024  # documents per encode_batch call: enough to keep the Rust threads busy


def default_cache_root() -> Path:
    """``$BUDGETLM_CACHE`` if set, else ``~/.cache/budgetlm``."""
    env = os.environ.get("BUDGETLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "budgetlm"


def prepare_dataset(
    corpus: str,
    tokenizer: str,
    vocab_size: int,
    *,
    out_dir: Path | None = None,
    cache_root: Path | None = None,
    val_fraction: float = 0.02,
    heldout_min_documents: int = HELDOUT_MIN_DOCUMENTS,
    max_bytes: int | None = None,
    progress: bool = True,
    **source_kwargs,
) -> Path:
    """Prepare ``corpus`` for ``tokenizer`` (a kind of tokenizer.KINDS); return the directory.

    ``source_kwargs`` (text_field, hf_split, data_files) go to ``sources.iter_documents``.
    The tokenizer is trained on the train split only, so held-out text stays unseen.
    ``heldout_min_documents`` is the floor of documents in each held-out split (tune, test).
    """
    for key in source_kwargs:
        if key not in SOURCE_KWARGS:
            close = difflib.get_close_matches(key, SOURCE_KWARGS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unknown source option {key!r} (expected {SOURCE_KWARGS}){hint}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if heldout_min_documents < 1:
        raise ValueError(f"heldout_min_documents must be >= 1, got {heldout_min_documents}")
    if tokenizer == "gpt2" and vocab_size != GPT2_VOCAB:
        raise ValueError(
            f"tokenizer 'gpt2' has a fixed vocabulary of {GPT2_VOCAB}, not {vocab_size}"
        )

    fingerprint = corpus_fingerprint(corpus, max_bytes=max_bytes, **source_kwargs)
    settings = {
        "meta_version": META_VERSION,
        "format_version": FORMAT_VERSION,
        "corpus": corpus,
        "fingerprint": fingerprint,
        "tokenizer": tokenizer,
        "requested_vocab_size": vocab_size,
        "val_fraction": val_fraction,
        "heldout_min_documents": heldout_min_documents,
        "max_bytes": max_bytes,
        "source_kwargs": source_kwargs,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if out_dir is None:
        root = Path(cache_root) if cache_root is not None else default_cache_root()
        out_dir = root / "datasets" / f"{_slug(corpus)}-{tokenizer}-{vocab_size}-{key[:12]}"
    out_dir = Path(out_dir)
    meta_path = out_dir / "meta.json"
    if meta_path.is_file():
        if json.loads(meta_path.read_text()).get("key") == key:
            return out_dir
        meta_path.unlink()  # a different dataset lives here: mark it incomplete, then rebuild

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)

    def documents() -> Iterator[str]:
        return iter_documents(corpus, max_bytes=max_bytes, **source_kwargs)

    # One pass over the hashes first: on a small corpus the floor moves documents out of train,
    # and the tokenizer must not see them.
    cuts = heldout_cuts(documents(), val_fraction, heldout_min_documents, corpus)
    train_docs = (d for d in documents() if split_of(d, val_fraction, cuts) == "train")
    if tokenizer != "gpt2":
        train_docs = tqdm(
            train_docs,
            desc="tokenizer: reading",
            unit=" docs",
            disable=None if progress else True,
            file=sys.stderr,
        )
    tok = train_tokenizer(tokenizer, train_docs, vocab_size)
    tok.save(out_dir / "tokenizer.json")
    splits = _encode_splits(
        tok, documents(), out_dir, lambda d: split_of(d, val_fraction, cuts), progress
    )

    meta = {
        **settings,
        "key": key,
        "vocab_size": tok.vocab_size,
        "doc_separator_id": tok.doc_separator_id,
        "splits": splits,
        # How the held-out splits were drawn; `val` names the test split.
        "heldout": {"cuts": cuts, "aliases": SPLIT_ALIASES},
        "seconds": round(time.perf_counter() - started, 2),
        "versions": _versions(),
    }
    tmp = meta_path.with_name(f".meta.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, meta_path)  # last: its presence marks the directory complete
    return out_dir


def _encode_splits(
    tok: Tokenizer, docs: Iterator[str], out_dir: Path, split: Callable[[str], str], progress
) -> dict[str, dict[str, int]]:
    """Encode every document into its split's shard; per split, documents and tokens."""
    stats = {s: {"n_documents": 0, "n_tokens": 0} for s in SPLITS}
    sep = tok.doc_separator_id
    bar = tqdm(
        desc="encoding",
        unit="B",
        unit_scale=True,
        disable=None if progress else True,
        file=sys.stderr,
    )
    with contextlib.ExitStack() as stack:
        writers = {
            s: stack.enter_context(ShardWriter(out_dir / f"{s}.bin", tok.vocab_size))
            for s in SPLITS
        }
        stack.enter_context(bar)
        while batch := list(islice(docs, _ENCODE_DOCS)):
            flat: dict[str, list[int]] = {s: [] for s in SPLITS}
            for doc, ids in zip(batch, tok.encode_batch(batch), strict=True):
                name = split(doc)
                flat[name] += ids
                flat[name].append(sep)
                stats[name]["n_documents"] += 1
                stats[name]["n_tokens"] += len(ids) + 1
            for name, ids in flat.items():
                writers[name].write(np.asarray(ids, dtype=np.int64))
            bar.update(sum(len(d.encode("utf-8")) for d in batch))
    return stats


@dataclass
class PreparedDataset:
    """A prepared dataset directory, opened: its metadata, tokenizer and token shards."""

    path: Path
    meta: dict
    tokenizer: Tokenizer
    _tokens: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def tokens(self, split: str) -> np.ndarray:
        """The split's tokens as a read-only memmap (checked once per process); `val` is the
        test split."""
        split = SPLIT_ALIASES.get(split, split)
        if split not in SPLITS:
            known = (*SPLITS, *SPLIT_ALIASES)
            raise ValueError(f"unknown split {split!r}, expected one of {known}")
        if split not in self._tokens:
            self._tokens[split] = read_shard(
                self.path / f"{split}.bin", expected_vocab_size=self.tokenizer.vocab_size
            )
        return self._tokens[split]


def load_prepared(path: str | os.PathLike) -> PreparedDataset:
    """Open a directory made by ``prepare_dataset``."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a prepared dataset (no meta.json; it may be incomplete): "
            "run prepare_dataset / `budgetlm prepare` again"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION or meta.get("meta_version") != META_VERSION:
        raise ValueError(
            f"{path} was prepared by an incompatible budgetlm (format "
            f"{meta.get('format_version')}, meta {meta.get('meta_version')}); prepare it again"
        )
    tokenizer = Tokenizer.load(path / "tokenizer.json", kind=meta["tokenizer"])
    return PreparedDataset(path=path, meta=meta, tokenizer=tokenizer)


def _slug(corpus: str) -> str:
    if corpus in NAMED_CORPORA or corpus.startswith("hf:"):
        base = corpus
    else:
        base = Path(corpus).expanduser().resolve().name
    return re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")[:40] or "corpus"


def _versions() -> dict[str, str]:
    import tokenizers

    from .. import __version__

    return {"budgetlm": __version__, "tokenizers": tokenizers.__version__, "numpy": np.__version__}
