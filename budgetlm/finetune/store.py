"""Where a run keeps its downstream scores: `<run>/finetune/<suite>.json` (light to import)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS_DIR = "finetune"


def write_results(run_dir: Path, suite: str, results: dict[str, Any]) -> Path:
    directory = Path(run_dir) / RESULTS_DIR
    directory.mkdir(exist_ok=True)
    path = directory / f"{suite}.json"
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every suite's results stored in a run directory, by suite name."""
    directory = Path(run_dir) / RESULTS_DIR
    if not directory.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}
