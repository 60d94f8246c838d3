"""The one training loop. Methods plug into its events (the contract: budgetlm/api.py).

Per optimizer step:
  1. plan     methods edit a StepPlan (active layers, extra passes); the plan becomes `Work`,
              the clock says the progress p the step reaches once charged (p = 1 on the last)
  2. lr       every schedule is evaluated at that p
  3. run      micro-batches (gradient accumulation, token-weighted), clip, check that the loss
              and gradient norm are finite (train.on_nonfinite), optimizer step
  4. charge   the clock adds the step's cost in every unit; wall time excludes eval and I/O
  5. observe  log, evaluate and checkpoint at progress points, then stop when the budget is spent

Nothing non-finite is ever applied or saved: a NaN/inf loss or gradient norm halts the run before
the optimizer step (or skips the step, train.on_nonfinite=skip), a NaN/inf held-out loss always
halts, and a checkpoint is written only when every parameter is finite.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from tqdm.auto import tqdm

from budgetlm.api import Method, StepPlan
from budgetlm.budget.work import step_work
from budgetlm.config import TrainConfig
from budgetlm.errors import DivergedError
from budgetlm.optim import set_lr
from budgetlm.optim.modes import evaluation_weights, to_train_mode
from budgetlm.schedules import ScheduleSpec
from budgetlm.train.checkpoint import prune_checkpoints
from budgetlm.train.compile import compile_model
from budgetlm.train.distributed import Dist, ddp_wrap, full_state_dicts
from budgetlm.train.evaluate import heldout_sums, loss_metrics
from budgetlm.train.metrics import MetricsLog
from budgetlm.train.prefetch import BatchPrefetcher
from budgetlm.train.state import TrainState


class Diverged(DivergedError):
    """The loss, the gradient norm, the held-out loss or a weight became NaN or infinite."""


_HINT = "lower optim.lr or clip harder (a smaller optim.grad_clip > 0)"


class _StopSignals:
    """SIGINT/SIGTERM ask the loop to checkpoint after the current step and exit cleanly.

    Signals after the first are only counted: raising KeyboardInterrupt on them could land in
    the middle of the checkpoint write the first one asked for (an impatient second Ctrl-C, a
    scheduler repeating SIGTERM) and lose every step since the last checkpoint. To stop at once
    without a checkpoint, send SIGKILL.
    """

    def __init__(self) -> None:
        self.requested = False
        self.repeats = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        with contextlib.suppress(ValueError):  # signals only work in the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.repeats += 1
            if self.repeats == 1:  # os.write: print() is not safe inside a signal handler
                os.write(
                    2,
                    b"budgetlm: already stopping: finishing the step and its checkpoint "
                    b"(SIGKILL stops at once, losing the steps since the last checkpoint)\n",
                )
            return
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def leaves_parameters_unused(methods: list[Method]) -> bool:
    """Whether DDP must search each step for parameters that got no gradient (a cost on every
    step): only when a method declares that it leaves some unused
    (`Method.leaves_parameters_unused`: dropped or not-yet-stacked layers)."""
    return any(m.leaves_parameters_unused for m in methods)


def _next_point(progress: float, every: float) -> float:
    """The next multiple of `every` strictly above `progress` (inf when `every` is 0)."""
    if every <= 0:
        return math.inf
    return (math.floor(progress / every + 1e-9) + 1) * every


def _all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One device-side flag: every element of every tensor is finite (local shards under FSDP)."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    if not local:
        return torch.ones((), dtype=torch.bool)
    return torch.stack([t.isfinite().all() for t in local]).all()


@dataclass
class _StepResult:
    loss: torch.Tensor  # on the device: read (a host sync) only on log steps
    grad_norm: torch.Tensor
    lr: float
    tokens: int
    skipped: str | None = None  # what was non-finite when train.on_nonfinite=skip skipped it


def _host_target_count(labels: torch.Tensor) -> int:
    """Target tokens (labels not -100) of a micro-batch still on the host, counted by numpy: no
    tensor is read back, so nothing here can wait on a device (a test counts tensor reads)."""
    if labels.device.type != "cpu":  # a method supplied rows already on the device
        return int((labels != -100).sum())
    return int(np.count_nonzero(labels.numpy() != -100))


def _now() -> float:
    return time.perf_counter()  # looked up on each call: tests plant a clock


@dataclass
class _Cadence:
    """When the loop next evaluates and checkpoints (progress points), and the throughput window:
    the steps since the last "train" record and the seconds they took. Evaluation and
    checkpointing inside the window (`paused`) are not training time, so tok_per_s leaves them
    out."""

    next_eval: float
    next_checkpoint: float
    window_steps: int = 0
    window_start: float = field(default_factory=_now)
    window_paused: float = 0.0  # seconds of evaluation and checkpointing since window_start

    @contextlib.contextmanager
    def paused(self) -> Any:
        start = _now()
        try:
            yield
        finally:
            self.window_paused += _now() - start

    def window_seconds(self) -> float:
        return _now() - self.window_start - self.window_paused

    def restart_window(self) -> None:
        self.window_steps, self.window_start, self.window_paused = 0, _now(), 0.0

    @classmethod
    def at(cls, progress: float, cfg: TrainConfig) -> _Cadence:
        return cls(
            _next_point(progress, cfg.eval_every), _next_point(progress, cfg.checkpoint_every)
        )


@dataclass
class Trainer:
    state: TrainState
    stream: Any  # budgetlm.data.loader.BatchStream
    eval_batches: list[dict[str, torch.Tensor]]
    schedule: ScheduleSpec
    device: torch.device
    cfg: TrainConfig
    run_dir: Path
    tokens_per_example: int
    grad_clip: float
    checkpoint_meta: dict[str, Any]
    compile: bool = False
    optimizer_name: str | None = None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    log: MetricsLog | None = None
    _last: dict[str, Any] = field(default_factory=dict)
    _compiled: tuple[Any, Any] | None = None
    _prefetch: BatchPrefetcher | None = None

    @property
    def dist(self) -> Dist:
        """This process's place in the job: the state's, which methods read too."""
        return self.state.dist

    def _forward(self) -> Callable[..., Any]:
        """The model to call: DDP-wrapped under data parallelism, compiled when asked; wrapped
        again when a method replaced the model or changed its parameters (stacking, growth)."""
        model = self.state.model
        key = (id(model), tuple(id(p) for p in model.parameters()))
        if self._compiled is None or self._compiled[0] != key:
            wrapped = model
            if self.dist.mode == "ddp":
                wrapped = ddp_wrap(
                    model, self.dist, find_unused=leaves_parameters_unused(self.state.methods)
                )
            if self.compile:
                wrapped = compile_model(wrapped)
            self._compiled = (key, wrapped)
        return self._compiled[1]

    # -- one step ---------------------------------------------------------------------------
    def _micro_batches(self, plan: StepPlan) -> list[tuple[dict[str, torch.Tensor], int]]:
        """This rank's micro-batches, its contiguous share of the step's global batch, each with
        its number of target tokens. The tokens are counted before the copy to the device: on
        the host's batch the count costs no device sync (on the device copy it would cost one
        per micro-batch). When the run's stream supplied the rows, the next step's are started
        in the background (budgetlm/train/prefetch.py)."""
        size = plan.batch_size // plan.micro_batches
        per_rank = plan.micro_batches // self.dist.world
        first = self.dist.rank * per_rank
        spans = [(i * size, (i + 1) * size) for i in range(first, first + per_rank)]
        out, from_stream = [], True
        for start, stop in spans:
            batch, supplied = self._rows(plan, start, stop)
            from_stream = from_stream and not supplied
            for m in self.state.methods:
                batch = m.before_batch(self.state, plan, batch)
            count = _host_target_count(batch["labels"])
            out.append(({k: v.to(self.device, non_blocking=True) for k, v in batch.items()}, count))
        if from_stream:
            self._prefetcher().schedule([(plan.step + 1, a, b) for a, b in spans])
        return out

    def _rows(self, plan: StepPlan, start: int, stop: int) -> tuple[dict[str, torch.Tensor], bool]:
        """Rows [start, stop) of the step's batch, and whether a method supplied them (batch
        selection) instead of the run's stream: then the stream's rows are never built."""
        for m in self.state.methods:
            rows = m.batch_rows(self.state, plan, start, stop)
            if rows is not None:
                return rows, True
        return self._prefetcher().get(plan.step, start, stop), False

    def _prefetcher(self) -> BatchPrefetcher:
        if self._prefetch is None:
            self._prefetch = BatchPrefetcher(
                self.stream, enabled=self.cfg.prefetch, pin=self.device.type == "cuda"
            )
        return self._prefetch

    def _train_step(self, plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor, str | None]:
        """Forward/backward over the micro-batches, clip, then the optimizer step unless the
        loss or the gradient norm is non-finite: then the step returns what was (and zeroes
        the gradients) without touching the weights or the optimizer state."""
        state, model = self.state, self.state.model
        forward = self._forward()
        model.train()
        state.optimizer.zero_grad(set_to_none=True)
        batches = self._micro_batches(plan)
        # Token-weighted accumulation: the step's loss is the mean over all its target tokens,
        # on every rank together (data parallelism averages gradients over ranks: x world).
        total = max(1.0, self.dist.total(float(sum(c for _, c in batches)), self.device))
        scale = self.dist.world / total
        step_loss = torch.zeros((), device=self.device)
        for i, (batch, count) in enumerate(batches):
            # DDP reduces gradients once, after the last micro-batch.
            sync = self.dist.mode != "ddp" or i == len(batches) - 1
            with contextlib.nullcontext() if sync else forward.no_sync():
                with self.autocast():
                    out = forward(batch, active=plan.active)
                for m in state.methods:
                    m.after_forward(state, batch, out)
                (out.loss * (count * scale)).backward()
            step_loss += out.loss.detach().float() * (count / total)
        # The one collective of a step besides the gradients' (none for a single process), kept
        # every step on purpose: it is the finiteness flag and the logged loss at once. A sum
        # over ranks is non-finite when any rank's part is, so every rank takes the same
        # decision below, even when only one rank's loss went bad. The gradient norm (the same
        # on every rank) is no substitute: cross-entropy's gradient does not depend on the loss
        # value, so a loss that overflowed in its reduction can come with finite gradients.
        # Reducing a flag here and the loss on log steps only would cost the same one scalar
        # collective per step, plus one per log step. The value is read on the host (a sync)
        # only on log steps and at the last step.
        step_loss = self.dist.sum(step_loss)
        grad_norm = self._grad_norm()
        # The one host sync of a step that is not logged. Every rank reads the same flag: the
        # loss is summed over ranks and the gradients are reduced before their norm is taken.
        if not bool(torch.isfinite(step_loss) & torch.isfinite(grad_norm)):
            state.optimizer.zero_grad(set_to_none=True)
            # No optimizer hooks either: they belong to an optimizer step, and none happens.
            return step_loss, grad_norm, "loss" if not step_loss.isfinite() else "gradient norm"
        for m in state.methods:
            m.before_optimizer_step(state)
        state.optimizer.step()
        for m in state.methods:
            m.after_optimizer_step(state)
        return step_loss, grad_norm, None

    def _grad_norm(self) -> torch.Tensor:
        """The global gradient norm, clipped to optim.grad_clip when that is positive (and
        taken anyway without clipping: the finiteness check reads it)."""
        params = list(self.state.model.parameters())
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor

    # -- observation --------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        batches = self.eval_batches
        if self.dist.mode == "ddp":
            # Each rank scores its share of the held-out batches and the sums are added. (FSDP
            # ranks must run the same forwards together, so there every rank scores them all.)
            batches = batches[self.dist.share(len(batches))]
        with evaluation_weights(self.state.optimizer):
            total, count = heldout_sums(self.state.model, batches, self.device, self.autocast())
        if self.dist.mode == "ddp":
            sums = torch.tensor([total, count], dtype=torch.float64, device=self.device)
            total, count = self.dist.sum(sums).tolist()
            count = round(count)
        metrics = loss_metrics(total, count)
        if not math.isfinite(metrics["val_loss"]):  # whatever train.on_nonfinite says
            self._record("diverged", nonfinite="held-out loss")
            raise Diverged(
                f"diverged: the held-out loss is {metrics['val_loss']} at step {self.state.step} "
                f"(p={self.state.clock.progress:.3f}); no checkpoint was written at this step; "
                f"{_HINT}"
            )
        for m in self.state.methods:
            m.on_eval(self.state, metrics)
        return metrics

    def _record(self, event: str, **values: Any) -> dict[str, Any]:
        clock = self.state.clock
        record = {
            "event": event,
            "step": self.state.step,
            "p": round(clock.progress, 6),
            "tokens": clock.spent["tokens"],
            "flops": clock.spent["flops"],
            "wall_s": round(clock.spent["seconds"], 4),
            "rst_s": clock.spent["rst"] if "rst" in clock.extra_costs else None,
            "rst_per_wall": (
                round(clock.spent["rst"] / clock.spent["seconds"], 4)
                if "rst" in clock.extra_costs and clock.spent["seconds"] > 0
                else None
            ),
            "epoch": round(self.stream.epochs_at(self.state.step), 4),
            **values,
        }
        if self.log is not None:
            self.log.write(record)
        return record

    def save(self) -> Path:
        """Checkpoint the state, after checking that every parameter is finite (a NaN weight
        would make every later resume diverge: better the previous checkpoint). The weights
        saved are the ones to evaluate (budgetlm/optim/modes.py)."""
        with evaluation_weights(self.state.optimizer):
            return self._save()

    def _save(self) -> Path:
        bad = not bool(_all_finite(list(self.state.model.parameters())))
        if self.dist.active:  # FSDP ranks hold different shards: all must agree
            bad = self.dist.max([float(bad)], self.device)[0] > 0
        if bad:
            self._record("diverged", nonfinite="weights")
            raise Diverged(
                f"diverged: a weight is NaN or infinite at step {self.state.step} "
                f"(p={self.state.clock.progress:.3f}); the checkpoint was not written; {_HINT}"
            )
        model_state = optimizer_state = None
        if self.dist.mode == "fsdp":  # every rank takes part in gathering the full state
            model_state, optimizer_state = full_state_dicts(self.state.model, self.state.optimizer)

        def write() -> Path:
            saved = self.state.save(
                self.run_dir / "checkpoints", self.checkpoint_meta, model_state, optimizer_state
            )
            prune_checkpoints(self.run_dir / "checkpoints", self.cfg.keep_checkpoints)
            return saved

        path = self.dist.on_main(write, self.device, "write the checkpoint")
        path = path or self.run_dir / "checkpoints"
        return path

    # -- the loop -----------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train until the budget is spent (or `stop_after` steps, or a stop signal).

        Returns the summary, also written to summary.json when the budget is spent.
        """
        state, clock = self.state, self.state.clock
        self._start()
        cadence = _Cadence.at(clock.progress, self.cfg)
        steps_this_session, status = 0, "running"
        with (
            self._progress_bar() as bar,
            _StopSignals() as signals,
            contextlib.closing(self._prefetcher()),
        ):
            while not clock.done:
                step = self._one_step(signals)
                steps_this_session += 1
                self._observe(step, cadence, bar)
                stop_now = signals.requested or (
                    stop_after is not None and steps_this_session >= stop_after
                )
                if clock.progress >= cadence.next_checkpoint or clock.done or stop_now:
                    state.info["last_eval"] = {k: self._last.get(k) for k in ("val_loss", "step")}
                    with cadence.paused():
                        self.save()
                    cadence.next_checkpoint = _next_point(clock.progress, self.cfg.checkpoint_every)
                if stop_now and not clock.done:
                    status = "interrupted" if signals.requested else "stopped"
                    break
        if clock.done:
            status = "finished"
        return self._summary(status)

    def _start(self) -> None:
        """Methods' start event, and the held-out loss before the first step."""
        # A new or just-loaded schedule-free optimizer holds the evaluation point: train from
        # the training point (budgetlm/optim/modes.py).
        to_train_mode(self.state.optimizer)
        for m in self.state.methods:
            m.on_start(self.state)
        if self.state.step == 0 and self.cfg.eval_every > 0:
            self._record("eval", **self.evaluate())

    def _progress_bar(self) -> tqdm:
        budget = self.state.clock.budget
        return tqdm(
            total=100.0,
            initial=round(100 * self.state.clock.progress, 2),
            unit="%",
            # None: off when not a terminal; only rank 0 shows progress.
            disable=None if self.cfg.progress_bar and self.dist.is_main else True,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f}% [{elapsed}<{remaining}{postfix}]",
            desc=f"budget {budget}",
        )

    def _one_step(self, signals: _StopSignals) -> _StepResult:
        """Plan, price, set the learning rate at the progress the step reaches, train, charge."""
        state, clock, cfg = self.state, self.state.clock, self.cfg
        micro = cfg.micro_batch_size or cfg.batch_size // self.dist.world
        plan = StepPlan(
            step=state.step, batch_size=cfg.batch_size, micro_batches=cfg.batch_size // micro
        )
        clock.start_step()  # selection work done while planning counts as the step's
        for m in state.methods:
            m.plan_step(state, plan)
        work = step_work(state.model.shape, plan, self.tokens_per_example, self.optimizer_name)
        p, _ = clock.plan(work)
        lr = self.schedule(p)
        for m in state.methods:
            lr = m.adjust_lr(state, p, lr, self.schedule)
        set_lr(state.optimizer, lr)
        loss, grad_norm, nonfinite = self._train_step(plan)
        if nonfinite is not None and cfg.on_nonfinite != "skip":
            self._halt(nonfinite, loss, grad_norm, lr, p)
        if self.device.type == "cuda" and clock.budget.unit == "seconds":
            torch.cuda.synchronize(self.device)  # a wall-clock budget must see the GPU's time
        if self.dist.active:
            # Ranks must agree on wall time (wall budgets) and on stopping.
            wall, stop = self.dist.max(
                [clock.step_seconds(), float(signals.requested)], self.device
            )
            signals.requested = bool(stop)
            clock.charge(work, wall_seconds=wall)
        else:
            clock.charge(work)
        state.step += 1
        if nonfinite is not None:
            # A skipped step is still a step: its work was done, so the clock is charged, the
            # step count advances (the next step reads the next batch) and every schedule moves
            # on with progress; only the update is dropped. on_progress runs as for any step.
            state.info["skipped_steps"] = state.info.get("skipped_steps", 0) + 1
            self._record(
                "skipped", nonfinite=nonfinite, loss=float(loss), grad_norm=float(grad_norm), lr=lr
            )
        for m in state.methods:
            m.on_progress(state, clock.progress)
        return _StepResult(
            loss=loss, grad_norm=grad_norm, lr=lr, tokens=work.tokens, skipped=nonfinite
        )

    def _halt(
        self, nonfinite: str, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float, p: float
    ) -> NoReturn:
        """train.on_nonfinite=halt: log the bad step and stop. Its update was not applied and
        nothing is saved, so the newest checkpoint is the last good state."""
        step = self.state.step + 1  # numbered as the step's "train" record would be
        value = float(loss) if nonfinite == "loss" else float(grad_norm)
        self._record(
            "diverged",
            step=step,
            p=round(p, 6),
            nonfinite=nonfinite,
            loss=float(loss),
            grad_norm=float(grad_norm),
            lr=lr,
        )
        raise Diverged(
            f"diverged: the {nonfinite} is {value} at step {step} (p={p:.3f}); its update was "
            f"not applied and nothing of it was saved; {_HINT}, "
            "or set train.on_nonfinite=skip to skip such steps"
        )

    def _observe(self, step: _StepResult, cadence: _Cadence, bar: tqdm) -> None:
        """Log the training loss (read only on log steps), evaluate at progress points."""
        state, clock, cfg = self.state, self.state.clock, self.cfg
        budget = clock.budget
        cadence.window_steps += 1
        # A skipped step has its own record ("skipped") instead of a "train" one.
        if (state.step % cfg.log_every == 0 or clock.done) and step.skipped is None:
            step_loss = float(step.loss)
            elapsed = cadence.window_seconds()
            self._record(
                "train",
                loss=step_loss,
                lr=step.lr,
                grad_norm=float(step.grad_norm),
                tok_per_s=round(cadence.window_steps * step.tokens / max(elapsed, 1e-9), 1),
            )
            bar.set_postfix_str(
                f"loss {step_loss:.3f} lr {step.lr:.2e} left {budget.format(clock.left())}",
                refresh=False,
            )
            cadence.restart_window()
        bar.update(round(100 * clock.progress - bar.n, 4))
        if clock.progress >= cadence.next_eval or clock.done:
            if cfg.eval_every > 0 or clock.done:
                with cadence.paused():
                    metrics = self.evaluate()
                self._last.update(self._record("eval", **metrics))
                if cfg.progress_bar and self.dist.is_main:
                    tqdm.write(
                        f"step {state.step} p={clock.progress:.3f} "
                        f"held-out loss {self._last['val_loss']:.4f} "
                        f"(spent {budget.format(clock.spent[budget.unit])})",
                        file=sys.stderr,
                    )
            cadence.next_eval = _next_point(clock.progress, cfg.eval_every)

    def _summary(self, status: str) -> dict[str, Any]:
        clock = self.state.clock
        last_eval = self._last if "val_loss" in self._last else self.state.info.get("last_eval", {})
        summary = {
            "status": status,
            "run_dir": str(self.run_dir),
            "budget": {
                "amount": clock.budget.amount,
                "unit": clock.budget.unit,
                "text": str(clock.budget),
            },
            "steps": self.state.step,
            "spent": dict(clock.spent),
            "spent_by_purpose": {unit: dict(parts) for unit, parts in clock.by_purpose.items()},
            "overshoot": clock.spent[clock.budget.unit] - clock.budget.amount,
            "epochs": round(self.stream.epochs_at(self.state.step), 4),
            "final_val_loss": last_eval.get("val_loss"),
            "final_lr": self.schedule(clock.progress),
            "skipped_steps": self.state.info.get("skipped_steps", 0),
            "warnings": list(self.state.info.get("warnings", [])),
            "wall_tokens_per_s": clock.spent["tokens"] / max(clock.spent["seconds"], 1e-9),
        }
        reports = {m.name: m.summary() for m in self.state.methods}
        summary["methods"] = {name: r for name, r in reports.items() if r}
        uncharged: dict[str, float] = {}
        for report in summary["methods"].values():
            for unit, amount in (report.get("uncharged") or {}).items():
                uncharged[unit] = uncharged.get(unit, 0.0) + amount
        if uncharged:
            summary["spent_including_uncharged"] = {
                unit: clock.spent.get(unit, 0.0) + uncharged.get(unit, 0.0)
                for unit in {*clock.spent, *uncharged}
            }
        if status == "finished" and self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.log is not None:  # every attempt's end, for the trackers
            self.log.summary(summary)
        return summary
