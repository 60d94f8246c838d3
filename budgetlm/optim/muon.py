"""Muon for the hidden weight matrices, AdamW for everything else, as one optimizer.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers"; Liu et al. 2025, "Muon is
scalable for LLM training") keeps SGD momentum and replaces each matrix's update by its nearest
semi-orthogonal matrix, computed with a few Newton-Schulz iterations:

    B <- mu * B + (1 - mu) * G              (momentum, as an EMA)
    U <- (1 - mu) * G + mu * B if nesterov else B
    O <- NS5(U)                             (U V^T of U's SVD, approximately, in bf16)
    W <- W * (1 - lr * wd) - lr * adjust(shape) * O

adjust is sqrt(max(1, rows / cols)) ("original", Keller Jordan's) or 0.2 * sqrt(max(rows, cols))
("match_rms_adamw", Moonshot's): the latter gives O the RMS of a typical AdamW update, so the
matrices can share AdamW's learning rate and weight decay; it is the default here because a run
has one `optim.lr`. Groups carry `lr_scale` (the loop multiplies the scheduled lr by it), so
`muon_lr_scale` can give the matrices their own rate (e.g. with adjust_lr=original).

Only 2-D weights inside the model's layer stacks (attention and MLP projections) use Muon:
embeddings, the output head, norms and biases use AdamW, as Muon's authors prescribe. Newton-Schulz
uses `torch.optim.Muon` when the installed torch has it, else the same algorithm written
here; `implementation` forces one (the two agree, tests/optim/test_muon.py). Newton-Schulz costs
about 5 * 3 matrix products per weight matrix per step: it is optimizer work, priced by an RST
table's per-optimizer term, not by the FLOP count of the passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # quintic, tuned for a steep slope at zero
NS_EPS = 1e-7
ADJUST = ("original", "match_rms_adamw")
IMPLEMENTATIONS = ("auto", "torch", "own")


@dataclass
class MuonOptions:
    """`optim.options.*` for optim.name=muon."""

    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    adjust_lr: str = "match_rms_adamw"  # original | match_rms_adamw
    muon_lr_scale: float = 1.0  # the matrices' lr relative to optim.lr
    implementation: str = "auto"  # auto (torch.optim.Muon if present) | torch | own


def has_torch_muon() -> bool:
    return hasattr(torch.optim, "Muon")


def orthogonalize(update: torch.Tensor, steps: int, coefficients=NS_COEFFICIENTS, eps=NS_EPS):
    """Approximate U V^T of `update` (2-D) by `steps` quintic Newton-Schulz iterations in bf16.

    Each iteration maps every singular value s of X to a*s + b*s^3 + c*s^5; after scaling X to
    Frobenius norm 1 (so all s <= 1) five iterations push them into roughly [0.7, 1.2]. The
    iteration works on the wide orientation so the Gram matrix is the smaller one.
    """
    a, b, c = coefficients
    x = update.to(torch.bfloat16)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.mT
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b*G + c*G^2
        x = torch.addmm(x, poly, x, beta=a)  # a*X + (b*G + c*G^2) X
    return x.mT if tall else x


def adjusted_lr(lr: float, rule: str | None, shape: torch.Size) -> float:
    rows, cols = shape[:2]
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


def muon_update(group: Mapping[str, Any], state: Mapping[torch.Tensor, dict]) -> None:
    """One Muon step for a group of 2-D parameters (this project's implementation)."""
    lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
    for p in group["params"]:
        if p.grad is None:
            continue
        g = p.grad
        s = state[p]
        if "momentum_buffer" not in s:
            s["momentum_buffer"] = torch.zeros_like(g)
        buf = s["momentum_buffer"]
        buf.lerp_(g, 1 - mu)
        u = g.lerp(buf, mu) if group["nesterov"] else buf
        o = orthogonalize(u, group["ns_steps"], group["ns_coefficients"], group["eps"])
        p.mul_(1 - lr * wd)
        p.add_(o, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))


def adamw_update(group: Mapping[str, Any], state: Mapping[torch.Tensor, dict]) -> None:
    """One AdamW step (decoupled decay, bias-corrected), as torch.optim.AdamW computes it."""
    beta1, beta2 = group["betas"]
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    for p in group["params"]:
        if p.grad is None:
            continue
        g = p.grad
        s = state[p]
        if not s:
            s["step"] = 0
            s["exp_avg"] = torch.zeros_like(p)
            s["exp_avg_sq"] = torch.zeros_like(p)
        s["step"] += 1
        m, v = s["exp_avg"], s["exp_avg_sq"]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias1 = 1 - beta1 ** s["step"]
        bias2 = 1 - beta2 ** s["step"]
        p.mul_(1 - lr * wd)
        denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)
        p.addcdiv_(m, denom, value=-lr / bias1)


class MuonAdamW(torch.optim.Optimizer):
    """Groups with `use_muon=True` take Muon steps, the others AdamW steps."""

    def __init__(self, groups: list[dict[str, Any]], implementation: str = "auto") -> None:
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}")
        if implementation == "torch" and not has_torch_muon():
            raise ValueError(f"torch {torch.__version__} has no torch.optim.Muon")
        for g in groups:
            if g["use_muon"] and any(p.ndim != 2 for p in g["params"]):
                raise ValueError("Muon groups may hold only 2-D parameters")
        super().__init__(groups, {"lr": 1e-3, "lr_scale": 1.0})
        self.implementation = implementation
        use_torch = implementation == "torch" or (implementation == "auto" and has_torch_muon())
        self._torch_muon: torch.optim.Optimizer | None = None
        muon_groups = [g for g in self.param_groups if g["use_muon"]]
        if use_torch and muon_groups:
            self._torch_muon = torch.optim.Muon([{"params": g["params"]} for g in muon_groups])

    @property
    def uses_torch_muon(self) -> bool:
        return self._torch_muon is not None

    def _torch_muon_step(self) -> None:
        inner = self._torch_muon
        assert inner is not None
        muon_groups = [g for g in self.param_groups if g["use_muon"]]
        # Our groups stay the source of truth (the loop sets lr on them, load_state_dict replaces
        # them): copy their settings in and share the state, so momenta checkpoint with ours.
        for ours, theirs in zip(muon_groups, inner.param_groups, strict=True):
            theirs["params"] = ours["params"]
            for key in ("lr", "weight_decay", "momentum", "nesterov", "ns_steps", "eps"):
                theirs[key] = ours[key]
            theirs["ns_coefficients"] = tuple(ours["ns_coefficients"])
            theirs["adjust_lr_fn"] = ours["adjust_lr_fn"]
        inner.state = self.state
        inner.step()

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's Optimizer signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if not group["use_muon"]:
                adamw_update(group, self.state)
            elif self._torch_muon is None:
                muon_update(group, self.state)
        if self._torch_muon is not None:
            self._torch_muon_step()
        return loss


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """2-D weights inside the layer stacks: Muon's share (never embeddings or the head)."""
    if hasattr(model, "layer_stacks"):
        modules = [m for stack in model.layer_stacks().values() for m in stack.modules()]
    else:
        modules = [m for name, m in model.named_modules() if "head" not in name.rsplit(".", 1)[-1]]
    seen, out = set(), []
    for module in modules:
        if isinstance(module, nn.Embedding):
            continue
        for p in module.parameters(recurse=False):
            if p.ndim == 2 and p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def muon_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    opts: MuonOptions,
) -> list[dict[str, Any]]:
    hidden = hidden_matrices(model)
    hidden_ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden_ids]
    muon = {
        "use_muon": True,
        "lr_scale": opts.muon_lr_scale,
        "weight_decay": weight_decay,
        "momentum": opts.momentum,
        "nesterov": opts.nesterov,
        "ns_steps": opts.ns_steps,
        "ns_coefficients": NS_COEFFICIENTS,
        "eps": NS_EPS,
        "adjust_lr_fn": opts.adjust_lr,
    }
    adamw = {"use_muon": False, "lr_scale": 1.0, "betas": tuple(betas), "eps": eps}
    groups = []
    if hidden:
        groups.append({"params": hidden, **muon})
    decay = [p for p in rest if p.ndim >= 2]
    no_decay = [p for p in rest if p.ndim < 2]
    if decay:
        groups.append({"params": decay, **adamw, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, **adamw, "weight_decay": 0.0})
    return groups


def build(
    model: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float] | None,
    eps: float | None,
    weight_decay: float,
    device: torch.device | str,
    options: Mapping[str, Any],
) -> MuonAdamW:
    """Muon for hidden matrices + AdamW (optim.betas, optim.eps) for the rest."""
    from budgetlm.config import build_dataclass

    opts = build_dataclass(MuonOptions, dict(options), "optim.options.")
    if opts.adjust_lr not in ADJUST:
        raise ValueError(f"optim.options.adjust_lr must be one of {ADJUST}, got {opts.adjust_lr!r}")
    if opts.implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"optim.options.implementation must be one of {IMPLEMENTATIONS}, "
            f"got {opts.implementation!r}"
        )
    if not 0 <= opts.momentum < 1 or opts.ns_steps < 1 or opts.muon_lr_scale <= 0:
        raise ValueError("optim.options: need 0 <= momentum < 1, ns_steps >= 1, muon_lr_scale > 0")
    groups = muon_groups(
        model,
        weight_decay=weight_decay,
        betas=(0.9, 0.95) if betas is None else betas,
        eps=1e-8 if eps is None else eps,
        opts=opts,
    )
    opt = MuonAdamW(groups, implementation=opts.implementation)
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_scale"]
    return opt
