"""MLflow: a run in the experiment of the compare grid (or `budgetlm`), through MlflowClient.

Without a tracking URI the store is local, `file:<run.out_dir>/mlruns`, shared by every run
written under that folder; `mlflow ui --backend-store-uri <that URI>` shows it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any
from urllib.parse import urlparse

from budgetlm.train.tracking import ids
from budgetlm.train.tracking.base import RunIdentity

# MLflow's limits per log_batch call, and the shortest parameter value limit of the versions
# supported (longer values are cut).
_BATCH_PARAMS = 100
_BATCH_METRICS = 1000
_PARAM_CHARS = 500

_END_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "stopped": "KILLED"}


class MlflowTracker:
    name = "mlflow"

    def __init__(self, run: RunIdentity) -> None:
        from mlflow.tracking import MlflowClient

        settings = run.settings
        self.tracking_uri = (
            settings.mlflow_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or (run.out_dir.resolve() / "mlruns").as_uri()
        )
        if _is_file_store(self.tracking_uri):
            # MLflow 3 asks file stores to opt in; a local folder is what works offline with
            # mlflow-skinny alone (sqlite needs SQLAlchemy). An explicit "false" is respected.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = (
            settings.mlflow_experiment
            or run.experiment
            or os.environ.get("MLFLOW_EXPERIMENT_NAME")
            or "budgetlm"
        )
        self.run_id = self._resumed_run(run) or self._new_run(run, experiment)
        ids.remember(run.run_dir, self.name, {"run_id": self.run_id, "uri": self.tracking_uri})
        self._step = run.resumed_at
        self._status: str | None = None

    def _resumed_run(self, run: RunIdentity) -> str | None:
        """The run the attempt before this one logged to, if it is in this store."""
        saved = ids.remembered(run.run_dir, self.name) if run.resumed_at else {}
        if not saved.get("run_id") or saved.get("uri") != self.tracking_uri:
            return None
        try:
            self._client.get_run(saved["run_id"])
        except Exception:  # deleted, or the store moved: start a new MLflow run
            return None
        self._client.update_run(saved["run_id"], status="RUNNING")
        return saved["run_id"]

    def _new_run(self, run: RunIdentity, experiment: str) -> str:
        tags = {**run.tags, "budgetlm.run_dir": str(run.run_dir.resolve())}
        created = self._client.create_run(
            _experiment_id(self._client, experiment), run_name=run.name, tags=tags
        )
        return created.info.run_id

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # Parameters cannot change once logged: a resumed run keeps the first attempt's values
        # of the display-only keys it may change (train.log_every, train.device, ...).
        logged = self._client.get_run(self.run_id).data.params
        params = [
            Param(key, _text(value)[:_PARAM_CHARS])
            for key, value in config.items()
            if key not in logged
        ]
        for i in range(0, len(params), _BATCH_PARAMS):
            self._client.log_batch(self.run_id, params=params[i : i + _BATCH_PARAMS])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in metrics.items()]
        for i in range(0, len(batch), _BATCH_METRICS):
            self._client.log_batch(self.run_id, metrics=batch[i : i + _BATCH_METRICS])
        self._step = step

    def log_summary(self, summary: dict[str, float | str]) -> None:
        step = int(summary.get("steps", self._step))
        self.log_metrics(
            {f"summary/{k}": v for k, v in summary.items() if isinstance(v, float)}, step
        )
        for key, value in summary.items():
            if isinstance(value, str):
                self._client.set_tag(self.run_id, f"summary/{key}", value[:_PARAM_CHARS])
        self._status = str(summary.get("status"))

    def close(self) -> None:
        self._client.set_terminated(self.run_id, _END_STATUS.get(self._status or "", "FAILED"))


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another cell of the grid created it a moment ago
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _is_file_store(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")  # a folder, as a path or a file: URI


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
