import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from budgetlm.models import (
    ModelShape,
    build_model,
    count_params,
    flops_per_token,
    format_preset_table,
    forward_flops,
    get_shape,
    list_presets,
    train_flops,
)
from budgetlm.models.shapes import _SE_OURS, _SE_SIZES, PRESET_ALIASES, PRESET_DOCS

VARIANTS = [
    "t5-v1_0-se-small-nl16",
    "t5-v1_0-se-base-el24-dl6",
    "t5-v1_0-se-tiny-dm512-kv32-nh8",
    "t5-v1_0-se-small-kv32",
    "gpt-tiny-nl2",
]
EMBEDDING_PARAMS = ("tok_emb.", "pos_emb.", "lm_head.", "encoder_bias.", "decoder_bias.")


@pytest.mark.parametrize("name", list_presets() + VARIANTS)
def test_count_params_matches_built_model(name):
    shape = get_shape(name)
    with torch.device("meta"):  # allocation-free, so even t5-v1_0-se-xxl costs nothing
        model = build_model(shape)
    params = dict(model.named_parameters())
    assert count_params(shape) == sum(p.numel() for p in params.values())
    body = sum(p.numel() for n, p in params.items() if not n.startswith(EMBEDDING_PARAMS))
    assert count_params(shape, embeddings=False) == body


def test_known_sizes():
    assert count_params(get_shape("gpt2-small")) == 124_439_808  # GPT-2 small as released
    assert count_params(get_shape("t5-v1_1-base")) == 247_577_856  # HF t5-v1_1-base
    assert 118e6 < count_params(get_shape("bert-cramming")) < 122e6  # cramming: ~120M
    for name in ("gpt-tiny", "bert-tiny", "t5-v1_1-tiny"):
        assert 0.7e6 < count_params(get_shape(name), embeddings=False) < 1.2e6


def test_presets_and_docs():
    names = list_presets()
    for required in ("gpt-tiny", "bert-tiny", "t5-v1_1-tiny", "gpt2-small", "gpt2-medium"):
        assert required in names
    assert all(f"t5-v1_0-se-{s}" in names for s in ("tiny", "mini", "small", "base", "large", "xl"))
    assert not any("-nl" in n for n in names)  # variants are not listed
    assert not set(PRESET_ALIASES) & set(names)  # nor the old names
    assert set(PRESET_DOCS) == set(names)
    assert "relu" in PRESET_DOCS["t5-v1_0-se-base"].lower()
    assert "gated-gelu" in PRESET_DOCS["t5-v1_1-base"].lower()
    assert get_shape("t5-v1_0-se-base").activation == "relu"
    assert get_shape("t5-v1_1-base").activation == "gated-gelu"
    cram = get_shape("bert-cramming")
    assert (cram.n_layers, cram.d_model, cram.bias, cram.positions) == (
        16,
        768,
        False,
        "sinusoidal",
    )
    t5 = get_shape("t5-v1_1-base")
    assert (t5.n_layers, t5.n_decoder_layers, t5.d_ff, t5.d_kv, t5.tie_embeddings) == (
        12, 12, 2048, 64, False,
    )  # fmt: skip
    assert (t5.seq_len, t5.target_len, t5.vocab_size) == (512, 114, 32128)


@pytest.mark.parametrize("name", [n for n in list_presets() if n.startswith("t5")])
def test_every_t5_preset_says_which_t5_in_its_name_and_card(name):
    """v1.0 (ReLU, tied: the Scale Efficiently checkpoints) and v1.1 (gated-GELU, untied) are
    never mixed silently: the version is in the name, the card and the shape."""
    shape, card = get_shape(name), PRESET_DOCS[name]
    version = "v1_0" if name.startswith("t5-v1_0-") else "v1_1"
    assert name.startswith(f"t5-{version}-")
    assert f"T5 {version.replace('_', '.')}" in card
    if version == "v1_0":
        assert (shape.activation, shape.tie_embeddings) == ("relu", True)
        assert "relu" in card.lower()
    else:
        assert (shape.activation, shape.tie_embeddings) == ("gated-gelu", False)
        assert "gated-gelu" in card.lower()


def test_old_names_still_resolve_to_the_same_shapes():
    assert get_shape("t5-tiny") == get_shape("t5-v1_1-tiny")
    assert get_shape("t5-se-small") == get_shape("t5-v1_0-se-small")
    assert get_shape("t5-se-small-nl16") == get_shape("t5-v1_0-se-small-nl16")
    assert get_shape("t5-tiny-nl3", vocab_size=512) == get_shape("t5-v1_1-tiny-nl3", vocab_size=512)
    for old, new in PRESET_ALIASES.items():
        assert get_shape(old) == get_shape(new)


def test_se_docs_quote_our_counts():
    for size in ("tiny", "mini", "small", "base", "large", "xl", "xxl"):
        name = f"t5-v1_0-se-{size}"
        assert f"ours {count_params(get_shape(name)) / 1e6:.1f}M" in PRESET_DOCS[name]
        assert _SE_OURS[size] == f"{count_params(get_shape(name)) / 1e6:.1f}M"


def _paper_params(figure: str) -> tuple[float, float]:
    """A figure of the paper's table ("16M", "3B") as (value, half a unit of its last digit)."""
    unit = {"M": 1e6, "B": 1e9}[figure[-1]]
    return float(figure[:-1]) * unit, 0.5 * unit


@pytest.mark.parametrize("size", list(_SE_SIZES))
def test_se_presets_match_the_papers_parameter_counts(size):
    """Within 3% of the paper's table; XL, printed as "3B" (2.85B as released, like t5-3b), is
    held to the rounding of its one printed digit instead."""
    paper, half_unit = _paper_params(_SE_SIZES[size][-1])
    ours = count_params(get_shape(f"t5-v1_0-se-{size}"))
    tolerance = max(0.03 * paper, half_unit if paper >= 1e9 else 0.0)
    assert abs(ours - paper) <= tolerance, (size, ours, paper)


def test_se_small_and_its_released_variants():
    small = get_shape("t5-v1_0-se-small")
    assert (small.n_layers, small.d_model, small.n_heads, small.d_kv, small.d_ff) == (
        6, 512, 8, 64, 2048,
    )  # fmt: skip
    assert count_params(small) == 60_506_624  # = HF t5-small / t5-efficient-small
    assert count_params(get_shape("t5-v1_0-se-tiny")) == 15_570_688
    assert count_params(get_shape("t5-v1_0-se-mini")) == 31_220_480
    # Small-DeepNarrow (t5-efficient-small-nl16): the paper's 134M.
    deep = get_shape("t5-v1_0-se-small-nl16")
    assert count_params(deep) == 133_932_544
    # t5-efficient-small-kv32: its own name, the 51.1M that d_kv 32 gives.
    kv32 = get_shape("t5-v1_0-se-small-kv32")
    assert kv32 == dataclasses.replace(small, d_kv=32)
    assert f"{count_params(kv32) / 1e6:.1f}" == "51.1"


# The released google/t5-efficient-* config.json values (T5 v1.0: feed_forward_proj "relu",
# tie_word_embeddings left at its default, True), as transformers reads them.
RELEASED = {
    "tiny": dict(num_layers=4, d_ff=1024, d_model=256, d_kv=64, num_heads=4),
    "mini": dict(num_layers=4, d_ff=1536, d_model=384, d_kv=64, num_heads=8),
    "small": dict(num_layers=6, d_ff=2048, d_model=512, d_kv=64, num_heads=8),
    "base": dict(num_layers=12, d_ff=3072, d_model=768, d_kv=64, num_heads=12),
    "small-nl16": dict(num_layers=16, d_ff=2048, d_model=512, d_kv=64, num_heads=8),
    "small-kv32": dict(num_layers=6, d_ff=2048, d_model=512, d_kv=32, num_heads=8),
}


@pytest.mark.parametrize("released", list(RELEASED))
def test_se_presets_count_what_transformers_counts_for_the_released_configs(released):
    transformers = pytest.importorskip("transformers", reason="pip install transformers")
    numbers = RELEASED[released]
    config = transformers.T5Config(
        vocab_size=32128,
        num_decoder_layers=numbers["num_layers"],
        feed_forward_proj="relu",
        tie_word_embeddings=True,
        relative_attention_num_buckets=32,
        **numbers,
    )
    with torch.device("meta"):  # no weights allocated: instant even for 134M
        hf = transformers.T5ForConditionalGeneration(config)
    theirs = sum(p.numel() for p in hf.parameters())  # the tied embedding counted once
    shape = get_shape(f"t5-v1_0-se-{released}")
    assert (shape.n_layers, shape.n_decoder_layers, shape.d_model, shape.d_kv, shape.d_ff) == (
        config.num_layers,
        config.num_decoder_layers,
        config.d_model,
        config.d_kv,
        config.d_ff,
    )
    assert (shape.activation, shape.tie_embeddings) == ("relu", True)
    assert count_params(shape) == theirs


def test_unknown_names_suggest():
    with pytest.raises(ValueError, match="did you mean.*gpt2-small"):
        get_shape("gpt2-smal")
    with pytest.raises(ValueError, match="did you mean"):
        get_shape("t5-se-bse")
    with pytest.raises(ValueError, match="did you mean.*t5-v1_0-se-base"):
        get_shape("t5-v1_0-se-bse")
    with pytest.raises(ValueError, match="unknown model preset"):
        get_shape("t5-v1_0-se-base-xx3")
    with pytest.raises(ValueError, match="'n_layer'.*did you mean.*'n_layers'"):
        get_shape("gpt-tiny", n_layer=3)


def test_overrides_are_validated():
    assert get_shape("gpt-tiny", seq_len=64).seq_len == 64
    with pytest.raises(ValueError, match="positive"):
        get_shape("gpt-tiny", d_model=0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"family": "rnn"}, "family"),
        ({"n_heads": -1}, "n_heads"),
        ({"activation": "tanh"}, "activation"),
        ({"norm": "batchnorm"}, "norm"),
        ({"positions": "relative"}, "not valid for family"),
        ({"n_decoder_layers": 2}, "T5-only"),
        ({"positions": "rotary", "d_kv": 31}, "even"),
        ({"dropout": 1.0}, "dropout"),
        ({"mlm_fraction": 0.0}, "mlm_fraction"),
    ],
)
def test_shape_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(get_shape("gpt-tiny"), **changes)


def test_t5_needs_decoder():
    with pytest.raises(ValueError, match="n_decoder_layers"):
        dataclasses.replace(get_shape("t5-v1_1-tiny"), n_decoder_layers=0)
    with pytest.raises(ValueError, match="target_len"):
        dataclasses.replace(get_shape("t5-v1_1-tiny"), target_len=0)
    with pytest.raises(ValueError, match="not valid"):
        dataclasses.replace(get_shape("t5-v1_1-tiny"), positions="learned")
    ModelShape("t5", 1, 8, 2, 4, 16, 32, 8, n_decoder_layers=1, target_len=4, positions="relative")


# --- FLOPs ---------------------------------------------------------------------------------


def measured_forward_flops(model, batch, active=None):
    """Independent count: torch's FlopCounterMode, with SDPA forced to its math path so the
    attention matmuls show up as bmm (the fused CPU kernel is not counted)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(batch, active=active)
    return fc.get_total_flops()


def small(name, **kw):
    return get_shape(name, seq_len=32, **kw)


def gpt_batch(shape, b=2):
    ids = torch.randint(0, shape.vocab_size, (b, shape.seq_len))
    return {"input_ids": ids, "labels": ids}


def bert_batch(shape, b=2, n_masked=5):
    ids = torch.randint(0, shape.vocab_size, (b, shape.seq_len))
    labels = torch.full_like(ids, -100)
    labels[:, 3 : 3 + n_masked] = ids[:, 3 : 3 + n_masked]
    return {"input_ids": ids, "labels": labels}


def t5_batch(shape, b=2):
    return {
        "input_ids": torch.randint(0, shape.vocab_size, (b, shape.seq_len)),
        "decoder_input_ids": torch.randint(0, shape.vocab_size, (b, shape.target_len)),
        "labels": torch.randint(0, shape.vocab_size, (b, shape.target_len)),
    }


@pytest.mark.parametrize(
    "shape, batch_fn, predicted",
    [
        (small("gpt-tiny"), gpt_batch, None),
        (small("gpt-tiny", positions="rotary", tie_embeddings=False), gpt_batch, None),
        (small("bert-tiny"), bert_batch, 5),
        (small("t5-v1_1-tiny", target_len=8), t5_batch, None),
        (small("t5-v1_1-tiny", target_len=8, activation="relu", d_kv=16), t5_batch, None),
    ],
)
def test_forward_flops_match_flop_counter(shape, batch_fn, predicted):
    model = build_model(shape)
    measured = measured_forward_flops(model, batch_fn(shape))
    ours = forward_flops(shape, batch_size=2, predicted_positions=predicted)
    assert ours == pytest.approx(measured, rel=1e-3)


def test_flops_linear_in_active_layers():
    shape = small("t5-v1_1-tiny", target_len=8)
    model = build_model(shape)
    batch = t5_batch(shape)
    measured = [
        measured_forward_flops(model, batch, {"encoder": list(range(k)), "decoder": [0]})
        for k in range(3)
    ]
    ours = [forward_flops(shape, 2, {"encoder": k, "decoder": 1}) for k in range(3)]
    assert ours == pytest.approx(measured, rel=1e-3)
    assert ours[2] - ours[1] == pytest.approx(ours[1] - ours[0])  # each layer costs the same
    assert ours[1] > ours[0]
    g = get_shape("gpt2-small")
    per_layer = forward_flops(g, active_layers={"decoder": 1}) - forward_flops(
        g, active_layers={"decoder": 0}
    )
    assert forward_flops(g) == pytest.approx(
        forward_flops(g, active_layers={"decoder": 0}) + 12 * per_layer
    )
    with pytest.raises(ValueError):
        forward_flops(g, active_layers={"encoder": 3})
    with pytest.raises(ValueError):
        forward_flops(g, active_layers={"decoder": 13})


def test_train_flops_and_per_token():
    g = get_shape("gpt2-small")
    assert train_flops(g, 4) == pytest.approx(3 * forward_flops(g, 4))
    assert forward_flops(g, 4) == pytest.approx(4 * forward_flops(g))
    assert flops_per_token(g) == pytest.approx(train_flops(g) / 1024)
    assert flops_per_token(g, train=False) == pytest.approx(forward_flops(g) / 1024)
    # The usual estimate 6N + 12·L·d·T (N = non-embedding + output head, biases/norms aside).
    n = 12 * 12 * 768**2 + 768 * 50257
    assert flops_per_token(g) == pytest.approx(6 * n + 12 * 12 * 768 * 1024, rel=0.01)
    bert = get_shape("bert-tiny")
    head = 2 * bert.d_model * bert.vocab_size
    assert forward_flops(bert) - forward_flops(bert, predicted_positions=0) == 19 * head


def test_preset_table():
    table = format_preset_table()
    lines = table.splitlines()
    assert len(lines) == 2 + len(list_presets())
    assert lines[0].split()[:3] == ["preset", "family", "layers"]
    for name, line in zip(list_presets(), lines[2:], strict=True):
        assert line.split()[0] == name
    # Aligned: every row has the params column ending at the same character position.
    header_end = lines[0].index("params(M)") + len("params(M)")
    assert all(line[header_end - 1] != " " for line in lines[2:])
    t5 = next(line for line in lines if line.startswith("t5-v1_1-base"))
    assert "12/12" in t5 and "512/114" in t5 and "247.6" in t5
    assert "t5-v1_0-se-small-nl16" in format_preset_table(["t5-v1_0-se-small-nl16"])
    small = next(line for line in lines if line.startswith("t5-v1_0-se-small"))
    assert " 64 " in small and "60.5" in small and "relu" in small
