"""The checks, and `run_case`, which runs one and never raises for a fault of the plug-in.

options    options.py: the Options dataclass, the user's options, did-you-mean on typos
trains     the tiny run finishes its budget with finite training and held-out losses
charges    every pass the run made was charged (charges.py)
resumes    stopped and resumed before, at and after each event: ends bit-identical
state      state_dict() -> checkpoint codec -> a fresh instance's load_state_dict()
           -> state_dict() gives the same state
composes   with another method: trains, and every pass is charged
refuses    a combination either side lists in `incompatible` is a clean ConfigError
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from itertools import pairwise
from typing import Any

from budgetlm.conformance.cases import Case
from budgetlm.conformance.charges import StepCharge, charge_problems
from budgetlm.conformance.equality import first_difference
from budgetlm.conformance.options import check_method_options, check_optimizer_options
from budgetlm.conformance.report import CheckFailed, CheckResult, describe_error
from budgetlm.conformance.runs import (
    RunRecord,
    RunSpec,
    Workspace,
    default_workspace,
    scoped,
    snapshot,
)
from budgetlm.conformance.subjects import Subject


def run_case(case: Case, workspace: Workspace | None = None) -> CheckResult:
    """Run one check. A fault of the subject is a failed result with a message, never an
    exception; runs are shared through `workspace` (default: one per process)."""
    ws = workspace if workspace is not None else default_workspace()
    started = time.perf_counter()
    try:
        note = CHECKS[case.check](case, ws)
        passed = True
    except CheckFailed as e:
        passed, note = False, str(e)
    except Exception as e:  # a plug-in that does not load, a hook that raised (and where)
        passed, note = False, describe_error(e)
    return CheckResult(case, passed, time.perf_counter() - started, note)


# -- which runs a case uses ---------------------------------------------------------------------


def _option_keys(names: tuple[str, ...]) -> set[str]:
    from budgetlm.methods import option_keys
    from budgetlm.registry import method_class

    keys: set[str] = set()
    for name in names:
        keys |= set(option_keys(name, method_class(name)))
    return keys


def run_spec(case: Case, family: str | None = None) -> RunSpec:
    """The tiny run a case is about: its subject (with the partner of `composes`/`refuses`),
    on its family, with the user's settings that concern it."""
    family = family or case.family or next(iter(case.subject.families()), "gpt")
    if case.subject.kind == "optimizer":
        methods = (case.partner,) if case.partner else ()
        overrides = scoped(case.overrides, _option_keys(methods), True)
        return RunSpec(family, methods, case.subject.name, overrides)
    methods = (case.subject.name, *((case.partner,) if case.partner else ()))
    return RunSpec(family, methods, None, scoped(case.overrides, _option_keys(methods), False))


def _configured(record: RunRecord, name: str) -> tuple[type, Any]:
    """The class of method `name` in a run and its validated options."""
    from budgetlm.methods import configured_methods
    from budgetlm.registry import method_class

    cls = method_class(name)
    cfg = record.config
    for configured, options in configured_methods(cfg.method, cfg.methods):
        if configured is cls:
            return cls, options
    raise CheckFailed(f"method {name!r} is not among the run's methods")  # pragma: no cover


# -- the checks ---------------------------------------------------------------------------------


def check_options(case: Case, ws: Workspace) -> str:
    spec = run_spec(case)
    if case.subject.kind == "optimizer":
        return check_optimizer_options(case, ws, spec)
    return check_method_options(case, ws, spec)


def _finite_run(record: RunRecord) -> str:
    record.require()
    losses = [(m["step"], m.get("loss")) for m in record.metrics if m.get("event") == "train"]
    if not losses:
        raise CheckFailed("the run logged no training loss")
    bad = [(step, loss) for step, loss in losses if loss is None or not math.isfinite(loss)]
    if bad:
        raise CheckFailed(f"non-finite training loss at steps {[s for s, _ in bad][:5]}")
    held_out = record.summary.get("final_val_loss")
    if held_out is None or not math.isfinite(held_out):
        raise CheckFailed(f"the final held-out loss is {held_out}")
    steps = record.summary.get("steps")
    if steps != record.spec.steps:
        raise CheckFailed(f"the run took {steps} steps for a budget of {record.spec.steps}")
    return f"{steps} steps, loss {losses[0][1]:.3f} -> {losses[-1][1]:.3f}, held-out {held_out:.3f}"


def check_trains(case: Case, ws: Workspace) -> str:
    return _finite_run(ws.straight(run_spec(case)))


def _charged(record: RunRecord) -> str:
    record.require()
    if len(record.steps) != record.spec.steps:
        raise CheckFailed(
            f"the clock was charged {len(record.steps)} times in {record.spec.steps} steps"
        )
    problems = charge_problems(record.steps)
    if problems:
        raise CheckFailed("\n".join(problems))
    forwards = sum(len(s.forwards) for s in record.steps)
    rows = sum(f.rows or 0 for s in record.steps for f in s.forwards)
    return f"{rows} rows in {forwards} forwards, all charged"


def check_charges(case: Case, ws: Workspace) -> str:
    return _charged(ws.straight(run_spec(case)))


def check_composes(case: Case, ws: Workspace) -> str:
    record = ws.straight(run_spec(case))
    trained = _finite_run(record)
    _charged(record)
    return f"{trained}; every pass charged"


def check_refuses(case: Case, ws: Workspace) -> str:
    from budgetlm.config import ConfigError
    from budgetlm.train.session import open_run

    spec = run_spec(case)
    run_dir = ws.folder(spec.label() + "-refused")
    try:
        # With the setups: a method that cannot be built without them would be refused for
        # that, before the combination is looked at.
        trainer = open_run(ws.config(spec, run_dir), progress=False)
    except ConfigError as e:
        partner = Subject("method", str(case.partner))
        if not (_mentions(e, case.subject) and _mentions(e, partner)):
            raise CheckFailed(
                f"combining it with {case.partner!r} failed with a ConfigError that is not "
                f"the refusal of the combination: {e}"
            ) from e
        return f"refused: {e}"
    except Exception as e:
        raise CheckFailed(
            f"combining it with {case.partner!r} failed with {describe_error(e)} instead of a "
            "ConfigError"
        ) from e
    if trainer.log is not None:
        trainer.log.close()
    raise CheckFailed(
        f"{' + '.join([*spec.methods, *([spec.optimizer] if spec.optimizer else [])])} was "
        "accepted although one side lists the other in `incompatible`"
    )


def _mentions(error: Exception, subject: Subject) -> bool:
    """Whether an error message names a method or optimizer (as given, or by its own name)."""
    names = {subject.name}
    with contextlib.suppress(ValueError, ImportError):
        owner = subject.method_class() if subject.kind == "method" else subject.provider()
        names.add(getattr(owner, "name", subject.name))
    return any(n in str(error) for n in names)


# -- resuming -----------------------------------------------------------------------------------


def _signature(step: StepCharge) -> list[tuple[Any, ...]]:
    """What a step charged, pass by pass: it changes at a method's events (a stacking point,
    a growth, a Hessian refresh)."""
    return [(p.kind, p.purpose, p.batch_size, p.active_layers, p.shape) for p in step.passes]


def observed_events(steps: list[StepCharge], limit: int = 3) -> set[int]:
    """Steps at which what a step charges changes, when that happens at most `limit` times: a
    schedule of events, not the per-step randomness of layer dropping or batch selection."""
    changes = {b.step for a, b in pairwise(steps) if _signature(a) != _signature(b)}
    return changes if len(changes) <= limit else set()


def resume_steps(declared: list[float], steps: list[StepCharge], n: int) -> list[int]:
    """Checkpoints to resume from (steps done): just before, at and just after each event (the
    subject's `event_points`, and the changes seen in the run), and a few spread over the run."""
    events = {math.ceil(p * n - 1e-9) for p in declared if 0 < p < 1}
    events |= observed_events(steps)
    chosen = {n // 4, n // 2, 3 * n // 4} | {e + d for e in events for d in (-1, 0, 1)}
    return sorted(k for k in chosen if 1 <= k < n)


def _logged(record: RunRecord) -> list[dict[str, Any]]:
    """What a run logged that a resume must reproduce (not its wall times)."""
    keys = ("event", "step", "p", "tokens", "flops", "loss", "val_loss", "lr", "grad_norm")
    return [
        {k: m.get(k) for k in keys}
        for m in record.metrics
        if m.get("event") in ("train", "eval", "skipped")
    ]


def run_difference(straight: RunRecord, resumed: RunRecord) -> str | None:
    """The first way the resumed run ended otherwise than the straight one (None: identical):
    its log (losses, learning rates, what was spent), then weights, optimizer and method state."""
    logs = _logged(straight), _logged(resumed)
    for a, b in zip(*logs, strict=False):
        found = first_difference(a, b)
        if found:
            return f"the logged {a['event']} record of step {a['step']} differs: {found}"
    if len(logs[0]) != len(logs[1]):
        return f"the straight run logged {len(logs[0])} records, the resumed one {len(logs[1])}"
    for label, a, b in (
        ("weights", straight.model, resumed.model),
        ("optimizer state", straight.optimizer, resumed.optimizer),
        ("method state", straight.method_states, resumed.method_states),
    ):
        found = first_difference(a, b, label)
        if found:
            return found
    return None


def _resume_problem(straight: RunRecord, resumed: RunRecord) -> str | None:
    try:
        resumed.require()
    except CheckFailed as e:
        return str(e)
    found = run_difference(straight, resumed)
    if found:
        return (
            f"the run did not continue as the uninterrupted one: {found}. State that changes "
            "during training must come back from state_dict(), and a checkpoint must not change "
            "what is trained"
        )
    return None


def check_resumes(case: Case, ws: Workspace) -> str:
    """One run stopped at every chosen step and resumed each time; when it ends otherwise than
    the straight run, one run per stop finds the first stop that is at fault."""
    spec = run_spec(case)
    straight = ws.straight(spec).require()
    declared: list[float] = []
    if case.subject.kind == "method":
        cls, options = _configured(straight, case.subject.name)
        declared = [float(p) for p in cls.event_points(options)]
    n = spec.steps
    stops = resume_steps(declared, straight.steps, n)
    problem = _resume_problem(straight, ws.interrupted(spec, stops))
    if problem is None:
        return f"bit-exact, stopped and resumed after steps {', '.join(map(str, stops))}"
    for k in stops:
        found = _resume_problem(straight, ws.interrupted(spec, [k]))
        if found:
            raise CheckFailed(f"stopped after step {k} of {n} and resumed: {found}")
    raise CheckFailed(f"stopped after each of steps {stops} and resumed: {problem}")


# -- the state round trip -----------------------------------------------------------------------


def check_state(case: Case, ws: Workspace) -> str:
    from budgetlm.api import RunContext
    from budgetlm.train.run_data import resolve_data

    record = ws.straight(run_spec(case)).require()
    cls, options = _configured(record, case.subject.name)
    method = next(m for m in record.methods if type(m) is cls)
    saved = method.state_dict()
    try:
        stored = snapshot(saved)
    except TypeError as e:
        raise CheckFailed(f"state_dict() holds what a checkpoint cannot store: {e}") from e
    data = resolve_data(record.config, progress=False)
    context = RunContext(shape=data.shape, config=record.config, run_dir=record.run_dir, data=data)
    fresh = cls.from_options(options, context)
    fresh.load_state_dict(stored)
    found = first_difference(saved, fresh.state_dict(), "state_dict()")
    if found:
        raise CheckFailed(
            f"a fresh instance loaded with the state of a trained one gives another state: {found}"
        )
    keys = ", ".join(map(str, saved)) if isinstance(saved, dict) else type(saved).__name__
    return f"state_dict() round-trips ({keys or 'empty'})"


CHECKS: dict[str, Callable[[Case, Workspace], str]] = {
    "options": check_options,
    "trains": check_trains,
    "charges": check_charges,
    "resumes": check_resumes,
    "state": check_state,
    "composes": check_composes,
    "refuses": check_refuses,
}
