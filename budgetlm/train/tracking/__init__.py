"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) behind one small interface.

metrics.jsonl is always written and stays the record of a run; the trackers named in
`train.loggers` get the same records as well, for looking at curves (docs/tracking.md).
"""

from budgetlm.train.tracking.base import RunIdentity, Tracker
from budgetlm.train.tracking.fanout import TrackerSet
from budgetlm.train.tracking.registry import open_trackers

__all__ = [
    "RunIdentity",
    "Tracker",
    "TrackerSet",
    "open_trackers",
]
