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
