"""Run by torchrun in the distributed tests: train one config, then write what this rank saw.

    python -m torch.distributed.run --nproc_per_node 2 distributed_worker.py CONFIG OUT_DIR \
        [--step-seconds S0,S1]
Each rank writes OUT_DIR/rank<r>.json: its final step, spending, stop status and the active
layers of every step (recorded by a method that only watches). `--step-seconds` plants each
rank's wall clock: rank r's every step takes S_r pretend seconds, so a wall-clock budget's
outcome does not depend on how busy the machine is, and the ranks disagree on purpose.
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


class PlantedClock:
    """A timer whose steps each take `step` seconds: the clock reads it at the start of a step
    and when charging it, so every second reading advances it."""

    def __init__(self, step: float) -> None:
        self.step, self.t, self.reads = step, 0.0, 0

    def __call__(self) -> float:
        self.reads += 1
        if self.reads % 2 == 0:
            self.t += self.step
        return self.t


def main() -> None:
    config, out = sys.argv[1], Path(sys.argv[2])
    recorder = ActiveLayers()
    trainer = open_run(load_config(config), methods=[recorder], progress=False)
    if "--step-seconds" in sys.argv:
        per_rank = sys.argv[sys.argv.index("--step-seconds") + 1].split(",")
        trainer.state.clock.timer = PlantedClock(float(per_rank[trainer.dist.rank]))
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
