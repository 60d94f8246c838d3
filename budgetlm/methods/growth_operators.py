"""Growth operators on the whole training state (Shen et al. 2022, "Staged training").

`method=staged` (growth.py) applies them inside one budgeted run; `budgetlm grow`
(train/grow_checkpoint.py) to a checkpoint.

Each operator is a pure function: it takes a model and its optimizer and returns a `Grown` (the
new model, its optimizer state keyed by parameter name, the new ModelShape); the inputs are not
modified. `build_grown_optimizer` turns that state into a working optimizer.

Width x k (k = 2 in the paper): d_model, heads and d_ff grow k-fold, the head dimension is kept.
The grown model carries k identical copies of the hidden state, x' = [x, ..., x]:
- every Linear inside the blocks becomes block-diagonal diag(W, ..., W), so copy i of the
  input only feeds copy i of the output; q/k/v/o this way give k·H heads, heads H·i..H·i+H-1
  being copies of heads 0..H-1;
- biases, embeddings (token, position, T5's relative-bias table: one column per head) and norm
  gains/biases are tiled k times along their last dimension;
- LayerNorm over [x, ..., x] sees the same mean and the same (population) variance as over x,
  because every value appears k times; RMSNorm likewise sees the same mean square. So duplicated
  norms give duplicated outputs, with the same eps: exact, no correction needed;
- the final norm that feeds the vocabulary head is tiled and scaled by f = 1/k, so the head's
  sum over k copies, W'·h' = sum_i W·(h/k) = W·h, gives the old logits (tied or untied head).
  T5 with a tied head also multiplies by d_model^-0.5, which shrinks by sqrt(k): f = 1/sqrt(k).
The loss is exactly preserved (up to float rounding) for GPT, BERT and T5 with learned, rotary or
relative positions. Sinusoidal positions (the BERT presets) are a fixed table computed at the
new width, not a tiling of the old one, so they are NOT preserved: a warning says so.

Optimizer state after width growth. By symmetry the gradient with respect to each copy of a
parameter scaled by s is g / (k·s), g being the old gradient (the k copies share it). So a state
tensor of the same shape as its parameter is tiled like the parameter and divided by (k·s) if it
is a first moment (Adam's m: "halved" for k = 2), by (k·s)^2 if it is a second moment (Adam's v:
"quartered"). For the final norm (s = 1/k) both are unchanged. Off-diagonal blocks of the
block-diagonal weights get zero moments, as in the paper (their gradient at the growth point is
in fact g/k too: a fresh start for new connections is a choice, not a consequence). Scalar state
such as Adam's `step` is kept, so bias correction continues where it was. Which entries are
second moments is decided by name (see `moment_order`).

Caveat: duplication is a fixed point of training. Without dropout, the k copies receive equal
gradients forever and the model stays functionally at the old width (measured: halves still
equal to 6e-6 relative after 80 more steps). `noise` (relative std of Gaussian noise in the
off-diagonal blocks) breaks the symmetry at a loss change of about that order: 0 in the pure
operator (exact), 0.01 by default in `method=staged`. Dropout > 0 breaks it too.

Depth x k: blocks interleaved (block i -> k·i, ..., k·i + k - 1) or appended (the whole stack
repeated, block i -> i, i + L, ...), in two variants:
- `copy`: new blocks are copies, with copies of their source's optimizer state. A residual
  network applies each copy again, so the loss is NOT preserved (the papers' operator);
- `identity`: new blocks are copies whose residual output projections (`o` of every attention,
  `w_out` of the MLP) are zero, so each new block is the identity and the loss is preserved
  exactly; their optimizer state starts empty (their weights no longer match their source's).
Old blocks keep their own state in both variants. T5 grows both stacks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from budgetlm.methods.optim_state import clone_state
from budgetlm.models import ModelShape, build_model

if TYPE_CHECKING:
    pass

OPERATORS = ("width", "depth")
DEPTH_MODES = ("interleave", "append")
DEPTH_VARIANTS = ("identity", "copy")
# Compute-equivalence factors of the paper (Shen et al. 2022, Table 2): S_grow = S_before / c.
DEFAULT_C = {"width": 1.81, "depth": 1.43}
# Names of residual-branch output projections (budgetlm/models/blocks.py convention).
_RESIDUAL_OUT = ("o", "w_out")
_SECOND_ORDER = re.compile(r"sq|hess|^v$|^nu$|square|^sum$")


@dataclass
class Grown:
    """A grown model with its optimizer state (parameter name -> that parameter's state)."""

    model: nn.Module
    optimizer_state: dict[str, dict[str, Any]]
    shape: ModelShape


# -- optimizer state by parameter name ----------------------------------------------------------


def moment_order(key: str) -> int:
    """2 for state entries that scale like the gradient squared, 1 for those that scale like it.

    By name: Adam's `exp_avg_sq`/`max_exp_avg_sq`, Sophia's `hessian`, RMSprop's `square_avg`,
    Adagrad's `sum` and anything called `v`/`nu` are second moments; every other tensor of the
    parameter's shape (`exp_avg`, `momentum_buffer`, Lion's `exp_avg`) is a first moment.
    """
    return 2 if _SECOND_ORDER.search(key) else 1


def named_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, dict[str, Any]]:
    """The optimizer's per-parameter state, keyed by the parameter's name in `model`."""
    return {
        name: optimizer.state[p]
        for name, p in model.named_parameters()
        if p in optimizer.state and optimizer.state[p]
    }


def load_named_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, named: Mapping[str, Mapping[str, Any]]
) -> None:
    """Install per-parameter state (from `named_optimizer_state` or a growth operator)."""
    params = dict(model.named_parameters())
    unknown = set(named) - set(params)
    if unknown:
        raise ValueError(f"optimizer state for unknown parameters {sorted(unknown)[:5]}")
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, state in named.items():
        p = params[name]
        if id(p) not in owned:
            raise ValueError(f"parameter {name} is not handled by this optimizer")
        optimizer.state[p] = {
            k: v.to(p.device) if torch.is_tensor(v) and v.ndim > 0 else v for k, v in state.items()
        }


def build_grown_optimizer(
    grown: Grown, build: Callable[[nn.Module], torch.optim.Optimizer]
) -> torch.optim.Optimizer:
    """A fresh optimizer for the grown model (`build(model)`, e.g. the run's factory) holding
    the transformed state."""
    optimizer = build(grown.model)
    load_named_optimizer_state(grown.model, optimizer, grown.optimizer_state)
    return optimizer


def _transform_state(
    state: Mapping[str, Any],
    param: torch.Tensor,
    tensor_fn: Callable[[torch.Tensor], torch.Tensor],
    gradient_scale: float,
    name: str,
) -> dict[str, Any]:
    """Apply the weight transform to every tensor shaped like `param`, scaled by
    gradient_scale^order; keep scalars (step counters); refuse other shapes."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == param.shape and value.ndim > 0:
            out[key] = tensor_fn(value) * gradient_scale ** moment_order(key)
        elif torch.is_tensor(value) and value.numel() == 1:
            out[key] = value.clone()
        elif torch.is_tensor(value):
            raise ValueError(
                f"optimizer state {key!r} of {name} has shape {tuple(value.shape)}, not the "
                f"parameter's {tuple(param.shape)}: growth cannot transform factored state"
            )
        else:
            out[key] = copy.deepcopy(value)
    return out


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _rebuild(
    shape: ModelShape, state_dict: Mapping[str, torch.Tensor], like: nn.Module
) -> nn.Module:
    """A model of `shape` holding `state_dict`, on `like`'s device, every tensor in the dtype
    the grown state has (the source model's: a float64 or bf16 model stays one, so its
    transformed optimizer state still matches it). Built on the meta device: initialising it
    would draw from the global torch RNG and shift every later random number of the run."""
    with torch.device("meta"):
        model = build_model(shape)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, t in tensors:
        source = state_dict.get(name)
        if source is not None and source.dtype != t.dtype:
            t.data = t.data.to(source.dtype)
    model = model.to_empty(device=_model_device(like))
    model.load_state_dict(state_dict)
    return model.train(like.training)


# -- width --------------------------------------------------------------------------------------


def widen_shape(shape: ModelShape, factor: int = 2) -> ModelShape:
    """d_model, heads and d_ff times `factor`; head dimension, depth and vocabulary kept."""
    return dataclasses.replace(
        shape,
        d_model=shape.d_model * factor,
        n_heads=shape.n_heads * factor,
        d_ff=shape.d_ff * factor,
    )


def _head_norm(model: nn.Module, factor: int) -> tuple[str, float]:
    """Name prefix of the norm that feeds the vocabulary head, and its scale after growth."""
    shape = model.shape
    if shape.family == "t5":
        tied_scale = 1.0 / math.sqrt(factor) if shape.tie_embeddings else 1.0 / factor
        return "decoder_norm.", tied_scale
    return "norm.", 1.0 / factor


def _tile(t: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat along the last dimension: embeddings, heads of a bias table, biases, norms."""
    return t.repeat(*([1] * (t.ndim - 1)), factor)


def check_factor(factor: int) -> None:
    if not isinstance(factor, int) or factor < 2:
        raise ValueError(f"growth factor must be an integer >= 2, got {factor!r}")


@torch.no_grad()
def grow_width(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    factor: int = 2,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> Grown:
    """Width x factor (d_model, heads, d_ff) preserving the function; see the module doc."""
    check_factor(factor)
    shape = model.shape
    if shape.positions == "sinusoidal":
        warnings.warn(
            "width growth of a model with sinusoidal positions does not preserve its loss: the "
            "position table is recomputed at the new width (use learned or rotary positions)",
            stacklevel=2,
        )
    block_diagonal = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name != "lm_head"
    }
    head_prefix, head_scale = _head_norm(model, factor)

    def scale(name: str) -> float:
        return head_scale if name.startswith(head_prefix) else 1.0

    def widen(name: str, t: torch.Tensor) -> torch.Tensor:
        if name in block_diagonal:
            return torch.block_diag(*[t] * factor)
        return _tile(t, factor)

    new_state = {}
    for name, t in model.state_dict().items():
        w = widen(name, t) * scale(name)
        if noise > 0 and name in block_diagonal:
            off_diagonal = 1.0 - torch.block_diag(*[torch.ones_like(t)] * factor)
            z = torch.randn(w.shape, generator=generator, dtype=w.dtype, device="cpu").to(w.device)
            w += noise * t.float().std().item() * z * off_diagonal
        new_state[name] = w
    new_model = _rebuild(widen_shape(shape, factor), new_state, model)

    moments: dict[str, dict[str, Any]] = {}
    if optimizer is not None:
        params = dict(model.named_parameters())
        for name, state in named_optimizer_state(model, optimizer).items():
            moments[name] = _transform_state(
                state,
                params[name],
                lambda t, name=name: widen(name, t),
                1.0 / (factor * scale(name)),
                name,
            )
    return Grown(new_model, moments, new_model.shape)


# -- depth --------------------------------------------------------------------------------------


def deepen_shape(shape: ModelShape, factor: int = 2) -> ModelShape:
    """Every stack `factor` times deeper (T5: encoder and decoder)."""
    changes = {"n_layers": shape.n_layers * factor}
    if shape.family == "t5":
        changes["n_decoder_layers"] = shape.n_decoder_layers * factor
    return dataclasses.replace(shape, **changes)


def depth_sources(depth: int, factor: int = 2, mode: str = "interleave") -> list[tuple[int, bool]]:
    """For each block of the grown stack: (index of its source block, whether it is new)."""
    if mode == "interleave":
        return [(j // factor, j % factor != 0) for j in range(depth * factor)]
    if mode == "append":
        return [(j % depth, j >= depth) for j in range(depth * factor)]
    raise ValueError(f"depth growth mode must be one of {DEPTH_MODES}, got {mode!r}")


def _is_residual_output(rest: str) -> bool:
    """'attn.o.weight', 'cross_attn.o.bias', 'mlp.w_out.weight' -> True."""
    parts = rest.split(".")
    return len(parts) >= 2 and parts[-2] in _RESIDUAL_OUT


@torch.no_grad()
def grow_depth(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    factor: int = 2,
    mode: str = "interleave",
    variant: str = "identity",
) -> Grown:
    """Depth x factor, interleaved or appended; `identity` preserves the loss, `copy` does not."""
    check_factor(factor)
    if variant not in DEPTH_VARIANTS:
        raise ValueError(f"depth growth variant must be one of {DEPTH_VARIANTS}, got {variant!r}")
    stacks = {name: len(blocks) for name, blocks in model.layer_stacks().items()}
    pattern = re.compile(rf"^({'|'.join(stacks)})\.(\d+)\.(.+)$")
    sources = {s: depth_sources(n, factor, mode) for s, n in stacks.items()}

    def targets(name: str) -> list[tuple[str, bool, str]]:
        """(new name, is a new block, name inside the block) for each place `name` lands."""
        m = pattern.match(name)
        if m is None:
            return [(name, False, "")]
        stack, index, rest = m.group(1), int(m.group(2)), m.group(3)
        return [
            (f"{stack}.{j}.{rest}", new, rest)
            for j, (src, new) in enumerate(sources[stack])
            if src == index
        ]

    new_state = {}
    for name, t in model.state_dict().items():
        for new_name, new, rest in targets(name):
            zero = new and variant == "identity" and _is_residual_output(rest)
            new_state[new_name] = torch.zeros_like(t) if zero else t.clone()
    new_model = _rebuild(deepen_shape(model.shape, factor), new_state, model)

    moments: dict[str, dict[str, Any]] = {}
    if optimizer is not None:
        for name, state in named_optimizer_state(model, optimizer).items():
            for new_name, new, _ in targets(name):
                if not new or variant == "copy":
                    moments[new_name] = clone_state(state)
    return Grown(new_model, moments, new_model.shape)


def grown_shape(shape: ModelShape, op: str, factor: int = 2) -> ModelShape:
    """The shape `grow(model, ..., op, factor=factor)` returns for a model of `shape`, without
    building anything (depth mode and variant do not change it)."""
    check_factor(factor)
    if op == "width":
        return widen_shape(shape, factor)
    if op == "depth":
        return deepen_shape(shape, factor)
    raise ValueError(f"unknown growth operator {op!r}; choose one of {OPERATORS}")


def grow(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    op: str,
    *,
    factor: int = 2,
    mode: str = "interleave",
    variant: str = "identity",
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> Grown:
    """Dispatch to `grow_width` or `grow_depth` by name."""
    if op == "width":
        return grow_width(model, optimizer, factor=factor, noise=noise, generator=generator)
    if op == "depth":
        return grow_depth(model, optimizer, factor=factor, mode=mode, variant=variant)
    raise ValueError(f"unknown growth operator {op!r}; choose one of {OPERATORS}")


__all__ = [
    "DEFAULT_C",
    "Grown",
    "build_grown_optimizer",
    "check_factor",
    "deepen_shape",
    "depth_sources",
    "grow",
    "grow_depth",
    "grow_width",
    "grown_shape",
    "load_named_optimizer_state",
    "moment_order",
    "named_optimizer_state",
    "widen_shape",
]
