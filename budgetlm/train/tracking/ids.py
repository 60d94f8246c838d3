"""RUN_DIR/trackers.json: each tracker's own id for the run, so that a resumed attempt goes on
logging into the same tracker run instead of starting a second one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FILE = "trackers.json"


def remembered(run_dir: Path, tracker: str) -> dict[str, Any]:
    """What `tracker` saved for this run directory ({} if nothing)."""
    path = run_dir / FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    value = saved.get(tracker) if isinstance(saved, dict) else None
    return value if isinstance(value, dict) else {}


def remember(run_dir: Path, tracker: str, value: dict[str, Any]) -> None:
    path = run_dir / FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    saved[tracker] = value
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(saved, indent=2) + "\n")
    os.replace(tmp, path)  # never a half-written file
