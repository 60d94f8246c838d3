"""Write docs/config.md from the config dataclasses, so the page cannot drift from the code.

    python -m budgetlm.config_docs --write    # regenerate docs/config.md
    python -m budgetlm.config_docs --check    # exit 1 if the page differs from the code

Each field's description is its attribute docstring, the string literal on the line after the
field in budgetlm/config.py. It is read here from the module's source with `ast` (Python keeps no
trace of it at run time), and it is what Sphinx autodoc reads too. It was chosen over
`field(metadata={"doc": ...})` because it keeps each field a plain `name: type = default` line
with its prose beneath, rather than turning every field into a `field(...)` call. A section's
introduction is its class docstring. The prose around the tables is the template below.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from budgetlm import config as config_module
from budgetlm.config import IDENTITY_EXCLUDED, Config, is_identity_key

PAGE = Path(__file__).resolve().parent.parent / "docs" / "config.md"
COMMAND = "python -m budgetlm.config_docs --write"

HEADER = """\
<!-- Generated from budgetlm/config.py by `{command}`: edit the field docstrings there. -->
# Configuration reference

A run config is YAML with a `budget` and the sections below; every key has a default, so an empty
file is a valid run (a tiny GPT). Override any key on the command line with a dotted path:

```bash
budgetlm train configs/gpt-tiny.yaml optim.lr=1e-3 model.n_layers=6 budget=300s
budgetlm train configs/t5-tiny.yaml budget="2M tokens" optim.betas=[0.9,0.95] method=layer_drop
```

Values are read as YAML (`1e-3`, `true`, `[0.9, 0.95]`, `null`). Unknown keys and wrong types are
refused before anything is written, with the closest valid key suggested. `unset` (YAML `null`)
means the description says what is used instead.

## Budgets

What a run may spend, in one unit; the run stops at the step that spends it
([budget.md](budget.md), [rst.md](rst.md)).

| budget | unit |
|---|---|
{budgets}

## Run identity

A run's identity is a hash of its settings; it names the run folder (`<run.name>-<hash[:8]>`
under `run.out_dir`). Starting a run whose identity matches an existing folder continues that
run (`--resume auto`) or reports its result; any setting marked *yes* in the column "identity"
below, the seed included, makes another run in another folder. A run continued in a folder given
explicitly (`run.dir`, `--resume CHECKPOINT`) is refused when a *yes* setting changed, except
`rst.table`, which may move (the table's content hash is checked instead). The settings marked
*no* may change on resume; they are left out because:

{excluded}
"""


def field_docs(cls: type) -> tuple[str | None, dict[str, str]]:
    """A dataclass's class docstring and {field: attribute docstring}, from its source."""
    tree = ast.parse(inspect.getsource(config_module))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs, previous = {}, None
    for stmt in node.body:
        if (
            previous is not None
            and isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str)
        ):
            docs[previous] = " ".join(inspect.cleandoc(stmt.value.value).split())
        target = stmt.target if isinstance(stmt, ast.AnnAssign) else None
        previous = target.id if isinstance(target, ast.Name) else None
    return ast.get_docstring(node), docs


def undocumented() -> list[str]:
    """Dotted keys (and sections) without a description: they must not exist."""
    missing = []
    for prefix, cls in [("", Config), *_sections()]:
        intro, docs = field_docs(cls)
        if prefix and not intro:
            missing.append(prefix.rstrip("."))
        for f in dataclasses.fields(cls):
            if f.name not in docs and not _is_section(f):
                missing.append(prefix + f.name)
    return missing


def render() -> str:
    """The whole page."""
    from budgetlm.budget.clock import BUDGET_FORMATS

    budgets = "\n".join(
        f"| {', '.join(f'`{e}`' for e in examples)} | {meaning} |"
        for examples, meaning in BUDGET_FORMATS
    )
    groups: dict[str, list[str]] = {}
    for key, reason in IDENTITY_EXCLUDED.items():
        groups.setdefault(reason, []).append(key)
    excluded = "\n".join(
        f"- {', '.join(f'`{k}`' for k in keys)}: {reason}." for reason, keys in groups.items()
    )
    parts = [HEADER.format(command=COMMAND, budgets=budgets, excluded=excluded)]
    parts.append("## Top level\n\n" + _table(Config, ""))
    for prefix, cls in _sections():
        intro, _ = field_docs(cls)
        parts.append(f"## `{prefix.rstrip('.')}`\n\n{intro}\n\n" + _table(cls, prefix))
    return "\n".join(parts)


def _sections() -> list[tuple[str, type]]:
    return [(f"{f.name}.", _section_class(f)) for f in dataclasses.fields(Config) if _is_section(f)]


def _is_section(f: dataclasses.Field) -> bool:
    return f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(
        f.default_factory
    )


def _section_class(f: dataclasses.Field) -> type:
    return f.default_factory  # type: ignore[return-value]  # the section's dataclass


def _table(cls: type, prefix: str) -> str:
    _, docs = field_docs(cls)
    rows = ["| key | type | default | identity | description |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if _is_section(f):
            continue
        doc = docs.get(f.name, "").replace("|", "\\|")
        kind = re.sub(r"dict\[.*?\]", "mapping", str(f.type)).replace("|", "or")
        identity = "yes" if is_identity_key(prefix + f.name) else "no"
        rows.append(f"| `{prefix}{f.name}` | {kind} | {_default(f)} | {identity} | {doc} |")
    return "\n".join(rows) + "\n"


def _default(f: dataclasses.Field) -> str:
    value: Any = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list):
        return f"`[{', '.join(map(str, value))}]`"
    return f"`{value}`"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m budgetlm.config_docs", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"rewrite {PAGE}")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    parser.add_argument("--page", type=Path, default=PAGE, help="the page to write or check")
    args = parser.parse_args(argv)
    missing = undocumented()
    if missing:
        print(f"fields without a docstring in budgetlm/config.py: {missing}", file=sys.stderr)
        return 1
    page = render()
    if args.write:
        args.page.write_text(page)
    elif args.check:
        if not args.page.is_file() or args.page.read_text() != page:
            print(f"{args.page} is out of date; run `{COMMAND}`", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
