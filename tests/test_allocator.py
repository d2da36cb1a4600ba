"""The allocator tuning the command line applies to its own process."""

import ctypes.util
import sys

import pytest

from sparsedino import allocator


def test_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setenv("SPARSEDINO_MALLOC_TUNING", "0")
    assert allocator.keep_freed_memory() is False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None, reason="glibc only"
)
def test_applies_on_glibc_and_is_idempotent(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.delenv("SPARSEDINO_MALLOC_TUNING", raising=False)
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True


def test_cli_applies_it_before_dispatching(monkeypatch):
    from sparsedino import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["bench", "--help"]) == 0
    assert calls == [1]
