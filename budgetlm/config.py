"""Typed run configuration: YAML files plus dotted command-line overrides, strictly validated.

    budgetlm train configs/gpt-tiny.yaml budget=300s optim.lr=1e-3 model.n_layers=6

Unknown keys and wrong types fail before any work starts, naming the key and suggesting the
closest valid one. Every field has a default, so an empty file is a valid (tiny GPT) run.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
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
    name: str | None = None  # default: the config file's stem
    out_dir: str = "runs"
    dir: str | None = None  # explicit run directory (default: out_dir/name-<config hash>)
    seed: int = 1


@dataclass
class ModelConfig:
    """A shape preset (`budgetlm shapes` lists them) plus optional knob overrides."""

    preset: str = "gpt-tiny"
    n_layers: int | None = None
    n_decoder_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    d_kv: int | None = None
    d_ff: int | None = None
    activation: str | None = None
    seq_len: int | None = None
    positions: str | None = None
    tie_embeddings: bool | None = None
    dropout: float | None = None


@dataclass
class DataConfig:
    corpus: str = "fixture"  # fixture | bundled | PATH(.txt/.jsonl/dir) | hf:NAME[:CONFIG]
    path: str | None = None  # an already prepared dataset directory (skips preparing)
    tokenizer: str | None = None  # bpe | wordpiece | unigram | gpt2 (default: by model family)
    vocab_size: int | None = None  # default: the preset's vocabulary size
    val_fraction: float = 0.02
    max_bytes: int | None = None  # read at most this much text (quick runs)
    objective: str | None = None  # causal_lm | mlm | span_corruption (default: by family)
    mask_prob: float = 0.15
    noise_density: float = 0.15
    mean_span: float = 3.0
    text_field: str = "text"
    hf_split: str = "train"
    data_files: str | None = None


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adamw_rms | lion | sophia | muon
    lr: float = 1e-3
    betas: tuple[float, float] | None = None  # default: the optimizer's own (AdamW 0.9, 0.98)
    eps: float | None = None  # default: the optimizer's own (AdamW 1e-8)
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # 0 disables clipping
    options: dict[str, Any] = field(default_factory=dict)  # optimizer-specific settings


@dataclass
class ScheduleConfig:
    """A learning-rate schedule of budget progress; unset options keep the schedule's defaults."""

    name: str = "warmup_linear"  # one_cycle | warmup_cosine | warmup_linear | wsd | constant
    warmup: float | None = None  # fraction of the budget
    final: float | None = None  # absolute learning rate at p = 1
    start_factor: float | None = None  # warmup_cosine: warm-up starts at this fraction of peak
    peak_at: float | None = None  # one_cycle: progress of the peak
    decay: float | None = None  # wsd: fraction of the budget spent decaying

    def options(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name" and v is not None}


@dataclass
class TrainConfig:
    batch_size: int = 32
    micro_batch_size: int | None = None  # gradient accumulation when smaller than batch_size
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    threads: int | None = None  # CPU threads for torch
    parallel: str = "auto"  # with torchrun: auto (= ddp) | ddp | fsdp (docs/distributed.md)
    log_every: int = 10  # steps
    eval_every: float = 0.25  # fraction of the budget; 0 = only at the end
    eval_batches: int = 8
    eval_batch_size: int | None = None
    eval_seed: int = 1234  # fixed masks for held-out loss, the same for every run
    checkpoint_every: float = 0.25  # fraction of the budget; 0 = only at the end
    keep_checkpoints: int = 2
    progress_bar: bool = True
    tensorboard: bool = False


@dataclass
class RSTConfig:
    """Reference-system time: the cost table that prices every pass (docs/rst.md)."""

    table: str | None = None  # a table file; default: the shipped CPU reference table
    fallback: str = "refuse"  # refuse | flops: price an uncovered shape from FLOPs (warned)
    tolerance: float | None = None  # check the table at this tolerance (default: its own)
    allow_table_change: bool = False  # resume under a different table than the checkpoint's


@dataclass
class Config:
    budget: str = "200steps"
    method: str = "none"  # efficient-training methods, combined with '+' (docs/methods.md)
    methods: dict[str, Any] = field(default_factory=dict)  # methods.<name>.<option>
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rst: RSTConfig = field(default_factory=RSTConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def hash(self, exclude: tuple[str, ...] = ("run",)) -> str:
        """Content hash of the settings that change what is trained (run naming excluded)."""
        d = {k: v for k, v in self.to_dict().items() if k not in exclude}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# Settings that may differ between an interrupted run and its resumption. rst.table may move:
# the checkpoint stores the table's content hash, which is checked on resume.
RESUME_SAFE = {
    "rst.allow_table_change",
    "rst.table",
    "rst.tolerance",
    "train.progress_bar",
    "train.tensorboard",
    "train.log_every",
    "train.threads",
    "train.keep_checkpoints",
    "train.compile",
    "train.device",
    "train.parallel",
}


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
    cfg = build_dataclass(Config, raw, "")
    if cfg.run.name is None and path is not None:
        cfg.run.name = Path(path).stem
    validate(cfg)
    return cfg


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
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value if value is not None else {}, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:  # free-form options, validated by the plug-in that reads them
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return value
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(
            _coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=False))
        )
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - programming error


# -- cross-field validation ---------------------------------------------------------------------

_CHOICES = {
    "rst.fallback": ("refuse", "flops"),
    "train.precision": ("auto", "fp32", "bf16"),
    "data.tokenizer": ("bpe", "wordpiece", "unigram", "gpt2"),
    "data.objective": ("causal_lm", "mlm", "span_corruption"),
    "train.parallel": ("auto", "ddp", "fsdp"),
}


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
    from budgetlm.optim.factory import OPTIMIZERS

    if cfg.optim.name not in OPTIMIZERS:
        raise ConfigError(
            f"optim.name must be one of {tuple(OPTIMIZERS)}, got {cfg.optim.name!r}"
            f"{_suggest(cfg.optim.name, OPTIMIZERS)}"
        )
    from budgetlm.registry import parse_method_spec

    try:
        parse_method_spec(cfg.method)
    except ValueError as e:
        raise ConfigError(f"method: {e}") from e
    try:
        make_schedule(cfg.schedule.name, cfg.optim.lr, **cfg.schedule.options())
    except ValueError as e:
        raise ConfigError(f"schedule: {e}") from e
    t = cfg.train
    if t.batch_size < 1:
        raise ConfigError("train.batch_size must be >= 1")
    micro = t.micro_batch_size or t.batch_size
    if micro < 1 or t.batch_size % micro:
        raise ConfigError(
            f"train.micro_batch_size ({micro}) must divide train.batch_size ({t.batch_size})"
        )
    if not 0 <= t.eval_every <= 1 or not 0 <= t.checkpoint_every <= 1:
        raise ConfigError("train.eval_every and train.checkpoint_every are fractions in [0, 1]")
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError("data.val_fraction must be in (0, 1)")
    if cfg.optim.lr <= 0:
        raise ConfigError("optim.lr must be positive")
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
