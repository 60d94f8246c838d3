"""Typed run configuration: YAML files plus dotted command-line overrides, strictly validated.

    budgetlm train configs/gpt-tiny.yaml budget=300s optim.lr=1e-3 model.n_layers=6

Unknown keys and wrong types fail before any work starts, naming the key and suggesting the
closest valid one. Every field has a default, so an empty file is a valid (tiny GPT) run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from budgetlm.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem, reported before any work starts."""


@dataclass
class RunConfig:
    """Where the run is written and its seed (weights init, data order, masks)."""

    name: str | None = None
    """the run's name; default: the config file's stem"""
    out_dir: str = "runs"
    """parent folder of run directories"""
    dir: str | None = None
    """explicit run directory; default: `out_dir/<name>-<identity hash>` (see "Run identity")"""
    seed: int = 1
    """seeds model initialisation, data order and per-example masks; another seed is another
    run (another folder), and a run cannot be resumed with another seed"""
    tags: dict[str, str] = field(default_factory=dict)
    """labels for experiment trackers (`budgetlm compare` sets `experiment`, `arm`, `budget`,
    `seed` and, when tuning, `lr`); they change nothing trained (docs/tracking.md)"""


@dataclass
class ModelConfig:
    """A shape preset (`budgetlm shapes` lists them) plus optional knob overrides."""

    preset: str = "gpt-tiny"
    """a preset or Scale Efficiently variant (`budgetlm shapes` lists them); the family (GPT,
    BERT, T5) follows from it"""
    n_layers: int | None = None
    """blocks (T5: encoder blocks); default: the preset's"""
    n_decoder_layers: int | None = None
    """T5 decoder blocks; default: the preset's"""
    d_model: int | None = None
    """hidden width; default: the preset's"""
    n_heads: int | None = None
    """attention heads; default: the preset's"""
    d_kv: int | None = None
    """width of one attention head; default: the preset's"""
    d_ff: int | None = None
    """feed-forward width; default: the preset's"""
    activation: str | None = None
    """`gelu`, `relu`, `gated-gelu` or `swiglu`; default: the preset's"""
    seq_len: int | None = None
    """sequence length (T5: encoder input length; the target length follows from the
    objective); default: the preset's"""
    positions: str | None = None
    """`learned`, `rotary` (GPT), `sinusoidal` (BERT) or `relative` (T5); default: the preset's"""
    tie_embeddings: bool | None = None
    """share the input embedding and the output head; default: the preset's"""
    dropout: float | None = None
    """dropout probability; default: the preset's (0 in all presets)"""


@dataclass
class DataConfig:
    """The corpus, its tokenizer and the training objective (docs/data.md)."""

    corpus: str = "fixture"
    """`fixture`, `bundled`, `shakespeare` (its plays alone), a local `.txt`/`.jsonl` file or
    directory, or `hf:NAME[:CONFIG]`"""
    path: str | None = None
    """an already prepared dataset directory (skips preparing)"""
    tokenizer: str | None = None
    """`bpe`, `wordpiece`, `unigram` or `gpt2`; default: by model family"""
    vocab_size: int | None = None
    """tokenizer vocabulary size; default: the preset's"""
    val_fraction: float = 0.02
    """share of documents held out for evaluation (chosen by a hash of the text), split about
    evenly into the `tune` and `test` splits (docs/data.md)"""
    heldout_min_documents: int = 4
    """floor of documents in each held-out split (`tune`, `test`): on a small corpus the
    lowest-hashed documents are held out until each has this many; preparing fails when the
    corpus cannot also keep as many for training"""
    max_bytes: int | None = None
    """read at most this much text (quick runs); default: all of it"""
    objective: str | None = None
    """`causal_lm`, `mlm` or `span_corruption`; default: by model family"""
    mask_prob: float = 0.15
    """MLM: fraction of tokens masked (80% [MASK], 10% random, 10% kept)"""
    noise_density: float = 0.15
    """span corruption: fraction of tokens corrupted"""
    mean_span: float = 3.0
    """span corruption: mean noise-span length"""
    text_field: str = "text"
    """JSONL / Hugging Face field holding the text"""
    hf_split: str = "train"
    """Hugging Face split to read"""
    data_files: str | None = None
    """Hugging Face `data_files` (local files with the `text`/`json` builders)"""


@dataclass
class OptimConfig:
    """The optimizer (docs/optimizers.md); the learning rate follows `schedule`."""

    name: str = "adamw"
    """`adamw`, `adamw_rms` (nanoT5), `lion`, `sophia` or `muon`; or a plug-in, by the name an
    installed package registers or by import path `pkg.module:Object` (docs/your-method.md)"""
    lr: float = 1e-3
    """the peak learning rate of the schedule"""
    betas: tuple[float, float] | None = None
    """Adam/Lion/Sophia betas; default: the optimizer's own (AdamW (0.9, 0.98), Lion
    (0.9, 0.99), Sophia (0.965, 0.99))"""
    eps: float | None = None
    """epsilon; default: the optimizer's own (AdamW 1e-8)"""
    weight_decay: float = 0.01
    """decoupled; applied to matrices and embeddings, never to biases or norms"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this; 0 disables clipping"""
    options: dict[str, Any] = field(default_factory=dict)
    """optimizer-specific settings (`optim.options.<key>`), checked by the optimizer"""


@dataclass
class ScheduleConfig:
    """A learning-rate schedule of budget progress; unset options keep the schedule's defaults."""

    name: str = "warmup_linear"
    """`one_cycle`, `warmup_cosine`, `warmup_linear`, `wsd` or `constant` (docs/budget.md)"""
    warmup: float | None = None
    """warm-up length, as a fraction of the budget"""
    final: float | None = None
    """absolute learning rate at p = 1"""
    start_factor: float | None = None
    """warmup_cosine: warm-up starts at this fraction of the peak"""
    peak_at: float | None = None
    """one_cycle: progress of the peak"""
    decay: float | None = None
    """wsd: fraction of the budget spent decaying"""

    def options(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name" and v is not None}


@dataclass
class TrainConfig:
    """Batch, device and precision, and when to log, evaluate and checkpoint."""

    batch_size: int = 32
    """sequences per optimizer step (under torchrun: the global batch)"""
    micro_batch_size: int | None = None
    """gradient accumulation when smaller than batch_size; default: the whole batch"""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `cuda:N`"""
    precision: str = "auto"
    """`auto` (bf16 autocast on CUDA, fp32 on CPU), `fp32` or `bf16`"""
    compile: bool = False
    """compile each transformer block with `torch.compile` (docs/compile.md)"""
    prefetch: bool = True
    """build the next step's batches in a background thread while this step trains (in pinned
    memory on CUDA); the batches are the same either way (docs/training.md)"""
    threads: int | None = None
    """CPU threads for torch; default: torch's own choice"""
    parallel: str = "auto"
    """under torchrun: `auto` (= `ddp`), `ddp` or `fsdp` (docs/distributed.md)"""
    log_every: int = 10
    """log the training loss every this many steps"""
    eval_every: float = 0.25
    """evaluate at every multiple of this fraction of the budget; 0 = only at the end"""
    eval_batches: int = 8
    """held-out batches per evaluation"""
    eval_batch_size: int | None = None
    """sequences per held-out batch; default: the micro-batch size"""
    eval_seed: int = 1234
    """fixes the held-out masks, the same for every run"""
    eval_split: str = "test"
    """held-out split the run is evaluated on: `test` (judging), `tune` (choosing
    hyper-parameters; `budgetlm compare` sets it for tuning cells) or `val` (the old name of
    `test`)"""
    checkpoint_every: float = 0.25
    """checkpoint at every multiple of this fraction of the budget; 0 = only at the end"""
    keep_checkpoints: int = 2
    """newest complete checkpoints kept"""
    on_nonfinite: str = "halt"
    """a non-finite loss or gradient norm (checked every step, before the optimizer step):
    `halt` stops the run with exit code 3 and saves nothing non-finite; `skip` leaves the
    weights and optimizer state untouched, records the skip and still charges the step.
    A non-finite held-out loss always halts"""
    progress_bar: bool = True
    """show the progress bar (`--quiet` turns it off)"""
    loggers: list[str] = field(default_factory=list)
    """experiment trackers that also get the metrics: `tensorboard`, `wandb`, `mlflow`
    (docs/tracking.md); metrics.jsonl is always written"""
    wandb_project: str | None = None
    """W&B project; default: `$WANDB_PROJECT`, else `budgetlm`"""
    wandb_entity: str | None = None
    """W&B entity (user or team); default: `$WANDB_ENTITY`, else your default entity"""
    wandb_mode: str | None = None
    """`online`, `offline` or `disabled`; default: `$WANDB_MODE`, else `online` when an API
    key is configured and `offline` otherwise"""
    mlflow_uri: str | None = None
    """MLflow tracking URI; default: `$MLFLOW_TRACKING_URI`, else `file:<run.out_dir>/mlruns`"""
    mlflow_experiment: str | None = None
    """MLflow experiment; default: a compare grid's name, else `$MLFLOW_EXPERIMENT_NAME`, else
    `budgetlm`"""


@dataclass
class RSTConfig:
    """Reference-system time: the cost table that prices every pass (docs/rst.md)."""

    table: str | None = None
    """a cost table file, or a shipped table's name (`cpu-reference`, `h100`); default: the
    shipped CPU reference table"""
    fallback: str = "refuse"
    """`refuse`, or `flops`: price a shape the table does not cover from its FLOPs (recorded
    as a warning in the run)"""
    tolerance: float | None = None
    """check the table at this tolerance (largest relative distance of a measured point from
    the fit); default: the tolerance the table was written with"""
    allow_table_change: bool = False
    """resume under a different table than the checkpoint was made with"""
    verify: str = "hash"
    """`hash`: check the table's content hash and internal consistency; `probe`: also time a
    few of its shapes on this machine and refuse a table that disagrees wildly (docs/rst.md)"""


@dataclass
class Config:
    """A run: its budget, its efficient-training methods and one section per concern."""

    budget: str = "200steps"
    """what the run may spend (the formats are above; docs/budget.md)"""
    method: str = "none"
    """efficient-training methods, combined with `+` (e.g. `layer_drop+selective_backprop`):
    built-ins, plug-ins registered by an installed package, or a plug-in's import path
    `pkg.module:Class` (docs/your-method.md)"""
    methods: dict[str, Any] = field(default_factory=dict)
    """per-method options, `methods.<name>.<option>`, checked by the method; a plug-in's under
    its class's `name` (or, as a YAML key, its import path as written)"""
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rst: RSTConfig = field(default_factory=RSTConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def hash(self) -> str:
        """The run's identity: a content hash of every setting that changes what the run trains
        or records as its result (the seed included), and of none in `IDENTITY_EXCLUDED`. It
        names the run folder (`<run.name>-<hash[:8]>`), so a run started again with the same
        identity continues (or reports) the same run, and any other is a new one."""
        return hashlib.sha256(json.dumps(identity_dict(self), sort_keys=True).encode()).hexdigest()


# -- run identity and resume safety ---------------------------------------------------------------
#
# Every key is part of the run's identity unless it is listed here with why it is not. A key is
# left out only when it cannot change what is trained or the result recorded; in exchange every
# key left out may also change when a run is resumed (it is in RESUME_SAFE): a setting that
# shares a run folder must not stop that run from continuing.

_WHERE = "where the run is written and how it is labelled, not what it trains"
_WATCHED = "how the run is watched: nothing trained or recorded as its result changes"
_EXECUTION = (
    "how the same computation is executed: it can change floating-point rounding (summation "
    "order across CPU threads, fused kernels, GPU vs CPU arithmetic), which is treated like a "
    "change of machine, not of experiment; so a run may move between machines and resume. "
    "With `train.precision=auto` the device also picks bf16 or fp32: set `train.precision` to "
    "make the precision part of the identity"
)
_SCHEDULING = "when the same batches are built, not what they hold or how they are computed"
_HOUSEKEEPING = "housekeeping and checks that refuse or allow, never change, what is computed"

IDENTITY_EXCLUDED: dict[str, str] = {
    "run.name": _WHERE,  # already in the folder name
    "run.out_dir": _WHERE,
    "run.dir": _WHERE,
    "run.tags": _WHERE,
    "train.progress_bar": _WATCHED,  # --quiet
    "train.log_every": _WATCHED,
    "train.loggers": _WATCHED,
    "train.wandb_project": _WATCHED,
    "train.wandb_entity": _WATCHED,
    "train.wandb_mode": _WATCHED,
    "train.mlflow_uri": _WATCHED,
    "train.mlflow_experiment": _WATCHED,
    "train.threads": _EXECUTION,
    "train.device": _EXECUTION,
    "train.compile": _EXECUTION,
    "train.prefetch": _SCHEDULING,
    "train.parallel": _EXECUTION,
    "train.keep_checkpoints": _HOUSEKEEPING,
    "rst.verify": _HOUSEKEEPING,
    "rst.tolerance": _HOUSEKEEPING,
    "rst.allow_table_change": _HOUSEKEEPING,
}

# Settings that only choose where a run is observed (experiment trackers).
OBSERVATION_ONLY = {
    "train.loggers",
    "train.wandb_project",
    "train.wandb_entity",
    "train.wandb_mode",
    "train.mlflow_uri",
    "train.mlflow_experiment",
}

# Settings that may differ between an interrupted run and its resumption: everything outside the
# identity, and rst.table, which may move: the checkpoint stores the table's content hash, which
# is checked on resume (the table stays in the identity: another table prices another run).
# run.seed is not here: another seed is another run.
RESUME_SAFE = {
    *IDENTITY_EXCLUDED,
    "rst.table",
    "train.tensorboard",  # replaced by train.loggers: run directories from before still resume
}


def identity_dict(cfg: Config) -> dict[str, Any]:
    """The settings that make up the run's identity (`Config.hash`), as a nested dict."""
    d = cfg.to_dict()
    for key in IDENTITY_EXCLUDED:
        section, name = key.split(".")
        d.get(section, {}).pop(name, None)
    return d


def is_identity_key(key: str) -> bool:
    """Whether the dotted config key is part of the run's identity."""
    return key not in IDENTITY_EXCLUDED


def resume_drift(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys that differ between a run's saved config and the config continuing it and
    may not: everything outside RESUME_SAFE, `run.seed` included. A key the saved config lacks
    (it predates the key) counts only when the current value is not the key's default."""
    defaults = Config().to_dict()
    drift = []
    for key in config_diff(saved, current):
        if any(key == safe or key.startswith(safe + ".") for safe in RESUME_SAFE):
            continue  # run.tags.arm is inside run.tags
        if _lookup(saved, key) is _MISSING and _lookup(current, key) == _lookup(defaults, key):
            continue
        drift.append(key)
    return drift


_MISSING = object()


def _lookup(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


# -- loading ------------------------------------------------------------------------------------


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    settings: typing.Mapping[str, Any] | None = None,
) -> Config:
    """Load a YAML config (or the defaults), then apply typed `settings` ({"optim.lr": 1e-3},
    as an experiment file gives them), then `key.sub=value` overrides (as a command line does)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for key, value in (settings or {}).items():
        _set_dotted(raw, str(key).strip(), value)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        _set_dotted(raw, key.strip(), _parse_scalar(value))
    _upgrade_tensorboard_flag(raw)
    cfg = build_dataclass(Config, raw, "")
    if cfg.run.name is None and path is not None:
        cfg.run.name = Path(path).stem
    validate(cfg)
    return cfg


def _upgrade_tensorboard_flag(raw: dict[str, Any]) -> None:
    """`train.tensorboard: true` (configs before `train.loggers`, e.g. old run directories'
    config.yaml) means `train.loggers: [tensorboard]`; `false` is dropped silently."""
    train = raw.get("train")
    if not isinstance(train, dict) or "tensorboard" not in train:
        return
    if train.pop("tensorboard") is True:
        loggers = _to_list(train.get("loggers"), (str,), "train.loggers")
        train["loggers"] = loggers if "tensorboard" in loggers else [*loggers, "tensorboard"]
        print(
            "warning: train.tensorboard is deprecated; use train.loggers=[tensorboard]",
            file=sys.stderr,
        )


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def _suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def build_dataclass(cls: type, raw: Any, where: str) -> Any:
    """Build a config dataclass from a mapping, refusing unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{where}{key}"
        if key not in names:
            valid = [f"{where}{n}" for n in names]
            raise ConfigError(f"unknown config key {full!r}{_suggest(full, valid)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` (from YAML or a key=value override) as the type `hint` of the field `key`."""
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value if value is not None else {}, key + ".")
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin in _CONTAINERS:
        return _CONTAINERS[origin](value, args, key)
    if hint in _SCALARS:
        return _SCALARS[hint](value, key)
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - programming error


def _to_dict(value: Any, args: tuple, key: str) -> dict:
    """Free-form options, validated by the plug-in that reads them."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping, got {value!r}")
    return value


def _to_tuple(value: Any, args: tuple, key: str) -> tuple:
    if not isinstance(value, list | tuple) or len(value) != len(args):
        raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
    return tuple(
        _coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
    )


def _to_list(value: Any, args: tuple, key: str) -> list:
    """A YAML list, or on the command line a comma-separated string (`a,b`, `[a,b]` or empty)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key} must be a list, got {value!r}")
    item = args[0] if args else Any
    return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _to_float(value, key, "an integer") if not isinstance(value, bool) else None
    if number is not None and number.is_integer():
        return int(number)
    raise ConfigError(f"{key} must be an integer, got {value!r}")


def _to_float(value: Any, key: str, expected: str = "a number") -> float:
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    if not math.isfinite(number):  # .nan, .inf, "nan", 1e999: never a meaningful setting
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return number


def _to_str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key} must be a string, got {value!r}")


_CONTAINERS = {dict: _to_dict, tuple: _to_tuple, list: _to_list}
_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


# -- cross-field validation ---------------------------------------------------------------------

_CHOICES = {
    "rst.fallback": ("refuse", "flops"),
    "train.precision": ("auto", "fp32", "bf16"),
    "data.tokenizer": ("bpe", "wordpiece", "unigram", "gpt2"),
    "data.objective": ("causal_lm", "mlm", "span_corruption"),
    "train.parallel": ("auto", "ddp", "fsdp"),
    "train.eval_split": ("test", "tune", "val"),
    "train.on_nonfinite": ("halt", "skip"),
    "rst.verify": ("hash", "probe"),
}


def _at_least(low: float) -> tuple[typing.Callable[[float], bool], str]:
    return (lambda v: v >= low), f">= {low:g}"


def _between(low: float, high: float, *, open_low: bool = False, open_high: bool = False):  # noqa: ANN202
    def ok(v: float) -> bool:
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

    return ok, f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"


_POSITIVE = ((lambda v: v > 0), "> 0")
_COUNT = _at_least(1)
_FRACTION = _between(0, 1)
# Numeric settings and the values they may take (an unset, None, value is never checked). The
# model's knobs are checked by the shape (`get_shape`), optimizer and method options by their
# plug-ins.
_NUMBER_RULES: dict[str, tuple[typing.Callable[[float], bool], str]] = {
    "run.seed": (lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
    "data.vocab_size": _COUNT,
    "data.val_fraction": _between(0, 1, open_low=True, open_high=True),
    "data.heldout_min_documents": _COUNT,
    "data.max_bytes": _COUNT,
    "data.mask_prob": _between(0, 1, open_low=True, open_high=True),
    "data.noise_density": _between(0, 1, open_low=True, open_high=True),
    "data.mean_span": _at_least(1),
    "optim.lr": _POSITIVE,
    "optim.eps": _POSITIVE,
    "optim.weight_decay": _at_least(0),
    "optim.grad_clip": _at_least(0),
    "optim.betas[0]": _between(0, 1, open_high=True),
    "optim.betas[1]": _between(0, 1, open_high=True),
    "schedule.warmup": _FRACTION,
    "schedule.final": _at_least(0),
    "schedule.start_factor": _FRACTION,
    "schedule.peak_at": _FRACTION,
    "schedule.decay": _FRACTION,
    "train.batch_size": _COUNT,
    "train.micro_batch_size": _COUNT,
    "train.threads": _COUNT,
    "train.log_every": _COUNT,
    "train.eval_every": _FRACTION,
    "train.eval_batches": _COUNT,
    "train.eval_batch_size": _COUNT,
    "train.eval_seed": (lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
    "train.checkpoint_every": _FRACTION,
    "train.keep_checkpoints": _COUNT,
    "rst.tolerance": _POSITIVE,
}


def _check_numbers(cfg: Config) -> None:
    for key, (ok, expected) in _NUMBER_RULES.items():
        section, name = key.split(".")
        name, _, index = name.partition("[")
        value = getattr(getattr(cfg, section), name)
        if value is not None and index:
            value = value[int(index.rstrip("]"))]
        if value is not None and not ok(value):
            raise ConfigError(f"{key} must be {expected}, got {value!r}")


def validate(cfg: Config) -> None:
    """Checks that need no data or device: fail early, before a run directory exists."""
    from budgetlm.budget.clock import Budget, BudgetError
    from budgetlm.schedules import make_schedule

    try:
        Budget.parse(cfg.budget)
    except BudgetError as e:
        raise ConfigError(f"budget: {e}") from e
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and value not in choices:
            raise ConfigError(
                f"{key} must be one of {choices}, got {value!r}{_suggest(value, choices)}"
            )
    from budgetlm.registry import check_optimizer_name, parse_method_spec

    try:
        check_optimizer_name(cfg.optim.name)
    except ValueError as e:
        raise ConfigError(f"optim.name: {e}") from e

    try:
        parse_method_spec(cfg.method)
    except ValueError as e:
        raise ConfigError(f"method: {e}") from e
    try:
        make_schedule(cfg.schedule.name, cfg.optim.lr, **cfg.schedule.options())
    except ValueError as e:
        raise ConfigError(f"schedule: {e}") from e
    _check_numbers(cfg)
    t = cfg.train
    micro = t.micro_batch_size or t.batch_size
    if t.batch_size % micro:
        raise ConfigError(
            f"train.micro_batch_size ({micro}) must divide train.batch_size ({t.batch_size})"
        )
    _check_trackers(t)
    from budgetlm.models import get_shape

    try:
        get_shape(cfg.model.preset, **model_overrides(cfg.model))
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e


def model_overrides(m: ModelConfig) -> dict[str, Any]:
    """The shape knobs the user set explicitly."""
    return {k: v for k, v in dataclasses.asdict(m).items() if k != "preset" and v is not None}


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _check_trackers(train: TrainConfig) -> None:
    """Names and modes only: no tracker library is imported, so a config loads where a tracker
    is not installed (e.g. to report on a run)."""
    from budgetlm.registry import TRACKERS, WANDB_MODES

    for name in train.loggers:
        if name not in TRACKERS:
            raise ConfigError(
                f"train.loggers: unknown logger {name!r}, choose from {tuple(TRACKERS)}"
                f"{_suggest(name, TRACKERS)}"
            )
    if len(set(train.loggers)) != len(train.loggers):
        raise ConfigError(f"train.loggers: a logger is listed twice in {train.loggers}")
    if train.wandb_mode is not None and train.wandb_mode not in WANDB_MODES:
        raise ConfigError(
            f"train.wandb_mode must be one of {WANDB_MODES}, got {train.wandb_mode!r}"
            f"{_suggest(train.wandb_mode, WANDB_MODES)}"
        )
