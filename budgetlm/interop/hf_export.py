"""Export a budgetlm model to a Hugging Face `transformers` model directory.

What maps, exactly (same logits to float round-off):
- GPT with learned positions, GELU (tanh), LayerNorm with biases, tied embeddings and
  n_heads x d_kv = d_model  ->  `GPT2LMHeadModel` (q, k, v fused into GPT-2's c_attn; Conv1D
  weights are stored transposed).
- T5 with relative positions, RMSNorm, no biases, ReLU or gated GELU, untied output head
  (T5 v1.1)  ->  `T5ForConditionalGeneration` (the relative-position tables sit in block 0 of
  each stack there, once per stack here).

What does not map, and is refused with the reason:
- BERT: budgetlm's BERT is the cramming recipe (pre-LayerNorm blocks, often gated GELU and no
  biases); `BertForMaskedLM` is post-LayerNorm with token types. No weight copy reproduces it.
- GPT with rotary or sinusoidal positions, gated activations, RMSNorm or untied embeddings; T5
  with tied embeddings (v1.0 style: transformers would rescale differently) or other positions.

Special ids come from the run's own tokenizer, never from transformers' defaults (GPT2Config's
are 50256, the real GPT-2 vocabulary's ``<|endoftext|>``; budgetlm's byte-level BPE has it at 0):
- GPT: bos = eos = the token that ends every training document (``<|endoftext|>``), so
  ``generate()`` stops where the model learnt documents end; pad is the tokenizer's (byte-level
  BPE has none), and the generation config pads with eos where there is none (what GPT-2 users
  set by hand).
- T5: pad and eos the tokenizer's, and the decoder start is pad (as the span-corruption
  batches have it).
They are written to config.json and generation_config.json, and with the tokenizer a
tokenizer_config.json names the same tokens, so ``AutoTokenizer`` agrees with the model.
Without a tokenizer a GPT gets no bos/eos (unknown: generation runs to max length) and a T5 the
T5 ids pad 0, eos 1 that budgetlm's unigram tokenizer always has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from budgetlm.errors import UserError


class ExportError(UserError, ValueError):
    """The model's architecture has no faithful `transformers` counterpart."""


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ExportError(what)


def special_ids(family: str, vocab_size: int, tokenizer: Any = None) -> dict[str, int | None]:
    """The special token ids an exported model's config and generation config carry.

    Keys: bos_token_id, eos_token_id, pad_token_id, and decoder_start_token_id for T5.
    """
    if tokenizer is not None and tokenizer.vocab_size > vocab_size:
        raise ExportError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model only {vocab_size} "
            "logits: not the run's tokenizer?"
        )
    if family == "gpt":
        if tokenizer is None:
            return {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
        # The id that ends every training document is where generation should stop.
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.doc_separator_id
        return {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": tokenizer.pad_id}
    if tokenizer is None:
        pad, eos = 0, 1  # T5's, and budgetlm's unigram tokenizer's
    else:
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.doc_separator_id
        pad = tokenizer.pad_id
        _require(
            pad is not None, f"T5 needs a pad token (its decoder start); {tokenizer!r} has none"
        )
    return {"bos_token_id": None, "eos_token_id": eos, "pad_token_id": pad,
            "decoder_start_token_id": pad}  # fmt: skip


def gpt2_state(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(GPT2Config kwargs, GPT2LMHeadModel state dict) for a budgetlm GPT."""
    s = model.shape
    _require(s.positions == "learned", f"GPT-2 has learned positions, this GPT {s.positions}")
    _require(s.activation == "gelu", f"GPT-2 uses GELU, this GPT {s.activation}")
    _require(s.norm == "layernorm" and s.bias, "GPT-2 needs LayerNorm and linear biases")
    _require(s.tie_embeddings, "GPT-2 ties its output head to the token embeddings")
    _require(s.n_heads * s.d_kv == s.d_model, "GPT-2 needs n_heads x d_kv = d_model")
    config = {
        "vocab_size": s.vocab_size,
        "n_positions": s.seq_len,
        "n_embd": s.d_model,
        "n_layer": s.n_layers,
        "n_head": s.n_heads,
        "n_inner": s.d_ff,
        "activation_function": "gelu_new",  # the tanh approximation budgetlm uses
        "layer_norm_epsilon": model.norm.eps,
        "resid_pdrop": s.dropout,
        "embd_pdrop": s.dropout,
        "attn_pdrop": s.dropout,
        "tie_word_embeddings": True,
    }
    sd = {
        "transformer.wte.weight": model.tok_emb.weight,
        "transformer.wpe.weight": model.pos_emb.weight,
        "transformer.ln_f.weight": model.norm.weight,
        "transformer.ln_f.bias": model.norm.bias,
    }
    for i, block in enumerate(model.decoder):
        p = f"transformer.h.{i}."
        attn, mlp = block.attn, block.mlp
        sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = block.ln_attn.weight, block.ln_attn.bias
        sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = block.ln_mlp.weight, block.ln_mlp.bias
        # Conv1D keeps weights as (in, out): the transpose of nn.Linear's.
        sd[p + "attn.c_attn.weight"] = torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]).T
        sd[p + "attn.c_attn.bias"] = torch.cat([attn.q.bias, attn.k.bias, attn.v.bias])
        sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"] = attn.o.weight.T, attn.o.bias
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = mlp.w_in.weight.T, mlp.w_in.bias
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = mlp.w_out.weight.T, mlp.w_out.bias
    sd["lm_head.weight"] = model.tok_emb.weight
    return config, sd


def t5_state(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(T5Config kwargs, T5ForConditionalGeneration state dict) for a budgetlm T5."""
    s = model.shape
    _require(s.positions == "relative", "T5 needs relative positions")
    _require(s.norm == "rmsnorm" and not s.bias, "T5 needs RMSNorm and no linear biases")
    _require(s.activation in ("relu", "gated-gelu"), f"no T5 feed-forward for {s.activation}")
    _require(not s.tie_embeddings, "only untied T5 (v1.1) maps: tied T5 rescales its head")
    gated = s.activation == "gated-gelu"
    config = {
        "vocab_size": s.vocab_size,
        "d_model": s.d_model,
        "d_kv": s.d_kv,
        "d_ff": s.d_ff,
        "num_layers": s.n_layers,
        "num_decoder_layers": s.n_decoder_layers,
        "num_heads": s.n_heads,
        "relative_attention_num_buckets": model.encoder_bias.num_buckets,
        "relative_attention_max_distance": model.encoder_bias.max_distance,
        "dropout_rate": s.dropout,
        "layer_norm_epsilon": model.encoder_norm.eps,
        "feed_forward_proj": "gated-gelu" if gated else "relu",
        "tie_word_embeddings": False,
        "is_encoder_decoder": True,
    }
    sd = {
        "shared.weight": model.tok_emb.weight,
        "encoder.embed_tokens.weight": model.tok_emb.weight,
        "decoder.embed_tokens.weight": model.tok_emb.weight,
        "lm_head.weight": model.lm_head.weight,
        "encoder.final_layer_norm.weight": model.encoder_norm.weight,
        "decoder.final_layer_norm.weight": model.decoder_norm.weight,
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (
            model.encoder_bias.embedding.weight
        ),
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (
            model.decoder_bias.embedding.weight
        ),
    }

    def attention(prefix: str, attn: nn.Module) -> None:
        for name in ("q", "k", "v", "o"):
            sd[f"{prefix}.{name}.weight"] = getattr(attn, name).weight

    def feed_forward(prefix: str, mlp: nn.Module) -> None:
        if gated:  # HF: act(wi_0 x) * wi_1 x; budgetlm: act(w_gate x) * w_in x
            sd[f"{prefix}.wi_0.weight"], sd[f"{prefix}.wi_1.weight"] = (
                mlp.w_gate.weight,
                mlp.w_in.weight,
            )
        else:
            sd[f"{prefix}.wi.weight"] = mlp.w_in.weight
        sd[f"{prefix}.wo.weight"] = mlp.w_out.weight

    for i, block in enumerate(model.encoder):
        p = f"encoder.block.{i}.layer"
        attention(f"{p}.0.SelfAttention", block.attn)
        sd[f"{p}.0.layer_norm.weight"] = block.ln_attn.weight
        feed_forward(f"{p}.1.DenseReluDense", block.mlp)
        sd[f"{p}.1.layer_norm.weight"] = block.ln_mlp.weight
    for i, block in enumerate(model.decoder):
        p = f"decoder.block.{i}.layer"
        attention(f"{p}.0.SelfAttention", block.attn)
        sd[f"{p}.0.layer_norm.weight"] = block.ln_attn.weight
        attention(f"{p}.1.EncDecAttention", block.cross_attn)
        sd[f"{p}.1.layer_norm.weight"] = block.ln_cross.weight
        feed_forward(f"{p}.2.DenseReluDense", block.mlp)
        sd[f"{p}.2.layer_norm.weight"] = block.ln_mlp.weight
    return config, sd


def export_hf(model: nn.Module, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write `model` as a transformers model directory (config + safetensors [+ tokenizer])."""
    try:
        import transformers
    except ImportError as e:
        raise ExportError("export needs transformers: pip install 'budgetlm[hf]'") from e
    family = model.shape.family
    if family == "gpt":
        config_kwargs, state = gpt2_state(model)
        cls = transformers.GPT2LMHeadModel
    elif family == "t5":
        config_kwargs, state = t5_state(model)
        cls = transformers.T5ForConditionalGeneration
    else:
        raise ExportError(
            "budgetlm's BERT (cramming recipe: pre-LayerNorm blocks, no token types) has no "
            "faithful transformers counterpart: BertForMaskedLM is post-LayerNorm"
        )
    ids = special_ids(family, model.shape.vocab_size, tokenizer)
    config_kwargs.update(ids)
    config = (transformers.GPT2Config if family == "gpt" else transformers.T5Config)(
        **config_kwargs
    )
    generation = {k: v for k, v in ids.items() if v is not None}
    if ids["pad_token_id"] is None and ids["eos_token_id"] is not None:
        generation["pad_token_id"] = ids["eos_token_id"]  # batched generate() pads with eos
    generation = transformers.GenerationConfig(**generation)
    # Written directly rather than through a transformers model object: T5 in transformers 5
    # ties lm_head to the embeddings at construction, which would overwrite one with the other.
    # On loading, differing checkpoint tensors stay untied.
    with torch.device("meta"):
        expected = set(cls(config).state_dict())
    missing = sorted(k for k in expected - set(state) if not k.endswith(_RECOMPUTED))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ExportError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    generation.save_pretrained(out)
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.hf.save(str(out / "tokenizer.json"))
        _write_tokenizer_config(out, tokenizer, ids, seq_len=model.shape.seq_len)
    return out


def _write_tokenizer_config(out: Path, tokenizer: Any, ids: dict[str, int | None], seq_len: int):
    """tokenizer_config.json naming the special tokens by the ids the model config has, so
    that `AutoTokenizer.from_pretrained(out)` reads tokenizer.json as it is (no class defaults
    such as T5's extra ids being added) and reports the same eos and pad."""
    import json

    names = {
        key.removesuffix("_id"): tokenizer.hf.id_to_token(ids[key])
        for key in ("bos_token_id", "eos_token_id", "pad_token_id")
        if ids.get(key) is not None
    }
    if tokenizer.unk_id is not None:
        names["unk_token"] = tokenizer.hf.id_to_token(tokenizer.unk_id)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": seq_len,
        **names,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


# Buffers transformers computes itself (GPT-2's causal mask in older versions).
_RECOMPUTED = (".attn.bias", ".attn.masked_bias")
