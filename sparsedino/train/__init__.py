"""DINO v1 pre-training with a configurable attention normaliser.

``run_training(cfg)`` trains in-process (CPU, one GPU, or one rank of a torchrun/Slurm job) and returns
the output folder; ``TrainConfig`` is the typed config schema (see ``sparsedino/configs/dino_*.yaml``).
"""

from sparsedino.train.loop import NonFiniteLossError, run_training
from sparsedino.train.settings import TrainConfig

__all__ = ["NonFiniteLossError", "TrainConfig", "load_train_config", "run_training"]


def load_train_config(path=None, overrides=()) -> TrainConfig:
    """``load_config(TrainConfig, path, overrides)`` plus range/choice checks (errors name the key).

    ``model.normalizer`` comes back in its canonical spelling (``entmax-1.5`` -> ``entmax15``).
    """
    from sparsedino.config import load_config
    from sparsedino.train.settings import canonical, validate

    cfg = load_config(TrainConfig, path, overrides)
    validate(cfg)
    return canonical(cfg)
