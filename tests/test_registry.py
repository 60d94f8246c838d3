"""How budgetlm/registry.py resolves methods and optimizers: built-ins, plug-ins named by import
path, plug-ins registered under entry points; refusals (clashes with built-ins, names taken
twice, objects of the wrong kind) and did-you-mean for typos, reported by the CLI as one line
with exit code 2 before anything is written."""

from __future__ import annotations

import pytest

from budgetlm import registry
from budgetlm.cli import main
from budgetlm.config import ConfigError
from budgetlm.methods import configured_methods
from budgetlm.optim.factory import optimizer_module, plugin_options
from budgetlm.registry import PluginError

from .plugin_fixtures.helpers import METHOD, OPTIMIZER, importable, install_distribution
from .train.helpers import tiny_overrides

SAME_NAME = "budgetlm_test_plugins.counter:SameNameCounter"
BUILTIN_NAMED = "budgetlm_test_plugins.counter:BuiltinNamed"


@pytest.fixture(autouse=True)
def plugins(monkeypatch):
    importable(monkeypatch)


@pytest.fixture
def registered(monkeypatch, tmp_path):
    """The fixture plug-ins registered by entry points, as an installed package would."""
    install_distribution(
        monkeypatch,
        tmp_path / "site",
        "budgetlm-test-plugins",
        methods={"step_counter": METHOD, "dropping_copy": BUILTIN_NAMED},
        optimizers={"momentum_sgd": OPTIMIZER},
    )


def _cli_error(capsys, *argv: str) -> str:
    """Run `budgetlm ARGV`, which must fail as bad input: exit 2, one line, no traceback."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if not x.startswith("warning:")]
    assert line.startswith(f"budgetlm {argv[0]}: error: "), line
    return line


# -- resolving names --------------------------------------------------------------------------


def test_registered_plugins_are_known_by_short_name(registered):
    methods, optimizers = registry.method_names(), registry.optimizer_names()
    assert methods[: len(registry.METHODS)] == list(registry.METHODS)  # built-ins first
    assert {"step_counter", "dropping_copy"} <= set(methods)
    assert optimizers[: len(registry.OPTIMIZERS)] == list(registry.OPTIMIZERS)
    assert "momentum_sgd" in optimizers
    assert registry.parse_method_spec("layer_drop+step_counter") == ["layer_drop", "step_counter"]
    registry.check_optimizer_name("momentum_sgd")
    assert registry.method_class("step_counter").__qualname__ == "StepCounter"
    assert optimizer_module("momentum_sgd").__qualname__ == "MomentumSGD"


def test_without_the_distribution_the_short_names_are_unknown():
    assert "step_counter" not in registry.method_names()
    with pytest.raises(PluginError, match="unknown method 'step_counter'"):
        registry.parse_method_spec("step_counter")
    with pytest.raises(PluginError, match="unknown optimizer 'momentum_sgd'"):
        registry.check_optimizer_name("momentum_sgd")
    # by import path they need no registration
    assert registry.method_class(METHOD).name == "step_counter"
    assert optimizer_module(OPTIMIZER).name == "momentum_sgd"


def test_train_help_lists_registered_plugins_marked_as_such(registered, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split("methods (", 1)[1].split())
    assert "step_counter (plug-in)" in text and "momentum_sgd (plug-in)" in text
    assert "layer_drop," in text and "layer_drop (plug-in)" not in text
    assert "lion," in text and "lion (plug-in)" not in text


# -- refusals ---------------------------------------------------------------------------------


def test_an_entry_point_clashing_with_a_builtin_is_refused_when_used(monkeypatch, tmp_path, capsys):
    install_distribution(
        monkeypatch,
        tmp_path / "site",
        "clashing-plugins",
        methods={"layer_drop": METHOD, "step_counter": METHOD},
        optimizers={"lion": OPTIMIZER},
    )
    # what does not use the clashing names still works, the others of the distribution too
    assert registry.parse_method_spec("staged+step_counter") == ["staged", "step_counter"]
    registry.check_optimizer_name("adamw")
    assert registry.method_names().count("layer_drop") == 1
    with pytest.raises(PluginError, match=r"'layer_drop' is a built-in .* clashing-plugins"):
        registry.parse_method_spec("layer_drop")
    with pytest.raises(PluginError, match=r"'lion' is a built-in .* clashing-plugins"):
        registry.check_optimizer_name("lion")
    run = tmp_path / "run"
    for setting in ("method=layer_drop", "optim.name=lion"):
        line = _cli_error(capsys, "train", *tiny_overrides("gpt", run), setting)
        assert "clashing-plugins" in line and "import path" in line
        assert not run.exists()
    # the built-in itself stays reachable by its import path
    assert registry.method_class("budgetlm.methods.layer_dropping:LayerDrop").name == "layer_drop"


def test_a_plugin_taking_a_builtins_name_is_refused(registered, tmp_path, capsys):
    for name in (BUILTIN_NAMED, "dropping_copy"):  # by import path and by entry point
        with pytest.raises(PluginError, match="its name 'layer_drop' is a built-in method's"):
            registry.method_class(name)
    line = _cli_error(
        capsys, "train", *tiny_overrides("gpt", tmp_path / "run"), "method=dropping_copy"
    )
    assert "'layer_drop' is a built-in" in line
    assert not (tmp_path / "run").exists()


def test_two_methods_with_the_same_name_are_refused(registered):
    for spec in (f"{METHOD}+{SAME_NAME}", f"step_counter+{METHOD}"):
        with pytest.raises(ConfigError, match="both named 'step_counter'"):
            configured_methods(spec, {})


def test_objects_of_the_wrong_kind_are_refused():
    with pytest.raises(PluginError, match="not a subclass of budgetlm.api.Method"):
        registry.method_class("budgetlm_test_plugins.counter:NotAMethod")
    with pytest.raises(PluginError, match=r"has no build\(model"):
        registry.optimizer_provider(METHOD)  # a method is not an optimizer
    with pytest.raises(PluginError, match="not an import path of the form package.module:Object"):
        registry.parse_method_spec("budgetlm_test_plugins/counter:StepCounter")


def test_a_plugin_whose_dependency_is_missing_says_so():
    with pytest.raises(PluginError, match="budgetlm_test_no_such_dependency.*not installed"):
        registry.method_class("budgetlm_test_plugins.needs_missing:NeedsMissing")


# -- typos: did-you-mean, exit 2, nothing written -----------------------------------------------


@pytest.mark.parametrize(
    "settings, hint",
    [
        (["method=layer_dorp"], "did you mean 'layer_drop'?"),
        (["optim.name=lino"], "did you mean 'lion'?"),
        (["method=step_countr"], "did you mean 'step_counter'?"),  # a registered plug-in
        (["optim.name=momentum_sdg"], "did you mean 'momentum_sgd'?"),
        # import paths: a module missing (top level, submodule), an attribute typo
        (["method=budgetlm_test_plugin.counter:StepCounter"], f"did you mean '{METHOD}'?"),
        (["method=budgetlm_test_plugins.countr:StepCounter"], f"did you mean '{METHOD}'?"),
        (["method=budgetlm_test_plugins.counter:StepCountr"], "did you mean 'StepCounter'?"),
        (["optim.name=budgetlm_test_plugins.sdg:MomentumSGD"], f"did you mean '{OPTIMIZER}'?"),
        (["optim.name=budgetlm_test_plugins.sgd:MomentumSDG"], "did you mean 'MomentumSGD'?"),
        # a plug-in's options
        (
            [f"method={METHOD}", "methods.step_counter.evry=2"],
            "did you mean 'methods.step_counter.every'?",
        ),
        ([f"method={METHOD}", "methods.step_countr.every=2"], "did you mean methods.step_counter?"),
        (
            [f"optim.name={OPTIMIZER}", "optim.options.momentun=0.5"],
            "did you mean 'optim.options.momentum'?",
        ),
        (
            ["optim.name=momentum_sgd", "optim.options.nesterv=true"],
            "did you mean 'optim.options.nesterov'?",
        ),
    ],
)
def test_typos_are_one_line_with_did_you_mean_and_write_nothing(
    registered, tmp_path, capsys, settings, hint
):
    run = tmp_path / "runs" / "typo"
    line = _cli_error(capsys, "train", *tiny_overrides("gpt", run), *settings, "--quiet")
    assert hint in line, line
    assert not (tmp_path / "runs").exists()


def test_calibrate_refuses_an_optimizer_typo_before_timing_anything(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("{}\n")
    out = tmp_path / "T.json"
    typo = "budgetlm_test_plugins.sgd:MomentumSDG"
    overrides = tiny_overrides("gpt", tmp_path / "run")
    argv = ["calibrate", str(config), "--set", *overrides, "--optimizers", typo, "--out", str(out)]
    line = _cli_error(capsys, *argv)
    assert "--optimizers" in line and "did you mean 'MomentumSGD'?" in line
    assert not out.exists()


# -- options of plug-ins ----------------------------------------------------------------------


def test_a_plugin_methods_options_are_keyed_by_its_name_or_as_written():
    ((_, by_name),) = configured_methods(METHOD, {"step_counter": {"every": 2}})
    ((_, as_written),) = configured_methods(METHOD, {METHOD: {"every": 5}})
    assert (by_name.every, as_written.every) == (2, 5)
    with pytest.raises(ConfigError, match="given twice"):
        configured_methods(METHOD, {"step_counter": {"every": 2}, METHOD: {"every": 5}})
    with pytest.raises(ConfigError, match="methods.step_counter.every"):
        configured_methods(METHOD, {"step_counter": {"every": "often"}})


def test_a_plugin_optimizers_options_are_its_options_dataclass():
    provider = optimizer_module(OPTIMIZER)
    options = plugin_options(OPTIMIZER, provider, {"momentum": 0.5})
    assert (options.momentum, options.nesterov) == (0.5, False)
    assert plugin_options(OPTIMIZER, provider, None) == provider.Options()
    with pytest.raises(PluginError, match="optim.options.nesterov"):
        plugin_options(OPTIMIZER, provider, {"nesterov": "sometimes"})
