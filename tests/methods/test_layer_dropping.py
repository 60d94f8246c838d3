import math

import numpy as np
import pytest
import torch

from budgetlm.budget.clock import Clock
from budgetlm.methods.layer_dropping import (
    drop_probabilities,
    expected_active,
    keep_probability,
    sample_active,
)
from budgetlm.models import forward_flops
from budgetlm.train.evaluate import heldout_loss

from .arch_helpers import (
    StepLog,
    losses,
    one_thread,  # noqa: F401 - autouse fixture: one thread
    run,
    same_state,
    tiny_config,
)


def test_keep_probability_schedule():
    assert keep_probability(0.0, 0.5, 100) == 1.0
    assert keep_probability(0.01, 0.5, 100) == pytest.approx(0.5 * math.exp(-1) + 0.5)
    assert keep_probability(0.1, 0.3, 20) == pytest.approx(0.7 * math.exp(-2) + 0.3)
    assert keep_probability(1.0, 0.5, 100) == pytest.approx(0.5, abs=1e-40)
    # deeper layers are dropped more: (1 - theta) * l / L
    np.testing.assert_allclose(drop_probabilities(4, 0.6), [0.1, 0.2, 0.3, 0.4])


def test_per_layer_drop_frequencies_match_the_formula():
    depth, theta, n = 6, 0.55, 20000
    dropped = np.zeros(depth)
    for step in range(n):
        active = sample_active({"decoder": depth}, theta, seed=3, step=step)["decoder"]
        dropped[np.setdiff1d(np.arange(depth), active)] += 1
    q = drop_probabilities(depth, theta)
    expected = q.copy()
    expected[0] -= np.prod(q)  # the never-empty rule keeps layer 1 when all are drawn
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(dropped / n - expected) < 4 * sigma), (dropped / n, expected)


def test_mean_active_layers_at_late_progress():
    depth, theta_bar, n = 8, 0.5, 20000
    theta = keep_probability(0.9, theta_bar, 100)  # = theta_bar to 1e-39
    counts = np.array(
        [len(sample_active({"encoder": depth}, theta, 1, s)["encoder"]) for s in range(n)]
    )
    closed_form = depth - (1 - theta_bar) * (depth + 1) / 2  # ARCHITECTURE.md §4.3
    q = drop_probabilities(depth, theta)
    assert expected_active(depth, theta) == pytest.approx(closed_form + np.prod(q))
    variance = np.sum(q * (1 - q))
    assert abs(counts.mean() - expected_active(depth, theta)) < 4 * math.sqrt(variance / n)


def test_draws_depend_only_on_seed_and_step():
    torch.manual_seed(0)
    a = sample_active({"decoder": 12}, 0.5, seed=1, step=5)
    torch.manual_seed(123)  # the global torch RNG plays no part
    assert sample_active({"decoder": 12}, 0.5, seed=1, step=5) == a
    others = [sample_active({"decoder": 12}, 0.5, seed=1, step=s) for s in range(6, 26)]
    assert any(o != a for o in others)
    assert sample_active({"decoder": 12}, 0.5, seed=2, step=5) != a or others[0] != a


def test_t5_stacks_share_ids_and_never_run_empty():
    for step in range(200):
        active = sample_active({"encoder": 4, "decoder": 4}, 0.5, 7, step)
        assert active["encoder"] == active["decoder"]
        # unequal depths: each stack follows its own formula on the shared uniform numbers
        uneven = sample_active({"encoder": 4, "decoder": 2}, 0.5, 7, step)
        assert uneven["encoder"] == active["encoder"]
        assert uneven["encoder"] and uneven["decoder"]
    # theta = 0 with L = 2: layer 2 is always drawn for dropping, layer 1 half the time; when
    # both are, the rescue keeps layer 1 (the least likely to be dropped), never layer 2.
    draws = [sample_active({"decoder": 2}, 0.0, 0, s)["decoder"] for s in range(50)]
    assert all(d == [0] for d in draws)


def _rst_table(pass_):
    """A synthetic reference table: seconds per pass = 0.01 + 0.003 per sequence-layer."""
    layers = sum(n for _, n in pass_.active_layers)
    return 0.01 + 0.003 * pass_.batch_size * layers


def test_t5_run_drops_the_same_ids_and_charges_only_active_layers(tmp_path):
    args = ["budget=10steps", "train.eval_every=0", "model.n_layers=4", "model.n_decoder_layers=4"]
    log = StepLog()
    cfg = tiny_config("t5", tmp_path / "drop", *args, "method=layer_drop")
    trainer = _with_rst_clock(cfg, [log])
    trainer.run()
    trainer.log.close()
    assert all(s["active"]["encoder"] == s["active"]["decoder"] for s in log.steps)
    assert any(len(s["active"]["encoder"]) < 4 for s in log.steps)
    shape, batch = trainer.state.model.shape, cfg.train.batch_size
    flops = rst = 0.0
    for s in log.steps:
        counts = {k: len(v) for k, v in s["active"].items()}
        flops += 3 * forward_flops(shape, batch, counts)
        rst += 0.01 + 0.003 * batch * sum(counts.values())
    spent = trainer.state.clock.spent
    assert spent["flops"] == pytest.approx(flops, rel=1e-12)
    assert spent["rst"] == pytest.approx(rst, rel=1e-12)

    full = _with_rst_clock(tiny_config("t5", tmp_path / "full", *args))
    full.run()
    full.log.close()
    assert spent["tokens"] == full.state.clock.spent["tokens"]
    assert spent["flops"] < 0.9 * full.state.clock.spent["flops"]
    assert spent["rst"] < 0.9 * full.state.clock.spent["rst"]


def _with_rst_clock(cfg, methods=()):
    from budgetlm.train.session import open_run

    trainer = open_run(cfg, methods=methods, progress=False)
    budget = trainer.state.clock.budget
    trainer.state.clock = Clock(
        budget, extra_costs={"rst": lambda work: sum(_rst_table(p) for p in work.passes)}
    )
    return trainer


def test_drop_schedule_follows_progress_and_eval_uses_every_layer(tmp_path):
    log = StepLog()
    cfg = tiny_config(
        "bert",
        tmp_path / "run",
        "budget=40steps",
        "model.n_layers=4",
        "method=layer_drop",
        "methods.layer_drop.gamma_f=10",
        "train.eval_every=0",
    )
    trainer, _, metrics = run(cfg, [log])
    # Every step ran exactly the draw of the rule at the progress it started from (seed 1).
    for s in log.steps:
        theta = keep_probability(s["p"], 0.5, 10)
        assert s["active"] == sample_active({"encoder": 4}, theta, seed=1, step=s["step"])
    # p = 0 keeps every layer (theta = 1); late steps average L - (1 - theta_bar)(L + 1)/2.
    assert log.steps[0]["active"]["encoder"] == [0, 1, 2, 3]
    late = [len(s["active"]["encoder"]) for s in log.steps if s["p"] > 0.2]
    assert 2.0 < np.mean(late) < 3.5  # expectation 2.76 at theta_bar (4 - 1.25 + P(all dropped))
    final = [m for m in metrics if m["event"] == "eval"][-1]["val_loss"]
    assert final == pytest.approx(
        heldout_loss(trainer.state.model, trainer.eval_batches, trainer.device)["val_loss"],
        rel=1e-6,
    )


def test_gamma_default_depends_on_family(tmp_path):
    from budgetlm.api import RunContext
    from budgetlm.methods.layer_dropping import LayerDrop

    for family, gamma in (("bert", 100.0), ("t5", 20.0), ("gpt", 20.0)):
        cfg = tiny_config(family, tmp_path / family, "method=layer_drop")
        from budgetlm.models import get_shape

        ctx = RunContext(shape=get_shape(f"{family}-tiny"), config=cfg)
        method = LayerDrop.from_options(LayerDrop.Options(), ctx)
        assert method.gamma_f == gamma
    with pytest.raises(ValueError):
        LayerDrop(theta_bar=0.0)


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_resume_while_dropping_is_bit_exact(family, tmp_path):
    args = [
        "budget=12steps",
        "method=layer_drop",
        "methods.layer_drop.gamma_f=20",
        "train.eval_every=0.5",
        "train.checkpoint_every=0",
        "model.dropout=0.1",
        "model.n_layers=3",
    ]
    if family == "t5":
        args.append("model.n_decoder_layers=3")
    straight, _, straight_metrics = run(tiny_config(family, tmp_path / "a", *args))
    run(tiny_config(family, tmp_path / "b", *args), stop_after=6)
    resumed, summary, metrics = run(tiny_config(family, tmp_path / "b", *args), resume="auto")
    assert summary["status"] == "finished"
    same_state(straight, resumed)
    assert losses(metrics) == losses(straight_metrics)
    # dropping really happened (otherwise this would only test the plain loop)
    assert straight.state.clock.spent["flops"] < 0.95 * 12 * 3 * forward_flops(
        straight.state.model.shape, 8
    )
