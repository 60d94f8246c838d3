"""What trackers are given, shaped once for all of them: the config as dotted keys, a
metrics.jsonl record as named metrics, the summary as flat values."""

from __future__ import annotations

import math
from typing import Any

# Where the run stands, in every record: logged under `progress/` so a tracker can plot any
# metric against budget progress, RST or wall seconds instead of the step.
PROGRESS_KEYS = ("p", "rst_s", "wall_s", "tokens", "flops", "epoch", "rst_per_wall")


def flatten(tree: dict[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}; empty mappings vanish, lists stay."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, sep, f"{prefix}{key}{sep}"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)  # metrics.jsonl holds null there: trackers get nothing
    )


def metrics_of(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as tracker metrics: `<event>/<key>` (train/loss, eval/val_loss)
    and `progress/<key>` for the position in the budget."""
    event = record.get("event", "train")
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("event", "step") or not _number(value):
            continue
        out[f"progress/{key}" if key in PROGRESS_KEYS else f"{event}/{key}"] = float(value)
    return out


def summary_of(summary: dict[str, Any]) -> dict[str, float | str]:
    """The run summary's numbers and texts by path (`final_val_loss`, `spent/rst`, `status`)."""
    return {
        key: (float(value) if _number(value) else value)
        for key, value in flatten(summary, sep="/").items()
        if _number(value) or isinstance(value, str)
    }
