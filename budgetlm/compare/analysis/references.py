"""Regime references of a grid: what a unigram and a bigram count model score on the held-out
targets the cells are judged on, fitted on as many training tokens as the baseline saw
(docs/compare.md, "Regime references").

``references.json`` in the compare folder maps each budget string to::

    {"unigram": float, "bigram": float | null, "tokens": int, "split": "test" | "val",
     "note": str}

Keys that start with ``_`` are bookkeeping, not budgets: ``_inputs`` records per budget what
its entry was computed from (dataset key, training tokens, objective, windows, format) so an
unchanged budget is not recomputed, and ``_skipped`` says why a budget has no entry yet.

Which numbers:

- ``tokens``: training tokens the baseline saw at that budget, ``summary.json`` ``spent.tokens``
  averaged over its finished judged seeds (they agree unless the budget is wall-clock), capped at
  the training split (and at ``MAX_TRAIN_TOKENS``); the counts come from that prefix.
- causal LM (GPT): ``unigram`` (add-one) and ``bigram`` (interpolated absolute discounting),
  scored on exactly the next-token targets of the held-out windows the cells' loss averages.
- masked LM (BERT) and span corruption (T5): ``unigram`` only, fitted on the label tokens of the
  objective's windows over the prefix and scored on the labels of the exact held-out batches the
  cells are judged on (the masked positions; the sentinels, hidden spans and eos). ``bigram`` is
  null: these models see both sides of a target, so a left-to-right bigram is not the quantity
  their loss measures.

Only this module's functions import the data layer (and with it torch): the report imports
`read_references` without loading torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from budgetlm.compare.analysis import ngram
from budgetlm.compare.analysis.results import judged_cells, read_cell
from budgetlm.compare.run.experiment import Experiment

REFERENCES_FILE = "references.json"
FORMAT = 1  # bump when an estimator or a definition changes: cached entries are recomputed
INPUTS_KEY = "_inputs"
SKIPPED_KEY = "_skipped"
# A bigram's estimate barely moves past ~10M tokens, while the sort behind it grows in memory:
# beyond this prefix the references use the first MAX_TRAIN_TOKENS and say so.
MAX_TRAIN_TOKENS = 2**24
FAMILY_OBJECTIVE = {"gpt": "causal_lm", "bert": "mlm", "t5": "span_corruption"}
_TRAIN_MASK_SEED = 0  # masks of the training windows whose labels the unigram counts
_CHUNK = 512  # windows per make_batch call when collecting labels


@dataclass(frozen=True)
class _Plan:
    """What one budget's references are computed from (all read from the cells' files)."""

    budget: str
    dataset_path: str
    inputs: dict[str, Any]  # the cache key: equal inputs give equal references
    eval_batch_size: int
    eval_batches: int


# -- reading -------------------------------------------------------------------------------------


def references_path(out_dir: Path) -> Path:
    return Path(out_dir) / REFERENCES_FILE


def read_references(
    out_dir: Path, budgets: tuple[str, ...]
) -> tuple[dict[str, dict[str, Any]], str]:
    """The report's view of ``references.json`` in ``out_dir``: per budget of ``budgets`` the
    unigram and bigram held-out losses (the bigram is null for masked and span
    objectives); keys starting with "_" are its bookkeeping. Missing: nothing. Malformed:
    nothing and a note saying why, so that a bad optional file shows on the page instead of
    failing the report."""
    path = references_path(out_dir)
    if not path.is_file():
        return {}, ""
    out = {}
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a mapping of budget -> references")
        for budget, ref in raw.items():
            if str(budget).startswith("_"):
                continue
            if not isinstance(ref, dict):
                raise ValueError(f"{budget!r}: not a mapping")
            out[str(budget)] = {
                "unigram": float(ref["unigram"]),
                "bigram": None if ref.get("bigram") is None else float(ref["bigram"]),
                "tokens": None if ref.get("tokens") is None else int(ref["tokens"]),
                "split": str(ref.get("split") or "?"),
                "note": str(ref.get("note") or ""),
            }
    except (ValueError, KeyError, TypeError) as e:
        return {}, f"{REFERENCES_FILE} could not be read ({e}); no n-gram references are shown"
    unknown = sorted(set(out) - set(budgets))
    note = f"{REFERENCES_FILE} has budgets this experiment lacks: {', '.join(unknown)}"
    return {b: out[b] for b in budgets if b in out}, note if unknown else ""


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or torn: recompute rather than fail a report or a grid
    return raw if isinstance(raw, dict) else {}


# -- computing -----------------------------------------------------------------------------------


def compute_references(exp: Experiment, out_dir: Path) -> dict[str, Any]:
    """The content of ``references.json`` for the grid in ``out_dir``: one entry per budget whose
    baseline has a finished judged cell, reusing the entries of an existing file whose inputs
    are unchanged."""
    out_dir = Path(out_dir)
    previous = _read_file(references_path(out_dir))
    previous_inputs = previous.get(INPUTS_KEY, {})
    result: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    judged = judged_cells(exp, out_dir)
    datasets: dict[str, Any] = {}  # path -> PreparedDataset, opened once per grid
    for budget in exp.budgets:
        plan = _plan(exp, out_dir, budget, judged.get((exp.baseline, budget)))
        if isinstance(plan, str):
            skipped[budget] = plan
            continue
        cached = previous.get(budget)
        if isinstance(cached, dict) and previous_inputs.get(budget) == plan.inputs:
            result[budget], inputs[budget] = cached, plan.inputs
            continue
        try:
            result[budget] = _compute(plan, datasets)
        except (OSError, ValueError) as e:  # a moved cache, a corrupt shard: say so, go on
            skipped[budget] = f"{type(e).__name__}: {e}"
            continue
        inputs[budget] = plan.inputs
    result[INPUTS_KEY] = inputs
    if skipped:
        result[SKIPPED_KEY] = skipped
    return result


def write_references(exp: Experiment, out_dir: Path) -> Path:
    """Compute (or reuse) the references and write ``references.json``; return its path.

    The bytes depend only on the inputs (sorted keys, no timestamps), and an unchanged file is
    not rewritten, so re-running a finished grid leaves it untouched.
    """
    path = references_path(out_dir)
    text = json.dumps(compute_references(exp, out_dir), indent=2, sort_keys=True) + "\n"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(f".{REFERENCES_FILE}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)  # a reader never sees half a file
    return path


def _plan(exp: Experiment, out_dir: Path, budget: str, cells: list | None) -> _Plan | str:
    """The inputs of one budget's references, or why there are none yet."""
    if cells is None:
        return f"the baseline's LR tuning at {budget} is unfinished"
    results = [read_cell(c, out_dir, with_curve=False) for c in cells]
    finished = [r for r in results if r.status == "finished" and r.summary]
    if not finished:
        return f"no finished baseline cell at {budget} yet"
    spent = [r.summary.get("spent", {}).get("tokens") for r in finished]
    if any(not isinstance(t, (int, float)) or t <= 0 for t in spent):
        return f"a baseline cell at {budget} records no training tokens (spent.tokens)"
    first = finished[0]  # every judged seed shares the data and the model shape
    meta = first.meta or {}
    dataset, shape = meta.get("dataset") or {}, meta.get("shape") or {}
    if not dataset.get("path") or not shape.get("seq_len") or not shape.get("family"):
        return f"{first.run_dir / 'meta.json'} records no dataset path or model shape"
    config = _config(first.run_dir)
    if not config.get("train", {}).get("batch_size"):
        return f"{first.run_dir / 'config.yaml'} is missing (or sets no train.batch_size)"
    data, train = config.get("data", {}), config["train"]
    objective = data.get("objective") or FAMILY_OBJECTIVE[shape["family"]]
    split = _judged_split(train.get("eval_split"), dataset.get("splits") or {})
    batch = train.get("eval_batch_size") or train.get("micro_batch_size") or train["batch_size"]
    inputs: dict[str, Any] = {
        "format": FORMAT,
        "dataset": dataset.get("key"),
        "tokens": round(sum(spent) / len(spent)),
        "objective": objective,
        "seq_len": int(shape["seq_len"]),
        "split": split,
        "windows": int(batch) * int(train.get("eval_batches", 8)),
    }
    if objective == "mlm":
        inputs["params"] = {"mask_prob": data.get("mask_prob", 0.15)}
    elif objective == "span_corruption":
        inputs["params"] = {
            "noise_density": data.get("noise_density", 0.15),
            "mean_span": data.get("mean_span", 3.0),
        }
    if objective != "causal_lm":
        inputs["eval_seed"] = int(train.get("eval_seed", 1234))  # fixes the held-out masks
    return _Plan(budget, dataset["path"], inputs, int(batch), int(train.get("eval_batches", 8)))


def _judged_split(eval_split: str | None, splits: dict[str, Any]) -> str:
    """The split the judged cells' loss is on: their `train.eval_split`, with `val` read as
    `test` on a dataset that has one (its old name there); cells from before eval_split existed
    were judged on `test` if the dataset has it, else on `val`."""
    if eval_split and eval_split != "val":
        return eval_split
    return "test" if "test" in splits else "val"


def _config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _compute(plan: _Plan, datasets: dict[str, Any]) -> dict[str, Any]:
    from budgetlm.data import load_prepared  # torch: only when references are computed

    if plan.dataset_path not in datasets:
        datasets[plan.dataset_path] = load_prepared(plan.dataset_path)
    ds = datasets[plan.dataset_path]
    inputs = plan.inputs
    train, heldout = ds.tokens("train"), ds.tokens(inputs["split"])
    n_train = min(inputs["tokens"], len(train), MAX_TRAIN_TOKENS)
    vocab = ds.tokenizer.vocab_size
    seen = _seen_note(inputs["tokens"], len(train), n_train)
    if inputs["objective"] == "causal_lm":
        refs = ngram.causal_lm_references(
            train, heldout, vocab, inputs["seq_len"], n_train, inputs["windows"]
        )
        return {
            "unigram": refs.unigram,
            "bigram": refs.bigram,
            "tokens": refs.train_tokens,
            "split": inputs["split"],
            "note": (
                f"causal LM: add-one unigram and interpolated absolute-discounting bigram "
                f"(D={refs.discount:.3f}) counted on the first {refs.train_tokens:,} training "
                f"tokens{seen}, scored on the {refs.targets:,} next-token targets of the judged "
                f"{inputs['split']} windows"
            ),
        }
    train_targets, held_targets = _label_targets(ds, plan, train[:n_train], heldout)
    unigram = ngram.unigram_nll(ngram.unigram_logprobs(train_targets, vocab), held_targets)
    what = (
        "masked tokens" if inputs["objective"] == "mlm" else "target tokens (sentinels, spans, eos)"
    )
    return {
        "unigram": unigram,
        "bigram": None,
        "tokens": int(n_train),
        "split": inputs["split"],
        "note": (
            f"{inputs['objective']}: add-one unigram of the {what} of the training windows in "
            f"the first {n_train:,} tokens{seen}, scored on the {held_targets.size:,} "
            f"{what} of the judged {inputs['split']} batches; no bigram: the model sees both "
            "sides of each target, so a left-context bigram is not the quantity its loss measures"
        ),
    }


def _seen_note(requested: int, available: int, used: int) -> str:
    if used == requested:
        return ""
    if used == available:
        return f" (the whole training split: the baseline saw {requested:,}, repeating it)"
    return f" (capped: the baseline saw {requested:,})"


def _label_targets(
    ds: Any, plan: _Plan, train: np.ndarray, heldout: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Label tokens (-100 dropped) of the objective's windows over ``train`` (masks seeded by
    a fixed seed: they only need to be a fair sample) and of the judged held-out batches (masks
    seeded by the cells' ``train.eval_seed``: the very positions their loss is over)."""
    from budgetlm.data import eval_batches, make_objective
    from budgetlm.data.objectives import IGNORE_INDEX

    inputs = plan.inputs
    objective = make_objective(
        inputs["objective"], ds.tokenizer, inputs["seq_len"], **inputs.get("params", {})
    )
    n_windows = objective.num_examples(len(train))
    if n_windows == 0:
        raise ValueError(
            f"{len(train)} training tokens hold no {objective.name} window of "
            f"{objective.raw_length} tokens"
        )
    train_labels = []
    for start in range(0, n_windows, _CHUNK):
        ids = np.arange(start, min(start + _CHUNK, n_windows), dtype=np.int64)
        rngs = [np.random.default_rng([_TRAIN_MASK_SEED, int(i)]) for i in ids]
        train_labels.append(objective.make_batch(train, ids, rngs)["labels"].numpy().reshape(-1))
    held = eval_batches(
        heldout, objective, plan.eval_batch_size, plan.eval_batches, seed=inputs["eval_seed"]
    )
    held_labels = np.concatenate([b["labels"].numpy().reshape(-1) for b in held])
    train_all = np.concatenate(train_labels)
    return train_all[train_all != IGNORE_INDEX], held_labels[held_labels != IGNORE_INDEX]
