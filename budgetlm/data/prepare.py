"""Turn a corpus into a prepared dataset: tokenizer + checksummed train/tune/test token shards.

A prepared dataset is a directory::

    tokenizer.json   the tokenizer (Hugging Face format)
    train.bin        token shards (see shards.py); every document is followed by the
    tune.bin         tokenizer's doc_separator_id. tune and test are the held-out documents:
    test.bin         tune for choosing hyper-parameters, test for judging (docs/data.md)
    meta.json        what was built and from what, and the manifest (`files`): the size and
                     checksum of every other file
    .verified.json   which shards were last hashed whole, at what size, mtime, ctime and inode,
                     and the corpus's stat signature when its fingerprint was last computed

The held-out documents are those the old single validation split held (`val_fraction`, by a
hash of the text), each sent to tune or test by other bits of the same hash; on a small corpus
the lowest-ranked documents of each side are added until each held-out split has
`heldout_min_documents`. `val` is kept as a name for the test split (`PreparedDataset.tokens`).

By default it lives in ``<cache_root>/datasets/<corpus>-<tokenizer>-<vocab>-<key[:12]>`` where
``key`` hashes the corpus fingerprint and every setting: asking twice for the same thing reuses
the directory, and changing the data or any setting builds a new one. The cache root is
``$BUDGETLM_CACHE`` or ``~/.cache/budgetlm``.

Finding it is cheap: the corpus fingerprint hashes every corpus file, so it is computed only
when the corpus's stat signature (``sources.corpus_signature``: each file's path, size, mtime,
ctime and inode, and the source settings) is not the one a matching dataset recorded in its
stamp, or when ``verify`` asks (``budgetlm prepare``). A start with an unchanged corpus opens no
corpus file. The key itself still hashes contents, so a touched but unchanged corpus keeps its
dataset (hashed once more, then remembered again).

Building reads and parses the corpus once: its documents are spilled to a file in the new folder
(``.documents.spill``, about the size of the text, deleted before the folder is installed) and
the tokenizer and the encoder read them back.

Building happens in a hidden sibling folder that is renamed into place once complete, so a
build that fails (an empty or binary corpus) or is interrupted leaves no dataset folder behind.
Building is deterministic, so two processes racing to build the same directory make identical
files; the first to finish installs its folder and the other discards its own.

Verifying: every process start checks what is cheap (`verify_dataset(full=False)`, and lazily
`PreparedDataset.tokens`): the tokenizer's checksum (a small file), each shard's size and header,
and the whole payload hash only of a shard whose size, mtime, ctime or inode changed since it
was last hashed (`.verified.json`). A shard of gigabytes is therefore hashed once, not at every
start, and a file written or replaced since is still caught, even when the write put its old
mtime back (the ctime cannot be set back). What stat cannot see (a bit rotting on the medium)
is caught by `budgetlm prepare`, which hashes everything (`full=True`) and rebuilds a corrupted
dataset from its corpus.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from budgetlm.errors import UserError

from .shards import FORMAT_VERSION, ShardError, ShardWriter, read_header, read_shard
from .sources import (
    HELDOUT_SPLITS,
    NAMED_CORPORA,
    corpus_fingerprint,
    corpus_signature,
    heldout_cuts,
    iter_documents,
    split_of,
)
from .tokenizer import Tokenizer, TokenizerError, train_tokenizer

# 2: the held-out documents are split into tune and test (was one val split). The manifest
# (`files`) came later without a new version: it is optional, so that datasets prepared before it
# keep their key (which checkpoints record); `budgetlm prepare` adds it to them.
META_VERSION = 2
SPLITS = ("train", *HELDOUT_SPLITS)
# The name plain runs and `budgetlm eval --split val` used before tune and test existed.
SPLIT_ALIASES = {"val": "test"}
HELDOUT_MIN_DOCUMENTS = 4  # the default floor per held-out split (DataConfig.heldout_min_documents)
SOURCE_KWARGS = ("text_field", "hf_split", "data_files")
GPT2_VOCAB = 50257
_ENCODE_DOCS = 1024  # documents per encode_batch call: enough to keep the Rust threads busy
TOKENIZER_FILE = "tokenizer.json"
STAMP_FILE = ".verified.json"
# In the stamp: the corpus's stat signature when its fingerprint was last computed (or reused).
CORPUS_MEMO = "corpus"
# The corpus's documents, read once while building: each a uint64 length and its UTF-8 bytes.
SPILL_FILE = ".documents.spill"
_SPILL_LENGTH = struct.Struct("<Q")
# What may be found in a dataset folder (val.bin: datasets from before tune and test), so that
# rebuilding one in place never deletes anything else.
_DATASET_NAMES = {"meta.json", TOKENIZER_FILE, STAMP_FILE, "val.bin", *(f"{s}.bin" for s in SPLITS)}


class DatasetError(UserError, ValueError):
    """A prepared dataset that is incomplete or from another budgetlm, or settings it cannot be
    prepared with."""


class DatasetMissing(UserError, FileNotFoundError):
    """A folder that holds no (complete) prepared dataset."""


class DatasetCorrupt(DatasetError):
    """A prepared dataset whose files do not match its manifest."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"the prepared dataset {self.path} is corrupted: {reason}. Run `budgetlm prepare` "
            f"with the same corpus or config (it verifies the dataset and rebuilds it), or "
            f"delete {self.path}"
        )


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
    verify: bool = False,
    expected_key: str | None = None,
    **source_kwargs,
) -> Path:
    """Prepare ``corpus`` for ``tokenizer`` (a kind of tokenizer.KINDS); return the directory.

    ``source_kwargs`` (text_field, hf_split, data_files) go to ``sources.iter_documents``.
    The tokenizer is trained on the train split only, so held-out text stays unseen.
    ``heldout_min_documents`` is the floor of documents in each held-out split (tune, test).

    A dataset already there is checked (``verify``: hash every file; otherwise the cheap checks
    of ``verify_dataset``) and, when corrupted, rebuilt (said on stderr). ``expected_key``
    refuses to build anything but that dataset (rebuilding one in place: its corpus must not
    have changed).
    """
    _check_arguments(
        tokenizer, vocab_size, val_fraction, heldout_min_documents, max_bytes, source_kwargs
    )
    # The corpus's stat signature comes first (no file is opened), before anything reads it: a
    # file written while this runs changes it, and the next start hashes the corpus again.
    signature = corpus_signature(corpus, max_bytes=max_bytes, **source_kwargs)
    settings = {
        "meta_version": META_VERSION,
        "format_version": FORMAT_VERSION,
        "corpus": corpus,
        "fingerprint": None,
        "tokenizer": tokenizer,
        "requested_vocab_size": vocab_size,
        "val_fraction": val_fraction,
        "heldout_min_documents": heldout_min_documents,
        "max_bytes": max_bytes,
        "source_kwargs": source_kwargs,
    }

    def key_of(fingerprint: str) -> str:
        return _key({**settings, "fingerprint": fingerprint})

    root = Path(cache_root) if cache_root is not None else default_cache_root()
    prefix = f"{_slug(corpus)}-{tokenizer}-{vocab_size}-"
    fingerprint = None
    if not verify and expected_key is None:
        # The cheap path: a dataset that recorded this signature gives the fingerprint.
        fingerprint = _remembered_fingerprint(
            [Path(out_dir)] if out_dir is not None else _cached_candidates(root, prefix),
            signature,
            key_of,
            None if out_dir is not None else prefix,
        )
    if fingerprint is None:
        fingerprint = corpus_fingerprint(corpus, max_bytes=max_bytes, **source_kwargs)
    settings["fingerprint"] = fingerprint
    key = key_of(fingerprint)
    if out_dir is None:
        out_dir = root / "datasets" / f"{prefix}{key[:12]}"
    out_dir = Path(out_dir)
    if expected_key is not None and key != expected_key:
        raise DatasetError(
            f"cannot rebuild {out_dir} as it was: its corpus {corpus!r} is not the one it was "
            f"prepared from (its content changed since). Delete {out_dir} and prepare it again"
        )
    memo = {"signature": signature, "fingerprint": fingerprint}
    existing = _read_meta(out_dir)
    corrupt = None
    if existing is not None and existing.get("key") == key:
        try:
            verify_dataset(out_dir, existing, full=verify)
            _remember_corpus(out_dir, memo)
            return out_dir
        except DatasetCorrupt as e:
            corrupt = e
            print(f"{out_dir} is corrupted ({e.reason}): rebuilding it", file=sys.stderr)
    _check_replaceable(out_dir)
    _sweep_leftovers(out_dir)

    def documents() -> Iterator[str]:
        return iter_documents(corpus, max_bytes=max_bytes, **source_kwargs)

    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        built = _build(
            tmp,
            documents,
            tokenizer,
            vocab_size,
            val_fraction,
            heldout_min_documents,
            corpus,
            progress,
        )
        meta = {**settings, "key": key, **built}
        _write_stamp(tmp, {**_read_stamp(tmp), CORPUS_MEMO: memo}, atomic=False)
        _write_meta(tmp, meta)  # last: within the folder too, its presence marks it complete
        _install(tmp, out_dir, key, replace_same_key=corrupt is not None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if corrupt is not None:
        _compare_rebuilt(out_dir, existing.get("files"), meta["files"])
    return out_dir


def _check_arguments(
    tokenizer: str,
    vocab_size: int,
    val_fraction: float,
    heldout_min_documents: int,
    max_bytes: int | None,
    source_kwargs: dict[str, Any],
) -> None:
    for key in source_kwargs:
        if key not in SOURCE_KWARGS:
            close = difflib.get_close_matches(key, SOURCE_KWARGS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unknown source option {key!r} (expected {SOURCE_KWARGS}){hint}")
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if heldout_min_documents < 1:
        raise DatasetError(f"heldout_min_documents must be >= 1, got {heldout_min_documents}")
    if vocab_size < 1:
        raise DatasetError(f"vocab_size must be >= 1, got {vocab_size}")
    if max_bytes is not None and max_bytes < 1:
        raise DatasetError(f"max_bytes must be >= 1, got {max_bytes}")
    if tokenizer == "gpt2" and vocab_size != GPT2_VOCAB:
        raise DatasetError(
            f"tokenizer 'gpt2' has a fixed vocabulary of {GPT2_VOCAB}, not {vocab_size}"
        )


def _build(
    tmp: Path,
    documents: Callable[[], Iterator[str]],
    tokenizer: str,
    vocab_size: int,
    val_fraction: float,
    heldout_min_documents: int,
    corpus: str,
    progress: bool,
) -> dict[str, Any]:
    """Write tokenizer and shards into the new folder `tmp`; return the meta besides settings."""
    started = time.perf_counter()
    # The corpus is read and parsed once: its documents go to a spill file in the new folder,
    # which the tokenizer and the encoder read back. That one pass also draws the held-out
    # floor's cuts: on a small corpus the floor moves documents out of train, and the tokenizer
    # must not see them. It also refuses a corpus without enough text (the folder is removed).
    tmp.mkdir(parents=True)
    spill = tmp / SPILL_FILE
    with open(spill, "wb") as f:
        cuts = heldout_cuts(_spilled(documents(), f), val_fraction, heldout_min_documents, corpus)
    train_docs = (d for d in _read_spill(spill) if split_of(d, val_fraction, cuts) == "train")
    if tokenizer != "gpt2":
        train_docs = tqdm(
            train_docs,
            desc="tokenizer: reading",
            unit=" docs",
            disable=None if progress else True,
            file=sys.stderr,
        )
    tok = train_tokenizer(tokenizer, train_docs, vocab_size)
    tok.save(tmp / TOKENIZER_FILE)
    splits = _encode_splits(
        tok, _read_spill(spill), tmp, lambda d: split_of(d, val_fraction, cuts), progress
    )
    spill.unlink()
    files = {TOKENIZER_FILE: _tokenizer_entry(tmp / TOKENIZER_FILE)}
    for split in SPLITS:
        files[f"{split}.bin"] = _shard_entry(tmp / f"{split}.bin")
    # The shards were hashed while written: record them as verified, so the first start does
    # not hash them again.
    stamp = {name: _signature(tmp / name) for name in files if name != TOKENIZER_FILE}
    _write_stamp(tmp, stamp, atomic=False)
    return {
        "vocab_size": tok.vocab_size,
        "doc_separator_id": tok.doc_separator_id,
        "splits": splits,
        # How the held-out splits were drawn; `val` names the test split.
        "heldout": {"cuts": cuts, "aliases": SPLIT_ALIASES},
        "files": files,
        "seconds": round(time.perf_counter() - started, 2),
        "versions": _versions(),
    }


def _spilled(docs: Iterator[str], f: BinaryIO) -> Iterator[str]:
    """Yield ``docs`` while appending each to the spill file ``f`` (length, then UTF-8)."""
    for doc in docs:
        data = doc.encode("utf-8")
        f.write(_SPILL_LENGTH.pack(len(data)))
        f.write(data)
        yield doc


def _read_spill(file: Path) -> Iterator[str]:
    """The documents of a spill file, in order."""
    with open(file, "rb", buffering=1 << 20) as f:
        while head := f.read(_SPILL_LENGTH.size):
            (n,) = _SPILL_LENGTH.unpack(head)
            yield f.read(n).decode("utf-8")


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
    _tokenizer_checked: bool = field(default=False, init=False, repr=False)

    def tokens(self, split: str) -> np.ndarray:
        """The split's tokens as a read-only memmap, checked once per process (header, size,
        vocabulary, its manifest entry, and its hash unless unchanged since last hashed; the
        tokenizer's checksum with the first split); `val` is the test split."""
        split = SPLIT_ALIASES.get(split, split)
        if split not in SPLITS:
            known = (*SPLITS, *SPLIT_ALIASES)
            raise ValueError(f"unknown split {split!r}, expected one of {known}")
        if split not in self._tokens:
            name = f"{split}.bin"
            entry = (self.meta.get("files") or {}).get(name)
            stamp = _read_stamp(self.path)
            signature = _signature(self.path / name)
            fresh = entry is not None and signature is not None and stamp.get(name) == signature
            # Without a manifest (a dataset prepared before it) every start hashes, as before.
            tokens = read_shard(
                self.path / name, expected_vocab_size=self.tokenizer.vocab_size, verify=not fresh
            )
            if entry is not None:
                _check_shard_entry(self.path, name, entry)
                if not fresh:
                    _write_stamp(self.path, {**stamp, name: signature})
            if not self._tokenizer_checked:
                _check_tokenizer(self.path, self.meta)
                self._tokenizer_checked = True
            self._tokens[split] = tokens
        return self._tokens[split]


def load_prepared(path: str | os.PathLike) -> PreparedDataset:
    """Open a directory made by ``prepare_dataset``. Opening reads the metadata and the
    tokenizer; each split is checked when first read (``PreparedDataset.tokens``). Call
    ``verify_dataset`` to check everything at once."""
    path = Path(path)
    meta = _load_meta(path)
    try:
        tokenizer = Tokenizer.load(path / TOKENIZER_FILE, kind=meta["tokenizer"])
    except (OSError, TokenizerError) as e:
        raise DatasetCorrupt(path, f"{TOKENIZER_FILE} cannot be read ({e})") from e
    return PreparedDataset(path=path, meta=meta, tokenizer=tokenizer)


def verify_dataset(
    path: str | os.PathLike, meta: dict | None = None, *, full: bool = False
) -> None:
    """Check a prepared dataset against its manifest; raise DatasetCorrupt naming the bad file.

    Always: every file is there with its recorded size, the tokenizer's checksum (a small file),
    each shard's header (its checksum is the manifest's, its length the file's). The payload
    hash of a shard (about 1 GB/s) only with ``full``, or when its size, mtime, ctime or inode
    changed since it was last hashed. A dataset prepared before manifests existed is checked in
    full only with ``full``, and then gets its manifest.
    """
    path = Path(path)
    meta = _load_meta(path) if meta is None else meta
    files = meta.get("files")
    if not files:
        if full:
            _verify_without_manifest(path, meta)
        return
    missing = sorted({TOKENIZER_FILE, *(f"{s}.bin" for s in SPLITS)} - set(files))
    if missing:
        raise DatasetCorrupt(path, f"meta.json's manifest lacks {', '.join(missing)}")
    _check_tokenizer(path, meta)
    stamp = _read_stamp(path)
    hashed = {}
    for split in SPLITS:
        name = f"{split}.bin"
        _check_shard_entry(path, name, files[name])
        signature = _signature(path / name)
        verify = full or stamp.get(name) != signature
        try:
            read_shard(path / name, expected_vocab_size=meta.get("vocab_size"), verify=verify)
        except ShardError as e:
            raise DatasetCorrupt(path, _reason(e, path)) from e
        if verify:
            hashed[name] = signature
    if hashed:
        _write_stamp(path, {**stamp, **hashed})


def rebuild_dataset(path: str | os.PathLike, progress: bool = True) -> Path:
    """Prepare the dataset at ``path`` again from the corpus and settings its meta.json records
    (a corrupted dataset given by path); refuse when that corpus changed or cannot be read."""
    path = Path(path)
    meta = _read_meta(path)
    if meta is None or "key" not in meta or "corpus" not in meta:
        raise DatasetError(
            f"{path}: meta.json is missing or unreadable, so what the dataset was prepared from "
            f"is unknown; delete {path} and prepare it again"
        )
    try:
        return prepare_dataset(
            corpus=meta["corpus"],
            tokenizer=meta["tokenizer"],
            vocab_size=meta["requested_vocab_size"],
            out_dir=path,
            val_fraction=meta["val_fraction"],
            heldout_min_documents=meta.get("heldout_min_documents", HELDOUT_MIN_DOCUMENTS),
            max_bytes=meta.get("max_bytes"),
            progress=progress,
            verify=True,
            expected_key=meta["key"],
            **meta.get("source_kwargs", {}),
        )
    except DatasetError:
        raise
    except UserError as e:  # the corpus is gone or unreadable from here
        raise DatasetError(
            f"cannot rebuild {path} from its corpus {meta['corpus']!r}: {e}. Delete {path} and "
            "prepare it again"
        ) from e


# -- manifest, stamp and meta files ---------------------------------------------------------------


def _load_meta(path: Path) -> dict:
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise DatasetMissing(
            f"{path} is not a prepared dataset (no meta.json; it may be incomplete): "
            "run prepare_dataset / `budgetlm prepare` again"
        )
    meta = _read_meta(path)
    if meta is None:
        raise DatasetCorrupt(path, "meta.json is not valid JSON")
    if meta.get("format_version") != FORMAT_VERSION or meta.get("meta_version") != META_VERSION:
        raise DatasetError(
            f"{path} was prepared by an incompatible budgetlm (format "
            f"{meta.get('format_version')}, meta {meta.get('meta_version')}); delete it and "
            "prepare it again"
        )
    return meta


def _read_meta(path: Path) -> dict | None:
    """meta.json's content, or None when it is missing or unreadable."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _write_meta(path: Path, meta: dict) -> None:
    tmp = path / f".meta.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path / "meta.json")


def _tokenizer_entry(file: Path) -> dict[str, Any]:
    return {"bytes": file.stat().st_size, "sha256": _sha256_file(file)}


def _shard_entry(file: Path) -> dict[str, Any]:
    """A shard's size and the payload checksum of its header (computed while it was written)."""
    return {"bytes": file.stat().st_size, "payload_sha256": read_header(file)["sha256"]}


def _check_tokenizer(path: Path, meta: dict) -> None:
    entry = (meta.get("files") or {}).get(TOKENIZER_FILE)
    if entry is None:
        return
    file = path / TOKENIZER_FILE
    if not file.is_file():
        raise DatasetCorrupt(path, f"{TOKENIZER_FILE} is missing")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise DatasetCorrupt(
            path, f"{TOKENIZER_FILE} has {size} bytes, the manifest says {entry['bytes']}"
        )
    if _sha256_file(file) != entry["sha256"]:
        raise DatasetCorrupt(path, f"{TOKENIZER_FILE}: checksum mismatch with the manifest")


def _check_shard_entry(path: Path, name: str, entry: dict) -> None:
    """The shard is there, of its recorded size, with its recorded payload checksum."""
    file = path / name
    if not file.is_file():
        raise DatasetCorrupt(path, f"{name} is missing")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise DatasetCorrupt(path, f"{name} has {size} bytes, the manifest says {entry['bytes']}")
    try:
        head = read_header(file)
    except ShardError as e:
        raise DatasetCorrupt(path, _reason(e, path)) from e
    if head["sha256"] != entry["payload_sha256"]:
        raise DatasetCorrupt(path, f"{name}: its header's checksum is not the manifest's")


def _verify_without_manifest(path: Path, meta: dict) -> None:
    """Check a dataset prepared before manifests in full (shard hashes, a tokenizer that loads
    and fits), then give it its manifest and stamp (best effort: the folder may be read-only)."""
    try:
        tok = Tokenizer.load(path / TOKENIZER_FILE, kind=meta["tokenizer"])
    except (OSError, TokenizerError) as e:
        raise DatasetCorrupt(path, f"{TOKENIZER_FILE} cannot be read ({e})") from e
    if tok.vocab_size != meta.get("vocab_size") or tok.doc_separator_id != meta.get(
        "doc_separator_id"
    ):
        raise DatasetCorrupt(path, f"{TOKENIZER_FILE} is not the tokenizer meta.json describes")
    files = {TOKENIZER_FILE: _tokenizer_entry(path / TOKENIZER_FILE)}
    for split in SPLITS:
        name = f"{split}.bin"
        try:
            read_shard(path / name, expected_vocab_size=tok.vocab_size, verify=True)
        except ShardError as e:
            raise DatasetCorrupt(path, _reason(e, path)) from e
        files[name] = _shard_entry(path / name)
    with contextlib.suppress(OSError):
        _write_stamp(path, {n: _signature(path / n) for n in files if n != TOKENIZER_FILE})
        _write_meta(path, {**meta, "files": files})


def _key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _cached_candidates(root: Path, prefix: str) -> list[Path]:
    """The cache's dataset folders prepared from the same corpus name, tokenizer and size."""
    return sorted((root / "datasets").glob(glob.escape(prefix) + "*"))


def _remembered_fingerprint(
    candidates: list[Path], signature: str, key_of: Callable[[str], str], prefix: str | None
) -> str | None:
    """The corpus fingerprint a candidate dataset recorded with this corpus signature (in its
    stamp), if that dataset is the one these settings and that fingerprint name (its key, and
    in the cache its folder name); else None: the corpus must be hashed."""
    for folder in candidates:
        memo = _read_stamp(folder).get(CORPUS_MEMO)
        if not isinstance(memo, dict) or memo.get("signature") != signature:
            continue
        fingerprint = memo.get("fingerprint")
        meta = _read_meta(folder)
        if not isinstance(fingerprint, str) or meta is None:
            continue
        key = key_of(fingerprint)
        if meta.get("key") == key and (prefix is None or folder.name == f"{prefix}{key[:12]}"):
            return fingerprint
    return None


def _remember_corpus(path: Path, memo: dict[str, str]) -> None:
    """Record in the stamp the corpus signature that gave this dataset's fingerprint (best
    effort), so that the next start with an unchanged corpus does not hash it."""
    stamp = _read_stamp(path)
    if stamp.get(CORPUS_MEMO) != memo:
        _write_stamp(path, {**stamp, CORPUS_MEMO: memo})


def _signature(file: Path) -> list[int] | None:
    """What changes when a file is written or replaced: size, mtime, ctime and inode."""
    try:
        st = file.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_stamp(path: Path) -> dict[str, Any]:
    try:
        stamp = json.loads((path / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _write_stamp(path: Path, stamp: dict[str, Any], atomic: bool = True) -> None:
    """Best effort: a read-only dataset folder is hashed at every start instead."""
    text = json.dumps(stamp, sort_keys=True) + "\n"
    with contextlib.suppress(OSError):
        if not atomic:  # a folder still being built, which nobody else reads
            (path / STAMP_FILE).write_text(text)
            return
        tmp = path / f".{STAMP_FILE}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.write_text(text)
        os.replace(tmp, path / STAMP_FILE)


def _reason(error: Exception, path: Path) -> str:
    """A shard error's message without the folder and the hint (DatasetCorrupt has both)."""
    return str(error).replace(f"{path}{os.sep}", "").split("; `budgetlm prepare`")[0]


def _sha256_file(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# -- building into a temporary folder, then installing it -----------------------------------------


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a folder that holds anything but (parts of) a prepared dataset."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DatasetError(f"{out_dir} is a file, not a dataset folder; give another output folder")
    others = sorted(
        p.name
        for p in out_dir.iterdir()
        if p.name not in _DATASET_NAMES and not (p.name.startswith(".") and ".tmp-" in p.name)
    )
    if others:
        more = ", ..." if len(others) > 3 else ""
        raise DatasetError(
            f"{out_dir} holds files that are not part of a prepared dataset "
            f"({', '.join(others[:3])}{more}); give another output folder, or move them away"
        )


def _install(tmp: Path, out_dir: Path, key: str, replace_same_key: bool) -> None:
    """Rename the finished folder `tmp` to `out_dir`, replacing what is there (incomplete,
    corrupted, or another dataset), unless a racing process already installed this one."""
    trash = None
    if out_dir.exists():
        there = _read_meta(out_dir)
        if there is not None and there.get("key") == key and not replace_same_key:
            shutil.rmtree(tmp, ignore_errors=True)  # the same build, finished first elsewhere
            return
        _check_replaceable(out_dir)
        trash = out_dir.with_name(f".{out_dir.name}.old-{_host()}-{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(out_dir, trash)
        except FileNotFoundError:
            trash = None
    try:
        os.rename(tmp, out_dir)
    except OSError:
        there = _read_meta(out_dir)
        if there is None or there.get("key") != key:
            if trash is not None:
                with contextlib.suppress(OSError):
                    os.rename(trash, out_dir)
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a racing process installed the same dataset
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _sweep_leftovers(out_dir: Path) -> None:
    """Remove the temporary folders of builds of `out_dir` that died (this host's, by pid)."""
    if not out_dir.parent.is_dir():
        return
    stem = glob.escape(f".{out_dir.name}.")
    for left in out_dir.parent.glob(f"{stem}tmp-*"):
        host, _, rest = left.name.rpartition(".tmp-")[2].partition("-")
        pid = rest.partition("-")[0]
        if host == _host() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)
    for left in out_dir.parent.glob(f"{stem}old-*"):
        host, _, pid = left.name.rpartition(".old-")[2].partition("-")
        if host == _host() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _compare_rebuilt(out_dir: Path, old: dict | None, new: dict) -> None:
    """Say when a rebuilt dataset is not byte for byte the one it replaced (built by other
    library versions): runs trained on the old one would continue on different tokens."""
    if not old:
        return
    changed = sorted(name for name in new if old.get(name) not in (None, new[name]))
    if changed:
        print(
            f"warning: the rebuilt {out_dir} differs from the dataset it replaced in "
            f"{', '.join(changed)} (prepared by other library versions?); runs trained on the "
            "old one would continue on other tokens",
            file=sys.stderr,
        )
    else:
        print(f"{out_dir}: rebuilt, identical to the dataset it replaced", file=sys.stderr)


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
