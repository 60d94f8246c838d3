"""Where the cells of a grid run: local processes, Slurm jobs (submitit) or Ray tasks.

`make_executor` builds one from its name and options; the options are checked here, whether
they come from the command line (`budgetlm compare --executor slurm --partition gpu`) or from
an experiment file's `executor:` section, so both refuse a bad value with the same message.
The Slurm and Ray executors are imported only when asked for, and need their extras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetlm.compare.run.executors.base import (
    CellHandle,
    CellLaunch,
    Executor,
    ExecutorError,
)

__all__ = [
    "EXECUTORS",
    "OPTIONS",
    "CellHandle",
    "CellLaunch",
    "Executor",
    "ExecutorError",
    "check_option",
    "make_executor",
]

EXECUTORS = ("local", "slurm", "ray")


@dataclass(frozen=True)
class Option:
    flag: str  # its command-line flag
    executors: tuple[str, ...]  # the executors it applies to
    meaning: str


# The `executor:` keys of an experiment file (and `name`, `jobs`); each is also a flag.
OPTIONS: dict[str, Option] = {
    "gpus": Option("--gpus", ("local",), "GPUs to share out: `all` or indices such as 0,1,3"),
    "gpus_per_cell": Option(
        "--gpus-per-cell",
        EXECUTORS,
        "GPUs of one cell (local: from --gpus; more than 1 trains through torchrun)",
    ),
    "cpus_per_cell": Option("--cpus-per-cell", ("slurm", "ray"), "CPU cores of one cell"),
    "partition": Option("--partition", ("slurm",), "Slurm partition"),
    "account": Option("--account", ("slurm",), "Slurm account"),
    "time_min": Option("--time-min", ("slurm",), "time limit of one cell's job, in minutes"),
    "mem_gb": Option("--mem-gb", ("slurm",), "memory of one cell's job, in GB"),
    "wait": Option("--no-wait", ("slurm",), "false: submit a wave of cells and exit"),
    "cluster": Option("--cluster", ("slurm",), "submitit's cluster: slurm, or local to try it"),
    "address": Option("--address", ("ray",), "Ray cluster address (default: auto / a local one)"),
}
SECTION_KEYS = ("name", "jobs", *OPTIONS)
EXTRAS = {"slurm": ("submitit", "slurm"), "ray": ("ray", "ray")}


def _suggest(word: str, options: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_name(value: Any, where: str = "--executor") -> str:
    name = str(value).strip().lower() if isinstance(value, str) else value
    if name not in EXECUTORS:
        hint = _suggest(str(value), list(EXECUTORS))
        raise ExecutorError(f"{where}: one of {', '.join(EXECUTORS)}, got {value!r}{hint}")
    return name


def check_jobs(value: Any, where: str = "--jobs") -> int:
    return _whole(value, where, minimum=1)


def _whole(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ExecutorError(f"{where}: a whole number >= {minimum}, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ExecutorError(f"{where}: a whole number >= {minimum}, got {value!r}")
    return value


def _positive(value: Any, where: str, minimum: float = 0.0, strict: bool = True) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ExecutorError(f"{where}: a number, got {value!r}") from None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= minimum if strict else value < minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ExecutorError(f"{where}: a number {bound}, got {value!r}")
    return int(value) if float(value).is_integer() else float(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ExecutorError(f"{where}: a name, got {value!r}")
    return value.strip()


def check_option(key: str, value: Any, where: str | None = None) -> Any:
    """One executor option, checked and normalised (`where` names it in a refusal: the flag or
    the experiment file's key). None means unset and is returned as is."""
    if key not in OPTIONS:
        raise ExecutorError(f"unknown executor option {key!r}{_suggest(key, list(OPTIONS))}")
    where = where or OPTIONS[key].flag
    if value is None:
        return None
    if key == "gpus":
        from budgetlm.compare.run.executors.local import parse_gpus

        return parse_gpus(value, where)
    if key == "gpus_per_cell":
        return _positive(value, where, 0.0, strict=False)  # fractions: Ray; 0: CPU-only nodes
    if key == "cpus_per_cell":
        return _positive(value, where)
    if key == "time_min":
        return _whole(value, where, minimum=1)
    if key == "mem_gb":
        return _positive(value, where)
    if key == "wait":
        if not isinstance(value, bool):
            raise ExecutorError(f"{where}: true or false, got {value!r}")
        return value
    if key == "cluster":
        cluster = _text(value, where).lower()
        if cluster not in ("slurm", "local"):
            raise ExecutorError(f"{where}: slurm or local (submitit's), got {value!r}")
        return cluster
    return _text(value, where)  # partition, account, address


def check_applies(name: str, options: dict[str, Any], flags: bool) -> None:
    """Refuse an option that the chosen executor does not use (`flags`: given on the command
    line; an experiment file's section may hold options of several executors)."""
    for key, value in options.items():
        label = OPTIONS[key].flag if flags else f"executor.{key}"
        if key == "gpus_per_cell" and name != "ray" and value is not None:
            _whole_gpus(value, 1, label)
        if value is None or name in OPTIONS[key].executors:
            continue
        if key == "wait" and value is True:
            continue
        used = " or ".join(OPTIONS[key].executors)
        raise ExecutorError(f"{label} is an option of the {used} executor, not of {name}")


def make_executor(
    name: str, *, jobs: int | None, out_dir: Path, options: dict[str, Any]
) -> Executor:
    """The executor `name` with `options` (keys of OPTIONS; None = default). `jobs` None: local
    GPU cells as many at a time as the GPUs allow, else 1."""
    name = check_name(name)
    if jobs is not None:
        jobs = check_jobs(jobs)
    opts = {k: check_option(k, v) for k, v in options.items() if v is not None}
    out_dir = Path(out_dir).resolve()  # cells on other machines need a path that is not relative
    per_cell = opts.get("gpus_per_cell")
    if name == "local":
        from budgetlm.compare.run.executors.local import LocalExecutor

        return LocalExecutor(jobs, gpus=opts.get("gpus"), gpus_per_cell=_whole_gpus(per_cell, 1))
    jobs = jobs or 1
    if name == "slurm":
        SlurmExecutor = _import("slurm", "SlurmExecutor")  # noqa: N806 - a class
        return SlurmExecutor(
            out_dir / "slurm",
            jobs=jobs,
            partition=opts.get("partition"),
            account=opts.get("account"),
            time_min=opts.get("time_min", 60),
            gpus_per_cell=_whole_gpus(per_cell, 1),
            cpus_per_cell=_whole(opts.get("cpus_per_cell", 1), "--cpus-per-cell", minimum=1),
            mem_gb=opts.get("mem_gb"),
            wait=opts.get("wait", True),
            cluster=opts.get("cluster"),
        )
    RayExecutor = _import("ray", "RayExecutor")  # noqa: N806 - a class
    return RayExecutor(
        address=opts.get("address"),
        jobs=jobs,
        # None: 1 GPU when the cluster has any, else none (ray.py decides once connected).
        gpus_per_cell=None if per_cell is None else float(per_cell),
        cpus_per_cell=float(opts.get("cpus_per_cell", 1)),
        out_dir=out_dir,
    )


def _whole_gpus(value: Any, default: int, where: str = "--gpus-per-cell") -> int:
    if value is None:
        return default
    if not float(value).is_integer():
        raise ExecutorError(
            f"{where}: a whole number of GPUs (fractions are for the ray executor), got {value!r}"
        )
    return int(value)


def _import(module: str, cls: str) -> Any:
    """The executor class of `executors/<module>.py`, or a message naming the extra it needs."""
    import importlib

    package, extra = EXTRAS[module]
    try:
        importlib.import_module(package)
    except ImportError as e:
        raise ExecutorError(
            f"--executor {module} needs the {package} package: pip install 'budgetlm[{extra}]' "
            f"({e})"
        ) from e
    return getattr(importlib.import_module(f"budgetlm.compare.run.executors.{module}"), cls)
