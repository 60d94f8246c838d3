"""Planted faults (faulty_plugins.py) fail exactly the check that looks for them, with a message
that says what is wrong; the well-behaved controls next to them pass the same checks."""

from __future__ import annotations

import pytest

from budgetlm.conformance import conformance_cases, run_case
from budgetlm.conformance.runs import Workspace


def _results(name, *checks, overrides=(), partners=("layer_drop",)):
    """{str(case): result} of the named checks of plug-in `name` (GPT only: fast)."""
    cases = conformance_cases(
        [f"faulty_plugins:{name}"], families=["gpt"], overrides=overrides, partners=partners
    )
    return {str(c).split("/", 1)[1]: run_case(c) for c in cases if c.check in checks}


def _passed(results):
    return {k: r.passed for k, r in results.items()}


def test_a_well_behaved_method_passes_every_check(plugins):
    results = _results(
        "Tempered", "options", "trains", "charges", "resumes", "state", "composes", "refuses"
    )
    assert set(results) == {
        "options",
        "trains[gpt]",
        "charges[gpt]",
        "resumes[gpt]",
        "state[gpt]",
        "composes[layer_drop,gpt]",
    }
    assert all(r.passed for r in results.values()), {k: r.message for k, r in results.items()}
    assert results["resumes[gpt]"].message == "bit-exact, stopped and resumed after steps 3, 6, 9"


def test_state_kept_outside_state_dict_fails_the_resume_check(plugins):
    results = _results("HiddenState", "trains", "charges", "resumes", "state")
    assert _passed(results) == {
        "trains[gpt]": True,
        "charges[gpt]": True,
        "resumes[gpt]": False,
        "state[gpt]": True,  # an empty state round-trips: only a resume shows what is missing
    }
    message = results["resumes[gpt]"].message
    assert message.startswith("stopped after step 3 of 12 and resumed: the run did not continue")
    assert "the logged train record of step 4 differs: lr" in message
    assert "state_dict()" in message


def test_a_checkpoint_that_changes_the_weights_fails_the_resume_check(plugins):
    """The straight run checkpoints only at its end, as an uninterrupted run does: an extra
    checkpoint at the stop must change nothing (here an inexact eval/train weight swap does)."""
    results = _results("LossySwapSGD", "trains", "charges", "resumes")
    assert _passed(results) == {"trains[gpt]": True, "charges[gpt]": True, "resumes[gpt]": False}
    message = results["resumes[gpt]"].message
    assert message.startswith("stopped after step 3 of 12 and resumed: the run did not continue")
    assert "a checkpoint must not change what is trained" in message


def test_an_undeclared_forward_fails_the_charge_check_with_the_row_counts(plugins):
    results = _results("UndeclaredForward", "trains", "charges", "resumes", "composes")
    assert _passed(results) == {
        "trains[gpt]": True,
        "charges[gpt]": False,
        "resumes[gpt]": True,
        "composes[layer_drop,gpt]": False,  # the same forward, next to another method
    }
    message = results["charges[gpt]"].message
    assert message.startswith(
        "step 0: the model ran 8 rows in 2 forwards but the clock was charged for 4 rows "
        "(1 train pass of 4 rows (training))"
    )
    assert "plan.extra_passes" in message and "and at 11 more of the 12 steps" in message
    # The same forward, declared, passes.
    declared = _results("DeclaredForward", "charges", "composes")
    assert all(r.passed for r in declared.values()), declared


def test_shortened_sequences_must_be_charged_at_their_length(plugins):
    hidden = _results("HiddenShortening", "trains", "charges")
    assert _passed(hidden) == {"trains[gpt]": True, "charges[gpt]": False}
    assert (
        "step 0: the model ran 4 rows of length 16 but the clock charged 4 rows of length 32"
        in hidden["charges[gpt]"].message
    )
    honest = _results("HonestShortening", "charges", "resumes")
    assert all(r.passed for r in honest.values()), honest


def test_a_backward_declared_as_a_forward_fails_the_charge_check(plugins):
    """An optimizer's companion method (as Sophia's Hessian pass is) must charge a pass that
    back-propagates as a train pass, not a forward one."""
    results = _results("SloppyCompanionSGD", "options", "trains", "charges", "resumes")
    assert _passed(results) == {
        "options": True,
        "trains[gpt]": True,
        "charges[gpt]": False,
        "resumes[gpt]": True,
    }
    message = results["charges[gpt]"].message
    assert "step 0: 16 block-rows were back-propagated but the train passes charged cover 8" in (
        message
    )
    assert "at 2 more of the 12 steps: 4, 8" in message
    assert all(r.passed for r in _results("PlainSGD", "charges").values())


def test_a_typo_in_the_given_options_fails_the_options_check_with_did_you_mean(plugins):
    results = _results("Tempered", "options", "trains", overrides=["methods.tempered.alhpa=0.1"])
    assert _passed(results) == {"options": False, "trains[gpt]": False}
    assert "did you mean 'methods.tempered.alpha'" in results["options"].message
    assert "methods.tempered.alhpa=0.1" in results["options"].message
    good = _results("Tempered", "options", overrides=["methods.tempered.alpha=0.1"])
    assert good["options"].passed, good["options"].message
    # Options that are no dataclass cannot be checked by the config: refused.
    untyped = _results("UntypedOptions", "options")["options"]
    assert not untyped.passed and "is not a dataclass" in untyped.message


def test_optimizer_option_typos_are_checked_too(plugins):
    results = _results("PlainSGD", "options", overrides=["optim.options.nesterv=true"])
    assert not results["options"].passed
    assert "did you mean 'optim.options.nesterov'" in results["options"].message


def test_a_load_state_dict_that_drops_state_fails_the_state_check(plugins):
    results = _results("ForgetfulLoad", "state", "resumes")
    assert _passed(results) == {"state[gpt]": False, "resumes[gpt]": False}
    assert "state_dict().count: 12 vs 0" in results["state[gpt]"].message


def test_a_diverging_method_fails_the_training_check(plugins):
    results = _results("PoisonsWeights", "trains", "charges")
    assert _passed(results) == {"trains[gpt]": False, "charges[gpt]": False}
    assert results["trains[gpt]"].message.startswith(
        "the run failed: Diverged: diverged: the loss is nan at step 4"
    )


def test_a_combination_that_is_accepted_although_refused_fails(plugins, monkeypatch):
    import faulty_plugins

    cases = conformance_cases(["faulty_plugins:PlainSGD"], families=["gpt"])
    refuses = [c for c in cases if c.check == "refuses"]
    assert [str(c) for c in refuses] == ["faulty_plugins:PlainSGD/refuses[rho_loss]"]
    result = run_case(refuses[0])
    assert result.passed, result.message
    assert "cannot be combined with method ['rho_loss']" in result.message
    # The loop no longer refusing it (the optimizer forgot its `incompatible`): the check fails.
    monkeypatch.setattr(faulty_plugins.PlainSGD, "incompatible", ())
    result = run_case(refuses[0])
    assert not result.passed
    assert "was accepted although one side lists the other in `incompatible`" in result.message


@pytest.mark.slow
def test_a_sequence_cut_applies_to_the_rows_a_selection_method_supplies(plugins):
    """Selective backprop supplies its rows through `batch_rows`, and every `before_batch` runs
    on them: a shortening method composes with it, in either order of the `+` spec."""
    result = _results("HonestShortening", "composes", partners=["selective_backprop"])
    assert result["composes[selective_backprop,gpt]"].passed, result


@pytest.mark.slow
def test_a_sequence_cut_undone_by_a_method_that_replaces_the_batch_fails(
    plugins, monkeypatch, tmp_path
):
    """A selection method that replaces the cut batch in `before_batch` (as selective backprop
    did before `batch_rows`): full-length rows train while plan.seq_len is charged."""
    from budgetlm.methods.selective_backprop import SelectiveBackprop, batch_size_of

    monkeypatch.setattr(SelectiveBackprop, "batch_rows", lambda self, state, plan, a, b: None)
    monkeypatch.setattr(
        SelectiveBackprop,
        "before_batch",
        lambda self, state, plan, batch: self._selected.next(batch_size_of(batch)),
    )
    (case,) = [
        c
        for c in conformance_cases(
            ["faulty_plugins:HonestShortening"], families=["gpt"], partners=["selective_backprop"]
        )
        if c.check == "composes"
    ]
    workspace = Workspace(tmp_path)  # not the process's: its runs were made without the patch
    result = run_case(case, workspace)
    workspace.close()
    assert not result.passed
    assert "the model ran 12 rows of length 32 but the clock charged 4 rows of length 16" in (
        result.message
    )
