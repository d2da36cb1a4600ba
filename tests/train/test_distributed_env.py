"""Launcher detection: torchrun variables first, then Slurm, else a single process."""

from __future__ import annotations

import pytest

from sparsedino.train.distributed import init_distributed, launcher_env

_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "MASTER_ADDR")


@pytest.fixture()
def clean_env(monkeypatch):
    for name in _VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_no_launcher_means_single_process(clean_env):
    assert launcher_env() is None
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (0, 1, False, True)


def test_torchrun_variables_win_over_slurm(clean_env):
    for name, value in dict(
        RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", SLURM_NTASKS="16", SLURM_PROCID="9"
    ).items():
        clean_env.setenv(name, value)
    assert launcher_env() == (3, 4, 1)


def test_slurm_variables_are_used_without_torchrun(clean_env):
    for name, value in dict(
        SLURM_NTASKS="16", SLURM_PROCID="9", SLURM_LOCALID="1", MASTER_ADDR="node0"
    ).items():
        clean_env.setenv(name, value)
    assert launcher_env() == (9, 16, 1)


def test_slurm_without_master_addr_explains_what_to_export(clean_env):
    clean_env.setenv("SLURM_NTASKS", "2")
    clean_env.setenv("SLURM_PROCID", "0")
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        launcher_env()


def test_single_slurm_task_is_a_single_process(clean_env):
    clean_env.setenv("SLURM_NTASKS", "1")
    clean_env.setenv("SLURM_PROCID", "0")
    assert launcher_env() is None
