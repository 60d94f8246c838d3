"""The run identity (the hash naming a run folder): the seed and everything that changes the
result are in it, display and execution settings are not; resuming across seeds is refused;
invalid numbers are refused naming the key (issue 15)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from budgetlm.config import (
    IDENTITY_EXCLUDED,
    RESUME_SAFE,
    Config,
    ConfigError,
    load_config,
    resume_drift,
)

# A valid value other than the default, per key left out of the identity.
OTHER_VALUE = {
    "run.name": "elsewhere",
    "run.out_dir": "/tmp/elsewhere",
    "run.dir": "/tmp/elsewhere/run",
    "run.tags": {"arm": "x"},
    "train.progress_bar": False,
    "train.log_every": 3,
    "train.loggers": ["tensorboard"],
    "train.wandb_project": "p",
    "train.wandb_entity": "e",
    "train.wandb_mode": "offline",
    "train.mlflow_uri": "file:/tmp/m",
    "train.mlflow_experiment": "m",
    "train.threads": 3,
    "train.device": "cpu",
    "train.compile": True,
    "train.prefetch": False,
    "train.parallel": "fsdp",
    "train.keep_checkpoints": 5,
    "rst.verify": "probe",
    "rst.tolerance": 0.5,
    "rst.allow_table_change": True,
}

# Settings that change the result: each must change the identity.
IDENTITY = {
    "run.seed": 2,
    "budget": "300steps",
    "method": "layer_drop",
    "optim.lr": 2e-3,
    "optim.name": "lion",
    "schedule.name": "wsd",
    "model.n_layers": 3,
    "data.corpus": "shakespeare",
    "data.val_fraction": 0.05,
    "train.batch_size": 16,
    "train.micro_batch_size": 8,
    "train.precision": "bf16",
    "train.eval_every": 0.5,
    "train.eval_split": "tune",
    "train.on_nonfinite": "skip",
    "rst.table": "h100",
    "rst.fallback": "flops",
}


def test_every_key_left_out_is_a_real_key_and_may_change_on_resume():
    keys = {
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(Config)
        if dataclasses.is_dataclass(section.default_factory)
        for f in dataclasses.fields(section.default_factory)
    }
    assert set(IDENTITY_EXCLUDED) <= keys
    assert set(IDENTITY_EXCLUDED) <= RESUME_SAFE  # a shared folder never refuses to continue
    assert "run.seed" not in IDENTITY_EXCLUDED and "run.seed" not in RESUME_SAFE
    assert set(OTHER_VALUE) == set(IDENTITY_EXCLUDED)  # this test covers each of them


@pytest.mark.parametrize("key", sorted(OTHER_VALUE))
def test_settings_outside_the_identity_share_the_run_folder(key):
    assert load_config(None, settings={key: OTHER_VALUE[key]}).hash() == load_config().hash()


@pytest.mark.parametrize("key", sorted(IDENTITY))
def test_settings_that_change_the_result_change_the_identity(key):
    assert load_config(None, settings={key: IDENTITY[key]}).hash() != load_config().hash()


def test_two_runs_differing_only_in_seed_get_different_folders():
    from budgetlm.train.session import default_run_dir

    one, two = load_config(None, ["run.seed=1"]), load_config(None, ["run.seed=2"])
    assert default_run_dir(one) != default_run_dir(two)
    assert default_run_dir(one) == default_run_dir(load_config(None, ["run.seed=1"]))


def test_quiet_and_progress_bar_share_one_folder():
    from budgetlm.train.session import default_run_dir

    shown = load_config(None, ["budget=3steps"])
    quiet = load_config(None, ["budget=3steps", "train.progress_bar=false"])
    assert default_run_dir(shown) == default_run_dir(quiet)


def test_resuming_with_another_seed_is_drift_and_location_is_not():
    saved = load_config(None, ["run.seed=1"]).to_dict()
    assert resume_drift(saved, load_config(None, ["run.seed=2"]).to_dict()) == ["run.seed"]
    moved = load_config(
        None, ["run.dir=/elsewhere", "run.name=x", "train.threads=2", "run.tags={arm: b}"]
    )
    assert resume_drift(saved, moved.to_dict()) == []
    assert resume_drift(saved, load_config(None, ["optim.lr=5e-3"]).to_dict()) == ["optim.lr"]


def test_a_key_newer_than_the_saved_config_is_drift_only_off_its_default():
    saved = load_config().to_dict()
    del saved["train"]["on_nonfinite"]  # a run folder from before the key existed
    assert resume_drift(saved, load_config().to_dict()) == []
    skip = load_config(None, ["train.on_nonfinite=skip"]).to_dict()
    assert resume_drift(saved, skip) == ["train.on_nonfinite"]


def _resume_check_compares_the_seed() -> bool:
    import inspect

    from budgetlm.train import resume

    return 'startswith("run.")' not in inspect.getsource(resume)


@pytest.mark.xfail(
    not _resume_check_compares_the_seed(),
    reason="budgetlm/train/resume.py still skips every run.* key: it should call resume_drift",
    strict=True,
)
def test_resuming_a_run_folder_with_another_seed_is_refused(tmp_path, capsys):
    from budgetlm.cli import main

    from .cli.helpers import train_args

    run = tmp_path / "run"
    assert main(train_args("gpt", run, "budget=4steps", "--stop-after", "1")) in (0, 130)
    saved = (run / "config.yaml").read_text()
    capsys.readouterr()
    code = main(train_args("gpt", run, "budget=4steps", "run.seed=2", "--resume", "auto"))
    err = capsys.readouterr().err
    assert code == 2 and "run.seed" in err and "Traceback" not in err, err
    assert (run / "config.yaml").read_text() == saved  # not rewritten
    assert yaml.safe_load(saved)["run"]["seed"] == 1


@pytest.mark.parametrize(
    "override,key",
    [
        ("run.seed=-1", "run.seed"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.batch_size=-8", "train.batch_size"),
        ("train.micro_batch_size=0", "train.micro_batch_size"),
        ("train.eval_batch_size=0", "train.eval_batch_size"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=-1e-3", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.lr=nan", "optim.lr"),
        ("optim.weight_decay=.inf", "optim.weight_decay"),
        ("optim.grad_clip=-1", "optim.grad_clip"),
        ("optim.betas=[0.9,1.5]", "optim.betas[1]"),
        ("data.val_fraction=0", "data.val_fraction"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.mask_prob=1.2", "data.mask_prob"),
        ("train.eval_every=1.5", "train.eval_every"),
        ("train.eval_every=-0.1", "train.eval_every"),
        ("train.checkpoint_every=2", "train.checkpoint_every"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints"),
        ("train.log_every=0", "train.log_every"),
        ("train.threads=0", "train.threads"),
        ("schedule.warmup=1.5", "schedule.warmup"),
        ("data.heldout_min_documents=0", "data.heldout_min_documents"),
        ("rst.tolerance=0", "rst.tolerance"),
    ],
)
def test_invalid_numbers_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [override])


def test_invalid_numbers_exit_2_from_the_command_line(capsys, tmp_path):
    from budgetlm.cli import main

    assert main(["train", "run.seed=-1", f"run.out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "run.seed" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_legitimate_edge_values_still_load():
    cfg = load_config(
        None,
        [
            "run.seed=0",
            "train.eval_every=0",
            "train.checkpoint_every=1",
            "optim.weight_decay=0",
            "optim.grad_clip=0",
            "train.keep_checkpoints=1",
            "schedule.warmup=0",
        ],
    )
    assert cfg.run.seed == 0
