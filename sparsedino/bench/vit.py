"""``sparsedino bench vit``: one whole ViT training step, softmax vs entmax-1.5, in the same process.

A step is forward + backward (mean squared output as a stand-in loss, so no labels are needed) + AdamW, on
random images; both models share the same initial weights (the entmax one is ``sparsify``-ed from a copy).
Implementations alternate inside every repetition, so machine load affects both alike; the median of
``--repeats`` timed steps after ``--warmup`` steps (which include compilation) is reported.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import timm
import torch

from sparsedino.atomic import atomic_write_json, check_output_file
from sparsedino.attention import parse_normalizer, sparsify
from sparsedino.attention.compiled import set_compile
from sparsedino.bench.attention import DEFAULT_JSON_DIR, environment
from sparsedino.commands import Command, dispatch
from sparsedino.config import ConfigError, check_normalizers
from sparsedino.options import MAX_COUNT, Range, check_options, split_list

ARCHS = {
    "vit_small_patch16_224": "ViT-S/16",
    "vit_tiny_patch16_224": "ViT-Ti/16",
    "vit_base_patch16_224": "ViT-B/16",
}


PATCH = 16  # every model in ARCHS
RULES = {
    "batch_size": Range(1, 4096, integer=True),
    "img_size": Range(PATCH, 4096, integer=True),
    "repeats": Range(1, MAX_COUNT, integer=True),
    "warmup": Range(0, MAX_COUNT, integer=True),
}


def build_models(arch: str, img_size: int, normalizers: Sequence[str]) -> dict[str, torch.nn.Module]:
    """Same-initialisation models, one per normaliser ("softmax" keeps timm's own Attention)."""
    torch.manual_seed(0)
    base = timm.create_model(arch, pretrained=False, img_size=img_size, num_classes=0)
    models = {}
    for name in normalizers:
        model = copy.deepcopy(base)
        if not parse_normalizer(name).is_softmax:
            sparsify(model, name)
        models[name] = model.train()
    return models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sparsedino bench vit``."""
    parser.add_argument("--arch", default="vit_small_patch16_224", choices=sorted(ARCHS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--normalizers", default="softmax,entmax15", help="comma separated; first = baseline")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (incl. compilation)")
    parser.add_argument(
        "--json", type=Path, default=None, help=f"result file (default {DEFAULT_JSON_DIR}/vit-<time>.json)"
    )
    parser.add_argument("--no-compile", action="store_true", help="run the entmax kernels eagerly")
    parser.add_argument("--shapes", default=None, help="ignored (accepted for symmetry with bench attention)")


def run(args: argparse.Namespace) -> int:
    """Check the options (the result file first), time the training steps, write the JSON."""
    if args.json is not None:
        check_output_file(args.json, "--json")
    check_options(vars(args), RULES)
    if args.img_size % PATCH:
        raise ConfigError(f"--img-size must be a multiple of the patch size {PATCH}, got {args.img_size}")
    given = split_list(args.normalizers, "--normalizers")
    normalizers = [spec.name for spec in check_normalizers(given, "--normalizers")]
    if args.no_compile:
        set_compile(False)
    env = environment(torch.device("cpu"))
    print(
        f"# ViT training-step benchmark  {args.arch} batch {args.batch_size} {args.img_size}px  "
        f"threads {env['threads']}  compile={env['compile']}  load {env['load_avg_1_5_15']}"
    )
    models = build_models(args.arch, args.img_size, normalizers)
    optims = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)

    def step(name: str) -> float:
        start = time.perf_counter()
        out = models[name](x)
        out.float().pow(2).mean().backward()
        optims[name].step()
        optims[name].zero_grad(set_to_none=True)
        return (time.perf_counter() - start) * 1e3

    for _ in range(args.warmup):
        for name in normalizers:
            step(name)
    times: dict[str, list[float]] = {n: [] for n in normalizers}
    for _ in range(args.repeats):
        for name in normalizers:  # interleaved: load changes hit every model alike
            times[name].append(step(name))
    base, base_min = statistics.median(times[normalizers[0]]), min(times[normalizers[0]])
    rows = [
        {
            "normalizer": n,
            "step_ms": statistics.median(t),
            "ratio": statistics.median(t) / base,
            "min_ms": min(t),  # on a shared machine load only adds time: the minimum is the steadier one
            "min_ratio": min(t) / base_min,
            "all_ms": t,
        }
        for n, t in times.items()
    ]
    print(f"| normalizer | step ms (median) | ratio to {normalizers[0]} | step ms (min) | ratio (min) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['normalizer']} | {r['step_ms']:.0f} | {r['ratio']:.3f} | {r['min_ms']:.0f} | {r['min_ratio']:.3f} |"
        )
    path = args.json or DEFAULT_JSON_DIR / f"vit-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    env["load_avg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    atomic_write_json(
        path,
        {
            "benchmark": "vit",
            "environment": env,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


CLI = Command(add_arguments, run, description=__doc__.splitlines()[0])


def main(argv: Sequence[str]) -> int:
    """``sparsedino bench vit [options]``."""
    return dispatch(CLI, argv, "sparsedino bench vit")
