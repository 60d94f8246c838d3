"""The loop's per-step host work (issue 19): target tokens counted on the host, throughput
measured over training steps only, DDP's unused-parameter search only for methods that need it."""

from __future__ import annotations

import types

import pytest
import torch
import torch.distributed as torch_dist

from budgetlm.api import Method, StepPlan
from budgetlm.methods.growth import StagedGrowth
from budgetlm.methods.layer_dropping import LayerDrop
from budgetlm.methods.layer_stacking import LayerStacking
from budgetlm.methods.rho_loss import HoldoutTraining, RhoLoss
from budgetlm.methods.selective_backprop import SelectiveBackprop
from budgetlm.optim.sophia import SophiaHessian
from budgetlm.train import loop
from budgetlm.train.distributed import Dist
from budgetlm.train.metrics import read_metrics
from budgetlm.train.session import open_run

from .helpers import tiny_config

TRAIN_SECONDS = 1.0  # planted time of one training step
SLOW_SECONDS = 100.0  # planted time of one evaluation, and of one checkpoint


class FakeClock:
    """What the loop reads as time.perf_counter: moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SlowObserver(Method):
    """Each training step takes TRAIN_SECONDS of planted time; each evaluation (on_eval runs
    inside it) and each checkpoint (which saves the methods' state) takes SLOW_SECONDS."""

    name = "slow_observer"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def after_optimizer_step(self, state):
        self.clock.now += TRAIN_SECONDS

    def on_eval(self, state, metrics):
        self.clock.now += SLOW_SECONDS

    def state_dict(self):
        self.clock.now += SLOW_SECONDS
        return {}


def _close(trainer):
    if trainer.log is not None:
        trainer.log.close()


def test_tok_per_s_counts_training_steps_only(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=clock))
    cfg = tiny_config(
        "gpt",
        tmp_path / "run",
        "budget=8steps",
        "train.log_every=2",  # a window of two steps, with an evaluation and a checkpoint inside
        "train.eval_every=0.125",  # after every step
        "train.checkpoint_every=0.125",  # after every step
        "train.keep_checkpoints=1",
    )
    trainer = open_run(cfg, methods=[SlowObserver(clock)], progress=False)
    try:
        trainer.run()
    finally:
        _close(trainer)
    records = read_metrics(trainer.run_dir / "metrics.jsonl")
    train = [r for r in records if r["event"] == "train"]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert len(evals) == 9  # before the first step, then after every step: all inside windows
    tokens_per_step = cfg.train.batch_size * cfg.model.seq_len
    assert [r["tok_per_s"] for r in train] == [tokens_per_step / TRAIN_SECONDS] * 4


def test_target_tokens_are_counted_on_the_host_before_the_copy(tmp_path):
    cfg = tiny_config("bert", tmp_path / "run", "budget=2steps", "train.micro_batch_size=2")
    trainer = open_run(cfg, progress=False)
    try:
        plan = StepPlan(step=0, batch_size=8, micro_batches=4)
        expected = [
            int((trainer.stream.batch(0, 2 * i, 2 * i + 2)["labels"] != -100).sum())
            for i in range(4)
        ]
        # Tensors on the meta device hold no values: counting on the device copy would fail.
        trainer.device = torch.device("meta")
        batches = trainer._micro_batches(plan)
    finally:
        _close(trainer)
    assert [count for _, count in batches] == expected
    assert all(v.is_meta for batch, _ in batches for v in batch.values())
    assert min(expected) > 0 and len(set(expected)) > 1  # BERT's masking: counts differ


def test_only_methods_that_skip_parameters_make_ddp_search_for_unused_ones():
    assert Method.leaves_parameters_unused is False
    skipping = {LayerDrop, LayerStacking}
    running_every_layer = {
        StagedGrowth,
        SelectiveBackprop,
        RhoLoss,
        HoldoutTraining,
        SophiaHessian,
    }
    assert all(cls.leaves_parameters_unused for cls in skipping)
    assert not any(cls.leaves_parameters_unused for cls in running_every_layer)

    plain, dropping = Method(), LayerDrop(theta_bar=0.5, gamma_f=20.0)
    assert loop.leaves_parameters_unused([]) is False
    assert loop.leaves_parameters_unused([plain]) is False
    assert loop.leaves_parameters_unused([plain, dropping]) is True


@pytest.mark.parametrize(("method", "find_unused"), [(None, False), ("layer_stacking", True)])
def test_forward_wraps_ddp_with_the_methods_setting(method, find_unused, tmp_path, monkeypatch):
    extra = [f"method={method}", "model.n_layers=4"] if method else []
    cfg = tiny_config("gpt", tmp_path / "run", "budget=2steps", *extra)
    trainer = open_run(cfg, methods=[Method()], progress=False)  # a method that skips nothing
    calls = []
    monkeypatch.setattr(
        loop, "ddp_wrap", lambda model, dist, find_unused: calls.append(find_unused)
    )
    try:
        trainer.state.dist = Dist(mode="ddp")
        trainer._forward()
    finally:
        _close(trainer)
    assert calls == [find_unused]


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of one rank, in this process: DDP's bookkeeping runs as on many."""
    torch_dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.parametrize("declared", [True, False])
def test_layer_stacking_under_ddp_needs_its_declaration(
    declared, one_rank_group, tmp_path, monkeypatch
):
    # Layer stacking trains 1 block of 4 at first: DDP must be told that 3 get no gradient.
    monkeypatch.setattr(LayerStacking, "leaves_parameters_unused", declared)
    cfg = tiny_config(
        "gpt",
        tmp_path / "run",
        "budget=3steps",
        "method=layer_stacking",
        "model.n_layers=4",
        "train.eval_every=0",
        "train.checkpoint_every=0",
    )
    trainer = open_run(cfg, progress=False)
    trainer.state.dist = Dist(rank=0, world=1, mode="ddp")
    try:
        if declared:
            assert trainer.run()["status"] == "finished"
            assert isinstance(trainer._forward(), torch.nn.parallel.DistributedDataParallel)
        else:  # DDP waits for gradients that never come, and says so at the next step
            with pytest.raises(RuntimeError, match="(?i)unused|reduction"):
                trainer.run()
    finally:
        _close(trainer)


# -- host reads per micro-batch -------------------------------------------------------------------
# The tensor methods that read a value back to the host: on a GPU each waits for the device.
HOST_READS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")


def _host_reads_of_one_step(tmp_path, monkeypatch, micro_batch_size: int, optim: str) -> int:
    cfg = tiny_config(
        "gpt",
        tmp_path / f"run-{micro_batch_size}-{optim}",
        "budget=8steps",
        f"optim.name={optim}",
        f"train.micro_batch_size={micro_batch_size}",
        "train.log_every=1000",  # the step below is not a log step
        "train.eval_every=0",
    )
    trainer = open_run(cfg, progress=False)
    try:
        trainer._start()
        trainer._one_step(loop._StopSignals())  # warm-up: lazy state (optimizer moments)
        # Optimizer step counts live on the host (torch's own convention, kept through
        # load_state_dict), so reading one waits for no device: not counted.
        counters = [s["step"] for s in trainer.state.optimizer.state.values() if "step" in s]
        host_counters = {id(t) for t in counters if t.device.type == "cpu"}
        calls = []
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, _name=name, **kwargs):
                if id(self) not in host_counters:
                    calls.append(_name)
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        trainer._one_step(loop._StopSignals())
        monkeypatch.undo()
    finally:
        _close(trainer)
    return len(calls)


@pytest.mark.parametrize("optim", ["adamw", "lion", "adamw_rms"])
def test_a_step_reads_nothing_back_per_micro_batch(tmp_path, monkeypatch, optim):
    one = _host_reads_of_one_step(tmp_path, monkeypatch, 8, optim)
    four = _host_reads_of_one_step(tmp_path, monkeypatch, 2, optim)
    assert one == four  # nothing per micro-batch
    assert one <= 1  # per step, at most the finiteness flag before the optimizer step


# -- prefetching ----------------------------------------------------------------------------------
class TrainedRows(Method):
    """Records the example ids of every micro-batch the model trained on."""

    name = "trained_rows"

    def __init__(self) -> None:
        self.rows: list[list[int]] = []

    def after_forward(self, state, batch, output):
        self.rows.append(batch["example_id"].tolist())


def _train_rows(tmp_path, name: str, *overrides: str, resume_after: int | None = None):
    cfg = tiny_config(
        "bert", tmp_path / name, "budget=6steps", "train.micro_batch_size=4", *overrides
    )
    seen = TrainedRows()
    trainer = open_run(cfg, methods=[seen], progress=False)
    try:
        trainer.run(stop_after=resume_after)
    finally:
        _close(trainer)
    hits = trainer._prefetcher().hits
    if resume_after is not None:
        again = TrainedRows()
        trainer = open_run(cfg, methods=[again], resume="auto", progress=False)
        try:
            trainer.run()
        finally:
            _close(trainer)
        seen.rows += again.rows
    weights = {k: v.clone() for k, v in trainer.state.model.state_dict().items()}
    return seen.rows, weights, hits


def test_prefetching_gives_the_same_batches_in_the_same_order(tmp_path):
    rows_on, weights_on, hits_on = _train_rows(tmp_path, "on", "train.prefetch=true")
    rows_off, weights_off, hits_off = _train_rows(tmp_path, "off", "train.prefetch=false")
    assert len(rows_on) == 12 and rows_on == rows_off  # 6 steps x 2 micro-batches
    assert hits_on == 10 and hits_off == 0  # every step after the first came from the worker
    for key, value in weights_on.items():
        assert torch.equal(value, weights_off[key]), key


def test_a_run_resumed_with_prefetching_is_bit_exact(tmp_path):
    rows, weights, _ = _train_rows(tmp_path, "straight", "train.prefetch=true")
    resumed_rows, resumed, _ = _train_rows(
        tmp_path, "resumed", "train.prefetch=true", resume_after=3
    )
    assert resumed_rows == rows
    for key, value in weights.items():
        assert torch.equal(value, resumed[key]), key


# -- batch selection builds only what it trains on ------------------------------------------------
def test_selective_backprop_never_makes_the_loop_build_rows_it_discards(tmp_path, monkeypatch):
    cfg = tiny_config(
        "gpt", tmp_path / "run", "budget=4steps", "method=selective_backprop", "train.prefetch=true"
    )
    trainer = open_run(cfg, progress=False)
    built = []
    original = trainer.stream.batch

    def counted(step, start=0, stop=None):
        built.append((step, start, stop))
        return original(step, start, stop)

    monkeypatch.setattr(trainer.stream, "batch", counted)
    try:
        trainer.run()
    finally:
        _close(trainer)
    (method,) = trainer.state.methods
    # Only its candidate chunks (whole batches, read by the method): no row built by the loop,
    # in the foreground or ahead of time.
    assert len(built) == method.next_chunk > 4
    assert all((start, stop) == (0, None) for _, start, stop in built)
    assert trainer._prefetcher().hits == 0
