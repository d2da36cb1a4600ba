"""Register tokens (Darcet et al. 2024), reported apart from the patch tokens: their norms and their attention.

Registers are the baseline sparse attention is compared with: both are meant to stop patch tokens from
serving as global stores (the high-norm artifacts of ``norms.py``). Per block, on the same tokens and
attention maps as the other diagnostics:

- norms of the register tokens on the residual stream (no final norm), and their ratio to the image's median
  patch norm (a register that has absorbed the artifacts sits far above 1);
- how much attention the patches put on the registers (chance: registers / all keys), and [CLS]'s;
- what the registers attend to: the entropy of their rows, their support and their mass on patches.

Tokens are ``[CLS]?, other prefix tokens, patches``; the registers are the last ``R`` prefix tokens
(:attr:`sparsedino.models.TokenLayout.register_slice`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sparsedino.diagnose.scores import SCORES
from sparsedino.models.layout import TokenLayout

PREFIX = "reg."  # metrics.json keys of this file (the "registers" group of scores.py)


def register_scores(
    prefix: torch.Tensor, patch_norms: torch.Tensor, attn: torch.Tensor, layout: TokenLayout
) -> dict[str, torch.Tensor]:
    """Per-image register scores of one block.

    Args:
        prefix: (B, P, C) prefix tokens of the block output (residual stream, no final norm).
        patch_norms: (B, M) L2 norms of the block's patch tokens (``norms.token_norms``).
        attn: (B, H, N, N) the block's attention probabilities, N = P + M.
        layout: the model's token layout (``num_registers > 0``).

    Returns:
        ``{"reg.norm", "reg.norm_over_patch_median", "reg.mass_from_patches", "reg.mass_chance",
        "reg.entropy", "reg.support", "reg.mass_on_patches"}`` (and ``"reg.mass_from_cls"`` with a [CLS]),
        each (B,) (means over registers and heads), plus ``"per_register_norm"`` (B, R).
    """
    regs = layout.register_slice
    P = layout.num_prefix_tokens
    norms = prefix[:, regs].float().norm(dim=-1)  # (B, R)
    median = patch_norms.float().median(dim=1).values.clamp_min(1e-12)  # (B,)
    a = attn.float()
    rows = a[:, :, regs]  # (B, H, R, N) what the registers attend to
    out = {
        "reg.norm": norms.mean(1),
        "reg.norm_over_patch_median": (norms / median[:, None]).mean(1),
        "reg.mass_from_patches": a[:, :, P:, regs].sum(-1).mean((1, 2)),  # patch queries -> register keys
        "reg.mass_chance": torch.full_like(median, layout.num_registers / a.shape[-1]),
        "reg.entropy": -torch.special.xlogy(rows, rows).sum(-1).mean((1, 2)),
        "reg.support": (rows > 0).sum(-1).float().mean((1, 2)),
        "reg.mass_on_patches": rows[..., P:].sum(-1).mean((1, 2)),
        "per_register_norm": norms,
    }
    if layout.has_class_token:
        out["reg.mass_from_cls"] = a[:, :, 0, regs].sum(-1).mean(1)  # [CLS] query -> register keys
    return out


def add_block(acc: Any, prefix: torch.Tensor, patch_norms: torch.Tensor, attn: torch.Tensor, layout) -> None:
    """Accumulate one batch of one block into the runner's running statistics ``acc``."""
    scores = register_scores(prefix, patch_norms, attn, layout)
    acc.add_sum(
        "per_register_norm", scores.pop("per_register_norm")[..., None]
    )  # (B, R, 1): one sum per register
    for key, values in scores.items():
        acc.add(key, values)


def finalise(acc: Any) -> dict[str, Any]:
    """The block's register scores (means over images); ``{}`` for a model without registers (the runner
    then reports them as ``None``, undefined)."""
    if "reg.norm" not in acc.lists:
        return {}
    out = {key: acc.mean(key) for key in REGISTER_KEYS}
    out["reg.norm_per_register"] = acc.head_means("per_register_norm")
    return out


REGISTER_KEYS = (
    "reg.norm",
    "reg.norm_over_patch_median",
    "reg.mass_from_patches",
    "reg.mass_chance",
    "reg.mass_from_cls",
    "reg.entropy",
    "reg.support",
    "reg.mass_on_patches",
)
# The patch-token scores printed next to the register ones (same block, same images).
PATCH_COUNTERPARTS = ("norm.median", "norm.max_over_median", "attn.entropy", "attn.support")


def register_section(metrics: dict, fmt: Callable[[Any], str]) -> list[tuple]:
    """Report blocks (``report.Doc`` items): the register scores per block next to the patch tokens'.

    Args:
        metrics: a run's ``metrics.json`` content.
        fmt: the report's number formatting.
    """
    count = metrics.get("data", {}).get("num_registers", 0)
    doc: list[tuple] = [("h", 2, "Register tokens")]
    if not count:
        return [*doc, ("p", "The model has no register tokens.")]
    blocks = sorted(metrics["blocks"], key=int)
    values = metrics["blocks"]
    rows = [[f"{who}: {SCORES[k][1]}"] + [fmt(values[b].get(k)) for b in blocks]
            for who, keys in (("registers", REGISTER_KEYS), ("patches", PATCH_COUNTERPARTS)) for k in keys]  # fmt: skip
    for r in range(count):
        per = [values[b].get("reg.norm_per_register") or [] for b in blocks]
        rows.append([f"register {r}: norm"] + [fmt(p[r]) if r < len(p) else "n/a" for p in per])
    return [
        *doc,
        (
            "p",
            f"{count} register tokens, kept out of every patch-token score above (norms, attention, probes).",
        ),
        ("table", ["score"] + [f"block {b}" for b in blocks], rows),
    ]
