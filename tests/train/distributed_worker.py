"""Run by torchrun in the distributed tests: train one config, then write what this rank saw.

    python -m torch.distributed.run --nproc_per_node 2 distributed_worker.py CONFIG OUT_DIR
Each rank writes OUT_DIR/rank<r>.json: its final step, spending, stop status and the active
layers of every step (recorded by a method that only watches).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from budgetlm.api import Method
from budgetlm.config import load_config
from budgetlm.train.session import open_run


class ActiveLayers(Method):
    name = "active_layers_recorder"

    def __init__(self) -> None:
        self.seen: dict[int, dict | None] = {}

    def before_batch(self, state, plan, batch):  # noqa: ANN001, ANN201
        self.seen.setdefault(plan.step, plan.active)
        return batch


def main() -> None:
    config, out = sys.argv[1], Path(sys.argv[2])
    recorder = ActiveLayers()
    trainer = open_run(load_config(config), methods=[recorder], progress=False)
    summary = trainer.run()
    if trainer.log is not None:
        trainer.log.close()
    rank = trainer.dist.rank
    record = {
        "rank": rank,
        "world": trainer.dist.world,
        "steps": summary["steps"],
        "status": summary["status"],
        "spent": summary["spent"],
        "active": {str(k): v for k, v in recorder.seen.items()},
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    if trainer.dist.active:
        import torch.distributed

        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
