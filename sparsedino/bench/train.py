"""``sparsedino bench train``: time one DINO multi-crop training step, softmax vs entmax-1.5, same run.

A step is what :class:`sparsedino.train.loop.Trainer` does per iteration: teacher forward on the global
crops, student forward on all crops (one backbone pass per resolution), DINO loss, backward, per-param
clipping, AdamW, teacher EMA. Inputs are random tensors (no data loading). Normalisers are timed in
alternation (A B A B ...) so machine load affects both alike; median and minimum step times are reported
(on a shared machine the minimum is the better estimate: load only ever adds time).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sparsedino.atomic import atomic_write_json, check_output_file
from sparsedino.attention import compile_mode
from sparsedino.bench.device import synchronize
from sparsedino.commands import Command, dispatch
from sparsedino.config import ConfigError, check_normalizers, load_config
from sparsedino.models.vit import ARCHS
from sparsedino.options import MAX_COUNT, Range, check_options
from sparsedino.train.build import Precision, build_loss, build_networks, build_optimizer
from sparsedino.train.distributed import DistInfo
from sparsedino.train.loop import clip_gradients, ema_update
from sparsedino.train.settings import TrainConfig

DEFAULT_JSON = Path("benchmarks/results/train.json")
RULES = {
    "patch_size": Range(1, 64, integer=True),
    "batch": Range(1, 4096, integer=True),
    "global_size": Range(1, 4096, integer=True),
    "local_size": Range(1, 4096, integer=True),
    "n_local": Range(0, 64, integer=True),
    "out_dim": Range(1, 2**20, integer=True),
    "steps": Range(1, MAX_COUNT, integer=True),
    "warmup": Range(0, MAX_COUNT, integer=True),
    "threads": Range(0, 1024, integer=True),
}


def check_step_options(args: argparse.Namespace) -> None:
    """The options of one DINO step, checked before any model is built (ConfigError naming the option)."""
    check_options(vars(args), RULES)
    for option, size in (("--global-size", args.global_size), ("--local-size", args.local_size)):
        if size % args.patch_size:
            raise ConfigError(f"{option} must be a multiple of --patch-size {args.patch_size}, got {size}")


def make_step(normalizer: str, args: argparse.Namespace, device: str = "cpu", precision: str = "fp32"):
    """One DINO training step on fixed random crops as a function ``step() -> (seconds, loss)``.

    Args:
        normalizer: Attention normaliser of both networks.
        args: ``arch``, ``patch_size``, ``out_dim``, ``global_size``, ``local_size``, ``n_local``, ``batch``.
        device: Where the networks and crops live.
        precision: "fp32" or "bf16" (autocast, as ``run.precision`` does in training).
    """
    cfg = load_config(
        TrainConfig,
        None,
        [
            "data.path=unused",
            f"model.arch={args.arch}",
            f"model.patch_size={args.patch_size}",
            f"model.normalizer={normalizer}",
            f"model.out_dim={args.out_dim}",
            f"data.global_crop_size={args.global_size}",
            f"data.local_crop_size={args.local_size}",
            f"data.local_crops_number={args.n_local}",
            f"optim.batch_size_per_gpu={args.batch}",
        ],
    )
    dev = torch.device(device)
    torch.manual_seed(0)
    nets = build_networks(cfg, DistInfo(device=dev))
    loss_fn = build_loss(cfg).to(dev)
    optimizer = build_optimizer(cfg, nets.student)
    for group in optimizer.param_groups:
        group["lr"] = 1e-4
    autocast = Precision(precision, dev.type).autocast
    g, lsz, b = args.global_size, args.local_size, args.batch
    crops = [torch.randn(b, 3, g, g, device=dev) for _ in range(2)] + [
        torch.randn(b, 3, lsz, lsz, device=dev) for _ in range(args.n_local)
    ]

    def step() -> tuple[float, float]:
        synchronize(dev)
        start = time.perf_counter()
        with autocast():
            teacher_out = nets.teacher(crops[:2])
            loss = loss_fn(nets.student(crops), teacher_out, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(nets.student, 3.0, "per_param")
        optimizer.step()
        ema_update(nets.teacher, nets.student, 0.996)
        value = float(loss.detach())  # waits for the step's work
        return time.perf_counter() - start, value

    return step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sparsedino bench train``."""
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"result file (default {DEFAULT_JSON})"
    )
    parser.add_argument("--arch", default="vit_small", choices=sorted(ARCHS))
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2, help="images per step (each gives 2 + n_local crops)")
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--n-local", type=int, default=8)
    parser.add_argument("--out-dim", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per normaliser")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per normaliser (compilation)")
    parser.add_argument("--normalizers", nargs="+", default=["softmax", "entmax15"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")


def run(args: argparse.Namespace) -> int:
    """Check the options (the result file first), time the DINO steps, write the JSON."""
    check_output_file(args.json, "--json")
    check_step_options(args)
    args.normalizers = [spec.name for spec in check_normalizers(args.normalizers, "--normalizers")]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    steps = {name: make_step(name, args) for name in args.normalizers}
    times: dict[str, list[float]] = {name: [] for name in args.normalizers}
    total = (args.warmup + args.steps) * len(steps)
    with tqdm(total=total, desc="bench train") as bar:
        for rep in range(args.warmup + args.steps):
            for name, step in steps.items():  # alternate so load drifts hit every normaliser
                elapsed, _ = step()
                if rep >= args.warmup:
                    times[name].append(elapsed)
                bar.update(1)
    base = args.normalizers[0]
    base_median, base_min = statistics.median(times[base]), min(times[base])
    rows = []
    for name in args.normalizers:
        median = statistics.median(times[name])
        rows.append(
            {
                "normalizer": name,
                "median_step_s": median,
                "min_step_s": min(times[name]),
                "images_per_s": args.batch / median,
                f"ratio_vs_{base}": median / base_median,
                f"min_ratio_vs_{base}": min(times[name]) / base_min,
                "step_times_s": times[name],
            }
        )
    print(f"\nDINO step: {args.arch}/{args.patch_size}, batch {args.batch}, 2 x {args.global_size} + "
          f"{args.n_local} x {args.local_size} crops, out_dim {args.out_dim}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"| normalizer | median step (s) | min step (s) | images/s | ratio vs {base} (median) | (min) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['normalizer']} | {row['median_step_s']:.3f} | {row['min_step_s']:.3f} | "
              f"{row['images_per_s']:.2f} | {row[f'ratio_vs_{base}']:.3f} | {row[f'min_ratio_vs_{base}']:.3f} |")  # fmt: skip
    result = {
        "benchmark": "train_step",
        "setup": {k: v for k, v in vars(args).items() if k != "json"},
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "compile_mode": str(compile_mode()),
        "target": "entmax15 step time <= 1.15 x softmax",
        "results": rows,
    }
    atomic_write_json(args.json, result)
    print(f"wrote {args.json}")
    return 0


CLI = Command(add_arguments, run, description=__doc__.splitlines()[0])


def main(argv: Sequence[str]) -> int:
    """``sparsedino bench train [options]``."""
    return dispatch(CLI, argv, "sparsedino bench train")
