"""Text continuation from a trained model: one sampling loop for GPT and for T5's decoder.

No key/value cache: every new token reruns the model over the whole sequence. The models this
library trains are small and continuations short, so the simple loop is fast enough and has no
second code path to keep in step with the training forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from budgetlm.errors import UserError


class CannotGenerate(UserError, ValueError):
    """A model that does not continue text (BERT), or generation settings out of range."""


def next_token(
    logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator
) -> int:
    """Pick one id from (V,) logits: the argmax at temperature 0, else a sample from the
    softmax at that temperature over the `top_k` most likely ids (all ids when None)."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def check_settings(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if temperature < 0 or max_new_tokens < 1 or (top_k is not None and top_k < 1):
        raise CannotGenerate("need --temperature >= 0, --max-new-tokens >= 1 and --top-k >= 1")


def sample_loop(
    step_logits: Callable[[list[int]], Tensor],
    start: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 1,
    stop_ids: Sequence[int] = (),
) -> list[int]:
    """Extend `start` one id at a time; `step_logits(ids)` gives the next id's (V,) logits.
    Returns the new ids, ending early (stop id included) when a `stop_ids` id comes out."""
    check_settings(max_new_tokens, temperature, top_k)
    generator = torch.Generator().manual_seed(seed)
    ids, new = list(start), []
    for _ in range(max_new_tokens):
        token = next_token(step_logits(ids).cpu(), temperature, top_k, generator)
        ids.append(token)
        new.append(token)
        if token in stop_ids:
            break
    return new


def gpt_step_logits(model: nn.Module) -> Callable[[list[int]], Tensor]:
    """Next-token logits of a GPT over the last `seq_len` ids (its longest trained context)."""
    device = next(model.parameters()).device

    def step(ids: list[int]) -> Tensor:
        window = torch.tensor([ids[-model.shape.seq_len :]], device=device)
        with torch.no_grad():
            return model.logits(model.hidden_states({"input_ids": window}))[0, -1]

    return step


@torch.no_grad()
def t5_step_logits(model: nn.Module, encoder_ids: Sequence[int]) -> Callable[[list[int]], Tensor]:
    """Next-token logits of a T5 decoder attending to `encoder_ids`, encoded once."""
    device = next(model.parameters()).device
    encoded = model.encode(torch.tensor([list(encoder_ids)], device=device))

    def step(ids: list[int]) -> Tensor:
        decoder_ids = torch.tensor([ids], device=device)
        with torch.no_grad():
            return model.logits(model.decode(decoder_ids, encoded))[0, -1]

    return step
