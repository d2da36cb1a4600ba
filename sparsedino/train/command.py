"""``sparsedino train CONFIG [key=value ...]``: DINO pre-training (single process, torchrun or Slurm)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from omegaconf import OmegaConf

from sparsedino.commands import Command, dispatch
from sparsedino.config import config_to_dict
from sparsedino.train.loop import NonFiniteLossError, run_training
from sparsedino.train.settings import load_train_config

EPILOG = """\
examples:
  sparsedino train dino_cpu_tiny data.path=data/imagenet run.output_dir=runs/tiny
  sparsedino train configs/dino_vits16_entmax15.yaml data.path=/datasets/imagenet
  torchrun --nproc_per_node=8 -m sparsedino train dino_vits16_entmax15 data.path=/datasets/imagenet

CONFIG is a YAML file or a preset name (see sparsedino/configs). Overrides use dotted keys, e.g.
model.normalizer=softmax optim.epochs=10. An existing <run.output_dir>/checkpoint.pth is resumed.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sparsedino train``."""
    parser.add_argument("config", help="YAML config file or preset name")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg))))
        return 0
    try:
        out = run_training(cfg)
    except NonFiniteLossError as err:  # the run diverged: not a bad input (exit 1), but no traceback needed
        print(f"sparsedino train: {err}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(f"training finished; outputs in {out}")
    return 0


CLI = Command(
    add_arguments,
    _train,
    description="Pretrain a ViT with DINO v1; the attention normaliser is a config switch.",
    epilog=EPILOG,
    raw_help=True,
)


def main(argv: Sequence[str]) -> int:
    """Parse arguments, load and check the config, then train. Returns the exit code."""
    return dispatch(CLI, argv, "sparsedino train")
