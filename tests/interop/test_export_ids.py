"""Exported models carry the run's own special ids: generate() stops at the run's end of text,
not at transformers' default (GPT-2's 50256)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from budgetlm.cli import main
from budgetlm.data.tokenizer import EOT, SENTINELS, T5_SPECIALS, Tokenizer
from budgetlm.finetune.run import load_backbone
from budgetlm.interop.hf_export import ExportError, export_hf, special_ids
from budgetlm.models import build_model, get_shape
from budgetlm.train.session import open_run

from ..train.helpers import tiny_config

transformers = pytest.importorskip("transformers", reason="pip install transformers")
SMALL = dict(n_layers=2, d_model=32, n_heads=2, d_kv=16, d_ff=64, seq_len=32)
GPT2_DEFAULT_EOS = 50256


def _plant_eos(head_weight: torch.Tensor, hidden: torch.Tensor, eos: int) -> None:
    """Make `eos` the argmax of the logits computed from `hidden` (the final hidden state at
    the position that predicts the first new token): its output row points along `hidden`."""
    with torch.no_grad():
        head_weight[eos] = 1e3 * hidden / hidden.norm()


def _word_level(tokens: list[str]) -> HFTokenizer:
    hf = HFTokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0]))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    return hf


def test_gpt_run_exports_its_tokenizers_end_of_text_and_generate_stops_there(tmp_path):
    run_dir = tmp_path / "run"
    trainer = open_run(tiny_config("gpt", run_dir, "budget=2steps"), progress=False)
    trainer.run()
    trainer.log.close()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    _, tokenizer = load_backbone(run_dir)  # the run's own tokenizer
    eos = tokenizer.eos_id
    assert eos == tokenizer.hf.token_to_id(EOT) and eos != GPT2_DEFAULT_EOS

    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert (hf.config.bos_token_id, hf.config.eos_token_id) == (eos, eos)
    generation = hf.generation_config
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (
        eos,
        eos,
        eos,  # byte-level BPE has no pad token: batched generation pads with eos
    )
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert auto.eos_token_id == eos and auto.bos_token_id == eos

    prompt = torch.tensor([tokenizer.encode("the cat sat on the")])
    assert eos not in prompt[0].tolist()
    with torch.no_grad():
        hidden = hf(input_ids=prompt, output_hidden_states=True).hidden_states[-1][0, -1]
    _plant_eos(hf.lm_head.weight, hidden, eos)  # tied: also the input row of eos, unused here
    with torch.no_grad():
        assert hf(input_ids=prompt).logits[0, -1].argmax().item() == eos
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8)
    assert out[0, prompt.shape[1] :].tolist() == [eos]  # stopped at the first eos


def test_gpt_without_a_tokenizer_claims_no_special_ids(tmp_path):
    model = build_model(get_shape("gpt-tiny", **SMALL, vocab_size=300)).eval()
    export_hf(model, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert hf.config.bos_token_id is None and hf.config.eos_token_id is None
    assert hf.generation_config.eos_token_id is None
    assert not (tmp_path / "hf" / "tokenizer_config.json").exists()


def test_t5_exports_its_tokenizers_pad_eos_and_decoder_start(tmp_path):
    # A unigram-kind tokenizer whose pad and eos are NOT T5's usual 0 and 1.
    tokens = ["<unk>", "a", "b", "c", "<pad>", "d", "</s>", *SENTINELS]
    tokenizer = Tokenizer(_word_level(tokens), "unigram")
    pad, eos = tokenizer.pad_id, tokenizer.eos_id
    assert (pad, eos) == (tokens.index(T5_SPECIALS[0]), tokens.index(T5_SPECIALS[1])) == (4, 6)
    shape = get_shape("t5-v1_1-tiny", **SMALL, n_decoder_layers=2, vocab_size=128)
    torch.manual_seed(0)
    model = build_model(shape).eval()
    export_hf(model, tmp_path / "t5", tokenizer)

    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
    for config in (hf.config, hf.generation_config):
        assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (
            pad,
            eos,
            pad,  # the span-corruption batches start the decoder with pad
        )
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "t5")
    assert (auto.pad_token_id, auto.eos_token_id, auto.unk_token_id) == (pad, eos, 0)
    assert len(auto) == tokenizer.vocab_size  # no class-default extra ids added

    ids = torch.tensor([tokenizer.encode("a b c d a")])
    start = torch.tensor([[pad]])
    with torch.no_grad():
        out = hf(input_ids=ids, decoder_input_ids=start, output_hidden_states=True)
    _plant_eos(hf.lm_head.weight, out.decoder_hidden_states[-1][0, -1], eos)
    with torch.no_grad():
        assert hf(input_ids=ids, decoder_input_ids=start).logits[0, -1].argmax().item() == eos
        generated = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8)
    assert generated[0].tolist() == [pad, eos]  # decoder start, then stopped at eos


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path):
    tokenizer = Tokenizer(_word_level(["<unk>", EOT, *(f"w{i}" for i in range(400))]), "bpe")
    model = build_model(get_shape("gpt-tiny", **SMALL, vocab_size=300))
    with pytest.raises(ExportError, match="402 ids but the model only 300"):
        export_hf(model, tmp_path / "hf", tokenizer)
    assert not (tmp_path / "hf").exists()
    # The same tokenizer with a model that has room for it gives its own eos id.
    assert special_ids("gpt", 402, tokenizer)["eos_token_id"] == 1
