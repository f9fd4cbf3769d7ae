"""Process-level tuning applied by the ``lit_mmrec`` command before any tensor is allocated."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
_MMAP_THRESHOLD = 32 * 1024**2  # glibc's ceiling for this parameter on 64-bit
_TRIM_THRESHOLD = 1024**3
_TOP_PAD = 64 * 1024**2


def keep_freed_memory_for_reuse() -> bool:
    """Make glibc's allocator keep freed tensor memory instead of returning it to the kernel.

    By default glibc gives large freed blocks back to the kernel (``mmap``-ed blocks are unmapped, the
    top of the heap is trimmed), so the full-table CPU tensors of a training step (6.8 MB each for
    Baby's 26,495 x 64 embeddings) are page-faulted in again step after step; on the 2-core
    development VM that was up to a quarter of a bare LightGCN epoch on Baby (2.8-3.0 s -> 2.2-2.5 s
    with this on). This serves every block from the heap (no ``mmap`` at all: glibc caps the mmap
    threshold at 32 MiB, and at Sports scale DiffCL's 53,955 x 384 tables are 83 MB, which were
    page-faulted in on every use -- a fifth of the epoch in kernel time) and keeps up to 1 GiB of freed
    heap. It is what PyTorch's CPU tuning guide gets with jemalloc/tcmalloc, without a preloaded
    library; the price is a somewhat higher peak RSS, since freed blocks stay in the process. Only glibc
    (Linux); elsewhere, or with ``LIT_MMREC_MALLOC_TUNING=0``, nothing changes. Returns whether it applied.
    """
    if os.environ.get("LIT_MMREC_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no glibc mallopt here; allocator left as it is")
        return False
    applied = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        (_M_TOP_PAD, _TOP_PAD)))
    log.debug("glibc malloc tuning %s", "applied" if applied else "refused")
    return applied
