"""Experiment trackers, each run for real and offline on a tiny training run, then read back
through the tracker's own reader: TensorBoard's EventAccumulator, the wandb CLI's reader of
its transaction log, MLflow's client. Plus the config side: names, the old flag, identity."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from budgetlm.config import ConfigError, load_config
from budgetlm.train.metrics import MetricsLog, read_metrics
from budgetlm.train.session import open_run
from budgetlm.train.tracking import TrackerSet, open_trackers
from budgetlm.train.tracking.records import metrics_of, summary_of
from budgetlm.train.tracking.registry import tracker_run_name

from .helpers import tiny_config

ROOT = Path(__file__).resolve().parents[2]
ALL = "train.loggers=[tensorboard,wandb,mlflow]"


@pytest.fixture(scope="module", autouse=True)
def offline_trackers(tmp_path_factory):
    """Every tracker offline and inside a temporary folder; no W&B service left behind."""
    home = tmp_path_factory.mktemp("tracker-home")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY", "WANDB_RUN_GROUP"):
            mp.delenv(key, raising=False)
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(key, raising=False)
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            (home / key.lower()).mkdir()
            mp.setenv(key, str(home / key.lower()))
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("NETRC", str(home / "no-netrc"))
        yield home
        if "wandb" in sys.modules:
            sys.modules["wandb"].teardown()  # ends the wandb-core service of this process


def _train(cfg, resume=None, stop_after=None):
    trainer = open_run(cfg, resume=resume, progress=False)
    try:
        summary = trainer.run(stop_after=stop_after)
    finally:
        trainer.log.close()
    return trainer.run_dir, summary


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One 6-step run logging to all three trackers, with no tracker settings: the defaults
    (offline W&B under the run directory, MLflow store under run.out_dir) are what is tested."""
    out = tmp_path_factory.mktemp("tracked")
    cfg = tiny_config(
        "gpt",
        out / "runs" / "tracked-run",
        "budget=6steps",
        "train.eval_every=0.5",
        "rst.fallback=flops",  # prices the tiny shape, so records carry rst_s
        f"run.out_dir={out / 'runs'}",
        "run.tags.arm=baseline",
        ALL,
    )
    run_dir, summary = _train(cfg)
    records = read_metrics(run_dir / "metrics.jsonl")
    return run_dir, summary, records


def _train_records(records):
    return [r for r in records if r["event"] == "train"]


# -- TensorBoard ----------------------------------------------------------------------------------


def test_tensorboard_logs_metrics_config_and_summary(tracked):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, summary, records = tracked
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    expected = {r["step"]: r["loss"] for r in _train_records(records)}
    assert sorted(loss) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    assert loss == pytest.approx(expected, rel=1e-6)  # stored as float32
    evals = {e.step: e.value for e in acc.Scalars("eval/val_loss")}
    assert evals[6] == pytest.approx(summary["final_val_loss"], rel=1e-6)
    for name in ("progress/p", "progress/rst_s", "progress/wall_s"):
        assert [e.step for e in acc.Scalars(name)][-1] == 6
    assert acc.Scalars("progress/p")[-1].value == 1.0
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| optim.lr | 0.003 |" in config and "| run.tags.arm | baseline |" in config
    final = acc.Scalars("summary/final_val_loss")
    assert final[-1].value == pytest.approx(summary["final_val_loss"], rel=1e-6)
    text = acc.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| status | finished |" in text
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


# -- Weights & Biases -----------------------------------------------------------------------------


def _wandb_inspect(path: Path, *flags: str) -> str:
    """The installed wandb's own reader of a run's .wandb transaction log, as JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(path)],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a speed test: wandb imports slowly under load
        cwd=path.parent,  # the CLI keeps its debug log in ./wandb
    )
    if done.returncode == 2 and "No such command" in done.stderr:
        pytest.skip("this wandb has no `wandb leet inspect` to read an offline run with")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_wandb_offline_run_holds_config_history_and_summary(tracked):
    pytest.importorskip("wandb")
    run_dir, summary, records = tracked
    (offline,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    overview = json.loads(_wandb_inspect(offline, "--summary"))
    assert overview["name"] == "tracked-run" and overview["project"] == "budgetlm"
    assert overview["tags"] == ["arm:baseline"] and overview["state"] == "finished"
    assert overview["config"]["optim.lr"] == 0.003
    assert overview["config"]["run.tags.arm"] == "baseline"
    assert overview["summary"]["final_val_loss"] == pytest.approx(summary["final_val_loss"])
    assert overview["summary"]["status"] == "finished" and overview["summary"]["steps"] == 6
    assert overview["summary"]["spent/steps"] == 6

    log = [json.loads(line) for line in _wandb_inspect(offline).splitlines() if line.strip()]
    history = [r["history"] for r in log if r["type"] == "history"]
    rows = {h["step"].get("num", 0): h["item"] for h in history}
    for record in _train_records(records):
        row = rows[record["step"]]
        assert row["train/loss"] == pytest.approx(record["loss"])
        assert row["progress/p"] == pytest.approx(record["p"])
        assert row["progress/rst_s"] == pytest.approx(record["rst_s"])
        assert row["progress/wall_s"] == pytest.approx(record["wall_s"])
    assert rows[0]["eval/val_loss"] == pytest.approx(records[0]["val_loss"])


# -- MLflow ---------------------------------------------------------------------------------------


def _mlflow_run(run_dir: Path):
    from mlflow.tracking import MlflowClient

    saved = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(saved["uri"])
    return client, client.get_run(saved["run_id"])


def test_mlflow_local_store_holds_params_metrics_and_summary(tracked):
    pytest.importorskip("mlflow")
    run_dir, summary, records = tracked
    client, run = _mlflow_run(run_dir)
    # The default store: a folder under run.out_dir, shared by the runs written there.
    assert run.info.artifact_uri.startswith((run_dir.parent / "mlruns").as_uri())
    assert client.get_experiment(run.info.experiment_id).name == "budgetlm"
    assert run.info.run_name == "tracked-run" and run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["budget"] == "6steps"
    assert run.data.tags["arm"] == "baseline" and run.data.tags["summary/status"] == "finished"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    expected = {r["step"]: r["loss"] for r in _train_records(records)}
    assert {m.step: m.value for m in history} == pytest.approx(expected)
    assert len(history) == len(expected) == 6
    wall = client.get_metric_history(run.info.run_id, "progress/wall_s")
    assert max(m.step for m in wall) == 6
    assert run.data.metrics["progress/rst_s"] == pytest.approx(records[-1]["rst_s"])
    assert run.data.metrics["summary/final_val_loss"] == pytest.approx(summary["final_val_loss"])
    assert run.data.metrics["summary/steps"] == 6


# -- resume, failure, missing libraries -----------------------------------------------------------


def test_a_resumed_run_goes_on_in_the_same_tracker_runs(tmp_path):
    """Stopped at step 3, resumed with more loggers: the same run directory (loggers are not
    in the config hash, and may change on resume), the same MLflow and W&B runs."""
    common = [
        "run.dir=null",
        "run.name=resumable",
        f"run.out_dir={tmp_path}",
        "budget=6steps",
        "train.checkpoint_every=0.5",
        "train.eval_every=0",
    ]
    first = tiny_config("gpt", tmp_path / "unused", *common, "train.loggers=[mlflow,wandb]")
    run_dir, summary = _train(first, stop_after=3)
    assert summary["status"] == "stopped"
    ids = json.loads((run_dir / "trackers.json").read_text())
    client, run = _mlflow_run(run_dir)
    assert run.info.status == "KILLED"

    second = tiny_config("gpt", tmp_path / "unused", *common, ALL)
    assert second.hash() == first.hash()
    again, summary = _train(second, resume="auto")
    assert again == run_dir and summary["status"] == "finished"
    assert json.loads((run_dir / "trackers.json").read_text()) == ids
    run = client.get_run(ids["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(ids["wandb"]["id"] in p.name for p in offline)


def test_tensorboard_drops_what_a_dead_attempt_logged_past_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(
        "gpt",
        tmp_path / "run",
        "budget=6steps",
        "train.checkpoint_every=0.5",
        "train.eval_every=0",
        "train.loggers=[tensorboard]",
    )
    run_dir, _ = _train(cfg)
    # As if the attempt had died after step 6 with its newest checkpoint at step 3.
    shutil.rmtree(run_dir / "checkpoints" / "step_000006")
    (run_dir / "summary.json").unlink()
    _train(cfg, resume="auto")
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in acc.Scalars("summary/final_val_loss")] == [6]


def test_a_failing_tracker_is_turned_off_with_one_warning(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    from budgetlm.train.tracking.tensorboard_tracker import TensorBoardTracker

    calls = []

    def full_disk(self, metrics, step):
        calls.append(step)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardTracker, "log_metrics", full_disk)
    cfg = tiny_config("gpt", tmp_path / "run", "budget=4steps", "train.loggers=[tensorboard]")
    run_dir, summary = _train(cfg)
    assert summary["status"] == "finished" and len(calls) == 1
    err = capsys.readouterr().err
    assert err.count("tensorboard tracker failed") == 1 and "No space left" in err
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "train"]
    assert steps == [1, 2, 3, 4]  # metrics.jsonl has every record


def test_trackers_see_what_metrics_jsonl_holds_and_failures_stay_contained(tmp_path, capsys):
    class Recorder:
        name = "recorder"

        def __init__(self):
            self.calls = []

        def log_config(self, config):
            self.calls.append(("config", config))

        def log_metrics(self, metrics, step):
            self.calls.append(("metrics", step, metrics))

        def log_summary(self, summary):
            self.calls.append(("summary", summary))

        def close(self):
            self.calls.append(("close",))

    class Broken(Recorder):
        name = "broken"

        def log_summary(self, summary):
            raise RuntimeError("server went away")

    good, broken = Recorder(), Broken()
    log = MetricsLog(tmp_path / "metrics.jsonl", TrackerSet([broken, good]))
    record = {"event": "train", "step": 3, "p": 0.5, "wall_s": 1.5, "rst_s": None, "loss": 2.0}
    log.write(record)
    log.write({"event": "train", "step": 4, "loss": float("inf"), "p": 0.6})
    log.summary({"status": "finished", "steps": 4, "spent": {"rst": 2.5}, "warnings": ["x"]})
    log.close()
    log.close()  # twice is harmless
    assert read_metrics(tmp_path / "metrics.jsonl")[0] == record
    assert good.calls == [
        ("metrics", 3, {"progress/p": 0.5, "progress/wall_s": 1.5, "train/loss": 2.0}),
        ("metrics", 4, {"progress/p": 0.6}),  # inf is null in metrics.jsonl, absent here
        ("summary", {"status": "finished", "steps": 4.0, "spent/rst": 2.5}),
        ("close",),
    ]
    assert broken.calls[-1] == ("close",)  # given the chance to flush, then dropped
    assert capsys.readouterr().err.count("broken tracker failed logging the summary") == 1


def test_eval_and_other_events_get_their_own_names():
    eval_record = {"event": "eval", "step": 0, "p": 0.0, "val_loss": 7.5, "epoch": 0.0}
    assert metrics_of(eval_record) == {
        "progress/p": 0.0,
        "progress/epoch": 0.0,
        "eval/val_loss": 7.5,
    }
    assert summary_of({"final_val_loss": None, "budget": {"text": "6 steps"}}) == {
        "budget/text": "6 steps"
    }


@pytest.mark.parametrize("name, extra", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_library_names_the_extra_to_install(tmp_path, monkeypatch, name, extra):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` now fails
    cfg = tiny_config("gpt", tmp_path / "run", f"train.loggers=[tensorboard,{name}]")
    with pytest.raises(ConfigError, match=rf"pip install 'budgetlm\[{extra}\]'") as info:
        open_run(cfg, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "tensorboard").exists()  # nothing started before the check


def test_a_missing_tensorboard_names_its_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = tiny_config("gpt", tmp_path / "run", "train.loggers=[tensorboard]")
    with pytest.raises(ConfigError, match=r"pip install 'budgetlm\[tensorboard\]'"):
        open_trackers(cfg, tmp_path / "run")


# -- config ---------------------------------------------------------------------------------------


def test_loggers_from_the_command_line_and_unknown_names():
    assert load_config(None, ["train.loggers=wandb,mlflow"]).train.loggers == ["wandb", "mlflow"]
    assert load_config(None, ["train.loggers=[tensorboard]"]).train.loggers == ["tensorboard"]
    assert load_config(None, []).train.loggers == []
    with pytest.raises(ConfigError, match="did you mean 'wandb'"):
        load_config(None, ["train.loggers=[wandbb]"])
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(None, ["train.loggers=wandb,wandb"])
    with pytest.raises(ConfigError, match="did you mean 'offline'"):
        load_config(None, ["train.wandb_mode=ofline"])


def test_an_old_config_with_tensorboard_true_still_loads(tmp_path, capsys):
    old = tmp_path / "config.yaml"
    old.write_text(yaml.safe_dump({"train": {"tensorboard": True, "batch_size": 4}}))
    cfg = load_config(old)
    assert cfg.train.loggers == ["tensorboard"] and cfg.train.batch_size == 4
    assert "train.tensorboard is deprecated" in capsys.readouterr().err
    old.write_text(yaml.safe_dump({"train": {"tensorboard": False, "loggers": ["mlflow"]}}))
    assert load_config(old).train.loggers == ["mlflow"]
    assert capsys.readouterr().err == ""  # every old config.yaml says false: no noise
    cfg = load_config(None, ["train.tensorboard=true", "train.loggers=wandb"])
    assert cfg.train.loggers == ["wandb", "tensorboard"]


def test_loggers_tracker_settings_and_tags_leave_the_config_hash_alone():
    cfg = load_config(None, ["budget=10steps"])
    watched = copy.deepcopy(cfg)
    watched.train.loggers = ["tensorboard", "wandb", "mlflow"]
    watched.train.wandb_project, watched.train.wandb_mode = "p", "online"
    watched.train.wandb_entity, watched.train.mlflow_experiment = "me", "e"
    watched.train.mlflow_uri = "http://localhost:5000"
    watched.run.tags = {"arm": "x"}
    assert watched.hash() == cfg.hash()
    watched.train.batch_size += 1
    assert watched.hash() != cfg.hash()


# -- compare grids --------------------------------------------------------------------------------


def test_compare_cells_carry_their_grid_tags(tmp_path):
    from budgetlm.compare.run.experiment import Cell
    from budgetlm.compare.run.experiment_file import experiment_from_dict

    raw = {
        "name": "demo",
        "base": str(ROOT / "configs" / "gpt-tiny.yaml"),
        "config": {"run": {"tags": {"owner": "me"}}},
        "budgets": ["10steps"],
        "seeds": [1, 2],
        "arms": [{"name": "baseline"}, {"name": "lion", "optim": "lion", "lr_grid": [1e-4, 3e-4]}],
    }
    exp = experiment_from_dict(raw, tmp_path)
    out = tmp_path / "out"
    cfg = exp.config_for(Cell("baseline", "10steps", 2), out)
    assert cfg.run.tags == {
        "owner": "me",  # the base config's own tags stay
        "experiment": "demo",
        "arm": "baseline",
        "budget": "10steps",
        "seed": "2",
    }
    assert tracker_run_name(cfg, Path(cfg.run.dir)) == "demo/baseline/10steps/seed2"
    tuned = exp.config_for(Cell("lion", "10steps", 1, 3e-4), out)
    assert tuned.run.tags["lr"] == "0.0003" and tuned.run.tags["arm"] == "lion"

    # Tags and loggers never change a cell's identity.
    watched = experiment_from_dict({**raw, "set": {"train.loggers": ["wandb", "mlflow"]}}, tmp_path)
    same = watched.config_for(Cell("baseline", "10steps", 2), out)
    assert same.train.loggers == ["wandb", "mlflow"] and same.hash() == cfg.hash()
    untagged = copy.deepcopy(cfg)
    untagged.run.tags = {}
    assert untagged.hash() == cfg.hash()


def test_a_plain_run_is_named_after_its_directory(tmp_path):
    cfg = load_config(None, ["run.name=mine"])
    assert tracker_run_name(cfg, tmp_path / "mine-1a2b3c4d") == "mine-1a2b3c4d"
