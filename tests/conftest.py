"""Test-wide setup: offline, temporary caches, and prepared fixture datasets shared per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Set before anything imports huggingface libraries: a stray hub call otherwise retries for ~50 s.
_CACHE = Path(tempfile.mkdtemp(prefix="budgetlm-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["HF_HOME"] = str(_CACHE / "hf")
os.environ["BUDGETLM_CACHE"] = str(_CACHE / "budgetlm")

# One thread: tiny models gain little from two, and two threads on a busy 2-core machine
# oversubscribe it badly (a test file measured 26 s on one thread, 207 s on two under load).
torch.set_num_threads(1)

# The tokenizer each model family trains with, and the tiny vocabulary used in tests.
FAMILY_TOKENIZER = {"gpt": "bpe", "bert": "wordpiece", "t5": "unigram"}
TEST_VOCAB = 2048


@pytest.fixture(scope="session")
def prepared_dataset():
    """Return a function family -> path of the fixture corpus prepared for that family (cached)."""
    from budgetlm.data.prepare import prepare_dataset

    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = prepare_dataset(
                corpus="fixture",
                tokenizer=FAMILY_TOKENIZER[family],
                vocab_size=TEST_VOCAB,
                cache_root=_CACHE / "budgetlm",
                progress=False,
            )
        return made[family]

    return get
