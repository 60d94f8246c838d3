"""What a method or optimizer needs before a tiny run can use it, and who provides it.

Some methods cannot run from their options alone: RHO-loss needs an irreducible-loss table,
made by training a model on a hold-out split first. The suite asks, for each method and the
optimizer of a run, for a *conformance setup*:

    @classmethod
    def conformance_setup(cls, settings: list[str], workspace: Path) -> list[str]: ...

`settings` are the run's key=value settings (the tiny model, the corpus, the method and its
options); `workspace` is a folder the suite keeps for its whole session, where the setup may
prepare (and cache) what the method needs. It returns further key=value settings for the run
(e.g. where the prepared table is). A plug-in defines it on its `Method` subclass or optimizer
provider; the built-ins that need one get it from `BUILTIN_SETUPS` below (kept here, not in the
methods, since it is about testing them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from budgetlm.registry import method_class, optimizer_provider

SetupHook = Callable[[list[str], Path], list[str]]

# The IL model of RHO-loss, as small as its tests make it: two steps, scored in large batches,
# no checkpoints or evaluations of its own. run.out_dir is the workspace's, so the table lands
# in <workspace>/out/rho/il-<key>/ and is shared by every run with the same data.
RHO_IL = [
    "methods.rho_loss.il.budget=2steps",
    "methods.rho_loss.il.train.eval_every=0",
    "methods.rho_loss.il.train.checkpoint_every=0",
    "methods.rho_loss.il.train.eval_batch_size=64",
]


def rho_loss_setup(settings: list[str], workspace: Path) -> list[str]:
    """Prepare (or reuse) the IL table the run's settings call for."""
    from budgetlm.config import load_config
    from budgetlm.train.irreducible import prepare_il_table

    prepare_il_table(load_config(None, [*settings, *RHO_IL]), progress=False)
    return list(RHO_IL)


BUILTIN_SETUPS: dict[str, SetupHook] = {"rho_loss": rho_loss_setup}


def setup_hook(owner: Any) -> SetupHook | None:
    """The conformance setup of a method class or optimizer provider, if it needs one."""
    if owner is None:
        return None
    hook = getattr(owner, "conformance_setup", None)
    if hook is not None:
        return hook
    return BUILTIN_SETUPS.get(getattr(owner, "name", ""))


def setup_settings(
    methods: Sequence[str], optimizer: str | None, settings: list[str], workspace: Path
) -> list[str]:
    """Run the setups of the run's methods and optimizer; return the settings they add."""
    owners = [method_class(name) for name in methods]
    if optimizer is not None:
        owners.append(optimizer_provider(optimizer))
    extra: list[str] = []
    for owner in owners:
        hook = setup_hook(owner)
        if hook is not None:
            extra += list(hook([*settings, *extra], workspace))
    return extra
