"""The parameter updates of a DINO step besides the optimiser: gradient checks, clipping, teacher EMA."""

from __future__ import annotations

import torch
import torch.nn as nn


def gradients_finite(model: nn.Module) -> bool:
    """Whether every gradient of ``model`` is finite (one fused norm per parameter, one host sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())


def first_nonfinite_gradient(model: nn.Module) -> str:
    """Name of the first parameter whose gradient holds NaN/inf (for the error message)."""
    for name, param in model.named_parameters():
        if param.grad is not None and not bool(param.grad.isfinite().all()):
            return name
    return "?"


def clip_gradients(model: nn.Module, max_norm: float, mode: str) -> None:
    """DINO's per-parameter clipping (each gradient to norm <= max_norm) or one global-norm clip."""
    if max_norm <= 0:
        return
    if mode == "global":
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return
    for param in model.parameters():
        if param.grad is not None:
            norm = param.grad.detach().norm(2)
            param.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
