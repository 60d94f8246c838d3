"""Reference-system time (RST): what each unit of work would cost on one reference machine.

A table holds, per model shape, timings measured on the reference machine (`budgetlm calibrate`)
and a cost model fitted to them. Per pass (one micro-batch, forward only or forward + backward):

    seconds = a + b·B + Σ_stack c_stack · B · L_stack

with B the sequences in the micro-batch and L_stack the active blocks of each stack: an
intercept for fixed costs (launches, Python), a per-sequence term (embeddings, output head, data)
and a per-sequence-per-layer term per stack. Each optimizer step adds the measured cost of that
optimizer. A step is charged the sum over the passes it runs (training micro-batches, selection
forwards, Hessian passes): a dropped layer costs nothing, an extra forward costs what it costs.
The loop around the passes is charged by two overheads fitted from whole loop steps at two
micro-batch counts (`fit_loop_overheads`): `loop_overhead` once per optimizer step and
`micro_batch_overhead` once per training micro-batch of the loop.

Every table is checked when written and when loaded: it must carry the content hash of what was
measured (an accidental edit or a corrupted file fails it; a deliberate edit re-hashed with
`budgetlm calibrate --rehash` passes it), and its costs must be positive, grow with layers and
sequences, and lie within a tolerance of the fit — the check that would have caught the original
code's 7-layer entry that was 10x too cheap. Neither check can see an edit that is consistent with
itself (a whole entry scaled 10x): `probe_table` (rst.verify=probe) times a few passes on this
machine and refuses an entry priced off by more than PROBE_HIGH or PROBE_LOW, on the table's
machine type only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from budgetlm.budget.clock import Pass, Work
from budgetlm.errors import UserError

TABLE_VERSION = 1
# The cost model fitted to a table's points. It is part of the table's hash: the same
# measurements priced by another model are another reference, and a run started under one is not
# resumed under the other. 1: a + b·B + Σ c_s·B·L_s; 2: + Σ d_s·L_s, every term >= 0.
COST_MODEL = 2
PHASES = ("train", "forward")
DEFAULT_TABLE = "cpu-reference"
SHIPPED_PREFIX = "shipped table "


class TableError(UserError, ValueError):
    """A cost table that is malformed, fails its sanity checks, or does not cover a run."""


def shape_key(shape: Any) -> str:
    """Identity of a model shape: a hash of every field (a table entry prices exactly one)."""
    fields = dataclasses.asdict(shape) if dataclasses.is_dataclass(shape) else dict(shape)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _features(batch_size: int, active: dict[str, int], stacks: list[str]) -> list[float]:
    """[1, B, B·L_s..., L_s...]: fixed, per-sequence, per-sequence-layer and per-layer costs.

    The per-layer term is what a layer costs whatever the batch (kernel launches, reading its
    weights): small on a CPU, dominant for a small eager micro-batch on a GPU.
    """
    per_token = [float(batch_size * active[s]) for s in stacks]
    return [1.0, float(batch_size), *per_token, *(float(active[s]) for s in stacks)]


def _fit_nonnegative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Relative least squares with every coefficient kept >= 0.

    Every point counts alike, small passes as much as big ones. No cost term can be negative: a
    negative fixed cost prices small passes below zero, a negative per-layer or per-sequence cost
    makes more work cheaper somewhere; curvature and noise in the measurements show up as such
    terms. The most negative one is pinned to 0 and the rest refitted, until none is left.
    """
    free = list(range(x.shape[1]))
    while True:
        coef = np.zeros(x.shape[1])
        sol, *_ = np.linalg.lstsq(x[:, free] / y[:, None], np.ones_like(y), rcond=None)
        coef[free] = sol
        negative = [i for i in free if coef[i] < 0]
        if not negative:
            return coef
        free.remove(min(negative, key=lambda i: coef[i]))


@dataclass
class Point:
    """One measured pass: median seconds over repeats."""

    phase: str
    batch_size: int
    active: dict[str, int]
    seconds: float

    def label(self) -> str:
        layers = ", ".join(f"{s}={n}" for s, n in sorted(self.active.items()))
        return f"{self.phase} B={self.batch_size} layers({layers})"


@dataclass
class ShapeCosts:
    """Measurements and fitted cost model of one model shape on the reference machine."""

    label: str
    shape: dict[str, Any]
    points: list[Point]
    optimizer_seconds: dict[str, float]  # full depth, for reading; pricing uses the fit
    # optimizer -> [{"active": {stack: layers}, "seconds"}]: steps at each depth of the grid
    optimizer_points: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fit: dict[str, list[float]] = field(default_factory=dict)  # phase -> coefficients
    residuals: dict[str, list[float]] = field(default_factory=dict)  # phase -> relative
    optimizer_fit: dict[str, list[float]] = field(default_factory=dict)  # [o0, o_stack...]
    # What one step of the real loop costs beyond its passes and optimizer (planning, the clock,
    # metrics, Python), measured by a short real run: charged once per optimizer step.
    loop_overhead: float = 0.0
    # What the loop adds per micro-batch beyond the pass timed alone (the accumulation loop's
    # Python, host/device overlap unlike a synchronised pass), fitted together with
    # `loop_overhead` from runs at two micro-batch counts: charged once per training micro-batch.
    # 0 in tables measured before it existed, and then left out of the file and its hash.
    micro_batch_overhead: float = 0.0

    @property
    def stacks(self) -> list[str]:
        return sorted(self.points[0].active)

    @property
    def key(self) -> str:
        return shape_key(self.shape)

    def refit(self) -> None:
        n = len(self.stacks)
        for phase in PHASES:
            pts = [p for p in self.points if p.phase == phase]
            if len(pts) < 2 + n:
                raise TableError(
                    f"{self.label}: {len(pts)} {phase} points cannot fit "
                    f"{2 + n} coefficients; calibrate more batch sizes and depths"
                )
            x = np.array([_features(p.batch_size, p.active, self.stacks) for p in pts])
            y = np.array([p.seconds for p in pts])
            if len({p.batch_size for p in pts}) < 2 or len(pts) < 2 + 2 * n:
                # One batch size cannot tell a layer's fixed cost from its per-sequence cost.
                x[:, 2 + n :] = 0.0
            coef = _fit_nonnegative(x, y)
            self.fit[phase] = [float(c) for c in coef]
            self.residuals[phase] = [float(r) for r in (x @ coef - y) / y]
        for name, opt_points in self.optimizer_points.items():
            # seconds = o0 + Σ o_stack · L_stack: only parameters with gradients are updated.
            x = np.array([[1.0] + [float(p["active"][s]) for s in self.stacks] for p in opt_points])
            y = np.array([p["seconds"] for p in opt_points])
            coef, *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
            # Never cheaper with more layers, never negative: fall back to a constant.
            if (coef < 0).any():
                coef = np.array([float(np.median(y))] + [0.0] * len(self.stacks))
            self.optimizer_fit[name] = [float(c) for c in coef]

    def optimizer_step_seconds(self, name: str, active: dict[str, int] | None) -> float | None:
        """Cost of one step of `name` with these active layers (None: not measured)."""
        if name in self.optimizer_fit and active is not None:
            coef = self.optimizer_fit[name]
            return float(
                coef[0] + sum(c * active[s] for c, s in zip(coef[1:], self.stacks, strict=True))
            )
        return self.optimizer_seconds.get(name)

    def pass_seconds(self, phase: str, batch_size: int, active: dict[str, int]) -> float:
        coef = self.fit[phase]
        return float(np.dot(coef, _features(batch_size, active, self.stacks)))

    def check(self, tolerance: float) -> None:
        """Refuse a table whose costs are not positive, not monotone, or far from the fit."""
        problems = []
        for p in self.points:
            if not p.seconds > 0:
                problems.append(f"{p.label()}: non-positive cost {p.seconds}")
        for phase in PHASES:
            coef = self.fit[phase]
            if coef[1] <= 0 and all(c <= 0 for c in coef[2 : 2 + len(self.stacks)]):
                problems.append(f"{phase}: cost does not grow with sequences ({coef})")
            smallest = self.pass_seconds(phase, 1, dict.fromkeys(self.stacks, 1))
            if smallest <= 0:
                problems.append(f"{phase}: a one-sequence one-layer pass is priced {smallest:.3g}s")
            n = len(self.stacks)
            for stack, c, d in zip(self.stacks, coef[2 : 2 + n], coef[2 + n :], strict=True):
                if c + d <= 0:
                    problems.append(
                        f"{phase}: cost does not grow with {stack} layers (c={c:.3g}, d={d:.3g})"
                    )
            pts = [p for p in self.points if p.phase == phase]
            for p, r in zip(pts, self.residuals[phase], strict=True):
                if abs(r) > tolerance:
                    fitted = p.seconds * (1 + r)
                    problems.append(
                        f"{p.label()}: measured {p.seconds:.6g}s but the fit gives {fitted:.6g}s "
                        f"({r:+.0%}, tolerance {tolerance:.0%})"
                    )
            problems += _monotone_problems(pts, tolerance)
        for name, sec in self.optimizer_seconds.items():
            if not sec > 0:
                problems.append(f"optimizer {name}: non-positive cost {sec}")
        if problems:
            shown = problems[:12]
            if len(problems) > len(shown):
                shown.append(f"... and {len(problems) - len(shown)} more")
            raise TableError(f"cost table entry {self.label!r} refused:\n  " + "\n  ".join(shown))


def _monotone_problems(points: list[Point], tolerance: float) -> list[str]:
    """Measured points must not get cheaper with more layers or sequences (beyond noise)."""
    problems = []
    for a in points:
        for b in points:
            bigger = b.batch_size >= a.batch_size and all(
                b.active[s] >= a.active[s] for s in a.active
            )
            if bigger and a is not b and b.seconds < a.seconds * (1 - tolerance):
                problems.append(
                    f"{b.label()} ({b.seconds:.6g}s) is cheaper than the smaller "
                    f"{a.label()} ({a.seconds:.6g}s)"
                )
    return problems


@dataclass
class CostTable:
    """A versioned set of per-shape cost models measured on one reference machine."""

    machine: dict[str, Any]
    entries: dict[str, ShapeCosts] = field(default_factory=dict)  # shape key -> costs
    tolerance: float = 0.25
    version: int = TABLE_VERSION
    source: str = ""
    _shape_keys: dict[Any, str] = field(default_factory=dict, repr=False, compare=False)

    # -- content and identity ---------------------------------------------------------------
    def to_dict(self, derived: bool = True) -> dict[str, Any]:
        """The table as JSON; `derived=False` leaves out the fit and residuals (recomputed)."""
        entries = []
        for e in self.entries.values():
            d = dataclasses.asdict(e)
            if not d["micro_batch_overhead"]:
                # Absent, as in every table written before the term existed: their hashes hold.
                del d["micro_batch_overhead"]
            if not derived:
                d.pop("fit"), d.pop("residuals"), d.pop("optimizer_fit")
            entries.append(d)
        return {
            "version": self.version,
            "cost_model": COST_MODEL,
            "machine": self.machine,
            "tolerance": self.tolerance,
            "entries": entries,
        }

    @property
    def hash(self) -> str:
        """Content hash of what was measured and the cost model fitted to it (the fit itself is
        derived from both)."""
        content = json.dumps(self.to_dict(derived=False), sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()

    def _measurement_hashes(self) -> set[str]:
        """The hashes a file of these measurements may carry: this cost model's, or that of a
        table written before the cost model was part of the hash."""
        legacy = self.to_dict(derived=False)
        del legacy["cost_model"]
        old = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()
        return {self.hash, old}

    def add(self, entry: ShapeCosts) -> None:
        entry.refit()
        entry.check(self.tolerance)
        self.entries[entry.key] = entry

    def check(self, tolerance: float | None = None) -> None:
        for entry in self.entries.values():
            entry.refit()
            entry.check(self.tolerance if tolerance is None else tolerance)

    # -- files --------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        self.check()
        data = self.to_dict()
        data["hash"] = self.hash
        tmp = path.with_suffix(path.suffix + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(path)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], source: str = "", verify_hash: bool = True
    ) -> CostTable:
        """A table from its JSON; refused without a hash or with one that does not match
        (`verify_hash=False`: only to re-hash a table edited on purpose)."""
        if data.get("version") != TABLE_VERSION:
            raise TableError(
                f"{source}: table version {data.get('version')}, expected {TABLE_VERSION}"
            )
        table = cls(machine=data["machine"], tolerance=data.get("tolerance", 0.25), source=source)
        for e in data["entries"]:
            points = [Point(**p) for p in e["points"]]
            entry = ShapeCosts(
                e["label"],
                e["shape"],
                points,
                e["optimizer_seconds"],
                e.get("optimizer_points", {}),
                loop_overhead=e.get("loop_overhead", 0.0),
                micro_batch_overhead=e.get("micro_batch_overhead", 0.0),
            )
            table.entries[entry.key] = entry
        if not verify_hash:
            return table
        stored = data.get("hash")
        if stored is None:
            raise TableError(
                f"{source or 'the table'}: no content hash, so an accidental edit or a corrupted "
                "file could not be told from a measured table; `budgetlm calibrate` always writes "
                f"one. {_rehash_hint(source)}"
            )
        if stored not in table._measurement_hashes():
            raise TableError(
                f"{source or 'the table'}: content hash mismatch, the table was edited or "
                f"corrupted. {_rehash_hint(source)}"
            )
        return table

    @classmethod
    def load(cls, path: str | Path | None = None, tolerance: float | None = None) -> CostTable:
        """Load and check a table: a file, or a shipped table by name (default: CPU reference)."""
        name = str(path) if path is not None else DEFAULT_TABLE
        candidate = Path(name)
        if candidate.is_file():
            text, source = candidate.read_text(), str(candidate)
        else:
            shipped = resources.files("budgetlm.budget") / "tables" / f"{name}.json"
            if not shipped.is_file():
                raise TableError(f"no cost table {name!r} (neither a file nor a shipped table)")
            text, source = shipped.read_text(), f"{SHIPPED_PREFIX}{name}"
        try:
            table = cls.from_dict(json.loads(text), source)
        except TableError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # not JSON, or not a table
            kind = type(e).__name__
            raise TableError(f"{source}: not a readable cost table ({kind}: {e})") from e
        try:
            table.check(tolerance)
        except TableError as e:
            raise TableError(f"{source}: {e}") from e
        return table

    # -- pricing ------------------------------------------------------------------------------
    def entry_for(self, shape: Any) -> ShapeCosts | None:
        # Every pass of every step is priced through here (twice a step: planned, charged), and
        # a shape's key is a hash of all its fields: memoised for the (frozen, hashable)
        # ModelShape the loop passes.
        try:
            key = self._shape_keys.get(shape)
        except TypeError:  # a plain dict of fields
            return self.entries.get(shape_key(shape))
        if key is None:
            key = self._shape_keys[shape] = shape_key(shape)
        return self.entries.get(key)

    def cost_function(
        self, optimizer: str, fallback: str = "refuse", on_warning: Callable[[str], None] = None
    ) -> Callable[[Work], float]:
        """Price a step's Work in reference seconds.

        `fallback="flops"` prices a shape or optimizer the table does not cover from FLOPs,
        scaled by the table's seconds per FLOP, and reports it once through `on_warning`.
        """
        warned: set[str] = set()

        def warn(message: str) -> None:
            if message not in warned:
                warned.add(message)
                (on_warning or (lambda m: warnings.warn(m, stacklevel=3)))(message)

        def price_pass(p: Pass) -> float:
            """The pass, and for a training micro-batch of the loop its per-micro-batch
            overhead (an uncovered shape, priced from FLOPs, has no measured loop)."""
            entry = self.entry_for(p.shape)
            if entry is not None:
                seconds = entry.pass_seconds(p.kind, p.batch_size, dict(p.active_layers))
                if p.kind == "train" and p.purpose == "training":
                    seconds += entry.micro_batch_overhead
                return seconds
            if fallback != "flops":
                raise TableError(self.not_covered_message(p.shape))
            warn(f"RST for an uncovered shape ({_describe(p.shape)}) estimated from FLOPs")
            return p.flops * self.seconds_per_flop(p.kind)

        def parts(work: Work) -> dict[str, float]:
            # The per-micro-batch overhead goes with its pass, under "training" (reports split by
            # the four purposes training, selection, hessian, optimizer); the per-step
            # `loop_overhead` goes with the optimizer step.
            split: dict[str, float] = {}
            for p in work.passes:
                split[p.purpose] = split.get(p.purpose, 0.0) + price_pass(p)
            if work.optimizer_steps:
                split["optimizer"] = work.optimizer_steps * self.optimizer_seconds(
                    work, optimizer, fallback, warn
                )
            return split

        def price(work: Work) -> float:
            return sum(parts(work).values())

        price.parts = parts  # type: ignore[attr-defined]
        return price

    def optimizer_seconds(
        self, work: Work, optimizer: str, fallback: str, warn: Callable[[str], None]
    ) -> float:
        shape = work.passes[0].shape if work.passes else None
        entry = self.entry_for(shape) if shape is not None else None
        name = work.optimizer or optimizer
        # The layers that got gradients this step: the deepest training pass of each stack.
        trained = [dict(p.active_layers) for p in work.passes if p.kind == "train"]
        active = {s: max(t[s] for t in trained) for s in trained[0]} if trained else None
        if entry is not None:
            seconds = entry.optimizer_step_seconds(name, active)
            if seconds is not None:
                return seconds + entry.loop_overhead
        if fallback != "flops":
            where = entry.label if entry is not None else _describe(shape)
            raise TableError(
                f"the RST table has no cost for optimizer {name!r} on {where}: "
                f"{self.optimizer_hint(name)}, or set rst.fallback=flops to price it from the "
                "table's AdamW step (a recorded warning)"
            )
        warn(f"RST for optimizer {name!r} estimated from the table's AdamW cost")
        if entry is not None and "adamw" in entry.optimizer_seconds:
            return entry.optimizer_seconds["adamw"]
        return float(
            np.median([s for e in self.entries.values() for s in e.optimizer_seconds.values()])
        )

    def optimizer_hint(self, name: str) -> str:
        """The command that prices optimizer `name` (a plug-in's import path included)."""
        if self.source and not self.source.startswith(SHIPPED_PREFIX):
            out = f"--out {self.source}` (on the machine it describes: the table is extended)"
        else:
            out = "--out my-table.json` on the reference machine, then set rst.table=my-table.json"
        return f"price its step with `budgetlm calibrate CONFIG --optimizers {name} adamw {out}"

    def seconds_per_flop(self, phase: str) -> float:
        """Reference seconds per FLOP of full-depth passes at the largest measured batch."""
        from budgetlm.models import ModelShape, forward_flops

        ratios = []
        for entry in self.entries.values():
            shape = ModelShape(**entry.shape)
            full = {s: max(p.active[s] for p in entry.points) for s in entry.stacks}
            batch = max(p.batch_size for p in entry.points)
            flops = forward_flops(shape, batch, active_layers=full) * (3 if phase == "train" else 1)
            ratios.append(entry.pass_seconds(phase, batch, full) / flops)
        if not ratios:
            raise TableError("the RST table is empty")
        return float(np.median(ratios))

    def not_covered_message(self, shape: Any) -> str:
        covered = ", ".join(sorted(e.label for e in self.entries.values())) or "nothing"
        shipped = [name for name in shipped_tables() if shape_is_in_shipped(name, shape)]
        hint = (
            f" The shipped table {shipped[0]} covers it: set rst.table={shipped[0]}."
            if shipped
            else ""
        )
        return (
            f"the RST table {self.source or ''} does not cover this model shape "
            f"({_describe(shape)}); it covers: {covered}.{hint} Measure one on the reference "
            "machine with `budgetlm calibrate CONFIG --out TABLE.json` and set "
            "rst.table=TABLE.json, or set rst.fallback=flops to estimate from FLOPs (recorded as "
            "a warning)"
        )


def fit_loop_overheads(
    micro_batches: Sequence[int], residuals: Sequence[float]
) -> tuple[float, float]:
    """(per step, per micro-batch) overheads from whole loop steps: least squares, both >= 0.

    `residuals[i]`: what one measured loop step at `micro_batches[i]` micro-batches took beyond
    its priced passes and optimizer step (several steps at a count may be given, or their median).
    The model is residual = loop_overhead + k · micro_batch_overhead. One count alone cannot tell
    the two apart: everything is then charged per step, as before the per-micro-batch term. A
    negative term (noise, or passes that overlap better in the loop than timed alone) is pinned to
    0 and the other refitted: a negative overhead would make more micro-batches cheaper.
    """
    k = np.asarray(micro_batches, dtype=float)
    r = np.asarray(residuals, dtype=float)
    if k.shape != r.shape or k.size == 0:
        raise ValueError("fit_loop_overheads: one residual per micro-batch count, at least one")
    if len(set(k.tolist())) < 2:
        return max(0.0, float(r.mean())), 0.0
    x = np.stack([np.ones_like(k), k], axis=1)
    (step, micro), *_ = np.linalg.lstsq(x, r, rcond=None)
    if step >= 0 and micro >= 0:
        return float(step), float(micro)
    # The constrained optimum lies on an edge: the better of the two one-term fits.
    candidates = [
        (max(0.0, float(r.mean())), 0.0),
        (0.0, max(0.0, float(k @ r / (k @ k)))),
    ]
    return min(candidates, key=lambda c: float(np.sum((c[0] + c[1] * k - r) ** 2)))


def _rehash_hint(source: str) -> str:
    if source.startswith(SHIPPED_PREFIX):
        return "A shipped table is never edited: reinstall budgetlm."
    return (
        "If it was edited by hand on purpose, re-hash it with "
        f"`budgetlm calibrate --rehash {source or 'TABLE.json'}` (the sanity checks run again; a "
        "run started under the old hash does not resume under the new one)."
    )


def rehash_table(path: str | Path) -> tuple[str | None, str]:
    """Re-hash a table file edited on purpose: check it, write it with its new content hash.

    Returns (old hash or None, new hash). The checks (`CostTable.check`) still refuse an entry
    that is inconsistent; an edit consistent with itself (a whole entry scaled) is accepted,
    which is what the hash alone can never tell apart from a measurement (docs/rst.md).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        table = CostTable.from_dict(data, str(path), verify_hash=False)
        table.check()
    except TableError as e:
        raise TableError(f"{path}: {e}") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise TableError(f"{path}: not a readable cost table ({type(e).__name__}: {e})") from e
    table.save(path)
    return data.get("hash"), table.hash


# -- the probe: does this machine agree with the table? ------------------------------------------

# A table is refused when an entry's measured/priced ratio leaves [PROBE_LOW, PROBE_HIGH].
# On its own machine type an honest entry measures about 1x its price, more under load: the
# shipped cpu-xeon table on its 2-core Xeon probed at 1.2-1.4x and, another time, 2.3-2.9x, with
# 3-4 other processes busy (load average 3.5-4); two threads instead of one measured 4-12x.
# Load only ever makes a pass slower, so the band is lopsided:
# - too expensive, below 1/3: load cannot explain it; only a machine 3x faster than the reference
#   could, and that is another machine type, refused before any timing.
# - too cheap, above 5: the quick look runs one thread and keeps the fastest of three repeats,
#   and still needs a machine oversubscribed about fivefold to get there from an honest table.
# A whole entry 10x off (the original 7-layer typo's size, a scaled entry re-hashed) is caught:
# 10x too cheap on any machine of the type not 2x faster than the reference, busy or idle; 10x
# too expensive unless load has slowed the passes 3.3x. Errors inside the band (up to 5x too
# cheap, 3x too expensive) are not, and are not meant to be: no probe of a few seconds on a
# shared machine can tell them from load. Smaller errors inside one entry are the checks' job.
PROBE_LOW = 1 / 3
PROBE_HIGH = 5.0
# The machine fields that must agree for a probe to mean anything: the processor that runs the
# passes (the GPU for a CUDA table, the CPU otherwise).
_PROCESSOR = {"cuda": "gpu", "cpu": "cpu"}

ProbePoint = tuple[str, int, dict[str, int]]  # phase, batch size, active layers per stack
# measure(entry, points, look) -> seconds of one pass for each point, on this machine. look 0 is
# the quick look (on a CPU: one thread, which a busy machine slows least); look 1, taken only
# when look 0 finds the entry too cheap, is set up exactly as the table was measured (its thread
# count). Neither can come out faster than the reference machine idle, so the elementwise minimum
# keeps the "too expensive" side sound and gives the "too cheap" side its best chance.
Measure = Callable[[ShapeCosts, list[ProbePoint], int], list[float]]


def probe_points(entry: ShapeCosts) -> list[ProbePoint]:
    """Three cheap passes that span the cost model: a training and a forward pass at full depth,
    and a training pass with one layer per stack, all at the smallest measured batch."""
    batch = min(p.batch_size for p in entry.points)
    full = {s: max(p.active[s] for p in entry.points) for s in entry.stacks}
    one = dict.fromkeys(entry.stacks, 1)
    return [("train", batch, full), ("forward", batch, full), ("train", batch, one)]


def machine_disagreements(reference: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """Why timings on `here` say nothing about a table measured on `reference` (empty: agree)."""
    keys = ["device", _PROCESSOR.get(reference.get("device", ""), "cpu")]
    return [
        f"{k}: table {reference.get(k)!r}, this machine {here.get(k)!r}"
        for k in keys
        if reference.get(k) != here.get(k)
    ]


@dataclass
class ProbeResult:
    """What a probe measured: per probed entry, its points' measured/priced ratios."""

    ratios: dict[str, list[float]]  # entry label -> ratio per probe point
    band: tuple[float, float] = (PROBE_LOW, PROBE_HIGH)

    def ratio(self, label: str) -> float:
        """An entry's ratio: the median of its points (one odd point does not decide)."""
        return float(np.median(self.ratios[label]))

    def summary(self) -> str:
        return ", ".join(f"{label} x{self.ratio(label):.2f}" for label in self.ratios)


def probe_table(
    table: CostTable,
    here: dict[str, Any],
    measure: Measure,
    first: Any = None,
    max_entries: int = 2,
    band: tuple[float, float] = (PROBE_LOW, PROBE_HIGH),
) -> ProbeResult:
    """Time a few passes of a couple of the table's entries on this machine; refuse the table if
    the machine is another type or an entry's measured/priced ratio is outside `band`.

    `first`: a shape probed first when the table covers it (the run's own: the entry that prices
    it); the rest are the cheapest entries. `measure` does the timing (train/calibrate.py), so
    the judgement here is tested with planted figures.
    """
    where = table.source or "the RST table"
    disagree = machine_disagreements(table.machine, here)
    if disagree:
        raise TableError(
            f"{where}: rst.verify=probe needs the machine type the table was measured on, and "
            f"this is another ({'; '.join(disagree)}). Run on that machine type, or use "
            "rst.verify=hash (the table then prices this run as the reference would)"
        )
    chosen = choose_probe_entries(table, first, max_entries)
    low, high = band
    result = ProbeResult({}, band)
    problems = []
    for entry in chosen:
        points = probe_points(entry)
        priced = [entry.pass_seconds(ph, b, act) for ph, b, act in points]
        measured = measure(entry, points, 0)
        result.ratios[entry.label] = [m / p for m, p in zip(measured, priced, strict=True)]
        if result.ratio(entry.label) > high:  # a second, faithful look before refusing
            again = measure(entry, points, 1)
            measured = [min(a, b) for a, b in zip(measured, again, strict=True)]
            result.ratios[entry.label] = [m / p for m, p in zip(measured, priced, strict=True)]
        r = result.ratio(entry.label)
        if r > high:
            problems.append(
                f"{entry.label}: passes measure {r:.1f}x what the table prices them (above "
                f"{high:g}x: the table is too cheap, or this machine is far busier than it was)"
            )
        elif r < low:
            problems.append(
                f"{entry.label}: passes measure {r:.2f}x what the table prices them (below "
                f"{low:.2g}x: the table is too expensive for this machine type)"
            )
    if problems:
        raise TableError(
            f"{where} refused by rst.verify=probe:\n  " + "\n  ".join(problems) + "\n"
            "Re-measure the table on this machine type (`budgetlm calibrate`); if the machine "
            "was busy, retry when it is idle"
        )
    return result


def choose_probe_entries(table: CostTable, first: Any, max_entries: int) -> list[ShapeCosts]:
    """The entry of `first` (if covered), then the cheapest others, `max_entries` in all."""
    own = table.entry_for(first) if first is not None else None

    def cost(e: ShapeCosts) -> float:
        return sum(e.pass_seconds(ph, b, act) for ph, b, act in probe_points(e))

    rest = sorted((e for e in table.entries.values() if e is not own), key=cost)
    return ([own] if own is not None else [])[:max_entries] + rest[: max_entries - bool(own)]


def shipped_tables() -> list[str]:
    """Names of the tables shipped with the package (`rst.table=NAME`)."""
    folder = resources.files("budgetlm.budget") / "tables"
    names = (f.name for f in folder.iterdir())
    return sorted(n.removesuffix(".json") for n in names if n.endswith(".json"))


def shape_is_in_shipped(name: str, shape: Any) -> bool:
    """Whether shipped table `name` has an entry for `shape` (read without fitting)."""
    if shape is None:
        return False
    text = (resources.files("budgetlm.budget") / "tables" / f"{name}.json").read_text()
    return any(shape_key(e["shape"]) == shape_key(shape) for e in json.loads(text)["entries"])


def _describe(shape: Any) -> str:
    if shape is None:
        return "unknown shape"
    d = dataclasses.asdict(shape) if dataclasses.is_dataclass(shape) else dict(shape)
    keys = ("family", "n_layers", "n_decoder_layers", "d_model", "d_ff", "vocab_size", "seq_len")
    return " ".join(f"{k}={d[k]}" for k in keys if d.get(k))
