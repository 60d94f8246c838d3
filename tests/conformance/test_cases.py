"""Which checks the suite generates, from the registry and from the names given; how names are
resolved; which checkpoints a resume check uses; typos; bit-exact comparison; scoped settings."""

from __future__ import annotations

import math

import pytest
import torch

from budgetlm.budget.work import train_pass
from budgetlm.conformance import conformance_cases, resolve
from budgetlm.conformance.charges import StepCharge
from budgetlm.conformance.checks import observed_events, resume_steps
from budgetlm.conformance.equality import first_difference
from budgetlm.conformance.options import near_miss, optimizer_options_class
from budgetlm.conformance.runs import scoped
from budgetlm.conformance.subjects import Subject, UnknownName
from budgetlm.models import get_shape
from budgetlm.registry import METHODS, OPTIMIZERS, PluginError


def test_a_method_added_to_the_registry_gets_every_check(plugins, monkeypatch):
    monkeypatch.setitem(METHODS, "tempered", "faulty_plugins:Tempered")
    cases = {str(c) for c in conformance_cases()}
    for check in ("options", "trains[gpt]", "charges[t5]", "resumes[bert]", "state[gpt]"):
        assert f"tempered/{check}" in cases
    assert "tempered/composes[layer_drop,gpt]" in cases
    assert "layer_drop/composes[tempered,gpt]" in cases  # and the others are combined with it
    assert {f"{name}/options" for name in [*METHODS, *OPTIMIZERS]} <= cases


def test_families_and_refusals_shape_the_cases(plugins):
    cases = [str(c) for c in conformance_cases(["faulty_plugins:HonestShortening"])]
    assert "faulty_plugins:HonestShortening/trains[gpt]" in cases  # it declares gpt only
    assert not any("[bert]" in c or "[t5]" in c for c in cases)
    only_bert = [str(c) for c in conformance_cases(["layer_stacking"], families=["bert"])]
    assert "layer_stacking/trains[bert]" in only_bert and "layer_stacking/state[bert]" in only_bert
    assert "layer_stacking/refuses[layer_drop]" in only_bert
    assert "layer_stacking/composes[selective_backprop,bert]" in only_bert
    optimizer = [str(c) for c in conformance_cases(["faulty_plugins:PlainSGD"], families=["t5"])]
    assert optimizer == [
        "faulty_plugins:PlainSGD/options",
        "faulty_plugins:PlainSGD/trains[t5]",
        "faulty_plugins:PlainSGD/charges[t5]",
        "faulty_plugins:PlainSGD/resumes[t5]",
        "faulty_plugins:PlainSGD/refuses[rho_loss]",
    ]
    with pytest.raises(PluginError, match="unknown model families"):
        conformance_cases(["layer_drop"], families=["llama"])


def test_names_resolve_to_methods_and_optimizers(plugins):
    assert resolve(["layer_drop", "sophia", "layer_drop"]) == [
        Subject("method", "layer_drop"),
        Subject("optimizer", "sophia"),
    ]
    assert resolve(["faulty_plugins:Tempered", "faulty_plugins:PlainSGD"]) == [
        Subject("method", "faulty_plugins:Tempered"),
        Subject("optimizer", "faulty_plugins:PlainSGD"),
    ]
    with pytest.raises(UnknownName, match="did you mean 'layer_drop'"):
        resolve(["layer_dorp"])
    with pytest.raises(PluginError, match="has no 'Tempred'; did you mean 'Tempered'"):
        resolve(["faulty_plugins:Tempred"])
    with pytest.raises(PluginError, match="cannot import module 'faulty_plugin'"):
        resolve(["faulty_plugin:Tempered"])


def test_a_distribution_name_stands_for_the_plug_ins_it_registers(plugins, tmp_path, monkeypatch):
    info = tmp_path / "faulty_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[budgetlm.methods]\ntempered = faulty_plugins:Tempered\n\n"
        "[budgetlm.optimizers]\nplain_sgd = faulty_plugins:PlainSGD\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    expected = [Subject("method", "tempered"), Subject("optimizer", "plain_sgd")]
    assert resolve(["faulty-dist"]) == expected
    assert resolve(["faulty_dist"]) == expected  # as the package name is written too
    assert resolve(["faulty_plugins"]) == expected  # the top-level module of the entry points
    with pytest.raises(UnknownName, match="did you mean 'faulty-dist'"):
        resolve(["faulty-dsit"])


def _charge(step, passes):
    return StepCharge(step, [], 0, 0, tuple(passes))


def test_resume_steps_bracket_declared_and_observed_events():
    n = 12
    assert resume_steps([], [], n) == [3, 6, 9]  # no events: spread over the run
    assert resume_steps([0.5], [], n) == [3, 5, 6, 7, 9]
    assert resume_steps([0.125, 0.99], [], n) == [1, 2, 3, 6, 9, 11]
    shape = get_shape("gpt-tiny", n_layers=2, d_model=32, n_heads=2, d_kv=16)
    shallow, deep = train_pass(shape, 4, {"decoder": [0]}), train_pass(shape, 4, None)
    stacked = [_charge(i, [shallow if i < 2 else deep]) for i in range(n)]
    assert observed_events(stacked) == {2}
    assert resume_steps([], stacked, n) == [1, 2, 3, 6, 9]
    # A change at every step is per-step randomness, not an event.
    noisy = [_charge(i, [shallow if i % 2 else deep]) for i in range(n)]
    assert observed_events(noisy) == set()


def test_near_misses_are_typos_of_the_name_and_no_other_option():
    assert near_miss("theta_bar", {"theta_bar"}) == "thetaa_bar"
    assert near_miss("ab", {"ab", "aab"}) == "abb"
    assert near_miss("k", {"k"}) == "kk"
    from budgetlm.optim import lion, sophia

    assert optimizer_options_class(lion) is lion.LionOptions
    assert optimizer_options_class(sophia) is sophia.SophiaOptions
    assert optimizer_options_class(None) is None


def test_first_difference_says_where():
    a = {"w": torch.zeros(3), "groups": [{"lr": 0.1, "betas": (0.9, 0.99)}], "n": 3}
    assert first_difference(a, {**a, "groups": [{"lr": 0.1, "betas": [0.9, 0.99]}]}) is None
    b = {**a, "w": torch.tensor([0.0, 1e-7, 0.0])}
    assert first_difference(a, b, "weights") == "weights.w: differs (largest difference 1e-07)"
    c = {**a, "groups": [{"lr": 0.2, "betas": (0.9, 0.99)}]}
    assert first_difference(a, c) == "groups[0].lr: 0.1 vs 0.2"
    assert "keys ['n'] only in the first" in first_difference(a, {"w": a["w"], "groups": []})
    nan = torch.tensor([math.nan, 1.0])
    assert (
        first_difference(nan, nan.clone()) is None and first_difference(math.nan, math.nan) is None
    )
    assert (
        first_difference(torch.ones(2), torch.ones(3))
        == "the value: (2,) torch.float32 vs (3,) torch.float32"
    )


def test_settings_apply_only_to_the_runs_they_concern():
    given = (
        "methods.tempered.alpha=0.1",
        "methods.layer_drop.theta_bar=0.7",
        "optim.options.rho=0.02",
        "model.n_layers=3",
        "method=layer_drop",
    )
    assert scoped(given, {"tempered"}, False) == ("methods.tempered.alpha=0.1", "model.n_layers=3")
    assert scoped(given, set(), True) == ("optim.options.rho=0.02", "model.n_layers=3")
    with_optimizer = (*given, "optim.name=lion")
    assert "optim.options.rho=0.02" in scoped(with_optimizer, {"layer_drop"}, False)
