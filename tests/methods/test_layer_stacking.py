import pytest
import torch

from budgetlm.config import ConfigError
from budgetlm.methods.layer_stacking import silence_blocks, stack_blocks, stacking_depths
from budgetlm.models import forward_flops
from budgetlm.optim import build_optimizer

from .arch_helpers import (
    StepLog,
    losses,
    one_thread,  # noqa: F401 - autouse fixture: one thread
    run,
    same_state,
    tiny_batch,
    tiny_config,
    tiny_model,
)

FOUR = ["model.n_layers=4"]
T5_FOUR = ["model.n_layers=4", "model.n_decoder_layers=4"]


def test_depth_schedule_doubles_and_ends_at_full_depth():
    assert stacking_depths(16, 4, 2) == [4, 8, 16]  # BERT, No Train No Gain
    assert stacking_depths(12, 3, 2) == [3, 6, 12]  # T5
    assert stacking_depths(10, 2, 2) == [2, 4, 10]  # the last event always reaches full depth
    assert stacking_depths(2, 1, 2) == [1, 2, 2]  # capped
    with pytest.raises(ValueError):
        stacking_depths(4, 5, 2)


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_scheduled_depths_at_scheduled_progress(family, tmp_path):
    log = StepLog()
    cfg = tiny_config(
        family,
        tmp_path / "run",
        "budget=16steps",
        "method=layer_stacking",
        "train.eval_every=0",
        *(T5_FOUR if family == "t5" else FOUR),
    )
    trainer, summary, metrics = run(cfg, [log])
    assert summary["status"] == "finished"
    stacks = trainer.state.model.shape.stack_names
    points = (0.125, 0.3)  # the defaults: a quarter of the depth (1 of 4), doubled twice
    for s in log.steps:
        depth = [1, 2, 4][sum(s["p"] >= x for x in points)]
        for stack in stacks:
            assert s["active"][stack] == list(range(depth)), (s["step"], s["p"], stack)
    depths = [len(s["active"][stacks[0]]) for s in log.steps]
    # 16 steps: p after step 2 is 0.125 and after step 5 is 0.3125.
    assert depths == [1, 1, 2, 2, 2] + [4] * 11
    # Each step was charged for the blocks it ran, nothing else.
    shape, per_step = trainer.state.model.shape, []
    for d in depths:
        counts = {stack: d for stack in stacks}
        per_step.append(3 * forward_flops(shape, cfg.train.batch_size, counts))
    assert trainer.state.clock.spent["flops"] == pytest.approx(sum(per_step), rel=1e-12)
    # Blocks copied at each event still equal their sources when they first run: check the
    # metrics are complete and the run really trained all four blocks by the end.
    assert len([m for m in metrics if m["event"] == "train"]) == 16
    for stack in stacks:
        for block in trainer.state.model.layer_stacks()[stack]:
            assert block.mlp.w_out.weight.abs().sum() > 0


def _trained(family="gpt", layers=4):
    model = tiny_model(family, n_layers=layers)
    opt = build_optimizer("adamw", model, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for seed in range(2):  # only blocks 0..1 are active: blocks 2..3 get no optimizer state
        model.zero_grad()
        model(tiny_batch(model, seed), active={model.shape.stack_names[0]: [0, 1]}).loss.backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("policy", ["copy", "reset_new", "reset_all"])
def test_stacking_copies_weights_and_optimizer_state_per_policy(policy):
    model, opt = _trained()
    blocks = model.layer_stacks()["decoder"]
    before = {
        id(p): {k: v.clone() for k, v in opt.state.get(p, {}).items()} for p in model.parameters()
    }
    assert not any(opt.state.get(p) for p in blocks[2].parameters())
    stack_blocks(blocks, 2, 4, opt, policy)
    for src, dst in ((0, 2), (1, 3)):
        for p_src, p_dst in zip(blocks[src].parameters(), blocks[dst].parameters(), strict=True):
            assert torch.equal(p_src, p_dst) and p_src is not p_dst
            if policy == "copy":
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    assert torch.equal(opt.state[p_dst][key], opt.state[p_src][key])
                    # a copy, not a shared tensor: the two blocks now train independently
                    assert opt.state[p_dst][key] is not opt.state[p_src][key]
            else:
                assert not opt.state.get(p_dst)
    old = [p for b in (0, 1) for p in blocks[b].parameters()]
    for p in old:
        if policy == "reset_all":
            assert not opt.state.get(p)
        else:
            assert torch.equal(opt.state[p]["exp_avg"], before[id(p)]["exp_avg"])


def test_inactive_blocks_are_identity_until_stacked():
    """Evaluation runs every block: silenced blocks make that the shallow model's loss."""
    model, _ = _trained()
    blocks = model.layer_stacks()["decoder"]
    batch = tiny_batch(model, 7)
    shallow = model(batch, active={"decoder": [0, 1]}).loss
    assert not torch.allclose(model(batch).loss, shallow)  # random blocks 2..3 change it
    silence_blocks(blocks, 2)
    torch.testing.assert_close(model(batch).loss, shallow, rtol=0, atol=1e-6)


def test_a_run_starts_with_its_future_blocks_silenced(tmp_path):
    cfg = tiny_config("bert", tmp_path / "run", "budget=16steps", "method=layer_stacking", *FOUR)
    trainer, *_ = run(cfg, stop_after=1)  # depth 1 of 4 until p = 0.125
    model = trainer.state.model.eval()
    batch = trainer.eval_batches[0]
    full, shallow = model(batch).loss, model(batch, active={"encoder": [0]}).loss
    assert torch.equal(full, shallow)


def test_stacking_and_dropping_together_are_refused(tmp_path):
    from budgetlm.train.session import open_run

    cfg = tiny_config("gpt", tmp_path / "run", "method=layer_stacking+layer_drop")
    with pytest.raises(ConfigError, match="cannot be combined"):
        open_run(cfg, progress=False)


def test_bad_options_are_refused(tmp_path):
    from budgetlm.train.session import open_run

    for bad in ("methods.layer_stacking.policy=keep", "methods.layer_stacking.points=[0.5,0.2]"):
        cfg = tiny_config("gpt", tmp_path / "run", "method=layer_stacking", bad)
        with pytest.raises((ConfigError, ValueError)):
            open_run(cfg, progress=False)


@pytest.mark.parametrize("stop", [1, 2, 3])  # just before, at, and just after the first event
def test_resume_around_a_stacking_point_is_bit_exact(stop, tmp_path):
    args = [
        "budget=12steps",
        "method=layer_stacking",
        "methods.layer_stacking.policy=copy",
        "train.eval_every=0.5",
        "train.checkpoint_every=0",
        "model.dropout=0.1",
        *FOUR,
    ]
    straight, *_ = run(tiny_config("gpt", tmp_path / "a", *args))
    run(tiny_config("gpt", tmp_path / "b", *args), stop_after=stop)
    resumed, summary, metrics = run(tiny_config("gpt", tmp_path / "b", *args), resume="auto")
    assert summary["status"] == "finished"
    same_state(straight, resumed)
    straight_metrics = losses(run_metrics(tmp_path / "a"))
    assert losses(metrics) == straight_metrics


def run_metrics(run_dir):
    from budgetlm.train.metrics import read_metrics

    return read_metrics(run_dir / "metrics.jsonl")
