"""`train.compile`: compile each transformer block, not the whole model.

Methods change which blocks run from step to step (layer dropping), and replace the model
(stacking, staged growth). Compiling the whole model made the list of active blocks part of what
dynamo guards on: every new set of blocks was a recompile, and after `recompile_limit` of them
the model silently ran eager. Here, as in torchtitan, each block of every stack the model
declares (`model.layer_stacks()`: GPT's decoder, BERT's encoder, T5's encoder and decoder) is
compiled in place (`nn.Module.compile`: parameter names and state dicts stay as they are) and the
Python loop over the active blocks, the embeddings, the head and the loss stay eager. A block's
compiled code depends only on what the block itself receives (its structure, the shapes and
dtypes of its inputs, grad mode, train/eval), so it is compiled once per such signature and then
reused by every block of the stack, whichever blocks run. Masks, position biases and rotary
tables are tensors computed once per stack outside the blocks, so they are inputs, not guards.

The backend is inductor by default; `BUDGETLM_COMPILE_BACKEND` names another (`eager` or
`aot_eager` in tests: the same dynamo tracing and guards without code generation).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

BACKEND_ENV = "BUDGETLM_COMPILE_BACKEND"
DEFAULT_BACKEND = "inductor"
# Every block compiled with nn.Module.compile runs the same code object (Module._call_impl), and
# dynamo keeps its compiled entries per code object: one per block signature (T5's encoder and
# decoder blocks, train and eval, a dynamic-shape variant of each, autocast), which can pass
# dynamo's default of 8; past the limit a new signature would silently run eager.
RECOMPILE_LIMIT = 64


def compile_backend() -> str | Callable[..., Any]:
    """The torch.compile backend: $BUDGETLM_COMPILE_BACKEND, else inductor."""
    return os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND


def compiled_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks `compile_model` compiles: every block of every layer stack of the model."""
    stacks = model.layer_stacks() if hasattr(model, "layer_stacks") else {}
    return [block for blocks in stacks.values() for block in blocks]


def compile_model(
    model: nn.Module, backend: str | Callable[..., Any] | None = None
) -> Callable[..., Any]:
    """Compile each block of `model` in place and return `model` to call (eager around them).

    `model` may be wrapped (DDP: its `.module` is the model). Calling it again after a method
    replaced blocks or the model compiles the new blocks; blocks already compiled are compiled
    again only in the sense of a new wrapper around the same code: dynamo's cache is per code
    object, so a block of a signature already seen reuses its compiled graph. A model without
    layer stacks is compiled whole.
    """
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    blocks = compiled_blocks(inner)
    backend = compile_backend() if backend is None else backend
    from torch._dynamo import config

    if not blocks:
        # BERT-like heads gather the masked positions: a data-dependent shape.
        config.capture_dynamic_output_shape_ops = True
        return torch.compile(model, backend=backend)
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    for block in blocks:
        block.compile(backend=backend)
    return model
