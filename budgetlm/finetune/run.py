"""Fine-tune a pre-training run's final model on a suite; write the scores into the run.

Results go to `<run>/finetune/<suite>.json`: the protocol, per task the reported score of
every fine-tuning seed (mean ± std), the majority-class baseline, the per-epoch curves, the rows
the loaders skipped, and the suite average of the tasks' main metrics. A later call's tasks are
merged into the file (`budgetlm.finetune.store`). `budgetlm compare` reports find them there.
`finetune_suite` is the one loop over tasks and seeds; `finetune_run` feeds it a run's
pre-trained model, `budgetlm.finetune.control` a randomly initialised one (the control).

Nothing is trained before every requested task's data has been loaded and checked
(`load_suite`) and the results folder has been created and found writable: bad input fails at
once with a TaskError / ResultsError (exit 2) instead of after hours of training.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from budgetlm.finetune.instructions.protocol import is_instruction_suite
from budgetlm.finetune.loop import Protocol, TaskResult, finetune_task
from budgetlm.finetune.store import (
    ResultsError,
    merge_conflict,
    merge_results,
    prepare_results_dir,
    read_results,
    read_suite,
    results_path,
    write_json_atomic,
    write_results,
)
from budgetlm.finetune.suites import suite_tasks, task_loader
from budgetlm.finetune.tasks import MAX_DROPPED, DroppedRowsWarning, TaskData, TaskError


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_backbone(run_dir: Path) -> tuple[nn.Module, Any]:
    """The newest complete checkpoint's model of a run, and the run's tokenizer."""
    from budgetlm.train.saved_run import load_run_model

    run = load_run_model(Path(run_dir))
    return run.model, run.data.dataset.tokenizer


def _summarise(results: list[TaskResult]) -> dict[str, Any]:
    main = results[0].main_metric
    values = [r.reported[main] for r in results]
    return {
        "main_metric": main,
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "seeds": [r.seed for r in results],
        "reported": [r.reported for r in results],
        "epochs": [r.epochs for r in results],
        "majority": results[0].majority,
        "train_examples": results[0].train_examples,
        "eval_examples": results[0].eval_examples,
        "seconds": sum(r.seconds for r in results),
    }


def check_tasks(suite: str, tasks: Sequence[str] | None) -> list[str]:
    """The tasks to fine-tune on (every task of the suite by default, each once); unknown ones
    refused."""
    known = suite_tasks(suite)
    chosen = list(dict.fromkeys(tasks or known))
    unknown = [t for t in chosen if t not in known]
    if unknown:
        raise TaskError(f"suite {suite!r} has no task {unknown} (tasks: {', '.join(known)})")
    return chosen


def check_task_data(data: TaskData, max_dropped: float = MAX_DROPPED) -> None:
    """Refuse a task that cannot be fine-tuned: an empty train or validation split, or a split
    of which the loader skipped more than `max_dropped` of the rows as malformed."""
    where = f" ({data.source})" if data.source else ""
    for split in ("train", "validation"):
        if not getattr(data, split):
            raise TaskError(f"{data.spec.name}: the {split} split has no examples{where}")
    for split, dropped in data.dropped.items():
        total = dropped + len(getattr(data, split, []))
        if dropped > max_dropped * total:
            need = math.ceil(100 * dropped / total) / 100
            raise TaskError(
                f"{data.spec.name}: {data.dropped_reasons.get(split, f'{dropped} rows skipped')}"
                f": more than {max_dropped:.0%} of the {split} split is malformed; fix the file, "
                f"or pass --max-dropped {need:g} to fine-tune on the rest"
            )


def load_suite(
    suite: str,
    tasks: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    *,
    max_dropped: float = MAX_DROPPED,
    notify: Callable[[str], None] = _note,
) -> dict[str, TaskData]:
    """Load and check every requested task before any of them is trained. All problems are
    collected and raised as one TaskError (each names its file and line); skipped rows below
    the threshold are reported through `notify` and recorded in the results."""
    if not 0 <= max_dropped <= 1:
        raise TaskError(f"max_dropped is a fraction of a split's rows, 0 to 1, not {max_dropped}")
    chosen = check_tasks(suite, tasks)
    load = task_loader(suite, data_dir)
    loaded: dict[str, TaskData] = {}
    problems: list[str] = []
    for task in chosen:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DroppedRowsWarning)  # reported below, once
                data = load(task)
            check_task_data(data, max_dropped)
        except (TaskError, FileNotFoundError) as e:
            problems.append(str(e))
            continue
        loaded[task] = data
    if len(problems) == 1:
        raise TaskError(f"{problems[0]} (nothing was fine-tuned)")
    if problems:
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        raise TaskError(f"{len(problems)} tasks cannot be fine-tuned, so none was: {listed}")
    for data in loaded.values():
        for split, reason in data.dropped_reasons.items():
            notify(f"warning: {data.spec.name} {split}: skipped {reason}")
    return loaded


def _task_entry(data: TaskData, results: list[TaskResult]) -> dict[str, Any]:
    entry: dict[str, Any] = {"sizes": data.sizes(), "dropped": data.dropped_counts()}
    if data.dropped_reasons:
        entry["dropped_reasons"] = dict(data.dropped_reasons)
    if data.source:
        entry["source"] = data.source
    entry.update(_summarise(results))
    entry["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return entry


def _check_results(out_dir: Path, suite: str, head: dict[str, Any], tasks: Sequence[str]) -> None:
    """Before training: the results folder is writable and the new tasks can be merged into
    what it already holds."""
    prepare_results_dir(out_dir)
    old = read_suite(out_dir, suite)
    why = merge_conflict(old, head, tasks) if old is not None else None
    if why:
        raise ResultsError(f"{results_path(out_dir, suite)}: {why} (nothing was fine-tuned)")


def _save(
    out_dir: Path,
    suite: str,
    head: dict[str, Any],
    done: dict[str, dict[str, Any]],
    started: str,
) -> dict[str, Any]:
    """Merge this call's finished tasks into the stored results (read again now, in case another
    call wrote meanwhile) and write them atomically."""
    new = {
        **head,
        "tasks": done,
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    old = read_suite(out_dir, suite)
    if old is not None and merge_conflict(old, head, list(done)):
        # Another call stored results under other settings while this one trained: keep this
        # call's scores next to them (not as *.json, which readers take for a suite).
        path = results_path(out_dir, suite)
        aside = write_json_atomic(path.with_name(f"{path.name}.conflict-{time.time_ns()}"), new)
        raise ResultsError(
            f"{path} was rewritten under other settings while this call trained; "
            f"its scores are in {aside}"
        )
    merged = merge_results(old, new, suite_tasks(suite))
    write_results(out_dir, suite, merged)
    return merged


def finetune_suite(
    backbone_for: Callable[[int], nn.Module],
    tokenizer: Any,
    suite: str,
    out_dir: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] = (1,),
    protocol: Protocol | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    record: dict[str, Any] | None = None,
    loaded: Mapping[str, TaskData] | None = None,
    max_dropped: float = MAX_DROPPED,
    save_partial: bool = False,
) -> dict[str, Any]:
    """Fine-tune `backbone_for(seed)` on every task once per fine-tuning seed (the loop's own
    copy; the backbone is left untouched) and merge the scores into
    `out_dir/finetune/<suite>.json`; returns the merged file. `record` adds keys to the stored
    results (where the backbone came from). `loaded`: the tasks' data, already loaded and
    checked by `load_suite` (else loaded here, before anything is trained). `save_partial`:
    when training fails or is interrupted, still store the tasks that finished (the command
    line does; a grid cell does not, so that it is retried whole)."""
    from budgetlm.train.runtime import resolve_device

    protocol = protocol or Protocol()
    tasks = check_tasks(suite, tasks)
    if loaded is None:
        loaded = load_suite(suite, tasks, data_dir, max_dropped=max_dropped)
    missing = [t for t in tasks if t not in loaded]
    if missing:
        raise TaskError(f"no data loaded for {missing}")
    out_dir = Path(out_dir)
    head: dict[str, Any] = {
        "suite": suite,
        **(record or {}),
        "protocol": protocol.to_dict(),
        "seeds": list(seeds),
    }
    _check_results(out_dir, suite, head, tasks)
    torch_device = resolve_device(device)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    done: dict[str, dict[str, Any]] = {}
    try:
        for task in tasks:
            data = loaded[task]
            bar = tqdm(
                total=len(seeds) * protocol.epochs,
                desc=f"{suite}/{task}",
                unit="epoch",
                disable=None if progress else True,
                file=sys.stderr,
            )
            results = []
            for i, seed in enumerate(seeds):

                def show(step: int, total: int, done: int = i, bar: tqdm = bar) -> None:
                    bar.n = round(protocol.epochs * (done + step / total), 2)
                    bar.refresh()

                backbone = backbone_for(seed)
                results.append(
                    finetune_task(backbone, tokenizer, data, protocol, seed, torch_device, show)
                )
            bar.close()
            done[task] = _task_entry(data, results)
    except BaseException:
        if save_partial and done:
            rest = [t for t in tasks if t not in done]
            try:
                _save(out_dir, suite, head, done, started)
            except Exception as e:  # the original error matters more; say what was lost
                _note(f"could not save the finished task(s) {', '.join(done)}: {e}")
            else:
                _note(
                    f"saved the finished task(s) {', '.join(done)} to "
                    f"{results_path(out_dir, suite)}; not finished: {', '.join(rest)}"
                )
        raise
    return _save(out_dir, suite, head, done, started)


def _finetune_run_instructions(
    run_dir: Path,
    suite: str,
    out_dir: str | Path | None,
    tasks: Sequence[str] | None,
    seeds: Sequence[int],
    protocol: Any,
    data_dir: str | Path | None,
    device: str,
) -> dict[str, Any]:
    from budgetlm.finetune.instructions.train import finetune_instruction_suite
    from budgetlm.interop.hf_import import is_hf_bert_dir

    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    if is_hf_bert_dir(run_dir):
        raise TaskError(f"suite {suite!r} fine-tunes T5 or GPT runs; {run_dir} is a BERT model")

    def backbone() -> tuple[Callable[[int], nn.Module], Any, dict[str, Any]]:
        model, tokenizer = load_backbone(run_dir)
        return (lambda seed: model), tokenizer, {"run_dir": str(run_dir)}

    return finetune_instruction_suite(
        suite,
        backbone,
        out_dir or run_dir,
        tasks=tasks,
        seeds=seeds,
        protocol=protocol,
        data_dir=data_dir,
        device=device,
    )


def results_dir_for(run_dir: str | Path) -> Path:
    """Where `finetune_run` stores results without an `out_dir`: in the run itself, or for a
    transformers BERT directory next to runs, in runs/hf-NAME."""
    from budgetlm.interop.hf_import import is_hf_bert_dir

    run_dir = Path(run_dir)
    if not is_hf_bert_dir(run_dir):
        return run_dir
    name = run_dir.parent.name if run_dir.name == "model" else run_dir.name
    return Path("runs") / f"hf-{name}"


def finetune_run(
    run_dir: str | Path,
    suite: str = "offline",
    *,
    out_dir: str | Path | None = None,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] = (1,),
    protocol: Protocol | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    max_dropped: float = MAX_DROPPED,
    save_partial: bool = False,
) -> dict[str, Any]:
    """Fine-tune a run's newest checkpoint (or a transformers BERT directory) on a suite and
    merge the scores into `out_dir` (default: the run itself) `/finetune/<suite>.json`. The
    tasks' data and an explicit `out_dir` are checked before the model is loaded. An
    instruction suite (`instructions`, `sni`) takes an `InstructionProtocol` and no tasks."""
    run_dir = Path(run_dir)
    if is_instruction_suite(suite):
        return _finetune_run_instructions(
            run_dir, suite, out_dir, tasks, seeds, protocol, data_dir, device
        )
    tasks = check_tasks(suite, tasks)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    loaded = load_suite(suite, tasks, data_dir, max_dropped=max_dropped)
    from budgetlm.interop.hf_import import is_hf_bert_dir, load_hf_bert

    hf = is_hf_bert_dir(run_dir)
    out_dir = Path(out_dir or results_dir_for(run_dir))
    if out_dir != run_dir:
        prepare_results_dir(out_dir)  # a bad --out fails before the model is even loaded
    backbone, tokenizer = load_hf_bert(run_dir) if hf else load_backbone(run_dir)
    return finetune_suite(
        lambda seed: backbone,
        tokenizer,
        suite,
        Path(out_dir),
        tasks=tasks,
        seeds=seeds,
        protocol=protocol,
        device=device,
        progress=progress,
        record={"run_dir": str(run_dir)},
        loaded=loaded,
        save_partial=save_partial,
    )


__all__ = [
    "check_task_data",
    "check_tasks",
    "finetune_run",
    "finetune_suite",
    "load_backbone",
    "load_suite",
    "results_dir_for",
    "read_results",
    "write_results",
]
