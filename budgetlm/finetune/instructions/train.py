"""Fine-tune a T5 (or a GPT) on instruction tasks and score it on held-out tasks (nanoT5's SNI
protocol).

One model per fine-tuning seed is trained on every training task's instances (the prompt as the
encoder input, the instance's first reference output as the target), then decodes each held-out
instance greedily and is scored with ROUGE-L against all its references (`score.py`). Inputs are
cut to `min(max_source_len, shape.seq_len)` tokens and targets to `min(max_target_len,
shape.target_len)`: the lengths the model was built for. Deterministic given the seed.

A GPT is fine-tuned as the decoder-only variant: prompt + output as one sequence, the loss on
the output only; the prompt keeps its last tokens (the instance and the output cue) and at most
a quarter of the context goes to the output; held-out prompts are continued greedily one at a
time. BERT models are refused.

Results go to `<out>/finetune/<suite>.json` in the classification suites' format (per held-out
task `main_metric` "rougeL", its `mean`/`std` over seeds and per-seed `reported` scores; the
suite `average` over held-out tasks), plus the training and held-out task lists and sizes, so the
compare reports and the random-init control read them unchanged. A new call replaces the file:
every call fine-tunes on the whole suite.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from budgetlm.errors import RunFault
from budgetlm.finetune.instructions.data import (
    QUERY_HEAD,
    Instance,
    InstructionSuite,
    InstructionTask,
    PromptSettings,
    build_prompt,
    cap_instances,
    check_no_contamination,
)
from budgetlm.finetune.instructions.protocol import (
    ADAMW_BETAS,
    ADAMW_EPS,
    InstructionProtocol,
    is_instruction_suite,
)
from budgetlm.finetune.instructions.score import METRIC, suite_rouge_l
from budgetlm.finetune.instructions.suites import load_instruction_suite
from budgetlm.finetune.store import prepare_results_dir, read_suite, write_results
from budgetlm.finetune.tasks import TaskError
from budgetlm.models.output import IGNORE_INDEX

EXAMPLES_KEPT = 3  # predictions stored per held-out task (first seed), to read what it wrote


class InstructionsDiverged(RunFault, FloatingPointError):
    """The fine-tuning loss became NaN or infinite (exit 1: a failure during training)."""


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cap(task: InstructionTask, limit: int) -> tuple[Instance, ...]:
    """At most `limit` instances (`cap_instances`; the loaders cap already, so this guards
    suites built otherwise)."""
    return task.instances if len(task.instances) <= limit else cap_instances(task, limit)


# ---------------------------------------------------------------------------- loading


def check_suite(suite: InstructionSuite) -> None:
    """Refuse a suite that cannot be fine-tuned and scored, or whose held-out tasks leak into
    training (`check_no_contamination`)."""
    if not suite.train:
        raise TaskError(f"{suite.name}: no training tasks ({suite.source})")
    if not suite.test:
        raise TaskError(f"{suite.name}: no held-out tasks ({suite.source})")
    empty = [t.name for t in (*suite.train, *suite.test) if not t.instances]
    if empty:
        raise TaskError(f"{suite.name}: tasks without instances: {', '.join(empty)}")
    no_refs = [t.name for t in suite.test if any(not i.outputs for i in t.instances)]
    if no_refs:
        raise TaskError(f"{suite.name}: held-out instances without outputs in {no_refs}")
    check_no_contamination(suite)  # raises TaskError
    names = [t.name for t in (*suite.train, *suite.test)]
    if len(set(names)) != len(names):
        raise TaskError(f"{suite.name}: a task is listed twice ({suite.source})")


def load_instructions(
    suite: str, data_dir: str | Path | None, protocol: InstructionProtocol
) -> InstructionSuite:
    """Load and check an instruction suite before anything is trained (TaskError on bad input)."""
    if not is_instruction_suite(suite):
        raise TaskError(f"{suite!r} is not an instruction suite")
    try:
        loaded = load_instruction_suite(suite, data_dir, protocol.settings())
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError) as e:
        if isinstance(e, TaskError):
            raise
        raise TaskError(f"suite {suite!r}: {e}") from None
    check_suite(loaded)
    return loaded


# ---------------------------------------------------------------------------- encoding


class Encoded:
    """Token ids of prompts and targets under the model's lengths."""

    def __init__(
        self, tokenizer: Any, settings: PromptSettings, source_len: int, target_len: int
    ) -> None:
        self.tok, self.settings = tokenizer, settings
        self.source_len, self.target_len = source_len, target_len

    def fits(self, prompt: str) -> bool:
        """Room for the prompt and EOS: a positive example that does not fit is left out with
        those after it (Tk-Instruct's collator)."""
        return len(self.tok.encode(prompt)) < self.source_len

    def source(self, task: InstructionTask, instance: Instance) -> list[int]:
        """The encoder input and EOS. A prompt too long even without positive examples loses
        the end of its definition, never the instance: Tk-Instruct cuts the whole prompt from
        the right, which at nanoT5's 1024 tokens rarely reaches the instance but at a small
        model's 128 would leave it nothing to answer (the instance alone too long is still cut
        from the right)."""
        prompt = build_prompt(task, instance, self.settings, self.fits)
        room = self.source_len - 1
        ids = self.tok.encode(prompt)
        if len(ids) > room:
            split = prompt.rfind(QUERY_HEAD)
            query = self.tok.encode(prompt[split:])
            head = self.tok.encode(prompt[:split])[: max(0, room - len(query))]
            ids = head + query
        return [*ids[:room], self.tok.eos_id]

    def gpt_source(self, task: InstructionTask, instance: Instance) -> list[int]:
        """A decoder-only model's prompt: its last `source_len` tokens (what is cut is the
        start: the definition, not the instance and the output cue the model continues)."""
        ids = self.tok.encode(build_prompt(task, instance, self.settings, self.fits))
        return ids[-self.source_len :]

    def target(self, text: str) -> list[int]:
        return [*self.tok.encode(text)[: self.target_len - 1], self.tok.eos_id]


def pad(seqs: Sequence[Sequence[int]], value: int) -> tuple[Tensor, Tensor]:
    """(B, longest) ids padded with `value`, and the mask of real positions."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def t5_batch(sources: Sequence[list[int]], targets: Sequence[list[int]], pad_id: int) -> dict:
    """A T5 training batch: decoder inputs are the targets shifted right after `pad_id` (T5's
    decoder start), padded labels ignored."""
    input_ids, attention_mask = pad(sources, pad_id)
    labels, target_mask = pad(targets, pad_id)
    decoder = torch.full_like(labels, pad_id)
    decoder[:, 1:] = labels[:, :-1]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder,
        "labels": labels.masked_fill(target_mask == 0, IGNORE_INDEX),
    }


def gpt_batch(sources: Sequence[list[int]], targets: Sequence[list[int]], pad_id: int) -> dict:
    """A decoder-only batch: prompt + target as one sequence, the loss on the target only
    (labels already shifted, as the GPT model expects), padded on the right."""
    seqs = [[*s, *t] for s, t in zip(sources, targets, strict=True)]
    labels = [
        [IGNORE_INDEX] * (len(s) - 1) + list(t) for s, t in zip(sources, targets, strict=True)
    ]
    input_ids, _ = pad([q[:-1] for q in seqs], pad_id)
    shifted, mask = pad(labels, IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": shifted.masked_fill(mask == 0, IGNORE_INDEX)}


# ---------------------------------------------------------------------------- decoding


@torch.no_grad()
def greedy_decode(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    max_new_tokens: int,
    eos_id: int,
    start_id: int,
) -> list[list[int]]:
    """Greedy T5 decoding of a batch: the encoder runs once, the decoder step by step (no key/
    value cache, as budgetlm.models.generate) until every row has written `eos_id` or
    `max_new_tokens` ids. Returns each row's ids without the start id and without EOS."""
    encoded = model.encode(input_ids, attention_mask)
    rows = input_ids.shape[0]
    out = torch.full((rows, 1), start_id, dtype=torch.long, device=input_ids.device)
    done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        hidden = model.decode(out, encoded, attention_mask)
        nxt = model.logits(hidden[:, -1]).argmax(-1)
        nxt = nxt.masked_fill(done, eos_id)  # finished rows only repeat EOS
        out = torch.cat([out, nxt[:, None]], dim=1)
        done |= nxt == eos_id
        if bool(done.all()):
            break
    result = []
    for row in out[:, 1:].tolist():
        result.append(row[: row.index(eos_id)] if eos_id in row else row)
    return result


# ---------------------------------------------------------------------------- one seed


def _optimizer(model: nn.Module, protocol: InstructionProtocol, device: torch.device):  # noqa: ANN202
    from budgetlm.optim.factory import build_optimizer

    adamw = protocol.optimizer == "adamw"
    return build_optimizer(
        protocol.optimizer,
        model,
        lr=protocol.lr,
        betas=ADAMW_BETAS if adamw else None,
        eps=ADAMW_EPS if adamw else None,
        weight_decay=protocol.weight_decay,
        device=device,
    )


def _lengths(backbone: nn.Module, protocol: InstructionProtocol) -> tuple[int, int]:
    """(source, target) lengths: T5's encoder and decoder lengths; a GPT's one context split,
    a quarter of it (at most) for the target."""
    shape = backbone.shape
    if shape.family == "t5":
        return min(protocol.max_source_len, shape.seq_len), min(
            protocol.max_target_len, shape.target_len
        )
    if shape.family == "gpt":
        target = min(protocol.max_target_len, max(2, shape.seq_len // 4))
        return min(protocol.max_source_len, shape.seq_len + 1 - target), target
    raise TaskError(
        f"the instruction suites fine-tune T5 (encoder-decoder) or GPT (decoder-only) models; "
        f"this run is {shape.family!r}"
    )


def finetune_instructions_seed(
    backbone: nn.Module,
    tokenizer: Any,
    suite: InstructionSuite,
    protocol: InstructionProtocol,
    seed: int,
    device: torch.device | None = None,
    notify: Callable[[str], None] = _note,
    progress_every: int = 50,
) -> dict[str, Any]:
    """Fine-tune a copy of `backbone` (left untouched) on `suite.train` with one seed; decode
    and score `suite.test`. Returns per held-out task its ROUGE-L, the average, the steps, the
    final loss, a few predictions and the seconds spent."""
    device = device or torch.device("cpu")
    source_len, target_len = _lengths(backbone, protocol)
    enc = Encoded(tokenizer, protocol.settings(), source_len, target_len)
    gpt = backbone.shape.family == "gpt"
    source = enc.gpt_source if gpt else enc.source
    make_batch = gpt_batch if gpt else t5_batch
    pad_id = tokenizer.eos_id if gpt else tokenizer.pad_id  # GPT's BPE has no pad id
    pairs = [
        (source(task, inst), enc.target(inst.outputs[0]))
        for task in suite.train
        for inst in _cap(task, protocol.max_instances)
        if inst.outputs
    ]
    if not pairs:
        raise TaskError(f"{suite.name}: no training instance has an output")
    per_epoch = -(-len(pairs) // protocol.batch_size)
    total = per_epoch * protocol.epochs
    if protocol.steps is not None:
        total = min(total, protocol.steps)

    started = time.perf_counter()
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone).to(device)
    optimizer = _optimizer(model, protocol, device)
    rng = np.random.default_rng([seed, 0x5E1])
    step, losses, order = 0, [], np.array([], dtype=np.int64)
    model.train()
    while step < total:
        if step % per_epoch == 0:
            order = rng.permutation(len(pairs))
        first = (step % per_epoch) * protocol.batch_size
        chunk = [pairs[i] for i in order[first : first + protocol.batch_size]]
        batch = make_batch([s for s, _ in chunk], [t for _, t in chunk], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        for group in optimizer.param_groups:  # constant after a linear warm-up (none: nanoT5)
            group["lr"] = protocol.lr * min(1.0, (step + 1) / max(1, protocol.warmup_steps))
        loss = model(batch).loss
        if not torch.isfinite(loss):
            raise InstructionsDiverged(
                f"{suite.name} seed {seed}: the fine-tuning loss is {float(loss.detach())} at step "
                f"{step + 1} of {total} (try a lower --lr)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if protocol.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), protocol.grad_clip)
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % progress_every == 0 or step == total:
            recent = statistics.mean(losses[-progress_every:])
            notify(f"{suite.name} seed {seed}: step {step}/{total} loss {recent:.4f}")

    model.eval()
    predictions: dict[str, list[str]] = {}
    references: dict[str, list[tuple[str, ...]]] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    for task in suite.test:
        instances = _cap(task, protocol.max_eval_instances)
        sources = [source(task, inst) for inst in instances]
        texts = decode_all(model, tokenizer, sources, target_len, protocol.eval_batch_size, device)
        predictions[task.name] = texts
        references[task.name] = [inst.outputs for inst in instances]
        examples[task.name] = [
            {"id": inst.id, "prediction": text, "references": list(inst.outputs)}
            for inst, text in zip(instances[:EXAMPLES_KEPT], texts, strict=False)
        ]
    per_task, average = suite_rouge_l(predictions, references)
    notify(f"{suite.name} seed {seed}: ROUGE-L {average:.2f} over {len(per_task)} held-out tasks")
    return {
        "seed": seed,
        "tasks": per_task,
        "average": average,
        "steps": total,
        "final_loss": statistics.mean(losses[-min(len(losses), 10) :]),
        "train_instances": len(pairs),
        "eval_instances": {t: len(v) for t, v in predictions.items()},
        "examples": examples,
        "lengths": {"source": source_len, "target": target_len},
        "seconds": time.perf_counter() - started,
    }


def decode_all(
    model: nn.Module,
    tokenizer: Any,
    sources: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
    device: torch.device,
) -> list[str]:
    """Greedy outputs of every source, in order (T5: batched by length, less padding; GPT:
    one at a time, `budgetlm.models.generate`'s loop, as positions make padding inexact)."""
    if model.shape.family == "gpt":
        from budgetlm.models.generate import gpt_step_logits, sample_loop

        step = gpt_step_logits(model)
        eos = tokenizer.eos_id
        outs = [sample_loop(step, s, max_new_tokens, stop_ids=[eos]) for s in sources]
        return [
            tokenizer.decode([t for t in o if t != eos], skip_special_tokens=True) for o in outs
        ]
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    texts: list[str] = [""] * len(sources)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad([sources[i] for i in idx], tokenizer.pad_id)
        out = greedy_decode(
            model,
            ids.to(device),
            mask.to(device),
            max_new_tokens,
            tokenizer.eos_id,
            tokenizer.pad_id,
        )
        for i, row in zip(idx, out, strict=True):
            texts[i] = tokenizer.decode(row, skip_special_tokens=True)
    return texts


# ---------------------------------------------------------------------------- the suite


def finetune_instructions(
    backbone_for: Callable[[int], nn.Module],
    tokenizer: Any,
    suite: InstructionSuite,
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = (1,),
    protocol: InstructionProtocol | None = None,
    device: str = "auto",
    record: dict[str, Any] | None = None,
    notify: Callable[[str], None] = _note,
) -> dict[str, Any]:
    """Fine-tune `backbone_for(seed)` once per seed on `suite` and write
    `out_dir/finetune/<suite.name>.json` (replacing it); returns what was written."""
    from budgetlm.train.runtime import resolve_device

    protocol = protocol or InstructionProtocol()
    check_suite(suite)
    seeds = list(dict.fromkeys(seeds))
    if not seeds:
        raise TaskError("no fine-tuning seeds")
    out_dir = Path(out_dir)
    prepare_results_dir(out_dir)
    read_suite(out_dir, suite.name)  # an unreadable results file fails now, not after training
    torch_device = resolve_device(device)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    runs = []
    for seed in seeds:
        backbone = backbone_for(seed)
        _lengths(backbone, protocol)  # a BERT is refused before training
        runs.append(
            finetune_instructions_seed(
                backbone, tokenizer, suite, protocol, seed, torch_device, notify
            )
        )
    results = _results(suite, protocol, runs, record or {}, started)
    write_results(out_dir, suite.name, results)
    return results


def _results(
    suite: InstructionSuite,
    protocol: InstructionProtocol,
    runs: list[dict[str, Any]],
    record: dict[str, Any],
    started: str,
) -> dict[str, Any]:
    tasks = {}
    train_instances = runs[0]["train_instances"]
    for task in suite.test:
        values = [r["tasks"][task.name] for r in runs]
        tasks[task.name] = {
            "main_metric": METRIC,
            "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seeds": [r["seed"] for r in runs],
            "reported": [{METRIC: v} for v in values],
            "majority": None,
            "train_examples": train_instances,
            "eval_examples": runs[0]["eval_instances"][task.name],
            "source": task.source,
            "examples": runs[0]["examples"][task.name],
        }
    names = list(tasks)
    return {
        "suite": suite.name,
        **record,
        "protocol": protocol.to_dict(),
        "metric": METRIC,
        "seeds": [r["seed"] for r in runs],
        "source": suite.source,
        "lengths": runs[0]["lengths"],
        "train_tasks": [t.name for t in suite.train],
        "test_tasks": names,
        "sizes": {
            "train_tasks": len(suite.train),
            "test_tasks": len(suite.test),
            "train_instances": train_instances,
            "test_instances": sum(runs[0]["eval_instances"].values()),
        },
        "steps": runs[0]["steps"],
        "final_loss": [r["final_loss"] for r in runs],
        "average_by_seed": [r["average"] for r in runs],
        "tasks": tasks,
        "average": statistics.mean(t["mean"] for t in tasks.values()),
        "average_over": names,
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": sum(r["seconds"] for r in runs),
    }


__all__ = [
    "InstructionsDiverged",
    "check_suite",
    "decode_all",
    "finetune_instructions",
    "finetune_instructions_seed",
    "greedy_decode",
    "load_instructions",
    "t5_batch",
]


Backbone = Callable[[], tuple[Callable[[int], nn.Module], Any, dict[str, Any]]]


def finetune_instruction_suite(
    suite: str,
    backbone: Backbone,
    out_dir: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] = (1,),
    protocol: InstructionProtocol | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """`budgetlm finetune --suite instructions|sni`, of a run or of the random-init control.

    Everything that can be wrong with the input fails first (TaskError, exit 2): `tasks` given,
    a classification protocol, the suite's data, an unwritable results folder. Only then does
    `backbone()` load or build the model: it returns (model per fine-tuning seed, tokenizer,
    what the results record of where the model came from).
    """
    if tasks:
        raise TaskError(
            f"suite {suite!r} takes no --tasks: its training and held-out tasks come from the data"
        )
    protocol = InstructionProtocol() if protocol is None else protocol
    if not isinstance(protocol, InstructionProtocol):
        raise TaskError(f"suite {suite!r} takes an instruction protocol, not {protocol!r}")
    loaded = load_instructions(suite, data_dir, protocol)
    prepare_results_dir(out_dir)
    read_suite(out_dir, suite)  # an unreadable results file fails now, not after training
    backbone_for, tokenizer, record = backbone()
    return finetune_instructions(
        backbone_for,
        tokenizer,
        loaded,
        Path(out_dir),
        seeds=seeds,
        protocol=protocol,
        device=device,
        record=record,
    )
