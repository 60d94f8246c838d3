"""Time of a prepared-dataset cache hit, before and after the stat-keyed cache (issue 19).

    .venv/bin/python bench/prepare_cache.py    # the data of configs/shakespeare-gpt.yaml
    .venv/bin/python bench/prepare_cache.py --corpus fixture --vocab-size 2048 --val-fraction 0.02

"before" is the budgetlm package of a git revision (default HEAD, extracted with `git archive`
into a temporary folder), "after" the working tree's. Each runs in its own process with its own
empty cache: one build (timed once, for scale), then `--repeats` cache hits of `prepare_dataset`
(what every training start does) and of `prepare_dataset(verify=True)` (what `budgetlm prepare`
does: hash the corpus and every shard). Prints the median and minimum of each, with the command
and the machine. Timing lives here, never in a test; on a shared machine the figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, statistics, sys, time
from pathlib import Path
from budgetlm.data.prepare import prepare_dataset
args = json.loads(sys.argv[1])
kw = dict(cache_root=Path(args["cache"]), val_fraction=args["val_fraction"], progress=False)
t = time.perf_counter()
path = prepare_dataset(args["corpus"], args["tokenizer"], args["vocab_size"], **kw)
build = time.perf_counter() - t
out = {"build_s": build, "package": __import__("budgetlm").__file__}
for name, verify in (("hit_s", False), ("hit_verify_s", True)):
    times = []
    for _ in range(args["repeats"]):
        t = time.perf_counter()
        again = prepare_dataset(args["corpus"], args["tokenizer"], args["vocab_size"],
                                verify=verify, **kw)
        times.append(time.perf_counter() - t)
        assert again == path, (again, path)
    out[name] = {"median": statistics.median(times), "min": min(times)}
print(json.dumps(out))
"""


def run_version(package_root: Path, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="budgetlm-bench-cache-") as cache:
        child_args = {
            "cache": cache,
            "corpus": args.corpus,
            "tokenizer": args.tokenizer,
            "vocab_size": args.vocab_size,
            "val_fraction": args.val_fraction,
            "repeats": args.repeats,
        }
        env = {**os.environ, "PYTHONPATH": str(package_root), "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(child_args)],
            env=env,
            cwd=package_root,
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])


def extract(revision: str, into: Path) -> Path:
    archive = into / "src.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "archive", revision, "budgetlm"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="shakespeare")
    p.add_argument("--tokenizer", default="bpe")
    p.add_argument("--vocab-size", type=int, default=320)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--before", default="HEAD", help="git revision of the 'before' code")
    args = p.parse_args()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {load}"
    )
    print(
        f"dataset: corpus={args.corpus} tokenizer={args.tokenizer} vocab={args.vocab_size} "
        f"val_fraction={args.val_fraction}; {args.repeats} hits each"
    )
    with tempfile.TemporaryDirectory(prefix="budgetlm-bench-before-") as tmp:
        results = {
            f"before ({args.before})": run_version(extract(args.before, Path(tmp)), args),
            "after (working tree)": run_version(ROOT, args),
        }
    print(f"{'':22} {'build':>8} {'hit median':>11} {'hit min':>9} {'verify median':>14}")
    for name, r in results.items():
        print(
            f"{name:22} {r['build_s']:7.2f}s {r['hit_s']['median'] * 1e3:9.1f}ms "
            f"{r['hit_s']['min'] * 1e3:7.1f}ms {r['hit_verify_s']['median'] * 1e3:12.1f}ms"
        )


if __name__ == "__main__":
    main()
