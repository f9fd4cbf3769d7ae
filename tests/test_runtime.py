"""Process-level allocator tuning applied by the ``lit_mmrec`` command."""

from __future__ import annotations

import platform

import pytest

from lit_mmrec.runtime import keep_freed_memory_for_reuse


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_malloc_tuning_applies_on_glibc_and_can_be_turned_off(monkeypatch):
    assert keep_freed_memory_for_reuse() is True  # glibc accepted every parameter
    monkeypatch.setenv("LIT_MMREC_MALLOC_TUNING", "0")
    assert keep_freed_memory_for_reuse() is False
