"""Tests for compare.analysis.references: a grid's regime references and references.json.

Cells are planted by hand (tests/compare/planted.py) and pointed at the prepared fixture
datasets, so the references are computed on real text without training anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from budgetlm.compare.analysis import ngram, references
from budgetlm.compare.run.experiment import Cell, Experiment
from tests.compare.planted import plant_cell, planted_experiment

ENTRY_KEYS = {"unigram", "bigram", "tokens", "split", "note"}
PRESET = {"gpt": "gpt-tiny", "bert": "bert-tiny", "t5": "t5-tiny"}
FAMILY_OBJECTIVE = {"bert": "mlm", "t5": "span_corruption"}


def plant_baseline(
    exp: Experiment,
    out: Path,
    cell: Cell,
    dataset: Path,
    tokens: float,
    family: str = "gpt",
    moved_to: Path | None = None,
    loss: float = 3.0,
) -> Path:
    """A finished cell that saw `tokens` training tokens of the prepared `dataset`, with the
    meta.json a real run writes (the dataset's path and meta, the model shape); `moved_to`
    records another path, as when the dataset cache moved after the run."""
    run_dir = plant_cell(exp, out, cell, loss)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["spent"]["tokens"] = tokens
    (run_dir / "summary.json").write_text(json.dumps(summary))
    meta = json.loads((run_dir / "meta.json").read_text())
    recorded = str(moved_to or dataset)
    meta["dataset"] = {"path": recorded, **json.loads((dataset / "meta.json").read_text())}
    meta["shape"] = {"family": family, "seq_len": 128}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    return run_dir


def judged_split(exp: Experiment, out: Path) -> str:
    """The held-out split cells are judged on: test where the prepared dataset has one (the
    tune/test split), else the older single val split."""
    meta = json.loads(
        (out / "cells" / Cell(exp.baseline, exp.budgets[0], 1).id / "meta.json").read_text()
    )
    return "test" if "test" in meta["dataset"]["splits"] else "val"


@pytest.fixture
def grid(tmp_path, prepared_dataset):
    """Baseline and one other arm, two budgets, two seeds; the baseline saw 2,000 / 2,002
    tokens at 20steps and 30,000 at 80steps; the other arm saw more (which must not count)."""
    out = tmp_path / "compare"
    exp = planted_experiment(
        out,
        {
            "budgets": ["20steps", "80steps"],
            "seeds": [1, 2],
            "arms": [{"name": "baseline"}, {"name": "other"}],
        },
    )
    data = prepared_dataset("gpt")
    for seed, tokens in ((1, 2_000), (2, 2_002)):
        plant_baseline(exp, out, Cell("baseline", "20steps", seed), data, tokens)
        plant_baseline(exp, out, Cell("other", "20steps", seed), data, 40_000)
    for seed in (1, 2):
        plant_baseline(exp, out, Cell("baseline", "80steps", seed), data, 30_000)
    return exp, out


def test_shape_tokens_and_more_data_gives_a_better_bigram(grid):
    exp, out = grid
    refs = references.compute_references(exp, out)
    budgets = {k for k in refs if not k.startswith("_")}
    assert budgets == {"20steps", "80steps"}
    for budget in budgets:
        entry = refs[budget]
        assert set(entry) == ENTRY_KEYS
        assert isinstance(entry["unigram"], float) and isinstance(entry["bigram"], float)
        assert isinstance(entry["tokens"], int) and isinstance(entry["note"], str)
        assert entry["split"] == judged_split(exp, out)
        assert entry["bigram"] < entry["unigram"]
    assert refs["20steps"]["tokens"] == 2_001  # the mean over the baseline's seeds only
    assert refs["80steps"]["tokens"] == 30_000
    assert refs["80steps"]["bigram"] <= refs["20steps"]["bigram"]
    assert refs["_inputs"]["20steps"]["tokens"] == 2_001
    assert "_skipped" not in refs


def test_values_are_the_ngram_references_of_the_judged_windows(grid, prepared_dataset):
    from budgetlm.data import load_prepared

    exp, out = grid
    refs = references.compute_references(exp, out)
    ds = load_prepared(prepared_dataset("gpt"))
    # The cells evaluate eval_batches batches of batch_size windows (no eval_batch_size set).
    cfg = exp.config_for(Cell("baseline", "80steps", 1), out)
    windows = cfg.train.eval_batches * cfg.train.batch_size
    assert refs["_inputs"]["80steps"]["windows"] == windows
    split = judged_split(exp, out)
    direct = ngram.causal_lm_references(
        ds.tokens("train"), ds.tokens(split), ds.tokenizer.vocab_size, 128, 30_000, windows
    )
    assert refs["80steps"]["unigram"] == pytest.approx(direct.unigram)
    assert refs["80steps"]["bigram"] == pytest.approx(direct.bigram)


def test_written_file_is_cached_until_its_inputs_change(grid, monkeypatch):
    exp, out = grid
    path = references.write_references(exp, out)
    assert path == out / "references.json"
    written = json.loads(path.read_text())
    read, note = references.read_references(out, exp.budgets)
    assert note == ""
    for budget in ("20steps", "80steps"):
        assert read[budget] == {k: written[budget][k] for k in read[budget]}

    computed: list[str] = []
    real = references._compute

    def counting(plan, datasets):
        computed.append(plan.budget)
        return real(plan, datasets)

    monkeypatch.setattr(references, "_compute", counting)
    references.write_references(exp, out)
    assert computed == []  # unchanged inputs: nothing recomputed
    assert json.loads(path.read_text()) == written

    # The baseline's second seed at 80steps now reports more tokens: only that budget changes.
    summary_path = out / "cells" / Cell("baseline", "80steps", 2).id / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["spent"]["tokens"] = 40_000
    summary_path.write_text(json.dumps(summary))
    references.write_references(exp, out)
    assert computed == ["80steps"]
    again = json.loads(path.read_text())
    assert again["80steps"]["tokens"] == 35_000
    assert again["20steps"] == written["20steps"]


def test_budgets_without_a_finished_baseline_are_skipped_with_a_reason(tmp_path, prepared_dataset):
    out = tmp_path / "compare"
    exp = planted_experiment(
        out,
        {
            "budgets": ["20steps", "40steps", "80steps"],
            "seeds": [1, 2],
            "arms": [{"name": "baseline", "lr_grid": [1e-3, 3e-3, 1e-2]}],
            "tuning": {"seeds": [9]},  # LRs are chosen on seed 9, judged on seeds 1 and 2
        },
    )
    data = prepared_dataset("gpt")

    def tune(budget: str, done: bool = True, **kw) -> None:
        """Seed 9's LR grid: 3e-3 best, 1e-2 diverged (so 3e-3 is bracketed), or half run."""
        plant_baseline(exp, out, Cell("baseline", budget, 9, 1e-3), data, 9_999, loss=3.2)
        plant_baseline(exp, out, Cell("baseline", budget, 9, 3e-3), data, 9_999, loss=3.0)
        if done:
            plant_cell(exp, out, Cell("baseline", budget, 9, 1e-2), None, error="diverged")

    # 20steps: tuned; of the judged seeds at 3e-3, seed 2 failed.
    tune("20steps")
    plant_baseline(exp, out, Cell("baseline", "20steps", 1, 3e-3), data, 2_000)
    plant_cell(exp, out, Cell("baseline", "20steps", 2, 3e-3), None, error="diverged")
    # 40steps: the LR grid is not finished.
    tune("40steps", done=False)
    # 80steps: tuned and a judged seed finished, but its dataset has gone since.
    tune("80steps")
    gone = out / "gone"
    plant_baseline(exp, out, Cell("baseline", "80steps", 1, 3e-3), data, 8_000, moved_to=gone)
    refs = references.compute_references(exp, out)
    assert set(refs["20steps"]) == ENTRY_KEYS
    assert refs["20steps"]["tokens"] == 2_000  # neither the failed nor the tuning seed
    assert "LR tuning" in refs["_skipped"]["40steps"]
    assert "is not a prepared dataset" in refs["_skipped"]["80steps"]  # its data moved away
    assert {k for k in refs if not k.startswith("_")} == {"20steps"}


def test_no_finished_baseline_cell(tmp_path):
    out = tmp_path / "compare"
    exp = planted_experiment(out, {"seeds": [1], "arms": [{"name": "baseline"}]})
    refs = references.compute_references(exp, out)
    assert refs == {
        "_inputs": {},
        "_skipped": {"20steps": "no finished baseline cell at 20steps yet"},
    }


def test_tokens_beyond_the_training_split_use_all_of_it(grid, prepared_dataset):
    exp, out = grid
    n_train = json.loads((prepared_dataset("gpt") / "meta.json").read_text())["splits"]["train"]
    for seed in (1, 2):
        plant_baseline(exp, out, Cell("baseline", "80steps", seed), prepared_dataset("gpt"), 10**6)
    entry = references.compute_references(exp, out)["80steps"]
    assert entry["tokens"] == n_train["n_tokens"]
    assert "whole training split" in entry["note"]


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_masked_and_span_objectives_get_a_unigram_only(tmp_path, prepared_dataset, family):
    from budgetlm.data import eval_batches, load_prepared, make_objective

    out = tmp_path / "compare"
    exp = planted_experiment(
        out,
        {
            "config": {"model": {"preset": PRESET[family]}, "data": {"vocab_size": 2048}},
            "seeds": [1],
            "arms": [{"name": "baseline"}],
        },
    )
    data = prepared_dataset(family)
    plant_baseline(exp, out, Cell("baseline", "20steps", 1), data, 20_000, family=family)
    entry = references.compute_references(exp, out)["20steps"]
    assert set(entry) == ENTRY_KEYS
    assert entry["bigram"] is None
    assert "no bigram" in entry["note"]
    ds = load_prepared(data)
    vocab = ds.tokenizer.vocab_size
    assert 0 < entry["unigram"] < math.log(vocab)
    # Written out from the data layer: counts from the labels of the objective's windows over
    # the first 20,000 training tokens (masks from default_rng([0, window])), scored on the
    # labels of the cells' own held-out batches (the config's eval batches and eval_seed).
    cfg = exp.config_for(Cell("baseline", "20steps", 1), out)
    params = (
        {"mask_prob": cfg.data.mask_prob}
        if family == "bert"
        else {"noise_density": cfg.data.noise_density, "mean_span": cfg.data.mean_span}
    )
    objective = make_objective(FAMILY_OBJECTIVE[family], ds.tokenizer, 128, **params)
    train = ds.tokens("train")[:20_000]
    ids = np.arange(objective.num_examples(len(train)))
    rngs = [np.random.default_rng([0, int(i)]) for i in ids]
    train_labels = objective.make_batch(train, ids, rngs)["labels"].numpy().ravel()
    held = eval_batches(
        ds.tokens(entry["split"]),
        objective,
        cfg.train.batch_size,
        cfg.train.eval_batches,
        seed=cfg.train.eval_seed,
    )
    held_labels = np.concatenate([b["labels"].numpy().ravel() for b in held])
    expected = ngram.unigram_nll(
        ngram.unigram_logprobs(train_labels[train_labels != -100], vocab),
        held_labels[held_labels != -100],
    )
    assert entry["unigram"] == pytest.approx(expected, rel=1e-12)
    assert f"{int(np.sum(held_labels != -100)):,}" in entry["note"]


def test_a_cell_without_its_config_is_skipped(grid):
    exp, out = grid
    for seed in (1, 2):  # the first finished seed is the one read
        (out / "cells" / Cell("baseline", "80steps", seed).id / "config.yaml").unlink()
    refs = references.compute_references(exp, out)
    assert "config.yaml" in refs["_skipped"]["80steps"]
    assert "80steps" not in refs and "20steps" in refs


def test_reading_references_imports_no_torch(grid):
    """`budgetlm report` reads references.json torch-free: only computing them loads the data."""
    import subprocess
    import sys

    exp, out = grid
    references.write_references(exp, out)
    code = (
        "import sys\n"
        "from budgetlm.compare.analysis import ngram, references\n"
        f"read, _ = references.read_references({str(out)!r}, {tuple(exp.budgets)!r})\n"
        "assert set(read) == {'20steps', '80steps'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("eval_split", "splits", "expected"),
    [
        ("test", {"train": {}, "tune": {}, "test": {}}, "test"),
        ("val", {"train": {}, "tune": {}, "test": {}}, "test"),  # val is test's old name
        (None, {"train": {}, "tune": {}, "test": {}}, "test"),  # a cell from before eval_split
        (None, {"train": {}, "val": {}}, "val"),  # a dataset from before tune/test
        ("val", {"train": {}, "val": {}}, "val"),
    ],
)
def test_the_judged_split(eval_split, splits, expected):
    assert references._judged_split(eval_split, splits) == expected
