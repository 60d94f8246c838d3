"""Merge output folders of one experiment into one folder, for one report.

`budgetlm report DIR1 DIR2 ... --out OUT`: a grid run in parts (one folder per cluster, or per
subset of arms) is reported as if one folder held every cell. OUT becomes a compare folder of
its own, built from copies: `experiment.json`, each cell's files, the random-init control and
`references.json`, then the report is written there as for any compare folder (`budgetlm
report OUT` rebuilds it again). The source folders are only read.

- **One experiment**: every folder's `experiment.json` must record the same experiment: equal
  once the fields about a run rather than the experiment are left out (`command`, `updated`,
  `source` (where its YAML was), `executor` (where its cells ran)); `base` counts by the
  content of the config file it names when it can be read here, so the same base at another
  path on another cluster is the same experiment. Otherwise: MergeError (exit 2) naming the
  fields that differ.
- **Which copy of a cell**: the cells are those the experiment's report reads (every tuning
  cell its searches asked for and every judged cell), found on the merged view as copies come
  in, so that LR searches finished in one folder choose the judged cells found in another. Of
  the copies of one cell: a finished one; among several finished copies with the same
  `summary.json` (the same run, copied), the one fine-tuned on the most suites, else the first.
  Finished copies that differ are two runs of one cell, and the report would silently depend
  on the order of the folders: refused (MergeError, every such cell named) unless
  `prefer_first`, which takes the copy of the first folder given and warns. A cell that
  finished nowhere: its failed copy (the first), else the interrupted copy that got furthest;
  pending where no folder has it.
- **What is copied**: each chosen cell folder without `checkpoints/` (an empty folder keeps an
  interrupted cell interrupted), `previous/` and lock files: OUT is for reporting, not for
  resuming. The control: the copy with results (the same rule as a cell's finished copies),
  else one with an error. `references.json`: per budget, the entry of the first folder that
  has one.
- OUT must be a new folder or an earlier merge (it holds `merged.json`, which records the
  sources and which folder each cell came from); it is built beside OUT and moved into place
  only when complete, so a refused merge leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.compare.analysis.control import ControlResult, read_control
from budgetlm.compare.analysis.references import INPUTS_KEY, SKIPPED_KEY, references_path
from budgetlm.compare.analysis.results import CellResult, all_cells, read_cell
from budgetlm.compare.report.build import ReportError, load_experiment_record
from budgetlm.compare.run.control import control_dir
from budgetlm.compare.run.grid import EXPERIMENT_FILE

MERGE_FILE = "merged.json"
# Fields of experiment.json about one run of the grid, not about the experiment.
RUN_FIELDS = ("command", "updated", "source", "executor")
# Not copied: large and not read by the report (checkpoints, earlier attempts), or locks.
NOT_COPIED = ("checkpoints", "previous")
_MAX_LISTED = 10


class MergeError(ReportError):
    """The folders cannot be merged: other experiments, conflicting copies, a bad --out."""


@dataclass
class MergeOutcome:
    out: Path
    sources: list[Path]
    cells: dict[str, Path | None]  # cell id -> the folder its copy came from (None: nowhere)
    control: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[Path, int]:
        """Cells copied from each source folder."""
        out = dict.fromkeys(self.sources, 0)
        for source in self.cells.values():
            if source is not None:
                out[source] += 1
        return out


def merge_folders(sources: list[Path], out: Path, *, prefer_first: bool = False) -> MergeOutcome:
    """Merge the compare folders `sources` into `out` (see the module); the report is not
    written here (`write_report_files(out)`)."""
    sources = [Path(s) for s in sources]
    out = Path(out)
    records = _check_sources(sources, out)
    staging = out.parent / f".{out.name}.merging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        outcome = _merge_into(staging, sources, records, prefer_first)
        _replace(out, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    outcome.out = out
    return outcome


# -- checks ------------------------------------------------------------------------------------


def _check_sources(sources: list[Path], out: Path) -> list[dict[str, Any]]:
    if not sources:
        raise MergeError("no folder to merge")
    resolved = [s.resolve() for s in sources]
    twice = sorted({str(s) for s in sources if resolved.count(s.resolve()) > 1})
    if twice:
        raise MergeError(f"a folder given twice: {', '.join(twice)}")
    if out.resolve() in resolved:
        raise MergeError(
            f"--out {out} is one of the folders to merge: the merged folder is a new one (the "
            "folders merged are only read)"
        )
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_merge(out))):
        raise MergeError(
            f"--out {out} exists and is not a merged folder (no {MERGE_FILE}): give a new folder"
        )
    records = []
    for source in sources:
        path = source / EXPERIMENT_FILE
        if not path.is_file():
            raise MergeError(f"{source} is not a compare folder (no {EXPERIMENT_FILE})")
        records.append(json.loads(path.read_text()))
    first = experiment_identity(records[0])
    for source, record in zip(sources[1:], records[1:], strict=True):
        differ = _differences(first, experiment_identity(record))
        if differ:
            raise MergeError(
                f"{source} and {sources[0]} hold different experiments: their "
                f"{EXPERIMENT_FILE} differ in {'; '.join(differ)}. Only output folders of one "
                "experiment merge"
            )
    return records


def _is_merge(folder: Path) -> bool:
    return (folder / MERGE_FILE).is_file()


def experiment_identity(record: dict[str, Any]) -> dict[str, Any]:
    """What makes two experiment.json records the same experiment: all but RUN_FIELDS, with
    the base config by its content where it can be read."""
    identity = {k: v for k, v in record.items() if k not in RUN_FIELDS}
    base = identity.get("base")
    if base:
        with contextlib.suppress(OSError):  # unreadable here: compared by its path
            identity["base"] = "sha256:" + hashlib.sha256(Path(base).read_bytes()).hexdigest()
    return identity


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fields two identities differ in, with both values when they are short."""
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        if key == "arms" and isinstance(a.get(key), list) and isinstance(b.get(key), list):
            out.append(f"arms ({_arm_differences(a[key], b[key])})")
            continue
        left, right = json.dumps(a.get(key)), json.dumps(b.get(key))
        out.append(f"{key} ({right} vs {left})" if len(left + right) < 120 else key)
    return out


def _arm_differences(a: list[Any], b: list[Any]) -> str:
    named = lambda arms: {x.get("name"): x for x in arms if isinstance(x, dict)}  # noqa: E731
    first, other = named(a), named(b)
    if list(first) != list(other):
        return f"{', '.join(map(str, other))} vs {', '.join(map(str, first))}"
    changed = [str(name) for name in first if first[name] != other[name]]
    return "settings of " + ", ".join(changed)


# -- merging -----------------------------------------------------------------------------------


def _merge_into(
    out: Path, sources: list[Path], records: list[dict[str, Any]], prefer_first: bool
) -> MergeOutcome:
    (out / EXPERIMENT_FILE).write_text(json.dumps(_merged_record(records), indent=2) + "\n")
    exp, _ = load_experiment_record(out)
    outcome = MergeOutcome(out, sources, {})
    conflicts: list[str] = []
    # The cells the report reads depend on the results (an LR search asks for more cells, its
    # choice names the judged cells): collect them on the merged view until nothing is new.
    while True:
        todo = [c for c in all_cells(exp, out) if c.id not in outcome.cells]
        if not todo:
            break
        for cell in todo:
            copies = [(s, read_cell(cell, s, with_curve=False)) for s in sources]
            chosen, conflict = _choose(cell.id, copies)
            if conflict:
                conflicts.append(conflict)
                outcome.warnings.append(f"{conflict}; took the copy in {chosen[0]}")
            outcome.cells[cell.id] = chosen[0] if chosen else None
            if chosen:
                _copy_run_folder(chosen[1].run_dir, out / "cells" / cell.id)
    control, conflict = _choose_control(sources)
    if conflict:
        conflicts.append(conflict)
        outcome.warnings.append(f"{conflict}; took the copy in {control.run_dir.parent.parent}")
    if conflicts and not prefer_first:
        listed = conflicts[:_MAX_LISTED]
        more = len(conflicts) - len(listed)
        raise MergeError(
            f"{len(conflicts)} run(s) finished in several folders with different results (two "
            f"runs of one cell): {'; '.join(listed)}{f'; and {more} more' if more else ''}. "
            "Remove the copies that should not count, or pass --prefer-first to take the copy "
            "of the first folder given"
        )
    if control is not None:
        _copy_run_folder(control.run_dir, control_dir(out))
        outcome.control = control.run_dir.parent.parent
    references = _merged_references(sources)
    if references:
        references_path(out).write_text(json.dumps(references, indent=2, sort_keys=True) + "\n")
    merged = {
        "sources": [str(s.resolve()) for s in sources],
        "cells": {cid: str(s.resolve()) if s else None for cid, s in outcome.cells.items()},
        "control": str(outcome.control.resolve()) if outcome.control else None,
        "warnings": outcome.warnings,
    }
    (out / MERGE_FILE).write_text(json.dumps(merged, indent=2) + "\n")
    return outcome


def _merged_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The first folder's experiment.json; the commands of every folder, and the latest time
    any of them ran (the report shows it)."""
    record = dict(records[0])
    commands = list(dict.fromkeys(r["command"] for r in records if r.get("command")))
    if commands:
        record["command"] = "; ".join(commands)
    updated = [r["updated"] for r in records if isinstance(r.get("updated"), str)]
    if updated:
        record["updated"] = max(updated)  # "%Y-%m-%d %H:%M:%S": sorts as it reads
    return record


def _choose(
    cell_id: str, copies: list[tuple[Path, CellResult]]
) -> tuple[tuple[Path, CellResult] | None, str | None]:
    """The copy of a cell the merged folder gets, and the conflict when finished copies differ
    (the copy is then the first folder's)."""
    finished = [(s, r) for s, r in copies if r.status == "finished"]
    if finished:
        first = finished[0][1].summary
        same = [(s, r) for s, r in finished if r.summary == first]
        chosen = max(same, key=lambda c: len(c[1].downstream))  # ties: the first
        if len(same) == len(finished):
            return chosen, None
        losses = ", ".join(f"{r.final_loss} in {s}" for s, r in finished)
        return chosen, f"cell {cell_id} (final held-out loss {losses})"
    for status in ("failed", "interrupted"):
        found = [(s, r) for s, r in copies if r.status == status]
        if found:
            return max(found, key=lambda c: c[1].progress), None  # ties: the first
    return None, None


def _choose_control(sources: list[Path]) -> tuple[ControlResult | None, str | None]:
    controls = [c for c in (read_control(s) for s in sources) if c is not None]
    scored = [c for c in controls if c.downstream and c.error is None]
    if scored:
        others = [c for c in scored if c.downstream != scored[0].downstream]
        if others:
            where = ", ".join(str(c.run_dir) for c in scored)
            return scored[0], f"the random-init control (scored in {where})"
        return scored[0], None
    failed = [c for c in controls if c.error is not None]
    return (failed or controls or [None])[0], None


def _copy_run_folder(source: Path, dest: Path) -> None:
    """A run folder's files for the report: no checkpoints (an empty folder says there were
    some), no earlier attempts, no locks."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n.endswith(".lock") or ".lock." in n}
        if Path(folder) == source:
            skip |= {n for n in names if n in NOT_COPIED}
        return skip

    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, dest, ignore=ignore, symlinks=True)
    if (source / "checkpoints").is_dir():
        (dest / "checkpoints").mkdir(exist_ok=True)


def _merged_references(sources: list[Path]) -> dict[str, Any]:
    """references.json per budget from the first folder that has an entry for it (a budget
    skipped everywhere keeps the first folder's reason)."""
    merged: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    for source in sources:
        try:
            raw = json.loads(references_path(source).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(raw, dict):
            continue
        for key, value in raw.items():
            if str(key).startswith("_") or key in merged:
                continue
            merged[key] = value
            if isinstance(raw.get(INPUTS_KEY), dict) and key in raw[INPUTS_KEY]:
                inputs[key] = raw[INPUTS_KEY][key]
        for key, why in (raw.get(SKIPPED_KEY) or {}).items():
            skipped.setdefault(key, why)
    if not merged and not skipped:
        return {}
    skipped = {k: v for k, v in skipped.items() if k not in merged}
    return {**merged, INPUTS_KEY: inputs, **({SKIPPED_KEY: skipped} if skipped else {})}


def _replace(out: Path, staging: Path) -> None:
    """Move the finished merge into place, replacing an earlier merge at `out`."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        os.rename(out, old)
    os.rename(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
