"""rnnkit.allocator: large freed blocks are reused without page faults once tuned."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rnnkit import allocator

# a 64 MiB buffer (above glibc's largest dynamic mmap threshold, 32 MiB) allocated, filled and
# freed five times: the page faults per round, after 20 rounds (small allocations landing in
# the freed space make the heap grow a few more times before it settles)
SCRIPT = """
import resource, torch
from rnnkit import allocator
print(allocator.tune(), allocator.describe())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(16 << 20).fill_(1.0)
f0 = faults()
for _ in range(5):
    torch.empty(16 << 20).fill_(1.0)
print((faults() - f0) / 5)
"""
PAGES = (64 << 20) // os.sysconf("SC_PAGE_SIZE")


def _faults_per_round(switch: str) -> tuple[str, float]:
    env = {**os.environ, allocator.ENV_SWITCH: switch}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_tuned_allocator_reuses_large_blocks_without_page_faults():
    state, faults = _faults_per_round("1")
    if state.startswith("False"):
        pytest.skip("the C library is not glibc")
    assert state == f"True {allocator.TUNED}"
    assert faults < 0.05 * PAGES  # the freed block is reused: its pages are already there
    state, faults = _faults_per_round("0")  # switched off: every round maps and faults anew
    assert state == f"False {allocator.DEFAULT}"
    assert faults > 0.9 * PAGES


@pytest.mark.parametrize("value", ["0", "false", "off", "no"])
def test_environment_switch_turns_tuning_off(value, monkeypatch):
    monkeypatch.setenv(allocator.ENV_SWITCH, value)
    monkeypatch.setattr(allocator, "_state", {"tuned": False})
    assert allocator.tune() is False
    assert allocator.describe() == allocator.DEFAULT
