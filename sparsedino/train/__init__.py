"""DINO v1 pre-training with a configurable attention normaliser.

``run_training(cfg)`` trains in-process (CPU, one GPU, or one rank of a torchrun/Slurm job) and returns
the output folder; ``TrainConfig`` is the typed config schema (see ``sparsedino/configs/dino_*.yaml``) and
``load_train_config`` loads and checks one.
"""

from sparsedino.train.loop import NonFiniteLossError, run_training
from sparsedino.train.settings import TrainConfig, load_train_config

__all__ = ["NonFiniteLossError", "TrainConfig", "load_train_config", "run_training"]
