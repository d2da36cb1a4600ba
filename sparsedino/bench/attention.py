"""``sparsedino bench attention``: the attention op alone, softmax vs entmax implementations.

For each shape (B, H, N, D) and implementation it measures, in one process so ratios are comparable:

* ``fwd ms``: forward under ``torch.no_grad`` (median over ``--repeats`` after warm-up);
* ``fwd+bwd ms``: forward + backward of ``out.sum()`` with q, k, v requiring grad;
* ``ratio``: each time divided by SDPA softmax's time for the same shape in the same run;
* ``peak MB``: peak of bytes allocated during one forward + backward above what was live before it
  (CPU: the ``Total Allocated`` counter of ``torch.profiler`` memory events; CUDA:
  ``torch.cuda.max_memory_allocated``) -- includes the tensors saved for backward, temporaries and grads
  (the op's reusable buffers are released first, so they are allocated, and counted, within the step);
* ``saved MB``: bytes still allocated after one forward while its output is alive: the output and all
  that is kept for backward;
* ``density``: the share of nonzero entmax-1.5 probabilities of the inputs (the sparse kernels' work
  scales with it; ``--input-std`` makes the scores flatter or peakier: q, k, v ~ N(0, std^2)).

The first call of a compiled implementation compiles it (excluded from timings by the warm-up).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sparsedino.atomic import atomic_write_json, check_output_file
from sparsedino.attention import attention, compile_mode, entmax15, set_compile, workspace
from sparsedino.attention.ops import block_rows
from sparsedino.bench.device import held_bytes, peak_bytes
from sparsedino.commands import Command, dispatch
from sparsedino.config import check_device, resolve_device
from sparsedino.options import MAX_COUNT, Range, check_options

SHAPES: dict[str, tuple[int, int, int, int]] = {
    "vit_s16_224": (32, 6, 197, 64),  # ViT-S/16 at 224 px, batch 32
    "local_96": (64, 6, 37, 64),  # 96 px local crops, batch 64
    "vit_s16_448": (8, 6, 785, 64),  # ViT-S/16 at 448 px, batch 8
}
DEFAULT_JSON_DIR = Path("benchmarks/results")


def _explicit_softmax(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v


def _reference_entmax15():
    try:
        import entmax  # optional dependency (the dev extra): the reference row is skipped without it
    except ImportError:
        return None

    def run(q, k, v):
        return entmax.entmax15(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v

    return run


def implementations(shape: tuple[int, int, int, int]) -> dict[str, Callable[..., torch.Tensor]]:
    """Name -> fn(q, k, v) for one shape: "ours entmax15" is the default path (``chunk_size=None``), the
    tiled row forces tiles of the automatic block size (``block_rows``)."""
    meta = torch.empty(shape, device="meta")
    chunk = block_rows(meta, meta)
    impls: dict[str, Callable[..., torch.Tensor]] = {
        "sdpa softmax": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        "explicit softmax": _explicit_softmax,
    }
    ref = _reference_entmax15()
    if ref is not None:
        impls["entmax.entmax15 (reference)"] = ref
    impls["ours entmax15"] = lambda q, k, v: attention(q, k, v, "entmax15")  # the default path
    impls[f"ours entmax15 tiled ({chunk})"] = lambda q, k, v: attention(q, k, v, "entmax15", chunk_size=chunk)
    return impls


# Default std of q, k, v: scaled scores of std 1.44 at head dim 64 (7% of entmax-1.5 weights nonzero at
# 197 tokens, 2% at 785).
INPUT_STD = 1.2


def entmax_density(q: torch.Tensor, k: torch.Tensor) -> float:
    """Share of nonzero entmax-1.5 attention probabilities of ``q``, ``k`` (scale head_dim ** -0.5)."""
    with torch.no_grad():
        p = entmax15(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
    return float(torch.count_nonzero(p)) / p.numel()


def bench_shape(
    shape, repeats: int, warmup: int, device: torch.device, memory: bool = True, input_std: float = INPUT_STD
) -> list[dict]:
    """Benchmark every implementation on one shape; rows carry ratios to SDPA softmax.

    Implementations alternate inside every repetition so that machine load affects them alike.
    """
    torch.manual_seed(0)
    base = [torch.randn(shape, device=device) * input_std for _ in range(3)]
    density = entmax_density(base[0], base[1])
    impls = implementations(shape)
    tensors = {name: [t.clone().requires_grad_() for t in base] for name in impls}
    # a dense upstream gradient like a real loss gives (``out.sum()`` would give a stride-0 one, which makes
    # some matmul backward paths copy per batch)
    grad_out = torch.randn(shape, device=device)

    def forward(name):
        with torch.no_grad():
            return impls[name](*tensors[name])

    def train_step(name):
        q, k, v = tensors[name]
        impls[name](q, k, v).backward(grad_out)
        q.grad = k.grad = v.grad = None

    def timed(fn, name) -> float:
        start = time.perf_counter()
        fn(name)
        return (time.perf_counter() - start) * 1e3

    fwd: dict[str, list[float]] = {n: [] for n in impls}
    both: dict[str, list[float]] = {n: [] for n in impls}
    slow = {n for n in impls if "reference" in n}  # the sort-based reference: fewer repetitions
    for name in impls:
        for _ in range(1 if name in slow else warmup):
            forward(name)
            train_step(name)
    for rep in range(repeats):
        for name in impls:
            if name in slow and rep >= max(1, repeats // 3):
                continue
            fwd[name].append(timed(forward, name))
            both[name].append(timed(train_step, name))
    rows = []
    for name in impls:
        row = {
            "shape": list(shape),
            "impl": name,
            "fwd_ms": statistics.median(fwd[name]),
            "fwd_bwd_ms": statistics.median(both[name]),
            "fwd_bwd_min_ms": min(both[name]),
            "n_timed": len(fwd[name]),
            "input_std": input_std,
            "density": density,
        }
        if memory:
            # the op's reused buffers are released first, so they are allocated (and counted) in the step
            workspace.release()
            step = lambda name=name: (train_step(name), workspace.release())  # noqa: E731
            row["peak_mb"] = peak_bytes(step, device) / 2**20
            forward = lambda name=name: impls[name](*tensors[name])  # noqa: E731
            row["saved_mb"] = held_bytes(forward, device, cleanup=workspace.release) / 2**20
        rows.append(row)
    sdpa = rows[0]
    for row in rows:
        row["fwd_ratio"] = row["fwd_ms"] / sdpa["fwd_ms"]
        row["fwd_bwd_ratio"] = row["fwd_bwd_ms"] / sdpa["fwd_bwd_ms"]
        row["fwd_bwd_min_ratio"] = row["fwd_bwd_min_ms"] / sdpa["fwd_bwd_min_ms"]
        if memory:
            row["peak_ratio"] = row["peak_mb"] / max(sdpa["peak_mb"], 1e-9)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of benchmark rows."""
    head = (
        "| shape (B,H,N,D) | implementation | fwd ms | fwd x SDPA | fwd+bwd ms | fwd+bwd x SDPA "
        "| fwd+bwd min x SDPA | peak MB | saved MB |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        peak = f"{r['peak_mb']:.1f} ({r['peak_ratio']:.2f}x)" if "peak_mb" in r else "-"
        saved = f"{r['saved_mb']:.1f}" if "saved_mb" in r else "-"
        lines.append(
            f"| {tuple(r['shape'])} | {r['impl']} | {r['fwd_ms']:.1f} | {r['fwd_ratio']:.2f} | "
            f"{r['fwd_bwd_ms']:.1f} | {r['fwd_bwd_ratio']:.2f} | {r['fwd_bwd_min_ratio']:.2f} | {peak} | {saved} |"
        )
    return "\n".join(lines)


def environment(device: torch.device) -> dict[str, Any]:
    """Context stored with every result: versions, threads, load, compile policy."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": load,
        "platform": platform.platform(),
        "compile": compile_mode(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# Largest (B, H, N, N) score tensor a shape may need: 2**32 float32 scores are 16 GiB (the explicit-softmax
# and reference rows materialise it); larger is a typo, not a benchmark.
MAX_SCORES = 2**32


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """Comma separated shape names (see SHAPES) or BxHxNxD strings (at least one)."""
    out = []
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} names no shape: use one of {sorted(SHAPES)} or BxHxNxD")
    for item in items:
        if item in SHAPES:
            out.append(SHAPES[item])
            continue
        try:
            dims = tuple(int(d) for d in item.lower().split("x"))
        except ValueError:
            dims = ()
        if len(dims) != 4 or min(dims) < 1:
            raise argparse.ArgumentTypeError(f"bad shape {item!r}: use one of {sorted(SHAPES)} or BxHxNxD")
        batch, heads, tokens, dim = dims
        if batch * heads * tokens * tokens > MAX_SCORES or dim > 4096:
            raise argparse.ArgumentTypeError(
                f"shape {item!r} is too large: B*H*N*N must be <= 2**32 scores (16 GiB) and D <= 4096"
            )
        out.append(dims)
    return out


RULES = {
    "repeats": Range(1, MAX_COUNT, integer=True),
    "warmup": Range(0, MAX_COUNT, integer=True),
    "input_std": Range(0, 1e4, open_low=True),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sparsedino bench attention``."""
    parser.add_argument(
        "--shapes",
        type=parse_shapes,
        default=list(SHAPES.values()),
        help=f"comma separated names {sorted(SHAPES)} or BxHxNxD (default: all three)",
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first (incl. compilation)")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"result file (default {DEFAULT_JSON_DIR}/attention-<time>.json)",
    )
    parser.add_argument("--no-compile", action="store_true", help="run the entmax kernels eagerly")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak/saved memory measurements")
    parser.add_argument(
        "--input-std", type=float, default=INPUT_STD, help="std of q, k, v (lower: flatter, denser attention)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def run(args: argparse.Namespace) -> int:
    """Check the options (the result file first), time every shape, write the JSON."""
    if args.json is not None:
        check_output_file(args.json, "--json")
    check_options(vars(args), RULES)
    check_device(args.device, "--device")
    if args.no_compile:
        set_compile(False)
    device = resolve_device(args.device)
    env = environment(device)
    print(
        f"# attention benchmark  torch {env['torch']}  device {device}  threads {env['threads']}  "
        f"compile={env['compile']}  load {env['load_avg_1_5_15']}"
    )
    rows: list[dict] = []
    for shape in args.shapes:
        shape_rows = bench_shape(
            shape, args.repeats, args.warmup, device, memory=not args.no_memory, input_std=args.input_std
        )
        print(f"entmax-1.5 density {shape_rows[0]['density']:.3f} (input std {args.input_std})")
        print(format_table(shape_rows), flush=True)
        rows.extend(shape_rows)
    path = args.json or DEFAULT_JSON_DIR / f"attention-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    env["load_avg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    atomic_write_json(
        path, {"benchmark": "attention", "environment": env, "repeats": args.repeats, "rows": rows}
    )
    print(f"wrote {path}")
    return 0


CLI = Command(add_arguments, run, description=__doc__.splitlines()[0])


def main(argv: Sequence[str]) -> int:
    """``sparsedino bench attention [options]``."""
    return dispatch(CLI, argv, "sparsedino bench attention")
