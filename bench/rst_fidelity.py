"""How well RST predicts wall time on the machine that measured the table.

    python bench/rst_fidelity.py                          # shipped CPU table, tiny presets
    python bench/rst_fidelity.py --table my.json --configs configs/bert-tiny.yaml --budget 60s-rst

For each config and each method (the baseline, every implemented method that fits the model
family, and the optimizer arms `optim:lion`, `optim:sophia`, `optim:muon`), run a short
RST-budgeted training and report |RST - wall| / wall, where wall is the
training time the loop measured (evaluation and checkpoint I/O excluded, as RST excludes them).
Run it on the reference machine itself and on an otherwise idle machine; anything else measures
the machine, not the model. On a shared VM whose speed drifts by 10-20% between hours, use
`--calibrate`: each config's table is measured right before its arms run, so the benchmark
measures the cost model rather than the drift.
Results: bench/results/rst-fidelity-<device>.{jsonl,md}.

On your own machine and table, `budgetlm calibrate --check TABLE CONFIG...` runs the same arms
(budgetlm/train/fidelity.py) alternated over several rounds, with confidence intervals and an
exit code; this script keeps the one-pass history written to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from budgetlm.budget.rst import DEFAULT_TABLE, CostTable
from budgetlm.cli import main as cli_main
from budgetlm.config import load_config
from budgetlm.registry import METHODS, method_class
from budgetlm.train import fidelity
from budgetlm.train.fidelity import Arm

FAMILY_CONFIGS = ["configs/gpt-tiny.yaml", "configs/bert-tiny.yaml", "configs/t5-tiny.yaml"]


def implemented_methods() -> list[str]:
    names = ["baseline"]
    for name in METHODS:
        try:
            method_class(name)
        except ValueError:
            continue  # not implemented yet
        names.append(name)
    return names


def run_arm(config: str, method: str, budget: str, table: str | None, out: Path) -> dict:
    """One arm, run as `budgetlm calibrate --check` runs it (budgetlm/train/fidelity.py)."""
    arm = Arm(config, (), method, budget, table or DEFAULT_TABLE, out)
    result = fidelity.run_arm(arm)
    return {
        "config": config,
        "method": method,
        "steps": result.steps,
        "rst_s": result.rst_s,
        "wall_s": result.wall_s,
        "error": abs(result.rst_s - result.wall_s) / result.wall_s,
        "rst_minus_wall_per_step_ms": 1e3 * (result.rst_s - result.wall_s) / result.steps,
    }


AGAIN = "baseline (again)"


def add_baseline_relative(rows: list[dict]) -> None:
    """Each arm's RST/wall relative to the baselines' (the mean of the two runs bracketing it).

    A machine that is uniformly faster or slower than when the table was measured moves every
    arm's absolute error alike and leaves comparisons fair; what is left here is what RST gets
    wrong about the method itself.
    """
    base = [r["rst_s"] / r["wall_s"] for r in rows if r["method"] in ("baseline", AGAIN)]
    if not base:
        return
    reference = sum(base) / len(base)
    for r in rows:
        r["vs_baseline"] = r["rst_s"] / r["wall_s"] / reference - 1


def render_markdown(jsonl: Path, device: str) -> str:
    """Every run recorded in `jsonl`, newest first: one table per invocation."""
    runs: dict[tuple, list[dict]] = {}
    for line in jsonl.read_text().splitlines():
        row = json.loads(line)
        runs.setdefault((row["date"], row["budget"], row["command"]), []).append(row)
    lines = [f"# RST fidelity ({device})", ""]
    for (date, budget, command), rows in sorted(runs.items(), reverse=True):
        machine = rows[0]["machine"]
        tables = ", ".join(dict.fromkeys(r["table_hash"] for r in rows))
        lines += [
            f"## {date}, budget {budget}",
            "",
            f"Table {tables} measured on `{machine.get('gpu') or machine.get('cpu')}` "
            f"(torch {machine.get('torch')}, {machine.get('dtype')}); command `{command}`.",
            "",
            "| config | method | steps | RST s | wall s | abs error | RST-wall per step "
            "| RST/wall vs baseline |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['config']} | {r['method']} | {r['steps']} | {r['rst_s']:.2f} | "
            f"{r['wall_s']:.2f} | {r['error']:.1%} | {r['rst_minus_wall_per_step_ms']:+.2f} ms | "
            + (f"{r['vs_baseline']:+.1%} |" if "vs_baseline" in r else "n/a |")
            for r in rows
        ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=FAMILY_CONFIGS)
    ap.add_argument("--methods", nargs="+", help="default: baseline + every implemented method")
    ap.add_argument(
        "--optimizers",
        nargs="*",
        default=["lion", "sophia", "muon"],
        help="optimizer arms (the baseline is the config's own optimizer)",
    )
    ap.add_argument("--budget", default="20s-rst")
    ap.add_argument("--table", help="cost table (default: the shipped CPU reference table)")
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="measure a fresh table for each config just before its arms (instead of --table)",
    )
    ap.add_argument("--out", help="results stem (default bench/results/rst-fidelity-<device>)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    stem = (
        Path(args.out)
        if args.out
        else (Path(__file__).parent / "results" / f"rst-fidelity-{device}")
    )
    stem.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            table_path = args.table
            if args.calibrate:
                table_path = str(Path(tmp) / f"table-{Path(config).stem}.json")
                optimizers = [load_config(config).optim.name, "adamw", *args.optimizers]
                calibrate = ["calibrate", config, "--out", table_path, "--quiet"]
                if cli_main([*calibrate, "--optimizers", *dict.fromkeys(optimizers)]) != 0:
                    print(f"{config}: calibration refused, skipped")
                    continue
            table = CostTable.load(table_path)
            arms = (args.methods or implemented_methods()) + [f"optim:{o}" for o in args.optimizers]
            if "baseline" in arms:
                # Once more at the end: the two baselines bracket the arms, so the machine's drift
                # over the config's runs is measured rather than mistaken for a method's error.
                arms.append(AGAIN)
            config_rows = []
            for method in arms:
                try:
                    run_dir = Path(tmp) / f"{len(rows) + len(config_rows)}"
                    row = run_arm(config, method.split()[0], args.budget, table_path, run_dir)
                    row.update(method=method, table_hash=table.hash[:12], machine=table.machine)
                except Exception as e:  # a method that does not fit this family
                    print(f"{config} {method}: skipped ({str(e).splitlines()[0]})")
                    continue
                config_rows.append(row)
                print(
                    f"{config:<26} {method:<20} steps {row['steps']:>5}  RST {row['rst_s']:7.2f}s"
                    f"  wall {row['wall_s']:7.2f}s  error {row['error']:6.1%}"
                )
            add_baseline_relative(config_rows)
            rows += config_rows
    header = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "budget": args.budget,
        "command": " ".join(sys.argv),
    }
    with open(f"{stem}.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps({**header, **row}) + "\n")
    Path(f"{stem}.md").write_text(render_markdown(Path(f"{stem}.jsonl"), device))
    print(f"wrote {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
