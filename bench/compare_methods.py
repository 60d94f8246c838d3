"""A small fixed-budget comparison of methods or optimizers, over seeds.

    python bench/compare_methods.py --name arch --config configs/demo-gpt.yaml --budget 20s-rst \
        --arm baseline= --arm stacking=method=layer_stacking --arm drop=method=layer_drop \
        --arm staged=method=staged

An arm is NAME=OVERRIDES, overrides separated by ';' (e.g. `lion=optim.name=lion;optim.lr=1e-3`).
Every arm runs once per seed under the same budget and is judged at the end of it: final
held-out loss (mean ± std over seeds), with steps, epochs, RST and wall time. RHO-loss arms get
their irreducible-loss table prepared first (its cost is reported, not charged). Until
`budgetlm compare` exists this script is how such tables are made; results are appended to
bench/results/compare-<name>.{jsonl,md} with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from budgetlm.config import load_config
from budgetlm.train.session import open_run


def parse_arm(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    if not name:
        raise SystemExit(f"--arm {text!r}: expected NAME=OVERRIDES")
    return name, [o for o in overrides.split(";") if o]


def run_arm(config: str, overrides: list[str], seed: int, budget: str, out: Path) -> dict:
    cfg = load_config(
        config,
        [
            f"budget={budget}",
            f"run.seed={seed}",
            f"run.dir={out}",
            f"run.out_dir={out.parent}",
            "train.progress_bar=false",
            "train.eval_every=0",
            "train.checkpoint_every=0",
            *overrides,
        ],
    )
    il_cost = None
    if "rho_loss" in cfg.method:  # its IL table lands where the run looks for it by default
        from budgetlm.rho_cli import prepare_il_table

        prepare_il_table(cfg, progress=False, force=False)
    trainer = open_run(cfg, progress=False)
    summary = trainer.run()
    trainer.log.close()
    if "rho_loss" in summary.get("methods", {}):
        il_cost = summary["methods"]["rho_loss"].get("uncharged")
    spent = summary["spent"]
    return {
        "seed": seed,
        "final_val_loss": summary["final_val_loss"],
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "rst_s": spent["rst"],
        "wall_s": spent["seconds"],
        "flops": spent["flops"],
        "uncharged": il_cost,
        "warnings": summary["warnings"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="results file stem")
    ap.add_argument("--config", required=True)
    ap.add_argument("--budget", default="20s-rst")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--arm", action="append", required=True, help="NAME=OVERRIDE;OVERRIDE")
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every arm")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    arms = [parse_arm(a) for a in args.arm]
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in arms:
            for seed in args.seeds:
                row = run_arm(
                    args.config,
                    [*args.set, *overrides],
                    seed,
                    args.budget,
                    Path(tmp) / f"{name}-{seed}",
                )
                results.setdefault(name, []).append(row)
                print(
                    f"{name:<14} seed {seed}: held-out loss {row['final_val_loss']:.4f} "
                    f"({row['steps']} steps, {row['epochs']} epochs, wall {row['wall_s']:.0f}s)",
                    flush=True,
                )
    command = " ".join(["python", *sys.argv])
    stem = Path(__file__).parent / "results" / f"compare-{args.name}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    date = time.strftime("%Y-%m-%d %H:%M")
    with open(f"{stem}.jsonl", "a") as f:
        for name, rows in results.items():
            for row in rows:
                f.write(
                    json.dumps(
                        {
                            "date": date,
                            "command": command,
                            "arm": name,
                            "overrides": dict(arms)[name],
                            **row,
                        }
                    )
                    + "\n"
                )
    base = statistics.mean(r["final_val_loss"] for r in next(iter(results.values())))
    lines = [
        f"# Comparison `{args.name}`",
        "",
        f"{date}. Command:",
        "",
        f"    {command}",
        "",
        f"Budget {args.budget} per run, seeds {args.seeds}, config `{args.config}`; judged "
        "at the end of the budget. Learning rates are not tuned per arm (see overrides).",
        "",
        "| arm | overrides | held-out loss (mean ± std) | Δ vs first arm | steps | "
        "epochs | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        losses = [r["final_val_loss"] for r in rows]
        mean = statistics.mean(losses)
        std = statistics.stdev(losses) if len(losses) > 1 else 0.0
        lines.append(
            f"| {name} | `{';'.join(dict(arms)[name]) or '-'}` | {mean:.4f} ± {std:.4f} | "
            f"{mean - base:+.4f} | {statistics.mean(r['steps'] for r in rows):.0f} | "
            f"{rows[0]['epochs']} | {statistics.mean(r['wall_s'] for r in rows):.0f} |"
        )
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
