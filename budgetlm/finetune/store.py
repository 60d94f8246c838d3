"""Where a run keeps its downstream scores: `<run>/finetune/<suite>.json` (light to import).

One file per suite holds every task fine-tuned so far. A new call's tasks are merged into it
(a task fine-tuned again replaces its old entry) and `average` is recomputed over every task
present (`average_over` names them). One average must not mix fine-tuning settings, so a merge
whose protocol or backbone (`init`, `shape`) differ from the file's is refused unless the new
call re-runs every task the file holds (then the file is replaced). Fine-tuning seeds may
differ between tasks (each task lists its own; they change the precision of a task's mean, not
what it measures): the top-level `seeds` is then their union and `seeds_differ` is true.

Files are written atomically: a temporary file in the same folder, flushed to disk, then renamed
over the old one, so a crash leaves the previous file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from budgetlm.errors import StorageError, UserError

RESULTS_DIR = "finetune"
# What must agree between the results in one file: the scores of one average are comparable.
MERGE_KEYS = ("protocol", "init", "shape")


class ResultsError(UserError):
    """The results folder cannot be written, or its file cannot be read or merged into."""


def results_path(run_dir: str | Path, suite: str) -> Path:
    return Path(run_dir) / RESULTS_DIR / f"{suite}.json"


def prepare_results_dir(run_dir: str | Path) -> Path:
    """Create `run_dir/finetune/` (parents included) and check that a file can be written there:
    called before any training, so that a bad `--out` fails at once."""
    directory = Path(run_dir) / RESULTS_DIR
    probe = directory / f".write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or str(e)
        raise ResultsError(f"cannot write fine-tuning results to {directory}: {reason}") from None
    return directory


def read_suite(run_dir: str | Path, suite: str) -> dict[str, Any] | None:
    """The stored results of one suite, None when there are none; an unreadable file or one that
    is not a results file raises ResultsError (it is never silently replaced)."""
    path = results_path(run_dir, suite)
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(
            f"{path} cannot be read ({e}); move it away to start afresh, or choose another --out"
        ) from None
    if not isinstance(stored, dict) or not isinstance(stored.get("tasks"), dict):
        raise ResultsError(
            f"{path} is not a fine-tuning results file (no 'tasks' mapping); move it away to "
            "start afresh, or choose another --out"
        )
    return stored


def _describe(key: str, old: Any, new: Any) -> str:
    if key == "protocol" and isinstance(old, dict) and isinstance(new, dict):
        changed = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
        return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
    if key == "init":
        return f"init {old or 'pre-trained'} -> {new or 'pre-trained'}"
    if key == "shape":
        return "a different model shape"
    return f"{key} {old!r} -> {new!r}"


def merge_conflict(old: dict[str, Any], new: dict[str, Any], tasks: Sequence[str]) -> str | None:
    """Why `new` (a call fine-tuning `tasks`) cannot be merged into `old`, or None if it can."""
    kept = [t for t in old.get("tasks", {}) if t not in tasks]
    differing = [k for k in MERGE_KEYS if old.get(k) != new.get(k)]
    if not kept or not differing:
        return None
    details = "; ".join(_describe(k, old.get(k), new.get(k)) for k in differing)
    return (
        f"the stored results of {', '.join(kept)} were fine-tuned with other settings ({details}) "
        "and one suite average must not mix them: use the stored settings, add "
        f"{' '.join(kept)} to --tasks to fine-tune them again too, or choose another --out"
    )


def merge_results(
    old: dict[str, Any] | None, new: dict[str, Any], order: Sequence[str] = ()
) -> dict[str, Any]:
    """`new` merged into `old`: the union of their tasks (new entries win), listed in `order`
    (the suite's) first, and the average over all of them. `new` replaces `old` whole when their
    settings differ (callers check `merge_conflict` first, so then it re-ran every task)."""
    if old is None or any(old.get(k) != new.get(k) for k in MERGE_KEYS):
        merged = dict(new)
        tasks = dict(new["tasks"])
    else:
        merged = {**old, **new}
        tasks = {**old["tasks"], **new["tasks"]}
    rank = {t: i for i, t in enumerate(order)}
    names = sorted(tasks, key=lambda t: (rank.get(t, len(rank)), t))
    merged["tasks"] = {t: tasks[t] for t in names}
    means = [float(tasks[t]["mean"]) for t in names]
    merged["average"] = statistics.mean(means) if means else None
    merged["average_over"] = names
    per_task = {tuple(e["seeds"]) for e in tasks.values() if isinstance(e.get("seeds"), list)}
    merged.pop("seeds_differ", None)
    if len(per_task) > 1:
        merged["seeds"] = sorted({s for seeds in per_task for s in seeds})
        merged["seeds_differ"] = True
        if "init_seeds" in merged:  # the control: one initialisation per fine-tuning seed
            merged["init_seeds"] = merged["seeds"]
    return merged


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON atomically (temporary file in the same folder, fsync, rename); a failed write
    raises StorageError and leaves the previous file as it was."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = json.dumps(data, indent=2) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {e.strerror or e}") from e
    return path


def write_results(run_dir: Path, suite: str, results: dict[str, Any]) -> Path:
    """Write one suite's results (replacing the file whole: merge first with `merge_results`)."""
    return write_json_atomic(results_path(run_dir, suite), results)


def read_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every suite's results stored in a run directory, by suite name."""
    directory = Path(run_dir) / RESULTS_DIR
    if not directory.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def has_results(results: dict[str, dict[str, Any]], suite: str, tasks: list[str] | None) -> bool:
    """Whether `results` (from :func:`read_results`) already hold `suite` with every one of
    `tasks` (None: any tasks): a later call may have merged in only some of them."""
    if suite not in results:
        return False
    return tasks is None or set(tasks) <= set(results[suite].get("tasks", {}))
