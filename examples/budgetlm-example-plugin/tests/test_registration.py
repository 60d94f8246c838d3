"""The two plug-ins resolve by the short names this distribution registers and by import path;
misspelt names and options are refused with a did-you-mean."""

import importlib.metadata

import pytest
import torch
from budgetlm_example_plugin.schedule_free import AdamWScheduleFreeExact, ScheduleFreeAdamW
from budgetlm_example_plugin.seq_warmup import SequenceLengthWarmup, SeqWarmupOptions

from budgetlm import registry
from budgetlm.config import ConfigError, load_config
from budgetlm.methods import configured_methods
from budgetlm.optim import build_optimizer

SEQ_WARMUP = "budgetlm_example_plugin.seq_warmup:SequenceLengthWarmup"
SCHEDULE_FREE = "budgetlm_example_plugin.schedule_free:ScheduleFreeAdamW"


def _entry_points(group):
    return {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group=group)
        if ep.dist is not None and ep.dist.name == "budgetlm-example-plugin"
    }


def test_the_installed_distribution_registers_both_short_names():
    # Fails when the package is not installed (`pip install -e examples/budgetlm-example-plugin`)
    # or its pyproject.toml names another target.
    assert _entry_points(registry.METHOD_GROUP) == {"seq_warmup": SEQ_WARMUP}
    assert _entry_points(registry.OPTIMIZER_GROUP) == {"schedule_free_adamw": SCHEDULE_FREE}
    assert "seq_warmup" in registry.method_names()
    assert "schedule_free_adamw" in registry.optimizer_names()
    assert registry.method_class("seq_warmup") is SequenceLengthWarmup
    assert registry.optimizer_provider("schedule_free_adamw") is ScheduleFreeAdamW


@pytest.mark.parametrize(
    "method, optimizer",
    [("seq_warmup", "schedule_free_adamw"), (SEQ_WARMUP, SCHEDULE_FREE)],
    ids=["short-names", "import-paths"],
)
def test_a_config_names_them_either_way(method, optimizer, tmp_path):
    cfg = load_config(
        None,
        [
            f"run.dir={tmp_path}",
            f"method={method}",
            f"optim.name={optimizer}",
            # options go under the method's `name`, however it was named
            "methods.seq_warmup.start_len=16",
            "optim.options.warmup_steps=3",
        ],
    )
    [(cls, options)] = configured_methods(cfg.method, cfg.methods)
    assert cls is SequenceLengthWarmup and options == SeqWarmupOptions(start_len=16)
    assert registry.method_class(method) is SequenceLengthWarmup
    assert registry.optimizer_provider(optimizer) is ScheduleFreeAdamW
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(
        optimizer, model, lr=1e-3, betas=None, eps=None, weight_decay=0.1, options={}
    )
    assert isinstance(opt, AdamWScheduleFreeExact)


def test_misspelt_names_and_options_get_a_did_you_mean(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'seq_warmup'"):
        load_config(None, [f"run.dir={tmp_path}", "method=seq_wramup"])
    with pytest.raises(ConfigError, match="did you mean 'schedule_free_adamw'"):
        load_config(None, [f"run.dir={tmp_path}", "optim.name=schedule_free_adam"])
    cfg = load_config(
        None, [f"run.dir={tmp_path}", "method=seq_warmup", "methods.seq_warmup.start_length=16"]
    )
    with pytest.raises(ConfigError, match="did you mean 'methods.seq_warmup.start_len'"):
        configured_methods(cfg.method, cfg.methods)
    with pytest.raises(registry.PluginError, match="did you mean 'optim.options.warmup_steps'"):
        build_optimizer(
            "schedule_free_adamw",
            torch.nn.Linear(4, 4),
            lr=1e-3,
            betas=None,
            eps=None,
            weight_decay=0.0,
            options={"warmup_step": 3},
        )


def test_the_laptop_experiment_loads_with_both_plugins():
    from pathlib import Path

    from budgetlm.compare.run.experiment_file import load_experiment

    path = Path(__file__).resolve().parent.parent / "experiments" / "laptop.yaml"
    exp = load_experiment(path)  # builds every cell's config: a typo in an arm fails here
    arms = {a.name: (a.method, a.optim) for a in exp.arms}
    assert arms == {
        "baseline": ("none", None),
        "seq_warmup": ("seq_warmup", None),
        "schedule_free": ("none", "schedule_free_adamw"),
    }
