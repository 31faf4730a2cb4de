"""The CPU malloc policy: page faults per reused buffer, checked in a fresh process each."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tunelab.callbacks.cpu_allocator import CPUAllocator, _glibc, resolve_policy, set_malloc_policy
from tunelab.models import load_pretrained

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
    with pytest.raises(
        ValueError, match="callbacks.cpu_allocator.policy: expected one of auto, keep"
    ):
        CPUAllocator(policy="fast")


def test_auto_releases_memory_for_lora_models_and_keeps_it_otherwise():
    full = load_pretrained("tiny-llama", seed=0).model
    lora = load_pretrained("tiny-llama", seed=0, lora={"rank": 2}).model
    assert resolve_policy("auto", full) == "keep"
    assert resolve_policy("auto", lora) == "release"
    assert resolve_policy("keep", lora) == "keep"  # an explicit policy is left alone
    assert CPUAllocator().policy == "auto"
    with pytest.raises(ValueError, match="resolve `auto`"):
        set_malloc_policy("auto")
