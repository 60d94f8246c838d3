import pytest

from budgetlm.config import ConfigError, config_diff, load_config


def test_defaults_are_a_valid_config():
    cfg = load_config()
    assert cfg.model.preset == "gpt-tiny" and cfg.budget == "200steps"


def test_yaml_and_dotted_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("budget: 50steps\noptim:\n  lr: 1e-3\n  betas: [0.9, 0.95]\n")
    cfg = load_config(f, ["optim.lr=3e-4", "model.n_layers=2", "train.compile=true"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.model.n_layers == 2 and cfg.train.compile is True
    assert cfg.run.name == "c"


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=1e-3", "did you mean 'optim.lr'"),
        ("trian.batch_size=3", "did you mean 'train'"),
        ("train.batch_size=many", "must be an integer"),
        ("train.compile=yes please", "true or false"),
        ("optim.name=adamv", "did you mean 'adamw'"),
        ("budget=lots", "cannot read budget"),
        ("model.preset=gpt-tinny", "did you mean"),
        ("train.micro_batch_size=5", "must divide"),
        ("optim.betas=0.9", "list of 2"),
        ("schedule.peak_at=0.3", "schedule"),
    ],
)
def test_bad_settings_fail_with_a_pointer(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_file_names_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  corpsu: fixture\n")
    with pytest.raises(ConfigError, match="data.corpsu.*did you mean 'data.corpus'"):
        load_config(f)


def test_config_hash_and_diff():
    a, b = load_config(None, ["optim.lr=1e-3"]), load_config(None, ["optim.lr=2e-3"])
    assert a.hash() != b.hash()
    assert load_config(None, ["run.name=x"]).hash() == load_config().hash()
    assert config_diff(a.to_dict(), b.to_dict()) == ["optim.lr"]
