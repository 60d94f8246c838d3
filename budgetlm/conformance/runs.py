"""Tiny runs for the checks: their settings, running them watched, and interrupting them.

Every run is the real thing (`train.session.open_run`, `Trainer.run`) on a model small enough
that a step takes milliseconds: 2 layers, d_model 32, sequences of 32, batches of 4, 12 steps
on the fixture corpus, on the CPU with one thread. A `steps` budget keeps every run identical
whatever the machine's speed.

The straight run checkpoints only at its end, as an uninterrupted run would. An interrupted run
is the same config in a folder of its own, stopped after k steps (`Trainer.run(stop_after=k)`
writes its checkpoint) and continued by a new `open_run(..., resume="auto")`, with fresh method
objects, as after a Ctrl-C. So a checkpoint that changes what is trained (an optimizer whose
eval/train weight swap is not exact, state that is not saved) shows as a difference.

A `Workspace` holds the folders and remembers the straight runs: the checks of one subject and
family (trains, charges, resumes, state) share one.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.conformance.charges import ForwardCounter, StepCharge, watch
from budgetlm.conformance.prepare import setup_settings
from budgetlm.conformance.report import CheckFailed, describe_error

STEPS = 12
PRESETS = {"gpt": "gpt-tiny", "bert": "bert-tiny", "t5": "t5-tiny"}
TINY_MODEL = [
    "model.n_layers=2",
    "model.d_model=32",
    "model.n_heads=2",
    "model.d_kv=16",
    "model.d_ff=64",
    "model.seq_len=32",
    "model.dropout=0.1",  # dropout draws from the RNG: a resume must restore it
]


def tiny_settings(family: str, run_dir: Path, workspace: Path, steps: int = STEPS) -> list[str]:
    """The key=value settings of a tiny run of `family` in `run_dir`."""
    settings = [
        f"model.preset={PRESETS[family]}",
        *TINY_MODEL,
        "data.corpus=fixture",
        "data.vocab_size=2048",
        "data.val_fraction=0.05",
        f"run.dir={run_dir}",
        f"run.out_dir={workspace / 'out'}",
        f"budget={steps}steps",
        "train.batch_size=4",
        "train.device=cpu",
        "train.threads=1",
        "train.eval_batches=2",
        "train.eval_every=0.5",
        "train.checkpoint_every=0",  # at the end only (and where a run is stopped)
        "train.log_every=1",
        "train.progress_bar=false",
        "optim.lr=3e-3",
    ]
    if family == "t5":
        settings.append("model.n_decoder_layers=2")
    return settings


_METHOD_KEY = re.compile(r"^\s*methods\.([^.=]+)\.")


def scoped(
    overrides: tuple[str, ...], option_keys: set[str], optimizer_subject: bool
) -> tuple[str, ...]:
    """The user's settings that concern a run: `methods.<m>.*` only when the run has method m
    (a config refuses options of a method it does not run), `optim.options.*` only when the
    run's optimizer is the one they were given for, `method=` never (the case decides)."""
    sets_optimizer = any(o.strip().startswith("optim.name=") for o in overrides)
    kept = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        match = _METHOD_KEY.match(item)
        if key == "method":
            continue
        if match and match.group(1) not in option_keys:
            continue
        if key.startswith("optim.options.") and not (optimizer_subject or sets_optimizer):
            continue
        kept.append(item)
    return tuple(kept)


@dataclass(frozen=True)
class RunSpec:
    """A tiny run: its family, methods (as a config names them, in order), optimizer (None: the
    config's default) and the user's settings that concern it."""

    family: str
    methods: tuple[str, ...] = ()
    optimizer: str | None = None
    overrides: tuple[str, ...] = ()
    steps: int = STEPS

    def label(self) -> str:
        parts = [*self.methods, *([self.optimizer] if self.optimizer else []), self.family]
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts))[:80]

    def settings(self, run_dir: Path, workspace: Path) -> list[str]:
        out = tiny_settings(self.family, run_dir, workspace, self.steps)
        out.append(f"method={'+'.join(self.methods) or 'none'}")
        out += self.overrides
        if self.optimizer is not None:
            out.append(f"optim.name={self.optimizer}")
        return out


@dataclass
class RunRecord:
    """What a finished (or failed) run left: enough to compare it bit for bit with another."""

    spec: RunSpec
    run_dir: Path
    config: Any = None  # budgetlm.config.Config
    error: BaseException | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    method_states: dict[str, Any] = field(default_factory=dict)
    methods: list[Any] = field(default_factory=list)  # the live Method objects at the end
    steps: list[StepCharge] = field(default_factory=list)

    def require(self) -> RunRecord:
        """This record, or CheckFailed saying why the run did not finish."""
        if self.error is not None:
            raise CheckFailed(f"the run failed: {describe_error(self.error)}")
        if self.summary.get("status") != "finished":
            raise CheckFailed(
                f"the run stopped ({self.summary.get('status')}) at step "
                f"{self.summary.get('steps')} of {self.spec.steps}"
            )
        return self


def snapshot(obj: Any) -> Any:
    """A copy of `obj` as a checkpoint would store and give it back (tensors cloned to the CPU,
    tuples and int keys kept): what a resumed run will be handed."""
    from budgetlm.train.checkpoint import decode_tree, encode_tree

    tensors: dict[str, Any] = {}
    return decode_tree(encode_tree(obj, tensors), tensors)


class Workspace:
    """The folder the suite's runs live in, and the runs made so far (by spec)."""

    def __init__(self, root: Path | None = None) -> None:
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="budgetlm-conformance-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self._straight: dict[RunSpec, RunRecord] = {}
        self._count = 0

    def folder(self, label: str) -> Path:
        self._count += 1
        return self.root / "runs" / f"{self._count:04d}-{label}"

    def close(self) -> None:
        """Remove the folder (when the workspace made it) and forget the runs."""
        self._straight.clear()
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)

    def config(self, spec: RunSpec, run_dir: Path) -> Any:
        """The run's Config, after the setups of its methods and optimizer (prepare.py)."""
        from budgetlm.config import load_config

        settings = spec.settings(run_dir, self.root)
        extra = setup_settings(spec.methods, spec.optimizer, settings, self.root)
        return load_config(None, [*settings, *extra])

    def straight(self, spec: RunSpec) -> RunRecord:
        """The uninterrupted run of `spec` (made once)."""
        if spec not in self._straight:
            self._straight[spec] = self._run(spec, self.folder(spec.label()))
        return self._straight[spec]

    def interrupted(self, spec: RunSpec, stops: list[int]) -> RunRecord:
        """A run of `spec` stopped after each number of steps in `stops` (ascending) and
        resumed every time; its folder is deleted once its end state is in the record."""
        run_dir = self.folder(f"{spec.label()}-stopped-{'-'.join(map(str, stops))}")
        try:
            return self._run(spec, run_dir, stops)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def _run(self, spec: RunSpec, run_dir: Path, stops: Sequence[int] = ()) -> RunRecord:
        record = RunRecord(spec, run_dir)
        try:
            record.config = self.config(spec, run_dir)
            with warnings.catch_warnings():
                # Ablation notes and the like are for users of a real run, not for the suite.
                warnings.simplefilter("ignore")
                done = 0
                for stop in stops:
                    _train(record, resume=done > 0, stop_after=stop - done)
                    if record.summary.get("status") != "stopped":
                        return record  # it ended before it could be stopped there
                    done = stop
                _train(record, resume=done > 0, stop_after=None)
        except Exception as e:  # the checks report it, each as their own failure
            record.error = e
        return record


def _train(record: RunRecord, resume: bool, stop_after: int | None) -> None:
    """One attempt of the record's run (from scratch, or from its newest checkpoint), up to
    `stop_after` steps; the record keeps what the attempt ended with."""
    from budgetlm.train.checkpoint import unsynced_checkpoints
    from budgetlm.train.metrics import read_metrics
    from budgetlm.train.session import open_run

    trainer = open_run(record.config, resume="auto" if resume else None, progress=False)
    try:
        # Its checkpoints are thrown away: syncing the disk at every stop of every
        # interrupted run would take much of the suite's time.
        with ForwardCounter() as counter, unsynced_checkpoints():
            steps = watch(trainer, counter)
            try:
                record.summary = trainer.run(stop_after=stop_after)
            finally:
                record.steps += steps
    finally:
        if trainer.log is not None:
            trainer.log.close()
    state = trainer.state
    record.model = snapshot(state.model.state_dict())
    record.optimizer = snapshot(state.optimizer.state_dict())
    record.method_states = {m.name: snapshot(m.state_dict()) for m in state.methods}
    record.methods = list(state.methods)
    record.metrics = read_metrics(record.run_dir / "metrics.jsonl")


_DEFAULT: Workspace | None = None


def default_workspace() -> Workspace:
    """The workspace `run_case` uses unless given one: one per process, removed at exit."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Workspace()
        atexit.register(_DEFAULT.close)
    return _DEFAULT
