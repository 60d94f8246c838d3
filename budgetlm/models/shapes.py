"""Model shapes: the ModelShape dataclass, named presets, and analytic parameter / FLOP counts.

Counts here are pure arithmetic on the shape (no model is built), so the budget clock and the
`budgetlm shapes` table cost nothing. Tests check them against real models.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass

FAMILIES = ("gpt", "bert", "t5")
ACTIVATIONS = ("gelu", "relu", "gated-gelu", "swiglu")
GATED_ACTIVATIONS = ("gated-gelu", "swiglu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS_BY_FAMILY = {
    "gpt": ("learned", "rotary", "sinusoidal"),
    "bert": ("learned", "rotary", "sinusoidal"),
    "t5": ("relative",),
}
# T5 relative position bias (same defaults as the original T5).
REL_NUM_BUCKETS = 32
REL_MAX_DISTANCE = 128


@dataclass(frozen=True)
class ModelShape:
    family: str  # "gpt" | "bert" | "t5"
    n_layers: int  # gpt/bert layers; T5 ENCODER layers
    d_model: int
    n_heads: int
    d_kv: int  # per-head dim (n_heads * d_kv need not equal d_model, T5 style)
    d_ff: int
    vocab_size: int
    seq_len: int  # gpt/bert sequence length; T5 encoder input length
    activation: str = "gelu"  # "gelu" | "relu" | "gated-gelu" | "swiglu"
    n_decoder_layers: int = 0  # T5 only
    target_len: int = 0  # T5 decoder (target) length
    positions: str = "learned"  # "learned" | "rotary" | "sinusoidal" | "relative"
    tie_embeddings: bool = True
    bias: bool = True
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    dropout: float = 0.0
    mlm_fraction: float = 0.15  # BERT: fraction of positions that get logits (for FLOP counting)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"ModelShape.family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("n_layers", "d_model", "n_heads", "d_kv", "d_ff", "vocab_size", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelShape.{name} must be a positive int, got {value!r}")
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("norm", self.norm, NORMS)
        allowed = POSITIONS_BY_FAMILY[self.family]
        if self.positions not in allowed:
            raise ValueError(
                f"ModelShape.positions={self.positions!r} is not valid for family "
                f"{self.family!r}; choose one of {allowed}"
            )
        if self.family == "t5":
            if self.n_decoder_layers <= 0 or self.target_len <= 0:
                raise ValueError(
                    "a t5 shape needs n_decoder_layers > 0 and target_len > 0, got "
                    f"n_decoder_layers={self.n_decoder_layers}, target_len={self.target_len}"
                )
        elif self.n_decoder_layers != 0 or self.target_len != 0:
            # Refuse rather than silently ignore a knob that does nothing for this family.
            raise ValueError(
                f"n_decoder_layers and target_len are T5-only; family {self.family!r} got "
                f"n_decoder_layers={self.n_decoder_layers}, target_len={self.target_len}"
            )
        if self.positions == "rotary" and self.d_kv % 2:
            raise ValueError(f"rotary positions need an even d_kv, got {self.d_kv}")
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelShape.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.mlm_fraction <= 1.0:
            raise ValueError(f"ModelShape.mlm_fraction must be in (0, 1], got {self.mlm_fraction}")

    @property
    def gated(self) -> bool:
        return self.activation in GATED_ACTIVATIONS

    @property
    def stack_names(self) -> tuple[str, ...]:
        """Names of the layer stacks, as returned by `model.layer_stacks()`."""
        return {"gpt": ("decoder",), "bert": ("encoder",), "t5": ("encoder", "decoder")}[
            self.family
        ]

    @property
    def stack_depths(self) -> dict[str, int]:
        if self.family == "t5":
            return {"encoder": self.n_layers, "decoder": self.n_decoder_layers}
        return {self.stack_names[0]: self.n_layers}


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"ModelShape.{field} must be one of {choices}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Presets

_TINY = dict(vocab_size=4096, seq_len=128, d_model=128, n_heads=4, d_kv=32)
_T5_COMMON = dict(
    family="t5",
    positions="relative",
    norm="rmsnorm",
    bias=False,
    vocab_size=32128,
    seq_len=512,
    target_len=114,
)

# Scale Efficiently (Tay et al. 2022): layers (enc = dec), d_ff, d_model, d_kv, heads, and the
# parameter count the paper's table reports. The shapes are those of Google's released
# checkpoints, google/t5-efficient-{size} (their config.json files): T5 v1.0 style (ReLU FFN,
# tied embeddings, vocab 32128). The paper's table prints d_kv 32 for Tiny, Mini and Small, but
# its own parameter counts (16/31/60M) and the released configs have d_kv 64 (with 32 the models
# are 14.0/26.5/51.1M); d_kv 32 is the separately released "-kv32" one-knob variant
# (t5-v1_0-se-small-kv32 here).
_SE_SIZES = {
    "tiny": (4, 1024, 256, 64, 4, "16M"),
    "mini": (4, 1536, 384, 64, 8, "31M"),
    "small": (6, 2048, 512, 64, 8, "60M"),
    "base": (12, 3072, 768, 64, 12, "220M"),
    "large": (24, 4096, 1024, 64, 16, "738M"),
    "xl": (24, 16384, 1024, 128, 32, "3B"),
    "xxl": (24, 65536, 1024, 128, 128, "11B"),
}
# Every T5 preset says in its name which T5 it is: v1.0 (ReLU FFN, tied embeddings; the Scale
# Efficiently checkpoints) or v1.1 (gated-GELU FFN, untied head; nanoT5).
SE_PREFIX = "t5-v1_0-se-"

PRESETS: dict[str, ModelShape] = {
    "gpt-tiny": ModelShape(family="gpt", n_layers=4, d_ff=512, activation="gelu", **_TINY),
    "bert-tiny": ModelShape(
        family="bert",
        n_layers=4,
        d_ff=512,
        activation="gated-gelu",
        bias=False,
        positions="sinusoidal",
        **_TINY,
    ),
    "t5-v1_1-tiny": ModelShape(
        family="t5",
        n_layers=2,
        n_decoder_layers=2,
        d_ff=384,
        activation="gated-gelu",
        norm="rmsnorm",
        positions="relative",
        bias=False,
        tie_embeddings=False,
        target_len=32,
        **_TINY,
    ),
    "gpt2-small": ModelShape(
        family="gpt",
        n_layers=12,
        d_model=768,
        n_heads=12,
        d_kv=64,
        d_ff=3072,
        vocab_size=50257,
        seq_len=1024,
    ),  # fmt: skip
    "gpt2-medium": ModelShape(
        family="gpt",
        n_layers=24,
        d_model=1024,
        n_heads=16,
        d_kv=64,
        d_ff=4096,
        vocab_size=50257,
        seq_len=1024,
    ),  # fmt: skip
    "bert-cramming": ModelShape(
        family="bert",
        n_layers=16,
        d_model=768,
        n_heads=12,
        d_kv=64,
        # Cramming's config says intermediate_size 3072, but its GLU splits that projection in two
        # halves, so the gated hidden width is 1536 (our d_ff counts one half). This gives its
        # ~120M parameters; d_ff=3072 would be a 176M model.
        d_ff=1536,
        activation="gated-gelu",
        bias=False,
        positions="sinusoidal",
        vocab_size=32768,
        seq_len=128,
    ),
    "t5-v1_1-base": ModelShape(
        n_layers=12,
        n_decoder_layers=12,
        d_model=768,
        n_heads=12,
        d_kv=64,
        d_ff=2048,
        activation="gated-gelu",
        tie_embeddings=False,
        **_T5_COMMON,
    ),
}
for _size, (_layers, _ff, _dm, _kv, _heads, _) in _SE_SIZES.items():
    PRESETS[f"{SE_PREFIX}{_size}"] = ModelShape(
        n_layers=_layers,
        n_decoder_layers=_layers,
        d_model=_dm,
        n_heads=_heads,
        d_kv=_kv,
        d_ff=_ff,
        activation="relu",
        tie_embeddings=True,
        **_T5_COMMON,
    )

# Names the presets had before the T5 version was part of them; still accepted (not listed).
PRESET_ALIASES: dict[str, str] = {
    "t5-tiny": "t5-v1_1-tiny",
    **{f"t5-se-{size}": f"{SE_PREFIX}{size}" for size in _SE_SIZES},
}

# Our count_params for each size (a test keeps these in sync; they equal the parameter counts of
# transformers' T5ForConditionalGeneration built from the released configs).
_SE_OURS = {
    "tiny": "15.6M",
    "mini": "31.2M",
    "small": "60.5M",
    "base": "222.9M",
    "large": "737.7M",
    "xl": "2851.6M",
    "xxl": "11307.3M",
}
PRESET_DOCS: dict[str, str] = {
    "gpt-tiny": "~1.3M-param GPT for CPU tests and demos: pre-LN, GELU, learned positions, tied.",
    "bert-tiny": "~1.6M-param BERT for CPU tests: cramming-style (gated-GELU, no biases, "
    "sinusoidal positions, tied).",
    "t5-v1_1-tiny": "~2M-param T5 v1.1-style model for CPU tests (formerly t5-tiny, still "
    "accepted): gated-GELU, RMSNorm, relative position bias, no biases, untied head (half its "
    "params are the two embedding tables).",
    "gpt2-small": "GPT-2 small (124M): 12 layers, d 768, learned positions, tied, biases.",
    "gpt2-medium": "GPT-2 medium (355M): 24 layers, d 1024, 16 heads.",
    "bert-cramming": "Cramming BERT (Geiping & Goldstein 2022): 16 layers, d 768, gated-GELU FFN "
    "(cramming's intermediate_size 3072 = two GLU halves of 1536), no biases, pre-LN, "
    "sinusoidal positions, tied, vocab 32768, seq 128; ~120M params.",
    "t5-v1_1-base": "T5 v1.1 base as in nanoT5 (gated-GELU, unlike the T5 v1.0 Scale Efficiently "
    "presets t5-v1_0-se-*): 12+12 layers, d 768, gated-GELU d_ff 2048, "
    "RMSNorm, relative bias, no biases, UNTIED head, 512 -> 114; ~248M params.",
}
for _size, (*_, _paper) in _SE_SIZES.items():
    PRESET_DOCS[f"{SE_PREFIX}{_size}"] = (
        f"Scale Efficiently T5 {_size.capitalize()} (Tay et al. 2022), T5 v1.0: ReLU FFN and "
        "tied embeddings, as google/t5-efficient-" + _size + "'s released config - unlike "
        "t5-v1_1-base, which is T5 v1.1 (gated-GELU, untied). RMSNorm, relative bias, no biases, "
        f"512 -> 114 (formerly t5-se-{_size}, still accepted). "
        f"Params: paper {_paper}, ours {_SE_OURS[_size]} = every parameter of the built model "
        "(the tied token embedding once, both relative-bias tables, all norms), the same as "
        "transformers counts for the released config. "
        "Knob suffixes chain: -nl16 (both depths), -el8, -dl8, -dm1024, -ff4096, -kv32, -nh16."
    )

# One-knob variants, e.g. "t5-v1_0-se-small-nl16" (the paper's Small-DeepNarrow) or
# "t5-v1_0-se-small-kv32" (released as t5-efficient-small-kv32). Any preset accepts them.
_KNOBS = {
    "nl": ("n_layers", "n_decoder_layers"),  # both depths (just n_layers for gpt/bert)
    "el": ("n_layers",),
    "dl": ("n_decoder_layers",),
    "dm": ("d_model",),
    "ff": ("d_ff",),
    "kv": ("d_kv",),
    "nh": ("n_heads",),
}
_KNOB_RE = re.compile(r"-(nl|el|dl|dm|ff|kv|nh)(\d+)")


def list_presets() -> list[str]:
    """Base preset names (knob variants such as `t5-v1_0-se-small-nl16` and the old names in
    PRESET_ALIASES are not listed)."""
    return list(PRESETS)


def get_shape(name: str, **overrides: object) -> ModelShape:
    """Look up a preset (with optional knob suffixes) and apply field overrides."""
    shape = _parse_name(name)
    fields = [f.name for f in dataclasses.fields(ModelShape)]
    for key in overrides:
        if key not in fields:
            raise ValueError(f"unknown ModelShape field {key!r}{_suggest(key, fields)}")
    return dataclasses.replace(shape, **overrides) if overrides else shape


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.5)
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    return f"; known: {', '.join(options)}"


def _parse_name(name: str) -> ModelShape:
    if name in PRESETS:
        return PRESETS[name]
    if name in PRESET_ALIASES:
        return PRESETS[PRESET_ALIASES[name]]
    # Longest base name that prefixes `name`, followed only by knob suffixes.
    known = [*PRESETS, *PRESET_ALIASES]
    bases = sorted((b for b in known if name.startswith(b + "-")), key=len, reverse=True)
    for base in bases:
        rest = name[len(base) :]
        knobs = _KNOB_RE.findall(rest)
        if "".join(f"-{k}{v}" for k, v in knobs) != rest:
            continue
        return _apply_knobs(name, PRESETS[PRESET_ALIASES.get(base, base)], knobs)
    examples = [*list_presets(), *PRESET_ALIASES, f"{SE_PREFIX}small-nl16"]
    raise ValueError(f"unknown model preset {name!r}{_suggest(name, examples)}")


def _apply_knobs(name: str, shape: ModelShape, knobs: list[tuple[str, str]]) -> ModelShape:
    changes: dict[str, int] = {}
    for knob, value in knobs:
        if knob in ("el", "dl") and shape.family != "t5":
            raise ValueError(f"{name!r}: -{knob} only applies to t5 presets; use -nl")
        fields = _KNOBS[knob] if shape.family == "t5" else _KNOBS[knob][:1]
        for field in fields:
            if field in changes:
                raise ValueError(f"{name!r}: {field} is set by more than one suffix")
            changes[field] = int(value)
    return dataclasses.replace(shape, **changes)


# ---------------------------------------------------------------------------------------------
# Parameter counts (must match the built modules exactly; tests check every preset)


def _norm_params(s: ModelShape) -> int:
    return s.d_model * (2 if s.norm == "layernorm" and s.bias else 1)


def _attn_params(s: ModelShape) -> int:
    inner = s.n_heads * s.d_kv
    biases = 3 * inner + s.d_model if s.bias else 0
    return 4 * s.d_model * inner + biases


def _mlp_params(s: ModelShape) -> int:
    n_in = 2 if s.gated else 1  # gated variants have a value and a gate projection
    biases = n_in * s.d_ff + s.d_model if s.bias else 0
    return (n_in + 1) * s.d_model * s.d_ff + biases


def _block_params(s: ModelShape, cross: bool = False) -> int:
    n = _attn_params(s) + _mlp_params(s) + 2 * _norm_params(s)
    if cross:
        n += _attn_params(s) + _norm_params(s)
    return n


def count_params(shape: ModelShape, embeddings: bool = True) -> int:
    """Number of parameters of `build_model(shape)`.

    embeddings=False leaves out the token embedding, learned position embeddings, T5's relative
    position-bias tables (they are position embeddings too, if tiny) and an untied output head:
    the "non-embedding" count of Kaplan et al.
    """
    s = shape
    if s.family == "t5":
        body = s.n_layers * _block_params(s) + s.n_decoder_layers * _block_params(s, cross=True)
        body += 2 * _norm_params(s)  # encoder and decoder final norms
        emb = s.vocab_size * s.d_model + 2 * REL_NUM_BUCKETS * s.n_heads
    else:
        body = s.n_layers * _block_params(s) + _norm_params(s)  # final norm
        if s.family == "bert":
            body += _norm_params(s)  # norm on the embeddings
        emb = s.vocab_size * s.d_model
        if s.positions == "learned":
            emb += s.seq_len * s.d_model
    if not s.tie_embeddings:
        emb += s.vocab_size * s.d_model
    return body + emb if embeddings else body


# ---------------------------------------------------------------------------------------------
# FLOP counts: matmuls only, 2 FLOPs per multiply-add. Attention counts the full Tq x Tk score
# matrix even when causal (as in the usual 6N + 12·L·d·T estimate). Norms, softmax, activations
# and embedding lookups are left out: they are a small fraction and not matmuls.


def _attn_flops(s: ModelShape, t_q: int, t_k: int) -> int:
    inner = s.n_heads * s.d_kv
    projections = 2 * s.d_model * inner * (2 * t_q + 2 * t_k)  # q and o on queries, k and v on keys
    core = 2 * 2 * t_q * t_k * inner  # q·k scores and the weighted sum of values
    return projections + core


def _mlp_flops(s: ModelShape, t: int) -> int:
    return 2 * t * s.d_model * s.d_ff * (3 if s.gated else 2)


def _active_counts(shape: ModelShape, active_layers: Mapping[str, int] | None) -> dict[str, int]:
    depths = shape.stack_depths
    counts = dict(depths)
    for name, n in (active_layers or {}).items():
        if name not in depths:
            raise ValueError(
                f"unknown layer stack {name!r} for a {shape.family} model; "
                f"stacks are {list(depths)}"
            )
        if not 0 <= n <= depths[name]:
            raise ValueError(f"active_layers[{name!r}]={n} is outside 0..{depths[name]}")
        counts[name] = int(n)
    return counts


def default_predicted_positions(shape: ModelShape) -> int:
    """Positions per sequence that get vocab logits: all (gpt), masked ones (bert), targets (t5)."""
    if shape.family == "bert":
        return round(shape.mlm_fraction * shape.seq_len)
    if shape.family == "t5":
        return shape.target_len
    return shape.seq_len


def forward_flops(
    shape: ModelShape,
    batch_size: int = 1,
    active_layers: Mapping[str, int] | None = None,
    predicted_positions: int | None = None,
) -> float:
    """Matmul FLOPs of one forward pass over `batch_size` full-length sequences.

    `active_layers` maps a stack name to its number of active blocks (missing stack = all);
    `predicted_positions` is how many positions per sequence get vocab logits.
    """
    s = shape
    counts = _active_counts(s, active_layers)
    if predicted_positions is None:
        predicted_positions = default_predicted_positions(s)
    if s.family == "t5":
        t_in, t_out = s.seq_len, s.target_len
        enc = _attn_flops(s, t_in, t_in) + _mlp_flops(s, t_in)
        dec = _attn_flops(s, t_out, t_out) + _attn_flops(s, t_out, t_in) + _mlp_flops(s, t_out)
        body = counts["encoder"] * enc + counts["decoder"] * dec
    else:
        t = s.seq_len
        body = counts[s.stack_names[0]] * (_attn_flops(s, t, t) + _mlp_flops(s, t))
    head = 2 * predicted_positions * s.d_model * s.vocab_size
    return float(batch_size * (body + head))


def train_flops(
    shape: ModelShape,
    batch_size: int = 1,
    active_layers: Mapping[str, int] | None = None,
    predicted_positions: int | None = None,
) -> float:
    """Forward + backward FLOPs: 3x forward (the backward computes input and weight grads)."""
    return 3.0 * forward_flops(shape, batch_size, active_layers, predicted_positions)


def flops_per_token(shape: ModelShape, train: bool = True) -> float:
    """FLOPs per input token (T5: per encoder-input token) of one full-length sequence."""
    flops = train_flops(shape) if train else forward_flops(shape)
    return flops / shape.seq_len


# ---------------------------------------------------------------------------------------------
# The table printed by `budgetlm shapes`

_COLUMNS = (
    "preset", "family", "layers", "d_model", "heads", "d_kv", "d_ff", "activation", "seq",
    "params(M)", "non-emb params(M)", "train GFLOPs/token",
)  # fmt: skip


def format_preset_table(names: list[str] | None = None) -> str:
    """A plain-text aligned table of presets (or of the given names, variants allowed)."""
    rows = [list(_COLUMNS)]
    for name in names if names is not None else list_presets():
        s = get_shape(name)
        t5 = s.family == "t5"
        rows.append([
            name,
            s.family,
            f"{s.n_layers}/{s.n_decoder_layers}" if t5 else str(s.n_layers),
            str(s.d_model),
            str(s.n_heads),
            str(s.d_kv),
            str(s.d_ff),
            s.activation,
            f"{s.seq_len}/{s.target_len}" if t5 else str(s.seq_len),
            f"{count_params(s) / 1e6:.1f}",
            f"{count_params(s, embeddings=False) / 1e6:.1f}",
            f"{flops_per_token(s) / 1e9:.3f}",
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    # Text columns left-aligned, numbers right-aligned.
    left = {0, 1, 7}
    lines = []
    for row in rows[:1] + [["-" * w for w in widths]] + rows[1:]:
        cells = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
