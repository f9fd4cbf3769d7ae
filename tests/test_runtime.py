"""Process-level set-up and teardown of the ``lit_mmrec`` command."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from lit_mmrec.runtime import keep_freed_memory_for_reuse, release_process_group


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_malloc_tuning_applies_on_glibc_and_can_be_turned_off(monkeypatch):
    assert keep_freed_memory_for_reuse() is True  # glibc accepted every parameter
    monkeypatch.setenv("LIT_MMREC_MALLOC_TUNING", "0")
    assert keep_freed_memory_for_reuse() is False


_REALLOCATION_FAULTS = """
import resource, torch
from lit_mmrec.runtime import keep_freed_memory_for_reuse
keep_freed_memory_for_reuse()
n = 40 * 1024**2 // 4  # a 40 MiB table: above glibc's largest mmap threshold (32 MiB)
faults = []
for _ in range(16):  # the heap grows over the first rounds (aligned blocks need a little slack), then reuses
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    table = torch.ones(n)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del table
print(sum(faults[-4:]))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_tables_larger_than_the_mmap_ceiling_are_reused_without_page_faults():
    def faults(tuning: str) -> int:
        env = {**os.environ, "LIT_MMREC_MALLOC_TUNING": tuning, "OMP_NUM_THREADS": "1"}
        result = subprocess.run([sys.executable, "-c", _REALLOCATION_FAULTS], env=env, capture_output=True,
                                text=True, check=True)
        return int(result.stdout.split()[-1])

    pages = 40 * 1024**2 // 4096
    assert faults("0") > 2 * pages  # glibc's default: each of the last four a fresh mapping, faulted in again
    assert faults("1") < pages // 20  # tuned: freed heap blocks are reused as they are


@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_release_process_group_destroys_a_live_gloo_group_once(tmp_path):
    assert release_process_group() is False  # nothing to release
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        dist.all_reduce(torch.ones(3))  # leaves finished work behind in gloo, as a DDP run does
        assert release_process_group() is True
        assert not dist.is_initialized()
        assert release_process_group() is False
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
