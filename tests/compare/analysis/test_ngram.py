"""Tests for compare.analysis.ngram: the unigram and bigram regime references.

The tiny corpus is counted by hand below, so the expected NLLs follow from the smoothing
formulas written out here, not from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from budgetlm.compare.analysis import ngram

# Vocabulary 4, 12 training tokens, 6 held-out tokens.
TRAIN = [0, 1, 2, 0, 1, 3, 0, 1, 2, 2, 0, 1]
TEST = [0, 1, 2, 3, 0, 1]
V = 4

# Unigram counts: 0 x4, 1 x4, 2 x3, 3 x1 (12 tokens); add-one: (c + 1) / (12 + 4).
P_UNI = [5 / 16, 5 / 16, 4 / 16, 2 / 16]
# The 11 adjacent pairs: (0,1) x4, (1,2) x2, (2,0) x2, (1,3) x1, (3,0) x1, (2,2) x1.
# n1 = 3 pair types seen once, n2 = 2 seen twice: Ney's D = n1 / (n1 + 2 n2) = 3 / 7.
D = 3 / 7
# As a history (followed by a token): c(0)=4, c(1)=3 (the final 1 has no successor), c(2)=3,
# c(3)=1; distinct successors: T(0)=1 {1}, T(1)=2 {2,3}, T(2)=2 {0,2}, T(3)=1 {0}.
HIST = [4, 3, 3, 1]
TYPES = [1, 2, 2, 1]
PAIRS = {(0, 1): 4, (1, 2): 2, (2, 0): 2, (1, 3): 1, (3, 0): 1, (2, 2): 1}


def p_bigram(v: int, w: int) -> float:
    """Interpolated absolute discounting, written out from the hand counts above."""
    return (max(PAIRS.get((v, w), 0) - D, 0) + D * TYPES[v] * P_UNI[w]) / HIST[v]


def test_hand_counted_corpus_seq_len_5():
    # One window of 6 tokens; it predicts positions 1..5: 1, 2, 3, 0, 1 after 0, 1, 2, 3, 0.
    refs = ngram.causal_lm_references(np.array(TRAIN), np.array(TEST), V, seq_len=5, n_train=12)
    targets = [1, 2, 3, 0, 1]
    prevs = [0, 1, 2, 3, 0]
    uni = -sum(math.log(P_UNI[w]) for w in targets) / 5
    # p(1|0) = (4 - D + D*1*5/16)/4, p(2|1) = (2 - D + D*2*4/16)/3, p(3|2) = (D*2*2/16)/3 (an
    # unseen pair: only the unigram's share), p(0|3) = (1 - D + D*1*5/16)/1.
    by_hand = [
        (4 - D + D * 5 / 16) / 4,
        (2 - D + D * 2 * 4 / 16) / 3,
        (D * 2 * 2 / 16) / 3,
        (1 - D + D * 5 / 16) / 1,
        (4 - D + D * 5 / 16) / 4,
    ]
    assert by_hand == pytest.approx([p_bigram(v, w) for v, w in zip(prevs, targets, strict=True)])
    bi = -sum(math.log(p) for p in by_hand) / 5
    assert refs.unigram == pytest.approx(uni, rel=1e-12)
    assert refs.bigram == pytest.approx(bi, rel=1e-12)
    assert refs.discount == pytest.approx(D)
    assert (refs.train_tokens, refs.targets) == (12, 5)


def test_hand_counted_counts():
    model = ngram.fit_bigram(np.array(TRAIN), V)
    assert np.exp(model.unigram) == pytest.approx(P_UNI)
    assert model.history.tolist() == HIST
    assert model.types.tolist() == TYPES
    decoded = {
        (int(c) // V, int(c) % V): int(n) for c, n in zip(model.codes, model.counts, strict=True)
    }
    assert decoded == PAIRS


def test_seq_len_2_drops_the_tail_that_fills_no_window():
    # Windows of 3 at stride 2: TEST[0:3], TEST[2:5]; targets TEST[1:5]; the final 1 is never
    # predicted (it would start a window with no target).
    prev, nxt = ngram.causal_lm_pairs(np.array(TEST), seq_len=2)
    assert prev.tolist() == [0, 1, 2, 3]
    assert nxt.tolist() == [1, 2, 3, 0]
    refs = ngram.causal_lm_references(np.array(TRAIN), np.array(TEST), V, seq_len=2, n_train=12)
    assert refs.unigram == pytest.approx(-sum(math.log(P_UNI[w]) for w in [1, 2, 3, 0]) / 4)
    expected = (
        -sum(math.log(p_bigram(v, w)) for v, w in zip([0, 1, 2, 3], [1, 2, 3, 0], strict=True)) / 4
    )
    assert refs.bigram == pytest.approx(expected)


def test_only_the_first_n_training_tokens_count():
    # The first 6 tokens 0 1 2 0 1 3: unigram (2+1, 2+1, 1+1, 1+1) / (6 + 4).
    refs = ngram.causal_lm_references(np.array(TRAIN), np.array(TEST), V, seq_len=5, n_train=6)
    p = [3 / 10, 3 / 10, 2 / 10, 2 / 10]
    assert refs.unigram == pytest.approx(-sum(math.log(p[w]) for w in [1, 2, 3, 0, 1]) / 5)
    assert refs.train_tokens == 6


def test_bigram_is_a_distribution_for_every_history_and_backs_off_when_unseen():
    # Token 4 never occurs in training: its row must be the unigram itself.
    model = ngram.fit_bigram(np.array(TRAIN), V + 1)
    grid_v, grid_w = np.meshgrid(np.arange(V + 1), np.arange(V + 1), indexing="ij")
    p = np.exp(model.logprobs(grid_v.ravel(), grid_w.ravel())).reshape(V + 1, V + 1)
    assert p.sum(axis=1) == pytest.approx(np.ones(V + 1))
    assert p[4] == pytest.approx(np.exp(model.unigram))
    assert np.all(p > 0)


def test_out_of_vocabulary_ids_are_refused():
    with pytest.raises(ValueError, match="token ids"):
        ngram.unigram_logprobs(np.array([0, 5]), 4)
    with pytest.raises(ValueError, match="held-out"):
        ngram.causal_lm_references(np.array(TRAIN), np.array([0, 1]), V, seq_len=5, n_train=12)


def test_causal_lm_targets_are_what_the_objective_predicts(prepared_dataset):
    from budgetlm.data import CausalLM, eval_batches, load_prepared

    ds = load_prepared(prepared_dataset("gpt"))
    val = ds.tokens("val")
    objective = CausalLM(ds.tokenizer, seq_len=64)
    n = objective.num_examples(len(val))
    assert ngram.causal_lm_windows(len(val), 64) == n
    win = objective.windows(val, np.arange(n))
    batch = objective.make_batch(val, np.arange(n), [None] * n)
    prev, nxt = ngram.causal_lm_pairs(val, 64)
    # Every predicted position, in order: the labels, each after its input token.
    assert nxt.tolist() == batch["labels"].reshape(-1).tolist()
    assert prev.tolist() == batch["input_ids"].reshape(-1).tolist()
    assert nxt.size == n * 64 == win[:, 1:].size
    # The judged windows: the first batches of eval_batches.
    held = eval_batches(val, objective, batch_size=4, max_batches=3)
    labels = np.concatenate([b["labels"].reshape(-1).numpy() for b in held])
    assert ngram.causal_lm_pairs(val, 64, max_windows=12)[1].tolist() == labels.tolist()


def test_bigram_beats_unigram_on_the_fixture_corpus(prepared_dataset):
    from budgetlm.data import load_prepared

    ds = load_prepared(prepared_dataset("gpt"))
    train, val = ds.tokens("train"), ds.tokens("val")
    vocab = ds.tokenizer.vocab_size
    losses = []
    for n in (4_000, 16_000, len(train)):
        refs = ngram.causal_lm_references(train, val, vocab, seq_len=128, n_train=n)
        assert refs.bigram < refs.unigram < math.log(vocab)
        losses.append(refs.bigram)
    assert losses == sorted(losses, reverse=True)  # more text, a better bigram


def test_a_million_tokens_with_a_large_vocabulary():
    """The size the references meet in practice (timed by hand, not here: see the docs)."""
    vocab = 8192
    rng = np.random.default_rng(0)
    # Zipf-like ids with a planted dependency: every odd position repeats its predecessor + 1.
    tokens = np.minimum(rng.zipf(1.3, size=1_000_000) - 1, vocab - 2).astype(np.uint16)
    tokens[1::2] = tokens[0::2] + 1
    train, heldout = tokens[:900_000], tokens[900_000:]
    refs = ngram.causal_lm_references(train, heldout, vocab, seq_len=512, n_train=len(train))
    assert refs.targets == 195 * 512
    assert math.isfinite(refs.bigram)
    assert refs.bigram < refs.unigram < math.log(vocab)
