"""Contamination check: does any evaluation text share a long word n-gram with the pre-training
corpus? (The 13-gram rule of the GPT-3 paper's contamination study.) Texts are compared after
lower-casing and keeping only letters and digits, so punctuation and spacing differences
(Rotten Tomatoes is tokenised, IMDB is not) do not hide a copy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from budgetlm.finetune.tasks import Example

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[int]:
    w = words(text)
    return {hash(tuple(w[i : i + n])) for i in range(len(w) - n + 1)}


def contaminated(
    examples: Iterable[Example], corpus: Iterable[str], n: int = 13, min_words: int = 8
) -> list[Example]:
    """Examples with at least one n-gram that also occurs in the corpus. Examples of
    `min_words` to n words are compared whole; shorter ones ("a very funny movie .") are
    common phrases, not evidence of a copy, and are not checked."""
    examples = list(examples)
    wanted: dict[int, list[int]] = {}
    sizes: set[int] = set()
    for i, ex in enumerate(examples):
        text = f"{ex.text_a} {ex.text_b or ''}"
        size = len(words(text))
        if size < min_words:
            continue
        sizes.add(min(size, n))
        for g in ngrams(text, min(size, n)):
            wanted.setdefault(g, []).append(i)
    lengths = sorted(sizes)
    hits: set[int] = set()
    for doc in corpus:
        w = words(doc)
        for size in lengths:
            for start in range(len(w) - size + 1):
                found = wanted.get(hash(tuple(w[start : start + size])))
                if found:
                    hits.update(found)
    return [examples[i] for i in sorted(hits)]
