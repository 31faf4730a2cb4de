"""The CPU malloc policy: page faults per reused buffer, checked in a fresh process each."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tunelab.callbacks.cpu_allocator import CPUAllocator, _glibc

PROBE = """
import resource, sys, torch
from tunelab.callbacks.cpu_allocator import set_malloc_policy
set_malloc_policy(sys.argv[1])
faults = []
for _ in range(4):  # a 64 MiB buffer, touched, freed, allocated again: like a step's activations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 1024 * 1024)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[-1])
"""


def _faults(policy: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, policy], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_glibc() is None, reason="the policies are glibc mallopt settings")
def test_keep_reuses_pages_and_release_faults_them_in_again():
    pages = 64 * 1024 * 1024 // 4096
    assert _faults("keep") < pages // 20  # the freed buffer's pages are reused
    assert _faults("release") >= pages * 0.9  # a fresh mapping every time


def test_unknown_policy_names_the_key():
    with pytest.raises(ValueError, match="callbacks.cpu_allocator.policy: expected one of keep"):
        CPUAllocator(policy="fast")
