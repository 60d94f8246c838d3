"""Fine-tune a pre-training run's final model on a suite; write the scores into the run.

Results go to `<run>/finetune/<suite>.json`: the protocol, per task the reported score of
every fine-tuning seed (mean ± std), the majority-class baseline, the per-epoch curves, and the
suite average of the tasks' main metrics. `budgetlm compare` reports find them there.
`finetune_suite` is the one loop over tasks and seeds; `finetune_run` feeds it a run's
pre-trained model, `budgetlm.finetune.control` a randomly initialised one (the control).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from budgetlm.finetune.loop import Protocol, TaskResult, finetune_task
from budgetlm.finetune.store import read_results, write_results
from budgetlm.finetune.suites import suite_tasks, task_loader
from budgetlm.finetune.tasks import TaskError


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
    """The tasks to fine-tune on (every task of the suite by default); unknown ones refused."""
    known = suite_tasks(suite)
    chosen = list(tasks or known)
    unknown = [t for t in chosen if t not in known]
    if unknown:
        raise TaskError(f"suite {suite!r} has no task {unknown} (tasks: {', '.join(known)})")
    return chosen


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
) -> dict[str, Any]:
    """Fine-tune `backbone_for(seed)` on every task once per fine-tuning seed (the loop's own
    copy; the backbone is left untouched) and write `out_dir/finetune/<suite>.json`. `record`
    adds keys to the stored results (where the backbone came from)."""
    from budgetlm.train.runtime import resolve_device

    protocol = protocol or Protocol()
    tasks = check_tasks(suite, tasks)
    torch_device = resolve_device(device)
    load = task_loader(suite, data_dir)
    out: dict[str, Any] = {
        "suite": suite,
        **(record or {}),
        "protocol": protocol.to_dict(),
        "seeds": list(seeds),
        "tasks": {},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for task in tasks:
        data = load(task)
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
        out["tasks"][task] = {"sizes": data.sizes(), **_summarise(results)}
    means = [t["mean"] for t in out["tasks"].values()]
    out["average"] = statistics.mean(means)
    out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_results(Path(out_dir), suite, out)
    return out


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
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    tasks = check_tasks(suite, tasks)
    from budgetlm.interop.hf_import import is_hf_bert_dir, load_hf_bert

    if is_hf_bert_dir(run_dir):  # a transformers BERT: results go next to runs, not into it
        backbone, tokenizer = load_hf_bert(run_dir)
        name = run_dir.parent.name if run_dir.name == "model" else run_dir.name
        out_dir = Path(out_dir or Path("runs") / f"hf-{name}")
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        backbone, tokenizer = load_backbone(run_dir)
    return finetune_suite(
        lambda seed: backbone,
        tokenizer,
        suite,
        Path(out_dir or run_dir),
        tasks=tasks,
        seeds=seeds,
        protocol=protocol,
        data_dir=data_dir,
        device=device,
        progress=progress,
        record={"run_dir": str(run_dir)},
    )


__all__ = [
    "check_tasks",
    "finetune_run",
    "finetune_suite",
    "load_backbone",
    "read_results",
    "write_results",
]
