"""Data: corpora, tokenizers, token shards, pre-training objectives and deterministic batches.

The path from text to a batch::

    prepare_dataset(corpus, tokenizer, vocab_size)  -> directory (cached)
    load_prepared(directory)                        -> PreparedDataset (.tokenizer, .tokens(split))
    make_objective(name, tokenizer, seq_len)        -> Objective
    BatchStream(tokens, objective, batch_size, seed).batch(step)  -> dict of int64 tensors
"""

from .loader import BatchStream, eval_batches
from .objectives import (
    OBJECTIVES,
    CausalLM,
    MaskedLM,
    Objective,
    SpanCorruption,
    make_objective,
    span_corruption_lengths,
)
from .prepare import (
    DatasetCorrupt,
    DatasetError,
    PreparedDataset,
    default_cache_root,
    load_prepared,
    prepare_dataset,
    rebuild_dataset,
    verify_dataset,
)
from .shards import ShardError, ShardWriter, read_shard, write_shard
from .sources import CorpusError, corpus_fingerprint, iter_documents, split_of
from .tokenizer import KINDS as TOKENIZER_KINDS
from .tokenizer import Tokenizer, load_gpt2, train_tokenizer

__all__ = [
    "OBJECTIVES",
    "TOKENIZER_KINDS",
    "BatchStream",
    "CausalLM",
    "CorpusError",
    "DatasetCorrupt",
    "DatasetError",
    "MaskedLM",
    "Objective",
    "PreparedDataset",
    "ShardError",
    "ShardWriter",
    "SpanCorruption",
    "Tokenizer",
    "corpus_fingerprint",
    "default_cache_root",
    "eval_batches",
    "iter_documents",
    "load_gpt2",
    "load_prepared",
    "make_objective",
    "prepare_dataset",
    "read_shard",
    "rebuild_dataset",
    "span_corruption_lengths",
    "split_of",
    "train_tokenizer",
    "verify_dataset",
    "write_shard",
]
